"""The trio embedding API: run a slirptrio stack inside your own trio program.

::

    async with slirptrio.open_stack("net=192.168.76.0/24", journal="vm1.journal") as stack:
        print(await stack.listen_qemu("unix:/tmp/vm1.sock"))   # the QEMU -netdev argument
        ...
        for flow in stack.flows():
            print(flow.to_dict())

:func:`open_stack` starts the stack's tasks (the door loop, host socket flows, the DNS upstream
watcher) in a nursery of its own and yields a :class:`SlirpStack`. Leaving the ``async with``
block cancels them all, closes every host socket and the guest transport, and closes the journal
and pcap. Methods that start something (``listen_qemu`` ...) return once it is ready, so a QEMU
started afterwards can connect. Everything that changes the stack's behaviour goes through the
journaled door, so a session driven through this API replays like any other.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import trio

from slirptrio import __version__
from slirptrio.config import Config, ConfigError, parse_user_options
from slirptrio.core import constants
from slirptrio.core.dhcp import Lease
from slirptrio.core.events import FaultAdd, FaultRemove, TcpClose, TcpRecvCredit, TcpReset
from slirptrio.core.faults import FaultError, RuleInfo, parse_rule
from slirptrio.core.info import FlowInfo
from slirptrio.core.stack import Stack
from slirptrio.core.tftp import TftpSessionInfo
from slirptrio.journal import Header
from slirptrio.journal.writer import DEFAULT_BUDGET, DEFAULT_JOURNAL_MAX, Policy, Recorder
from slirptrio.shell import control
from slirptrio.shell import transport as tp
from slirptrio.shell.capture import Captures, filter_from_request
from slirptrio.shell.datagrams import Datagrams
from slirptrio.shell.descriptors import fit_max_flows
from slirptrio.shell.descriptors import raise_nofile_limit as raise_nofile_limit
from slirptrio.shell.flows import TcpFlows
from slirptrio.shell.forwards import ForwardError, Forwards
from slirptrio.shell.runtime import Runtime
from slirptrio.shell.smb import SMB_PORTS, SmbError, SmbShare, check_share
from slirptrio.shell.tftp import TftpFiles, open_root
from slirptrio.syntax.address import Endpoint, hostport, parse_upstream
from slirptrio.syntax.errors import CaptureError
from slirptrio.syntax.forward import ForwardInfo
from slirptrio.wire import fast

log = logging.getLogger("slirptrio")


class _Opening:
    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False


@dataclasses.dataclass(frozen=True)
class StackStatistics:
    """A snapshot of the stack's counters (see :meth:`SlirpStack.statistics`).

    ``counters`` holds every core counter that has moved (a Counter: any other reads 0):
    ``frames_in``, ``frames_out``, and one ``drop_<reason>`` per kind of malformed or refused
    frame, plus per-protocol counts.
    ``journal_bytes`` is what the writer has written (old segments deleted by the ring
    included); ``journal_gaps`` counts the times the journal stopped, ``journal_lost_records``
    the records it lost then; ``journal_queued_bytes`` waits for the writer thread.
    """

    counters: collections.Counter[str]
    flows_by_state: dict[str, int]
    leases: int
    journal_bytes: int
    journal_records: int
    journal_gaps: int
    journal_lost_records: int
    journal_queued_bytes: int
    pcap_lost_frames: int
    frames_dropped_toward_guest: int
    guest_attached: bool
    frames_from_strangers: int = 0
    """Datagrams to a ``-netdev dgram`` transport from anybody but its peer (dropped)."""
    fast_path: str = fast.IMPL
    """``"native"`` (the C extension) or ``"pure"`` (Python): the per-frame codecs in use."""
    captures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Live captures: id, frames, lost (the reader was too slow), filter."""
    faults: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Fault rules in force: id, rule, added_s, active, stats (what each has done)."""
    recorder_failures: int = 0
    """Times the recorder itself raised (a snapshot, an encoding): each one ends the journal's
    segment with a named gap; the network goes on."""
    recorder_last_failure: str | None = None


class SlirpStack:
    """A running stack; get one from :func:`open_stack`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        runtime: Runtime,
        recorder: Recorder,
        forwards: Forwards,
        journal_path: str | None,
        pcap_path: str | None,
        captures: Captures,
    ) -> None:
        self._nursery = nursery
        self._captures = captures
        self._runtime = runtime
        self._forwards = forwards
        self._opening: dict[int, _Opening] = {}
        self._recorder = recorder
        self._cleanup: list[str] = []
        self.journal_path = journal_path
        self.pcap_path = pcap_path
        self._transport_started = False
        self._next_fault = 0
        self._listening: list[str] = []  # where QEMUs may connect (``slirptrio qemu --join``)

    @property
    def config(self) -> Config:
        """The stack's configuration."""
        return self._runtime.stack.config

    @property
    def seed(self) -> int:
        """The PRNG seed (in the journal header)."""
        return self._runtime.stack.seed

    # ------------------------------------------------------------------------ transports

    def _claim_transport(self) -> None:
        if self._transport_started:
            raise RuntimeError("this stack already has a guest transport")
        self._transport_started = True

    async def listen_qemu(self, address: str) -> str:
        """Listen for QEMU's ``-netdev stream`` client at ``unix:PATH`` or ``tcp:HOST:PORT``.

        Returns once listening, with the ``-netdev`` argument QEMU needs. Several QEMUs may
        connect at once: each is a port of the stack's switch (:meth:`ports`), on one network;
        after a disconnect the next connection is accepted and the stack's state kept. A unix
        socket is created 0600; a stale socket file is replaced, a live one (another stack's)
        is not. Raises :exc:`OSError` (naming the address) when it cannot listen.
        """
        self._claim_transport()
        addr = tp.Address.parse(address, ("unix", "tcp"))
        listener = await tp.open_listener(addr)
        if addr.kind == "unix":
            self._cleanup.append(addr.path)
        self._listening.append(str(addr))
        self._nursery.start_soon(
            tp.run_listen, listener, self._runtime.inbox, self._runtime.port, self._runtime.ports
        )
        return f"-netdev stream,id=n0,server=off,{addr.qemu('addr')}"

    async def connect_qemu(self, address: str) -> str:
        """Connect to QEMU's ``-netdev stream,server=on`` (retrying until it listens, and
        again after every disconnect). Returns the ``-netdev`` argument QEMU needs."""
        self._claim_transport()
        addr = tp.Address.parse(address, ("unix", "tcp"))
        self._nursery.start_soon(tp.run_connect, addr, self._runtime.inbox, self._runtime.port)
        await trio.lowlevel.checkpoint()
        return f"-netdev stream,id=n0,server=on,{addr.qemu('addr')}"

    async def dgram_qemu(self, local: str, remote: str) -> str:
        """Exchange frames with QEMU's ``-netdev dgram``: bind ``local``, send to ``remote``
        (each ``unix:PATH`` or ``udp:HOST:PORT``). Returns the ``-netdev`` argument.

        Only datagrams from ``remote`` are taken; others are dropped and counted
        (``statistics().frames_from_strangers``). A unix ``local`` is created 0600."""
        self._claim_transport()
        kinds = ("unix", "udp")
        laddr, raddr = tp.Address.parse(local, kinds), tp.Address.parse(remote, kinds)
        try:
            peer = await tp.PeerFilter.resolve(raddr)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot resolve {raddr}: {exc.strerror or exc}") from exc
        sock = await tp.open_dgram(laddr)
        if laddr.kind == "unix":
            self._cleanup.append(laddr.path)
        self._nursery.start_soon(
            tp.run_dgram, sock, raddr, self._runtime.inbox, self._runtime.port, peer
        )
        return f"-netdev dgram,id=n0,{raddr.qemu('local')},{laddr.qemu('remote')}"

    def add_guest(self, stream: trio.abc.Stream, peer: str = "embedded") -> int:
        """Plug in one more guest: ``stream`` carries its frames in QEMU's stream framing
        (4-byte length, frame). It becomes a port of the switch, beside whatever transport
        the stack already has; returns the port number. The port goes away when the stream
        ends (or its reader stops reading: see ``transport.STALL_FRAMES``).

        Raises:
          RuntimeError: every switch port is in use.
        """
        claimed = tp.claim_port(self._runtime.ports, self._runtime.port)
        if claimed is None:
            raise RuntimeError("no free switch port")
        number, gp = claimed

        async def serve() -> None:
            try:
                await tp.serve_stream(stream, self._runtime.inbox, gp, peer, number)
            finally:
                self._runtime.ports.pop(number, None)

        self._nursery.start_soon(serve)
        return number

    def ports(self) -> list[dict[str, Any]]:
        """The guests on the switch: ``port``, ``peer``, ``macs``, ``addresses``, ``frames_in``,
        ``frames_out``, ``forwarded`` (to other ports), ``drops`` (by the switch) and
        ``queue_drops`` (frames lost at the port's full queue)."""
        out = self._runtime.stack.ports()
        for p in out:
            gp = self._runtime.port if p["port"] == 0 else self._runtime.ports.get(p["port"])
            p["queue_drops"] = gp.dropped if gp is not None else 0
        return out

    async def mcast_qemu(self, bus: str) -> str:
        """Join QEMU's multicast frame bus ``GROUP:PORT`` (``-netdev socket,mcast=``) as one
        more member, on loopback only (membership and sends on 127.0.0.1, TTL 0): the VMs on
        the bus and the stack share one network. Frames the stack sent come back looped and
        are left out (by their source MAC). Returns the ``-netdev`` argument QEMU needs."""
        self._claim_transport()
        group, port = tp.parse_mcast(bus)
        sock = await tp.open_mcast(group, port)
        self._nursery.start_soon(
            tp.run_dgram, sock, tp.Address("udp", host=group, port=port), self._runtime.inbox,
            self._runtime.port, tp.AnySender(tp.Address("udp", host=group, port=port)),
            self._runtime.stack.own_mac,
        )
        return f"-netdev socket,id=n0,mcast={group}:{port},localaddr=127.0.0.1"

    # ---------------------------------------------------------------------- introspection

    def now_ns(self) -> int:
        """The stack's clock: nanoseconds since it started (the journal's time base)."""
        return self._runtime.now_ns()

    def flows(self) -> list[FlowInfo]:
        """The NAT table, like QEMU's ``info usernet``."""
        return self._runtime.stack.flows(self.now_ns())

    def leases(self) -> list[Lease]:
        """DHCP leases held now."""
        return self._runtime.stack.leases(self.now_ns())

    def dns_upstreams(self) -> list[dict[str, str]]:
        """The DNS relay's upstreams and their state: ``up``, ``failing: REASON``, ``unused``."""
        return self._runtime.stack.udp.dns.upstream_states()

    def tftp_sessions(self) -> list[TftpSessionInfo]:
        """TFTP transfers in progress."""
        return self._runtime.stack.tftp_sessions(self.now_ns())

    def statistics(self) -> StackStatistics:
        """Counters and sizes, as of now."""
        stack = self._runtime.stack
        by_state: dict[str, int] = {}
        for f in self.flows():
            key = f"{f.proto}:{f.state}"
            by_state[key] = by_state.get(key, 0) + 1
        rec = self._recorder
        journal, writer, pcap = rec.journal, rec.writer, rec.pcap
        return StackStatistics(
            counters=collections.Counter(dict(sorted(stack.counters.items()))),
            flows_by_state=by_state,
            leases=len(self.leases()),
            journal_bytes=writer.disk.journal_bytes,
            journal_records=writer.records_written,
            journal_gaps=journal.gaps if journal is not None else 0,
            journal_lost_records=(
                journal.lost_records + writer.lost_records if journal is not None else 0
            ),
            journal_queued_bytes=writer.queued,
            pcap_lost_frames=(pcap.lost_frames + writer.lost_frames) if pcap is not None else 0,
            frames_dropped_toward_guest=self._runtime.port.dropped,
            guest_attached=self._runtime.port.attached,
            frames_from_strangers=self._runtime.port.foreign,
            captures=[c.stats() for c in self._captures.active.values()],
            faults=[r.to_dict() for r in self.faults()],
            recorder_failures=rec.failures + self._runtime.door.sink_failures,
            recorder_last_failure=journal.last_failure if journal is not None else None,
        )

    # ---------------------------------------------------------------------- control socket

    # ------------------------------------------------------------------ fault rules (#23)

    def add_fault(self, rule: str) -> int:
        """Put a fault rule in force (syntax: :mod:`slirptrio.core.faults`, e.g.
        ``"proto=tcp loss=2% delay=50ms jitter=50ms"``); return its id. The rule goes
        through the journaled door, so a replay makes the same drops and delays.

        Raises:
          FaultError: the rule does not parse (the message names the bad word).
        """
        text = parse_rule(rule).text()
        self._next_fault += 1
        self._runtime.submit(FaultAdd(self._next_fault, text))
        return self._next_fault

    def remove_fault(self, rule_id: int) -> None:
        """Take fault rule ``rule_id`` out of force. Raises KeyError if there is none."""
        if all(r.id != rule_id for r in self.faults()):
            raise KeyError(f"no fault rule {rule_id}")
        self._runtime.submit(FaultRemove(rule_id))

    def clear_faults(self) -> None:
        """Take every fault rule out of force."""
        self._runtime.submit(FaultRemove(-1))

    def faults(self) -> list[RuleInfo]:
        """The fault rules in force, with what each has done so far."""
        return self._runtime.stack.fault_rules(self.now_ns())

    @contextlib.asynccontextmanager
    async def fault(self, rule: str) -> AsyncIterator[int]:
        """A fault rule in force for the duration of an ``async with`` block (for tests);
        yields its id and removes it on exit, also on cancellation or an error."""
        rule_id = self.add_fault(rule)
        try:
            yield rule_id
        finally:
            if any(r.id == rule_id for r in self.faults()):
                self._runtime.submit(FaultRemove(rule_id))

    # --------------------------------------------------------------------------- forwards

    async def add_hostfwd(self, rule: str) -> int:
        """Add a QEMU ``hostfwd`` rule (``tcp::8022-:22``, ``udp:127.0.0.1:0-:53``,
        ``unix:/path-:22``); return the bound host port (the ephemeral one for port 0; 0 for
        unix). Raises :class:`ForwardError` for a bad rule or a port that cannot be bound."""
        return await self._forwards.add_hostfwd(rule)

    async def remove_hostfwd(self, rule: str) -> None:
        """Remove a host forward, named as QEMU's ``hostfwd_remove`` does
        (``[tcp|udp]:[hostaddr]:hostport``) or by its whole rule. Connections already
        forwarded go on. Raises :class:`ForwardError` if there is no such forward."""
        await self._forwards.remove_hostfwd(rule)

    def hostfwds(self) -> dict[str, int]:
        """Active host forwards: rule → bound host port."""
        return self._forwards.host_rules()

    def forwards(self) -> list[ForwardInfo]:
        """Every active forward, as QEMU's ``info usernet`` lists them: host forwards with
        their bound address and port (static or added at runtime) and listener state, then
        guest forwards."""
        return self._forwards.describe()

    def listeners(self) -> list[dict[str, Any]]:
        """Every host forward's listener: ``rule``, ``proto``, bound ``addr`` and ``port``,
        and ``state``: ``"listening"``, or ``"backing-off: EMFILE"`` (the errno) while it
        cannot accept for want of file descriptors and retries."""
        return self._forwards.listeners()

    async def add_guestfwd(self, rule: str) -> int:
        """Add a QEMU ``guestfwd`` rule (``tcp:10.0.2.100:80-tcp:127.0.0.1:8080``,
        ``...-unix:/path``, ``...-cmd:COMMAND``); return its id."""
        return await self._forwards.add_guestfwd(rule)

    async def serve_guestfwd(
        self, address: str, handler: Callable[[trio.abc.HalfCloseableStream], Awaitable[None]]
    ) -> int:
        """Serve guest TCP connections to ``address`` (``"10.0.2.100:80"``) in-process: each
        one runs ``handler(stream)`` in the stack's nursery. When the handler returns, the
        stream is closed (the guest sees FIN); if it raises, the exception is logged and
        the guest sees a reset. The address must be inside the network and not the host or
        DNS address. Returns the forward's id (for :meth:`remove_guestfwd`)."""
        addr, sep, port = address.rpartition(":")
        try:
            ip = ip_address(addr[1:-1] if addr.startswith("[") else addr)
            nport = int(port)
        except ValueError:
            raise ForwardError(f"{address!r}: expected ADDR:PORT or [IPV6]:PORT") from None
        cfg = self.config
        if isinstance(ip, IPv6Address):
            inside = cfg.ipv6 and ip in cfg.ipv6_net and ip not in (cfg.ipv6_host, cfg.ipv6_dns)
            net: object = cfg.ipv6_net
        else:
            inside = ip in cfg.net and ip not in (cfg.host, cfg.dns)
            net = cfg.net
        text = hostport(str(ip), nport)
        if not sep or not inside or not 0 < nport < 65536:
            raise ForwardError(f"{address!r}: must be an address:port inside {net}")
        opener = self._forwards.handler_opener(handler)
        return await self._forwards.add_guestfwd(f"{text}-handler", opener)

    async def remove_guestfwd(self, fid: int) -> None:
        """Stop serving guest forward ``fid``; its open connections go on."""
        await self._forwards.remove_guestfwd(fid)

    async def connect_to_guest(
        self, port: int, address: str | None = None
    ) -> trio.abc.HalfCloseableStream:
        """Open a TCP connection to ``address:port`` in the guest (default: the first DHCP
        address), carried in-process: no host socket. It comes from the ``host`` address
        (10.0.2.2), as a host forward would.

        Returns once the guest accepted. Raises ``ConnectionRefusedError`` if the guest
        refused it or gave no answer (the core gives up after 60 s of SYN retransmissions).
        Cancelling the wait resets the half-open connection.
        """
        guest = address or str(self.config.dhcpstart)
        flow = self._forwards.next_flow()
        waiter = _Opening()
        self._opening[flow] = waiter
        try:
            stream = await self._forwards.connect_to_guest(flow, guest, port)
            await waiter.event.wait()
        except BaseException:
            self._opening.pop(flow, None)
            with trio.CancelScope(shield=True):
                await self._runtime.inbox.send(TcpReset(flow, errno.ECONNABORTED))
            raise
        if not waiter.ok:
            await stream.aclose()
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"guest refused {guest}:{port}"
            )
        return stream

    def _watch_opening(self) -> None:
        # The first TcpRecvCredit of a flow means established; TcpClose before it, refused.
        handlers = self._runtime.handlers
        credit, close = handlers[TcpRecvCredit], handlers[TcpClose]
        opening = self._opening

        def on_credit(eff: TcpRecvCredit) -> None:
            w = opening.pop(eff.flow, None)
            if w is not None:
                w.ok = True
                w.event.set()
            credit(eff)

        def on_close(eff: TcpClose) -> None:
            w = opening.pop(eff.flow, None)
            if w is not None:
                w.event.set()
            close(eff)

        handlers[TcpRecvCredit] = on_credit
        handlers[TcpClose] = on_close

    # ---------------------------------------------------------------------- control socket

    async def serve_control(self, path: str) -> None:
        """Serve the JSON-lines control socket (:mod:`slirptrio.shell.control`) at ``path``.

        Returns once listening; the socket file (0600) is removed when the stack closes. Only
        clients of this process's uid, or root, are served (SO_PEERCRED).
        """
        try:
            listener = await tp.open_listener(tp.Address("unix", path=path))
        except OSError as exc:
            raise OSError(exc.errno, f"control socket: {exc.strerror or exc}") from exc
        self._cleanup.append(path)
        await self._nursery.start(control.serve_control, listener, self._control_handlers())

    def _control_handlers(self) -> dict[str, control.Handler]:
        async def info(_req: dict[str, Any]) -> dict[str, Any]:
            return {
                "forwards": [f.to_dict() for f in self.forwards()],
                "flows": [f.to_dict() for f in self.flows()],
                "hostfwd": self.hostfwds(),
                "tftp": [t.to_dict() for t in self.tftp_sessions()],
                "dns_upstreams": self.dns_upstreams(),
                "ports": self.ports(),
                "listen": list(self._listening),
            }

        async def leases(_req: dict[str, Any]) -> dict[str, Any]:
            now = self.now_ns()
            return {
                "leases": [
                    {
                        "ip": str(IPv4Address(lease.ip)),
                        "mac": lease.mac.hex(":"),
                        "expires_in_s": max(0, (lease.expires_ns - now) // 1_000_000_000),
                    }
                    for lease in self.leases()
                ]
            }

        async def stats(_req: dict[str, Any]) -> dict[str, Any]:
            s = self.statistics()
            # asdict would rebuild the Counter from (name, count) pairs, counting the pairs.
            out = dataclasses.asdict(dataclasses.replace(s, counters=collections.Counter()))
            out["counters"] = dict(s.counters)
            return out

        def rule_of(req: dict[str, Any]) -> str:
            rule = req.get("rule")
            if not isinstance(rule, str):
                raise control.ControlError('expected {"cmd": ..., "rule": "RULE"}')
            return rule

        async def hostfwd_add(req: dict[str, Any]) -> dict[str, Any]:
            try:
                return {"port": await self.add_hostfwd(rule_of(req))}
            except ForwardError as exc:
                raise control.ControlError(str(exc)) from None

        async def hostfwd_remove(req: dict[str, Any]) -> dict[str, Any]:
            try:
                await self.remove_hostfwd(rule_of(req))
            except ForwardError as exc:
                raise control.ControlError(str(exc)) from None
            return {}

        async def capture(req: dict[str, Any]) -> dict[str, Any]:
            try:
                cap = self._captures.open(filter_from_request(req, self._flow_endpoints))
            except CaptureError as exc:
                raise control.ControlError(str(exc)) from None

            async def run(stream: trio.abc.Stream) -> None:
                await self._captures.serve(cap, stream)

            return {
                "capture": cap.id,
                "filter": cap.filter.describe(),
                "_takeover": control.Takeover(run, lambda: self._captures.close(cap)),
            }

        return {
            "info": info,
            "leases": leases,
            "stats": stats,
            "hostfwd-add": hostfwd_add,
            "hostfwd-remove": hostfwd_remove,
            "capture": capture,
            **self._fault_handlers(),
        }

    def _fault_handlers(self) -> dict[str, control.Handler]:
        """``fault-add`` {"rule": TEXT} -> id and canonical rule; ``fault-remove`` {"id": N};
        ``fault-clear``; ``fault-list`` -> faults."""

        async def add(req: dict[str, Any]) -> dict[str, Any]:
            rule = req.get("rule")
            if not isinstance(rule, str):
                raise control.ControlError('expected {"cmd": "fault-add", "rule": "RULE"}')
            try:
                rule_id = self.add_fault(rule)
            except FaultError as exc:
                raise control.ControlError(f"bad fault rule: {exc}") from None
            return {"id": rule_id, "rule": parse_rule(rule).text()}

        async def remove(req: dict[str, Any]) -> dict[str, Any]:
            rule_id = req.get("id")
            if not isinstance(rule_id, int) or isinstance(rule_id, bool):
                raise control.ControlError('expected {"cmd": "fault-remove", "id": N}')
            try:
                self.remove_fault(rule_id)
            except KeyError:
                raise control.ControlError(f"no fault rule {rule_id}") from None
            return {}

        async def clear(_req: dict[str, Any]) -> dict[str, Any]:
            self.clear_faults()
            return {}

        async def list_(_req: dict[str, Any]) -> dict[str, Any]:
            return {"faults": [r.to_dict() for r in self.faults()]}

        return {"fault-add": add, "fault-remove": remove, "fault-clear": clear,
                "fault-list": list_}

    def _flow_endpoints(self, flow: int) -> tuple[Endpoint, Endpoint] | None:
        for f in self.flows():
            if f.flow == flow:
                return Endpoint(f.guest_ip, f.guest_port), Endpoint(f.dst_ip, f.dst_port)
        return None

    def _remove_files(self) -> None:
        for path in self._cleanup:
            with contextlib.suppress(OSError):
                os.unlink(path)


def check_host_side(config: Config) -> str | None:
    """What the host must provide for ``config`` and does not, as one line: a ``tftp=`` or
    ``smb=`` directory that is not one, a missing smbd. None when all is there."""
    if config.tftp and not os.path.isdir(config.tftp):
        return f"tftp={config.tftp}: not a directory"
    if config.smb:
        try:
            check_share(config.smb)
        except SmbError as exc:
            return str(exc)
    return None


@contextlib.asynccontextmanager
async def open_stack(
    config: Config | str = "",
    *,
    journal: str | os.PathLike[str] | None = None,
    pcap: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    dns_upstreams: Sequence[str] | None = None,
    meta: dict[str, Any] | None = None,
    journal_max: int | None = DEFAULT_JOURNAL_MAX,
    pcap_max: int | None = DEFAULT_JOURNAL_MAX,
    journal_policy: Policy = "lossy",
    journal_buffer: int = DEFAULT_BUDGET,
    faults: Sequence[str] = (),
    journal_overwrite: bool = False,
) -> AsyncIterator[SlirpStack]:
    """Run a stack for the duration of an ``async with`` block.

    Args:
      config: a :class:`Config` or a QEMU ``-netdev user`` option string.
      journal: the journal directory to create (None: no journal).
      pcap: where to write the pcap (None: no pcap).
      seed: the PRNG seed (default: random; recorded in the journal either way).
      dns_upstreams: ``HOST[:PORT]`` resolvers for the DNS relay; None follows
        /etc/resolv.conf.
      meta: extra JSON-able data for the journal header.
      journal_max: the disk the journal may use (its oldest segments go first); None:
        unbounded.
      pcap_max: the disk the pcap and its one rotated file may use; None: unbounded.
      journal_policy: ``"lossy"`` (records dropped while the disk cannot take them; the
        network never waits) or ``"lossless"`` (the network waits for the disk).
      journal_buffer: bytes of records and frames that may wait for the writer thread;
        beyond it the policy applies.
      faults: fault rules in force from the start (:meth:`SlirpStack.add_fault`).
      journal_overwrite: replace an earlier session's journal or pcap at these paths (by
        default that is refused: ``OSError`` naming ``--overwrite``). A path another live
        stack holds is always refused.

    ``max-flows`` is lowered to what the process's RLIMIT_NOFILE allows (with a log line);
    the command line raises the soft limit to the hard one first, an embedding program may
    do the same (:func:`slirptrio.raise_nofile_limit`).

    Raises:
      ConfigError: a bad option string, or what it names is missing on the host (a ``tftp=``
        or ``smb=`` directory, smbd: see :func:`check_host_side`).
      ValueError: a bad DNS upstream or journal policy; a bad fault rule (FaultError).
      OSError: the journal or pcap cannot be created (a symlink in the way, a missing
        directory), is another live stack's, or an earlier session's (see above).
    """
    cfg = parse_user_options(config) if isinstance(config, str) else config
    cfg = fit_max_flows(cfg)
    if fast.IMPL == "native":
        log.info("fast path: native")
    else:
        log.info("fast path: pure Python (%s): several times slower", fast.REASON)
    upstreams = [parse_upstream(u) for u in dns_upstreams] if dns_upstreams else None
    fault_rules = [parse_rule(text).text() for text in faults]  # FaultError before anything
    problem = check_host_side(cfg)
    if problem is not None:
        raise ConfigError("smb" if problem.startswith("smb=") else "tftp", problem)
    if seed is None:
        seed = secrets.randbits(63)
    stack = Stack(cfg, seed)
    origin_ns = time.time_ns()
    journal_path = os.fspath(journal) if journal is not None else None
    pcap_path = os.fspath(pcap) if pcap is not None else None
    header = Header(
        seed=seed, config=cfg.to_dict(), origin_ns=origin_ns, version=__version__,
        meta=dict(meta or {}), constants=constants.gather(),
    )
    recorder = Recorder.open(
        header, journal_dir=journal_path, pcap_path=pcap_path, journal_max=journal_max,
        pcap_max=pcap_max, policy=journal_policy, budget=journal_buffer,
        overwrite=journal_overwrite,
    )
    port = tp.GuestPort(max_bytes=cfg.guest_queue_bytes())
    handle: SlirpStack | None = None
    smb: SmbShare | None = None
    try:
        # With neither journal nor pcap the door needs no sink at all.
        active = journal_path is not None or pcap_path is not None
        runtime = Runtime(stack, port, recorder if active else None)
        tcp = TcpFlows(runtime.inbox, batched=True)
        tcp.sent_can_wait = stack.tcp.sent_can_wait  # a send's report rides on the next read
        datagrams = Datagrams(runtime.inbox, dns_upstreams=upstreams)
        forwards = Forwards(runtime.inbox, tcp, cfg)
        runtime.handlers.update(tcp.handlers())
        runtime.after_burst.append(tcp.kick)
        runtime.handlers.update(datagrams.handlers())
        runtime.handlers.update(forwards.handlers())
        tftp = TftpFiles(runtime.inbox, None)
        runtime.handlers.update(tftp.handlers())
        if cfg.smb:
            smb = SmbShare(cfg.smb, check_share(cfg.smb))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await nursery.start(tcp.run)
            await nursery.start(datagrams.run)
            await nursery.start(forwards.run)
            await nursery.start(tftp.run)
            if cfg.tftp:
                tftp.set_root(open_root(cfg.tftp))
            captures = Captures(origin_ns, runtime.taps)
            handle = SlirpStack(
                nursery, runtime, recorder, forwards, journal_path, pcap_path, captures
            )
            handle._watch_opening()
            for text in fault_rules:
                handle.add_fault(text)
            for rule in cfg.guestfwd:
                await forwards.add_guestfwd(rule, static=True)
            if smb is not None:
                for smb_port in SMB_PORTS:
                    await forwards.add_guestfwd(
                        f"{cfg.smbserver}:{smb_port}-smbd", smb.opener(), static=True
                    )
            for rule in cfg.hostfwd:
                bound = await forwards.add_hostfwd(rule, static=True)
                log.info("hostfwd %s: host port %d", rule, bound)
            try:
                yield handle
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if handle is not None:
            handle._remove_files()
        if smb is not None:
            smb.close()
        recorder.close()
        log.info(
            "session ended: %d records, frames in %d out %d, dropped toward guest %d",
            recorder.writer.records_written,
            stack.counters["frames_in"],
            stack.counters["frames_out"],
            port.dropped,
        )
