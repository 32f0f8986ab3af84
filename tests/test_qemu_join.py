"""``slirptrio qemu --join`` (issue 22): what a joining VM's user netdev may say."""

from __future__ import annotations

import pytest

from slirptrio.cli._common import UserError
from slirptrio.cli.qemu import Rewrite, _join_rules, rewrite

QEMU = ["qemu-system-x86_64", "-machine", "none", "-nodefaults"]


def plan(netdev: str) -> Rewrite:
    return rewrite([*QEMU, "-netdev", netdev], lambda i, name: "/run/stack.sock")


def test_the_joining_vm_connects_to_the_running_stacks_socket() -> None:
    p = plan("user,id=n0,hostfwd=tcp::2222-10.0.2.16:22")
    assert "addr.path=/run/stack.sock" in " ".join(p.argv)
    assert _join_rules(p, "/run/stack.ctl") == ["tcp::2222-10.0.2.16:22"]


@pytest.mark.parametrize(("netdev", "words"), [
    ("user,id=n0,restrict=on", "restrict is set by the running stack"),
    ("user,id=n0,net=10.9.0.0/24", "net is set by the running stack"),
    ("user,id=n0,hostfwd=tcp::2222-:22", "needs the guest address"),
])
def test_options_the_running_stack_owns_are_refused(netdev: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        _join_rules(plan(netdev), "/run/stack.ctl")


def test_hostfwd_needs_the_control_socket() -> None:
    with pytest.raises(UserError, match="control socket"):
        _join_rules(plan("user,id=n0,hostfwd=tcp::2222-10.0.2.16:22"), None)
    assert _join_rules(plan("user,id=n0"), None) == []
