"""Pending demand, and how many new workers of one shape it needs.

Jobs are grouped by what they ask for (slots, parallel environment, queue, memory), so the
work is one pass over the jobs plus a little per group: 100,000 pending jobs cost one loop.

How a job is cut into *units*, each of which must fit on one worker:

- no parallel environment, or a PE whose allocation_rule is ``$pe_slots``: the whole task
  (all its slots) on one worker;
- ``$fill_up`` / ``$round_robin``: the slots may span workers: one unit per slot;
- an integer N: N slots on each worker, ceil(slots / N) units.

A PE missing from ``pe_rules`` is taken as ``$pe_slots`` (all on one host): if it really
spans hosts the job is *reported* as fitting no worker, which the notes say and a sysadmin
fixes in one line, rather than workers launched for a job that can never start on them.

Memory: a job's per-slot request (h_vmem, s_vmem, mem_free or virtual_free, the largest) is
turned into slot-equivalents of the worker shape (a job that takes half a worker's memory
takes half its slots), so the packing stays one-dimensional.

Packing is first-fit decreasing on the free room of existing workers (running, then booting,
then draining ones, which are taken back), then on new workers; bins are kept as counts per
amount of free room, not one by one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache

from elastic.model import Job
from elastic.policy.types import WorkerShape

SPREAD = frozenset({"$fill_up", "$round_robin"})
ONE_HOST = "$pe_slots"
MEMORY_KEYS = ("h_vmem", "s_vmem", "mem_free", "virtual_free")


# ------------------------------------------------------------------------------ demand

@dataclass(frozen=True)
class Group:
    """Pending jobs that ask for the same thing."""

    slots: int                 # per task
    pe: str | None
    queue: str | None
    mem_per_slot: float | None  # MiB
    tasks: int
    jobs: int
    oldest: float              # submit time of the oldest (the caller's cutoff if unknown)
    first: str                 # id of that oldest job

    @property
    def total_slots(self) -> int:
        return self.slots * self.tasks

    def describe(self) -> str:
        pe = f", pe {self.pe}" if self.pe else ""
        mem = f", {_size(self.mem_per_slot)} per slot" if self.mem_per_slot else ""
        who = f"job {self.first}" if self.jobs == 1 else \
            f"{self.jobs} jobs like {self.first}"
        return f"{who} ({self.slots} slot{'s' if self.slots != 1 else ''}{pe}{mem})"


@dataclass(frozen=True)
class Need:
    """A group in packing terms: ``units`` pieces of ``unit`` slot-equivalents each."""

    group: Group
    unit: int
    units: int


@dataclass
class Demand:
    ready: list[Need] = field(default_factory=list)      # waited at least scale_up_after
    young: list[Group] = field(default_factory=list)     # not yet
    rejected: list[tuple[Group, str]] = field(default_factory=list)  # fits no worker: why

    @property
    def ready_slots(self) -> int:
        return sum(n.group.total_slots for n in self.ready)

    @property
    def ready_jobs(self) -> int:
        return sum(n.group.jobs for n in self.ready)

    @property
    def young_slots(self) -> int:
        return sum(g.total_slots for g in self.young)

    @property
    def oldest(self) -> float | None:
        return min((n.group.oldest for n in self.ready), default=None)

    @property
    def servable(self) -> bool:
        """Some job waits that workers could run (young or not)."""
        return bool(self.ready or self.young)


def collect(pending: Iterable[Job], shape: WorkerShape, *, now: float, ready_after: float,
            queue: str, pe_rules: Mapping[str, str | int], max_workers: int) -> Demand:
    """Group the pending jobs and cut each group into units that fit one worker."""
    cutoff = now - ready_after
    ready: dict[tuple, list] = {}
    young: dict[tuple, list] = {}
    for j in pending:                       # the one loop over every job: keep it lean
        res = j.resources
        key = (j.slots, j.pe, j.queue, _job_memory(res) if res else None)
        sub = j.submitted
        if sub is None:
            sub = cutoff                    # unknown submit time: counted as waited enough
        acc = ready if sub <= cutoff else young
        a = acc.get(key)
        if a is None:
            acc[key] = [j.tasks, 1, sub, j.id]
        else:
            a[0] += j.tasks
            a[1] += 1
            if sub < a[2]:
                a[2], a[3] = sub, j.id

    demand = Demand()
    for acc, is_ready in ((ready, True), (young, False)):
        for (slots, pe, q, mem), (tasks, jobs, oldest, first) in acc.items():
            g = Group(slots, pe, q, mem, tasks, jobs, oldest, first)
            need, why = _cut(g, shape, queue, pe_rules, max_workers)
            if why is not None:
                if is_ready:                # reported once it has waited, like any demand
                    demand.rejected.append((g, why))
            elif is_ready:
                demand.ready.append(need)   # type: ignore[arg-type]
            else:
                demand.young.append(g)
    demand.ready.sort(key=lambda n: (-n.unit, n.group.oldest))
    demand.rejected.sort(key=lambda r: r[0].oldest)
    return demand


def _cut(g: Group, shape: WorkerShape, queue: str, pe_rules: Mapping[str, str | int],
         max_workers: int) -> tuple[Need | None, str | None]:
    if g.queue and not serves(g.queue, queue):
        return None, f"it asks for queue {g.queue}; workers serve {queue}"
    rule: str | int = ONE_HOST if g.pe is None else pe_rules.get(g.pe, ONE_HOST)
    if isinstance(rule, str) and rule.isdigit():
        rule = int(rule)
    if isinstance(rule, int) and rule > 0:
        per_host = min(rule, g.slots)
        unit_slots, per_task = per_host, -(-g.slots // per_host)
    elif rule in SPREAD:
        unit_slots, per_task = 1, g.slots
    else:                                   # $pe_slots, no PE, or a rule we do not know
        unit_slots, per_task = g.slots, 1
    unit = footprint(unit_slots, g.mem_per_slot, shape)
    if unit > shape.slots:
        where = "all its slots on one host" if per_task == 1 else f"{unit_slots} slots per host"
        hint = ""
        if g.pe is not None and g.pe not in pe_rules:
            hint = (f"; pe {g.pe} is taken as $pe_slots: if its allocation_rule is $fill_up "
                    "or $round_robin, say so in pe_rules")
        mem = f" and {_size(shape.memory)}" if shape.memory and g.mem_per_slot else ""
        return None, f"it needs {where} and a worker has {shape.slots} slots{mem}{hint}"
    if per_task > 1 and per_task * unit > max_workers * shape.slots:
        return None, (f"it needs {g.slots} slots at once and max_workers {max_workers} "
                      f"workers of {shape.slots} slots give {max_workers * shape.slots}")
    return Need(g, unit, per_task * g.tasks), None


def footprint(slots: int, mem_per_slot: float | None, shape: WorkerShape) -> int:
    """Slot-equivalents a piece of a job takes on a worker of ``shape``."""
    if not mem_per_slot or not shape.memory:
        return slots
    by_memory = math.ceil(slots * mem_per_slot * shape.slots / shape.memory - 1e-9)
    return max(slots, by_memory)


def serves(requested: str, queue: str) -> bool:
    """Does a hard queue request (``all.q``, ``*.q@host``, ``a.q,b.q``) include ``queue``?"""
    for part in requested.split(","):
        name = part.strip().split("@", 1)[0]
        if not name or fnmatchcase(queue, name):
            return True
    return False


def _job_memory(res: Mapping[str, str]) -> float | None:
    best = None
    for k in MEMORY_KEYS:
        v = res.get(k)
        if v is not None:
            m = parse_memory(v)
            if m is not None and (best is None or m > best):
                best = m
    return best


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)\s*$")
_FACTOR = {"": 1, "k": 1e3, "K": 1024, "m": 1e6, "M": 1024**2, "g": 1e9, "G": 1024**3,
           "t": 1e12, "T": 1024**4}


@lru_cache(maxsize=1024)
def parse_memory(value: str) -> float | None:
    """An SGE memory value (bytes; k/m/g are powers of 1000, K/M/G of 1024) in MiB."""
    m = _SIZE.match(str(value))
    if not m:
        return None
    return float(m.group(1)) * _FACTOR[m.group(2)] / 1024**2


def _size(mib: float | None) -> str:
    if mib is None:
        return "?"
    return f"{mib / 1024:g} GiB" if mib >= 1024 else f"{mib:g} MiB"


# ------------------------------------------------------------------------------ packing

class Bins:
    """Named bins (existing workers) grouped by free room: free -> names."""

    def __init__(self, free: Iterable[tuple[str, int]] = ()) -> None:
        self.by_free: dict[int, list[str]] = {}
        self.used: list[str] = []           # bins that received work, in that order
        self._used: set[str] = set()
        for name, f in free:
            if f > 0:
                self.by_free.setdefault(f, []).append(name)
        for names in self.by_free.values():
            names.sort()                    # deterministic

    def take(self, unit: int, count: int) -> int:
        """Put up to ``count`` units of ``unit``; return how many are left."""
        for f in sorted(k for k in self.by_free if k >= unit):   # best fit first
            names = self.by_free.pop(f)
            per = f // unit
            full = min(len(names), count // per)
            if full:                        # fill these up
                self._put(f - per * unit, names[:full])
                names, count = names[full:], count - full * per
            if count and names:             # fewer than a bin's worth left: one bin takes it
                self._put(f - count * unit, names[:1])
                names, count = names[1:], 0
            if names:
                self.by_free[f] = names
            if not count:
                break
        return count

    def _put(self, free: int, names: list[str]) -> None:
        if free > 0:
            self.by_free.setdefault(free, []).extend(names)
        for m in names:
            if m not in self._used:
                self._used.add(m)
                self.used.append(m)


class NewBins:
    """New workers of one size, counted by free room (no names: there may be thousands)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.by_free: dict[int, int] = {}
        self.opened = 0

    def take(self, unit: int, count: int) -> None:
        for f in sorted(k for k in self.by_free if k >= unit):   # partly filled ones first
            n_bins, per = self.by_free[f], f // unit
            full = min(n_bins, count // per)
            if full:
                self._move(f, f - per * unit, full)
                count -= full * per
            if count and self.by_free.get(f):
                self._move(f, f - count * unit, 1)
                count = 0
            if not count:
                return
        per = self.size // unit
        full, rest = divmod(count, per)
        self.opened += full + (1 if rest else 0)
        self._add(self.size - per * unit, full)
        if rest:
            self._add(self.size - rest * unit, 1)

    def _move(self, src: int, dst: int, n: int) -> None:
        self.by_free[src] -= n
        if not self.by_free[src]:
            del self.by_free[src]
        self._add(dst, n)

    def _add(self, free: int, n: int) -> None:
        if free > 0 and n > 0:
            self.by_free[free] = self.by_free.get(free, 0) + n


@dataclass(frozen=True)
class Packing:
    running_slots: int         # slot-equivalents placed on free room of running workers
    booting_used: int          # booting workers that receive work
    undrain: tuple[str, ...]   # draining workers taken back
    new: int                   # new workers needed


def pack(needs: list[Need], *, running: Bins, booting: Bins, draining: Bins,
         size: int) -> Packing:
    """First-fit decreasing: running workers, booting ones, draining ones, then new ones."""
    new = NewBins(size)
    placed_running = 0
    for need in sorted(needs, key=lambda n: -n.unit):
        left = running.take(need.unit, need.units)
        placed_running += (need.units - left) * need.unit
        if left:
            left = booting.take(need.unit, left)
        if left:
            left = draining.take(need.unit, left)
        if left:
            new.take(need.unit, left)
    return Packing(placed_running, len(booting.used), tuple(draining.used), new.opened)
