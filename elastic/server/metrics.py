"""Prometheus metrics of a state directory: a custom collector that reads the state DB (read
only) on every scrape, in its own registry (never prometheus_client's global one).

    from elastic.server.metrics import render, ElasticCollector, make_registry
    text = render(state_dir)                        # one scrape, as bytes (text format)
    registry = make_registry(state_dir)             # for a long-lived server: counters are
    prometheus_client.generate_latest(registry)     # then kept up incrementally

What is exported (units in the names):

- ``elastic_up`` (1: the DB was read, or there is none yet; 0: it could not be read) and
  ``elastic_info{version}``;
- ``elastic_nodes{project,state,site}``: nodes not DONE;
- ``elastic_queue_{pending_jobs,pending_slots,running_jobs}{project}`` and
  ``elastic_queue_age_seconds{project}``: the last queue summary the autoscaler recorded;
- ``elastic_decisions_total{project,kind}``: ``decision:<kind>`` events (``tier:decision``
  as kind ``tier``);
- ``elastic_launch_failures_total{project,site}``: node transitions to FAILED;
- ``elastic_boot_duration_seconds{project,site}``: a node's PENDING (``node-added``) to its
  first RUNNING after it;
- ``elastic_job_wait_seconds{project,site}``: started - submitted of the jobs table;
  ``elastic_time_to_first_job_seconds{project}``: for the newest worker that ran a job, its
  first job's start minus the time it became RUNNING;
- ``elastic_cloud_spend_dollars{project,cloud}``: an estimate: each cloud node's hours from
  its creation to DONE (or now) times the hourly price of its instance type
  (``clouds.<cloud>.spec.prices`` in the project's data; the type from the node's data
  ``instance_type``, else the event that started its instance). A node whose type or
  price is not known is left out, never guessed;
- ``elastic_vpn_peers{project,cloud}``, ``elastic_vpn_handshake_age_seconds{project,peer}``:
  from each recorded WireGuard hub (``wg show dump``), if it answers within 2 s in all;
- ``elastic_host_cpu_ratio{host}`` (over the last two stored samples),
  ``elastic_host_memory_{free,total}_bytes{host}`` (the newest sample);
- ``elastic_tier_frontends{project,tier}``, ``elastic_tier_serving{project,tier}``.

The event-based figures (decisions, launch failures, boot durations, cloud spend) are kept by
the collector and brought up to date from the events added since the last scrape, so a scrape
reads only what is new; a collector made for one scrape (``render``) reads the whole log.
A figure that cannot be worked out is left out: a scrape never fails on one bad record.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from elastic import __version__
from elastic.errors import ElasticError
from elastic.lifecycle import State
from elastic.monitoring import load
from elastic.state import Store
from elastic.state.store import EventRecord

log = logging.getLogger(__name__)

BOOT_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
JOB_WAIT_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
VPN_TIMEOUT = 2.0      # seconds all the hubs together may take to answer
MIB = 1024 * 1024
PRIVATE = "private"

Peers = Callable[[str, "str | None"], Sequence[Any]]   # (ifname, netns) -> [vpn.Peer]

_STARTED = re.compile(r"^(?:adopted )?instance \S+ \(([^()\s]+)\) starting on clouds\.")


def wireguard_peers(ifname: str, netns: str | None) -> list[Any]:
    """The peers of a WireGuard hub interface (``wg show IF dump``), within VPN_TIMEOUT."""
    from elastic.adapters.vpn import WireGuard
    return WireGuard(ifname, netns=netns, timeout=VPN_TIMEOUT).peers()


# ----------------------------------------------------------------------------- helpers

class _Histogram:
    """Bucket counts of one label set (non-cumulative, turned cumulative on export)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, le in enumerate(self.bounds):
            if value <= le:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for le, n in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((le, total))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


@dataclass
class _Life:
    """One incarnation of a node, as the event log tells it."""

    project: str
    node: str
    site: str
    created: float
    instance_type: str | None = None
    running: float | None = None      # its first RUNNING after it was added
    ended: float | None = None        # DONE


@dataclass
class _History:
    """What the collector has read of the event log so far."""

    after: int = 0
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    boots: dict[tuple[str, str], _Histogram] = field(default_factory=dict)
    live: dict[tuple[str, str], _Life] = field(default_factory=dict)      # (project, node)
    ended: list[_Life] = field(default_factory=list)                      # cloud ones only

    def read(self, events: Sequence[EventRecord], sites: dict[tuple[str, str], str]) -> None:
        for ev in events:
            self.after = max(self.after, ev.id)
            try:
                self._one(ev, sites)
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                log.debug("metrics: event %s left out: %s", ev.id, e)

    def _one(self, ev: EventRecord, sites: dict[tuple[str, str], str]) -> None:
        project = ev.project or ""
        kind = ev.kind
        if kind.startswith("decision:") or kind == "tier:decision":
            what = "tier" if kind == "tier:decision" else kind.removeprefix("decision:")
            key = (project, what)
            self.decisions[key] = self.decisions.get(key, 0) + 1
            return
        if ev.node is None or ev.project is None:
            return
        data = _dict(ev.data)
        key = (ev.project, ev.node)
        if kind == "node-added":
            site = str(data.get("site") or sites.get(key) or PRIVATE)
            self.live[key] = _Life(ev.project, ev.node, site, ev.time)
            return
        if kind != "transition":
            return
        life = self.live.get(key)
        if life is None:      # added before the log we read (or by hand): start it here
            site = str(data.get("site") or sites.get(key) or PRIVATE)
            life = self.live[key] = _Life(ev.project, ev.node, site, ev.time)
        if data.get("site"):
            life.site = str(data["site"])
        if ev.to_state == State.BOOT:
            m = _STARTED.match(ev.reason or "")
            if m:
                life.instance_type = m.group(1)
        elif ev.to_state == State.RUNNING and life.running is None:
            life.running = ev.time
            hist = self.boots.setdefault((ev.project, life.site), _Histogram(BOOT_BUCKETS))
            hist.observe(max(0.0, ev.time - life.created))
        elif ev.to_state == State.FAILED:
            fkey = (ev.project, life.site)
            self.failures[fkey] = self.failures.get(fkey, 0) + 1
        elif ev.to_state == State.DONE:
            life.ended = ev.time
            del self.live[key]
            if life.site != PRIVATE:
                self.ended.append(life)


# ---------------------------------------------------------------------------- collector

class ElasticCollector:
    """A prometheus_client collector of one state directory (see the module's docstring).

    ``now``: the clock (epoch seconds); ``vpn_peers``: how a hub's peers are read
    (``wireguard_peers`` by default; tests give a fake). Safe to scrape from several threads.
    """

    def __init__(self, state_dir: Path | str, *, now: Callable[[], float] | None = None,
                 vpn_peers: Peers | None = wireguard_peers) -> None:
        import time
        self.state_dir = Path(state_dir)
        self.now = now or time.time
        self.vpn_peers = vpn_peers
        self._lock = threading.Lock()
        self._history = _History()

    def describe(self) -> list[Metric]:
        return []      # nothing is read at registration; names are known at scrape time

    def collect(self) -> Iterator[Metric]:
        now = self.now()
        families: list[Metric] = []
        up = 1.0
        if Store.exists(self.state_dir):
            try:
                with self._lock, Store.open(self.state_dir, readonly=True) as store:
                    families = self._from_store(store, now)
            except ElasticError as e:     # busy, damaged, another schema: say so, do not fail
                log.warning("metrics: cannot read the state database: %s", e)
                up, families = 0.0, []
        yield GaugeMetricFamily("elastic_up", "1 if the state database could be read (or "
                                "there is none yet), else 0.", value=up)
        info = GaugeMetricFamily("elastic_info", "The elastic that serves these metrics.",
                                 labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        yield from families

    # ----------------------------------------------------------------------- the parts
    def _from_store(self, store: Store, now: float) -> list[Metric]:
        projects = store.list_projects()
        nodes = store.list_nodes(None)
        out: list[Metric] = []
        for part in (lambda: self._nodes(nodes), lambda: self._queue(projects, now),
                     lambda: self._events(store, nodes, projects, now),
                     lambda: self._jobs(store, nodes), lambda: self._hosts(store),
                     lambda: self._tiers(projects, nodes), lambda: self._vpn(store, projects,
                                                                              now)):
            try:
                out += part()
            except (ElasticError, TypeError, ValueError, KeyError, AttributeError) as e:
                # one part that cannot be worked out is left out; the scrape goes on
                log.warning("metrics: a part left out: %s: %s", type(e).__name__, e)
        return out

    @staticmethod
    def _nodes(nodes) -> list[Metric]:
        g = GaugeMetricFamily("elastic_nodes", "Nodes that are not DONE, by project, state "
                              "and site.", labels=["project", "state", "site"])
        counts: dict[tuple[str, str, str], int] = {}
        for n in nodes:
            if n.state != State.DONE:
                key = (n.project, str(n.state), n.site)
                counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            g.add_metric(list(key), n)
        return [g]

    @staticmethod
    def _queue(projects, now: float) -> list[Metric]:
        fams = {f: GaugeMetricFamily(f"elastic_queue_{f}", doc, labels=["project"])
                for f, doc in (("pending_jobs", "Jobs waiting, at the autoscaler's last look."),
                               ("pending_slots", "Slots the waiting jobs want."),
                               ("running_jobs", "Jobs running, at the autoscaler's last look."))}
        age = GaugeMetricFamily("elastic_queue_age_seconds", "Seconds since the autoscaler "
                                "last read the queue.", labels=["project"])
        for p in projects:
            queue = _dict(_dict(p.data).get("queue"))
            if not queue:
                continue
            at = _finite(queue.get("at"))
            if at is not None:
                age.add_metric([p.name], max(0.0, now - at))
            if not queue.get("known", True):
                continue
            for f, fam in fams.items():
                value = _finite(queue.get(f))
                if value is not None:
                    fam.add_metric([p.name], value)
        return [*fams.values(), age]

    def _events(self, store: Store, nodes, projects, now: float) -> list[Metric]:
        h = self._history
        newest = store.events(limit=1)
        if newest and newest[-1].id < h.after:      # another database: start again
            h = self._history = _History()
        sites = {(n.project, n.name): n.site for n in nodes}
        h.read(store.events(after=h.after), sites)
        decisions = CounterMetricFamily("elastic_decisions", "Autoscaling decisions, by kind "
                                        "(launch, drain, remove, replace, ...; tier: a web "
                                        "tier's).", labels=["project", "kind"])
        for key, n in sorted(h.decisions.items()):
            decisions.add_metric(list(key), n)
        failures = CounterMetricFamily("elastic_launch_failures", "Nodes that went FAILED, by "
                                       "site.", labels=["project", "site"])
        for key, n in sorted(h.failures.items()):
            failures.add_metric(list(key), n)
        boots = HistogramMetricFamily("elastic_boot_duration_seconds", "Seconds from a node's "
                                      "PENDING to its first RUNNING.",
                                      labels=["project", "site"])
        for key, hist in sorted(h.boots.items()):
            boots.add_metric(list(key), hist.buckets(), hist.sum)
        return [decisions, failures, boots, self._spend(h, nodes, projects, now)]

    @staticmethod
    def _spend(h: _History, nodes, projects, now: float) -> Metric:
        g = GaugeMetricFamily("elastic_cloud_spend_dollars", "Estimated cloud spend: each cloud "
                              "node's hours from creation to DONE (or now) times its hourly "
                              "price.", labels=["project", "cloud"])
        clouds = {p.name: _dict(_dict(p.data).get("clouds")) for p in projects}
        types = {(n.project, n.name): _dict(n.data).get("instance_type") for n in nodes}
        total: dict[tuple[str, str], float] = {}
        lives = [*h.ended, *(x for x in h.live.values() if x.site != PRIVATE)]
        for life in lives:
            spec = _dict(_dict(clouds.get(life.project, {}).get(life.site)).get("spec"))
            prices = _dict(spec.get("prices"))
            itype = life.instance_type
            if life.ended is None:
                itype = types.get((life.project, life.node)) or itype
            price = _finite(prices.get(itype)) if isinstance(itype, str) else None
            if price is None:
                continue
            end = life.ended if life.ended is not None else now
            key = (life.project, life.site)
            total[key] = total.get(key, 0.0) + max(0.0, end - life.created) / 3600.0 * price
        for key, dollars in sorted(total.items()):
            g.add_metric(list(key), round(dollars, 6))
        return g

    def _jobs(self, store: Store, nodes) -> list[Metric]:
        waits = HistogramMetricFamily("elastic_job_wait_seconds", "Seconds jobs waited: started "
                                      "- submitted.", labels=["project", "site"])
        first = GaugeMetricFamily("elastic_time_to_first_job_seconds", "For the newest worker "
                                  "that ran a job: its first job's start minus the time it "
                                  "became RUNNING.", labels=["project"])
        hists: dict[tuple[str, str], _Histogram] = {}
        starts: dict[tuple[str, str], list[float]] = {}       # (project, host) -> job starts
        for j in store.jobs(None):
            if j.started is None:
                continue
            if j.host:
                starts.setdefault((j.project, j.host), []).append(j.started)
            if j.submitted is None:
                continue
            key = (j.project, j.site or "unknown")
            hists.setdefault(key, _Histogram(JOB_WAIT_BUCKETS)).observe(
                max(0.0, j.started - j.submitted))
        for key, hist in sorted(hists.items()):
            waits.add_metric(list(key), hist.buckets(), hist.sum)
        running = {k: life.running for k, life in self._history.live.items()
                   if life.running is not None}
        newest: dict[str, tuple[float, float]] = {}        # project -> (RUNNING at, value)
        for n in nodes:
            at = running.get((n.project, n.name))
            ran = [t for t in starts.get((n.project, n.name), ()) if at is not None and t >= at]
            if at is None or not ran:
                continue
            if n.project not in newest or at > newest[n.project][0]:
                newest[n.project] = (at, min(ran) - at)
        for project, (_at, value) in sorted(newest.items()):
            first.add_metric([project], value)
        return [waits, first]

    @staticmethod
    def _hosts(store: Store) -> list[Metric]:
        cpu = GaugeMetricFamily("elastic_host_cpu_ratio", "Busy CPU over all the host's CPUs, "
                                "between its last two stored samples.", labels=["host"])
        free = GaugeMetricFamily("elastic_host_memory_free_bytes", "Free memory, newest sample.",
                                 labels=["host"])
        total = GaugeMetricFamily("elastic_host_memory_total_bytes", "Memory, newest sample.",
                                  labels=["host"])
        for h in store.hosts():
            samples = store.samples(h.name, 0.0)
            if not samples:
                continue
            last = samples[-1]
            free.add_metric([h.name], last.memory_free_mib * MIB)
            total.add_metric([h.name], last.memory_total_mib * MIB)
            got = load(samples[-2:], window=1e12) if len(samples) >= 2 else None
            if got is not None:
                cpu.add_metric([h.name], got.cpu)
        return [cpu, free, total]

    @staticmethod
    def _tiers(projects, nodes) -> list[Metric]:
        size = GaugeMetricFamily("elastic_tier_frontends", "Front-ends of a web tier (nodes "
                                 "of its group that are not DONE).", labels=["project", "tier"])
        serving = GaugeMetricFamily("elastic_tier_serving", "Front-ends in the tier's balancer "
                                    "upstream.", labels=["project", "tier"])
        for p in projects:
            for tier, rec in sorted(_dict(_dict(p.data).get("tiers")).items()):
                rec = _dict(rec)
                group = rec.get("group")
                if group is not None:
                    size.add_metric([p.name, tier], sum(
                        1 for n in nodes if n.project == p.name and n.state != State.DONE
                        and _dict(n.data).get("group") == group))
                elif _finite(_dict(rec.get("last")).get("size")) is not None:
                    size.add_metric([p.name, tier], _dict(rec["last"])["size"])
                if isinstance(rec.get("serving"), list):
                    serving.add_metric([p.name, tier], len(rec["serving"]))
        return [size, serving]

    def _vpn(self, store: Store, projects, now: float) -> list[Metric]:
        peers_g = GaugeMetricFamily("elastic_vpn_peers", "Peers on the VPN hub of a project's "
                                    "cloud.", labels=["project", "cloud"])
        age_g = GaugeMetricFamily("elastic_vpn_handshake_age_seconds", "Seconds since a peer's "
                                  "latest handshake with the hub.", labels=["project", "peer"])
        hubs: list[tuple[str, str, str, str | None]] = []
        for p in projects:
            for cloud, entry in sorted(_dict(_dict(p.data).get("clouds")).items()):
                for hub in _dict(entry).get("hubs") or ():
                    hub = _dict(hub)
                    if hub.get("type", "wireguard") == "wireguard" and hub.get("ifname"):
                        hubs.append((p.name, cloud, str(hub["ifname"]), hub.get("netns")))
        if not hubs or self.vpn_peers is None:
            return []
        read = self.vpn_peers
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(hubs)),
                                                     thread_name_prefix="metrics-vpn")
        try:
            futures = {pool.submit(read, ifname, netns): (p, c)
                       for p, c, ifname, netns in hubs}
            done, _late = concurrent.futures.wait(futures, timeout=VPN_TIMEOUT)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for fut in done:
            project, cloud = futures[fut]
            try:
                peers = list(fut.result())
            except (ElasticError, OSError, ValueError) as e:    # a hub that does not answer
                log.debug("metrics: hub of %s/%s: %s", project, cloud, e)
                continue
            names = {lease.address: lease.node
                     for lease in store.leases(project, f"vpn:{cloud}")}
            peers_g.add_metric([project, cloud], len(peers))
            for peer in peers:
                if not peer.latest_handshake:
                    continue      # never shook hands: no age
                node = next((names[a.split("/")[0]] for a in peer.allowed_ips
                             if a.split("/")[0] in names), None)
                label = node or f"{peer.public_key[:8]}..."
                age_g.add_metric([project, label], max(0.0, now - peer.latest_handshake))
        return [peers_g, age_g]


def make_registry(state_dir: Path | str, *, now: Callable[[], float] | None = None,
                  vpn_peers: Peers | None = wireguard_peers) -> CollectorRegistry:
    """A registry of its own holding one ``ElasticCollector`` of ``state_dir``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ElasticCollector(state_dir, now=now, vpn_peers=vpn_peers))
    return registry


def render(state_dir: Path | str, *, now: Callable[[], float] | None = None,
           vpn_peers: Peers | None = wireguard_peers) -> bytes:
    """One scrape of ``state_dir`` in Prometheus' text format."""
    return generate_latest(make_registry(state_dir, now=now, vpn_peers=vpn_peers))


__all__ = ["BOOT_BUCKETS", "JOB_WAIT_BUCKETS", "ElasticCollector", "make_registry", "render",
           "wireguard_peers"]
