"""The autoscaler's tick with a fake batch system (failure knobs) and a fake fleet that
makes nodes in the real state DB the way `elastic up` does, and the real decide()."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic.clock import FakeClock
from elastic.engine.autoscale import Autoscaler
from elastic.errors import ConfigError, TransientError
from elastic.lifecycle import State, path
from elastic.model import ExecHost, Job, QueueSnapshot
from elastic.engine.projects import resolve_with_state
from elastic.state import Store

SPEC = """
project: auto
networks: {lan: {cidr: 10.0.0.0/24}}
classes:
  n: {image: tiny, memory: 128M, vcpus: 2, interfaces: {eth0: {network: lan}}}
  big: {inherit: n, memory: 512M, vcpus: 8}
nodes:
  head: {class: n}
  worker: {class: n, count: 0}
scaling:
  group: worker
  batch: {master: head}
  min_workers: 0
  max_workers: 4
  scale_up_after: 5s
  idle_timeout: 60s
  min_lifetime: 60s
  cooldown: 10s
"""


class FakeBatch:
    """A queue the test fills; knobs: down (blind), busy hosts refuse removal."""

    def __init__(self) -> None:
        self.pending: list[Job] = []
        self.running: list[Job] = []
        self.hosts: dict[str, ExecHost] = {}
        self.down = False
        self.calls: list[tuple[str, str]] = []

    def snapshot(self, now: float) -> QueueSnapshot:
        if self.down:
            return QueueSnapshot(now, known=False, error="qstat: master down")
        return QueueSnapshot(now, True, tuple(self.pending), tuple(self.running),
                             hosts=tuple(self.hosts.values()))

    def admit(self, name: str, address: str) -> None:
        if self.down:
            raise TransientError("qconf: master down")
        self.calls.append(("admit", name, address))

    def add_exec_host(self, name: str, slots: int) -> None:
        self.calls.append(("add", name))
        self.hosts[name] = ExecHost(name, slots, 0)

    def disable(self, name: str) -> None:
        self.calls.append(("disable", name))

    def enable(self, name: str) -> None:
        self.calls.append(("enable", name))

    def reschedule(self, name: str) -> None:
        self.calls.append(("reschedule", name))
        self.pending += [j for j in self.running if j.host == name]
        self.running = [j for j in self.running if j.host != name]

    def remove_exec_host(self, name: str) -> None:
        if any(j.host == name for j in self.running):
            raise TransientError(f"{name} still runs jobs")
        self.calls.append(("remove", name))
        self.hosts.pop(name, None)


class FakeFleet:
    def __init__(self, spec: Path, state: Path, clock: FakeClock, room: int = 10) -> None:
        self.spec, self.state, self.clock, self._room = spec, state, clock, room
        self.converged: list[list[int]] = []
        self.locked = False          # another process holds the project (resume gives way)

    def project(self, members):
        # as the real fleet: the spec with the DB's members and member classes
        return resolve_with_state(self.spec, self.state,
                                  members=None if members is None else {"worker": members})

    def room(self, members, limit):
        return min(self._room, limit)

    def converge(self, members):
        project = self.project(members)
        now = self.clock.now()
        with Store.open(self.state) as store:
            wanted = {n.name: n for n in project.nodes}
            for n in project.nodes:
                rec = store.get_node("auto", n.name)
                if rec is None or rec.state == State.DONE:
                    store.add_node("auto", n.name, now, host="h1",
                                   data={"group": n.group, "vcpus": n.vcpus, "memory": n.memory})
                    for s in path(State.PENDING, State.RUNNING):
                        store.transition("auto", n.name, s, "fake up", now)
                elif rec.state in (State.PENDING, State.PROLOG, State.BOOT):   # half made
                    for s in path(rec.state, State.RUNNING):
                        store.transition("auto", n.name, s, "fake up, finished", now)
            for rec in store.list_nodes("auto"):
                if rec.name not in wanted and rec.state != State.DONE and rec.site == "private":
                    self.move(store, rec.name, State.DONE, "not in the spec any more")
        self.converged.append(list(members))
        return {n: "" for n in wanted}

    def resume(self, members):
        return None if self.locked else self.converge(members)

    def move(self, store, node, state, reason):
        rec = store.get_node("auto", node)
        for s in path(rec.state, state):
            store.transition("auto", node, s, reason, self.clock.now())


@pytest.fixture
def world(tmp_path: Path):
    spec = tmp_path / "auto.yaml"
    spec.write_text(SPEC)
    state = tmp_path / "state"
    clock = FakeClock(1000.0)
    with Store.open(state) as store:
        store.put_project("auto", str(spec), "0" * 64, clock.now())
    batch = FakeBatch()
    fleet = FakeFleet(spec, state, clock)
    fleet.converge([])                    # the head, as `elastic up` made it
    scaler = Autoscaler("auto", lambda: Store.open(state), batch, fleet, clock=clock)
    return scaler, batch, fleet, clock, state


def job(i: int, submitted: float, host: str | None = None, state: str = "qw") -> Job:
    return Job(str(i), f"j{i}", "alice", state, slots=1, submitted=submitted, host=host)


def states(state: Path) -> dict[str, str]:
    with Store.open(state) as store:
        return {r.name: str(r.state) for r in store.list_nodes("auto") if r.name != "head"}


def test_waiting_jobs_launch_workers_that_are_then_admitted(world):
    scaler, batch, fleet, clock, state = world
    batch.pending = [job(i, clock.now()) for i in range(6)]
    clock.advance(10)
    result = scaler.tick()
    assert [a.kind for a in result.plan.actions] == ["launch"]
    assert result.plan.actions[0].count == 3           # 6 slots / 2 per worker
    assert fleet.converged[-1] == [1, 2, 3]
    assert states(state) == {"worker1": "RUNNING", "worker2": "RUNNING", "worker3": "RUNNING"}
    # the master learnt each new worker's name and address before its VM was made
    admits = [c for c in batch.calls if c[0] == "admit"]
    assert [c[1] for c in admits] == ["worker1", "worker2", "worker3"]
    assert all(c[2].startswith("10.") for c in admits)
    clock.advance(15)
    result = scaler.tick()
    assert len([c for c in batch.calls if c[0] == "admit"]) == 3     # not again
    with Store.open(state) as store:
        kinds = [e.kind for e in store.events("auto")]
        timeline = [(q.pending_jobs, q.workers) for q in store.queue_samples("auto", 0)]
        jobs = store.jobs("auto")
    assert "decision:launch" in kinds
    # the timeline of `elastic report`: each tick's queue and workers by site, and the jobs
    assert timeline == [(6, {"private": 0}), (6, {"private": 3})]
    assert sorted(j.id for j in jobs) == [str(i) for i in range(6)]
    assert all(j.started is None and j.ended is None for j in jobs)


def test_the_decision_is_shown_before_it_is_carried_out(world):
    """The daemon prints each tick's decision before making VMs (which takes a minute on a
    real host): ``on_plan`` sees the plan while nothing is made yet, and its record."""
    scaler, batch, fleet, clock, state = world
    batch.pending = [job(i, clock.now()) for i in range(2)]
    clock.advance(10)
    seen = []

    def on_plan(result):
        with Store.open(state) as store:
            kinds = [e.kind for e in store.events("auto")]
        seen.append(([a.kind for a in result.plan.actions], len(fleet.converged), states(state),
                     "decision:launch" in kinds))

    result = scaler.tick(on_plan=on_plan)
    assert seen == [(["launch"], 1, {}, True)]
    assert states(state) == {"worker1": "RUNNING"} and len(fleet.converged) == 2
    assert "launch 1" in result.applied


def test_a_worker_the_master_could_not_admit_is_admitted_by_a_later_tick(world):
    scaler, batch, fleet, clock, state = world
    batch.down = True                       # the master does not answer while we launch
    scaler.add_workers(1)
    assert not [c for c in batch.calls if c[0] == "admit"]
    batch.down = False
    clock.advance(5)
    result = scaler.tick()
    assert [c[:2] for c in batch.calls if c[0] == "admit"] == [("admit", "worker1")]
    assert any("admitted worker1" in a for a in result.applied)
    clock.advance(5)
    scaler.tick()
    assert len([c for c in batch.calls if c[0] == "admit"]) == 1


def test_workers_left_half_made_by_a_killed_controller_are_finished(world):
    scaler, batch, fleet, clock, state = world
    # a controller was killed mid-launch: worker1 and worker2 are members, one in PROLOG and
    # one in BOOT, and no process works on them
    with Store.open(state) as store:
        rec = store.get_project("auto")
        store.update_project_data("auto", {**rec.data, "members": {"worker": [1, 2]}},
                                  clock.now())
        for name, to in (("worker1", State.PROLOG), ("worker2", State.BOOT)):
            store.add_node("auto", name, clock.now(), host="h1", data={"group": "worker"})
            for s in path(State.PENDING, to):
                store.transition("auto", name, s, "killed controller", clock.now())
    fleet.locked = True                      # ... unless another process is on it right now
    clock.advance(5)
    result = scaler.tick()
    assert not any("resumed" in a for a in result.applied)
    assert states(state) == {"worker1": "PROLOG", "worker2": "BOOT"}
    fleet.locked = False
    clock.advance(5)
    result = scaler.tick()
    assert "resumed worker1, worker2" in result.applied
    assert states(state) == {"worker1": "RUNNING", "worker2": "RUNNING"}
    assert fleet.converged[-1] == [1, 2]                 # the same workers, no new ones


def test_workers_that_boot_but_never_join_trip_the_breaker(world, tmp_path):
    scaler, batch, fleet, clock, state = world
    spec = tmp_path / "auto.yaml"
    spec.write_text(SPEC.replace("  cooldown: 10s", "  cooldown: 10s\n  boot_timeout: 60s\n"
                                 "  backoff: 5s\n  breaker_failures: 2\n"
                                 "  max_launch_per_tick: 1"))
    batch.pending = [job(1, clock.now())]
    launches = 0
    for _ in range(60):              # 10 minutes: the VMs boot (fake), never join (no host)
        clock.advance(10)
        result = scaler.tick()
        launches += sum(a.count for a in result.plan.actions if a.kind == "launch")
    with Store.open(state) as store:
        memory = store.get_project("auto").data["autoscale"]
    assert launches == 2                       # then the breaker stops it
    (why,) = memory["breakers"].values()
    assert "2 consecutive launch failures" in why and "did not join" in why
    # the operator fixes the image and closes the breaker: launches start again at once
    from click.testing import CliRunner

    from elastic.cli.main import cli
    out = CliRunner().invoke(cli, ["--state-dir", str(state), "reset-breaker", "auto"])
    assert out.exit_code == 0, out.output
    assert "closed the breaker of private (it was open after 2 consecutive" in out.output
    clock.advance(10)
    result = scaler.tick()
    assert [a.kind for a in result.plan.actions] == ["launch"]
    with Store.open(state) as store:
        data = store.get_project("auto").data
        assert not data["autoscale"]["breakers"] and "breaker_reset" not in data
        assert any(e.kind == "operator:reset-breaker" for e in store.events("auto"))


def test_add_workers_of_another_class(world):
    scaler, batch, fleet, clock, state = world
    scaler.add_workers(1)
    scaler.add_workers(2, "big")
    nodes = {n.name: n for n in fleet.project(None).nodes if n.group == "worker"}
    assert {n: (x.memory, x.vcpus, x.classes) for n, x in nodes.items()} == {
        "worker1": (128, 2, ("n",)), "worker2": (512, 8, ("big", "n")),
        "worker3": (512, 8, ("big", "n"))}
    with pytest.raises(ConfigError, match="unknown class 'bgi'.*did you mean 'big'"):
        scaler.add_workers(1, "bgi")
    # a removed member's class goes with it: its index comes back with the group's class
    with Store.open(state) as store:
        scaler._save(store, members=[1, 3], group="worker")
    scaler.add_workers(1)
    nodes = {n.name: n for n in fleet.project(None).nodes if n.group == "worker"}
    assert nodes["worker2"].classes == ("n",) and nodes["worker3"].classes == ("big", "n")


def test_idle_workers_are_drained_then_removed_but_a_busy_one_is_kept(world):
    scaler, batch, fleet, clock, state = world
    scaler.add_workers(2)
    for w in ("worker1", "worker2"):
        batch.add_exec_host(w, 2)
    batch.running = [job(99, clock.now(), host="worker1", state="r")]
    batch.hosts["worker1"] = ExecHost("worker1", 2, 1)
    for _ in range(8):                              # several minutes of no demand
        clock.advance(30)
        scaler.tick()
    assert states(state) == {"worker1": "RUNNING", "worker2": "DONE"}
    assert ("remove", "worker2") in batch.calls
    assert ("disable", "worker1") not in batch.calls
    # the long job ends: now worker1 goes too, never while it ran something
    batch.running = []
    batch.hosts["worker1"] = ExecHost("worker1", 2, 0)
    for _ in range(8):
        clock.advance(30)
        scaler.tick()
    assert states(state) == {"worker1": "DONE", "worker2": "DONE"}
    assert fleet.converged[-1] == []


def test_a_blind_tick_changes_nothing(world):
    scaler, batch, fleet, clock, state = world
    scaler.add_workers(1)
    batch.down = True
    for _ in range(10):
        clock.advance(60)
        result = scaler.tick()
        assert result.plan.actions == ()
    assert states(state) == {"worker1": "RUNNING"}
    assert any("unknown" in n for n in result.plan.notes)


def test_dry_run_decides_but_changes_nothing(world):
    scaler, batch, fleet, clock, state = world
    batch.pending = [job(i, clock.now()) for i in range(4)]
    clock.advance(10)
    result = scaler.tick(dry_run=True)
    assert result.plan.launched == 2
    assert states(state) == {}
    assert len(fleet.converged) == 1                  # only the fixture's


def test_remove_workers_by_hand_drains_and_never_kills(world):
    scaler, batch, fleet, clock, state = world
    scaler.add_workers(2)
    for w in ("worker1", "worker2"):
        batch.add_exec_host(w, 2)
    clock.advance(5)
    scaler.add_workers(1)                             # worker3 is the newest
    batch.add_exec_host("worker3", 2)
    batch.running = [job(7, clock.now(), host="worker3", state="r")]
    batch.hosts["worker3"] = ExecHost("worker3", 2, 1)
    assert scaler.drain_workers(1) == ["worker3"]
    removed, busy = scaler.remove_drained()
    assert (removed, busy) == ([], ["worker3"])
    assert states(state)["worker3"] == "DRAINING"
    batch.running = []
    batch.hosts["worker3"] = ExecHost("worker3", 2, 0)
    assert scaler.remove_drained() == (["worker3"], [])
    assert states(state) == {"worker1": "RUNNING", "worker2": "RUNNING", "worker3": "DONE"}


def test_add_workers_beyond_the_room_is_refused(world):
    scaler, batch, fleet, clock, state = world
    fleet._room = 1
    with pytest.raises(TransientError, match="only 1 more worker"):
        scaler.add_workers(3)
    assert states(state) == {}


# ------------------------------------------------------------------------------ bursting

class FakeCloud:
    """A cloud site that makes its nodes in the state DB as engine.cloud.CloudSite does;
    knobs: room, fail (launches refused with that reason)."""

    def __init__(self, fleet: FakeFleet, room: int = 2) -> None:
        self.name, self.fleet, self._room, self.fail = "ec2", fleet, room, ""
        self.launched: list[str] = []
        self.destroyed: list[str] = []

    def room(self, store):
        live = [r for r in store.list_nodes("auto") if r.site == "ec2" and r.state != State.DONE]
        return max(0, self._room - len(live)), f"max_nodes {self._room}"

    def launch(self, store, project, node, now):
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail:
            return self.fail
        store.add_node("auto", node.name, now, site="ec2",
                       data={"group": node.group, "index": node.index, "vcpus": node.vcpus})
        for s in path(State.PENDING, State.BOOT):
            store.transition("auto", node.name, s, "fake launch", now,
                             **({"provider_id": f"i-{node.name}"} if s == State.BOOT else {}))
        self.launched.append(node.name)
        return ""

    def destroy(self, store, node, reason):
        self.destroyed.append(node)
        self.fleet.move(store, node, State.DONE, reason)

    def sweep(self, store, now):
        return []


@pytest.fixture
def burst(world):
    scaler, batch, fleet, clock, state = world
    fleet._room = 0                                  # the private hosts are full
    cloud = FakeCloud(fleet)
    scaler.clouds = {"ec2": cloud}
    text = (state.parent / "auto.yaml").read_text()
    (state.parent / "auto.yaml").write_text(text + "  burst: [ec2]\nclouds:\n  ec2: "
                                            "{region: r, image: ami-1, instance_types: [t]}\n")
    return scaler, batch, fleet, clock, state, cloud


def test_full_private_hosts_burst_to_the_cloud_which_is_drained_and_destroyed(burst):
    scaler, batch, fleet, clock, state, cloud = burst
    batch.pending = [job(i, clock.now() - 10) for i in range(3)]   # 3 x 1 slot, 2-slot workers
    r = scaler.tick()
    (launch,) = r.plan.of_kind("launch")
    assert launch.site == "ec2" and "private hosts are full" in launch.reason, launch.reason
    assert cloud.launched == ["worker1", "worker2"]
    assert states(state) == {"worker1": "BOOT", "worker2": "BOOT"}
    # they join: RUNNING (a cloud node has no console; joining is its readiness)
    for w in cloud.launched:
        batch.add_exec_host(w, 2)
    batch.pending = []
    clock.advance(5)
    scaler.tick()
    assert states(state) == {"worker1": "RUNNING", "worker2": "RUNNING"}
    for _ in range(8):                               # idle: drained, removed, destroyed
        clock.advance(30)
        scaler.tick()
    assert states(state) == {"worker1": "DONE", "worker2": "DONE"}
    assert sorted(cloud.destroyed) == ["worker1", "worker2"]
    assert ("remove", "worker1") in batch.calls and ("remove", "worker2") in batch.calls
    assert fleet.converged[-1] == []                 # no private VM was ever made


def test_a_cloud_worker_never_takes_the_name_of_a_private_one(burst):
    scaler, batch, fleet, clock, state, cloud = burst
    fleet._room = 1
    batch.pending = [job(i, clock.now() - 10) for i in range(4)]
    scaler.tick()
    assert states(state) == {"worker1": "RUNNING", "worker2": "BOOT"}
    assert cloud.launched == ["worker2"]
    with Store.open(state) as store:
        assert store.get_node("auto", "worker2").site == "ec2"
        assert store.get_node("auto", "worker1").site == "private"


def test_a_refused_cloud_launch_is_a_failure_of_that_site(burst):
    scaler, batch, fleet, clock, state, cloud = burst
    cloud.fail = "no capacity for t3.small (InsufficientInstanceCapacity)"
    batch.pending = [job(1, clock.now() - 10)]
    r = scaler.tick()
    assert any("InsufficientInstanceCapacity" in e for e in r.errors), r.errors
    clock.advance(15)
    r = scaler.tick()
    assert not r.plan.of_kind("launch")               # ec2 backs off after the failure
    assert any("ec2 is backing off" in n for n in r.plan.notes), r.plan.notes


def test_add_workers_bursts_what_the_private_hosts_cannot_take(burst):
    scaler, batch, fleet, clock, state, cloud = burst
    fleet._room = 1
    result = scaler.add_workers(3)
    assert {n: why for n, why in result.items() if n.startswith("worker")} == \
        {"worker1": "", "worker2": "", "worker3": ""}
    assert cloud.launched == ["worker2", "worker3"]
    with pytest.raises(TransientError, match="only 0 more worker"):
        fleet._room = 0
        scaler.add_workers(1)


def test_a_lost_cloud_worker_has_its_jobs_requeued_then_goes(burst):
    """A spot interruption: the instance vanished (the sweep FAILED the node), its job is
    requeued through the batch system, then the node is removed; never before."""
    scaler, batch, fleet, clock, state, cloud = burst
    batch.pending = [job(1, clock.now() - 10)]
    scaler.tick()
    batch.add_exec_host("worker1", 2)
    batch.pending, batch.running = [], [job(1, clock.now(), host="worker1", state="r")]
    batch.hosts["worker1"] = ExecHost("worker1", 2, 1)
    clock.advance(5)
    scaler.tick()
    assert states(state) == {"worker1": "RUNNING"}
    with Store.open(state) as store:                 # what the sweep does when it vanished
        fleet.move(store, "worker1", State.FAILED, "its instance is no longer listed")
    clock.advance(5)
    r = scaler.tick()
    (resched,) = r.plan.of_kind("reschedule")
    assert resched.node == "worker1" and "requeueing" in resched.reason
    assert ("reschedule", "worker1") in batch.calls and not r.plan.of_kind("remove")
    batch.hosts["worker1"] = ExecHost("worker1", 2, 0)
    clock.advance(5)
    r = scaler.tick()
    assert [a.node for a in r.plan.of_kind("remove")] == ["worker1"]
    assert cloud.destroyed == ["worker1"]
    # the requeued job still waits: a new worker (the name is free again) is launched for it
    assert cloud.launched == ["worker1", "worker1"] and states(state)["worker1"] == "BOOT"


def test_refused_credentials_open_the_clouds_breaker_at_once(burst):
    from elastic.adapters.providers.ec2 import CloudAuthError
    scaler, batch, fleet, clock, state, cloud = burst
    cloud.fail = CloudAuthError("EC2 refused run_instances (AuthFailure: bad key); bursting "
                                "to clouds.ec2 stops until the credentials are fixed")
    batch.pending = [job(i, clock.now() - 10) for i in range(3)]
    r = scaler.tick()
    assert any("AuthFailure" in e for e in r.errors), r.errors
    clock.advance(600)                                 # long past any backoff
    r = scaler.tick()
    assert not r.plan.of_kind("launch")
    assert any("breaker open on ec2" in n and "needs a person" in n for n in r.plan.notes)
