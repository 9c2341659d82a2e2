"""The project's own errors: a mistake in what the user gave (a file, a flag, a config field), explained in one
line that names the thing and the fix.

``flamingo`` commands print a :class:`FlamingoError` as that one line and exit with status 1; any other
exception is a bug and keeps its traceback. The subclasses also derive from the built-in exception a caller
would expect (``ValueError``, ``FileNotFoundError``, ``KeyError``), so ``except ValueError`` keeps working.
This module imports nothing, so every layer of the package can use it.
"""

from __future__ import annotations


class FlamingoError(Exception):
    """A user-facing error; its message is the whole explanation (what is wrong and how to fix it)."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its message; a one-line explanation must read as written.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(FlamingoError, ValueError):
    """Arguments or values that do not fit together (a missing flag, a value out of range)."""


class MissingFileError(FlamingoError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnknownNameError(FlamingoError, KeyError):
    """A name (task, metric, preset, reader, ...) that no registry holds; the message lists the known ones."""
