#!/bin/sh
# elastic-vpn.sh: bring up a node's tunnel to the hub (WireGuard or OpenVPN), from its context.
#
# A cloud node (an EC2 instance the autoscaler bursts to) is not on the private networks:
# it joins them through this tunnel. Its context (user-data) says, besides the usual:
#
#   VPN_TYPE=wireguard         or openvpn
#   VPN_ADDRESS=10.250.0.5/24  its overlay address (the hub is the overlay's first address)
#   VPN_HUB_ENDPOINT=IP:PORT   where the hub listens (UDP)
#   VPN_ROUTES="10.77.0.0/24"  more networks reached through the tunnel (space-separated)
#   VPN_MTU=1420 VPN_WAIT=60   (defaults)
# wireguard:
#   VPN_PRIVATE_KEY=...        its private key (made by elastic; never printed here)
#   VPN_HUB_PUBLIC_KEY=...     the hub's public key
#   VPN_IFNAME=wg0 VPN_KEEPALIVE=25 (defaults)
# openvpn:
#   VPN_CA VPN_CERT VPN_KEY    PEM texts: the project's CA, the node's cert and its key
#   VPN_HUB_NAME=hub           the CN of the hub's certificate
#   VPN_HUB_FINGERPRINT=AB:..  the SHA-256 of the hub's certificate, pinned besides the CA
#   VPN_IFNAME=ovpn0 VPN_DIR=/run/elastic/openvpn/IFNAME (defaults: the files, 0600)
#
# Usage: elastic-vpn.sh [CONTEXT_FILE]   (the variables from the environment, or sourced
# from CONTEXT_FILE). WireGuard: the kernel's, else wireguard-go (in the background, as it
# daemonizes itself), `wg` and `ip`. OpenVPN: `openvpn --daemon`, its log and pid in
# VPN_DIR. Prints "ELASTIC-VPN-UP <address> <uptime>" once the hub answers a ping over the
# tunnel, "ELASTIC-VPN-FAILED <why>" and exits 1 if it does not within VPN_WAIT seconds.
# Idempotent: a tunnel that is already up is reconfigured.
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

TYPE=${VPN_TYPE:-wireguard}
case $TYPE in
    wireguard) need="VPN_PRIVATE_KEY VPN_HUB_PUBLIC_KEY"; IF=${VPN_IFNAME:-wg0} ;;
    openvpn) need="VPN_CA VPN_CERT VPN_KEY"; IF=${VPN_IFNAME:-ovpn0} ;;
    *) fail "VPN_TYPE $TYPE is not handled here" ;;
esac
for v in VPN_ADDRESS VPN_HUB_ENDPOINT $need; do
    eval "val=\${$v:-}"
    [ -n "$val" ] || fail "$v is not set"
done
MTU=${VPN_MTU:-1420}
KEEPALIVE=${VPN_KEEPALIVE:-25}
WAIT=${VPN_WAIT:-60}
ADDR=${VPN_ADDRESS%/*}
PREFIX=${VPN_ADDRESS#*/}
[ "$PREFIX" != "$VPN_ADDRESS" ] || PREFIX=24

# the overlay network (ADDR/PREFIX with the host bits cleared) and the hub (its first address)
overlay=$(awk -v a="$ADDR" -v p="$PREFIX" 'BEGIN {
    split(a, o, "."); n = ((o[1] * 256 + o[2]) * 256 + o[3]) * 256 + o[4]
    size = 1; for (i = p; i < 32; i++) size *= 2
    net = n - n % size
    printf "%d.%d.%d.%d %d.%d.%d.%d\n",
        int(net / 16777216) % 256, int(net / 65536) % 256, int(net / 256) % 256, net % 256,
        int((net + 1) / 16777216) % 256, int((net + 1) / 65536) % 256,
        int((net + 1) / 256) % 256, (net + 1) % 256 }')
NET=${overlay% *}/$PREFIX
HUB=${overlay#* }

mask() {
    awk -v p="$1" 'BEGIN { split("0 128 192 224 240 248 252 254 255", m)
        for (i = 0; i < 4; i++) {
            b = p >= 8 ? 8 : (p > 0 ? p : 0); p -= 8
            printf "%s%d", (i ? "." : ""), m[b + 1] } }'
}

openvpn_up() {
    command -v openvpn >/dev/null || fail "no openvpn"
    DIR=${VPN_DIR:-/run/elastic/openvpn/$IF}
    old_umask=$(umask)
    umask 077
    mkdir -p "$DIR" || fail "mkdir $DIR"
    pid=$(cat "$DIR/openvpn.pid" 2>/dev/null)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 200 ] || fail "the old openvpn ($pid) does not stop"
            sleep 0.05
        done
    fi
    printf '%s\n' "$VPN_CA" >"$DIR/ca.crt" && printf '%s\n' "$VPN_CERT" >"$DIR/node.crt" &&
        printf '%s\n' "$VPN_KEY" >"$DIR/node.key" || fail "cannot write to $DIR"
    cat >"$DIR/client.conf" <<EOF || fail "cannot write $DIR/client.conf"
client
dev-type tun
dev $IF
remote ${VPN_HUB_ENDPOINT%:*} ${VPN_HUB_ENDPOINT##*:} udp
nobind
resolv-retry infinite
connect-retry 1 15
remote-cert-tls server
verify-x509-name ${VPN_HUB_NAME:-hub} name
$([ -z "${VPN_HUB_FINGERPRINT:-}" ] || echo "peer-fingerprint $VPN_HUB_FINGERPRINT")
ca $DIR/ca.crt
cert $DIR/node.crt
key $DIR/node.key
data-ciphers AES-256-GCM:CHACHA20-POLY1305
tun-mtu $MTU
persist-key
persist-tun
verb 3
$(for r in ${VPN_ROUTES:-}; do
    case $r in */*) ;; *) r=$r/32 ;; esac
    echo "route ${r%/*} $(mask "${r#*/}")"
done)
EOF
    umask "$old_umask"
    say "openvpn $IF to $VPN_HUB_ENDPOINT, hub $HUB, routes: ${VPN_ROUTES:-none}; start $(uptime_s)"
    openvpn --config "$DIR/client.conf" --daemon "elastic-vpn-$IF" --log "$DIR/openvpn.log" \
        --writepid "$DIR/openvpn.pid" || fail "openvpn did not start (see $DIR/openvpn.log)"
}

wireguard_up() {
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
}

if [ "$TYPE" = openvpn ]; then openvpn_up; else wireguard_up; fi

end=$(($(uptime_s | cut -d. -f1) + WAIT))
until ping -c 1 -W 1 "$HUB" >/dev/null 2>&1; do
    [ "$(uptime_s | cut -d. -f1)" -lt "$end" ] ||
        fail "the hub $HUB does not answer over $IF after $WAIT s"
    sleep 0.1
done
echo "ELASTIC-VPN-UP $ADDR $(uptime_s)"
