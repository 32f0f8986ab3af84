"""Ethernet II frames: parse a header view, build a padded frame."""

from __future__ import annotations

from slirptrio.wire import MalformedFrame

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_VLAN = 0x8100
BROADCAST_MAC = b"\xff" * 6
HEADER_LEN = 14
MIN_FRAME = 60  # without the FCS, which QEMU's netdevs never carry


def parse_ethernet(frame: bytes | memoryview) -> tuple[bytes, bytes, int, memoryview]:
    """Split a frame into (dst MAC, src MAC, ethertype, payload view).

    The payload may carry padding; the layer above trusts its own length field.
    """
    mv = memoryview(frame)
    if len(mv) < HEADER_LEN:
        raise MalformedFrame("eth_short", f"{len(mv)} bytes")
    ethertype = (mv[12] << 8) | mv[13]
    if ethertype < 0x0600:
        raise MalformedFrame("eth_not_ethernet2", f"length/type {ethertype:#x}")
    return bytes(mv[0:6]), bytes(mv[6:12]), ethertype, mv[HEADER_LEN:]


def build_ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes | memoryview) -> bytes:
    """One frame, zero-padded to the 60-byte minimum."""
    frame = b"".join((dst, src, ethertype.to_bytes(2, "big"), payload))
    if len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame


def mac_str(mac: bytes) -> str:
    """aa:bb:cc:dd:ee:ff form."""
    return ":".join(f"{b:02x}" for b in mac)
