"""Settings for every test: a TCP transition missing from the lifecycle table raises.

With ``SLIRPTRIO_RECORD_TRANSITIONS=FILE`` the TCP transitions the session takes are written
to FILE, one ``PHASE TRIGGER`` a line (tests/test_tcp_lifecycle.py reads them).
"""

from __future__ import annotations

import os

import pytest

from slirptrio.core.tcp import lifecycle

lifecycle.strict = True

_RECORD = os.environ.get("SLIRPTRIO_RECORD_TRANSITIONS")
_taken: set[tuple[str, str]] = set()


def _observe(old: lifecycle.Phase, trigger: lifecycle.Trigger, new: lifecycle.Phase) -> None:
    _taken.add((old.name, trigger.name))


if _RECORD:
    lifecycle.observer = _observe


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _RECORD:
        with open(_RECORD, "w") as f:
            f.writelines(f"{p} {t}\n" for p, t in sorted(_taken))
