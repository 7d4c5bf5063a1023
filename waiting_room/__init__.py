"""The Redis-backed core: waiting rooms, admission, and the sales they belong to."""
