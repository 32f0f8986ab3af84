"""The SMB share's host side without a guest: checks, the private configuration, the pair."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slirptrio.api import check_host_side
from slirptrio.config import parse_user_options
from slirptrio.shell import smb


def test_missing_directory_and_missing_smbd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(smb.SmbError, match="not a directory"):
        smb.check_share(str(tmp_path / "nope"))
    monkeypatch.setattr(smb, "find_smbd", lambda: None)
    with pytest.raises(smb.SmbError) as info:
        smb.check_share(str(tmp_path))
    assert "smbd not found" in str(info.value) and "Debian package: samba" in str(info.value)
    assert "\n" not in str(info.value)
    problem = check_host_side(parse_user_options(f"smb={tmp_path}"))
    assert problem is not None and "samba" in problem


def test_check_host_side_tftp(tmp_path: Path) -> None:
    assert check_host_side(parse_user_options(f"tftp={tmp_path}")) is None
    problem = check_host_side(parse_user_options(f"tftp={tmp_path / 'x'}"))
    assert problem == f"tftp={tmp_path / 'x'}: not a directory"
    (tmp_path / "f").write_text("")
    assert check_host_side(parse_user_options(f"tftp={tmp_path / 'f'}")) is not None


def test_private_configuration_is_made_and_removed(tmp_path: Path) -> None:
    share = smb.SmbShare(str(tmp_path), "/usr/sbin/smbd")
    conf = Path(share.conf).read_text()
    assert share.dir in conf and f"path={tmp_path}" in conf and "[qemu]" in conf
    assert "guest ok=yes" in conf and "force user=" in conf
    for sub in ("private", "lock", "state", "cache", "ncalrpc"):
        assert f"={share.dir}/{sub}" in conf
        assert oct(os.stat(Path(share.dir) / sub).st_mode & 0o777) == "0o700"
    assert share.argv() == ["/usr/sbin/smbd", "-l", share.dir, "-s", share.conf]
    share.close()
    assert not Path(share.dir).exists()


def test_loopback_pair_is_connected_end_to_end() -> None:
    ours, theirs = smb._loopback_pair()
    try:
        assert ours.getsockname() == theirs.getpeername()
        ours.sendall(b"ping")
        assert theirs.recv(4) == b"ping"
        theirs.sendall(b"pong")
        assert ours.recv(4) == b"pong"
    finally:
        ours.close()
        theirs.close()
