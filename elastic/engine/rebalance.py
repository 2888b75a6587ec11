"""`elastic rebalance`: observe (each host's capacity and measured load, where each chunk of
the project runs and what CPU its VMs use) -> plan (elastic.placement.rebalance, pure) -> act
(live-migrate each chunk whole, through the cluster's migration) -> record (every migration
and every chunk left where it is, with its reason, in the event log).

A migrated chunk's nodes are recorded on their new host, and placement keeps a running chunk
where it runs, so a later `elastic upgrade` does not move them back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from elastic.clock import Clock, SystemClock
from elastic.engine.cluster import Cluster
from elastic.engine.diff import Change
from elastic.engine.status import LOAD_WINDOW, SAMPLE_INTERVAL, measure
from elastic.lifecycle import State
from elastic.model import Project
from elastic.monitoring import HostLoad
from elastic.placement import units_of
from elastic.placement.rebalance import HostState, Placed, RebalancePlan, Settings, plan
from elastic.state import Store


@dataclass
class Snapshot:
    hosts: dict[str, HostState]
    placed: list[Placed]
    notes: list[str] = field(default_factory=list)


@dataclass
class RebalanceOutcome:
    plan: RebalancePlan
    notes: list[str]
    loads: dict[str, HostLoad | None]
    migrated: dict[str, float] = field(default_factory=dict)     # unit -> seconds
    failed: dict[str, str] = field(default_factory=dict)          # unit -> why


def settings_of(project: Project) -> Settings:
    r = project.rebalance
    if r is None:
        return Settings()
    return Settings(cpu_high=r.cpu_high, cpu_low=r.cpu_low, memory_floor=r.memory_floor,
                    policy=r.policy, max_migrations=r.max_migrations)


def snapshot(cluster: Cluster, store: Store, project: Project,
             loads: dict[str, HostLoad | None]) -> Snapshot:
    """The planner's view: capacity (other projects' VMs counted as used), load, and each
    unit of the project on the one host all its nodes run on."""
    caps = cluster.capacities(project)
    notes: list[str] = []
    cores: dict[str, float] = {}
    for name, got in loads.items():
        if got is not None:
            for d in got.domains:
                if d.project == project.name and d.node:
                    cores[d.node] = cores.get(d.node, 0.0) + d.cpu * got.ncpus
    records = {r.name: r for r in store.list_nodes(project.name)
               if r.site == "private" and r.state != State.DONE}
    nodes = {n.name: n for n in project.nodes}
    units, _rejected = units_of(project, {k for c in caps.values() for k in c.attributes})
    placed: list[Placed] = []
    stays: dict[str, list[str]] = {}       # host -> nodes that stay there (counted as used)
    for unit in units:
        names = [n for c in unit.chunks for n in c.nodes]
        on = {records[n].host for n in names if n in records}
        states = {records[n].state for n in names if n in records}
        if not on:
            continue                              # not made (yet): nothing to move
        if len(on) > 1 or states != {State.RUNNING} or len(names) != \
                len([n for n in names if n in records]):
            notes.append(f"{unit.name} is left alone: its nodes are "
                         + ", ".join(sorted(f"{n} {records[n].state.value} on {records[n].host}"
                                            for n in names if n in records)))
            for n in names:
                if n in records and records[n].host:
                    stays.setdefault(str(records[n].host), []).append(n)
            continue
        (host,) = on
        placed.append(Placed(unit, str(host), cores=sum(cores.get(n, 0.0) for n in names),
                             priority=max(nodes[n].priority for n in names),
                             fixed=unit.host is not None))
    hosts: dict[str, HostState] = {}
    for name, cap in caps.items():
        left = stays.get(name, [])
        cap = replace(cap, used_memory=cap.used_memory + sum(nodes[n].memory for n in left),
                      used_vcpus=cap.used_vcpus + sum(nodes[n].vcpus for n in left),
                      vms=cap.vms + len(left))
        got = loads.get(name)
        if got is None:
            hosts[name] = HostState(cap, max(1, cap.vcpus), None)
        else:
            hosts[name] = HostState(cap, got.ncpus, got.cpu, got.cpu_own, got.memory_free_mib)
    return Snapshot(hosts, placed, notes)


class Due:
    """When the autoscaler's daemon rebalances: once every ``every`` seconds (the window the
    load is averaged over), the first time one window after it started."""

    def __init__(self, every: float, start: float) -> None:
        self.every = every
        self.next = start + every

    def __call__(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next = now + self.every
        return True


class Rebalancer:
    def __init__(self, cluster: Cluster, state_dir: Path, clock: Clock | None = None) -> None:
        self.cluster = cluster
        self.state_dir = state_dir
        self.clock = clock or SystemClock()

    def run(self, spec: Path, project: Project, *, dry_run: bool = False,
            interval: float = SAMPLE_INTERVAL, window: float | None = None,
            say: Callable[[str], None] | None = None) -> RebalanceOutcome:
        """Measure, plan, and (unless ``dry_run``) migrate; every step recorded."""
        say = say or (lambda _m: None)
        window = window if window is not None else (
            project.rebalance.window if project.rebalance is not None else LOAD_WINDOW)
        say(f"measuring the hosts of {project.name} ({interval:g} s; averaged over the "
            f"last {window:g} s of samples)")
        measured, notes = measure(self.state_dir, project.name, interval=interval,
                                  window=window, clock=self.clock, hosts=project.hosts)
        loads: dict[str, HostLoad | None] = {}
        for target, got, error in measured:
            loads[target.name] = got
            if error is not None:
                notes.append(f"{target.name} does not answer: {error}")
        with Store.open(self.state_dir) as store:
            snap = snapshot(self.cluster, store, project, loads)
            result = plan(snap.hosts, snap.placed, settings_of(project))
            outcome = RebalanceOutcome(result, notes + snap.notes + list(result.notes), loads)
            now = self.clock.now()
            for unit, why in result.unplaced.items():
                store.record_event(project.name, "rebalance:unplaced", now, reason=(
                    f"{unit} fits no target: " + "; ".join(f"{h}: {w}" for h, w in why.items())))
            if dry_run or result.empty:
                return outcome
            for m in result.migrations:
                store.record_event(project.name, "rebalance:plan", now, reason=(
                    f"move {m.unit} {m.src} -> {m.dst}: {m.reason}"))
        moves = [Change("move", chunk, m.reason, m.src, m.dst,
                        tuple(n for c in project.chunks if c.name == chunk for n in c.nodes))
                 for m in result.migrations for chunk in m.chunks]
        unit_of = {chunk: m.unit for m in result.migrations for chunk in m.chunks}

        def record(change: Change, got: float | str) -> None:
            unit = unit_of[change.target]
            with Store.open(self.state_dir) as store:
                if isinstance(got, float):
                    outcome.migrated[unit] = outcome.migrated.get(unit, 0.0) + got
                    store.record_event(project.name, "rebalance:migrate", self.clock.now(),
                                       reason=f"chunk {change.target} {change.src} -> "
                                              f"{change.dst} in {got:.1f} s: {change.reason}")
                else:
                    outcome.failed[unit] = got
                    store.record_event(project.name, "rebalance:failed", self.clock.now(),
                                       reason=f"chunk {change.target} {change.src} -> "
                                              f"{change.dst} failed, it stays: {got}")
            say(f"chunk {change.target}: {change.src} -> {change.dst}: "
                + (f"{got:.1f} s" if isinstance(got, float) else f"FAILED: {got}"))

        self.cluster.migrate(spec, project, moves, on_done=record)
        return outcome
