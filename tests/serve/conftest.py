"""Fixtures of the serve tests live in serve_support (a uniquely named module the tests import too)."""

from serve_support import *  # noqa: F403
