"""What `elastic status` and `elastic console` need: the state DB joined with what each host
reports right now (hosts that do not answer are shown as such, never hidden).

`elastic status --hosts` (``host_loads``): two samples of every host, ``interval`` apart,
stored in the state DB; each host's load is then averaged over its stored samples of the
last ``window`` seconds (``elastic.monitoring.load``)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.adapters.monitor import sample
from elastic.adapters.providers.libvirt import LibvirtHost
from elastic.clock import Clock, SystemClock
from elastic.errors import ConfigError, PermanentError
from elastic.lifecycle import State
from elastic.model import HostSpec
from elastic.monitoring import HostLoad, HostSample, load
from elastic.state import Store

PROBE_TIMEOUT = 8.0
SAMPLE_INTERVAL = 2.0    # seconds between the two samples of `status --hosts`
LOAD_WINDOW = 60.0       # seconds of stored samples the load is averaged over


def collect(state_dir: Path, project: str | None = None) -> dict[str, Any]:
    now = SystemClock().now()
    if not Store.exists(state_dir):
        return {"hosts": [], "nodes": [], "projects": [], "scaling": [], "tiers": [],
                "decisions": []}
    with Store.open(state_dir, readonly=True) as store:
        if project is not None and store.get_project(project) is None:
            raise PermanentError(f"no project named {project} in {state_dir}")
        projects = [p.name for p in store.list_projects() if project in (None, p.name)]
        records = [n for n in store.list_nodes(project) if n.state != State.DONE]
        leases = {}
        for p in projects:
            for lease in store.leases(p):
                leases.setdefault((p, lease.node), []).append(
                    {"iface": lease.iface, "network": lease.network, "address": lease.address,
                     "mac": lease.mac})
        hosts = store.hosts()
        scaling = []
        for p in projects:
            data = (store.get_project(p).data or {})
            if "queue" not in data and "autoscale" not in data:
                continue
            tier_groups = {t.get("group") for t in (data.get("tiers") or {}).values()}
            groups = (set(data.get("members", {})) | {(data.get("queue") or {}).get("group")}) \
                - tier_groups
            by_state: dict[str, int] = {}
            for n in records:
                if n.project == p and (n.data or {}).get("group") in groups:
                    by_state[str(n.state)] = by_state.get(str(n.state), 0) + 1
            scaling.append({"project": p, "queue": data.get("queue"), "workers": by_state,
                            "breakers": (data.get("autoscale") or {}).get("breakers", {})})
        tiers = []
        for p in projects:
            for name, t in sorted(((store.get_project(p).data or {}).get("tiers") or {}).items()):
                members = [n.name for n in records
                           if n.project == p and (n.data or {}).get("group") == t.get("group")]
                tiers.append({"project": p, "tier": name, "group": t.get("group"),
                              "size": len(members), "serving": t.get("serving", []),
                              "last": t.get("last"), "history": t.get("history", [])})
        reasons = {}
        decisions = []
        for p in projects:
            for ev in store.events(p):
                if ev.node:
                    reasons[(p, ev.node)] = ev.reason
                if ev.kind.startswith("decision:") or ev.kind in ("note", "tier:decision"):
                    decisions.append({"project": p, "time": ev.time, "kind": ev.kind,
                                      "node": ev.node, "reason": ev.reason})
    live = _probe(hosts)
    nodes = []
    for n in records:
        uptime = now - n.state_since if n.state == State.RUNNING else None
        nodes.append({"project": n.project, "name": n.name, "state": str(n.state),
                      "host": n.host, "site": n.site, "addresses": leases.get((n.project, n.name), []),
                      "uptime": round(uptime, 1) if uptime is not None else None,
                      "since": n.state_since, "reason": reasons.get((n.project, n.name), ""),
                      "memory": (n.data or {}).get("memory"), "vcpus": (n.data or {}).get("vcpus"),
                      "chunk": (n.data or {}).get("chunk"), "group": (n.data or {}).get("group")})
    host_rows = []
    for h in hosts:
        info = live.get(h.name, {})
        mine = [n for n in nodes if n["host"] == h.name]
        assigned = sum((n["memory"] or 0) for n in mine if n["state"] != "STOPPED")
        host_rows.append({
            "name": h.name, "uri": h.uri, "domain_type": h.domain_type,
            "groups": list(h.groups), "answers": "error" not in info,
            "error": info.get("error"),
            "memory_total": info.get("memory_mib") or h.memory or None,
            "memory_free": info.get("free_mib"),
            "memory_assigned": assigned,
            "vcpus": info.get("vcpus") or h.vcpus or None,
            "projects": sorted({n["project"] for n in mine}),
            "vms": info.get("vms", []),
        })
    return {"projects": projects, "hosts": host_rows, "nodes": nodes,
            "scaling": scaling, "tiers": tiers, "decisions": decisions[-10:]}


def _probe(hosts) -> dict[str, dict[str, Any]]:
    def one(h) -> tuple[str, dict[str, Any]]:
        host = LibvirtHost(h.name, h.uri, timeout=PROBE_TIMEOUT)
        try:
            info = host.info()
            vms = [{"name": d.name, "active": d.active, "project": d.project, "node": d.node,
                    "memory": d.memory_mib, "vcpus": d.vcpus} for d in host.domains()]
            return h.name, {"memory_mib": info.memory_mib, "free_mib": info.free_mib,
                            "vcpus": info.vcpus, "vms": vms}
        except Exception as e:
            return h.name, {"error": str(e)}
        finally:
            host.close()

    if not hosts:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as ex:
        return dict(ex.map(one, hosts))


# ------------------------------------------------------------------ status --hosts

@dataclass(frozen=True)
class MonitorTarget:
    """A host to sample, and how: its load from a cgroup (with the host's share of the
    machine as its capacity) or from libvirt's node counters."""

    name: str
    uri: str
    cpu_cgroup: str | None = None
    ncpus: int | None = None       # only with cpu_cgroup: the spec's vcpus
    memory_mib: int | None = None  # ... and memory


def host_loads(state_dir: Path, project: str | None = None, *,
               interval: float = SAMPLE_INTERVAL, window: float = LOAD_WINDOW,
               clock: Clock | None = None) -> dict[str, Any]:
    """Sample every host of ``project`` (of every project if None) twice, ``interval``
    seconds apart, store the samples, and report each host's load over the last
    ``window`` seconds of stored samples (fractions of all its CPUs; bytes per second).
    A host that does not answer is reported with its error."""
    for flag, value in (("--interval", interval), ("--window", window)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{flag} must be a positive number of seconds, not {value!r}",
                              key=flag)
    clock = clock or SystemClock()
    report: dict[str, Any] = {"time": clock.now(), "interval": interval, "window": window,
                              "hosts": [], "notes": []}
    if not Store.exists(state_dir):
        report["notes"].append(f"no state database in {state_dir}: no hosts known")
        return report
    measured, notes = measure(state_dir, project, interval=interval, window=window,
                              clock=clock)
    report["notes"] += notes
    report["hosts"] = [load_dict(t, got, error) for t, got, error in measured]
    report["time"] = clock.now()
    return report


def measure(state_dir: Path, project: str | None = None, *, interval: float = SAMPLE_INTERVAL,
            window: float = LOAD_WINDOW, clock: Clock | None = None,
            hosts: Sequence[HostSpec] | None = None
            ) -> tuple[list[tuple[MonitorTarget, HostLoad | None, str | None]], list[str]]:
    """Sample the hosts of ``project`` (all if None; exactly ``hosts`` if given) twice,
    ``interval`` apart, store the samples, and give each host's load over the stored
    samples of the last ``window`` seconds (None if not measurable) and its error (None if
    it answered)."""
    clock = clock or SystemClock()
    with Store.open(state_dir) as store:
        if project is not None and store.get_project(project) is None:
            raise PermanentError(f"no project named {project} in {state_dir}")
        targets, notes = monitor_targets(store, project, hosts)
    taken = _sample_hosts(targets, interval, clock)
    out: list[tuple[MonitorTarget, HostLoad | None, str | None]] = []
    with Store.open(state_dir) as store:
        for samples, _error in taken.values():
            for s in samples:
                store.add_sample(s)
        for t in targets:
            samples, error = taken[t.name]
            newest = samples[-1].t if samples else clock.now()
            since = min([newest - window, *(s.t for s in samples)])
            history = store.samples(t.name, since)
            out.append((t, load(history, window) if history else None, error))
    return out, notes


def monitor_targets(store: Store, project: str | None,
                    hosts: Sequence[HostSpec] | None = None
                    ) -> tuple[list[MonitorTarget], list[str]]:
    """The hosts of ``project`` (every host in the DB if None), each with its cpu_cgroup
    from the specs the projects were brought up from; or exactly ``hosts`` (a resolved
    project's: the rebalancer measures the targets too, not only the hosts in use)."""
    if hosts is not None:
        return [MonitorTarget(h.name, h.uri, h.cpu_cgroup, h.vcpus if h.cpu_cgroup else None,
                              h.memory if h.cpu_cgroup else None) for h in hosts], []
    projects = [p for p in store.list_projects() if project in (None, p.name)]
    records = store.hosts()
    if project is not None:
        used = set((projects[0].data or {}).get("hosts", [])) | {
            n.host for n in store.list_nodes(project) if n.host and n.state != State.DONE}
        records = [h for h in records if h.name in used]
    specs, notes = _host_specs(store, projects, {h.name for h in records})
    targets = []
    for h in records:
        spec = specs.get(h.name)
        cgroup = (h.data or {}).get("cpu_cgroup") or (spec.cpu_cgroup if spec else None)
        if cgroup:
            ncpus = (spec.vcpus if spec else None) or h.vcpus or None
            memory = (spec.memory if spec else None) or h.memory or None
            targets.append(MonitorTarget(h.name, h.uri, cgroup, ncpus, memory))
        else:
            targets.append(MonitorTarget(h.name, h.uri))
    return targets, notes


def _host_specs(store: Store, projects, wanted: set[str]) -> tuple[dict[str, HostSpec],
                                                                     list[str]]:
    """The host specs of the projects' recorded spec files (the state DB keeps no cgroup)."""
    from elastic.engine.projects import resolve_with_state
    specs: dict[str, HostSpec] = {}
    notes = []
    for p in projects:
        if wanted <= set(specs):
            break
        try:
            spec = Path(p.source)
            resolved = resolve_with_state(spec, store.state_dir,
                                          lab=bool((p.data or {}).get("lab")))
        except Exception as e:   # a spec that moved or broke: libvirt's counters still work
            notes.append(f"project {p.name}: cannot read its spec {p.source} ({e}); its hosts "
                         "are measured by libvirt's node counters")
            continue
        for h in resolved.hosts:
            specs.setdefault(h.name, h)
    return specs, notes


def _sample_hosts(targets: list[MonitorTarget], interval: float,
                  clock: Clock) -> dict[str, tuple[list[HostSample], str | None]]:
    """Two samples of every target, ``interval`` apart, all hosts at once. Each sample has
    PROBE_TIMEOUT; a host that does not finish in time is reported, not waited for."""
    out: dict[str, tuple[list[HostSample], str | None]] = {}
    lock = threading.Lock()

    def one(t: MonitorTarget) -> None:
        host = LibvirtHost(t.name, t.uri, timeout=PROBE_TIMEOUT)
        samples: list[HostSample] = []
        error = None
        try:
            for i in range(2):
                if i:
                    clock.sleep(interval)
                samples.append(sample(host, clock.now(), t.cpu_cgroup, ncpus=t.ncpus,
                                      memory_mib=t.memory_mib))
        except Exception as e:
            error = str(e) or type(e).__name__
        finally:
            with lock:
                out[t.name] = (samples, error)
            host.close()

    threads = [threading.Thread(target=one, args=(t,), daemon=True, name=f"sample-{t.name}")
               for t in targets]
    for th in threads:
        th.start()
    deadline = 2 * PROBE_TIMEOUT + interval + 5
    t0 = time.monotonic()
    for th in threads:
        th.join(max(0.0, deadline - (time.monotonic() - t0)))
    with lock:
        for t in targets:
            out.setdefault(t.name, ([], f"no answer in {deadline:g} s"))
        return dict(out)


def load_dict(t: MonitorTarget, got: HostLoad | None, error: str | None) -> dict[str, Any]:
    """One host's row of `status --hosts -o json`: fractions of all the host's CPUs (0..1),
    MiB, bytes per second; figures None when there is nothing to measure yet."""
    row: dict[str, Any] = {
        "name": t.name, "uri": t.uri, "answers": error is None, "error": error,
        "cpu_source": f"cgroup {t.cpu_cgroup}" if t.cpu_cgroup else "libvirt",
        "window": None, "samples": 0, "ncpus": None, "cpu": None, "cpu_guests": None,
        "cpu_own": None, "memory_total": None, "memory_free": None, "memory_assigned": None,
        "vms": []}
    if got is None:
        return row
    row.update({
        "window": round(got.window, 2), "samples": got.samples, "ncpus": got.ncpus,
        "cpu": round(got.cpu, 4), "cpu_guests": round(got.cpu_guests, 4),
        "cpu_own": round(got.cpu_own, 4), "memory_total": got.memory_total_mib,
        "memory_free": got.memory_free_mib, "memory_assigned": got.memory_assigned_mib,
        "vms": [{"name": d.name, "project": d.project, "node": d.node,
                 "cpu": round(d.cpu, 4), "cpu_vcpus": round(d.cpu_vcpus, 4),
                 "vcpus": d.vcpus, "memory": d.memory_mib,
                 "net_rx_bps": round(d.net_rx_bps, 1), "net_tx_bps": round(d.net_tx_bps, 1),
                 "disk_rd_bps": round(d.disk_rd_bps, 1), "disk_wr_bps": round(d.disk_wr_bps, 1),
                 "window": round(d.window, 2)} for d in got.domains]})
    return row


def console_command(state_dir: Path, node: str) -> list[str]:
    """virsh console for NODE or NODE.PROJECT."""
    rec, host = _node_host(state_dir, node)
    return ["virsh", "-c", host.uri, "console", rec.full_name]


def console_log(state_dir: Path, node: str) -> str:
    """What NODE (or NODE.PROJECT) wrote on its serial console since it was made (the log
    volume elastic reads to see a node become ready)."""
    rec, h = _node_host(state_dir, node)
    host = LibvirtHost(h.name, h.uri, timeout=PROBE_TIMEOUT)
    try:
        return host.read_volume(f"{rec.project}-{rec.name}.console.log").decode(
            errors="replace")
    finally:
        host.close()


def _node_host(state_dir: Path, node: str):
    name, _, project = node.partition(".")
    with Store.open(state_dir, readonly=True) as store:
        matches = [n for n in store.list_nodes(project or None)
                   if n.name == name and n.state != State.DONE]
        if not matches:
            raise PermanentError(f"no node {node} (see elastic status)")
        if len(matches) > 1:
            raise PermanentError(f"{node} is in several projects: "
                                 + ", ".join(m.full_name for m in matches) + "; say which")
        rec = matches[0]
        hosts = {h.name: h for h in store.hosts()}
    if rec.host not in hosts:
        raise PermanentError(f"{rec.full_name} has no host")
    return rec, hosts[rec.host]
