"""The web tier's controller (elastic.engine.web) with a fake balancer (failure knobs) and a
fake fleet that makes nodes in the real state DB as `elastic up` does, the real policy and
the real access-log reader on a file the test writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elastic.clock import FakeClock
from elastic.engine.projects import resolve_with_state
from elastic.engine.web import WebTier, backend_address
from elastic.errors import PermanentError
from elastic.lifecycle import State, path
from elastic.state import Store

SPEC = """
project: shop
networks:
  lan: {cidr: 10.77.0.0/24, kind: bridged, range: 10.77.0.40-10.77.0.59}
  back: {cidr: 10.30.0.0/24}
classes:
  web: {image: tiny, memory: 128M, interfaces: {eth0: {network: back}, eth1: {network: lan}}}
nodes:
  web: {class: web, count: 0, names: "web{n}"}
frontends:
  www:
    group: web
    min: 1
    max: 3
    cooldown: 30s
    balancer: {port: 8080, drain_timeout: 2s, health_timeout: 0.3s}
    rules:
      - {metric: rps, op: ">", threshold: 10, period: 2s, period_number: 2, value: 1,
         cooldown: 10s}
      - {metric: rps, op: "<", threshold: 2, period: 2s, period_number: 2, value: -1,
         cooldown: 5s}
"""


class FakeNginx:
    """Records what the engine asks; knobs: which backends answer, open connections."""

    def __init__(self, directory: Path, log: list) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.conf = ""
        self.pid: int | None = None
        self.healthy: set[str] = set()
        self.open: dict[str, int] = {}      # backend -> connections, one fewer per look

    def upstream(self) -> list[str]:
        return re.findall(r"server (\S+) max_fails", self.conf)

    def configure(self, text: str) -> bool:
        changed = text != self.conf
        self.conf = text
        return changed

    def running(self):
        return self.pid

    def start(self) -> int:
        self.pid = 4242
        self.log.append(("start", tuple(self.upstream())))
        return self.pid

    def reload(self, generation, address, port, timeout=10) -> None:
        self.log.append(("reload", tuple(self.upstream())))

    def health(self, backend, path, timeout=2):
        return (backend in self.healthy, "200" if backend in self.healthy else "refused")

    def connections_to(self, backend: str) -> int:
        n = self.open.get(backend, 0)
        self.open[backend] = max(0, n - 1)
        self.log.append(("connections", backend, n))
        return n

    def stop(self, timeout=30) -> None:
        self.pid = None


class FakeFleet:
    """As the real one: the spec with the DB's members; converge makes/destroys nodes."""

    def __init__(self, spec: Path, state: Path, clock: FakeClock, log: list, nginx) -> None:
        self.spec, self.state, self.clock, self.log, self.nginx = spec, state, clock, log, nginx
        self.fail: set[str] = set()

    def project(self, members):
        return resolve_with_state(self.spec, self.state,
                                  members=None if members is None else {"web": members})

    def converge(self, members):
        project = self.project(members)
        now = self.clock.now()
        wanted = {n.name: n for n in project.nodes}
        self.log.append(("converge", tuple(sorted(wanted)), tuple(self.nginx.upstream())))
        out = {}
        with Store.open(self.state) as store:
            for n in project.nodes:
                rec = store.get_node("shop", n.name)
                if rec is None or rec.state == State.DONE:
                    store.add_node("shop", n.name, now, host="h1", data={"group": n.group})
                    target = State.FAILED if n.name in self.fail else State.RUNNING
                    for s in path(State.PENDING, target):
                        store.transition("shop", n.name, s, "fake up", now)
                out[n.name] = "boot failed" if n.name in self.fail else ""
            for rec in store.list_nodes("shop"):
                if rec.name not in wanted and rec.state != State.DONE:
                    for s in path(rec.state, State.DONE):
                        store.transition("shop", rec.name, s, "not in the spec", now)
        return out


@pytest.fixture
def world(tmp_path: Path):
    spec = tmp_path / "shop.yaml"
    spec.write_text(SPEC)
    state = tmp_path / "state"
    clock = FakeClock(1000.0)
    with Store.open(state) as store:
        store.put_project("shop", str(spec), "0" * 64, clock.now())
    log: list = []
    nginx = FakeNginx(tmp_path / "balancer", log)
    fleet = FakeFleet(spec, state, clock, log, nginx)
    fleet.converge(resolve_with_state(spec, state).nodes and [1])   # `elastic up`: web1
    tier = WebTier("shop", "www", fleet, nginx, state_dir=state, netns=None, clock=clock)
    return tier, nginx, fleet, clock, state, log


def lan(n: int) -> str:
    return f"10.77.0.{39 + n}:80"


def traffic(nginx: FakeNginx, clock: FakeClock, per_second: int, seconds: int) -> None:
    """Lines in the access log, as nginx writes them, then the clock moves on."""
    with open(nginx.directory / "access.log", "a") as f:
        for s in range(seconds):
            for i in range(per_second):
                t = clock.now() + s + i / per_second
                f.write(f"{t:.3f}\t{lan(1)}\t200\t0.004\tGET\t/\n")
    clock.advance(seconds)


def states(state: Path) -> dict[str, str]:
    with Store.open(state) as store:
        return {r.name: str(r.state) for r in store.list_nodes("shop")}


def test_the_balancer_reaches_front_ends_on_the_bridged_network():
    project = resolve_with_state_text(SPEC)
    assert backend_address(project, project.node("web1")) == "10.77.0.40"


def resolve_with_state_text(text: str):
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.yaml"
        p.write_text(text)
        return resolve_with_state(p, None)


def test_a_front_end_joins_the_upstream_only_once_it_answers(world):
    tier, nginx, fleet, clock, state, log = world
    assert tier.sync() == []                      # web1 is RUNNING but does not answer yet
    assert ("start", ()) in log
    nginx.healthy.add(lan(1))
    assert tier.sync() == ["web1"]
    assert log[-1] == ("reload", (lan(1),))
    assert tier.record()["serving"] == ["web1"]
    # a tick that changes nothing writes nothing: no reload, no DB write, no file write
    info = nginx.directory / "tier.json"
    stamp = info.stat().st_mtime_ns
    saves = []
    real_save = tier._save
    tier._save = lambda **fields: (saves.append(fields), real_save(**fields))
    assert tier.sync() == ["web1"] and tier.sync() == ["web1"]
    assert saves == [] and info.stat().st_mtime_ns == stamp
    assert log[-1] == ("reload", (lan(1),))


def test_load_grows_the_tier_and_the_new_front_end_serves_after_its_health_check(world):
    tier, nginx, fleet, clock, state, log = world
    nginx.healthy |= {lan(1), lan(2)}
    tier.sync()
    traffic(nginx, clock, 30, 5)                  # 30 rps on one front-end > 10
    result = tier.tick()
    assert result.decision.target == 2, result.decision.reason
    assert "rps per front-end" in result.decision.reason
    assert states(state) == {"web1": "RUNNING", "web2": "RUNNING"}
    assert tier.record()["serving"] == ["web1", "web2"]
    # the VM was made while only web1 served; web2 was added after, by a reload
    converge = [e for e in log if e[0] == "converge"][-1]
    assert converge == ("converge", ("web1", "web2"), (lan(1),))
    assert log[-1] == ("reload", (lan(1), lan(2)))
    assert "web2 serving" in result.applied
    with Store.open(state) as store:
        kinds = [(e.kind, e.node) for e in store.events("shop")]
    assert ("tier:decision", None) in kinds and ("tier:upstream", "web2") in kinds
    # the rule's cooldown (10 s) holds the next tick, whatever the load
    traffic(nginx, clock, 60, 3)
    assert tier.tick().decision.target == 2


def test_a_leaving_front_end_is_out_of_the_upstream_and_drained_before_its_vm_goes(world):
    tier, nginx, fleet, clock, state, log = world
    nginx.healthy |= {lan(1), lan(2)}
    tier.sync()
    tier.scale(2)
    assert tier.record()["serving"] == ["web1", "web2"]
    nginx.open[lan(2)] = 3                         # three requests still in flight
    clock.advance(31)                              # the manual scale's cooldown (30 s)
    traffic(nginx, clock, 1, 5)                    # quiet: 0.5 rps per front-end < 2
    result = tier.tick()
    assert result.decision.target == 1, result.decision.reason
    i_reload = log.index(("reload", (lan(1),)))
    drained = [i for i, e in enumerate(log) if e[:2] == ("connections", lan(2))]
    i_converge = max(i for i, e in enumerate(log) if e[0] == "converge")
    assert i_reload < drained[0] and drained[-1] < i_converge, log
    assert [e[2] for e in log if e[:2] == ("connections", lan(2))] == [3, 2, 1, 0]
    assert states(state)["web2"] == "DONE" and tier.record()["serving"] == ["web1"]
    with Store.open(state) as store:
        drained_ev = [e for e in store.events("shop") if e.kind == "tier:drained"]
    assert [e.node for e in drained_ev] == ["web2"]
    assert "connections closed" in drained_ev[0].reason


def test_a_front_end_that_never_answers_stays_out_and_a_failed_one_leaves(world, monkeypatch):
    tier, nginx, fleet, clock, state, log = world
    from elastic.engine import web
    monkeypatch.setattr(web, "HEALTH_EVERY", 0.0)
    nginx.healthy.add(lan(1))
    tier.sync()
    # web2 boots but its web server never answers in health_timeout (0.3 s)
    applied = tier.resize(2, 0.0)
    assert applied == ["web2 up but not answering /"]
    assert tier.record()["serving"] == ["web1"]
    # web1 FAILS: the next sync takes it out of the upstream
    with Store.open(state) as store:
        store.transition("shop", "web1", State.FAILED, "the host died", clock.now())
    assert tier.sync() == []
    assert log[-1] == ("reload", ())


def test_scale_by_hand_stays_within_min_and_max(world):
    tier, nginx, fleet, clock, state, log = world
    with pytest.raises(PermanentError, match="outside min 1 .. max 3"):
        tier.scale(4)
    assert states(state) == {"web1": "RUNNING"}


def test_a_restarted_controller_does_not_read_old_traffic_as_new(world):
    tier, nginx, fleet, clock, state, log = world
    nginx.healthy.add(lan(1))
    tier.sync()
    traffic(nginx, clock, 50, 5)                   # before the restart
    again = WebTier("shop", "www", fleet, nginx, state_dir=state, netns=None, clock=clock)
    result = again.tick()
    assert result.decision.target == 1, result.decision.reason
