"""Benchmark: WireGuard and OpenVPN tunnel throughput relative to the raw link, same run.

    .venv/bin/python bench/tunnel_bench.py [--seconds 3] [--only wireguard|openvpn|both]

Needs root. WireGuard: `wg` and (without the kernel module) `wireguard-go`; OpenVPN:
`openvpn` and /dev/net/tun. Makes two network namespaces joined by a veth pair (the
"internet"), and in them the tunnels elastic makes: a WireGuard hub and peer with
`elastic.adapters.vpn`, and an OpenVPN hub (`elastic.engine.vpnhub.OpenVPNHub`, with a
temporary state DB: a project, a cloud node enrolled) whose node side is
`contextualization/elastic-vpn.sh` run in the peer namespace with the enrolment's context.
Then sends TCP for N seconds from the peer to a sink in the hub namespace, once over the
veth addresses and once over each tunnel. The sender and the sink are this same script
(`--sink PORT` / `--send HOST PORT SECONDS`) run in the namespaces. Prints the rates, each
tunnel's ratio to the raw link and OpenVPN/WireGuard; removes everything at the end, also
when something fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 256 * 1024
SCRIPT = REPO / "contextualization" / "elastic-vpn.sh"
HUB_IP, PEER_IP = "172.31.251.1", "172.31.251.2"


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


def _missing(only: str) -> list[str]:
    need = ["ip"]
    if only in ("wireguard", "both"):
        need.append("wg")
    if only in ("openvpn", "both"):
        need.append("openvpn")
    missing = [b for b in need if shutil.which(b) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if only in ("openvpn", "both") and not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    return missing


def openvpn_up(tmp: Path, tag: str, hub_ns: str, peer_ns: str, hubs: list) -> tuple[str, str]:
    """An OpenVPN hub as elastic makes it (state DB with a project and an enrolled cloud
    node) and the node's side, elastic-vpn.sh with the enrolment's context, in ``peer_ns``.
    Returns (the hub's overlay address, what the data channel runs: cipher, DCO or not)."""
    from elastic.adapters.run import run
    from elastic.engine.vpnhub import OpenVPNHub
    from elastic.spec.schema import VpnBlock
    from elastic.state import Store
    project, state = f"b{tag}", tmp / "state"
    with Store.open(state) as store:
        store.put_project(project, "bench.yaml", "0" * 64, time.time())
    hub = OpenVPNHub(project, "ec2", VpnBlock(type="openvpn", port=1194,
                                              overlay="10.250.10.0/24"),
                     state, endpoint=f"{HUB_IP}:1194", netns=hub_ns)
    hubs.append(hub)
    hub.ensure()
    with Store.open(state) as store:
        store.add_node(project, "worker1", time.time(), site="ec2", data={"group": "worker"})
        ctx = hub.enroll(store, "worker1").context()
    node_dir = tmp / "node-openvpn"
    env = {**ctx, "VPN_IFNAME": f"eov{tag}p", "VPN_DIR": str(node_dir), "VPN_WAIT": "20"}
    r = run(["sh", str(SCRIPT)], netns=peer_ns, env=env, timeout=50, check=False)
    if r.returncode != 0 or not r.stdout.startswith("ELASTIC-VPN-UP"):
        hub_log = hub.server.log_file.read_text(errors="replace")[-1500:] \
            if hub.server.log_file.exists() else ""
        raise RuntimeError(f"elastic-vpn.sh failed ({r.returncode}): {r.stdout}{r.stderr}"
                           f"\n--- hub log ---\n{hub_log}")
    log = (node_dir / "openvpn.log").read_text(errors="replace")
    cipher = re.search(r"Data Channel: [Cc]ipher '([^']+)'", log)
    dco = "DCO" if re.search(r"DCO device \S+ opened", log) else "no DCO"
    return hub.hub_address, f"{cipher.group(1) if cipher else '?'}, {dco}"


def _cleanup(steps: list) -> list[str]:
    """Run every step even when some fail; the failures as text."""
    errors = []
    for what, step in steps:
        try:
            step()
        except Exception as e:   # noqa: BLE001 - go on with the rest, report at the end
            errors.append(f"{what}: {e}")
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", choices=("wireguard", "openvpn", "both"), default="both",
                    help="which tunnels to measure (default both)")
    ap.add_argument("--sink", type=int)
    ap.add_argument("--send", nargs=3)
    args = ap.parse_args()
    if args.sink:
        return sink(args.sink)
    if args.send:
        return send(args.send[0], int(args.send[1]), float(args.send[2]))
    missing = _missing(args.only)
    if missing:
        sys.exit("tunnel_bench.py needs: " + ", ".join(missing))

    from elastic.adapters import net
    from elastic.adapters.vpn import KeyStore, WireGuard
    use_wg, use_ovpn = args.only in ("wireguard", "both"), args.only in ("openvpn", "both")
    tag = uuid.uuid4().hex[:5]
    hub_ns, peer_ns = f"elastic-b-wgh-{tag}", f"elastic-b-wgp-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="elastic-tunnel-"))
    hub = WireGuard(f"ewb{tag}h", netns=hub_ns, log_dir=tmp)
    peer = WireGuard(f"ewb{tag}p", netns=peer_ns, log_dir=tmp)
    ovpn_hubs: list = []
    failed = True
    try:
        for ns in (hub_ns, peer_ns):
            net.create_netns(ns)
            net.link_up("lo", ns=ns)
        net.add_veth(f"inet-{tag}", hub_ns, f"inet-{tag}p", peer_ns)
        net.set_address(f"inet-{tag}", f"{HUB_IP}/30", ns=hub_ns)
        net.set_address(f"inet-{tag}p", f"{PEER_IP}/30", ns=peer_ns)
        if use_wg:
            keys = KeyStore(tmp / "keys")
            hub_key, hub_pub = keys.pair("hub")
            node_key, node_pub = keys.pair("node")
            how = hub.up(private_key=hub_key, address="10.250.9.1/24", port=51820)
            hub.add_peer(node_pub, ["10.250.9.2/32"])
            peer.up(private_key=node_key, address="10.250.9.2/24")
            peer.add_peer(hub_pub, ["10.250.9.0/24"], endpoint=f"{HUB_IP}:51820",
                          keepalive=25)
        if use_ovpn:
            ovpn_hub, ovpn_how = openvpn_up(tmp, tag, hub_ns, peer_ns, ovpn_hubs)
        raw = measure(hub_ns, peer_ns, HUB_IP, 5201, args.seconds)
        wg = measure(hub_ns, peer_ns, "10.250.9.1", 5202, args.seconds) if use_wg else None
        ovpn = measure(hub_ns, peer_ns, ovpn_hub, 5203, args.seconds) if use_ovpn else None
        rows = [("raw veth", raw)]
        if wg is not None:
            rows.append((f"WireGuard ({how})", wg))
        if ovpn is not None:
            rows.append((f"OpenVPN ({ovpn_how})", ovpn))
        width = max(len(name) for name, _ in rows) + 1
        for name, rate in rows:
            print(f"{name + ':':<{width}} {rate:8.0f} Mbit/s")
        if wg is not None:
            print(f"ratio WireGuard/raw:     {wg / raw:.3f}")
        if ovpn is not None:
            print(f"ratio OpenVPN/raw:       {ovpn / raw:.3f}")
        if wg is not None and ovpn is not None:
            print(f"ratio OpenVPN/WireGuard: {ovpn / wg:.3f}")
        failed = False
    finally:
        steps = [(f"OpenVPN hub {h.ifname}", h.down) for h in ovpn_hubs]
        steps += [("WireGuard hub", hub.down), ("WireGuard peer", peer.down)]
        for ns in (peer_ns, hub_ns):    # the node's openvpn daemon, sinks: ours, in our netns
            steps.append((f"processes in {ns}", lambda ns=ns: net.kill_netns_pids(ns)))
            steps.append((f"namespace {ns}", lambda ns=ns: net.delete_netns(ns)))
        steps.append((f"{tmp}", lambda: shutil.rmtree(tmp)))
        errors = _cleanup(steps)
        for e in errors:
            print(f"cleanup failed: {e}", file=sys.stderr)
        if errors and not failed:
            sys.exit(1)


if __name__ == "__main__":
    main()
