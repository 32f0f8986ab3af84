"""slirptrio: a user-mode network stack for QEMU guests, on trio, with deterministic replay.

The public names are imported lazily, so that ``import slirptrio.core`` (the sans-I/O stack)
loads neither trio nor the journal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from slirptrio.api import SlirpStack, StackStatistics, open_stack, raise_nofile_limit
    from slirptrio.config import Config, ConfigError, parse_user_options
    from slirptrio.core.faults import FaultError, RuleInfo
    from slirptrio.core.info import FlowInfo
    from slirptrio.shell.forwards import ForwardError
    from slirptrio.syntax.forward import ForwardInfo

_LAZY = {
    "SlirpStack": "slirptrio.api",
    "StackStatistics": "slirptrio.api",
    "open_stack": "slirptrio.api",
    "raise_nofile_limit": "slirptrio.api",
    "Config": "slirptrio.config",
    "ConfigError": "slirptrio.config",
    "parse_user_options": "slirptrio.config",
    "FlowInfo": "slirptrio.core.info",
    "ForwardInfo": "slirptrio.syntax.forward",
    "FaultError": "slirptrio.core.faults",
    "RuleInfo": "slirptrio.core.faults",
    "ForwardError": "slirptrio.shell.forwards",
}

__all__ = [
    "Config",
    "ConfigError",
    "FaultError",
    "FlowInfo",
    "ForwardError",
    "ForwardInfo",
    "RuleInfo",
    "SlirpStack",
    "StackStatistics",
    "__version__",
    "open_stack",
    "parse_user_options",
    "raise_nofile_limit",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slirptrio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
