"""slirptrio: a user-mode network stack for QEMU guests, on trio, with deterministic replay."""

__version__ = "0.1.0"
