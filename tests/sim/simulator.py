"""A small discrete-event simulator around decide(): a fake clock, a fake provider (launches
take a boot delay; knobs make them fail or hang), a fake Grid Engine queue (jobs run for a
duration on workers' free slots, FIFO without reservation, every ``tick``) and the
controller loop (observe -> decide -> act). Seeded; no I/O; a simulated day takes seconds.

It checks the invariants as it goes (never more than max_workers VMs, never a job killed,
nothing done on a blind tick) and keeps the figures the tests assert on.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from elastic.clock import FakeClock
from elastic.lifecycle import State
from elastic.model import Job, QueueSnapshot
from elastic.policy import (
    Capacity, LaunchOutcome, Memory, Plan, WorkerShape, WorkerView, decide,
)
from elastic.spec.schema import ScalingSpec

HOUR = 3600.0
PE_RULES = {"smp": "$pe_slots", "mpi": "$fill_up"}


# ------------------------------------------------------------------------------- world

@dataclass
class SimJob:
    id: str
    slots: int                 # per task
    tasks: int                 # pending tasks left
    pe: str | None
    runtime: float
    submitted: float


@dataclass
class SimWorker:
    name: str
    site: str
    created: float
    slots: int
    state: State = State.BOOT
    state_since: float = 0.0
    joined: bool = False
    used: int = 0
    tasks: int = 0             # running tasks (pieces of jobs) on it
    idle_since: float | None = None

    def view(self) -> WorkerView:
        return WorkerView(self.name, self.site, self.state, self.created, self.state_since,
                          self.slots, running_jobs=self.tasks, slots_used=self.used,
                          idle_since=self.idle_since if not self.used else None,
                          joined=self.joined)


@dataclass
class Knobs:
    """The fake provider's behaviour."""

    boot: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"private": (60.0, 120.0), "ec2": (120.0, 300.0)})
    refuse: dict[str, float] = field(default_factory=dict)   # site -> P(launch refused)
    hang: dict[str, float] = field(default_factory=dict)     # site -> P(never joins)
    private_room: int = 8      # workers that fit on the private hosts
    cloud_room: int = 20       # the cloud's max_nodes
    blind: tuple[tuple[float, float], ...] = ()   # (from, to): the master does not answer


@dataclass
class Figures:
    waits: list[float] = field(default_factory=list)     # per task, submit -> start
    launches_per_hour: Counter = field(default_factory=Counter)
    changes_per_hour: Counter = field(default_factory=Counter)   # ticks that launch or drain
    flips_per_hour: Counter = field(default_factory=Counter)     # up after down or down after up
    drains: int = 0
    removes: int = 0
    replaces: int = 0
    refused: int = 0
    peak_vms: int = 0
    killed: int = 0
    blind_ticks: int = 0
    notes: Counter = field(default_factory=Counter)
    breaker_opened_at: float | None = None
    worker_seconds: dict[str, float] = field(default_factory=lambda: Counter())
    vms: list[int] = field(default_factory=list)          # VMs at the end of each tick
    unfinished: int = 0
    wall: float = 0.0                                     # seconds the simulation took

    def vms_between(self, h0: float, h1: float, tick: float) -> list[int]:
        return self.vms[int(h0 * HOUR / tick):int(h1 * HOUR / tick)]

    def wait_percentile(self, p: float) -> float:
        w = sorted(self.waits)
        if not w:
            return 0.0
        return w[min(len(w) - 1, max(0, math.ceil(p / 100 * len(w)) - 1))]


class Simulation:
    def __init__(self, spec: ScalingSpec, shape: WorkerShape, knobs: Knobs, seed: int,
                 start: float = 1_700_000_000.0) -> None:
        self.spec, self.shape, self.knobs = spec, shape, knobs
        self.rng = random.Random(seed)
        self.clock = FakeClock(start)
        self.start = start
        self.workers: dict[str, SimWorker] = {}
        self.pending: list[SimJob] = []
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.names = itertools.count(1)
        self.memory = Memory()
        self.outcomes: list[LaunchOutcome] = []
        self.fig = Figures()
        self.last_direction: str | None = None
        self.plans: list[tuple[float, Plan]] = []

    # -- load
    def submit(self, at: float, job: SimJob) -> None:
        self._at(at, "submit", job)

    def _at(self, t: float, kind: str, what: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, what))

    # -- the loop
    def run(self, hours: float) -> Figures:
        t0 = time.perf_counter()   # the simulation's own speed, not simulated time
        end = self.start + hours * HOUR
        while self.clock.now() < end:
            now = self.clock.now()
            self._events(now)
            self._dispatch(now)
            self._control(now)
            for w in self.workers.values():
                self.fig.worker_seconds[w.site] += self.spec.tick
            self.fig.vms.append(len(self.workers))
            self.clock.advance(self.spec.tick)
        self.fig.unfinished = sum(j.tasks for j in self.pending)
        self.fig.wall = time.perf_counter() - t0
        return self.fig

    def _events(self, now: float) -> None:
        while self.events and self.events[0][0] <= now:
            t, _, kind, what = heapq.heappop(self.events)
            if kind == "submit":
                self.pending.append(what)                       # type: ignore[arg-type]
            elif kind == "join":
                w = self.workers.get(what)                      # type: ignore[arg-type]
                if w is not None and not w.joined:
                    w.joined, w.state, w.state_since, w.idle_since = True, State.RUNNING, t, t
                    self.outcomes.append(LaunchOutcome(w.site, ok=True, node=w.name))
            elif kind == "end":
                name, slots = what                              # type: ignore[misc]
                w = self.workers[name]    # a worker with work is never destroyed: KeyError
                w.used -= slots
                w.tasks -= 1
                if not w.used:
                    w.idle_since = t

    def _dispatch(self, now: float) -> None:
        """Grid Engine's scheduler: FIFO, no reservation, enabled joined workers only."""
        hosts = sorted((w for w in self.workers.values()
                        if w.joined and w.state == State.RUNNING), key=lambda w: w.name)
        free = sum(w.slots - w.used for w in hosts)
        for job in self.pending:
            if free <= 0:
                break
            while job.tasks and free > 0:
                if job.pe == "mpi":                             # $fill_up: may span hosts
                    if job.slots > free:
                        break
                    need, pieces = job.slots, []
                    for w in hosts:
                        take = min(w.slots - w.used, need)
                        if take > 0:
                            pieces.append((w, take))
                            need -= take
                        if not need:
                            break
                else:                                           # all slots on one host
                    w = next((w for w in hosts if w.slots - w.used >= job.slots), None)
                    if w is None:
                        break
                    pieces = [(w, job.slots)]
                for w, take in pieces:
                    w.used += take
                    w.tasks += 1
                    w.idle_since = None
                    self._at(now + job.runtime, "end", (w.name, take))
                free -= job.slots
                job.tasks -= 1
                self.fig.waits.append(now - job.submitted)
        self.pending = [j for j in self.pending if j.tasks]

    def _control(self, now: float) -> None:
        known = not any(a <= now - self.start < b for a, b in self.knobs.blind)
        snap = QueueSnapshot(
            now, known,
            pending=tuple(Job(j.id, "sim", "user", "qw", slots=j.slots, tasks=j.tasks, pe=j.pe,
                              submitted=j.submitted) for j in self.pending) if known else (),
            error=None if known else "qstat: connection refused")
        live = list(self.workers.values())
        room = {s: sum(1 for w in live if w.site == s) for s in ("private", "ec2")}
        cap = Capacity(private=max(0, self.knobs.private_room - room["private"]),
                       clouds={"ec2": max(0, self.knobs.cloud_room - room["ec2"])})
        plan = decide(snap, [w.view() for w in live], self.spec, self.shape, cap, self.memory,
                      now, outcomes=self.outcomes, pe_rules=PE_RULES)
        self.outcomes = []
        self.memory = plan.memory
        if plan.memory.breaker_open and self.fig.breaker_opened_at is None:
            self.fig.breaker_opened_at = now - self.start
        for n in plan.notes:
            self.fig.notes[n.split(":")[0][:60]] += 1
        if not known:
            self.fig.blind_ticks += 1
            assert plan.actions == (), "a blind tick must change nothing"
        if plan.actions:
            self.plans.append((now, plan))
        self._act(plan, now)

    # -- the actuator
    def _act(self, plan: Plan, now: float) -> None:
        hour = int((now - self.start) // HOUR)
        for a in plan.actions:
            if a.kind in ("replace", "remove"):
                w = self.workers[a.node]
                if a.kind == "remove":
                    assert w.state == State.DRAINING, f"{a.node} removed without a drain"
                self.fig.killed += w.tasks
                assert w.tasks == 0 and w.used == 0, f"{a}: it runs {w.tasks} tasks"
                del self.workers[a.node]
                self.fig.removes += a.kind == "remove"
                self.fig.replaces += a.kind == "replace"
            elif a.kind == "drain":
                w = self.workers[a.node]
                w.state, w.state_since = State.DRAINING, now
                self.fig.drains += 1
            elif a.kind == "undrain":
                w = self.workers[a.node]
                w.state, w.state_since = State.RUNNING, now
            elif a.kind == "launch":
                for _ in range(a.count):
                    self._launch(a.site, now)
                self.fig.launches_per_hour[hour] += a.count
            self.fig.peak_vms = max(self.fig.peak_vms, len(self.workers))
            assert len(self.workers) <= self.spec.max_workers, f"{a}: above max_workers"
        direction = "up" if plan.of_kind("launch") else "down" if plan.of_kind("drain") else None
        if direction:
            self.fig.changes_per_hour[hour] += 1
            if self.last_direction and direction != self.last_direction:
                self.fig.flips_per_hour[hour] += 1
            self.last_direction = direction

    def _launch(self, site: str, now: float) -> None:
        k = self.knobs
        if self.rng.random() < k.refuse.get(site, 0.0):
            self.fig.refused += 1
            self.outcomes.append(LaunchOutcome(site, ok=False, detail="capacity refused"))
            return
        name = f"w{next(self.names)}"
        self.workers[name] = SimWorker(name, site, now, self.shape.slots, state_since=now)
        if self.rng.random() >= k.hang.get(site, 0.0):
            lo, hi = k.boot[site]
            self._at(now + self.rng.uniform(lo, hi), "join", name)


# -------------------------------------------------------------------------------- load

def bursty_day(sim: Simulation, hours: float = 24.0, seed: int = 7) -> int:
    """A day of load: a trickle of small jobs all day, a busier working day, and bursts of
    array jobs, SMP and MPI jobs every two to four hours; one job that fits no worker.
    Returns the number of tasks submitted (the one that fits no worker not counted)."""
    rng = random.Random(seed)
    t0, tasks, n = sim.start, 0, itertools.count(1)

    def job(at: float, slots: int, count: int, pe: str | None, runtime: float) -> None:
        nonlocal tasks
        sim.submit(t0 + at, SimJob(str(next(n)), slots, count, pe, runtime, t0 + at))
        tasks += count

    # trickle: one job every ~4 min (every ~90 s from 8:00 to 18:00), 5 to 30 min each,
    # until half an hour before the end (so that every job can start within the day)
    t = 0.0
    while True:
        busy = 8 * HOUR <= t % (24 * HOUR) < 18 * HOUR
        t += rng.expovariate(1 / (90 if busy else 240))
        if t >= hours * HOUR - HOUR / 2:
            break
        job(t, 1, 1, None, rng.uniform(300, 1800))
    # bursts
    t = 1 * HOUR
    while t < hours * HOUR - 2 * HOUR:
        job(t, 1, rng.randint(40, 160), None, rng.uniform(300, 1200))        # an array job
        for i in range(rng.randint(2, 8)):
            job(t + 60 * i, rng.choice((2, 4)), 1, "smp", rng.uniform(600, 2400))
        if rng.random() < 0.6:
            job(t + 120, rng.choice((8, 16)), 1, "mpi", rng.uniform(900, 3600))
        t += rng.uniform(2 * HOUR, 4 * HOUR)
    sim.submit(t0 + 10, SimJob("impossible", 16, 1, "smp", 60, t0 + 10))   # fits no worker
    return tasks
