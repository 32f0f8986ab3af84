"""Open a tap device in the current network namespace and exec a command that inherits it.

``python -m benchmarks.tapfd IFNAME FD -- ARGV...`` attaches to the existing tap IFNAME, puts the
open file on descriptor FD and execs ARGV (which may enter another namespace: the tap stays in
the one it was opened in). Used to give QEMU in the host namespace the guest's tap as ``fd=``.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(ifname: str) -> int:
    """A descriptor attached to tap ``ifname`` (frames without packet info headers)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m benchmarks.tapfd IFNAME FD -- ARGV...", file=sys.stderr)
        return 2
    ifname, target, cmd = argv[0], int(argv[1]), argv[3:]
    fd = open_tap(ifname)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(target, True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
