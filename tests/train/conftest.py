"""Fixtures of the train tests live in train_support (a uniquely named module the tests import too)."""

from train_support import *  # noqa: F403
