"""How resolved things look to a user: plain dicts for --output json, rich tables for text."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from elastic.model import Chunk, NodeSpec, Project


def project_dict(p: Project) -> dict[str, Any]:
    return {
        "project": p.name,
        "source": p.source,
        "nodes": [node_dict(n) for n in p.nodes],
        "chunks": [chunk_dict(c) for c in p.chunks],
        "networks": [{
            "name": n.name, "kind": n.kind, "cidr": n.cidr, "gateway": n.gateway,
            "mac_prefix": n.mac_prefix, "range": [n.range_first, n.range_last],
            "dhcp": n.dhcp, "bridge": n.bridge,
        } for n in p.networks],
        "hosts": [{
            "name": h.name, "uri": h.uri, "domain_type": h.domain_type, "memory": h.memory,
            "vcpus": h.vcpus, "reserved": {"memory": h.reserved_memory, "vcpus": h.reserved_vcpus},
            "groups": list(h.groups),
        } for h in p.hosts],
        "classes": list(p.classes),
        "clouds": {k: v.model_dump(mode="json") for k, v in p.clouds.items()},
        "scaling": p.scaling.model_dump(mode="json") if p.scaling else None,
        "frontends": {k: v.model_dump(mode="json") for k, v in p.frontends.items()},
    }


def node_dict(n: NodeSpec) -> dict[str, Any]:
    return {
        "name": n.name, "fullname": n.fullname, "group": n.group, "classes": list(n.classes),
        "image": n.image, "memory": n.memory, "vcpus": n.vcpus, "disk": n.disk,
        "free_space": n.free_space, "host": n.host, "chunk": n.chunk,
        "interfaces": [{
            "name": i.name, "network": i.network, "address": i.address, "netmask": i.netmask,
            "gateway": i.gateway, "mac": i.mac,
            "routes": [{"to": r.to, "via": r.via} for r in i.routes],
        } for i in n.interfaces],
        "nameservers": list(n.nameservers), "search": list(n.search),
        "users": [{"name": u.name, "groups": list(u.groups), "shell": u.shell, "uid": u.uid,
                   "ssh_keys": len(u.ssh_keys), "password": u.password is not None}
                  for u in n.users],
        "groups": [{"name": g.name, "gid": g.gid} for g in n.groups],
        "startup": list(n.startup),
        "files": [{"path": f.path, "mode": f.mode, "owner": f.owner} for f in n.files],
        "mounts": [{"source": x.source, "target": x.target, "type": x.type,
                    "options": x.options} for x in n.mounts],
        "hypervisor": n.hypervisor, "storage": n.storage, "priority": n.priority,
        "plugins": n.plugins,
    }


def chunk_dict(c: Chunk) -> dict[str, Any]:
    return {"name": c.name, "nodes": list(c.nodes), "networks": list(c.networks),
            "memory": c.memory, "vcpus": c.vcpus, "host": c.host}


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def mib(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:g}G" if value >= 1024 and value % 1024 == 0 else f"{value}M"


def print_plan(p: Project, console: Console) -> None:
    nodes = Table(title=f"project {p.name}: {len(p.nodes)} nodes", title_justify="left")
    for col in ("node", "classes", "host", "chunk", "memory", "vcpus", "interfaces"):
        nodes.add_column(col, no_wrap=col != "interfaces")
    limit = 200
    for n in p.nodes[:limit]:
        ifaces = "\n".join(f"{i.name} {i.network} {i.address or 'dhcp'}"
                           f"{'/' + str(i.prefixlen) if i.prefixlen is not None and i.address else ''}"
                           f" {i.mac}" for i in n.interfaces) or "-"
        nodes.add_row(n.name, " > ".join(n.classes) or "-", n.host or "(placement)", n.chunk,
                      mib(n.memory), str(n.vcpus), ifaces)
    console.print(nodes)
    if len(p.nodes) > limit:
        console.print(f"... and {len(p.nodes) - limit} more nodes (use --output json for all)")
    chunks = Table(title=f"{len(p.chunks)} chunks (each is placed on one host)",
                   title_justify="left")
    for col in ("chunk", "nodes", "private networks", "memory", "vcpus", "host"):
        chunks.add_column(col)
    for c in p.chunks[:limit]:
        names = ", ".join(c.nodes) if len(c.nodes) <= 6 else \
            f"{', '.join(c.nodes[:5])}, ... ({len(c.nodes)})"
        chunks.add_row(c.name, names, ", ".join(c.networks) or "-", mib(c.memory),
                       str(c.vcpus), c.host or "(placement)")
    console.print(chunks)


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def print_status(report: dict[str, Any], console: Console) -> None:
    hosts = Table(title="hosts", title_justify="left")
    for col in ("host", "type", "answers", "projects", "VMs", "memory assigned/total",
                "free", "groups"):
        hosts.add_column(col)
    for h in report["hosts"]:
        hosts.add_row(h["name"], h["domain_type"],
                      "yes" if h["answers"] else f"[red]no[/red] {h['error'] or ''}"[:60],
                      ", ".join(h["projects"]) or "-", str(len(h["vms"])),
                      f"{mib(h['memory_assigned'])}/{mib(h['memory_total'])}",
                      mib(h["memory_free"]), ", ".join(h["groups"]) or "-")
    console.print(hosts)
    nodes = Table(title="nodes", title_justify="left")
    for col in ("node", "state", "host", "addresses", "uptime", "last change"):
        nodes.add_column(col)
    for n in report["nodes"]:
        style = {"RUNNING": "green", "FAILED": "red"}.get(n["state"], "")
        state = f"[{style}]{n['state']}[/{style}]" if style else n["state"]
        addrs = " ".join(a["address"] for a in n["addresses"]) or "-"
        nodes.add_row(f"{n['name']}.{n['project']}", state, n["host"] or "-", addrs,
                      _uptime(n["uptime"]), n["reason"][:60])
    console.print(nodes)
    for sc in report.get("scaling", []):
        q = sc["queue"] or {}
        if not q:
            queue = "not read yet"
        elif not q.get("known"):
            queue = f"unknown ({q.get('error')})"
        else:
            queue = (f"{q['pending_jobs']} jobs ({q['pending_slots']} slots) waiting, "
                     f"{q['running_jobs']} running")
            if q.get("held") or q.get("errored"):
                queue += f", {q.get('held', 0)} held, {q.get('errored', 0)} in error"
        workers = ", ".join(f"{n} {s}" for s, n in sorted(sc["workers"].items())) or "none"
        console.print(f"autoscaling {sc['project']}: queue {queue}; workers: {workers}",
                      markup=False)
        for site, why in sorted(sc["breakers"].items()):
            console.print(f"  BREAKER OPEN on {site} {why}: no launches there", markup=False)
    for t in report.get("tiers", []):
        last = t.get("last") or {}
        values = ", ".join("-" if v is None else f"{v:.1f}" for v in last.get("values") or [])
        console.print(f"web tier {t['tier']} of {t['project']}: {t['size']} front-ends, "
                      f"serving {', '.join(t['serving']) or 'none'}"
                      + (f"; last look: {last['reason']}" if last.get("reason") else "")
                      + (f" [{values}]" if values else ""), markup=False)
    if report.get("decisions"):
        console.print("last decisions:")
        for d in report["decisions"]:
            what = d["kind"].removeprefix("decision:").replace("tier:decision", "tier")
            console.print(f"  {what} {d['node'] or ''}: {d['reason']}", markup=False)


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def rate(bps: float | None) -> str:
    """Bytes per second, in binary units."""
    if bps is None:
        return "-"
    for unit in ("B/s", "KiB/s", "MiB/s"):
        if abs(bps) < 1024:
            return f"{bps:.0f} {unit}" if unit == "B/s" else f"{bps:.1f} {unit}"
        bps /= 1024
    return f"{bps:.1f} GiB/s"


def print_host_loads(report: dict[str, Any], console: Console) -> None:
    """`elastic status --hosts`: per host, then per VM. CPU is in % of all the host's CPUs
    (a VM's own column: of its vcpus)."""
    hosts = Table(title=f"host load (samples {report['interval']:g} s apart, averaged over "
                        f"up to {report['window']:g} s)", title_justify="left")
    for col in ("host", "answers", "CPUs", "CPU", "guests", "own", "memory total", "free",
                "assigned", "VMs", "over", "CPU counted by"):
        hosts.add_column(col, justify="left" if col in ("host", "answers", "CPU counted by")
                         else "right")
    vms = Table(title="VM load", title_justify="left")
    for col in ("VM", "host", "CPU", "of its vcpus", "memory", "net rx", "net tx",
                "disk read", "disk write", "over"):
        vms.add_column(col, justify="left" if col in ("VM", "host") else "right")
    for h in report["hosts"]:
        answers = "yes" if h["answers"] else "[red]no[/red]"
        over = "-" if h["window"] is None else f"{h['window']:g} s"
        hosts.add_row(h["name"], answers, str(h["ncpus"] or "-"), percent(h["cpu"]),
                      percent(h["cpu_guests"]), percent(h["cpu_own"]), mib(h["memory_total"]),
                      mib(h["memory_free"]), mib(h["memory_assigned"]), str(len(h["vms"])),
                      over, h["cpu_source"])
        for v in h["vms"]:
            measured = v["window"] > 0
            vms.add_row(v["name"], h["name"], percent(v["cpu"]) if measured else "-",
                        percent(v["cpu_vcpus"]) if measured else "-", mib(v["memory"]),
                        *(rate(v[k]) if measured else "-"
                          for k in ("net_rx_bps", "net_tx_bps", "disk_rd_bps", "disk_wr_bps")),
                        f"{v['window']:g} s" if measured else "new")
    console.print(hosts)
    for h in report["hosts"]:
        if not h["answers"]:
            console.print(f"{h['name']} does not answer: {h['error']}", markup=False)
    if vms.row_count:
        console.print(vms)
    for note in report.get("notes", []):
        console.print(f"note: {note}", markup=False)


def print_rebalance(outcome: Any, dry_run: bool, console: Console) -> None:
    """`elastic rebalance`: each host's load, what is overloaded, the plan (each move and its
    reason), what fits nowhere, the notes; then what was done."""
    plan = outcome.plan
    loads = Table(title="host load", title_justify="left")
    for col in ("host", "CPUs", "CPU", "own", "memory free", "overloaded"):
        loads.add_column(col, justify="left" if col in ("host", "overloaded") else "right")
    for name, got in sorted(outcome.loads.items()):
        if got is None:
            loads.add_row(name, "-", "-", "-", "-", "not measured")
            continue
        loads.add_row(name, str(got.ncpus), f"{got.cpu:.0%}", f"{got.cpu_own:.0%}",
                      f"{got.memory_free_mib} MiB", plan.overloaded.get(name, ""))
    console.print(loads)
    verb = "would move" if dry_run else "move"
    if not plan.migrations:
        console.print("nothing to move", markup=False)
    for m in plan.migrations:
        console.print(f"{verb} {m.unit} ({', '.join(m.nodes)}) {m.src} -> {m.dst}: {m.reason}",
                      markup=False)
    for unit, why in plan.unplaced.items():
        console.print(f"{unit} fits no target, it stays:", markup=False)
        for host, reason in why.items():
            console.print(f"  {host}: {reason}", markup=False)
    for note in outcome.notes:
        console.print(f"note: {note}", markup=False)
    for unit, secs in outcome.migrated.items():
        console.print(f"{unit} migrated in {secs:.1f} s", markup=False)
    for unit, why in outcome.failed.items():
        console.print(f"{unit} FAILED to migrate (it stays where it was): {why}", markup=False)
