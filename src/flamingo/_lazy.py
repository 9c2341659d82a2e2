"""Package attributes imported on first use (PEP 562 module ``__getattr__``).

A package's ``__init__`` runs whenever any of its modules is imported, so ``flamingo.data.cli`` (argparse only)
would pull in torch if ``flamingo.data`` imported its submodules eagerly. Instead each package lists which
submodule defines each public name, and the name is imported when it is first used:
``from flamingo.data import read_interleaved`` and ``flamingo.data.read_interleaved`` work as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_attributes(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public names live in submodules.

    ``exports`` maps a submodule's name relative to the package (``"shards"``) to the names it defines. An
    attribute that is neither is tried as a submodule, as an eager ``__init__`` would have made it available.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            setattr(sys.modules[package], name, value)  # later lookups skip this function
            return value
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":  # the submodule exists but a dependency of it is missing
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
