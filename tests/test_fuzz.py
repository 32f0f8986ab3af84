"""The stack-level fuzzer (tests/fuzz.py), CI-sized: every protocol, journals replayed.

The long run is ``python -m tests.fuzz --frames 1000000``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

from slirptrio.config import parse_user_options
from slirptrio.core.events import DnsUpstreams, GuestFrame
from slirptrio.core.stack import Stack
from tests.fuzz import PROTOCOLS, check_bounds, cve_frames, fixup, fuzz, mutate_ip

FRAMES = 8000  # per protocol: four sessions (IPv4 and IPv6, each with and without a ring)
SESSION = FRAMES // 4

# What each protocol's frames must reach: proof that they get past the checksums.
REACHED = {
    "arp": ("arp_replies", "arp_ignored"),
    "dhcp": ("dhcp_offer", "dhcp_ack", "dhcp_nak"),
    "dns": ("dns_forwarded", "dns_answers", "dns_servfail"),
    "icmp": ("icmp_echo_replies", "icmp_echo_forwarded", "icmp_martian_unreachable"),
    "tcp": ("tcp_established", "tcp_unacceptable", "tcp_bytes_to_host", "tcp_guest_fin"),
    "udp": ("udp_to_host", "udp_from_host", "udp_prohibited_icmp"),
    "frag": ("frag_reassembled", "frag_overlap_conflict", "frag_too_big"),
    "l2": ("drop_unknown_ethertype", "drop_eth_short", "drop_eth_multicast_source"),
}

# What the IPv6 sessions' frames must reach over IPv6 (their generators are the IPv6 twins).
REACHED6 = {
    "arp": ("ndp_rs", "ndp_ns", "ndp_na", "ndp_na_sent", "ndp_bad_hop_limit",
            "drop_ndp_bad_option"),
    "dhcp": ("dhcpv6_information_request", "dhcpv6_solicit", "dhcpv6_malformed",
             "drop_udp_dhcpv6_elsewhere"),
    "dns": ("dns_forwarded", "drop_udp_zero_checksum_ipv6"),
    "icmp": ("icmpv6_echo_replies", "icmp_echo_forwarded", "drop_icmpv6_not_supported"),
    "tcp": ("tcp_established", "tcp_bytes_to_host"),
    "udp": ("udp_to_host", "tftp_sessions", "drop_tftp_short"),
    "frag": ("ipv6_reassembled", "ipv6_atomic_fragment", "frag_too_big"),
    "l2": ("drop_ipv6_too_many_extensions", "drop_ipv6_jumbogram", "ipv6_no_next_header"),
}
# Host sockets the IPv6 sessions must open toward IPv6 hosts.
OPENS6 = {"dns": "udp", "icmp": "icmp", "tcp": "tcp", "udp": "udp", "frag": "udp"}

CHECKSUM_DROPS = ("drop_ipv4_bad_checksum", "drop_tcp_bad_checksum", "drop_udp_bad_checksum",
                  "drop_icmp_bad_checksum", "drop_icmpv6_bad_checksum")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logger = logging.getLogger("slirptrio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # fuzzing is noisy by design
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fuzz_reaches_the_protocol_and_replays(protocol: str) -> None:
    # The second and fourth sessions journal into a ring of 1 MiB: segments of 64 KiB, each
    # opening with a snapshot of the core; each is replayed whole, then from its last segment,
    # so replay restores a snapshot taken in the middle of the session and compares from there.
    stats = fuzz(protocol, FRAMES, seed=20261201, session_frames=SESSION, ring_bytes=1 << 20)
    assert stats.frames[protocol] >= FRAMES
    assert stats.replayed == stats.sessions == 4
    assert stats.v6_sessions == 2
    assert stats.replayed_mid == 2 and min(stats.first_seqs) > 0, stats.first_seqs
    assert stats.replay_gaps == 0
    # Every session restored two snapshots of its core into fresh cores mid-session and fed
    # them the rest: identical effects for every event, identical state at the end.
    assert stats.snapshots == 8
    assert stats.twin_events > FRAMES // 4, stats.twin_events
    c = stats.counters
    for name in REACHED[protocol]:
        assert c[name] > 0, (name, c)
    for name in REACHED6[protocol]:
        assert stats.counters6[name] > 0, (name, stats.counters6)
    if protocol in OPENS6:
        assert stats.v6_opens[OPENS6[protocol]] > 0, stats.v6_opens
    # The fix-ups work: only the deliberate 3 % of frames fail a checksum.
    bad = sum(c[k] for k in CHECKSUM_DROPS)
    assert bad < 0.06 * c["frames_in"], (bad, c["frames_in"])
    assert c["core_exceptions"] == 0


@pytest.mark.parametrize("name", sorted(cve_frames()))
def test_libslirp_cve_shapes_are_dropped_and_counted(name: str) -> None:
    stack = Stack(parse_user_options(""), 1)
    stack.handle(DnsUpstreams("203.0.113.53:53"), 0)
    frames = cve_frames()[name]
    for t, frame in enumerate(frames):
        stack.handle(GuestFrame(frame), t)
    check_bounds(stack)
    c = stack.counters
    assert c["frames_in"] == len(frames)
    expected = {
        "bootp-short": "drop_dhcp_short",
        "bootp-lying-length": "drop_udp_bad_length",
        "udp-short-header": "drop_udp_short",
        "dns-short": "dns_malformed",
        "dns-lying-length": "drop_udp_bad_length",
        "tftp-short": "drop_udp_bad_length",
        "ncsi-short": "drop_unknown_ethertype",
        "arp-short": "drop_arp_short",
        "frag-overlap-different": "frag_overlap_conflict",
        "frag-past-65535": "frag_too_big",
        "frag-first-huge-then-tiny": "frag_in",
        "tcp-urgent-beyond": "tcp_syn",
        "tcp-option-lengths": "tcp_syn",
    }[name]
    assert c[expected] > 0, dict(c)
    assert not any(k.startswith("drop_ipv4_bad") or k.endswith("_bad_checksum") for k in c)


def test_fixup_makes_mutated_frames_pass_the_checksums() -> None:
    rng = random.Random(5)
    stack = Stack(parse_user_options(""), 1)
    frame = cve_frames()["tcp-urgent-beyond"][0]
    for _ in range(500):
        mutated, keep = mutate_ip(frame, rng)
        stack.handle(GuestFrame(fixup(mutated, rng, keep_lengths=keep)), 0)
    assert sum(stack.counters[k] for k in CHECKSUM_DROPS) == 0
