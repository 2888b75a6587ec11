"""The rebalancer's plan (MLN's XenGuard, for libvirt hosts). Pure: a function of the hosts'
capacity and measured load, the project's chunks and where they run, and the settings; every
migration carries its reason, and what cannot be done is reported, never half done.

1. A host is overloaded when its CPU (averaged over the window) is above ``cpu_high``, or its
   free memory is below ``memory_floor``. Its own load (the host's processes, not its guests)
   is counted but cannot be moved: when it alone is above ``cpu_high`` the plan says so, and
   moves the guests off anyway (they suffer from it), as XenGuard did for a busy dom0.
2. From each overloaded host (the busiest first) chunks are moved until the load that stays
   is under ``cpu_high``, or nothing movable is left, or ``max_migrations`` is reached.
   Which chunk first: ``least-migrations`` (the busiest: fewest moves to relieve the host),
   ``least-memory-copied`` (the smallest memory among those that use CPU), or
   ``most-important-last`` (the lowest node priority first). A chunk whose node has a fixed
   ``host:`` stays.
3. A target passes the placement filters (elastic.placement.Scheduler: memory for the whole
   chunk, counting what this plan already moves there; vcpus; requirements; anti-affinity),
   and its CPU, with what the plan already sends it, must be under ``cpu_low``; when no host
   qualifies the bar is raised step by step (``cpu_low_step``) up to ``cpu_high``, as
   XenGuard did. The move must not itself push the target over ``cpu_high``. Of the hosts
   that pass, the least loaded is taken (load-aware). A chunk that fits no target is
   reported with each host and what rejected it; it is never split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from elastic.placement import HostCapacity, Scheduler, Unit

POLICIES = ("least-migrations", "least-memory-copied", "most-important-last")


@dataclass(frozen=True)
class Settings:
    cpu_high: float = 0.7
    cpu_low: float = 0.1
    memory_floor: int = 0             # MiB a host keeps free
    policy: str = "least-migrations"
    max_migrations: int = 2           # per round
    cpu_low_step: float = 0.1


@dataclass(frozen=True)
class HostState:
    """A host as the rebalancer sees it: capacity (``used``: what the VMs of other projects
    take there; the project's own units are given as ``placed``) and load (fractions of all
    its CPUs, guests included; None when it was not measured)."""

    capacity: HostCapacity
    ncpus: int
    cpu: float | None = None
    cpu_own: float = 0.0              # its own processes (not its guests)
    memory_free: int | None = None    # measured, MiB


@dataclass(frozen=True)
class Placed:
    """A unit of the project and where it runs; ``cores``: the CPU its VMs use (CPUs busy,
    e.g. 1.5), measured."""

    unit: Unit
    host: str
    cores: float
    priority: int = 0                 # the highest node priority in it: higher moves last
    fixed: bool = False


@dataclass(frozen=True)
class Migration:
    unit: str
    chunks: tuple[str, ...]
    nodes: tuple[str, ...]
    src: str
    dst: str
    memory: int
    reason: str


@dataclass(frozen=True)
class RebalancePlan:
    migrations: tuple[Migration, ...] = ()
    overloaded: Mapping[str, str] = field(default_factory=dict)   # host -> why
    unplaced: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # unit -> why/host
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.migrations


def plan(hosts: Mapping[str, HostState], placed: Sequence[Placed],
         settings: Settings = Settings()) -> RebalancePlan:
    if settings.policy not in POLICIES:
        raise ValueError(f"unknown rebalance policy {settings.policy!r}")
    notes: list[str] = []
    cores = {n: (h.cpu or 0.0) * h.ncpus for n, h in hosts.items()}   # busy CPUs, as planned
    overloaded: dict[str, str] = {}
    for name in sorted(hosts):
        h = hosts[name]
        if h.cpu is None:
            notes.append(f"{name}: no load measured, neither a source nor a target")
            continue
        if h.cpu > settings.cpu_high:
            overloaded[name] = f"CPU {h.cpu:.0%} > cpu_high {settings.cpu_high:.0%}"
        elif h.memory_free is not None and h.memory_free < settings.memory_floor:
            overloaded[name] = (f"{h.memory_free} MiB free < memory_floor "
                                f"{settings.memory_floor} MiB")
    if not overloaded:
        return RebalancePlan(notes=(*notes, "no host is overloaded"))

    bars = _bars(settings)
    sched = Scheduler({n: replace(h.capacity, cpu_load=h.cpu if h.cpu is not None else 9.9)
                       for n, h in hosts.items()}, "load-aware",
                      key=lambda x: (_band(x.cpu_load, bars), x.free_memory, x.free_vcpus))
    for p in placed:                    # the project's own units where they run now
        if p.host in sched.hosts:
            sched.take(p.unit, p.host)
    free = {n: h.memory_free for n, h in hosts.items()}     # measured, as the plan moves

    def relieved(name: str) -> bool:
        f = free[name]
        return cores[name] / hosts[name].ncpus <= settings.cpu_high and (
            f is None or f >= settings.memory_floor)

    on: dict[str, list[Placed]] = {}
    for p in placed:
        on.setdefault(p.host, []).append(p)
    migrations: list[Migration] = []
    unplaced: dict[str, dict[str, str]] = {}
    for src in sorted(overloaded, key=lambda n: (-(hosts[n].cpu or 0.0), n)):
        h = hosts[src]
        if h.cpu_own > settings.cpu_high:
            notes.append(f"{src}: its own load ({h.cpu_own:.0%} of its CPUs, not its guests) "
                         f"is above cpu_high {settings.cpu_high:.0%} by itself: no migration "
                         "relieves the host; its guests are moved away from it")
        candidates = []
        for p in on.get(src, ()):
            if p.fixed:
                notes.append(f"{p.unit.name} stays on {src}: a node of it has a fixed host:")
            else:
                candidates.append(p)
        for p in _order(candidates, settings.policy):
            if relieved(src):
                break
            if len(migrations) >= settings.max_migrations:
                notes.append(f"{p.unit.name} on {src} waits for a later round "
                             f"(max_migrations {settings.max_migrations} per round)")
                continue
            dst, why = _target(sched, hosts, cores, free, p, src, settings, bars)
            if dst is None:
                assert isinstance(why, dict)
                unplaced[p.unit.name] = why
                continue
            assert isinstance(why, str)
            sched.release(p.unit, src)
            sched.take(p.unit, dst)
            cores[src] -= p.cores
            cores[dst] += p.cores
            sched.set_load(src, cores[src] / h.ncpus)
            sched.set_load(dst, cores[dst] / hosts[dst].ncpus)
            for name, sign in ((src, 1), (dst, -1)):
                f = free[name]
                free[name] = None if f is None else f + sign * p.unit.memory
            nodes = tuple(n for c in p.unit.chunks for n in c.nodes)
            migrations.append(Migration(
                p.unit.name, tuple(c.name for c in p.unit.chunks), nodes, src, dst,
                p.unit.memory,
                f"{src} is overloaded ({overloaded[src]}); {p.unit.name} "
                f"({len(nodes)} VMs, {p.unit.memory} MiB, {p.cores:.2f} CPUs) "
                f"{_why_this(settings.policy)}; {why}; {src} then at "
                f"{cores[src] / h.ncpus:.0%}"))
    return RebalancePlan(tuple(migrations), overloaded,
                         {u: dict(w) for u, w in unplaced.items()}, tuple(notes))


def _order(candidates: list[Placed], policy: str) -> list[Placed]:
    if policy == "least-migrations":
        return sorted(candidates, key=lambda p: (-p.cores, p.unit.memory, p.unit.name))
    if policy == "least-memory-copied":
        busy = [p for p in candidates if p.cores > 0]
        idle = [p for p in candidates if p.cores <= 0]
        return sorted(busy, key=lambda p: (p.unit.memory, -p.cores, p.unit.name)) + \
            sorted(idle, key=lambda p: (p.unit.memory, p.unit.name))
    return sorted(candidates, key=lambda p: (p.priority, -p.cores, p.unit.name))


def _why_this(policy: str) -> str:
    return {"least-migrations": "uses the most CPU of what can move (least-migrations)",
            "least-memory-copied": "has the least memory to copy (least-memory-copied)",
            "most-important-last": "has the lowest priority (most-important-last)"}[policy]


def _bars(settings: Settings) -> list[float]:
    """cpu_low, raised by cpu_low_step up to cpu_high: the bars a target's CPU must be under."""
    bars = [settings.cpu_low]
    while bars[-1] < settings.cpu_high - 1e-9:
        bars.append(min(settings.cpu_high, round(bars[-1] + settings.cpu_low_step, 6)))
    return bars


def _band(load: float, bars: Sequence[float]) -> int:
    """The first bar a host with this load is under (len(bars): none)."""
    for k, bar in enumerate(bars):
        if load < bar:
            return k
    return len(bars)


def _target(sched: Scheduler, hosts: Mapping[str, HostState], cores: Mapping[str, float],
            free: Mapping[str, int | None], p: Placed, src: str, settings: Settings,
            bars: Sequence[float]) -> tuple[str | None, str | dict[str, str]]:
    """A host under the bar that passes the placement filters, with the least free memory
    that fits (so a bigger chunk still finds room elsewhere); the bar is cpu_low, raised
    step by step up to cpu_high while no host qualifies (XenGuard). The move must not put
    the target over cpu_high, nor under the memory floor."""
    for k, bar in enumerate(bars):
        def cpu_filter(unit: Unit, cap: HostCapacity, bar: float = bar) -> str | None:
            h = hosts[cap.name]
            if h.cpu is None:
                return "no load measured"
            now = cores[cap.name] / h.ncpus
            after = (cores[cap.name] + p.cores) / h.ncpus
            if now >= bar:
                return f"CPU {now:.0%} is not under {bar:.0%}"
            if after > settings.cpu_high:
                return (f"CPU {now:.0%} would be {after:.0%} with the chunk, over cpu_high "
                        f"{settings.cpu_high:.0%}")
            f = free[cap.name]
            if f is not None and f - unit.memory < settings.memory_floor:
                return (f"{f} MiB measured free: the chunk's {unit.memory} MiB would leave "
                        f"less than memory_floor {settings.memory_floor} MiB")
            return None
        last_try = k == len(bars) - 1
        sched.extra = cpu_filter
        try:       # hosts come in CPU bands: none from the first band over this bar on passes
            dst, why = sched.choose(p.unit, exclude=[src], explain=last_try,
                                    until=None if last_try else
                                    (lambda n, k=k: _band(sched.hosts[n].cpu_load, bars) > k))
        finally:
            sched.extra = None
        if dst is not None:
            h = hosts[dst]
            raised = "" if k == 0 else \
                f" (cpu_low {settings.cpu_low:.0%} raised to {bar:.0%}: no host was under it)"
            return dst, (f"{dst} is under {bar:.0%} CPU ({cores[dst] / h.ncpus:.0%}) and has "
                         f"the least free memory that fits it "
                         f"({sched.hosts[dst].free_memory} MiB){raised}")
        assert isinstance(why, dict)
        if last_try:
            return None, why
    raise AssertionError("no bars")
