"""Lazy public names for a package (PEP 562): a name's module is imported on its first use.

A package keeps ``import autoprune`` cheap by mapping each heavy public name to the module that
defines it and installing ``__getattr__ = lazy_getattr(__name__, globals(), _LAZY)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, namespace: MutableMapping[str, Any],
                 lazy: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves ``lazy`` (name -> module).

    The value is looked up in its module on first access and stored in ``namespace`` (the
    package's ``globals()``), so later accesses do not come back here.
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
