"""What a piece of user syntax that does not parse raises: one ``ValueError`` per kind, whose
text is the one line the user sees."""

from __future__ import annotations


class ConfigError(ValueError):
    """An option string QEMU would reject, or one slirptrio cannot honour yet."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"option '{option}': {message}")
        self.option = option


class RuleError(ValueError):
    """A forwarding rule that does not parse."""


class AddressError(ValueError):
    """A transport address that cannot be parsed."""


class CaptureError(ValueError):
    """A capture request that cannot be served (bad filter, too many captures)."""
