"""Imports the built-in codecs so that they register themselves."""

from . import baselines, fast, grad, linear  # noqa: F401
