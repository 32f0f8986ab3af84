"""The memory budget of every entry together (the package docstring's "Memory").

``mem_used`` on the :class:`~slirptrio.core.tcp.nat.TcpNat` is the sum of every entry's
``charged``; these functions keep it so and tell an entry how far it may grow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slirptrio.core import tcp as params
from slirptrio.core.tcp.conn import _Conn

if TYPE_CHECKING:
    from slirptrio.core.tcp.nat import TcpNat


def commit(nat: TcpNat, c: _Conn) -> None:
    """Bring ``c``'s part of ``mem_used`` up to date: the bytes it holds (handed to the
    host and not confirmed, out of order, in the send buffer) and the credit the host
    reader may still turn into send buffer."""
    new = c.host_unsent + c.ooo_bytes + len(c.sndbuf) + c.credit_out
    nat.mem_used += new - c.charged
    c.charged = new


def share(nat: TcpNat) -> int:
    """Under memory pressure, what one entry may always hold in one direction."""
    n = nat.mem_budget // (params.MEM_SHARE_DIVISOR * max(1, len(nat)))
    return n if n > params.MEM_MIN_SHARE else params.MEM_MIN_SHARE


def cap(nat: TcpNat, c: _Conn, used_dir: int) -> int:
    """Under memory pressure, how many bytes ``c`` may hold in one direction where it
    now holds ``used_dir``: its share, or more while the budget has room. So the largest
    entries stop growing first; the others keep their share."""
    commit(nat, c)
    free = nat.mem_budget - nat.mem_used
    limit = used_dir + free if free > 0 else used_dir
    least = share(nat)
    if limit < least:
        limit = least
    if limit < nat.buffer_size:
        nat.counters["tcp_mem_limited"] += 1
        return limit
    return nat.buffer_size


def cap_in(nat: TcpNat, c: _Conn) -> int:
    """The receive buffer ``c`` may have: what the host has not confirmed plus the window
    we offer."""
    if nat.mem_used <= nat.mem_soft:
        return nat.buffer_size
    return cap(nat, c, c.host_unsent + c.ooo_bytes)


def edge(nat: TcpNat, c: _Conn, right: int) -> int:
    """Past the whole budget, data already inside an advertised window (up to ``right``) is
    taken only up to the entry's share; the rest is dropped as a full receiver drops it (the
    guest retransmits). Windows advertised before the pressure therefore cost the budget at
    most one share per entry."""
    commit(nat, c)
    room = share(nat) - c.host_unsent - c.ooo_bytes
    limit = c.rcv_nxt + (room if room > 0 else 0)
    if limit < right:
        nat.counters["tcp_mem_trimmed"] += 1
        return limit
    return right
