"""One running session: a stack, its journal and pcap, its transport and its flows."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from slirptrio import __version__
from slirptrio.config import Config
from slirptrio.core.stack import Stack
from slirptrio.journal import Header, JournalWriter
from slirptrio.shell import transport as tp
from slirptrio.shell.datagrams import Datagrams
from slirptrio.shell.flows import TcpFlows
from slirptrio.shell.runtime import Recorder, Runtime

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


def default_journal_path() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(default_state_dir(), f"session-{stamp}-{os.getpid()}.journal")


async def run_session(
    config: Config,
    spec: TransportSpec,
    *,
    seed: int | None = None,
    journal_path: str | None = None,
    pcap_path: str | None = None,
    on_ready: Callable[[], None] | None = None,
    meta: dict[str, object] | None = None,
    dns_upstreams: list[tuple[str, int]] | None = None,
) -> None:
    """Run the stack until cancelled; journal and pcap are closed on the way out.

    ``dns_upstreams`` fixes the resolvers the DNS relay uses; None follows /etc/resolv.conf.
    """
    if seed is None:
        seed = secrets.randbits(63)
    stack = Stack(config, seed)
    origin_ns = time.time_ns()
    journal = None
    if journal_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(journal_path)), exist_ok=True)
        header = Header(
            seed=seed,
            config=config.to_dict(),
            origin_ns=origin_ns,
            version=__version__,
            meta=dict(meta or {}),
        )
        journal = JournalWriter.create(journal_path, header)
    pcap = None
    if pcap_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(pcap_path)), exist_ok=True)
        pcap = open(pcap_path, "wb")  # noqa: SIM115 - closed by the recorder
    recorder = Recorder(journal, pcap, origin_ns)
    port = tp.GuestPort()
    try:
        runtime = Runtime(stack, port, recorder)
        tcp = TcpFlows(runtime.inbox)
        datagrams = Datagrams(runtime.inbox, dns_upstreams=dns_upstreams)
        runtime.handlers.update(tcp.handlers())
        runtime.handlers.update(datagrams.handlers())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await nursery.start(tcp.run)
            await nursery.start(datagrams.run)
            cleanup: str | None = None
            if spec.mode == "listen":
                listener = await tp.open_listener(spec.addr)
                cleanup = spec.addr.path if spec.addr.kind == "unix" else None
                nursery.start_soon(tp.run_listen, listener, runtime.inbox, port)
            elif spec.mode == "connect":
                nursery.start_soon(tp.run_connect, spec.addr, runtime.inbox, port)
            else:
                assert spec.remote is not None
                sock = await tp.open_dgram(spec.addr)
                cleanup = spec.addr.path if spec.addr.kind == "unix" else None
                nursery.start_soon(tp.run_dgram, sock, spec.remote, runtime.inbox, port)
            if on_ready is not None:
                on_ready()
            try:
                await trio.sleep_forever()
            finally:
                if cleanup:
                    with contextlib.suppress(OSError):
                        os.unlink(cleanup)
    finally:
        recorder.close()
        log.info(
            "session ended: %d records, frames in %d out %d, dropped toward guest %d",
            recorder.journal.records if recorder.journal else 0,
            stack.counters["frames_in"],
            stack.counters["frames_out"],
            port.dropped,
        )
