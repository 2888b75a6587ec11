"""The rebalancer's engine glue, with a fake cluster and fake measurements: what it observes
(units on the one host their nodes run on, their CPU from the VMs' loads), what it hands the
cluster to migrate (one move per chunk, with its nodes), and what it records."""

from __future__ import annotations

import pytest

from elastic.clock import FakeClock
from elastic.engine import rebalance as rb
from elastic.engine.status import MonitorTarget
from elastic.lifecycle import State, path
from elastic.monitoring import DomainLoad, HostLoad
from elastic.placement import HostCapacity
from elastic.spec import load_project
from elastic.state import Store

SPEC = """project: p
hosts: {h1: {memory: 2G, vcpus: 2}, h2: {memory: 2G, vcpus: 2}}
networks: {a: {cidr: 10.1.0.0/24}, b: {cidr: 10.2.0.0/24}}
rebalance: {cpu_high: 0.6, max_migrations: 1}
classes:
  vm: {image: t, memory: 256M}
nodes:
  x: {class: vm, count: 2, interfaces: {eth0: {network: a}}}
  y: {class: vm, interfaces: {eth0: {network: b}}}
"""


def domain(node: str, cpu: float) -> DomainLoad:
    return DomainLoad(f"{node}.p", "p", node, cpu, cpu, 1, 256, 0, 0, 0, 0, 10.0)


def host_load(name: str, cpu: float, domains=()) -> HostLoad:
    guests = sum(d.cpu for d in domains)
    return HostLoad(name, 100.0, 10.0, cpu, guests, max(0.0, cpu - guests), 2, 2048, 1024,
                    256 * len(domains), tuple(domains), 2)


class FakeCluster:
    def __init__(self) -> None:
        self.moves = []

    def capacities(self, project):
        return {h.name: HostCapacity(h.name, h.memory, 8) for h in project.hosts}

    def migrate(self, spec, project, moves, on_done=None):
        for m in moves:
            self.moves.append(m)
            if on_done:
                on_done(m, 3.5)
        return {m.target: 3.5 for m in moves}


@pytest.fixture
def world(write, tmp_path, monkeypatch):
    spec = write("p.yaml", SPEC)
    project = load_project(spec)
    state = tmp_path / "state"
    clock = FakeClock(100.0)
    with Store.open(state) as store:
        store.put_project("p", str(spec), "h", clock.now())
        for n in ("x1", "x2", "y"):
            store.add_node("p", n, clock.now(), host="h1")
            for s in path(State.PENDING, State.RUNNING):
                store.transition("p", n, s, "test", clock.now())
    loads = {"h1": host_load("h1", 0.9, [domain("x1", 0.2), domain("x2", 0.1),
                                         domain("y", 0.05)]),
             "h2": host_load("h2", 0.02)}

    def fake_measure(state_dir, project, *, interval, window, clock, hosts):
        assert [h.name for h in hosts] == ["h1", "h2"]     # every host of the spec
        return [(MonitorTarget(n, "test:///"), loads[n], None) for n in ("h1", "h2")], []
    monkeypatch.setattr(rb, "measure", fake_measure)
    return spec, project, state, clock


def test_the_busiest_chunk_moves_whole_and_is_recorded(world):
    spec, project, state, clock = world
    cluster = FakeCluster()
    outcome = rb.Rebalancer(cluster, state, clock).run(spec, project)
    (move,) = cluster.moves
    assert (move.kind, move.target, move.src, move.dst, move.nodes) == \
        ("move", "a", "h1", "h2", ("x1", "x2"))
    assert outcome.migrated == {"a": 3.5}
    # x1 and x2 use 0.3 of h1's 2 CPUs (0.6 CPUs): the chunk that relieves h1 the most
    assert "(2 VMs, 512 MiB, 0.60 CPUs)" in move.reason
    with Store.open(state, readonly=True) as store:
        kinds = [e.kind for e in store.events("p")]
    assert "rebalance:plan" in kinds and "rebalance:migrate" in kinds


def test_a_dry_run_moves_nothing(world):
    spec, project, state, clock = world
    cluster = FakeCluster()
    outcome = rb.Rebalancer(cluster, state, clock).run(spec, project, dry_run=True)
    assert [m.unit for m in outcome.plan.migrations] == ["a"] and not cluster.moves


def test_a_unit_whose_nodes_are_not_all_running_is_left_alone(world):
    spec, project, state, clock = world
    with Store.open(state) as store:
        store.transition("p", "x2", State.DRAINING, "test", clock.now())
    cluster = FakeCluster()
    outcome = rb.Rebalancer(cluster, state, clock).run(spec, project)
    assert [m.target for m in cluster.moves] == ["b"]
    assert any("a is left alone: its nodes are x1 RUNNING on h1, x2 DRAINING on h1" in n
               for n in outcome.notes), outcome.notes


def test_what_is_left_alone_still_takes_room_on_its_host(world, monkeypatch):
    spec, project, state, clock = world
    with Store.open(state) as store:
        store.transition("p", "x2", State.DRAINING, "test", clock.now())
    cluster = FakeCluster()
    with Store.open(state) as store:
        snap = rb.snapshot(cluster, store, project, {"h1": None, "h2": None})
    assert snap.hosts["h1"].capacity.used_memory == 512       # x1 and x2 stay on h1
    assert [p.unit.name for p in snap.placed] == ["b"]


def test_the_daemon_rebalances_once_a_window():
    due = rb.Due(60, start=1000.0)
    assert [due(t) for t in (1000, 1059, 1060, 1061, 1119, 1121)] == \
        [False, False, True, False, False, True]
