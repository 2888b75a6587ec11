"""The load of hosts and VMs, from samples of their counters. Pure: the samples (and their
times) come from the caller; ``elastic.adapters.monitor`` takes them from libvirt.

A sample holds cumulative counters (CPU time in ns, bytes moved); a load is what they say
over an interval: how busy the host's CPUs were, how much of that its guests used, and the
byte rates of each guest. ``load`` averages over a window of samples, so that one busy
interval does not look like a busy host (the rebalancer moves VMs on this).

    loads = load(store.samples("h1", since=now - 120), window=60)
    loads.cpu, loads.cpu_guests, loads.cpu_own   # fractions of all of h1's CPUs

Fractions are 0..1 of *all* the host's CPUs (a host with 4 CPUs, one of them busy: 0.25);
they are not clamped, so timing jitter can show 1.01. Rates are bytes per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

NS = 1_000_000_000

_COUNTERS = ("cpu_time_ns", "net_rx_bytes", "net_tx_bytes", "disk_rd_bytes", "disk_wr_bytes")


def _check_count(owner: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: {field} must be a whole number >= 0, not {value!r}")


@dataclass(frozen=True)
class DomainSample:
    """One domain's counters at the time of its host's sample."""

    name: str                 # the libvirt domain name: node.project for elastic's domains
    project: str | None       # None: not elastic's domain
    node: str | None
    cpu_time_ns: int          # CPU time of the whole guest (all vcpus and QEMU's own threads)
    vcpus: int
    memory_mib: int           # what the guest holds now (its current memory)
    net_rx_bytes: int = 0     # summed over its interfaces
    net_tx_bytes: int = 0
    disk_rd_bytes: int = 0    # summed over its disks
    disk_wr_bytes: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a domain sample needs a name, not {self.name!r}")
        for f in (*_COUNTERS, "vcpus", "memory_mib"):
            _check_count(f"domain {self.name}", f, getattr(self, f))


@dataclass(frozen=True)
class HostSample:
    """A host's counters at time ``t`` (epoch seconds, given by whoever took it)."""

    host: str
    t: float
    cpu_busy_ns: int          # busy CPU time of the host since some start, all CPUs summed
    ncpus: int
    memory_total_mib: int
    memory_free_mib: int
    domains: tuple[DomainSample, ...] = ()
    cpu_source: str = "libvirt"   # where cpu_busy_ns came from: "libvirt" or "cgroup <path>"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"a host sample needs a host name, not {self.host!r}")
        if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) \
                or not math.isfinite(self.t):
            raise ValueError(f"host {self.host}: t must be a finite number of seconds, "
                             f"not {self.t!r}")
        for f in ("cpu_busy_ns", "memory_total_mib", "memory_free_mib"):
            _check_count(f"host {self.host}", f, getattr(self, f))
        _check_count(f"host {self.host}", "ncpus", self.ncpus)
        if self.ncpus < 1:
            raise ValueError(f"host {self.host}: ncpus must be at least 1, not {self.ncpus}")
        names = [d.name for d in self.domains]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"host {self.host}: domains {', '.join(twice)} appear twice in "
                             "one sample")

    def domain(self, name: str) -> DomainSample | None:
        return next((d for d in self.domains if d.name == name), None)


@dataclass(frozen=True)
class DomainLoad:
    """One domain's load over the part of the window in which it ran without a restart."""

    name: str
    project: str | None
    node: str | None
    cpu: float                # fraction of all the HOST's CPUs
    cpu_vcpus: float          # fraction of the domain's own vcpus (1.0: every vcpu busy)
    vcpus: int
    memory_mib: int           # from the newest sample
    net_rx_bps: float
    net_tx_bps: float
    disk_rd_bps: float
    disk_wr_bps: float
    window: float             # seconds measured; 0.0: seen once only, so no rates yet (0)


@dataclass(frozen=True)
class HostLoad:
    host: str
    t: float                  # time of the newest sample
    window: float             # seconds the CPU figures actually cover
    cpu: float                # fraction of all the host's CPUs that was busy
    cpu_guests: float         # ... of which the domains used this much
    cpu_own: float            # cpu - cpu_guests (>= 0): the host's own load, no migration moves it
    ncpus: int
    memory_total_mib: int     # from the newest sample
    memory_free_mib: int
    memory_assigned_mib: int  # the domains' memory, summed
    domains: tuple[DomainLoad, ...]
    samples: int              # how many samples the window held


def load(samples: Sequence[HostSample], window: float) -> HostLoad | None:
    """The load of one host over the newest ``window`` seconds of ``samples``.

    The window starts at the newest sample that is at least ``window`` seconds older than
    the newest one (or at the oldest sample, when none is that old): ``HostLoad.window``
    says how much it covers. The CPU fractions are the busy time between the window's
    first and last sample over the CPU time there was (wall time x CPUs); memory is the
    newest sample's.

    Counters that go backwards were reset (a host or libvirtd restarted, a cgroup made
    again, a domain restarted): the interval in which that happened says nothing and is
    left out, for the host and for each domain alike; so is an interval in which the
    host's counter changed its source (``cpu_source``: libvirt's node counters or a
    cgroup). Each domain of the newest sample is measured over the samples in which it
    was there without such a reset (a domain that has just started, seen once, has no
    rates yet: ``window`` 0). The guests' share
    (``cpu_guests``) counts every domain of the window, also one that stopped or left
    before the newest sample: its CPU time was the guests', not the host's own.

    None when there is nothing to measure: fewer than two samples (at distinct times), or
    no interval in which the host's counter ran forward. The samples may come in any
    order; two at the same time count as one (the later given). Raises ValueError for a
    window that is not a positive number of seconds, or samples of several hosts."""
    if isinstance(window, bool) or not isinstance(window, (int, float)) \
            or not math.isfinite(window) or window <= 0:
        raise ValueError(f"the window must be a positive number of seconds, not {window!r}")
    hosts = sorted({s.host for s in samples})
    if len(hosts) > 1:
        raise ValueError(f"load() takes the samples of one host, not of {', '.join(hosts)}")
    by_time: dict[float, HostSample] = {}
    for s in samples:
        by_time[float(s.t)] = s           # the later given wins at the same time
    ordered = [by_time[t] for t in sorted(by_time)]
    if len(ordered) < 2:
        return None
    last = ordered[-1]
    start = 0
    for i, s in enumerate(ordered):
        if s.t <= last.t - window:
            start = i
    span = ordered[start:]

    busy = guests = 0
    capacity = covered = 0.0
    for a, b in zip(span, span[1:], strict=False):
        if b.cpu_busy_ns < a.cpu_busy_ns or b.cpu_source != a.cpu_source:
            continue                      # the host's counter was reset in this interval
        dt = b.t - a.t
        busy += b.cpu_busy_ns - a.cpu_busy_ns
        capacity += dt * b.ncpus * NS
        covered += dt
        for d in b.domains:
            before = a.domain(d.name)
            if before is not None and d.cpu_time_ns >= before.cpu_time_ns:
                guests += d.cpu_time_ns - before.cpu_time_ns
    if capacity <= 0:
        return None
    cpu, cpu_guests = busy / capacity, guests / capacity
    return HostLoad(
        host=last.host, t=last.t, window=covered, cpu=cpu, cpu_guests=cpu_guests,
        cpu_own=max(0.0, cpu - cpu_guests), ncpus=last.ncpus,
        memory_total_mib=last.memory_total_mib, memory_free_mib=last.memory_free_mib,
        memory_assigned_mib=sum(d.memory_mib for d in last.domains),
        domains=tuple(_domain_load(span, d) for d in last.domains), samples=len(span))


def _continuous(before: DomainSample | None, after: DomainSample) -> bool:
    return before is not None and all(getattr(after, c) >= getattr(before, c)
                                      for c in _COUNTERS)


def _domain_load(span: Sequence[HostSample], d: DomainSample) -> DomainLoad:
    """``d`` (of the newest sample) over the samples where it was there without a reset."""
    first = len(span) - 1
    while first > 0 and _continuous(span[first - 1].domain(d.name), span[first].domain(d.name)):
        first -= 1
    d0 = span[first].domain(d.name) or d
    dt = span[-1].t - span[first].t
    ncpus = span[-1].ncpus

    def rate(counter: str) -> float:
        return (getattr(d, counter) - getattr(d0, counter)) / dt if dt > 0 else 0.0

    cpu_ns = rate("cpu_time_ns")
    return DomainLoad(
        name=d.name, project=d.project, node=d.node, cpu=cpu_ns / (ncpus * NS),
        cpu_vcpus=cpu_ns / (d.vcpus * NS) if d.vcpus else 0.0, vcpus=d.vcpus,
        memory_mib=d.memory_mib, net_rx_bps=rate("net_rx_bytes"),
        net_tx_bps=rate("net_tx_bytes"), disk_rd_bps=rate("disk_rd_bytes"),
        disk_wr_bps=rate("disk_wr_bytes"), window=dt)
