"""What `elastic status` and `elastic console` need: the state DB joined with what each host
reports right now (hosts that do not answer are shown as such, never hidden)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from elastic.adapters.providers.libvirt import LibvirtHost
from elastic.clock import SystemClock
from elastic.errors import PermanentError
from elastic.lifecycle import State
from elastic.state import Store

PROBE_TIMEOUT = 8.0


def collect(state_dir: Path, project: str | None = None) -> dict[str, Any]:
    now = SystemClock().now()
    if not Store.exists(state_dir):
        return {"hosts": [], "nodes": [], "projects": [], "scaling": [], "decisions": []}
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
            groups = set(data.get("members", {})) | {(data.get("queue") or {}).get("group")}
            by_state: dict[str, int] = {}
            for n in records:
                if n.project == p and (n.data or {}).get("group") in groups:
                    by_state[str(n.state)] = by_state.get(str(n.state), 0) + 1
            scaling.append({"project": p, "queue": data.get("queue"), "workers": by_state,
                            "breakers": (data.get("autoscale") or {}).get("breakers", {})})
        reasons = {}
        decisions = []
        for p in projects:
            for ev in store.events(p):
                if ev.node:
                    reasons[(p, ev.node)] = ev.reason
                if ev.kind.startswith("decision:") or ev.kind == "note":
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
                      "memory": (n.data or {}).get("memory"), "vcpus": (n.data or {}).get("vcpus")})
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
            "scaling": scaling, "decisions": decisions[-10:]}


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
