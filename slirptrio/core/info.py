"""What the stack can tell about itself: flows (like QEMU's ``info usernet``) and leases."""

from __future__ import annotations

from dataclasses import dataclass

from slirptrio.syntax.address import hostport, ip_port


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """One NAT entry.

    ``guest_*`` is the guest's end, ``dst_*`` the address the guest sees on the far side and
    ``host``/``host_port`` where the flow really goes on the host. ``recv_q``: bytes from the
    guest not yet taken by the host side; ``send_q``: bytes toward the guest not yet
    acknowledged (both 0 for datagram flows).
    """

    flow: int
    proto: str  # "tcp" | "udp" | "icmp"
    state: str
    guest_ip: bytes
    guest_port: int
    dst_ip: bytes
    dst_port: int
    host: str
    host_port: int
    recv_q: int
    send_q: int
    idle_ns: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "flow": self.flow,
            "proto": self.proto,
            "state": self.state,
            "guest": ip_port(self.guest_ip, self.guest_port),
            "dest": ip_port(self.dst_ip, self.dst_port),
            "host": hostport(self.host, self.host_port),
            "recv_q": self.recv_q,
            "send_q": self.send_q,
            "idle_s": round(self.idle_ns / 1e9, 3),
        }
