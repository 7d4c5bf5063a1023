"""Helpers the tests share that are not fixtures: the image's build and run machinery."""
