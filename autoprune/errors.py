"""The one error hierarchy of autoprune.

Every error a user can trigger derives from :class:`AutopruneError`, so the CLI can turn it into
one clear line and exit code 2 instead of a traceback. Messages name the argument, the value and
the fix.
"""

from __future__ import annotations

__all__ = [
    "AutopruneError",
    "BackendUnavailable",
    "BudgetError",
    "ConfigError",
    "UnsupportedModelError",
]


class AutopruneError(Exception):
    """Base class of every error autoprune raises on purpose."""


class ConfigError(AutopruneError, ValueError):
    """An argument, plan, search space or task file is invalid."""


class BudgetError(AutopruneError, ValueError):
    """A budget is malformed or cannot be reached by any plan."""


class UnsupportedModelError(AutopruneError):
    """The model cannot be traced or pruned; the message names the layer or op."""


class BackendUnavailable(AutopruneError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""
