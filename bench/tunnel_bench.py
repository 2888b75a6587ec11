"""Benchmark: WireGuard tunnel throughput relative to the raw link, same run.

    .venv/bin/python bench/tunnel_bench.py [--seconds 3]

Needs root, `wg` and (without the kernel module) `wireguard-go`. Makes two network
namespaces joined by a veth pair (the "internet"), a hub and a peer with elastic's own
WireGuard code (`elastic.adapters.vpn`), and sends TCP for N seconds from the peer to a
sink in the hub namespace, once over the veth addresses and once over the tunnel. The
sender and the sink are this same script (`--sink PORT` / `--send HOST PORT SECONDS`) run in
the namespaces. Prints both rates and their ratio; removes everything at the end.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 256 * 1024


def sink(port: int) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    conn, _ = srv.accept()
    total = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        total += len(data)
    print(total, flush=True)


def send(host: str, port: int, seconds: float) -> None:
    s = socket.create_connection((host, port), timeout=10)
    buf = b"\0" * CHUNK
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        s.sendall(buf)
        sent += len(buf)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    elapsed = time.monotonic() - t0
    print(f"{sent} {elapsed:.3f}", flush=True)


def measure(hub_ns: str, peer_ns: str, address: str, port: int, seconds: float) -> float:
    from elastic.adapters.run import run, spawn
    log = Path(tempfile.mkstemp(prefix="elastic-sink-")[1])
    sinkp = spawn([sys.executable, __file__, "--sink", str(port)], log_file=log, netns=hub_ns)
    try:
        time.sleep(0.5)
        out = run([sys.executable, __file__, "--send", address, str(port), str(seconds)],
                  netns=peer_ns, timeout=seconds + 30).stdout.split()
        sent, elapsed = int(out[0]), float(out[1])
        sinkp.wait(10)
        return sent * 8 / elapsed / 1e6   # Mbit/s
    finally:
        if sinkp.poll() is None:
            sinkp.kill()
        log.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sink", type=int)
    ap.add_argument("--send", nargs=3)
    args = ap.parse_args()
    if args.sink:
        return sink(args.sink)
    if args.send:
        return send(args.send[0], int(args.send[1]), float(args.send[2]))

    from elastic.adapters import net
    from elastic.adapters.vpn import KeyStore, WireGuard
    tag = uuid.uuid4().hex[:5]
    hub_ns, peer_ns = f"elastic-b-wgh-{tag}", f"elastic-b-wgp-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="elastic-tunnel-"))
    hub = WireGuard(f"ewb{tag}h", netns=hub_ns, log_dir=tmp)
    peer = WireGuard(f"ewb{tag}p", netns=peer_ns, log_dir=tmp)
    try:
        for ns in (hub_ns, peer_ns):
            net.create_netns(ns)
            net.link_up("lo", ns=ns)
        net.add_veth(f"inet-{tag}", hub_ns, f"inet-{tag}p", peer_ns)
        net.set_address(f"inet-{tag}", "172.31.251.1/30", ns=hub_ns)
        net.set_address(f"inet-{tag}p", "172.31.251.2/30", ns=peer_ns)
        keys = KeyStore(tmp / "keys")
        hub_key, hub_pub = keys.pair("hub")
        node_key, node_pub = keys.pair("node")
        how = hub.up(private_key=hub_key, address="10.250.9.1/24", port=51820)
        hub.add_peer(node_pub, ["10.250.9.2/32"])
        peer.up(private_key=node_key, address="10.250.9.2/24")
        peer.add_peer(hub_pub, ["10.250.9.0/24"], endpoint="172.31.251.1:51820", keepalive=25)
        raw = measure(hub_ns, peer_ns, "172.31.251.1", 5201, args.seconds)
        tunnel = measure(hub_ns, peer_ns, "10.250.9.1", 5202, args.seconds)
        print(f"raw veth:        {raw:8.0f} Mbit/s")
        print(f"WireGuard ({how}): {tunnel:8.0f} Mbit/s")
        print(f"ratio tunnel/raw: {tunnel / raw:.3f}")
    finally:
        hub.down()
        peer.down()
        for ns in (hub_ns, peer_ns):
            net.delete_netns(ns)


if __name__ == "__main__":
    main()
