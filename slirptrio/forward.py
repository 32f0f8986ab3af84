"""Kept for ``from slirptrio.forward import ...``: the rules' syntax is
:mod:`slirptrio.syntax.forward`."""

from __future__ import annotations

from slirptrio.syntax.forward import (
    ForwardInfo,
    GuestFwd,
    HostFwd,
    RuleError,
    bracket,
    fwd_key,
    hostfwd_key,
    parse_guestfwd,
    parse_hostfwd,
)

__all__ = [
    "ForwardInfo", "GuestFwd", "HostFwd", "RuleError", "bracket", "fwd_key", "hostfwd_key",
    "parse_guestfwd", "parse_hostfwd",
]  # fmt: skip
