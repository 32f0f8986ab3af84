#!/usr/bin/env bash
# Install what the tests need when it is missing, then lint, type-check and run every test
# (end-to-end ones included; they need root) and the mutation check's CI subset; at the end,
# how many tests skipped and why. Fails when a check fails, and when end-to-end tests skipped
# on a machine that can run them (root, and network namespaces can be made). Runs from any
# directory, with no stdin.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
PY="${PYTHON:-python3}"

# --- system tools for the e2e tests (Debian packages) ---------------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need tshark tshark
need ip iproute2
need iperf3 iperf3
need slirp4netns slirp4netns
need curl curl
need cpio cpio
need rsvg-convert librsvg2-bin  # renders the timeline SVG to PNG in its tests
# TFTP, PXE and SMB (tests/e2e/test_tftp.py, test_pxe.py, test_smb.py).
need atftp atftp
need smbclient smbclient
need dhclient isc-dhcp-client  # DHCPv6 client of tests/e2e/test_ipv6.py
[[ -x /usr/sbin/smbd ]] || command -v smbd >/dev/null 2>&1 || missing+=(samba)
[[ -e /usr/lib/ipxe/qemu/efi-virtio.rom ]] || missing+=(ipxe-qemu)
# A real VM test boots Debian's kernel under TCG (tests/e2e/test_vm.py).
compgen -G "/boot/vmlinuz-*" >/dev/null || missing+=(linux-image-amd64)
if ((${#missing[@]})); then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # Without this, tshark's install would ask whether non-root users may capture.
        echo "wireshark-common wireshark-common/install-setuid boolean false" \
            | debconf-set-selections
        apt-get update -q </dev/null
        apt-get install -y -q "${missing[@]}" </dev/null
    else
        echo "run.sh: missing ${missing[*]} and cannot apt-get install; e2e tests will skip" >&2
    fi
fi

# --- Python package and dev tools -------------------------------------------------------------
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "run.sh: $PY must be Python 3.11 or newer" >&2
    exit 1
fi
if ! "$PY" -c 'import slirptrio, trio, dpkt, msgpack, zlib_ng, pytest, pytest_trio, hypothesis, mypy, ruff' \
        2>/dev/null; then
    echo "run.sh: pip install -e '.[dev]'"
    pip_install() { "$PY" -m pip install -q --root-user-action=ignore "$@" </dev/null; }
    if ! pip_install -e '.[dev]'; then
        # Debian's own python3 refuses pip installs (PEP 668) unless told otherwise.
        echo "run.sh: retrying with --break-system-packages"
        pip_install --break-system-packages -e '.[dev]'
    fi
fi

# The native fast path, built in place for this checkout (an editable install elsewhere does not
# build it here); without a compiler this warns and the pure path is used.
echo "run.sh: build the native fast path"
"$PY" setup.py -q build_ext --inplace 2>&1 | grep -v "_BetaConfiguration\|warnings.warn" || true
"$PY" -c 'from slirptrio.wire import fast; print(f"run.sh: fast path: {fast.IMPL} {fast.REASON}")'

# --- checks -----------------------------------------------------------------------------------
echo "run.sh: ruff check ."
"$PY" -m ruff check .

# mypy's file list lives in pyproject.toml; pass only the directories this checkout has.
mapfile -t mypy_files < <("$PY" - <<'PYEOF'
import os, tomllib
with open("pyproject.toml", "rb") as f:
    files = tomllib.load(f)["tool"]["mypy"]["files"]
print("\n".join(p for p in files if os.path.exists(p)))
PYEOF
)
echo "run.sh: mypy ${mypy_files[*]}"
"$PY" -m mypy "${mypy_files[@]}"

# --- can the end-to-end tests run here? (root, and a network namespace can be made) ---------
e2e_possible=0
if [[ "$(id -u)" -eq 0 ]] && command -v ip >/dev/null 2>&1; then
    probe="slirptrio-runsh-$$"
    if ip netns add "$probe" >/dev/null 2>&1; then
        ip netns del "$probe" >/dev/null 2>&1 || true
        e2e_possible=1
    fi
fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
status=0

echo "run.sh: pytest"
# A backstop only: every wait inside the tests is bounded far below this. -rs lists every
# skip with its reason; the summary at the end groups them.
timeout --kill-after=30 840 "$PY" -m pytest -q -rs </dev/null | tee "$logs/native.log" \
    || status=$?

# The pure-Python path once more (the reference; what a machine without a compiler runs): the
# unit tests, the captures' replay among them. The end-to-end tests ran above on the native path;
# so did the tests of the command line, the configuration and the writer thread, which never
# reach the codecs the fast path replaces.
echo "run.sh: pytest, pure path (SLIRPTRIO_PURE=1, unit tests)"
pure_skip=(tests/e2e tests/test_cli.py tests/test_cli_qemu.py tests/test_config.py
           tests/test_journal_writer.py tests/test_descriptors.py)
SLIRPTRIO_PURE=1 timeout --kill-after=30 840 "$PY" -m pytest -q -rs -p no:cacheprovider \
    "${pure_skip[@]/#/--ignore=}" </dev/null | tee "$logs/pure.log" || status=$?

# One-line breaks of core behaviours that the tests must catch: a few here, every one with
# `python3 tests/mutation.py --all`.
echo "run.sh: mutation check (CI subset)"
timeout --kill-after=30 300 "$PY" tests/mutation.py </dev/null || status=$?

# --- what skipped, and why --------------------------------------------------------------------
"$PY" - "$logs/native.log" "$logs/pure.log" "$e2e_possible" <<'PYEOF' || status=$?
import collections, re, sys
native, pure, e2e_possible = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
line = re.compile(r"^SKIPPED \[(\d+)\] ([^:]+):\d+: (.*)$")
by_reason: dict[tuple[str, str], int] = collections.Counter()
e2e_skipped = 0
for run, path in (("native", native), ("pure", pure)):
    with open(path, encoding="utf-8", errors="replace") as f:
        for text in f:
            m = line.match(text.rstrip("\n"))
            if m:
                n, where, reason = int(m[1]), m[2], m[3]
                by_reason[(run, reason)] += n
                if run == "native" and where.startswith("tests/e2e/"):
                    e2e_skipped += n
total = sum(by_reason.values())
print(f"run.sh: {total} tests skipped" + (":" if total else ""))
for (run, reason), n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
    print(f"run.sh:   {n:4} ({run} path) {reason}")
if e2e_possible and e2e_skipped:
    print(f"run.sh: FAIL: {e2e_skipped} end-to-end tests skipped on a machine that can run "
          "them (root, and `ip netns add` works)", file=sys.stderr)
    sys.exit(1)
if not e2e_possible:
    print("run.sh: note: end-to-end tests cannot run here (no root or no network "
          "namespaces); they skipped above", file=sys.stderr)
PYEOF
exit "$status"
