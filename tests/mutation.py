"""A mutation check: one-line breaks of core behaviours, each of which some test must catch.

Each mutant names a line of ``slirptrio/`` by its exact source text (surrounding whitespace
aside), searched across every ``*.py`` under its ``scope`` (default ``slirptrio/core``, so the
TCP mutants survive core/tcp.py becoming a package; a file where the text alone is ambiguous);
the text must occur exactly once there. The
script copies the tree once into a temporary directory (the working tree is never touched),
and for each mutant swaps that one line for its replacement (same indentation), runs the
mutant's test files there with pytest, and puts the line back. A mutant is *killed* when the
tests fail; it *survives* when they pass. Before the mutants, the same test files run on the
unmutated copy: they must pass, or the report would mean nothing.

Usage::

    python3 tests/mutation.py            # the CI subset (fast test files; tests/run.sh)
    python3 tests/mutation.py --all      # every mutant (the audit of issue #25 and more)
    python3 tests/mutation.py --list     # the mutants, with where each line is now
    python3 tests/mutation.py NAME...    # the named mutants

Exit status: 0 when every mutant run was killed; 1 when one survived or the unmutated tests
fail; 2 when a mutant's line is not found exactly once (the list needs mending).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MUTANT_TIMEOUT_S = 600  # a mutant that hangs the tests past this counts as killed (reported)


@dataclass(frozen=True)
class Mutant:
    """One line of ``scope`` whose text is ``original``, replaced by ``replacement``."""

    name: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str
    ci: bool = False  # part of the subset tests/run.sh runs
    scope: str = "slirptrio/core"  # a folder (every *.py under it) or one file


T = "tests/"
MUTANTS: tuple[Mutant, ...] = (
    # ---- the audit of issue #25 (one-line breaks in slirptrio/core) --------------------------
    Mutant("icmp6-quote-8-bytes",
           "return header + bytes(l4_head[:QUOTE_L4_BYTES])",
           "return header + bytes(l4_head[:8])",
           (T + "test_ipv6_core.py",), "ICMPv6 errors quote only 8 bytes of the guest packet",
           ci=True),
    Mutant("icmp4-quote-8-bytes",
           "return bytes(header) + bytes(l4_head[:QUOTE_L4_BYTES])",
           "return bytes(header) + bytes(l4_head[:8])",
           (T + "test_icmp_core.py",), "ICMP errors quote only 8 bytes of the guest datagram"),
    Mutant("tcp-right-edge-moves-left",
           "win = old  # never move the right edge left (RFC 9293 3.8.6.2.2)",
           "pass",
           (T + "test_tcp_windows.py",), "the advertised window's right edge may move left",
           ci=True),
    Mutant("tcp-window-update-below-quarter",
           "return c.rcv_adv - c.rcv_nxt < (self.buffer_size >> 1) and new_edge - c.rcv_adv >= min(",  # noqa: E501
           "return c.rcv_adv - c.rcv_nxt < (self.buffer_size >> 2) and new_edge - c.rcv_adv >= min(",  # noqa: E501
           (T + "test_tcp_windows.py",), "window updates only below a quarter of the buffer",
           ci=True),
    Mutant("tcp-window-update-at-half",
           "return c.rcv_adv - c.rcv_nxt < (self.buffer_size >> 1) and new_edge - c.rcv_adv >= min(",  # noqa: E501
           "return c.rcv_adv - c.rcv_nxt <= (self.buffer_size >> 1) and new_edge - c.rcv_adv >= min(",  # noqa: E501
           (T + "test_tcp_windows.py",), "a window update while the window is still half open"),
    Mutant("tcp-window-update-one-segment",
           "self.buffer_size >> 1, 2 * self.mss",
           "self.buffer_size >> 1, 1 * self.mss",
           (T + "test_tcp_windows.py",), "a window update for one segment of growth"),
    Mutant("tcp-fast-retransmit-4-dupacks",
           "if c.dupacks == 3 and c.recover is None:",
           "if c.dupacks == 4 and c.recover is None:",
           (T + "test_tcp_core.py",), "fast retransmit after four duplicate ACKs"),
    Mutant("tcp-ack-every-three-segments",
           "if filled or n <= 0 or rcv_nxt - c.rcv_acked >= 2 * self.mss:",
           "if filled or n <= 0 or rcv_nxt - c.rcv_acked >= 3 * self.mss:",
           (T + "test_tcp_core.py",), "ACKs coalesced over three full segments, not two"),
    Mutant("ipv4-ident-constant",
           "packet = wip.build_ipv4(src, dst, proto, payload, ident=self._ip_id)",
           "packet = wip.build_ipv4(src, dst, proto, payload, ident=0)",
           (T + "test_stack.py",), "every IPv4 datagram from the stack has the same ident",
           ci=True),
    Mutant("arp-answers-any-address",
           "if target not in self._virtual_ips:",
           "if False:",
           (T + "test_stack.py",), "ARP answered for the guest's own address (breaks DAD)"),
    Mutant("icmp-echo-reply-type",
           "reply = wicmp.build_icmp(wicmp.ECHO_REPLY, 0, rest, bytes(data))",
           "reply = wicmp.build_icmp(wicmp.ECHO_REQUEST, 0, rest, bytes(data))",
           (T + "test_stack.py",), "a ping of the gateway answered with a request"),
    Mutant("ndp-restrict-keeps-router",
           "lifetime=0 if self._restrict else ROUTER_LIFETIME_S,",
           "lifetime=ROUTER_LIFETIME_S,",
           (T + "test_ipv6_core.py",), "restrict=on still advertises a default router"),
    # ---- more, across TCP, UDP, DHCP, DNS, NDP, TFTP, fragments ------------------------------
    Mutant("tcp-send-window-unscaled",
           "right = ack + (seg.window << c.snd_wscale)",
           "right = ack + seg.window",
           (T + "test_tcp_core.py",), "the guest's window scale ignored after the handshake"),
    Mutant("udp-restrict-ignored",
           "if self.restrict:",
           "if False:",
           (T + "test_udp_core.py",), "restrict=on lets guest UDP out",
           scope="slirptrio/core/udp.py"),
    Mutant("udp-port-zero-forwarded",
           "if sport == 0 or dport == 0:",
           "if sport == 0:",
           (T + "test_udp_core.py",), "guest UDP to port 0 forwarded"),
    Mutant("dhcp-lease-expires-at-once",
           "self._leases[ip] = Lease(ip, mac, now_ns + DHCP_LEASE_TIME * _NS)",
           "self._leases[ip] = Lease(ip, mac, now_ns)",
           (T + "test_dhcp.py",), "a lease expires as it is granted", ci=True),
    Mutant("dhcp-discover-gets-ack",
           "return self._reply(msg, wd.OFFER, ip)",
           "return self._reply(msg, wd.ACK, ip)",
           (T + "test_dhcp.py",), "DISCOVER answered with ACK instead of OFFER"),
    Mutant("dns-answer-keeps-upstream-id",
           "self._send_udp(p.server, DNS_PORT, p.guest[0], p.guest[1], with_id(data, p.guest_id))",
           "self._send_udp(p.server, DNS_PORT, p.guest[0], p.guest[1], data)",
           (T + "test_dns_core.py",), "DNS answers reach the guest with the upstream's id"),
    Mutant("dns-answer-question-unchecked",
           "if qsec != p.question:",
           "if False:",
           (T + "test_dns_core.py",), "a DNS answer for another question is relayed"),
    Mutant("ndp-prefix-not-autonomous",
           "flags = wndp.PREFIX_ONLINK | (wndp.PREFIX_AUTONOMOUS if self._prefix_len == 64 else 0)",
           "flags = wndp.PREFIX_ONLINK",
           (T + "test_ipv6_core.py",), "the /64 prefix announced without SLAAC's A flag"),
    Mutant("tftp-duplicate-ack-answered",
           "if n == s.acked:",
           "if False:",
           (T + "test_tftp.py",), "duplicate TFTP ACKs resend (Sorcerer's Apprentice)"),
    Mutant("tftp-window-not-resumed",
           "s.sent = n",
           "pass",
           (T + "test_tftp.py",), "a partly seen TFTP window is not resumed after the ACK"),
    Mutant("frag-odd-length-accepted",
           "if length == 0 or (hdr.mf and length & 7):",
           "if length == 0:",
           (T + "test_ipfrag.py",), "a non-final fragment not a multiple of 8 bytes is kept"),
    Mutant("frag-conflicting-overlap-accepted",
           "if payload[lo - start : hi - start] != datas[i][lo - s : hi - s]:",
           "if False:",
           (T + "test_ipfrag.py",), "overlapping fragments with different bytes are merged"),
    Mutant("frag-size-bound-lifted",
           "if end > limit:",
           "if end > limit + 65536:",
           (T + "test_ipfrag.py",), "fragments past the datagram size bound are held"),
)


class ListError(Exception):
    """A mutant's line is missing or ambiguous."""


def locate(root: Path, m: Mutant) -> tuple[Path, int]:
    """The file (relative to ``root``) and 0-based line index of ``m``'s line."""
    hits = []
    base = root / m.scope
    for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip() == m.original.strip():
                hits.append((path.relative_to(root), i))
    if len(hits) != 1:
        where = ", ".join(f"{p}:{i + 1}" for p, i in hits) or "nowhere"
        raise ListError(f"{m.name}: line found {len(hits)} times under {m.scope} ({where})")
    return hits[0]


def mutate(text: str, index: int, m: Mutant) -> str:
    """``text`` with line ``index`` replaced by ``m.replacement`` at the same indentation."""
    lines = text.splitlines(keepends=True)
    old = lines[index]
    indent = old[: len(old) - len(old.lstrip())]
    lines[index] = indent + m.replacement.strip() + "\n"
    return "".join(lines)


def copy_tree(dest: Path) -> None:
    """The files the tests need (the built native module included), without VCS or caches."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".mypy_cache",
                                    ".ruff_cache", ".pytest_cache", ".hypothesis", "build")
    for name in ("slirptrio", "tests", "replay", "captures", "benchmarks"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """Run ``tests`` in ``root``; (passed, the first failing test and pytest's last line)."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
            "-o", "addopts=", *tests]
    try:
        res = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                             timeout=MUTANT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {MUTANT_TIMEOUT_S} s"
    lines = (res.stdout + res.stderr).strip().splitlines()
    tail = lines[-1] if lines else f"exit {res.returncode}"
    killer = next((ln.split()[1] for ln in lines if ln.startswith(("FAILED ", "ERROR "))), "")
    return res.returncode == 0, f"{killer}: {tail}" if killer else tail


def check_copy_is_imported(root: Path) -> None:
    """Make sure the tests in ``root`` import ``slirptrio`` from ``root`` (not an installed
    copy elsewhere), or every mutant would survive for the wrong reason."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", "import slirptrio; print(slirptrio.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    if not Path(out.stdout.strip()).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"mutation: slirptrio imports from {out.stdout.strip()}, not the copy")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mutants and report; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only these mutants")
    ap.add_argument("--all", action="store_true", help="every mutant (default: the CI subset)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if len(by_name) != len(MUTANTS):
        raise SystemExit("mutation: two mutants share a name")
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"mutation: unknown mutant {', '.join(unknown)}", file=sys.stderr)
        return 2
    chosen = ([by_name[n] for n in args.names] if args.names
              else list(MUTANTS) if args.all or args.list else [m for m in MUTANTS if m.ci])
    try:
        places = {m.name: locate(REPO, m) for m in chosen}
    except ListError as exc:
        print(f"mutation: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            path, i = places[m.name]
            print(f"{m.name:36} {path}:{i + 1}  {m.why}{'  [ci]' if m.ci else ''}")
        return 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slirptrio-mutation-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        check_copy_is_imported(root)
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        ok, tail = run_tests(root, tests)
        print(f"mutation: unmutated: {'pass' if ok else 'FAIL'} ({tail})", flush=True)
        if not ok:
            return 1
        survived = []
        for m in chosen:
            path, i = places[m.name]
            original = (root / path).read_text()
            (root / path).write_text(mutate(original, i, m))
            try:
                passed, tail = run_tests(root, m.tests)
            finally:
                (root / path).write_text(original)
            verdict = "SURVIVED" if passed else "killed"
            if passed:
                survived.append(m.name)
            print(f"mutation: {verdict:8} {m.name:36} {path}:{i + 1}  ({tail})", flush=True)
    print(f"mutation: {len(chosen) - len(survived)} of {len(chosen)} mutants killed"
          f"{'; survived: ' + ', '.join(survived) if survived else ''}"
          f" ({time.monotonic() - t0:.0f} s)")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
