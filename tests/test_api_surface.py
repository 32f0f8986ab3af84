"""What embedders get from ``slirptrio`` itself: the public names, and statistics that read 0
for a counter that has not moved yet."""

from __future__ import annotations

import collections
import pathlib

import slirptrio
from slirptrio.shell import descriptors
from slirptrio.shell.control import request


def test_every_public_name_resolves() -> None:
    for name in slirptrio.__all__:
        assert getattr(slirptrio, name) is not None, name
    assert slirptrio.raise_nofile_limit is descriptors.raise_nofile_limit


async def test_counters_read_zero_before_the_first_frame(tmp_path: pathlib.Path) -> None:
    ctl = str(tmp_path / "ctl.sock")
    async with slirptrio.open_stack(
        "", journal=tmp_path / "s.journal", seed=1, dns_upstreams=["127.0.0.1:9"]
    ) as stack:
        counters = stack.statistics().counters
        assert isinstance(counters, collections.Counter)
        assert counters["frames_in"] == 0 and "frames_in" not in counters
        await stack.serve_control(ctl)
        answer = await request(ctl, {"cmd": "stats"})
        assert answer["ok"] and isinstance(answer["counters"], dict)
        assert "frames_in" not in answer["counters"]  # (a plain dict in JSON, as before)
