"""elastic.server.page: the status page (hosts and their VMs, the queue, workers, tiers, the
event log, the timeline's SVG) and its escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from elastic.engine.report import TimelinePoint
from elastic.server.page import (
    COLOURS,
    EVENTS_SHOWN,
    ago,
    as_point,
    nice_ceiling,
    page_context,
    render_page,
    timeline_svg,
)
from elastic.state.store import QueueSampleRecord

NOW = 1_700_000_000.0
SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert('x')</script>"


def node(name: str, state: str = "RUNNING", host: str | None = "node1", site: str = "private",
         project: str = "sge", chunk: str | None = None, reason: str = "", **more) -> dict:
    n = {"project": project, "name": name, "state": state, "host": host, "site": site,
         "addresses": [{"iface": "eth0", "network": "lan", "address": f"10.0.0.{len(name)}",
                        "mac": "02:00:0a:00:00:01"}],
         "uptime": 3700.0 if state == "RUNNING" else None, "since": NOW - 100,
         "reason": reason or f"{name} is {state.lower()}", "memory": 1024, "vcpus": 1, **more}
    if chunk is not None:
        n["chunk"] = chunk
    return n


def status() -> dict:
    return {
        "projects": ["sge"],
        "hosts": [
            {"name": "node1", "uri": "qemu+ssh://node1/system", "domain_type": "kvm",
             "groups": ["all"], "answers": True, "error": None, "memory_total": 8192,
             "memory_free": 5000, "memory_assigned": 3072, "vcpus": 8, "projects": ["sge"],
             "vms": [{"name": "head.sge", "active": True, "project": "sge", "node": "head",
                      "memory": 1024, "vcpus": 1},
                     {"name": "stray-vm", "active": False, "project": None, "node": None,
                      "memory": 512, "vcpus": 1}]},
            {"name": "node2", "uri": "qemu+ssh://node2/system", "domain_type": "kvm",
             "groups": [], "answers": False, "error": "connection refused",
             "memory_total": None, "memory_free": None, "memory_assigned": 2048,
             "vcpus": None, "projects": ["sge"], "vms": []},
        ],
        "nodes": [node("head", chunk="chunk0"), node("worker1", chunk="chunk0"),
                  node("worker2", "DRAINING", host="node2", reason="idle for 300 s"),
                  node("worker3", "BOOT", host="i-0abc", site="ec2",
                       reason="instance i-0abc (t3.medium) starting on clouds.ec2"),
                  node("web1", host="node2")],
        "scaling": [{"project": "sge", "queue": {"known": True, "at": NOW - 5,
                                                 "pending_jobs": 12, "pending_slots": 24,
                                                 "running_jobs": 3, "held": 1, "errored": 0},
                     "workers": {"RUNNING": 1, "DRAINING": 1, "BOOT": 1},
                     "breakers": {"ec2": "after 3 failed launches"}}],
        "tiers": [{"project": "sge", "tier": "frontend", "group": "web", "size": 1,
                   "serving": ["web1"], "history": [],
                   "last": {"at": NOW - 30, "size": 1, "serving": 1, "target": 1,
                            "reason": "requests 12.0/s below 50/s", "values": [12.0, None]}}],
        "decisions": [],
    }


def samples(n: int = 36, step: float = 600.0) -> list[QueueSampleRecord]:
    return [QueueSampleRecord("sge", NOW - (n - i) * step, (i * 5) % 17, (i * 5) % 17 * 2, 2,
                              {"private": min(i, 4), "ec2": max(0, i - 20) // 4})
            for i in range(n)]


def events() -> list[dict]:
    return [{"time": NOW - 3600 + i * 60, "project": "sge", "node": f"worker{i % 3 + 1}",
             "kind": "transition" if i % 2 else "decision:add", "from_state": "BOOT",
             "to_state": "RUNNING", "reason": f"reason number {i}"} for i in range(60)]


class Text(HTMLParser):
    """The page's text as a browser shows it (entities decoded), and its tags."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)

    def handle_data(self, data) -> None:
        self.text.append(data)


def parse(page: str) -> Text:
    p = Text()
    p.feed(page)
    return p


def svg_of(page: str) -> ET.Element:
    m = re.search(r"<svg.*?</svg>", page, re.DOTALL)
    assert m, "no SVG in the page"
    return ET.fromstring(m.group(0))


def test_page_shows_hosts_vms_nodes_tiers_queue_and_events() -> None:
    page = render_page(status(), samples(), events(), NOW)
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta http-equiv="refresh" content="10">' in page
    text = " ".join(parse(page).text)
    for name in ("head.sge", "worker1.sge", "worker2.sge", "worker3.sge", "web1.sge",
                 "node1", "node2", "stray-vm", "frontend"):
        assert name in text, name
    assert "chunk chunk0 (sge)" in text              # grouped by chunk where known...
    assert "project sge" in text                      # ...else by project
    assert "domains elastic did not make" in text
    assert "3G assigned of 8G" in text and "does not answer: connection refused" in text
    assert "12 jobs (24 slots) pending, 3 running, 1 held, 0 in error" in text
    assert "breaker open on ec2 after 3 failed launches" in text
    assert "requests 12.0/s below 50/s [12.0, -]" in text and "30 s ago" in text
    assert "idle for 300 s" in text                   # a node's reason
    assert "cloud ec2" in text and "i-0abc" in text
    assert "reason number 59" in text and "reason number 10" in text
    assert "reason number 9" not in text.replace("reason number 59", "")  # only the last 50
    assert "transition BOOT -> RUNNING" in text


def test_events_newest_first_and_at_most_50() -> None:
    ctx = page_context(status(), [], events(), NOW)
    shown = [e["reason"] for e in ctx["events"]]
    assert len(shown) == EVENTS_SHOWN
    assert shown[0] == "reason number 59" and shown[-1] == "reason number 10"
    assert ctx["events"][0]["ago"] == "1 min ago"
    assert ctx["events"][0]["node"] == "worker3.sge"


def test_nodes_by_site_and_state() -> None:
    ctx = page_context(status(), [], [], NOW)
    assert ctx["states"] == ["BOOT", "DRAINING", "RUNNING"]
    assert ctx["sites"] == [{"site": "private", "counts": [0, 1, 3], "total": 4},
                            {"site": "ec2", "counts": [1, 0, 0], "total": 1}]


def test_every_value_is_escaped() -> None:
    st = status()
    st["nodes"].append(node(EVIL, host="node1", reason=EVIL, chunk=EVIL))
    st["hosts"][0]["vms"].append({"name": EVIL, "active": True, "project": EVIL,
                                  "node": "x", "memory": 1, "vcpus": 1})
    st["hosts"][1]["error"] = EVIL
    st["tiers"][0]["last"]["reason"] = EVIL
    st["tiers"][0]["serving"] = [EVIL]
    st["scaling"][0]["breakers"] = {EVIL: EVIL}
    evs = [{"time": NOW - 5, "project": "sge", "node": EVIL, "kind": EVIL, "reason": EVIL}]
    page = render_page(st, samples(), evs, NOW)
    assert "<script>" not in page
    parsed = parse(page)
    assert "script" not in parsed.tags
    text = "".join(parsed.text)
    assert text.count(EVIL) >= 8                     # shown as text, every time
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page


def test_svg_has_three_series_a_legend_and_axes() -> None:
    page = render_page(status(), samples(), [], NOW)
    svg = svg_of(page)
    series = [e for e in svg.iter() if "series" in (e.get("class") or "")]
    assert sorted(e.get("class") for e in series) == [
        "series cloud", "series private", "series queue"]
    assert {e.get("stroke") for e in series} == {"#d62728", "#1f77b4", "#ff7f0e"}
    legend = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert len(legend) == 1
    labels = " ".join(t.text or "" for t in legend[0].iter(f"{SVG}text"))
    assert "jobs pending" in labels and "private" in labels and "cloud" in labels
    assert {r.get("fill") for r in legend[0].iter(f"{SVG}rect")} == set(COLOURS.values())
    texts = [t.text or "" for t in svg.iter(f"{SVG}text")]
    assert any(re.fullmatch(r"\d\d:\d\d", t) for t in texts)      # time ticks
    assert "workers" in texts and "jobs pending" in texts           # axis labels
    queue = next(e for e in series if e.get("class") == "series queue")
    assert len(queue.get("points").split()) == 36


def test_svg_points_are_placed_on_the_axes() -> None:
    pts = [TimelinePoint(NOW - 6 * 3600, 0, 0, 0, 0, 0), TimelinePoint(NOW, 10, 20, 0, 4, 2)]
    svg = ET.fromstring(timeline_svg(pts, NOW, hours=6, width=900, height=240))
    queue = next(e for e in svg.iter() if e.get("class") == "series queue")
    (x0, y0), (x1, y1) = [tuple(map(float, p.split(","))) for p in queue.get("points").split()]
    assert x0 == 52 and x1 == 900 - 52                # the window's ends
    assert y0 == 240 - 30 and y1 == 30                 # 0 at the bottom, the top at 10
    private = next(e for e in svg.iter() if e.get("class") == "series private")
    assert private.get("d") == "M52.0,210.0 H848.0 V30.0"   # a step up at the last point


def test_svg_leaves_out_points_outside_the_window() -> None:
    pts = [TimelinePoint(NOW - 7 * 3600, 99, 0, 0, 0, 0), TimelinePoint(NOW - 60, 1, 0, 0, 1, 0)]
    svg = ET.fromstring(timeline_svg(pts, NOW))
    queue = next(e for e in svg.iter() if e.get("class") == "series queue")
    assert len(queue.get("points").split()) == 1


def test_empty_inputs_render() -> None:
    page = render_page({}, [], [], NOW)
    text = " ".join(parse(page).text)
    assert "no samples yet" in text
    assert "no hosts known" in text and "no events" in text and "no web tiers" in text
    svg = svg_of(page)
    assert not [e for e in svg.iter() if "series" in (e.get("class") or "")]
    st = {"hosts": [], "nodes": [], "projects": [], "scaling": [], "tiers": [],
          "decisions": []}
    assert "no samples yet" in render_page(st, [], [], NOW, project="sge")


def test_project_filter() -> None:
    st = status()
    st["nodes"].append(node("alien", project="other"))
    evs = [{"time": NOW - 5, "project": "other", "node": "alien", "kind": "note",
            "reason": "elsewhere"}]
    text = " ".join(parse(render_page(st, [], evs, NOW, project="sge")).text)
    assert "alien" not in text and "elsewhere" not in text
    text = " ".join(parse(render_page(st, [], evs, NOW)).text)
    assert "alien.other" in text and "elsewhere" in text


def test_timeline_items_of_either_kind() -> None:
    rec = QueueSampleRecord("sge", NOW, 3, 6, 1, {"private": 2, "ec2": 1, "gce": 1})
    pt = TimelinePoint(NOW, 3, 6, 1, 2, 2)
    assert as_point(rec) == as_point(pt) == as_point(pt.__dict__)
    assert timeline_svg([rec], NOW) == timeline_svg([pt], NOW)


def test_timeline_of_several_projects_is_added_up() -> None:
    from elastic.server.page import as_points
    items = [QueueSampleRecord("a", NOW - 20, 1, 2, 0, {"private": 1}),
             QueueSampleRecord("b", NOW - 10, 5, 5, 0, {"private": 2, "ec2": 1}),
             QueueSampleRecord("a", NOW, 2, 4, 0, {"private": 1})]
    assert [(p.pending_jobs, p.workers_private, p.workers_cloud) for p in as_points(items)] \
        == [(1, 1, 0), (6, 3, 1), (7, 3, 1)]


@pytest.mark.parametrize(("value", "top", "step"), [
    (0, 1, 1), (1, 1, 1), (3, 3, 1), (7, 8, 2), (10, 10, 5), (37, 40, 10), (120, 150, 50)])
def test_nice_ceiling(value, top, step) -> None:
    assert nice_ceiling(value) == (top, step)


def test_ago() -> None:
    assert ago(0.2) == "just now" and ago(-5) == "just now"
    assert ago(42) == "42 s ago" and ago(600) == "10 min ago"
    assert ago(2 * 3600 + 5 * 60) == "2 h 05 min ago" and ago(3 * 86400 + 3600) == "3 d 1 h ago"
