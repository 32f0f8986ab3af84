"""One TCP NAT entry: the guest connection's sequence space, buffers and timers, as plain slots."""

from __future__ import annotations

from typing import Any, ClassVar

from slirptrio.core import snapshot as snap
from slirptrio.core import tcp as params
from slirptrio.core.tcp.lifecycle import START, Phase, Trigger
from slirptrio.core.tcp.sendbuf import SendBuffer

Key = tuple[bytes, int, bytes, int]
"""(guest address, guest port, destination address, destination port)."""


class _Conn:
    """One entry (the name is the one snapshots and their guard know)."""

    __slots__ = (
        "active_close",
        "armed_at",
        "buf_seq",
        "charged",
        "close_at",
        "credit_out",
        "delack_at",
        "dst_ip",
        "dst_port",
        "dupacks",
        "fin_acked",
        "first_rtx_ns",
        "flow",
        "guest_ip",
        "guest_port",
        "host",
        "host_eof",
        "host_open",
        "host_port",
        "host_unsent",
        "iss",
        "key",
        "last_ns",
        "last_oow_ack_ns",
        "ooo",
        "ooo_bytes",
        "persist_at",
        "persist_backoff",
        "phase",
        "rcv_acked",
        "rcv_adv",
        "rcv_fin",
        "rcv_fin_seq",
        "rcv_nxt",
        "rcv_wscale",
        "recover",
        "reset_pending",
        "rto",
        "rto_at",
        "rtt_seq",
        "rtt_start",
        "rttvar",
        "snd_max",
        "snd_mss",
        "snd_nxt",
        "snd_right",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wscale",
        "sndbuf",
        "srtt",
        "wscale_ok",
    )
    # The timer heap is rebuilt on restore, each entry armed for its true deadline.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"key", "armed_at"})

    def __init__(self, flow: int, key: Key, host: str, host_port: int, start: Trigger) -> None:
        self.flow = flow
        self.key = key
        self.guest_ip, self.guest_port, self.dst_ip, self.dst_port = key
        self.host = host
        self.host_port = host_port
        self.phase = START[start]
        self.host_open = True
        self.last_ns = 0
        self.charged = 0  # this entry's part of TcpNat.mem_used
        # when we last answered an unacceptable segment
        self.last_oow_ack_ns = -params.OOW_ACK_INTERVAL_NS
        # guest -> host
        self.rcv_nxt = 0
        self.rcv_adv = 0  # highest right edge ever advertised
        self.rcv_acked = 0  # rcv_nxt as of our last ACK
        self.rcv_wscale = 0
        self.rcv_fin = False
        self.rcv_fin_seq: int | None = None
        self.ooo: list[tuple[int, bytes]] = []
        self.ooo_bytes = 0
        self.host_unsent = 0
        # host -> guest
        self.iss = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_max = 0
        self.buf_seq = 0  # sequence number of sndbuf[0]
        self.sndbuf = SendBuffer()
        self.snd_right = 0  # guest's window right edge
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0
        self.snd_mss = params.DEFAULT_MSS
        self.wscale_ok = False
        self.credit_out = 0
        self.host_eof = False
        self.reset_pending = False
        self.fin_acked = False
        self.active_close = False
        self.dupacks = 0
        self.recover: int | None = None
        # RTT / timers
        self.srtt: int | None = None
        self.rttvar = 0
        self.rto = params.RTO_INITIAL_NS
        self.rtt_seq: int | None = None
        self.rtt_start = 0
        self.first_rtx_ns: int | None = None
        self.persist_backoff = 0
        self.rto_at: int | None = None
        self.persist_at: int | None = None
        self.delack_at: int | None = None
        self.close_at: int | None = None
        self.armed_at: int | None = None


def _dump_ooo(ooo: list[tuple[int, bytes]]) -> list[list[Any]]:
    return [[seq, bytes(data)] for seq, data in ooo]


def _load_ooo(raw: list[list[Any]]) -> list[tuple[int, bytes]]:
    return [(seq, data) for seq, data in raw]


CONN_CODECS: dict[str, snap.Codec] = {
    "sndbuf": (bytes, SendBuffer.from_bytes),
    "ooo": (_dump_ooo, _load_ooo),
    "phase": (int, Phase),  # snapshots hold the phase's number
}


def state_name(c: _Conn) -> str:
    """The RFC 9293 name of ``c``'s state (SYN_PENDING and DRAINING are ours), for display."""
    p = c.phase
    if p != Phase.SYNCED:
        return Phase(p).name
    fin_sent = c.host_eof and c.snd_max > c.buf_seq + len(c.sndbuf)
    if c.rcv_fin:
        if not fin_sent:
            return "CLOSE_WAIT"
        return "CLOSING" if c.active_close else "LAST_ACK"
    if fin_sent:
        return "FIN_WAIT_2" if c.fin_acked else "FIN_WAIT_1"
    return "ESTABLISHED"
