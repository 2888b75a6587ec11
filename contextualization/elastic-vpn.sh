#!/bin/sh
# elastic-vpn.sh: bring up a node's WireGuard tunnel to the hub, from its context.
#
# A cloud node (an EC2 instance the autoscaler bursts to) is not on the private networks:
# it joins them through this tunnel. Its context (user-data) says, besides the usual:
#
#   VPN_TYPE=wireguard         (openvpn: not handled by this script)
#   VPN_ADDRESS=10.250.0.5/24  its overlay address (the hub is the overlay's first address)
#   VPN_PRIVATE_KEY=...        its private key (made by elastic; never printed here)
#   VPN_HUB_PUBLIC_KEY=...     the hub's public key
#   VPN_HUB_ENDPOINT=IP:PORT   where the hub listens (UDP)
#   VPN_ROUTES="10.77.0.0/24"  more networks reached through the tunnel (space-separated)
#   VPN_IFNAME=wg0 VPN_MTU=1420 VPN_KEEPALIVE=25 VPN_WAIT=60 (defaults)
#
# Usage: elastic-vpn.sh [CONTEXT_FILE]   (the variables from the environment, or sourced
# from CONTEXT_FILE). Uses the kernel's WireGuard, else wireguard-go (in the background,
# as it daemonizes itself), `wg` and `ip`. Prints "ELASTIC-VPN-UP <address> <uptime>" once
# the hub answers a ping over the tunnel, "ELASTIC-VPN-FAILED <why>" and exits 1 if it does
# not within VPN_WAIT seconds. Idempotent: an interface that is already up is reconfigured.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# shellcheck disable=SC1090
[ $# -ge 1 ] && . "$1"

say() { echo "elastic-vpn: $*" >&2; }
fail() {
    echo "ELASTIC-VPN-FAILED $*"
    exit 1
}
uptime_s() { cut -d' ' -f1 /proc/uptime 2>/dev/null || echo 0; }

[ "${VPN_TYPE:-wireguard}" = wireguard ] || fail "VPN_TYPE ${VPN_TYPE} is not handled here"
for v in VPN_ADDRESS VPN_PRIVATE_KEY VPN_HUB_PUBLIC_KEY VPN_HUB_ENDPOINT; do
    eval "val=\${$v:-}"
    [ -n "$val" ] || fail "$v is not set"
done
IF=${VPN_IFNAME:-wg0}
MTU=${VPN_MTU:-1420}
KEEPALIVE=${VPN_KEEPALIVE:-25}
WAIT=${VPN_WAIT:-60}
ADDR=${VPN_ADDRESS%/*}
PREFIX=${VPN_ADDRESS#*/}
[ "$PREFIX" != "$VPN_ADDRESS" ] || PREFIX=24

# the overlay network (ADDR/PREFIX with the host bits cleared) and the hub (its first address)
overlay=$(awk -v a="$ADDR" -v p="$PREFIX" 'BEGIN {
    split(a, o, "."); n = ((o[1] * 256 + o[2]) * 256 + o[3]) * 256 + o[4]
    size = 2 ^ (32 - p); net = n - n % size
    printf "%d.%d.%d.%d %d.%d.%d.%d\n",
        int(net / 16777216) % 256, int(net / 65536) % 256, int(net / 256) % 256, net % 256,
        int((net + 1) / 16777216) % 256, int((net + 1) / 65536) % 256,
        int((net + 1) / 256) % 256, (net + 1) % 256 }')
NET=${overlay% *}/$PREFIX
HUB=${overlay#* }

if ! ip link show dev "$IF" >/dev/null 2>&1; then
    if ! ip link add dev "$IF" type wireguard 2>/dev/null; then
        command -v wireguard-go >/dev/null || fail "no WireGuard: no kernel module, no wireguard-go"
        wireguard-go "$IF" >/dev/null 2>&1 || fail "wireguard-go $IF did not start"
        i=0
        until ip link show dev "$IF" >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 200 ] || fail "wireguard-go made no interface $IF"
            sleep 0.05
        done
    fi
fi

# the key goes to wg in a file only this script can read, never on a command line
old_umask=$(umask)
umask 077
keyfile=$(mktemp) || fail "mktemp"
printf '%s\n' "$VPN_PRIVATE_KEY" >"$keyfile"
umask "$old_umask"
allowed=$NET
for r in ${VPN_ROUTES:-}; do allowed="$allowed,$r"; done
wg set "$IF" private-key "$keyfile" peer "$VPN_HUB_PUBLIC_KEY" allowed-ips "$allowed" \
    endpoint "$VPN_HUB_ENDPOINT" persistent-keepalive "$KEEPALIVE"
rc=$?
rm -f "$keyfile"
[ $rc -eq 0 ] || fail "wg set $IF failed ($rc)"
ip addr replace "$ADDR/$PREFIX" dev "$IF" || fail "ip addr $ADDR/$PREFIX on $IF"
ip link set dev "$IF" mtu "$MTU" up || fail "ip link set $IF up"
for r in ${VPN_ROUTES:-}; do
    ip route replace "$r" dev "$IF" || fail "route $r via $IF"
done
say "$IF $ADDR/$PREFIX, hub $HUB at $VPN_HUB_ENDPOINT, routes: ${VPN_ROUTES:-none}"

i=0
until ping -c 1 -W 1 "$HUB" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt "$WAIT" ] || fail "the hub $HUB does not answer over $IF after $WAIT s"
done
echo "ELASTIC-VPN-UP $ADDR $(uptime_s)"
