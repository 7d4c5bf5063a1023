"""The HTTP API: shopper, admin, health and metrics endpoints on Starlette."""
