#!/usr/bin/env bash
# Re-record the journals in captures/ from a real Linux guest: a network namespace with a tap
# device (the kernel's TCP/IP stack, busybox udhcpc/ping/nslookup), relayed to slirptrio by QEMU.
# Needs root, qemu-system-x86, busybox-static, iproute2. Traffic stays inside the namespaces
# this script creates: the "host" namespace has only lo, and DNS goes to a local test server.
#
#   sudo captures/record.sh            # rewrites captures/*.journal (directories) and *.pcap
#   sudo captures/record.sh ipv6       # only the sessions named
set -euo pipefail
SESSIONS=" ${*:-dhcp-ping release-renew dns-udp tcp-http ipv6} "
want() { [[ "$SESSIONS" == *" $1 "* ]]; }
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT"
TMP=$(mktemp -d)
G=cap-g-$$
H=cap-h-$$
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$G" 2>/dev/null || true
    ip netns del "$H" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$G"
ip netns add "$H"
ip -n "$H" link set lo up
ip -n "$G" link set lo up
ip netns exec "$G" ip tuntap add dev tap0 mode tap
ip -n "$G" link set tap0 up

cat > "$TMP/udhcpc.sh" <<'S'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router"
    ;;
esac
exit 0
S
chmod +x "$TMP/udhcpc.sh"

# A DNS server on the host namespace's loopback answering every A query with 203.0.113.77.
cat > "$TMP/dns.py" <<'S'
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5353))
while True:
    q, a = s.recvfrom(4096)
    end = 12
    while q[end]:
        end += q[end] + 1
    question = q[12:end + 5]
    qtype = struct.unpack("!H", q[end + 1:end + 3])[0]
    answers = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([203, 0, 113, 77])
    n = 1 if qtype == 1 else 0
    head = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, n, 0, 0)
    s.sendto(head + question + (answers if n else b""), a)
S
ip netns exec "$H" python3 "$TMP/dns.py" & PIDS+=($!)

start_stack() {  # name [options]
    rm -f "$TMP/s.sock"
    ip netns exec "$H" python3 -m slirptrio run --listen "unix:$TMP/s.sock" \
        --journal "$HERE/$1.journal" --pcap "$HERE/$1.pcap" --overwrite --seed 1 \
        --dns-upstream 127.0.0.1:5353 "${2:-}" > "$TMP/stack.out" 2>&1 &
    STACK=$!
    PIDS+=($STACK)
    for _ in $(seq 100); do grep -q ready "$TMP/stack.out" && break; sleep 0.1; done
    ip netns exec "$G" qemu-system-x86_64 -machine none -nodefaults -display none \
        -no-user-config -netdev tap,id=t0,ifname=tap0,script=no,downscript=no \
        -netdev "stream,id=b0,server=off,addr.type=unix,addr.path=$TMP/s.sock" \
        -netdev hubport,id=p0,hubid=0,netdev=t0 -netdev hubport,id=p1,hubid=0,netdev=b0 \
        > "$TMP/qemu.out" 2>&1 &
    RELAY=$!
    PIDS+=($RELAY)
    sleep 0.5
}

stop_stack() {
    kill "$RELAY"; wait "$RELAY" 2>/dev/null || true
    sleep 0.2
    kill "$STACK"; wait "$STACK" 2>/dev/null || true
    ip -n "$G" -4 addr flush dev tap0
}

guest() { ip netns exec "$G" timeout 30 "$@"; }

if want dhcp-ping; then
echo "recording dhcp-ping"
start_stack dhcp-ping
guest busybox udhcpc -i tap0 -n -q -f -t 5 -T 1 -s "$TMP/udhcpc.sh"
guest busybox ping -c 3 -W 2 10.0.2.2
guest busybox ping -c 3 -W 2 10.0.2.3
stop_stack
fi

if want release-renew; then
echo "recording release-renew"
start_stack release-renew
# udhcpc in the background: SIGUSR1 renews (unicast REQUEST), SIGUSR2 releases.
ip netns exec "$G" busybox udhcpc -i tap0 -f -t 5 -T 1 -s "$TMP/udhcpc.sh" > "$TMP/udhcpc.out" 2>&1 &
DH=$!
PIDS+=($DH)
for _ in $(seq 100); do grep -q "lease of" "$TMP/udhcpc.out" && break; sleep 0.1; done
guest busybox ping -c 1 -W 2 10.0.2.2
kill -USR1 "$DH"; sleep 1        # renew
kill -USR2 "$DH"; sleep 1        # release
kill -USR1 "$DH"; sleep 2        # a new lease: the same address for the same MAC
guest busybox ping -c 1 -W 2 10.0.2.2
kill "$DH"; wait "$DH" 2>/dev/null || true
cat "$TMP/udhcpc.out"
stop_stack
fi

if want dns-udp; then
echo "recording dns-udp"
start_stack dns-udp
guest busybox udhcpc -i tap0 -n -q -f -t 5 -T 1 -s "$TMP/udhcpc.sh"
guest busybox nslookup vm.example.test 10.0.2.3
guest busybox nslookup other.example.test 10.0.2.3
stop_stack
fi

if want tcp-http; then
echo "recording tcp-http"
mkdir -p "$TMP/www-host" "$TMP/www-guest"
head -c 300000 /dev/urandom > "$TMP/www-host/blob"
echo "hello from the guest" > "$TMP/www-guest/index.html"
ip netns exec "$H" python3 -m http.server 8080 --bind 127.0.0.1 --directory "$TMP/www-host" \
    > /dev/null 2>&1 & PIDS+=($!)
start_stack tcp-http "hostfwd=tcp:127.0.0.1:2280-:8000"
guest busybox udhcpc -i tap0 -n -q -f -t 5 -T 1 -s "$TMP/udhcpc.sh"
ip netns exec "$G" busybox httpd -f -p 8000 -h "$TMP/www-guest" & PIDS+=($!)
sleep 0.5
guest curl -sS -o "$TMP/got" http://10.0.2.2:8080/blob     # guest -> host loopback, 300 kB
cmp "$TMP/got" "$TMP/www-host/blob"
guest curl -sS -o /dev/null http://10.0.2.2:8081/ || echo "refused, as expected"
ip netns exec "$H" timeout 30 curl -sS http://127.0.0.1:2280/index.html   # host -> guest
stop_stack
fi

if want ipv6; then
echo "recording ipv6"
mkdir -p "$TMP/www6"
head -c 100000 /dev/urandom > "$TMP/www6/blob"
ip netns exec "$H" python3 -m http.server 8082 --bind ::1 --directory "$TMP/www6" \
    > /dev/null 2>&1 & PIDS+=($!)
ip netns exec "$G" sysctl -q -w net.ipv6.conf.tap0.disable_ipv6=1
start_stack ipv6
# IPv6 comes up only now: router solicitation, SLAAC from our advertisement, DAD.
ip netns exec "$G" sysctl -q -w net.ipv6.conf.tap0.disable_ipv6=0 net.ipv6.conf.tap0.accept_ra=1
for _ in $(seq 100); do
    ip -n "$G" -6 addr show dev tap0 scope site | grep -v tentative | grep -q 'inet6 fec0:' \
        && ip -n "$G" -6 route show default | grep -q fe80::2 && break
    sleep 0.1
done
guest busybox ping6 -c 2 -W 2 fec0::2
guest busybox ping6 -c 1 -W 2 -s 3000 fec0::3                 # fragments both ways
guest busybox nslookup -type=AAAA vm.example.test fec0::3     # AAAA through the relay
guest curl -sS -g -o "$TMP/got6" "http://[fec0::2]:8082/blob"  # to the host's ::1
cmp "$TMP/got6" "$TMP/www6/blob"
stop_stack
ip netns exec "$G" sysctl -q -w net.ipv6.conf.tap0.disable_ipv6=1
fi

for name in $SESSIONS; do python3 -m slirptrio replay "$HERE/$name.journal"; done
