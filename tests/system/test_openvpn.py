"""OpenVPN between two network namespaces made here (a hub and a cloud node joined by a veth
pair, the "internet"): elastic's OpenVPN hub (its CA, a server in the hub's namespace, a ccd
file per node) and the node's side, contextualization/elastic-vpn.sh, run with the
enrolment's context. A node reaches the overlay only while it is enrolled."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import time
import uuid
from pathlib import Path

import pytest

from elastic.adapters import net
from elastic.adapters.openvpn import issue, make_ca
from elastic.adapters.run import run
from elastic.engine.vpnhub import OpenVPNHub
from elastic.lifecycle import State, path
from elastic.spec.schema import VpnBlock
from elastic.state import Store
from tests.system.waiting import wait_for

# alongside: only namespaces and loopback ports of its own, no guests (see tests/conftest.py)
pytestmark = [pytest.mark.system, pytest.mark.alongside]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "contextualization" / "elastic-vpn.sh"
HUB_IP = "172.31.250.1"


def _ping(ns: str, address: str) -> bool:
    return run(["ping", "-c", "1", "-W", "1", address], netns=ns, timeout=10,
               check=False).returncode == 0


@pytest.fixture()
def pair(tmp_path):
    missing = [b for b in ("openvpn", "ip", "ping") if shutil.which(b) is None]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    if missing:
        pytest.skip("the OpenVPN test needs: " + ", ".join(missing))
    tag = uuid.uuid4().hex[:5]
    hub_ns, peer_ns = f"elastic-t-ovh-{tag}", f"elastic-t-ovp-{tag}"
    for ns in (hub_ns, peer_ns):
        net.create_netns(ns)
        net.link_up("lo", ns=ns)
    net.add_veth(f"inet-{tag}", hub_ns, f"inet-{tag}p", peer_ns)
    net.set_address(f"inet-{tag}", f"{HUB_IP}/30", ns=hub_ns)
    net.set_address(f"inet-{tag}p", "172.31.250.2/30", ns=peer_ns)
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_project(f"t{tag}", "t.yaml", "0" * 64, time.time())
    hubs: list[OpenVPNHub] = []

    def make(overlay: str, routes: tuple[str, ...] = ()) -> OpenVPNHub:
        hub = OpenVPNHub(f"t{tag}", "ec2", VpnBlock(type="openvpn", port=1194, overlay=overlay),
                         state, endpoint=f"{HUB_IP}:1194", routes=routes, netns=hub_ns,
                         keepalive=(1, 5))       # a crashed hub is noticed in 5 s, not 60
        hubs.append(hub)
        return hub

    try:
        yield make, state, tag, hub_ns, peer_ns
    finally:
        for hub in hubs:
            hub.down()
        for ns in (hub_ns, peer_ns):    # the nodes' openvpn daemons: ours, in our namespace
            net.kill_netns_pids(ns)
            net.delete_netns(ns)


def node_up(ctx: dict[str, str], peer_ns: str, vpn_dir: Path, ifname: str,
            wait: int = 20, shell: tuple[str, ...] = ("sh",)) -> tuple[object, float | None]:
    """Run elastic-vpn.sh as a cloud node's boot does; (result, seconds from starting
    openvpn to the hub's first ping answer)."""
    env = {**ctx, "VPN_IFNAME": ifname, "VPN_DIR": str(vpn_dir), "VPN_WAIT": str(wait)}
    r = run([*shell, str(SCRIPT)], netns=peer_ns, env=env, timeout=wait + 30, check=False)
    start = re.search(r"; start ([0-9.]+)", r.stderr)
    up = re.match(r"ELASTIC-VPN-UP \S+ ([0-9.]+)", r.stdout)
    took = float(up.group(1)) - float(start.group(1)) if start and up else None
    return r, took


def _stop_client(vpn_dir: Path) -> None:
    pid = int((vpn_dir / "openvpn.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for("the node's openvpn to exit", lambda: net.is_gone(pid), 10)


def test_a_cloud_node_joins_the_openvpn_hub_only_while_it_is_enrolled(pair, tmp_path):
    make, state, tag, hub_ns, peer_ns = pair
    hub = make("10.250.10.0/24", routes=("10.77.99.0/24", "10.20.99.128/25"))
    t0 = time.monotonic()
    fingerprint = hub.ensure()
    started = time.monotonic() - t0
    pid = hub.server.pid()
    assert pid and net.link_exists(hub.ifname, ns=hub_ns)
    assert hub.ensure() == fingerprint and hub.server.pid() == pid    # idempotent: kept
    assert run(["sysctl", "-n", "net.ipv4.ip_forward"], netns=hub_ns).stdout.strip() == "1"
    for key in (hub.pki.root / "ca.key", hub.pki.dir / "hub.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with Store.open(state) as store:
        store.add_node(f"t{tag}", "worker9", time.time(), site="ec2", data={"group": "worker"})
        vpn = hub.enroll(store, "worker9")
    assert vpn.address == "10.250.10.2/24"
    ctx = vpn.context()

    # a stranger with the node's name but a certificate of another CA is refused by TLS
    other = make_ca("someone else's CA", time.time())
    forged = issue(other, "worker9", time.time())
    stranger = tmp_path / "stranger"
    r, _ = node_up({**ctx, "VPN_CERT": forged.cert_pem, "VPN_KEY": forged.key_pem},
                   peer_ns, stranger, f"eov{tag}x", wait=4)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ELASTIC-VPN-FAILED the hub 10.250.10.1 does not answer" in r.stdout
    assert "VERIFY ERROR" in hub.server.log_file.read_text()
    assert [c for c in hub.server.clients() if c.virtual_address] == []
    _stop_client(stranger)

    # the node, from its context
    node_dir = tmp_path / "node"
    r, took = node_up(ctx, peer_ns, node_dir, f"eov{tag}p")
    assert r.returncode == 0, r.stdout + r.stderr + hub.server.log_file.read_text()[-2000:]
    assert r.stdout.startswith("ELASTIC-VPN-UP 10.250.10.2 ")
    print(f"\nhub ensure (CA, cert, server up): {started:.2f} s; "
          f"node: openvpn start -> first ping answer {took:.2f} s")
    assert took is not None and took < 10
    assert vpn.key.split("\n")[1] not in r.stdout + r.stderr          # the key is never shown
    assert stat.S_IMODE((node_dir / "node.key").stat().st_mode) == 0o600
    routes = run(["ip", "route"], netns=peer_ns, timeout=10).stdout
    for net_ in ("10.77.99.0/24", "10.20.99.128/25"):
        assert f"{net_} via 10.250.10.1 dev eov{tag}p" in routes
    assert _ping(hub_ns, "10.250.10.2") and _ping(peer_ns, "10.250.10.1")
    (client,) = [c for c in hub.server.clients() if c.virtual_address]
    assert (client.common_name, client.virtual_address) == ("worker9", "10.250.10.2")
    assert client.real_address.startswith("172.31.250.2:")

    # again: idempotent (the node's openvpn is replaced, the tunnel comes back); under
    # busybox's shell too, where there is one
    shell = ("busybox", "sh") if shutil.which("busybox") else ("sh",)
    r, _ = node_up(ctx, peer_ns, node_dir, f"eov{tag}p", shell=shell)
    assert r.returncode == 0 and "ELASTIC-VPN-UP" in r.stdout, r.stdout + r.stderr
    assert _ping(hub_ns, "10.250.10.2")

    # retired: the session is killed and the node is refused when it tries again
    with Store.open(state) as store:
        t0 = time.monotonic()
        hub.retire(store, "worker9")
    wait_for("the retired node's tunnel to stop", lambda: not _ping(peer_ns, "10.250.10.1"), 5)
    gone = time.monotonic() - t0
    assert not _ping(hub_ns, "10.250.10.2")
    assert not (hub.ccd / "worker9").exists() and not hub.pki.has("node-worker9")
    # its certificate is on the CRL now: TLS refuses it before its name is looked at
    revoked = "VERIFY ERROR: depth=0, error=certificate revoked"
    wait_for("the hub to refuse the retired node",
             lambda: revoked in hub.server.log_file.read_text(), 20)
    print(f"retire -> the node's ping fails after {gone:.2f} s")
    assert not _ping(peer_ns, "10.250.10.1")
    _stop_client(node_dir)

    # enrolled again (a new worker9): the first one's certificate, which was in its
    # user-data, is on the CRL and refused although the name is admitted again
    with Store.open(state) as store:
        again = hub.enroll(store, "worker9").context()
    assert again["VPN_CERT"] != ctx["VPN_CERT"]
    refusals = hub.server.log_file.read_text().count(revoked)
    r, _ = node_up(ctx, peer_ns, tmp_path / "old", f"eov{tag}o", wait=4)
    assert r.returncode == 1, r.stdout + r.stderr
    assert hub.server.log_file.read_text().count(revoked) > refusals
    _stop_client(tmp_path / "old")
    # a node pins the hub's certificate: one that expects another does not talk to it
    r, _ = node_up({**again, "VPN_HUB_FINGERPRINT": ":".join(["00"] * 32)}, peer_ns,
                   tmp_path / "pinned", f"eov{tag}f", wait=4)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "--peer-fingerprint certificate hash verification failed" in \
        (tmp_path / "pinned" / "openvpn.log").read_text()      # though the CA signed it
    _stop_client(tmp_path / "pinned")
    r, _ = node_up(again, peer_ns, tmp_path / "new", f"eov{tag}n")
    assert r.returncode == 0, r.stdout + r.stderr + hub.server.log_file.read_text()[-2000:]
    assert _ping(hub_ns, "10.250.10.2")

    # down: no server, no tun device
    hub.down()
    assert hub.server.pid() is None and net.is_gone(pid)
    assert not net.link_exists(hub.ifname, ns=hub_ns)


def test_the_hub_comes_back_after_a_crash_and_take_down_leaves_nothing(pair, tmp_path):
    make, state, tag, hub_ns, peer_ns = pair
    hub = make("10.250.11.0/29")
    hub.ensure()
    project = f"t{tag}"
    with Store.open(state) as store:
        for n in ("worker1", "worker2"):
            store.add_node(project, n, time.time(), site="ec2", data={"group": "worker"})
        ctx = hub.enroll(store, "worker1").context()
        hub.enroll(store, "worker2")
        for s in path(State.PENDING, State.DONE):                   # worker2 is gone
            store.transition(project, "worker2", s, "test", time.time())
    r, _ = node_up(ctx, peer_ns, tmp_path / "node", f"eov{tag}p")
    assert r.returncode == 0, r.stdout + r.stderr

    # the server dies (and the crash lost worker1's ccd file): reconcile brings it back
    pid = hub.server.pid()
    os.kill(pid, signal.SIGKILL)
    wait_for("the tun device to go with its process",
             lambda: not net.link_exists(hub.ifname, ns=hub_ns), 10)
    (hub.ccd / "worker1").unlink()
    assert not _ping(hub_ns, "10.250.11.2")
    t0 = time.monotonic()
    with Store.open(state) as store:
        assert hub.reconcile(store) == (["worker1"], ["worker2"])
    new_pid = hub.server.pid()
    assert new_pid and new_pid != pid and net.link_exists(hub.ifname, ns=hub_ns)
    assert hub.enrolled() == ["worker1"] and not hub.pki.has("node-worker2")
    wait_for("the node to come back through the restarted hub",
             lambda: _ping(hub_ns, "10.250.11.2"), 30, every=0.2)
    print(f"\nhub crash -> reconcile -> node reachable again: {time.monotonic() - t0:.1f} s "
          "(the node's ping-restart is 5 s here, 60 s by default)")

    # `elastic down`: from the recorded ifname and namespace only
    OpenVPNHub.take_down(hub.ifname, hub_ns, state)
    assert net.is_gone(new_pid)
    assert not net.link_exists(hub.ifname, ns=hub_ns)
    assert not (state / "vpn" / f"openvpn-{hub.ifname}.pid").exists()
    assert hub.server.pid() is None
    OpenVPNHub.take_down(hub.ifname, hub_ns, state)                 # gone already is fine
    assert not _ping(peer_ns, "10.250.11.1")
