"""The status page: one self-contained HTML document (inline CSS and SVG, no JavaScript, no
external assets) that reloads itself every 10 seconds.

    html = render_page(status, timeline, events, now, project="sge")

Pure: everything shown comes from the arguments (``now`` included); nothing here reads a
clock, a file, a socket or the state database. Every value is escaped (jinja2 with
autoescape; the hand-made SVG escapes its text too), so a node name or a reason holding
``<script>`` shows as text.

Arguments:
- ``status``: the dict of ``elastic status -o json`` (``elastic.engine.status.collect``):
  hosts (with vms), nodes (project, name, state, host, site, addresses, uptime, reason,
  memory, vcpus, and ``chunk`` where known), scaling, tiers, decisions. Missing keys are
  treated as empty.
- ``timeline``: queue samples, oldest first, each either a ``QueueSampleRecord`` (``t``,
  ``pending_jobs``, ``pending_slots``, ``running_jobs``, ``workers``: site -> count, site
  'private' or a cloud) or a point of ``elastic.engine.report.Timeline`` (``t``, ...,
  ``workers_private``, ``workers_cloud``), or a mapping with those keys: read by name.
- ``events``: dicts (or event records) with time, project, node, kind, reason (and
  optionally from_state, to_state); the newest 50 are shown, newest first.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jinja2
from markupsafe import Markup

from elastic.engine.report import TimelinePoint, point_of, points_from_samples

REFRESH_SECONDS = 10
EVENTS_SHOWN = 50
COLOURS = {"queue": "#d62728", "private": "#1f77b4", "cloud": "#ff7f0e"}
PRIVATE = "private"


# ------------------------------------------------------------------------ small helpers

def _get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]``, else ``default``."""
    if isinstance(obj, Mapping):
        value = obj.get(name, default)
    else:
        value = getattr(obj, name, default)
    return default if value is None else value


def mib(value: Any) -> str:
    """MiB as the CLI shows them: 2048 -> 2G, 1536 -> 1536M; '-' when unknown."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    value = int(value)
    return f"{value // 1024}G" if value >= 1024 and value % 1024 == 0 else f"{value}M"


def ago(seconds: float) -> str:
    """A duration before now, short: '5 s ago', '3 min ago', '2 h 05 min ago', '3 d ago'."""
    if seconds < 1:
        return "just now"
    s = int(seconds)
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min ago"
    return f"{s // 86400} d {s % 86400 // 3600} h ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def clock_time(t: float, seconds: bool = False) -> str:
    """Local wall-clock time of epoch ``t`` (HH:MM, or HH:MM:SS)."""
    return datetime.datetime.fromtimestamp(t).strftime("%H:%M:%S" if seconds else "%H:%M")


# ------------------------------------------------------------------------------ timeline

# one look at the queue, and a list of them (several projects' added up): the report's
as_point = point_of
as_points = points_from_samples


def nice_ceiling(value: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step): a round top >= value and a round step (1, 2 or 5 x 10^k) dividing it
    into at most ``ticks`` steps. Never below 1."""
    value = max(float(value), 1.0)
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        step = m * power
        if step >= raw:
            break
    step = max(step, 1.0)
    return math.ceil(value / step) * step, step


def _time_step(span: float) -> float:
    """Seconds between time ticks: about 4 to 8 of them over ``span``."""
    for step in (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if span / step <= 8:
            return float(step)
    return 86400.0 * math.ceil(span / 86400 / 8)


def _local_offset(t: float) -> float:
    """Seconds east of UTC of the local time zone at ``t``."""
    local = datetime.datetime.fromtimestamp(t).astimezone()
    offset = local.utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def timeline_svg(points: Sequence[Any], now: float, hours: float = 6, width: int = 900,
                 height: int = 240) -> str:
    """An inline SVG chart of the last ``hours`` before ``now``: jobs pending (left axis,
    red line) against workers on the private hosts and in the clouds (right axis, blue and
    orange step lines), with time ticks in local HH:MM, axis labels and a legend. Points
    outside the window are left out; with none in it, the chart says 'no samples yet'.
    ``points``: timeline items as ``render_page`` takes them."""
    e = html.escape
    start = now - hours * 3600.0
    pts = [p for p in as_points(points) if start <= p.t <= now]
    ml, mr, mt, mb = 52, 52, 30, 30
    pw, ph = width - ml - mr, height - mt - mb
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="queue depth against workers, last {e(_fmt(hours))} h">'),
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    # legend (top band)
    out.append('<g class="legend" font-size="12" fill="#333">')
    lx = ml
    for key, label in (("queue", "jobs pending (left axis)"),
                       ("private", "workers, private hosts (right axis)"),
                       ("cloud", "workers, cloud (right axis)")):
        out.append(f'<rect class="swatch {key}" x="{lx}" y="9" width="16" height="10" '
                   f'fill="{COLOURS[key]}"/>')
        out.append(f'<text x="{lx + 21}" y="18">{e(label)}</text>')
        lx += 30 + 7 * len(label)
    out.append("</g>")
    if not pts:
        out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" '
                   'stroke="#999"/>')
        out.append(f'<text class="empty" x="{ml + pw / 2}" y="{mt + ph / 2}" '
                   'text-anchor="middle" font-size="14" fill="#666">no samples yet</text>')
        out.append("</svg>")
        return "\n".join(out)
    q_top, q_step = nice_ceiling(max(p.pending_jobs for p in pts))
    w_top, w_step = nice_ceiling(max(max(p.workers_private, p.workers_cloud) for p in pts))
    span = now - start

    def x(t: float) -> float:
        return round(ml + (t - start) / span * pw, 1)

    def yq(v: float) -> float:
        return round(mt + ph - v / q_top * ph, 1)

    def yw(v: float) -> float:
        return round(mt + ph - v / w_top * ph, 1)

    # grid and axes
    out.append('<g class="axes" font-size="11" fill="#333" stroke-width="1">')
    v = 0.0
    while v <= q_top + 1e-9:
        y = yq(v)
        out.append(f'<line x1="{ml}" y1="{y}" x2="{ml + pw}" y2="{y}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4}" text-anchor="end">{e(_fmt(v))}</text>')
        v += q_step
    v = 0.0
    while v <= w_top + 1e-9:
        y = yw(v)
        out.append(f'<text x="{ml + pw + 6}" y="{y + 4}">{e(_fmt(v))}</text>')
        v += w_step
    step = _time_step(span)
    offset = _local_offset(now)
    tick = math.ceil((start + offset) / step) * step - offset
    while tick <= now:
        tx = x(tick)
        out.append(f'<line x1="{tx}" y1="{mt}" x2="{tx}" y2="{mt + ph}" stroke="#f0f0f0"/>')
        out.append(f'<line x1="{tx}" y1="{mt + ph}" x2="{tx}" y2="{mt + ph + 4}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{tx}" y="{mt + ph + 16}" text-anchor="middle">'
                   f'{e(clock_time(tick))}</text>')
        tick += step
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" '
               'stroke="#999"/>')
    out.append(f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mt + ph / 2})" fill="{COLOURS["queue"]}">'
               'jobs pending</text>')
    rx = width - 12
    out.append(f'<text x="{rx}" y="{mt + ph / 2}" text-anchor="middle" '
               f'transform="rotate(90 {rx} {mt + ph / 2})">workers</text>')
    out.append("</g>")
    # the series
    queue = " ".join(f"{x(p.t)},{yq(p.pending_jobs)}" for p in pts)
    out.append(f'<polyline class="series queue" fill="none" stroke="{COLOURS["queue"]}" '
               f'stroke-width="2.5" stroke-linejoin="round" points="{queue}"/>')
    for key, attr in (("private", "workers_private"), ("cloud", "workers_cloud")):
        d = [f"M{x(pts[0].t)},{yw(getattr(pts[0], attr))}"]
        for prev, p in itertools.pairwise(pts):
            d.append(f"H{x(p.t)}")
            if getattr(p, attr) != getattr(prev, attr):
                d.append(f"V{yw(getattr(p, attr))}")
        out.append(f'<path class="series {key}" fill="none" stroke="{COLOURS[key]}" '
                   f'stroke-width="2.5" d="{" ".join(d)}"/>')
    last = pts[-1]
    for key, cy in (("queue", yq(last.pending_jobs)), ("private", yw(last.workers_private)),
                    ("cloud", yw(last.workers_cloud))):
        out.append(f'<circle class="last {key}" cx="{x(last.t)}" cy="{cy}" r="3.5" '
                   f'fill="{COLOURS[key]}"/>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------- the page

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>elastic status{% if project %}: {{ project }}{% endif %}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 20px;
       color: #222; background: #fafafa; font-size: 14px; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 20px 0 6px 0; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 8px 0 4px 0; }
.sub { color: #666; font-size: 12px; }
table { border-collapse: collapse; background: #fff; margin-bottom: 6px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; }
.hosts { display: flex; flex-wrap: wrap; gap: 10px; }
.host { background: #fff; border: 1px solid #ccc; border-radius: 4px; padding: 6px 10px;
        min-width: 260px; }
.host.down { border-color: #d62728; }
.bar { background: #eee; width: 220px; height: 8px; border-radius: 4px; overflow: hidden; }
.bar span { display: block; height: 8px; background: #2ca02c; }
.bar.over span { background: #8b0000; }  /* not a chart colour */
.group { margin: 4px 0 2px 0; font-size: 12px; color: #555; }
.state-RUNNING { color: #2a7d2a; font-weight: 600; }
.state-FAILED { color: #c00; font-weight: 600; }
.state-DRAINING, .state-BOOT, .state-PROLOG, .state-PENDING { color: #a65f00; }
.empty { color: #888; font-style: italic; }
.reason { max-width: 640px; }
.chart { background: #fff; border: 1px solid #ddd; display: inline-block; }
.breaker { color: #c00; font-weight: 600; }
</style>
</head>
<body>
<h1>elastic status{% if project %}: {{ project }}{% endif %}</h1>
<div class="sub">as of {{ generated }}; this page reloads every {{ refresh }} s
{%- if projects %}; projects: {{ projects|join(", ") }}{% endif %}</div>

<h2>Queue depth and workers, last {{ hours }} h</h2>
<div class="chart" id="timeline">{{ svg }}</div>

<h2>Queue and workers</h2>
{% for sc in scaling %}
<div class="scaling">
<b>{{ sc.project }}</b>: queue {{ sc.queue }}; workers: {{ sc.workers }}
{% for b in sc.breakers %}<div class="breaker">breaker open on {{ b }}: no launches there</div>
{% endfor %}</div>
{% else %}
<div class="empty">no autoscaled project has read its queue yet</div>
{% endfor %}
{% if latest %}<div class="sub">last sample ({{ latest.when }}): {{ latest.pending_jobs }}
jobs ({{ latest.pending_slots }} slots) pending, {{ latest.running_jobs }} running;
workers {{ latest.workers_private }} private, {{ latest.workers_cloud }} cloud</div>{% endif %}
<h3>Nodes by site and state</h3>
{% if sites %}
<table class="sites"><tr><th>site</th>{% for s in states %}<th>{{ s }}</th>{% endfor %}
<th>total</th></tr>
{% for row in sites %}<tr><td>{{ row.site }}</td>{% for n in row.counts %}
<td class="num">{{ n }}</td>{% endfor %}<td class="num">{{ row.total }}</td></tr>
{% endfor %}</table>
{% else %}<div class="empty">no nodes</div>{% endif %}

<h2>Hosts</h2>
<div class="hosts">
{% for h in hosts %}
<div class="host{% if not h.answers %} down{% endif %}">
<h3>{{ h.name }} <span class="sub">{{ h.domain_type }} {{ h.uri }}</span></h3>
{% if not h.answers %}<div class="breaker">does not answer: {{ h.error }}</div>{% endif %}
<div>memory {{ h.assigned }} assigned of {{ h.total }}{% if h.free != "-" %},
{{ h.free }} free{% endif %}{% if h.vcpus %}; {{ h.vcpus }} vcpus{% endif %}</div>
{% if h.fraction is not none %}<div class="bar{% if h.fraction > 1 %} over{% endif %}">
<span style="width: {{ h.percent }}%"></span></div>{% endif %}
{% for g in h.groups %}
<div class="group">{{ g.label }}</div>
<table class="vms"><tr><th>VM</th><th>state</th><th>memory</th><th>vcpus</th></tr>
{% for vm in g.vms %}<tr><td>{{ vm.name }}</td>
<td class="state-{{ vm.state }}">{{ vm.state }}</td><td class="num">{{ vm.memory }}</td>
<td class="num">{{ vm.vcpus }}</td></tr>
{% endfor %}</table>
{% else %}<div class="empty">no VMs</div>
{% endfor %}
</div>
{% else %}
<div class="empty">no hosts known</div>
{% endfor %}
</div>
{% for c in clouds %}
<h3>cloud {{ c.site }}</h3>
<table class="vms"><tr><th>node</th><th>state</th><th>instance</th></tr>
{% for n in c.nodes %}<tr><td>{{ n.name }}</td><td class="state-{{ n.state }}">{{ n.state }}</td>
<td>{{ n.host }}</td></tr>
{% endfor %}</table>
{% endfor %}

<h2>Nodes</h2>
{% if nodes %}
<table class="nodes"><tr><th>node</th><th>state</th><th>site</th><th>host</th>
<th>addresses</th><th>uptime</th><th>last change</th></tr>
{% for n in nodes %}<tr><td>{{ n.name }}</td><td class="state-{{ n.state }}">{{ n.state }}</td>
<td>{{ n.site }}</td><td>{{ n.host }}</td><td>{{ n.addresses }}</td>
<td class="num">{{ n.uptime }}</td><td class="reason">{{ n.reason }}</td></tr>
{% endfor %}</table>
{% else %}<div class="empty">no nodes</div>{% endif %}

<h2>Web tiers</h2>
{% if tiers %}
<table class="tiers"><tr><th>tier</th><th>project</th><th>size</th><th>serving</th>
<th>last look</th></tr>
{% for t in tiers %}<tr><td>{{ t.tier }}</td><td>{{ t.project }}</td>
<td class="num">{{ t.size }}</td><td>{{ t.serving }}</td><td class="reason">{{ t.last }}</td></tr>
{% endfor %}</table>
{% else %}<div class="empty">no web tiers</div>{% endif %}

<h2>Events (newest first, last {{ events_shown }})</h2>
{% if events %}
<table class="events"><tr><th>when</th><th>kind</th><th>node</th><th>reason</th></tr>
{% for ev in events %}<tr><td title="{{ ev.clock }}">{{ ev.ago }}</td><td>{{ ev.kind }}</td>
<td>{{ ev.node }}</td><td class="reason">{{ ev.reason }}</td></tr>
{% endfor %}</table>
{% else %}<div class="empty">no events</div>{% endif %}
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=False, lstrip_blocks=False)
_PAGE = _ENV.from_string(_TEMPLATE)


def _queue_text(q: Mapping[str, Any] | None) -> str:
    if not q:
        return "not read yet"
    if not q.get("known"):
        return f"unknown ({q.get('error') or 'no answer'})"
    text = (f"{q.get('pending_jobs', 0)} jobs ({q.get('pending_slots', 0)} slots) pending, "
            f"{q.get('running_jobs', 0)} running")
    if q.get("held") or q.get("errored"):
        text += f", {q.get('held', 0)} held, {q.get('errored', 0)} in error"
    return text


def _node_name(n: Mapping[str, Any]) -> str:
    return f"{n.get('name')}.{n.get('project')}" if n.get("project") else str(n.get("name"))


def _host_view(h: Mapping[str, Any], nodes: list[Mapping[str, Any]]) -> dict[str, Any]:
    name = h.get("name")
    here = [n for n in nodes if n.get("host") == name]
    vms = list(h.get("vms") or [])
    groups: dict[str, list[dict[str, Any]]] = {}
    matched: set[int] = set()
    for n in here:
        vm_index = next((i for i, v in enumerate(vms) if i not in matched and (
            (v.get("project"), v.get("node")) == (n.get("project"), n.get("name"))
            or v.get("name") == _node_name(n))), None)
        vm = vms[vm_index] if vm_index is not None else {}
        if vm_index is not None:
            matched.add(vm_index)
        label = (f"chunk {n['chunk']}" + (f" ({n['project']})" if n.get("project") else "")
                 if n.get("chunk") else f"project {n.get('project') or '-'}")
        groups.setdefault(label, []).append({
            "name": _node_name(n), "state": str(n.get("state") or "-"),
            "memory": mib(n.get("memory") if n.get("memory") is not None else vm.get("memory")),
            "vcpus": n.get("vcpus") or vm.get("vcpus") or "-"})
    for i, v in enumerate(vms):
        if i in matched:
            continue
        label = f"project {v['project']}" if v.get("project") else "domains elastic did not make"
        groups.setdefault(label, []).append({
            "name": v.get("name") or "-", "state": "active" if v.get("active") else "inactive",
            "memory": mib(v.get("memory")), "vcpus": v.get("vcpus") or "-"})
    total = h.get("memory_total")
    assigned = h.get("memory_assigned")
    fraction = (assigned or 0) / total if isinstance(total, (int, float)) and total else None
    return {"name": name or "-", "uri": h.get("uri") or "", "domain_type": h.get("domain_type")
            or "", "answers": bool(h.get("answers", True)), "error": h.get("error") or "",
            "assigned": mib(assigned), "total": mib(total), "free": mib(h.get("memory_free")),
            "vcpus": h.get("vcpus") or "", "fraction": fraction,
            "percent": round(min(fraction, 1.0) * 100, 1) if fraction is not None else 0,
            "groups": [{"label": k, "vms": v} for k, v in sorted(groups.items())]}


def _event_view(ev: Any, now: float) -> dict[str, Any]:
    t = float(_get(ev, "time", 0.0))
    kind = str(_get(ev, "kind", ""))
    src, dst = _get(ev, "from_state"), _get(ev, "to_state")
    if kind == "transition" and dst:
        kind = f"transition {src or '-'} -> {dst}"
    node = _get(ev, "node", "")
    project = _get(ev, "project", "")
    return {"time": t, "ago": ago(now - t), "clock": clock_time(t, seconds=True),
            "kind": kind, "node": f"{node}.{project}" if node and project else (node or "-"),
            "reason": str(_get(ev, "reason", ""))}


def page_context(status: Mapping[str, Any], timeline: Sequence[Any], events: Iterable[Any],
                 now: float, *, project: str | None = None, hours: float = 6
                 ) -> dict[str, Any]:
    """What the template shows, as plain values (strings and numbers): for tests and for
    other renderings of the same page."""
    status = status or {}
    nodes = [n for n in status.get("nodes") or [] if project in (None, n.get("project"))]
    points = as_points(timeline or [])
    scaling = [{"project": sc.get("project") or "-", "queue": _queue_text(sc.get("queue")),
                "workers": ", ".join(f"{n} {s}" for s, n in
                                     sorted((sc.get("workers") or {}).items())) or "none",
                "breakers": [f"{site} {why}" for site, why in
                             sorted((sc.get("breakers") or {}).items())]}
               for sc in status.get("scaling") or []
               if project in (None, sc.get("project"))]
    states = sorted({str(n.get("state") or "-") for n in nodes})
    by_site: dict[str, dict[str, int]] = {}
    for n in nodes:
        row = by_site.setdefault(str(n.get("site") or PRIVATE), {})
        row[str(n.get("state") or "-")] = row.get(str(n.get("state") or "-"), 0) + 1
    sites = [{"site": s, "counts": [row.get(st, 0) for st in states],
              "total": sum(row.values())}
             for s, row in sorted(by_site.items(), key=lambda kv: (kv[0] != PRIVATE, kv[0]))]
    clouds: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        if (n.get("site") or PRIVATE) != PRIVATE:
            clouds.setdefault(str(n["site"]), []).append(
                {"name": _node_name(n), "state": str(n.get("state") or "-"),
                 "host": n.get("host") or "-"})
    tiers = []
    for t in status.get("tiers") or []:
        if project not in (None, t.get("project")):
            continue
        last = t.get("last") or {}
        values = ", ".join("-" if v is None else f"{v:.1f}" for v in last.get("values") or [])
        look = last.get("reason") or "no look yet"
        if values:
            look += f" [{values}]"
        if last.get("at") is not None:
            look = f"{ago(now - float(last['at']))}: {look}"
        tiers.append({"tier": t.get("tier") or "-", "project": t.get("project") or "-",
                      "size": t.get("size", 0), "serving": ", ".join(t.get("serving") or [])
                      or "none", "last": look})
    evs = [_event_view(ev, now) for ev in events or []
           if project in (None, _get(ev, "project"))]
    evs = sorted(enumerate(evs), key=lambda ie: (ie[1]["time"], ie[0]), reverse=True)
    latest = None
    if points:
        p = points[-1]
        latest = {**dataclasses.asdict(p), "when": ago(now - p.t)}
    return {
        "refresh": REFRESH_SECONDS, "project": project or "",
        "projects": list(status.get("projects") or []),
        "generated": datetime.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S"),
        "hours": _fmt(hours), "svg": Markup(timeline_svg(points, now, hours=hours)),
        "scaling": scaling, "latest": latest, "states": states, "sites": sites,
        "hosts": [_host_view(h, nodes) for h in status.get("hosts") or []],
        "clouds": [{"site": s, "nodes": v} for s, v in sorted(clouds.items())],
        "nodes": [{"name": _node_name(n), "state": str(n.get("state") or "-"),
                   "site": n.get("site") or PRIVATE, "host": n.get("host") or "-",
                   "addresses": " ".join(str(a.get("address")) for a in
                                         n.get("addresses") or [] if a.get("address")) or "-",
                   "uptime": duration(n.get("uptime")), "reason": n.get("reason") or ""}
                  for n in nodes],
        "tiers": tiers, "events": [ev for _, ev in evs[:EVENTS_SHOWN]],
        "events_shown": EVENTS_SHOWN,
    }


def render_page(status: Mapping[str, Any], timeline: Sequence[Any], events: Iterable[Any],
                now: float, *, project: str | None = None) -> str:
    """The status page as one HTML document (see the module's docstring for the
    arguments). ``project``: show only that project's nodes, queue, tiers and events (the
    hosts are shown whole)."""
    return _PAGE.render(**page_context(status, timeline, events, now, project=project))


__all__ = ["COLOURS", "TimelinePoint", "ago", "as_point", "as_points", "nice_ceiling", "page_context",
           "render_page", "timeline_svg"]
