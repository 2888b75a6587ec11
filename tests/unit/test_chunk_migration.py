"""A chunk's live migration when one of its nodes cannot move: the others come back, so
the private network is never left split across two hosts; only when coming back fails
too is the chunk left split, and then the error and the state DB say where each part is.
The hosts are fakes (libvirt's test driver cannot migrate); the state DB is real."""

from __future__ import annotations

import pytest

from elastic.clock import FakeClock
from elastic.engine.cluster import Cluster
from elastic.engine.diff import Change
from elastic.errors import PermanentError, TransientError
from elastic.lifecycle import State, path
from elastic.spec import load_project
from elastic.state import Store

SPEC = """project: p
hosts:
  h1: {uri: "test:///h1", memory: 2G, vcpus: 2}
  h2: {uri: "test:///h2", memory: 2G, vcpus: 2}
networks: {net: {cidr: 10.1.0.0/24}}
classes:
  vm: {image: t, memory: 256M}
nodes:
  x: {class: vm, count: 3, interfaces: {eth0: {network: net}}}
"""


class FakeHost:
    """What ``_migrate_chunk`` asks of a libvirt host: domains, volumes and networks."""

    def __init__(self, name: str, world: dict[str, FakeHost]) -> None:
        self.name, self.world = name, world
        self.domains: set[str] = set()
        self.volumes: set[str] = set()
        self.networks: set[str] = set()
        self.refuse: dict[str, Exception] = {}   # domain -> what migrating it raises
        self.lost_reply: set[str] = set()        # domains that move but raise anyway

    def domain(self, name):
        return name if name in self.domains else None

    def ensure_network(self, name, xml):
        self.networks.add(name)

    def remove_network(self, name):
        self.networks.discard(name)
        return True

    def overlay(self, name, base, size):
        self.volumes.add(name)

    def delete_volume(self, name):
        present = name in self.volumes
        self.volumes.discard(name)
        return present

    def migrate(self, name, dest_uri):
        dest = self.world[dest_uri]
        if name in self.refuse:
            raise self.refuse[name]
        self.domains.remove(name)
        dest.domains.add(name)
        if name in self.lost_reply:
            raise PermanentError(f"{name}: the reply was lost")
        return 0.1


@pytest.fixture
def world(write, tmp_path, monkeypatch):
    spec = write("p.yaml", SPEC)
    project = load_project(spec)
    state = tmp_path / "state"
    clock = FakeClock(100.0)
    hosts: dict[str, FakeHost] = {}
    for h in project.hosts:
        hosts[h.uri] = hosts[h.name] = FakeHost(h.name, hosts)
    with Store.open(state) as store:
        store.put_project("p", str(spec), "h", clock.now())
        for n in ("x1", "x2", "x3"):
            store.add_node("p", n, clock.now(), host="h1")
            for s in path(State.PENDING, State.RUNNING):
                store.transition("p", n, s, "test", clock.now())
            hosts["h1"].domains.add(f"{n}.p")
            hosts["h1"].volumes |= {f"{n}.p.qcow2", f"{n}.p.context.iso", f"{n}.p.console.log"}
    hosts["h1"].networks.add("elastic-p-net")
    cluster = Cluster(state, clock=clock)
    monkeypatch.setattr(cluster, "host", lambda name, uri: hosts[name])
    monkeypatch.setattr(cluster, "_bases", lambda host, nodes, built: {"t": {"disk": "base"}})
    monkeypatch.setattr(cluster, "_upload_context",
                        lambda host, project, spec, node: host.volumes.add(
                            f"{node.fullname}.context.iso"))
    monkeypatch.setattr("elastic.engine.cluster.volume_names", lambda node: (
        f"{node.fullname}.qcow2", f"{node.fullname}.context.iso", f"{node.fullname}.console.log"))
    monkeypatch.setattr("elastic.engine.cluster.render.network_name",
                        lambda project, net: f"elastic-{project}-{net}")
    monkeypatch.setattr("elastic.engine.cluster.render.network_xml", lambda name, bridge: "")
    monkeypatch.setattr("time.sleep", lambda s: None)
    move = Change("move", "net", "h1 is overloaded", "h1", "h2", ("x1", "x2", "x3"))
    return spec, project, state, cluster, hosts, move


def migrate(world):
    spec, project, state, cluster, hosts, move = world
    return cluster._migrate_chunk(Store.open(state), project, spec, move,
                                  {h.name: h for h in project.hosts}, {})


def nodes(state):
    with Store.open(state, readonly=True) as store:
        return {n.name: (n.state, n.host) for n in store.list_nodes("p")}


def test_a_whole_chunk_moves_and_leaves_nothing_behind(world):
    spec, project, state, cluster, hosts, move = world
    migrate(world)
    h1, h2 = hosts["h1"], hosts["h2"]
    assert h2.domains == {"x1.p", "x2.p", "x3.p"} and not h1.domains
    assert not h1.volumes and not h1.networks and h2.networks == {"elastic-p-net"}
    assert nodes(state) == {n: (State.RUNNING, "h2") for n in ("x1", "x2", "x3")}


def test_a_node_that_cannot_move_brings_the_others_back(world):
    spec, project, state, cluster, hosts, move = world
    h1, h2 = hosts["h1"], hosts["h2"]
    h1.refuse["x2.p"] = PermanentError("x2.p: not enough memory on h2")
    with pytest.raises(PermanentError, match=r"chunk net stays on h1: x2: .*not enough memory"):
        migrate(world)
    assert h1.domains == {"x1.p", "x2.p", "x3.p"} and not h2.domains
    # the target's copies and its bridge are gone; the source keeps all it had
    assert not h2.volumes and not h2.networks
    assert len(h1.volumes) == 9 and h1.networks == {"elastic-p-net"}
    assert nodes(state) == {n: (State.RUNNING, "h1") for n in ("x1", "x2", "x3")}
    with Store.open(state, readonly=True) as store:
        reasons = {e.node: e.reason for e in store.events("p") if e.kind == "transition"}
    assert reasons["x1"].startswith("moved back to h1: the rest of chunk net could not follow")
    assert reasons["x2"].startswith("migration failed, still on h1")


def test_a_dropped_connection_is_tried_again(world):
    spec, project, state, cluster, hosts, move = world
    h1 = hosts["h1"]
    h1.refuse["x3.p"] = TransientError("client socket is closed")
    calls = []
    real = h1.migrate

    def flaky(name, dest_uri):
        calls.append(name)
        if name == "x3.p" and calls.count(name) == 3:      # the third try goes
            del h1.refuse["x3.p"]
        return real(name, dest_uri)
    h1.migrate = flaky
    migrate(world)
    assert calls.count("x3.p") == 3 and hosts["h2"].domains == {"x1.p", "x2.p", "x3.p"}


def test_a_migration_whose_reply_was_lost_counts_where_the_guest_is(world):
    spec, project, state, cluster, hosts, move = world
    hosts["h1"].lost_reply.add("x1.p")
    migrate(world)
    assert hosts["h2"].domains == {"x1.p", "x2.p", "x3.p"}
    assert nodes(state)["x1"] == (State.RUNNING, "h2")


def test_when_coming_back_fails_too_the_split_is_said_and_recorded(world):
    spec, project, state, cluster, hosts, move = world
    h1, h2 = hosts["h1"], hosts["h2"]
    h1.refuse["x2.p"] = PermanentError("x2.p: not enough memory on h2")
    h2.refuse["x3.p"] = PermanentError("x3.p: h1 refused it")
    with pytest.raises(PermanentError, match=r"chunk net is split: x3 on h2, the rest on h1"):
        migrate(world)
    assert h1.domains == {"x1.p", "x2.p"} and h2.domains == {"x3.p"}
    assert nodes(state) == {"x1": (State.RUNNING, "h1"), "x2": (State.RUNNING, "h1"),
                            "x3": (State.RUNNING, "h2")}
    # both halves keep their bridge and their own disks, and only those
    assert h1.networks == h2.networks == {"elastic-p-net"}
    assert {v.split(".")[0] for v in h1.volumes} == {"x1", "x2"}
    assert {v.split(".")[0] for v in h2.volumes} == {"x3"}
