"""The command line's session: a stack, its journal and pcap, its transport and its flows."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from slirptrio.api import SlirpStack, open_stack
from slirptrio.cli.statedir import default_state_dir as default_state_dir
from slirptrio.config import Config
from slirptrio.journal.writer import DEFAULT_BUDGET, DEFAULT_JOURNAL_MAX, Policy
from slirptrio.shell import transport as tp
from slirptrio.syntax.address import hostport

log = logging.getLogger("slirptrio")

Mode = Literal["listen", "connect", "dgram", "mcast"]
"""How QEMU reaches the stack: it connects to our stream socket, we connect to its, or a
datagram socket pair."""


@dataclass(frozen=True)
class TransportSpec:
    """How QEMU reaches us: ``listen``/``connect`` a stream address, or a ``dgram`` pair."""

    mode: Mode
    addr: tp.Address
    remote: tp.Address | None = None

    def qemu_args(self, netdev_id: str = "n0") -> str:
        """The QEMU ``-netdev`` argument that attaches a guest to this transport."""
        if self.mode == "listen":
            return f"-netdev stream,id={netdev_id},server=off,{self.addr.qemu('addr')}"
        if self.mode == "connect":
            return f"-netdev stream,id={netdev_id},server=on,{self.addr.qemu('addr')}"
        if self.mode == "mcast":
            return (f"-netdev socket,id={netdev_id},mcast={self.addr.host}:{self.addr.port},"
                    "localaddr=127.0.0.1")
        assert self.remote is not None
        # QEMU's local end is our remote and vice versa.
        return (
            f"-netdev dgram,id={netdev_id},{self.remote.qemu('local')},{self.addr.qemu('remote')}"
        )


def default_journal_path(suffix: str = "") -> str:
    """A new journal path in :func:`default_state_dir` (created, 0700, if missing): the only
    place the command line makes directories for a journal."""
    from slirptrio.journal.files import ensure_parent

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(default_state_dir(), f"session-{stamp}-{os.getpid()}{suffix}.journal")
    ensure_parent(path)
    return path


async def run_session(
    config: Config,
    spec: TransportSpec,
    *,
    seed: int | None = None,
    journal_path: str | None = None,
    pcap_path: str | None = None,
    on_ready: Callable[[SlirpStack], None] | None = None,
    meta: dict[str, object] | None = None,
    dns_upstreams: list[tuple[str, int]] | None = None,
    control_path: str | None = None,
    journal_max: int | None = DEFAULT_JOURNAL_MAX,
    pcap_max: int | None = DEFAULT_JOURNAL_MAX,
    journal_policy: Policy = "lossy",
    journal_buffer: int = DEFAULT_BUDGET,
    on_close: Callable[[SlirpStack], None] | None = None,
    faults: list[str] | None = None,
    journal_overwrite: bool = False,
) -> None:
    """Run the stack until cancelled; journal and pcap are closed on the way out.

    ``dns_upstreams`` fixes the resolvers the DNS relay uses; None follows /etc/resolv.conf.
    ``control_path`` serves the JSON-lines control socket there. ``on_close(stack)`` is
    called when the session ends, before the stack closes (its session record).
    """
    upstreams = [hostport(h, p) for h, p in dns_upstreams or []]
    async with open_stack(
        config, journal=journal_path, pcap=pcap_path, seed=seed,
        dns_upstreams=upstreams or None, meta=dict(meta or {}), journal_max=journal_max,
        pcap_max=pcap_max, journal_policy=journal_policy, journal_buffer=journal_buffer,
        faults=faults or (),
        journal_overwrite=journal_overwrite,
    ) as stack:
        if spec.mode == "listen":
            await stack.listen_qemu(str(spec.addr))
        elif spec.mode == "connect":
            await stack.connect_qemu(str(spec.addr))
        elif spec.mode == "mcast":
            await stack.mcast_qemu(f"{spec.addr.host}:{spec.addr.port}")
        else:
            assert spec.remote is not None
            await stack.dgram_qemu(str(spec.addr), str(spec.remote))
        if control_path is not None:
            await stack.serve_control(control_path)
        if on_ready is not None:
            on_ready(stack)
        try:
            await trio.sleep_forever()
        finally:
            if on_close is not None:
                on_close(stack)
