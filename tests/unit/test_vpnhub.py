"""The hub's bookkeeping against a real state DB and a fake WireGuard interface."""

from __future__ import annotations

import pytest

from elastic.adapters.vpn import Peer, public_of
from elastic.clock import FakeClock
from elastic.engine import vpnhub
from elastic.engine.vpnhub import Hub, hub_ifname
from elastic.errors import PermanentError
from elastic.lifecycle import State, path
from elastic.spec.schema import VpnBlock
from elastic.state import Store


class FakeWG:
    def __init__(self, ifname, *, netns=None, log_dir=None):
        self.ifname, self.netns = ifname, netns
        self.peers_: dict[str, tuple[str, ...]] = {}
        self.config: dict = {}

    def up(self, **kw):
        self.config = kw
        return "wireguard-go"

    def add_peer(self, public, allowed_ips, **kw):
        self.peers_[public] = tuple(allowed_ips)

    def remove_peer(self, public):
        self.peers_.pop(public, None)

    def peers(self):
        return [Peer(p, None, ips, 0, 0, 0, None) for p, ips in self.peers_.items()]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(vpnhub, "run", lambda argv, **kw: calls.append((argv, kw)))
    state = tmp_path / "state"
    clock = FakeClock(1000.0)
    with Store.open(state) as store:
        store.put_project("p", "p.yaml", "0" * 64, clock.now())
    h = Hub("p", "ec2", VpnBlock(overlay="10.250.3.0/29"), state, endpoint="172.31.9.9:51820",
            routes=("10.77.0.20/32",), netns="elastic-front", wireguard=FakeWG, clock=clock)
    return h, state, calls, clock


def _node(store, name, clock, site="ec2"):
    store.add_node("p", name, clock.now(), site=site, data={"group": "worker"})


def test_enrolment_leases_an_address_makes_a_key_and_adds_the_peer(hub):
    h, state, calls, clock = hub
    pub = h.ensure()
    assert h.wg.config["address"] == "10.250.3.1/29" and h.wg.config["port"] == 51820
    assert calls[0][0] == ["sysctl", "-qw", "net.ipv4.ip_forward=1"]
    assert calls[0][1]["netns"] == "elastic-front"
    with Store.open(state) as store:
        _node(store, "worker1", clock)
        _node(store, "worker2", clock)
        e1 = h.enroll(store, "worker1")
        e2 = h.enroll(store, "worker2")
        assert h.enroll(store, "worker1") == e1                     # idempotent
        assert [(x.node, x.address) for x in store.leases("p", "vpn:ec2")] == [
            ("worker1", "10.250.3.2"), ("worker2", "10.250.3.3")]
    assert (e1.address, e2.address) == ("10.250.3.2/29", "10.250.3.3/29")
    assert public_of(e1.private_key) in h.wg.peers_
    assert h.wg.peers_[public_of(e1.private_key)] == ("10.250.3.2/32",)
    ctx = e1.context()
    assert ctx["VPN_HUB_PUBLIC_KEY"] == pub and ctx["VPN_HUB_ENDPOINT"] == "172.31.9.9:51820"
    assert ctx["VPN_ROUTES"] == "10.77.0.20/32"
    assert e1.private_key not in repr(e1)
    assert len(hub_ifname("p", "ec2")) <= 15 and hub_ifname("p", "ec2") != hub_ifname("q", "ec2")


def test_retire_and_reconcile_follow_the_db(hub):
    h, state, calls, clock = hub
    h.ensure()
    with Store.open(state) as store:
        for n in ("worker1", "worker2", "worker3"):
            _node(store, n, clock)
            h.enroll(store, n)
        # worker2 is gone: retired (peer off, key forgotten); lease released with the node
        for s in path(State.PENDING, State.DONE):
            store.transition("p", "worker2", s, "test", clock.now())
        h.retire(store, "worker2")
        store.release("p", "worker2")
        assert len(h.wg.peers_) == 2
        # a crash left a stranger on the hub and lost worker3's peer: reconcile
        h.wg.peers_ = {"c3RyYW5nZXIgcHVibGljIGtleSBmb3IgdGhlIHRlc3QhIQ==": ("10.250.3.6/32",),
                       **{k: v for k, v in h.wg.peers_.items() if v != ("10.250.3.4/32",)}}
        added, removed = h.reconcile(store)
        assert added == ["worker3"] and len(removed) == 1
        assert sorted(h.wg.peers_.values()) == [("10.250.3.2/32",), ("10.250.3.4/32",)]
        # the freed address is leased again
        _node(store, "worker4", clock)
        assert h.enroll(store, "worker4").address == "10.250.3.3/29"


def test_a_full_overlay_is_a_clear_error(hub):
    h, state, calls, clock = hub
    with Store.open(state) as store:
        for i in range(1, 7):                 # /29: hub + 5 peers
            _node(store, f"w{i}", clock)
        for i in range(1, 6):
            h.enroll(store, f"w{i}")
        with pytest.raises(PermanentError, match="overlay 10.250.3.0/29 of clouds.ec2 is full"):
            h.enroll(store, "w6")
