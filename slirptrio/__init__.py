"""slirptrio: a user-mode network stack for QEMU guests, on trio, with deterministic replay."""

__version__ = "0.1.0"

from slirptrio.api import SlirpStack, StackStatistics, open_stack
from slirptrio.config import Config, ConfigError, parse_user_options
from slirptrio.core.info import FlowInfo
from slirptrio.shell.forwards import ForwardError

__all__ = [
    "Config",
    "ConfigError",
    "FlowInfo",
    "ForwardError",
    "SlirpStack",
    "StackStatistics",
    "__version__",
    "open_stack",
    "parse_user_options",
]
