"""QEMU's comma-separated option lists: ``a,b=c,,d`` (``,,`` is a literal comma)."""

from __future__ import annotations

from slirptrio.syntax.errors import ConfigError


def split_keyval(text: str) -> list[str]:
    """``text`` split on commas that are not doubled; every item kept, empty ones too."""
    items: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == ",":
            if i + 1 < n and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    items.append("".join(cur))
    return items


def split_options(text: str) -> list[tuple[str, str]]:
    """Split QEMU's ``key=value,key=value`` syntax; ``,,`` is a comma inside a value. One
    trailing comma is allowed; an empty item elsewhere or one without ``=`` is an error."""
    items = split_keyval(text)
    if not items[-1]:
        items.pop()  # "" and a trailing comma
    out: list[tuple[str, str]] = []
    for item in items:
        if not item:
            raise ConfigError("", "empty option (stray comma)")
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(key, "expects key=value")
        out.append((key, value))
    return out


def escape(value: str) -> str:
    """``value`` as it goes into an option list (commas doubled)."""
    return value.replace(",", ",,")
