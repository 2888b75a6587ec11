"""Where each chunk goes: OpenNebula's matchmaker, for chunks. Pure: a function of the project
and the hosts' capacity (and measured load), with a reason for every choice and, when nothing
fits, each host and the filter that rejected it.

1. Units. A chunk (nodes joined by private networks) is placed whole; ``affinity:`` joins
   chunks into one unit that shares a host. A fixed ``host:`` wins: the unit goes there if it
   fits (memory, vcpus), whatever the filters and weighers say. A unit already running on a
   host stays there while it passes the filters (a changed spec may move it: ``upgrade`` then
   live-migrates it); one that outgrew its host is rejected, never split.
2. Filters, in this order: the domain type a node asks for (``hypervisor:``), the nodes'
   ``requirements:`` expressions over host attributes (elastic.expr), memory and vcpus free
   (each host's reserved share already taken off, vcpus times its ``vcpu_ratio``), and
   ``anti_affinity:`` against what the host already runs of this project.
3. Weighers: the hosts that pass are ordered by ``placement.rank`` (an expression, highest
   first) if given, then by the policy: ``packing`` (the least free memory that fits: fill
   hosts up), ``striping`` (the fewest VMs, then the most free memory: spread, OpenNebula's
   striping), ``load-aware`` (the lowest measured CPU load, then the most free memory).
   Ties go by host name, so a placement is repeatable.

Hosts are kept in a sorted list by the policy's key and only the chosen host's key changes
after each choice, so placing 10,000 VMs on 1,000 hosts takes well under a second
(bench/placement_bench.py). The rebalancer uses the same Scheduler for its targets, with an
extra filter (the target's CPU load) and the source host excluded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedKeyList

from elastic.expr import Expression, compile_expression
from elastic.model import Chunk, NodeSpec, Project

POLICIES = ("packing", "striping", "load-aware")


@dataclass(frozen=True)
class HostCapacity:
    """What a host has for guests (MiB, vcpus: its reserved share already taken off, vcpus
    already multiplied by its ratio); ``used`` is what others already take there."""

    name: str
    memory: int
    vcpus: int
    used_memory: int = 0
    used_vcpus: int = 0
    domain_type: str = "kvm"
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    cpu_load: float = 0.0          # measured utilisation 0..1 (monitoring); 0 if unknown
    vms: int = 0                   # VMs already there (all projects)

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.used_vcpus


@dataclass(frozen=True)
class Decision:
    chunk: str
    host: str
    reason: str


@dataclass(frozen=True)
class Rejection:
    chunk: str
    memory: int
    why: dict[str, str]          # host -> why it was rejected

    def __str__(self) -> str:
        lines = [f"chunk {self.chunk} ({self.memory} MiB) fits no host:"]
        lines += [f"  {host}: {why}" for host, why in self.why.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Placement:
    decisions: tuple[Decision, ...]
    rejected: tuple[Rejection, ...]

    def host_of(self, chunk: str) -> str:
        for d in self.decisions:
            if d.chunk == chunk:
                return d.host
        raise KeyError(chunk)

    @property
    def ok(self) -> bool:
        return not self.rejected


@dataclass(frozen=True)
class Unit:
    """What is placed as one: a chunk, or chunks that affinity joins."""

    name: str
    chunks: tuple[Chunk, ...]
    memory: int
    vcpus: int
    vms: int
    host: str | None                     # fixed (a node's host:)
    hypervisors: frozenset[str]          # domain types its nodes ask for
    requirements: tuple[Expression, ...]
    labels: frozenset[str]               # its nodes' names, groups and classes
    anti: Mapping[str, tuple[str, str]]  # a label it may not share a host with -> (node, ref)


def units_of(project: Project, extra_attributes: Iterable[str] = ()
             ) -> tuple[list[Unit], list[Rejection]]:
    """The project's chunks grouped into units by affinity (union-find), and the units that
    contradict themselves (two fixed hosts; anti-affinity inside one unit)."""
    nodes = {n.name: n for n in project.nodes}
    chunks = {c.name: c for c in project.chunks}
    chunk_of = {n.name: n.chunk for n in project.nodes}
    parent = {c: c for c in chunks}

    def find(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    by_label: dict[str, list[str]] = {}
    for n in project.nodes:
        for label in _labels(n):
            by_label.setdefault(label, []).append(n.name)
    for n in project.nodes:
        for ref in n.affinity:
            for other in by_label.get(ref, ()):
                a, b = find(chunk_of[n.name]), find(chunk_of[other])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Chunk]] = {}
    for c in project.chunks:
        groups.setdefault(find(c.name), []).append(c)

    extra = tuple(extra_attributes)
    units: list[Unit] = []
    rejected: list[Rejection] = []
    for members in groups.values():
        names = [m.name for m in members]
        memory = sum(m.memory for m in members)
        name = "+".join(names)
        fixed = {m.host for m in members if m.host is not None}
        members_nodes = [nodes[x] for m in members for x in m.nodes]
        if len(fixed) > 1:
            rejected.append(Rejection(name, memory, {h: (
                f"affinity joins chunks {', '.join(names)} whose nodes are fixed to "
                f"different hosts ({', '.join(sorted(fixed))})") for h in sorted(fixed)}))
            continue
        anti: dict[str, tuple[str, str]] = {}
        clash = None
        for n in members_nodes:
            for ref in n.anti_affinity:
                anti.setdefault(ref, (n.name, ref))
                others = [o for o in by_label.get(ref, ()) if o != n.name
                          and find(chunk_of[o]) == find(members[0].name)]
                if others and clash is None:
                    by = "affinity" if len(members) > 1 else "a private network"
                    clash = (f"{n.name} has anti_affinity: {ref}, but {others[0]} is on the "
                             f"same host by {by}")
        if clash is not None:
            rejected.append(Rejection(name, memory, {"(all hosts)": clash}))
            continue
        texts = sorted({n.requirements for n in members_nodes if n.requirements})
        units.append(Unit(
            name=name, chunks=tuple(members), memory=memory,
            vcpus=sum(m.vcpus for m in members), vms=len(members_nodes),
            host=next(iter(fixed)) if fixed else None,
            hypervisors=frozenset(n.hypervisor for n in members_nodes if n.hypervisor),
            requirements=tuple(compile_expression(t, extra) for t in texts),
            labels=frozenset(x for n in members_nodes for x in _labels(n)),
            anti=anti))
    return units, rejected


def _labels(n: NodeSpec) -> tuple[str, ...]:
    return (n.name, n.group, *n.classes) if n.group else (n.name, *n.classes)


class _Host:
    """A host while a plan is made: what the plan has put there so far."""

    __slots__ = ("cap", "used_memory", "used_vcpus", "vms", "labels", "anti", "attrs",
                 "cpu_load")

    def __init__(self, cap: HostCapacity) -> None:
        self.cap = cap
        self.used_memory = cap.used_memory
        self.used_vcpus = cap.used_vcpus
        self.vms = cap.vms
        self.cpu_load = cap.cpu_load
        self.labels: Counter[str] = Counter()
        self.anti: dict[str, tuple[str, str]] = {}     # label -> (node, ref) of a node here
        self.attrs: dict[str, Any] = {**cap.attributes, "name": cap.name,
                                      "type": cap.domain_type, "group": list(cap.groups),
                                      "memory": cap.memory, "vcpus": cap.vcpus,
                                      "cpu_load": cap.cpu_load}
        self._refresh()

    def _refresh(self) -> None:
        a = self.attrs
        a["memory_used"] = self.used_memory
        a["memory_free"] = self.cap.memory - self.used_memory
        a["vcpus_used"] = self.used_vcpus
        a["vcpus_free"] = self.cap.vcpus - self.used_vcpus
        a["vms"] = self.vms

    @property
    def free_memory(self) -> int:
        return self.cap.memory - self.used_memory

    @property
    def free_vcpus(self) -> int:
        return self.cap.vcpus - self.used_vcpus

    def add(self, unit: Unit, sign: int = 1) -> None:
        self.used_memory += sign * unit.memory
        self.used_vcpus += sign * unit.vcpus
        self.vms += sign * unit.vms
        for label in unit.labels:
            self.labels[label] += sign
            if self.labels[label] <= 0:
                del self.labels[label]
        if sign > 0:
            self.anti.update(unit.anti)
        else:
            for ref in unit.anti:
                self.anti.pop(ref, None)
        self._refresh()


Extra = Callable[[Unit, HostCapacity], "str | None"]


class Scheduler:
    """The hosts' state while a plan is made; ``choose`` a host for a unit, ``take`` it.

    ``extra``: one more filter (the rebalancer's: the target's CPU load), asked last; it
    returns why a host is rejected, or None."""

    def __init__(self, hosts: Mapping[str, HostCapacity], policy: str = "packing",
                 rank: Expression | None = None, extra: Extra | None = None,
                 key: Callable[[_Host], tuple[Any, ...]] | None = None) -> None:
        """``key``: the order to try hosts in instead of the policy's (lowest first; the
        rebalancer's: CPU band, then the least free memory)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown placement policy {policy!r} (one of {', '.join(POLICIES)})")
        self.policy = policy
        self.rank = rank
        self.extra = extra
        self.custom_key = key
        self.hosts = {name: _Host(cap) for name, cap in hosts.items()}
        self._order = SortedKeyList(self.hosts, key=self._key)

    # ------------------------------------------------------------------ ordering
    def _key(self, name: str) -> tuple[Any, ...]:
        h = self.hosts[name]
        if self.custom_key is not None:
            return (*self.custom_key(h), name)
        if self.policy == "packing":
            k: tuple[Any, ...] = (h.free_memory, h.free_vcpus)
        elif self.policy == "striping":
            k = (h.vms, -h.free_memory, -h.free_vcpus)
        else:
            k = (h.cpu_load, -h.free_memory)
        if self.rank is not None:
            k = (-self.rank.rank(h.attrs), *k)
        return (*k, name)

    def _candidates(self, unit: Unit) -> Iterable[str]:
        if self.policy == "packing" and self.rank is None and self.custom_key is None:
            # the first host with enough free memory, by bisection; then on in order
            start = self._order.bisect_key_left((unit.memory,))
            return self._order.islice(start)
        return iter(self._order)

    # ------------------------------------------------------------------ filters
    def why_not(self, unit: Unit, name: str, capacity_only: bool = False) -> str | None:
        """Why ``name`` cannot take ``unit`` now (the first filter that fails), or None."""
        h = self.hosts[name]
        cap = h.cap
        if not capacity_only:
            if unit.hypervisors and cap.domain_type not in unit.hypervisors:
                return (f"runs {cap.domain_type}, the chunk needs "
                        f"{', '.join(sorted(unit.hypervisors))}")
            for req in unit.requirements:
                if not req.holds(h.attrs):
                    return f"fails requirements: {req.text}"
        if h.free_memory < unit.memory:
            return (f"{h.free_memory} MiB free of {cap.memory}, the chunk needs "
                    f"{unit.memory} MiB")
        if h.free_vcpus < unit.vcpus:
            return (f"{h.free_vcpus} vcpus free of {cap.vcpus}, the chunk needs "
                    f"{unit.vcpus}")
        if not capacity_only:
            for label, (node, ref) in unit.anti.items():
                if h.labels.get(label):
                    return f"runs a node of {label}, and {node} has anti_affinity: {ref}"
            for label in unit.labels:
                if label in h.anti:
                    node, ref = h.anti[label]
                    return f"runs {node}, which has anti_affinity: {ref}"
            if self.extra is not None:
                return self.extra(unit, cap)
        return None

    def choose(self, unit: Unit, exclude: Iterable[str] = (),
               until: Callable[[str], bool] | None = None, explain: bool = True
               ) -> tuple[str | None, str | dict[str, str]]:
        """(host, reason), or (None, {host: why not}) for every host (an empty dict unless
        ``explain``). ``until``: no host from the first for which it is true on (in the
        policy's order) can pass: the scan stops there."""
        skip = set(exclude)
        for name in self._candidates(unit):
            if until is not None and until(name):
                break
            if name in skip:
                continue
            if self.why_not(unit, name) is None:
                return name, self._reason(unit, name)
        if not explain:
            return None, {}
        why = {}
        for name in sorted(self.hosts):
            if name in skip:
                why[name] = "excluded (the chunk moves away from it)"
            else:
                why[name] = self.why_not(unit, name) or "passes (but another unit took it)"
        return None, why

    def _reason(self, unit: Unit, name: str) -> str:
        h = self.hosts[name]
        if self.rank is not None:
            return (f"rank {self.rank.text}: {name} ranks highest "
                    f"({self.rank.rank(h.attrs):g}) of the hosts that fit")
        if self.policy == "packing":
            return (f"packing: {name} has the least free memory that fits ({h.free_memory} MiB "
                    f"free, the chunk needs {unit.memory})")
        if self.policy == "striping":
            return (f"striping: {name} runs the fewest VMs ({h.vms}) of the hosts that fit, "
                    f"with {h.free_memory} MiB free")
        return (f"load-aware: {name} has the lowest CPU load ({h.cpu_load:.0%}) of the "
                f"hosts that fit")

    # ------------------------------------------------------------------ changes
    def take(self, unit: Unit, name: str) -> None:
        self._order.remove(name)
        self.hosts[name].add(unit)
        self._order.add(name)

    def release(self, unit: Unit, name: str) -> None:
        self._order.remove(name)
        self.hosts[name].add(unit, -1)
        self._order.add(name)

    def set_load(self, name: str, cpu_load: float) -> None:
        """The host's CPU load as a plan changes it (the rebalancer's moves)."""
        self._order.remove(name)
        self.hosts[name].cpu_load = cpu_load
        self.hosts[name].attrs["cpu_load"] = cpu_load
        self._order.add(name)


def place(project: Project, hosts: Mapping[str, HostCapacity],
          current: Mapping[str, str] | None = None) -> Placement:
    """Place every chunk of ``project``. ``current``: chunk -> host where it already runs."""
    current = current or {}
    settings = project.placement
    policy = getattr(settings, "policy", None) or "packing"
    extra_attrs = {k for c in hosts.values() for k in c.attributes}
    rank_text = getattr(settings, "rank", None)
    rank = compile_expression(rank_text, extra_attrs) if rank_text else None
    units, rejected = units_of(project, extra_attrs)
    sched = Scheduler(hosts, policy, rank)
    decisions: list[Decision] = []

    def take(unit: Unit, host: str, reason: str) -> None:
        sched.take(unit, host)
        decisions.extend(Decision(c.name, host, reason) for c in unit.chunks)

    pending: list[tuple[Unit, str]] = []
    # fixed units first (they win), then those already running, then the rest
    fixed = [u for u in units if u.host is not None]
    running = [u for u in units if u.host is None and _current(u, current) in hosts]
    for unit in fixed:
        reason = f"fixed by host: {unit.host} in the spec"
        if unit.host not in sched.hosts:
            rejected.append(Rejection(unit.name, unit.memory, {
                unit.host: f"{reason}, which is not one of the project's hosts"}))
        elif (why := sched.why_not(unit, unit.host, capacity_only=True)) is not None:
            rejected.append(Rejection(unit.name, unit.memory, {unit.host: f"{reason}, but {why}"}))
        else:
            take(unit, unit.host, reason)
    for unit in running:
        host = _current(unit, current)
        assert host is not None
        why = sched.why_not(unit, host)
        if why is None:
            take(unit, host, "already runs there")
        elif sched.why_not(unit, host, capacity_only=True) is not None:
            rejected.append(Rejection(unit.name, unit.memory, {host: f"already runs there, but "
                                                               f"{why}"}))
        else:     # it fits but no longer passes the filters (a changed spec): it moves
            pending.append((unit, f"moved: it runs on {host}, which now {why}"))
    done = {id(u) for u in fixed} | {id(u) for u in running}
    pending += [(u, "") for u in units if id(u) not in done]
    for unit, moved in sorted(pending, key=lambda p: (-p[0].memory, p[0].name)):
        host, reason = sched.choose(unit)
        if host is None:
            assert isinstance(reason, dict)
            rejected.append(Rejection(unit.name, unit.memory, reason))
        else:
            assert isinstance(reason, str)
            take(unit, host, f"{reason}; {moved}" if moved else reason)
    return Placement(tuple(decisions), tuple(rejected))


def _current(unit: Unit, current: Mapping[str, str]) -> str | None:
    """The one host the unit's chunks run on, if they run and agree."""
    hosts = {current[c.name] for c in unit.chunks if c.name in current}
    return next(iter(hosts)) if len(hosts) == 1 else None


def explain(rejected: Sequence[Rejection]) -> str:
    return "\n".join(str(r) for r in rejected)
