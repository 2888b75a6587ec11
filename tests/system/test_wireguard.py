"""WireGuard between two network namespaces made here (a hub and a cloud node joined by a
veth pair, the "internet"), with elastic's keys and the userspace wireguard-go when the
kernel has no module: the peer is reachable on its overlay address only while it is a peer."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from elastic.adapters import net
from elastic.adapters.run import run
from elastic.adapters.vpn import KeyStore, WireGuard, overlay_addresses

# alongside: only namespaces and loopback ports of its own, no guests (see tests/conftest.py)
pytestmark = [pytest.mark.system, pytest.mark.alongside]


def _ping(ns: str, address: str) -> bool:
    return run(["ping", "-c", "1", "-W", "2", address], netns=ns, timeout=10,
               check=False).returncode == 0


@pytest.fixture()
def pair(tmp_path):
    missing = [b for b in ("wg", "wireguard-go", "ip", "ping") if shutil.which(b) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if missing:
        pytest.skip("the WireGuard test needs: " + ", ".join(missing))
    tag = uuid.uuid4().hex[:5]
    hub_ns, peer_ns = f"elastic-t-wgh-{tag}", f"elastic-t-wgp-{tag}"
    for ns in (hub_ns, peer_ns):
        net.create_netns(ns)
        net.link_up("lo", ns=ns)
    net.add_veth(f"inet-{tag}", hub_ns, f"inet-{tag}p", peer_ns)
    net.set_address(f"inet-{tag}", "172.31.250.1/30", ns=hub_ns)
    net.set_address(f"inet-{tag}p", "172.31.250.2/30", ns=peer_ns)
    hub = WireGuard(f"ewg{tag}h", netns=hub_ns, log_dir=tmp_path)
    peer = WireGuard(f"ewg{tag}p", netns=peer_ns, log_dir=tmp_path)
    try:
        yield hub, peer, hub_ns, peer_ns, KeyStore(tmp_path / "keys")
    finally:
        hub.down()
        peer.down()
        for ns in (hub_ns, peer_ns):
            net.delete_netns(ns)


def test_a_peer_reaches_the_hub_over_the_overlay_while_it_is_a_peer(pair):
    hub, peer, hub_ns, peer_ns, keys = pair
    hub_ip, peer_ips = overlay_addresses("10.250.7.0/24")
    hub_key, hub_pub = keys.pair("hub")
    node_key, node_pub = keys.pair("worker9")
    assert stat.S_IMODE(hub_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.dir.stat().st_mode) == 0o700
    how = hub.up(private_key=hub_key, address=f"{hub_ip}/24", port=51820)
    assert how in ("kernel", "wireguard-go")
    hub.add_peer(node_pub, [f"{peer_ips[0]}/32"])             # before the node exists
    peer.up(private_key=node_key, address=f"{peer_ips[0]}/24")
    peer.add_peer(hub_pub, ["10.250.7.0/24"], endpoint="172.31.250.1:51820",
                  keepalive=25)
    assert _ping(peer_ns, hub_ip) and _ping(hub_ns, peer_ips[0])
    (seen,) = hub.peers()
    assert seen.public_key == node_pub and seen.endpoint.startswith("172.31.250.2:")
    assert seen.allowed_ips == (f"{peer_ips[0]}/32",)
    assert seen.latest_handshake > 0 and seen.rx_bytes > 0 and seen.tx_bytes > 0
    # up again changes nothing; the peer stays
    hub.up(private_key=hub_key, address=f"{hub_ip}/24", port=51820)
    assert [p.public_key for p in hub.peers()] == [node_pub]
    # removed from the hub: no more traffic (cryptokey routing drops it)
    hub.remove_peer(node_pub)
    hub.remove_peer(node_pub)                                  # gone already is fine
    assert hub.peers() == []
    assert not _ping(peer_ns, hub_ip)
    # down: the interface and its userspace process are gone
    hub.down()
    assert not hub.exists() and not hub.socket.exists()


ROOT = Path(__file__).resolve().parents[2]


def test_a_cloud_node_brings_its_tunnel_up_from_its_context(pair, tmp_path):
    """contextualization/elastic-vpn.sh, as a cloud node's user-data runs it."""
    hub, peer, hub_ns, peer_ns, keys = pair
    hub_key, hub_pub = keys.pair("hub")
    node_key, node_pub = keys.pair("worker9")
    hub.up(private_key=hub_key, address="10.250.8.1/24", port=51820)
    hub.add_peer(node_pub, ["10.250.8.7/32"])
    ctx = tmp_path / "context.sh"
    ctx.write_text(
        "VPN_TYPE=wireguard\nVPN_ADDRESS=10.250.8.7/24\n"
        f"VPN_PRIVATE_KEY='{keys.private('worker9')}'\n"
        f"VPN_HUB_PUBLIC_KEY='{hub_pub}'\nVPN_HUB_ENDPOINT=172.31.250.1:51820\n"
        f"VPN_ROUTES='10.77.99.0/24 10.20.99.0/24'\nVPN_IFNAME={peer.ifname}\nVPN_WAIT=20\n")
    script = ROOT / "contextualization" / "elastic-vpn.sh"
    r = run(["sh", str(script), str(ctx)], netns=peer_ns, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ELASTIC-VPN-UP 10.250.8.7 ")
    assert keys.private("worker9") not in r.stdout + r.stderr       # the key is never shown
    routes = run(["ip", "route"], netns=peer_ns, timeout=10).stdout
    for net_ in ("10.77.99.0/24", "10.20.99.0/24"):
        assert f"{net_} dev {peer.ifname}" in routes
    assert _ping(hub_ns, "10.250.8.7")
    (seen,) = hub.peers()
    assert seen.public_key == node_pub and seen.latest_handshake > 0
    # again: idempotent
    r = run(["sh", str(script), str(ctx)], netns=peer_ns, timeout=60, check=False)
    assert r.returncode == 0 and "ELASTIC-VPN-UP" in r.stdout, r.stdout + r.stderr
    # a hub that does not know the node: a clear failure, not a hang
    hub.remove_peer(node_pub)
    ctx.write_text(ctx.read_text().replace("VPN_WAIT=20", "VPN_WAIT=3"))
    r = run(["sh", str(script), str(ctx)], netns=peer_ns, timeout=60, check=False)
    assert r.returncode == 1
    assert "ELASTIC-VPN-FAILED the hub 10.250.8.1 does not answer" in r.stdout
