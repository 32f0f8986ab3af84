"""wire/ and core/ must stay sans-I/O: no trio, socket, time, random or os imports."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "slirptrio"
FORBIDDEN = {"trio", "socket", "time", "random", "os", "secrets", "threading", "select"}
PURE_FILES = sorted(
    [
        *(ROOT / "wire").glob("*.py"),
        *(ROOT / "core").rglob("*.py"),
        *(ROOT / "syntax").rglob("*.py"),
        ROOT / "config.py",
        ROOT / "forward.py",
    ]
)


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_pure_files_found() -> None:
    assert len(PURE_FILES) >= 5


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_io_imports(path: pathlib.Path) -> None:
    bad = imported_modules(path) & (FORBIDDEN | {"__import__"})
    assert not bad, f"{path} imports {sorted(bad)}"


def test_checker_catches_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os.path\nfrom time import monotonic\n")
    assert imported_modules(sample) & FORBIDDEN == {"os", "time"}


def test_core_imports_alone() -> None:
    """``import slirptrio.core.stack`` must not drag in trio or the journal (the package's
    public names are lazy)."""
    import subprocess
    import sys

    code = "import sys, slirptrio.core.stack; print(sorted({'trio', 'msgpack'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=ROOT.parent,
    )
    assert out.stdout.strip() == "[]"
