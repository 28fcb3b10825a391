"""Names a package re-exports but imports on first use (PEP 562 module ``__getattr__``), so
that importing the package (the configuration, the command line) does not load torch or a
whole subsystem until one of them is asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package`` (its ``__name__``) for ``exports``: name ->
    the module defining it (absolute, or relative to ``package`` when it starts with a dot).

    Returns a function that imports the module of a listed name on first use and returns the
    attribute; AttributeError for any other name, as for a module without it.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    return __getattr__
