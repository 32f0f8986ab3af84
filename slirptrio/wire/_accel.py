"""Which implementation of the fast path this process uses, decided once, at first import.

The native extension (:mod:`slirptrio.wire._native`, built from ``_native.c`` by ``pip
install`` when a C compiler is there) is used when it loads; it refuses to load when the
environment variable ``SLIRPTRIO_PURE`` is set (to anything but "" or "0"), which forces the
pure-Python reference everywhere. :mod:`slirptrio.wire.fast` is the interface.
"""

from __future__ import annotations

from types import ModuleType

native: ModuleType | None
try:
    from slirptrio.wire import _native as native
except ImportError as exc:  # no compiler at install time, or SLIRPTRIO_PURE set
    native = None
    REASON = str(exc)
    if "SLIRPTRIO_PURE" not in REASON:
        REASON = f"the native extension is not built ({REASON})"
else:
    REASON = ""

IMPL = "native" if native is not None else "pure"
"""``"native"`` or ``"pure"``: the path every fast-path function of this process takes."""
