"""Fault rules: deterministic, journaled impairments of the guest's traffic.

Theory of operation
-------------------
A *rule* matches frames on the guest's link (direction, protocol, guest address and port,
remote address/prefix and port, a DNS name pattern, a core flow number, a time window) and
impairs them: link faults as netem has them (loss, Gilbert-Elliott bursts, delay with jitter,
duplication, reordering, a rate limit, corruption), connection faults as toxiproxy has them
(refused or timed-out connects, a reset after N bytes or T seconds, a stall, a slow close),
DNS faults (SERVFAIL, NXDOMAIN, a truncated answer; a delay is ``proto=dns delay=...``) and
partitions (everything between the guest and a destination set dropped for a window).

Rules are core state. They arrive as events (:class:`~slirptrio.core.events.FaultAdd`,
:class:`~slirptrio.core.events.FaultRemove`) carrying the rule's text, so a rule change is
journaled like any input; every random choice is drawn from a :class:`Prng` seeded from the
stack's seed; a delayed frame waits in this object and leaves at a core timer (``poll_at`` /
``Tick``). Replay therefore reproduces every drop, delay and reset, frame for frame. The shell
never sleeps or drops on a rule's behalf.

The stack hands :meth:`Faults.filter_run` every burst from the guest (``OUT``) before its own
processing, and every run of frames toward the guest (``IN``) before it becomes an effect.
Frames a rule holds come back from :meth:`Faults.release` when due and are not filtered again.
Connection faults act through the stack's own means: a refused connect is the guest's SYN
answered with a RST (the SYN never reaches the NAT); a reset is the NAT's reaction to a host
reset (``TcpReset``), which resets the guest side and closes the host socket.

Rule text (the ``--faults`` file, ``ctl fault add`` and the API all use it): ``key=value``
words separated by spaces, lists by commas, durations ``50ms``/``2s``/``100us``, percentages
``2%``/``0.5%``, rates ``10mbit``/``512kbit``/``1gbit`` (bits per second), sizes ``64k``::

    proto=tcp remote=203.0.113.0/24 loss=2% delay=50ms jitter=50ms
    dir=in rate=10mbit limit=256k
    proto=tcp rport=8080 connect=refuse
    proto=tcp rport=80 reset-bytes=10000
    proto=dns name=*.example.com dns=servfail
    remote=203.0.113.7,2001:db8:1::1 partition after=10s for=30s
"""

from __future__ import annotations

import heapq
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from slirptrio.core.prng import Prng
from slirptrio.wire.framing import split_run
from slirptrio.wire.tcp import build_tcp
from slirptrio.wire.udp import build_udp

OUT = 0
"""Frames from the guest toward the network."""
IN = 1
"""Frames toward the guest."""

MAX_RULES = 256
MAX_HELD_BYTES = 16 * 1024 * 1024
"""Bytes of frames all rules together may hold back (delays, rate queues)."""
MAX_HELD_FRAMES = 65536
MAX_TRACKED = 4096
"""TCP connections whose bytes and age a reset rule follows."""
RATE_LIMIT_BYTES = 256 * 1024
"""A rate rule's default queue (``limit=``): frames beyond it are dropped (tail drop)."""
REORDER_GAP_NS = 10_000_000
"""How long a reordered frame is held back when the rule has no delay of its own."""
SALT = 0x6661_756C_7473_2123  # the rules' own PRNG: adding one leaves ISNs and ports as they were
PPM = 1_000_000  # probabilities are parts per million: integers, the same on every machine

_MS = 1_000_000
_SEC = 1_000_000_000
_ECONNRESET = 104
_TCP, _UDP, _ICMP, _ICMP6 = 6, 17, 1, 58
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FaultError(ValueError):
    """A rule that does not parse; the message names the bad word."""


# ----------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One parsed rule (see the module's docstring for the text form)."""

    direction: str = "both"  # in | out | both
    proto: str = ""  # "" (any IP), tcp, udp, icmp, dns
    guest: tuple[Network, ...] = ()
    gport: int | None = None
    remote: tuple[Network, ...] = ()
    rport: int | None = None
    name: str = ""
    flow: int | None = None
    after_ns: int = 0
    for_ns: int | None = None
    loss: int = 0  # ppm
    ge_p: int = 0  # ppm: good -> bad
    ge_r: int = 0  # ppm: bad -> good
    ge_bad: int = PPM  # ppm loss in the bad state
    ge_good: int = 0  # ppm loss in the good state
    delay_ns: int = 0
    jitter_ns: int = 0
    duplicate: int = 0
    reorder: int = 0
    reorder_gap_ns: int | None = None  # None: REORDER_GAP_NS, read at use
    rate: int = 0  # bits per second
    limit: int | None = None  # None: RATE_LIMIT_BYTES, read at use
    corrupt: int = 0
    connect: str = ""  # refuse | timeout
    reset_bytes: int | None = None
    reset_after_ns: int | None = None
    stall: bool = False
    slow_close_ns: int = 0
    dns: str = ""  # servfail | nxdomain | truncate
    partition: bool = False

    def impairs(self) -> bool:
        """Whether the rule does anything at all."""
        return bool(
            self.loss or self.ge_p or self.delay_ns or self.jitter_ns or self.duplicate
            or self.reorder or self.rate or self.corrupt or self.connect
            or self.reset_bytes is not None or self.reset_after_ns is not None or self.stall
            or self.slow_close_ns or self.dns or self.partition
        )

    def text(self) -> str:
        """The rule's canonical text (parses back to an equal rule)."""
        words = []
        default = _DEFAULT
        for key, attr, kind in _KEYS:
            value = getattr(self, attr)
            if value == getattr(default, attr):
                continue
            words.append(_show(key, kind, value))
        return " ".join(words)


def _show(key: str, kind: str, value: Any) -> str:
    if kind == "flag":
        return key
    if kind == "ppm":
        whole, frac = divmod(int(value), PPM // 100)
        return f"{key}={whole}{'.' + str(frac).rjust(4, '0').rstrip('0') if frac else ''}%"
    if kind == "ns":
        return f"{key}={_duration_text(int(value))}"
    if kind == "nets":
        return f"{key}=" + ",".join(str(n) for n in value)
    if kind == "rate":
        return f"{key}={value}bit"
    return f"{key}={value}"


def _duration_text(ns: int) -> str:
    for unit, size in (("s", _SEC), ("ms", _MS), ("us", 1000)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


# (text key, attribute, kind) in canonical order.
_KEYS: tuple[tuple[str, str, str], ...] = (
    ("dir", "direction", "choice"), ("proto", "proto", "choice"), ("guest", "guest", "nets"),
    ("gport", "gport", "port"), ("remote", "remote", "nets"), ("rport", "rport", "port"),
    ("name", "name", "str"), ("flow", "flow", "int"), ("after", "after_ns", "ns"),
    ("for", "for_ns", "ns"), ("loss", "loss", "ppm"), ("ge-p", "ge_p", "ppm"),
    ("ge-r", "ge_r", "ppm"), ("ge-bad", "ge_bad", "ppm"), ("ge-good", "ge_good", "ppm"),
    ("delay", "delay_ns", "ns"), ("jitter", "jitter_ns", "ns"), ("duplicate", "duplicate", "ppm"),
    ("reorder", "reorder", "ppm"), ("reorder-gap", "reorder_gap_ns", "ns"),
    ("rate", "rate", "rate"), ("limit", "limit", "size"), ("corrupt", "corrupt", "ppm"),
    ("connect", "connect", "choice"), ("reset-bytes", "reset_bytes", "size"),
    ("reset-after", "reset_after_ns", "ns"), ("stall", "stall", "flag"),
    ("slow-close", "slow_close_ns", "ns"), ("dns", "dns", "choice"),
    ("partition", "partition", "flag"),
)  # fmt: skip
_BY_KEY = {k: (a, kind) for k, a, kind in _KEYS}
_CHOICES = {
    "direction": ("in", "out", "both"), "proto": ("tcp", "udp", "icmp", "dns", "any"),
    "connect": ("refuse", "timeout"), "dns": ("servfail", "nxdomain", "truncate"),
}  # fmt: skip
_DEFAULT = Rule()
_NUM = re.compile(r"(\d+(?:\.\d+)?)([a-zA-Z/%]*)\Z")
_DUR_UNITS = {"ns": 1, "us": 1000, "ms": _MS, "s": _SEC, "m": 60 * _SEC, "": _SEC}
_RATE_UNITS = {"": 1, "bit": 1, "bps": 1, "kbit": 1000, "mbit": 10**6, "gbit": 10**9,
               "k": 1000, "m": 10**6, "g": 10**9}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20}


def _number(key: str, text: str, units: dict[str, int], what: str) -> int:
    m = _NUM.match(text.strip())
    unit = m.group(2).lower().removesuffix("/s") if m else ""
    if m is None or unit not in units:
        raise FaultError(f"{key}={text}: expected {what}")
    whole, _, frac = m.group(1).partition(".")
    scale = units[unit]
    return int(whole) * scale + (int(frac) * scale) // 10 ** len(frac) if frac else \
        int(whole) * scale


def _ppm(key: str, text: str) -> int:
    t = text.strip()
    if not t.endswith("%"):
        raise FaultError(f"{key}={text}: expected a percentage such as 2% or 0.5%")
    value = _number(key, t[:-1], {"": PPM // 100}, "a percentage such as 2% or 0.5%")
    if value > PPM:
        raise FaultError(f"{key}={text}: at most 100%")
    return value


def _nets(key: str, text: str) -> tuple[Network, ...]:
    out = []
    for part in text.split(","):
        try:
            out.append(ipaddress.ip_network(part.strip(), strict=False))
        except ValueError as exc:
            raise FaultError(f"{key}={part}: expected an address or a prefix ({exc})") from None
    return tuple(out)


def parse_rule(text: str) -> Rule:
    """Parse a rule's text (``key=value`` words separated by spaces).

    Raises:
      FaultError: an unknown key, a bad value, or a rule that impairs nothing.
    """
    values: dict[str, Any] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        key = key.strip().lower()
        if key not in _BY_KEY:
            raise FaultError(f"{word}: unknown key {key!r} (known: {', '.join(_BY_KEY)})")
        attr, kind = _BY_KEY[key]
        if kind == "flag":
            if eq and value.lower() not in ("on", "yes", "true", "1"):
                if value.lower() in ("off", "no", "false", "0"):
                    continue
                raise FaultError(f"{word}: {key} takes no value (or on/off)")
            values[attr] = True
            continue
        if not eq or not value:
            raise FaultError(f"{word}: expected {key}=VALUE")
        if kind == "choice":
            v = value.lower()
            if v not in _CHOICES[attr]:
                raise FaultError(f"{word}: expected one of {', '.join(_CHOICES[attr])}")
            values[attr] = "" if v == "any" else v
        elif kind == "nets":
            values[attr] = _nets(key, value)
        elif kind == "port":
            if not value.isdigit() or int(value) > 65535:
                raise FaultError(f"{word}: expected a port number")
            values[attr] = int(value)
        elif kind == "int":
            if not value.isdigit():
                raise FaultError(f"{word}: expected a number")
            values[attr] = int(value)
        elif kind == "str":
            if len(value) > 253:
                raise FaultError(f"{word}: a name pattern of at most 253 characters")
            values[attr] = value.lower().rstrip(".")
        elif kind == "ppm":
            values[attr] = _ppm(key, value)
        elif kind == "ns":
            values[attr] = _number(key, value, _DUR_UNITS, "a duration such as 50ms or 2s")
        elif kind == "rate":
            values[attr] = _number(key, value, _RATE_UNITS, "a rate such as 10mbit or 512kbit")
            if values[attr] <= 0:
                raise FaultError(f"{word}: a rate above zero")
        elif kind == "size":
            values[attr] = _number(key, value, _SIZE_UNITS, "a size such as 1000 or 64k")
    if values.get("dns"):
        values.setdefault("proto", "dns")
        if values["proto"] != "dns":
            raise FaultError(f"dns={values['dns']}: only with proto=dns")
    conn = [k for k in ("connect", "reset_bytes", "reset_after_ns", "stall", "slow_close_ns")
            if values.get(k) not in (None, "", 0, False)]
    if conn:
        values.setdefault("proto", "tcp")
        if values["proto"] != "tcp":
            raise FaultError(f"{conn[0].replace('_', '-')}: a connection fault needs proto=tcp")
    rule = Rule(**values)
    if not rule.impairs():
        raise FaultError(f"{text.strip() or '(empty)'}: the rule impairs nothing (add loss=, "
                         "delay=, rate=, connect=, dns=, partition, ...)")
    return rule


def rule_from_table(table: dict[str, Any]) -> Rule:
    """A rule from a TOML table (``[[rule]]``): the same keys, values as strings, numbers
    or booleans (``stall = true``), lists for ``guest``/``remote``."""
    words = []
    for key, value in table.items():
        if isinstance(value, bool):
            words.append(f"{key}={'on' if value else 'off'}")
        elif isinstance(value, list):
            words.append(f"{key}={','.join(str(v) for v in value)}")
        else:
            text = str(value)
            if any(c.isspace() for c in text):
                raise FaultError(f"{key}={text!r}: no spaces in a value")
            words.append(f"{key}={text}")
    return parse_rule(" ".join(words))


def parse_fault_file(text: str) -> list[Rule]:
    """The rules of a ``--faults`` file: TOML, one ``[[rule]]`` table per rule (keys as in
    the rule text; a table may instead hold the whole text as ``text = "loss=2% ..."``).

    Raises:
      FaultError: the file is no such TOML, or a rule is bad ("rule 2: ...").
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FaultError(f"not TOML: {exc}") from None
    unknown = [k for k in data if k != "rule"]
    if unknown:
        raise FaultError(f"unknown top-level key {unknown[0]!r} (rules go in [[rule]] tables)")
    tables = data.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise FaultError("rules go in [[rule]] tables")
    rules = []
    for n, table in enumerate(tables, 1):
        try:
            if set(table) == {"text"} and isinstance(table["text"], str):
                rules.append(parse_rule(table["text"]))
            else:
                rules.append(rule_from_table(table))
        except FaultError as exc:
            raise FaultError(f"rule {n}: {exc}") from None
    return rules


def _glob(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts) + r"\Z")


# --------------------------------------------------------------------------------- frames


class _Pkt:
    """The fields of a frame rules look at (IPv4 or IPv6; ports for TCP and UDP)."""

    __slots__ = ("dport", "dst", "flags", "l4", "pay", "plen", "proto", "sport", "src", "v6")
    # Made per frame and dropped with it; the snapshot guard checks none is held in state.
    _SNAPSHOT_TRANSIENT: ClassVar[bool] = True

    def __init__(self) -> None:
        self.src = self.dst = b""
        self.proto = 0
        self.sport = self.dport = self.flags = self.plen = -1
        self.l4 = self.pay = 0
        self.v6 = False


def classify(frame: bytes | memoryview) -> _Pkt | None:
    """The fields of an IP frame, or None for anything else (ARP) or a frame too short."""
    n = len(frame)
    if n < 34:
        return None
    et = frame[12] << 8 | frame[13]
    p = _Pkt()
    if et == 0x0800:
        ihl = (frame[14] & 15) * 4
        total = frame[16] << 8 | frame[17]
        p.proto = frame[23]
        p.src, p.dst = bytes(frame[26:30]), bytes(frame[30:34])
        frag = (frame[20] & 0x1F) << 8 | frame[21]
        p.l4 = 14 + ihl
        end = min(n, 14 + total)
        if frag:
            return p  # a later fragment: no ports
    elif et == 0x86DD:
        if n < 54:
            return None
        p.v6 = True
        p.proto = frame[20]
        p.src, p.dst = bytes(frame[22:38]), bytes(frame[38:54])
        p.l4 = 54
        if p.proto == _ICMP6 and n > 54 and 133 <= frame[54] <= 137:
            return None  # neighbour discovery: link housekeeping, as ARP, never impaired
        end = min(n, 54 + (frame[18] << 8 | frame[19]))
    else:
        return None
    l4 = p.l4
    if p.proto == _TCP and end >= l4 + 20:
        p.sport = frame[l4] << 8 | frame[l4 + 1]
        p.dport = frame[l4 + 2] << 8 | frame[l4 + 3]
        p.flags = frame[l4 + 13]
        p.pay = l4 + (frame[l4 + 12] >> 4) * 4
        p.plen = max(0, end - p.pay)
    elif p.proto == _UDP and end >= l4 + 8:
        p.sport = frame[l4] << 8 | frame[l4 + 1]
        p.dport = frame[l4 + 2] << 8 | frame[l4 + 3]
        p.pay = l4 + 8
        p.plen = max(0, end - p.pay)
    return p


def dns_question(payload: bytes | memoryview) -> tuple[str, int] | None:
    """The first question's name (lower case, no final dot) and where the question ends."""
    if len(payload) < 12 or (payload[4] << 8 | payload[5]) < 1:
        return None
    labels: list[str] = []
    i = 12
    while i < len(payload):
        ln = payload[i]
        if ln == 0:
            end = i + 5
            if end > len(payload):
                return None
            return ".".join(labels).lower(), end
        if ln & 0xC0 or i + 1 + ln > len(payload):
            return None
        labels.append(bytes(payload[i + 1 : i + 1 + ln]).decode("latin-1"))
        i += 1 + ln
    return None


def dns_reply(query: bytes | memoryview, rcode: int, truncated: bool) -> bytes | None:
    """An answer without records to a query: its id and question, the given RCODE (2:
    SERVFAIL, 3: NXDOMAIN) or the TC bit."""
    q = dns_question(query)
    if q is None or query[2] & 0x80:
        return None
    flags1 = 0x80 | (query[2] & 0x79) | (0x02 if truncated else 0)
    head = bytes((query[0], query[1], flags1, 0x80 | rcode, 0, 1, 0, 0, 0, 0, 0, 0))
    return head + bytes(query[12 : q[1]])


def corrupt(frame: bytes | memoryview, p: _Pkt) -> bytes:
    """The frame with a wrong checksum: the transport's (TCP, UDP, ICMP) if it has one, else
    IPv4's header checksum. The receiver must drop it."""
    out = bytearray(frame)
    where = {_TCP: 16, _UDP: 6, _ICMP: 2, _ICMP6: 2}.get(p.proto)
    if where is not None and p.l4 + where + 1 < len(out):
        i = p.l4 + where
        if p.proto == _UDP and not p.v6 and out[i] == out[i + 1] == 0:
            out[i + 1] = 1  # 0 means "no checksum" over IPv4: make it a wrong one
        else:
            out[i] ^= 0x5A
    elif not p.v6:
        out[24] ^= 0x5A
    return bytes(out)


# ---------------------------------------------------------------------------- rule state


class _State:
    """A rule in force: its text, when it came, what it did, and its link's state."""

    __slots__ = (
        "_name",
        "added_ns",
        "busy",
        "ge_bad",
        "last_due",
        "queued",
        "rid",
        "rule",
        "stats",
        "text",
    )
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset()
    # dump() keeps the rule's text; load() parses the rule (and its name pattern) from it again.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"rule", "_name"})

    def __init__(self, rid: int, text: str, rule: Rule, added_ns: int) -> None:
        self.rid = rid
        self.text = text
        self.rule = rule
        self.added_ns = added_ns
        self.stats: dict[str, int] = {}
        self.ge_bad = False
        self.busy = [0, 0]  # per direction: when the rate-limited link is free again
        self.last_due = [0, 0]  # per direction: the last held frame's release (keeps order)
        self.queued = [0, 0]  # per direction: bytes held by this rule's rate queue
        self._name = _glob(rule.name) if rule.name else None

    def dump(self) -> list[Any]:
        return [self.rid, self.text, self.added_ns, dict(self.stats), self.ge_bad,
                list(self.busy), list(self.last_due), list(self.queued)]

    @classmethod
    def load(cls, raw: list[Any]) -> _State:
        rid, text, added, stats, ge_bad, busy, last_due, queued = raw
        st = cls(int(rid), str(text), parse_rule(str(text)), int(added))
        st.stats = {str(k): int(v) for k, v in stats.items()}
        st.ge_bad = bool(ge_bad)
        st.busy, st.last_due, st.queued = list(busy), list(last_due), list(queued)
        return st

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def live(self, now: int) -> bool:
        start = self.added_ns + self.rule.after_ns
        if now < start:
            return False
        return self.rule.for_ns is None or now < start + self.rule.for_ns


@dataclass(frozen=True)
class RuleInfo:
    """A rule in force, for ``ctl fault list``, ``ctl stats`` and the API."""

    id: int
    rule: str
    added_s: float
    active: bool
    stats: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Faults:
    """Every rule in force and the frames they hold back.

    Args:
      seed: the stack's seed (the rules draw from a PRNG of their own, seeded from it).
      counters: the stack's counters (``fault_*`` totals go there).
      send_ip: the stack's ``send_ip(src, dst, proto, payload)``: answers to the guest (a RST
        for a refused connect, a DNS error answer).
      tcp_flow: the TCP NAT's flow for (guest ip, guest port, remote ip, remote port), or None.
      reset_tcp: reset that TCP flow on both sides, at ``now``.
    """

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "counters", "_send_ip", "_tcp_flow", "_reset_tcp",
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"active", "_ordered"})

    def __init__(
        self,
        seed: int,
        counters: Any,
        send_ip: Callable[[bytes, bytes, int, bytes], None],
        tcp_flow: Callable[[tuple[bytes, int, bytes, int]], int | None],
        reset_tcp: Callable[[int, int], bool],
    ) -> None:
        self.counters = counters
        self._send_ip = send_ip
        self._tcp_flow = tcp_flow
        self._reset_tcp = reset_tcp
        self._rng = Prng(seed ^ SALT)
        self._rules: dict[int, _State] = {}
        self._ordered: list[_State] = []
        self.active = False
        # Held frames: [due, order, direction, rule id of a rate queue or -1, frame].
        self._held: list[list[Any]] = []
        self._held_bytes = 0
        self._order = 0
        # Connections a reset rule follows: [rule id, guest, gport, remote, rport] ->
        # [payload bytes seen, deadline or -1].
        self._tracked: dict[tuple[int, bytes, int, bytes, int], list[int]] = {}

    # ------------------------------------------------------------------------ snapshots

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "_rng": self._rng.snapshot_state(),
            "_rules": [st.dump() for st in self._rules.values()],
            "_held": [list(h) for h in self._held],
            "_held_bytes": self._held_bytes,
            "_order": self._order,
            "_tracked": [[*k, *v] for k, v in self._tracked.items()],
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self._rng.restore_state(state["_rng"])
        self._rules = {}
        for raw in state["_rules"]:
            st = _State.load(raw)
            self._rules[st.rid] = st
        self._held = [list(h) for h in state["_held"]]
        heapq.heapify(self._held)
        self._held_bytes = state["_held_bytes"]
        self._order = state["_order"]
        self._tracked = {
            (int(r[0]), bytes(r[1]), int(r[2]), bytes(r[3]), int(r[4])): [int(r[5]), int(r[6])]
            for r in state["_tracked"]
        }
        self._reorder()

    # --------------------------------------------------------------------------- changes

    def add(self, rid: int, text: str, now: int) -> bool:
        """Put rule ``rid`` in force (replacing one of that id); False if the text is bad
        or the table is full (counted)."""
        try:
            rule = parse_rule(text)
        except FaultError:
            self.counters["fault_bad_rule"] += 1
            return False
        if rid not in self._rules and len(self._rules) >= MAX_RULES:
            self.counters["fault_table_full"] += 1
            return False
        self._rules[rid] = _State(rid, rule.text(), rule, now)
        self.counters["fault_rules_added"] += 1
        self._reorder()
        return True

    def remove(self, rid: int) -> bool:
        """Take rule ``rid`` out of force (-1: every rule). Frames it holds still leave when
        due (a partition that heals does not lose what was in flight)."""
        gone = list(self._rules) if rid < 0 else [rid] if rid in self._rules else []
        for r in gone:
            del self._rules[r]
        for key in [k for k in self._tracked if k[0] in gone]:
            del self._tracked[key]
        self.counters["fault_rules_removed"] += len(gone)
        self._reorder()
        return bool(gone)

    def _reorder(self) -> None:
        self._ordered = [self._rules[r] for r in sorted(self._rules)]
        self.active = bool(self._ordered) or bool(self._held) or bool(self._tracked)

    def rules(self, now: int) -> list[RuleInfo]:
        """The rules in force, by id."""
        return [RuleInfo(st.rid, st.text, st.added_ns / 1e9, st.live(now), dict(st.stats))
                for st in self._ordered]

    # ----------------------------------------------------------------------------- timers

    def poll_at(self) -> int | None:
        """When a held frame or a connection's reset is due."""
        t = self._held[0][0] if self._held else None
        for _bytes, deadline in self._tracked.values():
            if deadline >= 0 and (t is None or deadline < t):
                t = deadline
        return t

    def held_senders(self) -> list[bytes]:
        """The source MACs of the guest frames rules hold back (for the switch to place)."""
        return [bytes(h[4][6:12]) for h in self._held if h[2] == OUT and len(h[4]) >= 12]

    def release(self, now: int) -> tuple[list[bytes], list[bytes]]:
        """The held frames due at ``now``: (from the guest, toward the guest), in order."""
        out: list[bytes] = []
        inn: list[bytes] = []
        held = self._held
        while held and held[0][0] <= now:
            _due, _order, direction, rid, frame = heapq.heappop(held)
            self._held_bytes -= len(frame)
            if rid >= 0:
                st = self._rules.get(rid)
                if st is not None:
                    st.queued[direction] -= len(frame)
            (out if direction == OUT else inn).append(frame)
        self._expire(now)
        self.active = bool(self._ordered) or bool(self._held) or bool(self._tracked)
        return out, inn

    def _expire(self, now: int) -> None:
        """Reset every followed connection whose time is up."""
        due = sorted(k for k, v in self._tracked.items() if 0 <= v[1] <= now)
        for key in due:
            del self._tracked[key]
            st = self._rules.get(key[0])
            if self._reset_tcp(self._tcp_flow((key[1], key[2], key[3], key[4])) or -1, now) \
                    and st is not None:
                st.count("reset")
                self.counters["fault_resets"] += 1

    # ---------------------------------------------------------------------------- frames

    def filter_run(self, run: bytes | bytearray | memoryview, direction: int, now: int
                   ) -> bytearray:
        """The frames of a run that pass now (as a run); held ones come back from
        :meth:`release`."""
        out = bytearray()
        for frame in split_run(run):
            for f in self.filter(frame, direction, now):
                out += len(f).to_bytes(4, "big")
                out += f
        return out

    def filter(self, frame: bytes | memoryview, direction: int, now: int) -> list[bytes]:
        """What becomes of one frame: the frames to pass now (none, it, or two copies)."""
        p = classify(frame)
        if p is None:
            return [bytes(frame)]
        data = bytes(frame)
        copies = 1
        hold = now
        rate_rule = -1
        for st in self._ordered:
            r = st.rule
            if not (r.direction == "both" or (r.direction == "out") == (direction == OUT)):
                continue
            if not st.live(now) or not self._matches(st, p, data, direction):
                continue
            st.count("matched")
            if r.partition:
                return self._drop(st, "partitioned")
            if r.proto == "tcp" and p.flags >= 0 and (
                r.connect or r.stall or r.slow_close_ns or r.reset_bytes is not None
                or r.reset_after_ns is not None
            ):
                verdict = self._connection(st, p, data, direction, now)
                if verdict < 0:
                    return []
                hold = max(hold, verdict)
            if r.dns and direction == OUT and self._dns_answer(st, p, data):
                return []
            if r.loss and self._rng.below(PPM) < r.loss:
                return self._drop(st, "dropped")
            if r.ge_p and self._gilbert_elliott(st):
                return self._drop(st, "dropped")
            if r.corrupt and self._rng.below(PPM) < r.corrupt:
                data = corrupt(data, p)
                st.count("corrupted")
                self.counters["fault_corrupted"] += 1
            if r.duplicate and self._rng.below(PPM) < r.duplicate:
                copies = 2
                st.count("duplicated")
                self.counters["fault_duplicated"] += 1
            if r.delay_ns or r.jitter_ns or r.reorder or r.rate:
                due, queued = self._schedule(st, len(data), direction, now)
                if due < 0:
                    return self._drop(st, "rate_dropped")
                if queued:
                    rate_rule = st.rid
                hold = max(hold, due)
        if hold <= now:
            return [data] * copies
        for _ in range(copies):
            if (self._held_bytes + len(data) > MAX_HELD_BYTES
                    or len(self._held) >= MAX_HELD_FRAMES):
                self.counters["fault_held_overflow"] += 1
                continue
            self._order += 1
            heapq.heappush(self._held, [hold, self._order, direction, rate_rule, data])
            self._held_bytes += len(data)
            if rate_rule >= 0:
                self._rules[rate_rule].queued[direction] += len(data)
        self.counters["fault_delayed"] += 1
        self.active = True
        return []

    def _drop(self, st: _State, what: str) -> list[bytes]:
        st.count(what)
        self.counters["fault_dropped"] += 1
        return []

    def _matches(self, st: _State, p: _Pkt, data: bytes, direction: int) -> bool:
        r = st.rule
        guest, remote = (p.src, p.dst) if direction == OUT else (p.dst, p.src)
        gport, rport = (p.sport, p.dport) if direction == OUT else (p.dport, p.sport)
        proto = r.proto
        if proto:
            if proto == "tcp" and p.proto != _TCP:
                return False
            if proto == "udp" and p.proto != _UDP:
                return False
            if proto == "icmp" and p.proto not in (_ICMP, _ICMP6):
                return False
            if proto == "dns" and not (p.proto == _UDP and rport == 53):
                return False
        if r.gport is not None and gport != r.gport:
            return False
        if r.rport is not None and rport != r.rport:
            return False
        if r.guest and not _within(guest, r.guest):
            return False
        if r.remote and not _within(remote, r.remote):
            return False
        if st._name is not None:
            if not (p.proto == _UDP and rport == 53):
                return False
            q = dns_question(memoryview(data)[p.pay:])
            if q is None or not st._name.match(q[0]):
                return False
        return r.flow is None or (
            p.proto == _TCP and self._tcp_flow((guest, gport, remote, rport)) == r.flow
        )

    def _gilbert_elliott(self, st: _State) -> bool:
        """One step of the two-state loss model: move between the states, then draw the
        state's loss."""
        r = st.rule
        if st.ge_bad:
            if self._rng.below(PPM) < r.ge_r:
                st.ge_bad = False
        elif self._rng.below(PPM) < r.ge_p:
            st.ge_bad = True
        loss = r.ge_bad if st.ge_bad else r.ge_good
        return loss > 0 and self._rng.below(PPM) < loss

    def _schedule(self, st: _State, size: int, direction: int, now: int) -> tuple[int, bool]:
        """When a frame of ``size`` bytes leaves under the rule's delay, jitter, reordering
        and rate (-1: the rate queue is full); and whether it sits in the rate queue."""
        r = st.rule
        due = now + r.delay_ns
        if r.jitter_ns:
            due += self._rng.below(2 * r.jitter_ns + 1) - r.jitter_ns
        queued = False
        if r.rate:
            limit = RATE_LIMIT_BYTES if r.limit is None else r.limit
            if st.queued[direction] + size > limit:
                return -1, False
            start = max(now, st.busy[direction])
            st.busy[direction] = start + size * 8 * _SEC // r.rate
            due = max(due, st.busy[direction]) if r.delay_ns or r.jitter_ns else st.busy[direction]
            queued = True
        if r.reorder and self._rng.below(PPM) < r.reorder:
            st.count("reordered")
            self.counters["fault_reordered"] += 1
            # netem's way: with a delay the chosen frame goes at once (overtaking); without
            # one it is held back and later frames overtake it.
            gap = REORDER_GAP_NS if r.reorder_gap_ns is None else r.reorder_gap_ns
            return (now if r.delay_ns else now + gap), queued
        due = max(due, now, st.last_due[direction])  # jitter never reorders on its own
        st.last_due[direction] = due
        if due > now:
            st.count("delayed")
        return due, queued

    def _connection(self, st: _State, p: _Pkt, data: bytes, direction: int, now: int) -> int:
        """Connection faults on a TCP segment: -1 to swallow it, else when it may leave."""
        r = st.rule
        syn_only = p.flags & (_SYN | _ACK | _RST) == _SYN
        if direction == OUT and syn_only and r.connect:
            if r.connect == "refuse":
                self._refuse(p, data)
                st.count("refused")
                self.counters["fault_refused"] += 1
            else:
                st.count("connect_dropped")
                self.counters["fault_dropped"] += 1
            return -1
        if r.stall and p.plen > 0:
            st.count("stalled")
            self.counters["fault_dropped"] += 1
            return -1
        if r.reset_bytes is not None or r.reset_after_ns is not None:
            guest, remote = (p.src, p.dst) if direction == OUT else (p.dst, p.src)
            gport, rport = (p.sport, p.dport) if direction == OUT else (p.dport, p.sport)
            key = (st.rid, guest, gport, remote, rport)
            seen = self._tracked.get(key)
            if seen is None and not p.flags & (_RST | _FIN):
                if len(self._tracked) >= MAX_TRACKED:
                    del self._tracked[next(iter(self._tracked))]
                    self.counters["fault_tracked_evicted"] += 1
                deadline = now + r.reset_after_ns if r.reset_after_ns is not None else -1
                seen = self._tracked[key] = [0, deadline]
                self.active = True
            if seen is not None:
                seen[0] += max(0, p.plen)
                if r.reset_bytes is not None and seen[0] > r.reset_bytes:
                    # Reset at the next tick, now: a reset made here could run inside the
                    # stack's output (this segment may be on its way to the guest).
                    seen[1] = now
                    return -1  # the segment past the limit never arrives
        if r.slow_close_ns and p.flags & _FIN:
            st.count("slow_closed")
            return now + r.slow_close_ns
        return now

    def _refuse(self, p: _Pkt, data: bytes) -> None:
        seq = int.from_bytes(data[p.l4 + 4 : p.l4 + 8], "big")
        seg = build_tcp(p.dst, p.src, p.dport, p.sport, 0, (seq + 1 + max(0, p.plen)) & 0xFFFFFFFF,
                        _RST | _ACK, 0)
        self._send_ip(p.dst, p.src, _TCP, seg)

    def _dns_answer(self, st: _State, p: _Pkt, data: bytes) -> bool:
        r = st.rule
        rcode = {"servfail": 2, "nxdomain": 3}.get(r.dns, 0)
        reply = dns_reply(memoryview(data)[p.pay : p.pay + p.plen], rcode, r.dns == "truncate")
        if reply is None:
            return False
        self._send_ip(p.dst, p.src, _UDP, build_udp(p.dst, p.src, p.dport, p.sport, reply))
        st.count("dns_" + r.dns)
        self.counters["fault_dns_answers"] += 1
        return True


def _within(ip: bytes, nets: tuple[Network, ...]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr.version == n.version and addr in n for n in nets)
