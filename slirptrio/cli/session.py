"""The command line's session: a stack, its journal and pcap, its transport and its flows."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from slirptrio.api import SlirpStack, open_stack
from slirptrio.config import Config
from slirptrio.journal.writer import DEFAULT_BUDGET, DEFAULT_JOURNAL_MAX
from slirptrio.shell import transport as tp

log = logging.getLogger("slirptrio")


@dataclass(frozen=True)
class TransportSpec:
    """How QEMU reaches us: ``listen``/``connect`` a stream address, or a ``dgram`` pair."""

    mode: str  # "listen" | "connect" | "dgram"
    addr: tp.Address
    remote: tp.Address | None = None

    def qemu_args(self, netdev_id: str = "n0") -> str:
        """The QEMU ``-netdev`` argument that attaches a guest to this transport."""
        if self.mode == "listen":
            return f"-netdev stream,id={netdev_id},server=off,{self.addr.qemu('addr')}"
        if self.mode == "connect":
            return f"-netdev stream,id={netdev_id},server=on,{self.addr.qemu('addr')}"
        assert self.remote is not None
        # QEMU's local end is our remote and vice versa.
        return (
            f"-netdev dgram,id={netdev_id},{self.remote.qemu('local')},{self.addr.qemu('remote')}"
        )


def default_state_dir() -> str:
    """Where journals and pcaps go by default: ``$XDG_STATE_HOME/slirptrio`` (~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "slirptrio")


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
    journal_policy: str = "lossy",
    journal_buffer: int = DEFAULT_BUDGET,
    journal_overwrite: bool = False,
) -> None:
    """Run the stack until cancelled; journal and pcap are closed on the way out.

    ``dns_upstreams`` fixes the resolvers the DNS relay uses; None follows /etc/resolv.conf.
    ``control_path`` serves the JSON-lines control socket there.
    """
    upstreams = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in dns_upstreams or []]
    async with open_stack(
        config, journal=journal_path, pcap=pcap_path, seed=seed,
        dns_upstreams=upstreams or None, meta=dict(meta or {}), journal_max=journal_max,
        pcap_max=pcap_max, journal_policy=journal_policy, journal_buffer=journal_buffer,
        journal_overwrite=journal_overwrite,
    ) as stack:
        if spec.mode == "listen":
            await stack.listen_qemu(str(spec.addr))
        elif spec.mode == "connect":
            await stack.connect_qemu(str(spec.addr))
        else:
            assert spec.remote is not None
            await stack.dgram_qemu(str(spec.addr), str(spec.remote))
        if control_path is not None:
            await stack.serve_control(control_path)
        if on_ready is not None:
            on_ready(stack)
        await trio.sleep_forever()
