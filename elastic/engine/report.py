"""What a cluster did over a window of time: the queue's timeline and a summary (jobs run,
their waits, node-hours by site, the estimated cloud cost, peaks), read from the state DB.

    points = timeline(state_dir, "sge", since=now - 6 * 3600, max_points=300)
    numbers = summary(state_dir, "sge", since=now - parse_since("1d"), now=now)

The reading functions (``timeline``, ``summary``) only gather records; every number comes
from the pure helpers below them (``points_from_samples``, ``downsample``, ``clip``,
``up_intervals``, ``node_hours``, ``median``, ``p95``, ``job_stats``, ``summarize``), which
the unit tests call without a database.

Node-hours: a node is counted from each transition into RUNNING until its next transition
into DONE, STOPPED or FAILED (so draining and shutting down count: a cloud instance is billed
for them), each interval clipped to the window; an interval still open is counted up to
``now``. Cloud cost: node-hours of each cloud node times the hourly price of its instance
type (``clouds.<name>.spec.prices`` in the project's data, which the cloud site records);
the instance type comes from the node's data (``instance_type``), else from the event that
started its instance (``instance i-... (TYPE) starting on clouds.NAME``). A node whose type or
price is not known is reported as such and left out of the cost, never guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elastic.errors import PermanentError
from elastic.lifecycle import State
from elastic.state import Store

PRIVATE = "private"
UP_START = frozenset({State.RUNNING})
UP_END = frozenset({State.DONE, State.STOPPED, State.FAILED})

_SINCE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_STARTED = re.compile(r"^(?:instance|adopted instance) \S+ \(([^()\s]+)\) starting on clouds\.")


# ------------------------------------------------------------------------------ parsing

def parse_since(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"`` (also ``"1.5h"``) -> seconds (> 0)."""
    m = _SINCE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"--since {text!r}: give a number and a unit, one of s, m, h, d "
                         "(e.g. 90s, 30m, 2h, 1d)")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"--since {text!r}: the window must be longer than 0 seconds")
    return seconds


# ------------------------------------------------------------------------------ timeline

@dataclass(frozen=True)
class TimelinePoint:
    """One look at the queue: jobs and slots waiting, jobs running, workers by kind of site."""

    t: float
    pending_jobs: int
    pending_slots: int
    running_jobs: int
    workers_private: int
    workers_cloud: int


Timeline = list[TimelinePoint]


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` or ``obj[name]`` (a record or its JSON form), else ``default``."""
    value = obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)
    return default if value is None else value


def point_of(sample: Any) -> TimelinePoint:
    """A TimelinePoint from a QueueSampleRecord (``workers``: site -> count; 'private' is the
    private hosts, every other site a cloud), from the JSON form of either, or a
    TimelinePoint as it is."""
    if isinstance(sample, TimelinePoint):
        return sample
    workers = _field(sample, "workers")
    if isinstance(workers, Mapping):
        private = int(workers.get(PRIVATE, 0) or 0)
        cloud = sum(int(n or 0) for site, n in workers.items() if site != PRIVATE)
    else:
        private = int(_field(sample, "workers_private", 0))
        cloud = int(_field(sample, "workers_cloud", 0))
    return TimelinePoint(
        float(_field(sample, "t", 0.0)), int(_field(sample, "pending_jobs", 0)),
        int(_field(sample, "pending_slots", 0)), int(_field(sample, "running_jobs", 0)),
        private, cloud)


def points_from_samples(samples: Iterable[Any]) -> Timeline:
    """Queue samples (of one project or of several; records, points or their JSON forms) ->
    points, oldest first. Samples of several projects are added up: at each sample's time,
    the sum of every project's latest sample taken at or before it."""
    ordered = sorted(((_field(s, "project"), point_of(s)) for s in samples or ()),
                     key=lambda pair: pair[1].t)
    if len({project for project, _ in ordered}) <= 1:
        return [p for _, p in ordered]
    latest: dict[Any, TimelinePoint] = {}
    out: Timeline = []
    for project, s in ordered:
        latest[project] = s
        values = list(latest.values())
        point = TimelinePoint(float(s.t), *(sum(getattr(p, f) for p in values) for f in (
            "pending_jobs", "pending_slots", "running_jobs", "workers_private",
            "workers_cloud")))
        if out and out[-1].t == point.t:
            out[-1] = point
        else:
            out.append(point)
    return out


def site_totals(samples: Iterable[Any]) -> list[dict[str, int]]:
    """Workers by site at each sample's time, added up over projects as in
    ``points_from_samples`` (each project's latest sample at or before that time)."""
    latest: dict[Any, Mapping[str, int]] = {}
    out: list[dict[str, int]] = []
    for s in sorted(samples, key=lambda x: x.t):
        latest[getattr(s, "project", None)] = getattr(s, "workers", None) or {}
        total: dict[str, int] = {}
        for workers in latest.values():
            for site, n in workers.items():
                total[site] = total.get(site, 0) + int(n)
        out.append(total)
    return out


def downsample(points: Sequence[TimelinePoint], max_points: int | None) -> Timeline:
    """At most ``max_points`` points: consecutive runs of points merged into one, at the
    time of the run's last point, with the run's maximum of each queue figure and its last
    count of workers. ``None``: all the points."""
    if max_points is None or len(points) <= max_points:
        return list(points)
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, not {max_points}")
    n = len(points)
    out: Timeline = []
    for i in range(max_points):
        bucket = points[i * n // max_points:(i + 1) * n // max_points]
        if not bucket:
            continue
        last = bucket[-1]
        out.append(TimelinePoint(last.t, max(p.pending_jobs for p in bucket),
                                 max(p.pending_slots for p in bucket),
                                 max(p.running_jobs for p in bucket),
                                 last.workers_private, last.workers_cloud))
    return out


def timeline(state_dir: Path, project: str | None, since: float,
             max_points: int | None = None) -> Timeline:
    """The queue's timeline of ``project`` (all projects added up if None) since ``since``;
    empty if there is no state database."""
    if not Store.exists(state_dir):
        return []
    with Store.open(state_dir, readonly=True) as store:
        samples = store.queue_samples(project, since)
    return downsample(points_from_samples(samples), max_points)


# ------------------------------------------------------------------------------ numbers

def clip(start: float, end: float, since: float, until: float) -> float:
    """Seconds of [start, end] inside [since, until] (0 if they do not overlap)."""
    return max(0.0, min(end, until) - max(start, since))


def median(values: Sequence[float]) -> float | None:
    """The median (the mean of the two middle values for an even count); None if empty."""
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile by nearest rank: the smallest value that at least 95 % of the
    values do not exceed (always one of the values); None if empty."""
    if not values:
        return None
    s = sorted(values)
    return float(s[max(1, math.ceil(0.95 * len(s))) - 1])


@dataclass(frozen=True)
class Transition:
    """One node transition as the event log keeps it (``data``: host/site/provider_id set
    by it, and whatever else the writer put there)."""

    time: float
    to_state: State
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


def up_intervals(transitions: Iterable[Transition], now: float) -> list[tuple[float, float]]:
    """(start, end) of every stretch from a move into RUNNING to the next move into DONE,
    STOPPED or FAILED; a stretch still open ends at ``now``."""
    out: list[tuple[float, float]] = []
    opened: float | None = None
    for tr in sorted(transitions, key=lambda x: x.time):
        state = State(tr.to_state)
        if state in UP_START and opened is None:
            opened = tr.time
        elif state in UP_END and opened is not None:
            out.append((opened, tr.time))
            opened = None
    if opened is not None:
        out.append((opened, max(opened, now)))
    return out


def node_hours(transitions: Iterable[Transition], since: float, now: float) -> float:
    """Hours the node was up (``up_intervals``) inside [since, now]."""
    return sum(clip(a, b, since, now) for a, b in up_intervals(transitions, now)) / 3600.0


def instance_type_of(transitions: Iterable[Transition],
                     node_data: Mapping[str, Any] | None = None) -> str | None:
    """The node's instance type: ``instance_type`` in its data or in an event's data, else
    the type named by the event that started its instance; the latest one wins."""
    found = (node_data or {}).get("instance_type")
    for tr in sorted(transitions, key=lambda x: x.time):
        named = (tr.data or {}).get("instance_type")
        if not named:
            m = _STARTED.match(tr.reason or "")
            named = m.group(1) if m else None
        if named:
            found = named
    return str(found) if found else None


@dataclass(frozen=True)
class NodeHistory:
    """What the summary needs of one node: where it ran, its transitions, its data."""

    project: str
    name: str
    site: str
    transitions: tuple[Transition, ...]
    data: Mapping[str, Any] = field(default_factory=dict)


def job_stats(jobs: Iterable[Any], since: float, now: float) -> dict[str, Any]:
    """Jobs that ended in [since, now] and had started: how many, slots, and their waits
    (started - submitted, for those with a submission time) in seconds."""
    done = [j for j in jobs
            if j.started is not None and j.ended is not None and since <= j.ended <= now]
    waits = [max(0.0, j.started - j.submitted) for j in done if j.submitted is not None]
    return {"jobs_run": len(done), "slots_run": sum(int(j.slots or 0) for j in done),
            "wait_median": median(waits), "wait_p95": p95(waits),
            "waits_known": len(waits)}


def summarize(*, nodes: Iterable[NodeHistory], jobs: Iterable[Any],
              points: Sequence[TimelinePoint], samples: Iterable[Any] = (),
              prices: Mapping[str, Mapping[str, float]], since: float,
              now: float) -> dict[str, Any]:
    """The summary's numbers from records (pure). ``prices``: cloud -> instance type ->
    dollars per hour. ``samples``: the raw queue samples (for the peak of every site);
    ``points`` give the peak queue depth."""
    private_hours = 0.0
    clouds: dict[str, dict[str, Any]] = {}
    for n in nodes:
        hours = node_hours(n.transitions, since, now)
        if n.site == PRIVATE:
            private_hours += hours
            continue
        c = clouds.setdefault(n.site, {"node_hours": 0.0, "cost": 0.0, "unpriced_hours": 0.0,
                                       "by_type": {}, "unknown": []})
        c["node_hours"] += hours
        if hours == 0:
            continue
        itype = instance_type_of(n.transitions, n.data)
        site_prices = prices.get(n.site) or {}
        if itype is None:
            c["unknown"].append(f"{n.name}.{n.project}: no instance type recorded")
        elif itype not in site_prices:
            c["unknown"].append(f"{n.name}.{n.project}: instance type {itype} has no price "
                                f"in clouds.{n.site}.prices")
        else:
            t = c["by_type"].setdefault(itype, {"node_hours": 0.0, "price": site_prices[itype],
                                                "cost": 0.0})
            t["node_hours"] += hours
            t["cost"] += hours * float(site_prices[itype])
            c["cost"] += hours * float(site_prices[itype])
            continue
        c["unpriced_hours"] += hours
    cloud_hours = sum(c["node_hours"] for c in clouds.values())
    complete = all(not c["unknown"] for c in clouds.values())
    for c in clouds.values():
        c["complete"] = not c["unknown"]
    peak_by_site: dict[str, int] = {}
    for by_site in site_totals(samples):
        for site, count in by_site.items():
            peak_by_site[site] = max(peak_by_site.get(site, 0), count)
    if not peak_by_site and points:
        peak_by_site = {PRIVATE: max(p.workers_private for p in points),
                        "cloud": max(p.workers_cloud for p in points)}
    return {
        "since": since, "now": now, "window": now - since,
        **job_stats(jobs, since, now),
        "node_hours": {"private": private_hours, "cloud": cloud_hours,
                       "by_cloud": {k: v["node_hours"] for k, v in sorted(clouds.items())}},
        "cloud_cost": {"total": sum(c["cost"] for c in clouds.values()),
                       "complete": complete, "clouds": dict(sorted(clouds.items())),
                       "unknown": [u for c in clouds.values() for u in c["unknown"]]},
        "peak_queue": {"pending_jobs": max((p.pending_jobs for p in points), default=0),
                       "pending_slots": max((p.pending_slots for p in points), default=0),
                       "running_jobs": max((p.running_jobs for p in points), default=0)},
        "peak_workers": dict(sorted(peak_by_site.items())),
        "samples": len(points),
    }


def _hours(h: float) -> str:
    return f"{h:.2f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def summary_lines(s: Mapping[str, Any]) -> list[str]:
    """The summary as sentences, for a terminal."""
    nh, cost = s["node_hours"], s["cloud_cost"]
    lines = [f"jobs run: {s['jobs_run']} ({s['slots_run']} slots); wait median "
             f"{_seconds(s['wait_median'])}, p95 {_seconds(s['wait_p95'])}"
             + (f" (of {s['waits_known']} with a submission time)"
                if s["waits_known"] != s["jobs_run"] else ""),
             f"node-hours: {_hours(nh['private'])} private, {_hours(nh['cloud'])} cloud"
             + "".join(f"; {_hours(h)} on {c}" for c, h in nh["by_cloud"].items())]
    if cost["clouds"]:
        total = f"{cost['total']:.2f} $"
        lines.append(f"estimated cloud cost: {total}" if cost["complete"] else
                     f"estimated cloud cost: at least {total} (some cloud hours have no "
                     "known price)")
        lines += [f"  cost unknown for {u}" for u in cost["unknown"]]
    q = s["peak_queue"]
    lines.append(f"peak queue: {q['pending_jobs']} jobs ({q['pending_slots']} slots) pending, "
                 f"{q['running_jobs']} running; peak workers: "
                 + (", ".join(f"{n} {site}" for site, n in s["peak_workers"].items()) or "none")
                 + f" ({s['samples']} queue samples)")
    return lines


# ------------------------------------------------------------------------------ reading

def summary(state_dir: Path, project: str | None, since: float, now: float) -> dict[str, Any]:
    """What ``project`` (every project if None) did in [since, now]: see ``summarize``."""
    if since > now:
        raise ValueError(f"the window starts ({since}) after it ends ({now})")
    if not Store.exists(state_dir):
        return summarize(nodes=[], jobs=[], points=[], prices={}, since=since, now=now)
    with Store.open(state_dir, readonly=True) as store:
        if project is not None and store.get_project(project) is None:
            raise PermanentError(f"no project named {project} in {state_dir}")
        projects = [p for p in store.list_projects() if project in (None, p.name)]
        prices: dict[str, dict[str, float]] = {}
        for p in projects:
            for cloud, entry in ((p.data or {}).get("clouds") or {}).items():
                spec_prices = ((entry or {}).get("spec") or {}).get("prices") or {}
                prices.setdefault(cloud, {}).update(
                    {str(k): float(v) for k, v in spec_prices.items()})
        current = {(n.project, n.name): n for n in store.list_nodes(project)}
        # every transition ever: a node that came up before the window still counts in it
        events = store.events(project)
        samples = store.queue_samples(project, since)
        jobs = store.jobs(project, since)
    samples = [s for s in samples if s.t <= now]
    return summarize(nodes=histories(events, current), jobs=jobs,
                     points=points_from_samples(samples), samples=samples, prices=prices,
                     since=since, now=now)


def histories(events: Iterable[Any], current: Mapping[tuple[str, str], Any]
              ) -> list[NodeHistory]:
    """Each node's transitions from the event log (events oldest first), one history per
    life of the node: a node made again under the same name (``node-added``) starts a new
    one, at the site that event names. The site is the events' (``site`` in their data),
    else the node record's; the record's data goes with the node's latest life."""
    lives: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ev in events:
        if not ev.node or ev.project is None:
            continue
        key = (ev.project, ev.node)
        data = ev.data or {}
        if ev.kind == "node-added" or key not in lives:
            if ev.kind != "node-added" and ev.kind != "transition":
                continue
            lives.setdefault(key, []).append({"site": None, "transitions": []})
        life = lives[key][-1]
        if data.get("site"):
            life["site"] = str(data["site"])
        if ev.kind == "transition" and ev.to_state is not None:
            life["transitions"].append(Transition(ev.time, State(ev.to_state),
                                                  ev.reason or "", data))
    out = []
    for key, runs in sorted(lives.items()):
        rec = current.get(key)
        for i, life in enumerate(runs):
            if not life["transitions"]:
                continue
            last = i == len(runs) - 1
            where = life["site"] or (rec.site if rec is not None else PRIVATE)
            data = dict(rec.data or {}) if rec is not None and last else {}
            out.append(NodeHistory(key[0], key[1], where, tuple(life["transitions"]), data))
    return out


__all__ = ["PRIVATE", "NodeHistory", "Timeline", "TimelinePoint", "Transition", "clip",
           "downsample", "histories", "instance_type_of", "job_stats", "median", "node_hours",
           "p95", "parse_since", "point_of", "points_from_samples", "site_totals",
           "summarize", "summary", "summary_lines", "timeline", "up_intervals"]
