"""The HTTP API (elastic.server.app) over a real state DB filled through the Store API:
every read route shows what the DB holds; the changing routes want the token, hand their
work to the actions in a thread and record it; the OpenAPI document is valid, and a
schemathesis pass over the whole API finds no server error.

``fill_state`` (and the figures it puts in) is shared with test_server_metrics.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from elastic.clock import FakeClock
from elastic.errors import PermanentError
from elastic.lifecycle import State
from elastic.model import Job
from elastic.monitoring import HostSample
from elastic.server.app import EngineActions, create_app, load_or_make_token
from elastic.server.metrics import make_registry
from elastic.state import SCHEMA_VERSION, Store

T0 = 1_700_000_000.0
NOW = T0 + 630.0
TOKEN = "s3cret-token-for-tests"
PROJECT = "sgelab"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

QUEUE = {"known": True, "at": T0 + 600, "pending_jobs": 3, "pending_slots": 6,
         "running_jobs": 2, "held": 1, "errored": 0, "group": "worker"}
CLOUDS = {"ec2": {"cluster_id": "sgelab-abcd", "lab": False,
                  "spec": {"prices": {"t3.small": 0.5, "t3.large": 2.0},
                           "instance_types": ["t3.small", "t3.large"]},
                  "hubs": [{"type": "wireguard", "ifname": "ewg0123abcd", "netns": None}]}}
TIERS = {"web": {"group": "web", "serving": ["web1"], "generation": "abc123",
                 "last": {"at": T0 + 500, "size": 2, "serving": 1, "target": 2,
                          "reason": "stay", "values": []},
                 "history": [{"at": T0 + 400, "from": 1, "to": 2, "reason": "busy"}]}}


def _boot(store: Store, project: str, node: str, t: float, *, site: str = "private",
          host: str | None = "h1", group: str = "worker", running_after: float | None,
          boot_reason: str = "domain started") -> None:
    """A node added at ``t``: PROLOG at t+1, BOOT at t+2, RUNNING at t+running_after."""
    store.add_node(project, node, t, site=site, host=host,
                   data={"group": group, "index": int(node[-1]), "memory": 1024, "vcpus": 2},
                   reason="wanted")
    store.transition(project, node, State.PROLOG, "placed", t + 1)
    store.transition(project, node, State.BOOT, boot_reason, t + 2)
    if running_after is not None:
        store.transition(project, node, State.RUNNING, "joined", t + running_after)


def fill_state(state: Path) -> None:
    """Two projects with nodes and their histories, decisions, jobs, the queue, a host with
    samples, a plan. The figures are the ones the tests expect (see the constants)."""
    with Store.open(state) as s:
        s.put_project(PROJECT, "/specs/sgelab.yaml", "hash-sge", T0,
                      data={"queue": QUEUE, "members": {"worker": [1, 2, 3, 4]},
                            "tiers": TIERS, "clouds": CLOUDS,
                            "autoscale": {"breakers": {"ec2": {"open_until": T0 + 900}}}})
        s.put_project("other", "/specs/other.yaml", "hash-other", T0 + 5)
        s.put_host("h1", "test:///default", T0, memory=8192, vcpus=4, groups=["kvm"])
        s.put_host("h2", "test:///default", T0, memory=4096, vcpus=2)   # never sampled
        # boots: head 8 s, worker1 25 s (private); worker2 50 s (ec2); web1 3 s
        _boot(s, PROJECT, "head0", T0, group="head", running_after=8)
        _boot(s, PROJECT, "worker1", T0 + 10, running_after=25)
        _boot(s, PROJECT, "worker2", T0 + 100, site="ec2", host=None, running_after=50,
              boot_reason="instance i-0abc (t3.small) starting on clouds.ec2")
        _boot(s, PROJECT, "web1", T0 + 20, group="web", running_after=3)
        _boot(s, PROJECT, "web2", T0 + 560, group="web", running_after=None)    # still BOOT
        # launch failures: worker3 (private), worker4 (ec2, then cleaned up: DONE)
        s.add_node(PROJECT, "worker3", T0 + 200, site="private", host="h1",
                   data={"group": "worker", "index": 3})
        s.transition(PROJECT, "worker3", State.PROLOG, "placed", T0 + 201)
        s.transition(PROJECT, "worker3", State.FAILED, "clone failed: disk full", T0 + 210)
        s.add_node(PROJECT, "worker4", T0 + 300, site="ec2", data={"group": "worker"})
        s.transition(PROJECT, "worker4", State.FAILED, "InsufficientInstanceCapacity",
                     T0 + 305)
        s.transition(PROJECT, "worker4", State.EPILOG, "cleaning up", T0 + 306)
        s.transition(PROJECT, "worker4", State.DONE, "gone", T0 + 307)
        s.add_node("other", "n1", T0 + 5, site="private", data={"group": "n"})
        # decisions: launch x2, drain x1, tier x1; a note is not one
        for i, kind in enumerate(["decision:launch", "decision:launch", "decision:drain",
                                  "tier:decision", "note"]):
            s.record_event(PROJECT, kind, T0 + 90 + i, reason=f"because {i}")
        s.record_event("other", "decision:launch", T0 + 95, reason="other's")
        # jobs: 1 waits 30 s, runs on worker2 (ec2); 2 waits 105 s, runs on worker1
        j1 = Job("1", "sleep", "alice", "qw", submitted=T0 + 390)
        j2 = Job("2", "sleep", "bob", "qw", slots=2, submitted=T0 + 395)
        j3 = Job("3", "sleep", "carol", "qw", submitted=T0 + 480)
        s.observe_jobs(PROJECT, T0 + 400, [j1, j2], [])
        s.observe_jobs(PROJECT, T0 + 420, [j2], [(Job("1", "sleep", "alice", "r",
                                                      submitted=T0 + 390, host="worker2"),
                                                  "ec2")])
        s.observe_jobs(PROJECT, T0 + 500, [j3], [
            (Job("1", "sleep", "alice", "r", submitted=T0 + 390, host="worker2"), "ec2"),
            (Job("2", "sleep", "bob", "r", slots=2, submitted=T0 + 395,
                 host="worker1.sgelab"), "private")])
        # the queue over time
        for i, (pj, rj) in enumerate([(2, 0), (1, 1), (3, 2)]):
            s.add_queue_sample(PROJECT, T0 + 400 + 100 * i, pending_jobs=pj,
                               pending_slots=2 * pj, running_jobs=rj,
                               workers={"private": 2, "ec2": 1})
        s.add_queue_sample("other", T0 + 450, pending_jobs=0, pending_slots=0,
                           running_jobs=0, workers={})
        # h1: 4 CPUs, 20 s busy over 10 s -> 0.5; memory from the newest sample
        s.add_sample(HostSample("h1", T0 + 580, 0, 4, 8192, 5000))
        s.add_sample(HostSample("h1", T0 + 590, 4 * 10**9, 4, 8192, 4096))
        s.add_sample(HostSample("h1", T0 + 600, 24 * 10**9, 4, 8192, 2048))
        s.save_plan(PROJECT, {"actions": [{"kind": "launch", "count": 2}]}, T0 + 50)
        s.save_plan(PROJECT, {"actions": []}, T0 + 60)


# --------------------------------------------------------------------------- fixtures

class FakeActions:
    """Records each call; ``gate`` holds add_workers until set; remove_workers fails."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.gate = threading.Event()
        self.gate.set()

    def add_workers(self, project: str, count: int, cls: str | None) -> dict[str, Any]:
        self.calls.append(("add_workers", project, count, cls))
        assert self.gate.wait(10)
        return {"nodes": [f"worker{5 + i}" for i in range(count)], "failed": {}}

    def remove_workers(self, project: str, count: int) -> dict[str, Any]:
        self.calls.append(("remove_workers", project, count))
        raise PermanentError("no worker can be drained: the queue is unknown")

    def rebalance(self, project: str, dry_run: bool) -> dict[str, Any]:
        self.calls.append(("rebalance", project, dry_run))
        return {"dry_run": dry_run, "migrations": []}

    def scale(self, project: str, tier: str, size: int) -> dict[str, Any]:
        self.calls.append(("scale", project, tier, size))
        return {"tier": tier, "size": size, "done": []}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    fill_state(path)
    return path


@pytest.fixture
def actions() -> FakeActions:
    return FakeActions()


def make_client(state: Path, actions: Any = None) -> TestClient:
    app = create_app(state, token=TOKEN, actions=actions or FakeActions(),
                     clock=FakeClock(NOW),
                     metrics_registry=make_registry(state, now=lambda: NOW, vpn_peers=None))
    return TestClient(app)


@pytest.fixture
def client(state: Path, actions: FakeActions) -> TestClient:
    return make_client(state, actions)


def wait_done(client: TestClient, op: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/api/v1/operations/{op}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["state"] != "running" or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


# ------------------------------------------------------------------------ read routes

def test_projects_list_and_detail(client: TestClient) -> None:
    r = client.get("/api/v1/projects")
    assert r.status_code == 200
    by_name = {p["name"]: p for p in r.json()}
    assert set(by_name) == {PROJECT, "other"}
    sge = by_name[PROJECT]
    assert sge["source"] == "/specs/sgelab.yaml" and sge["spec_hash"] == "hash-sge"
    assert sge["created"] == T0 and sge["nodes"] == 6      # worker4 is DONE
    assert by_name["other"]["nodes"] == 1

    d = client.get(f"/api/v1/projects/{PROJECT}").json()
    assert d["nodes_by_state"] == {"RUNNING": 4, "BOOT": 1, "FAILED": 1}
    assert d["members"] == {"worker": [1, 2, 3, 4]}
    q = d["queue"]
    assert (q["pending_jobs"], q["pending_slots"], q["running_jobs"], q["held"]) == (3, 6, 2, 1)
    assert q["known"] is True and q["age_seconds"] == pytest.approx(30.0)
    [web] = d["tiers"]
    assert web["tier"] == "web" and web["group"] == "web" and web["size"] == 2
    assert web["serving"] == ["web1"] and web["last"]["target"] == 2
    assert web["history"][0]["to"] == 2
    assert d["breakers"] == {"ec2": {"open_until": T0 + 900}}


def test_unknown_project_is_404_everywhere(client: TestClient) -> None:
    for url in ["/api/v1/projects/nope", "/api/v1/nodes?project=nope",
                "/api/v1/queue?project=nope", "/api/v1/events?project=nope",
                "/api/v1/plans?project=nope", "/api/v1/timeline?project=nope", "/?project=nope"]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert "nope" in r.json()["detail"], url


def test_nodes_filters(client: TestClient) -> None:
    nodes = client.get("/api/v1/nodes").json()
    assert {(n["project"], n["name"]) for n in nodes} == {
        (PROJECT, x) for x in ["head0", "worker1", "worker2", "worker3", "web1", "web2"]
    } | {("other", "n1")}
    w2 = next(n for n in nodes if n["name"] == "worker2")
    assert w2["site"] == "ec2" and w2["state"] == "RUNNING" and w2["full_name"] == "worker2.sgelab"
    assert (w2["group"], w2["index"], w2["memory"], w2["vcpus"]) == ("worker", 2, 1024, 2)
    running = client.get(f"/api/v1/nodes?project={PROJECT}&state=RUNNING").json()
    assert sorted(n["name"] for n in running) == ["head0", "web1", "worker1", "worker2"]
    both = client.get("/api/v1/nodes?state=FAILED&state=BOOT").json()
    assert sorted(n["name"] for n in both) == ["web2", "worker3"]
    assert [n["name"] for n in client.get("/api/v1/nodes?site=ec2").json()] == ["worker2"]
    done = client.get("/api/v1/nodes?state=DONE").json()
    assert [n["name"] for n in done] == ["worker4"]
    assert client.get("/api/v1/nodes?state=ASLEEP").status_code == 422


def test_hosts_with_their_load(client: TestClient) -> None:
    hosts = {h["name"]: h for h in client.get("/api/v1/hosts").json()}
    h1 = hosts["h1"]
    assert h1["uri"] == "test:///default" and h1["memory"] == 8192 and h1["groups"] == ["kvm"]
    load = h1["load"]
    # the window is 60 s: all three samples; (24 s busy) / (20 s x 4 CPUs)
    assert load["cpu"] == pytest.approx(0.3) and load["samples"] == 3
    assert load["memory_free_mib"] == 2048 and load["ncpus"] == 4
    assert hosts["h2"]["load"] is None


def test_queue_timeline_plans(client: TestClient) -> None:
    queue = {q["project"]: q["queue"] for q in client.get("/api/v1/queue").json()}
    assert queue["other"] is None and queue[PROJECT]["pending_jobs"] == 3
    [one] = client.get(f"/api/v1/queue?project={PROJECT}").json()
    assert one["queue"]["group"] == "worker"

    tl = client.get(f"/api/v1/timeline?project={PROJECT}").json()
    assert [(p["t"], p["pending_jobs"], p["running_jobs"]) for p in tl] == [
        (T0 + 400, 2, 0), (T0 + 500, 1, 1), (T0 + 600, 3, 2)]
    assert tl[0]["workers"] == {"private": 2, "ec2": 1}
    later = client.get(f"/api/v1/timeline?since={T0 + 450}").json()
    assert [p["t"] for p in later] == [T0 + 450, T0 + 500, T0 + 600]
    assert client.get("/api/v1/timeline?since=nan").status_code == 422

    plans = client.get(f"/api/v1/plans?project={PROJECT}").json()
    assert [p["plan"]["actions"] for p in plans] == [[{"kind": "launch", "count": 2}], []]
    assert len(client.get("/api/v1/plans?limit=1").json()) == 1
    assert client.get("/api/v1/plans?limit=0").status_code == 422


def test_events_newest_last_with_limits(client: TestClient, state: Path) -> None:
    all_ = client.get("/api/v1/events").json()
    ids = [e["id"] for e in all_]
    assert ids == sorted(ids) and len(ids) == 35
    last3 = client.get(f"/api/v1/events?project={PROJECT}&limit=3").json()
    assert [e["kind"] for e in last3] == ["decision:drain", "tier:decision", "note"]
    w4 = client.get(f"/api/v1/events?project={PROJECT}&node=worker4").json()
    assert [e["to_state"] for e in w4] == ["PENDING", "FAILED", "EPILOG", "DONE"]
    assert w4[0]["kind"] == "node-added" and w4[0]["data"]["site"] == "ec2"
    after = client.get(f"/api/v1/events?after={ids[-2]}").json()
    assert [e["id"] for e in after] == ids[-1:]
    since = client.get(f"/api/v1/events?since={T0 + 300}&project={PROJECT}").json()
    assert since and all(e["time"] >= T0 + 300 for e in since)
    decisions = [e for e in all_ if e["kind"].startswith("decision:")]
    assert len(decisions) == 4 and decisions[0]["reason"] == "because 0"
    for bad in ["limit=0", "limit=1001", "after=-1", "since=abc", f"after={2**63}"]:
        assert client.get(f"/api/v1/events?{bad}").status_code == 422, bad
    with Store.open(state) as s:
        for i in range(120):
            s.record_event(None, "note", NOW, reason=f"note {i}")
    newest = client.get("/api/v1/events").json()            # limit 100 by default
    assert len(newest) == 100 and newest[-1]["reason"] == "note 119"
    assert len(client.get("/api/v1/events?limit=1000").json()) == 155


def test_health_and_empty_state(client: TestClient, tmp_path: Path) -> None:
    h = client.get("/api/v1/health").json()
    assert h == {"ok": True, "version": "0.1.0", "database": "ok",
                 "schema_version": SCHEMA_VERSION, "error": None}
    empty = make_client(tmp_path / "nothing-here")
    assert empty.get("/api/v1/health").json()["database"] == "absent"
    for url in ["/api/v1/projects", "/api/v1/nodes", "/api/v1/hosts", "/api/v1/queue",
                "/api/v1/events", "/api/v1/plans", "/api/v1/timeline"]:
        r = empty.get(url)
        assert (r.status_code, r.json()) == (200, []), url
    assert empty.get("/api/v1/projects/x").status_code == 404
    assert not (tmp_path / "nothing-here").exists()      # reading made nothing


def test_status_page(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert PROJECT in r.text and "worker2" in r.text
    r = client.get(f"/?project={PROJECT}")
    assert r.status_code == 200 and "worker1" in r.text


# --------------------------------------------------------------------- changing routes

POSTS = [(f"/api/v1/projects/{PROJECT}/workers", {"add": 2}),
         (f"/api/v1/projects/{PROJECT}/rebalance", {"dry_run": True}),
         (f"/api/v1/projects/{PROJECT}/tiers/web/scale", {"size": 3})]


@pytest.mark.parametrize(("url", "body"), POSTS)
def test_changing_routes_want_the_token(client: TestClient, actions: FakeActions, url: str,
                                        body: dict[str, Any]) -> None:
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"},
                    {"Authorization": b"Bearer t\xf6ken"}]:
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert actions.calls == []
    r = client.post(url, json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "running"
    assert r.headers["location"] == f"/api/v1/operations/{r.json()['operation']}"
    assert wait_done(client, r.json()["operation"])["state"] == "done"


def test_add_workers_runs_in_the_background_and_is_recorded(
        client: TestClient, actions: FakeActions, state: Path) -> None:
    last_id = client.get("/api/v1/events?limit=1").json()[-1]["id"]
    actions.gate.clear()
    r = client.post(f"/api/v1/projects/{PROJECT}/workers", json={"add": 2, "class": "big"},
                    headers=AUTH)
    assert r.status_code == 202
    op = r.json()["operation"]
    running = client.get(f"/api/v1/operations/{op}").json()
    assert running["state"] == "running" and running["ended"] is None
    assert running["verb"] == "add-workers" and running["args"] == {"add": 2, "class": "big"}
    actions.gate.set()
    done = wait_done(client, op)
    assert done["state"] == "done" and done["error"] is None
    assert done["result"] == {"nodes": ["worker5", "worker6"], "failed": {}}
    assert done["started"] == NOW and done["ended"] == NOW
    assert actions.calls == [("add_workers", PROJECT, 2, "big")]
    assert [o["id"] for o in client.get("/api/v1/operations").json()] == [op]
    events = client.get(f"/api/v1/events?project={PROJECT}&after={last_id}").json()
    assert [e["kind"] for e in events] == ["api:add-workers", "api:add-workers"]
    assert op in events[0]["reason"] and "started" in events[0]["reason"]
    assert "done" in events[1]["reason"] and "worker5" in events[1]["reason"]
    assert events[1]["data"] == {"operation": op, "state": "done"}
    assert events[0]["time"] == NOW
    with Store.open(state, readonly=True) as s:      # the record survives the server
        assert [e.kind for e in s.events(PROJECT, after=last_id)] == ["api:add-workers"] * 2


def test_a_failing_action_gives_failed_with_its_message(client: TestClient,
                                                        actions: FakeActions) -> None:
    r = client.post(f"/api/v1/projects/{PROJECT}/workers", json={"remove": 3}, headers=AUTH)
    assert r.status_code == 202
    done = wait_done(client, r.json()["operation"])
    assert done["state"] == "failed" and done["result"] is None
    assert done["error"] == "no worker can be drained: the queue is unknown"
    assert actions.calls == [("remove_workers", PROJECT, 3)]
    last = client.get(f"/api/v1/events?project={PROJECT}&limit=1").json()[-1]
    assert last["kind"] == "api:remove-workers" and "failed" in last["reason"]
    assert "queue is unknown" in last["reason"]


def test_rebalance_and_scale_get_their_arguments(client: TestClient,
                                                 actions: FakeActions) -> None:
    r1 = client.post(f"/api/v1/projects/{PROJECT}/rebalance", json={"dry_run": True},
                     headers=AUTH)
    r2 = client.post(f"/api/v1/projects/{PROJECT}/tiers/web/scale", json={"size": 0.0},
                     headers=AUTH)           # JSON Schema's integers: 0.0 is one
    assert wait_done(client, r1.json()["operation"])["result"] == {"dry_run": True,
                                                                    "migrations": []}
    assert wait_done(client, r2.json()["operation"])["result"]["size"] == 0
    assert sorted(actions.calls) == [("rebalance", PROJECT, True), ("scale", PROJECT, "web", 0)]


@pytest.mark.parametrize(("url", "body"), [
    ("workers", {}), ("workers", {"add": 0}), ("workers", {"add": 1001}),
    ("workers", {"remove": 0}), ("workers", {"add": 1, "remove": 1}),
    ("workers", {"remove": 1, "class": "big"}), ("workers", {"add": "two"}),
    ("workers", {"add": 1, "extra": True}), ("workers", {"add": 1, "class": ""}),
    ("workers", {"add": "2"}), ("workers", {"add": 2.5}), ("workers", {"add": True}),
    ("rebalance", {"dry_run": "maybe"}), ("rebalance", {"dry_run": 0}),
    ("rebalance", {"dry_run": "true"}), ("tiers/web/scale", {"size": -1}),
    ("tiers/web/scale", {"size": "3"}),
    ("tiers/web/scale", {"size": 1001}), ("tiers/web/scale", {}),
])
def test_bad_bodies_are_422_and_start_nothing(client: TestClient, actions: FakeActions,
                                              url: str, body: dict[str, Any]) -> None:
    r = client.post(f"/api/v1/projects/{PROJECT}/{url}", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert actions.calls == [] and client.get("/api/v1/operations").json() == []


def test_unknown_project_or_tier_is_404_before_anything_starts(client: TestClient,
                                                                actions: FakeActions) -> None:
    for url, body in [("/api/v1/projects/nope/workers", {"add": 1}),
                      ("/api/v1/projects/nope/rebalance", {"dry_run": False}),
                      ("/api/v1/projects/nope/tiers/web/scale", {"size": 1}),
                      (f"/api/v1/projects/{PROJECT}/tiers/db/scale", {"size": 1})]:
        r = client.post(url, json=body, headers=AUTH)
        assert r.status_code == 404, url
    assert actions.calls == [] and client.get("/api/v1/operations").json() == []
    assert client.get("/api/v1/operations/0123456789abcdef").status_code == 404


# ------------------------------------------------------------------- token, defaults

def test_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "new-state"
    token = load_or_make_token(state)
    path = state / "api-token"
    assert len(token) >= 40 and path.read_text().strip() == token
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_make_token(state) == token
    path.chmod(0o644)
    assert load_or_make_token(state) == token and path.stat().st_mode & 0o777 == 0o600


def test_default_actions_are_the_engines(state: Path) -> None:
    app = create_app(state, token=TOKEN, clock=FakeClock(NOW))
    assert isinstance(app.state.actions, EngineActions)
    assert app.state.actions.state_dir == state
    with pytest.raises(ValueError):
        create_app(state, token="")
    # the engine's own error reaches the operation: the recorded spec file does not exist
    client = TestClient(app)
    r = client.post(f"/api/v1/projects/{PROJECT}/workers", json={"add": 1}, headers=AUTH)
    done = wait_done(client, r.json()["operation"])
    assert done["state"] == "failed"
    assert "/specs/sgelab.yaml" in done["error"] and "gone" in done["error"]


def test_records_with_numbers_json_cannot_hold_still_give_json(tmp_path: Path) -> None:
    nan, inf = float("nan"), float("inf")
    with Store.open(tmp_path) as s:
        s.put_project("p", "/specs/p.yaml", "h", T0, data={
            "queue": {"at": nan, "pending_jobs": inf},
            "tiers": {"web": {"group": "web", "cooldown": inf, "last": {"x": nan},
                              "history": [{"at": -inf}], "serving": "web1"}}})
        s.record_event("p", "note", T0, data={"v": nan})
        s.save_plan("p", {"v": inf}, T0)
    client = make_client(tmp_path)
    d = client.get("/api/v1/projects/p").json()
    assert d["queue"]["at"] is None and d["queue"]["pending_jobs"] is None
    assert d["tiers"][0]["last"] == {"x": None} and d["tiers"][0]["serving"] == []
    assert client.get("/api/v1/events").json()[-1]["data"] == {"v": None}
    assert client.get("/api/v1/plans").json()[0]["plan"] == {"v": None}
    assert client.get("/metrics").status_code == 200


# --------------------------------------------------------------------------- OpenAPI

def _refs(x: Any) -> Iterator[str]:
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(x, list):
        for v in x:
            yield from _refs(v)


def test_openapi_document_is_valid(client: TestClient) -> None:
    doc = client.get("/api/v1/openapi.json").json()
    try:     # moto[server] brings it; schemathesis does not
        from openapi_spec_validator import validate
    except ImportError:
        pass
    else:
        validate(doc)
    # by hand too: every reference resolves, every operation has an id and its answers
    assert doc["openapi"].startswith("3.")
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref
    ops = [op for item in doc["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    assert all(op["responses"] for op in ops)
    assert doc["info"]["title"] == "elastic" and doc["info"]["version"] == "0.1.0"
    paths = doc["paths"]
    for p in ["/api/v1/projects", "/api/v1/projects/{name}", "/api/v1/nodes", "/api/v1/hosts",
              "/api/v1/queue", "/api/v1/events", "/api/v1/plans", "/api/v1/timeline",
              "/api/v1/health", "/api/v1/operations/{op_id}", "/", "/metrics"]:
        assert "get" in paths[p], p
    for p in ["/api/v1/projects/{name}/workers", "/api/v1/projects/{name}/rebalance",
              "/api/v1/projects/{name}/tiers/{tier}/scale"]:
        post = paths[p]["post"]
        assert post["security"] == [{"token": []}] and "401" in post["responses"], p
        assert "202" in post["responses"], p
    assert "security" not in paths["/api/v1/nodes"]["get"]
    assert doc["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer",
        "description": "The API token: the file api-token in the state directory."}
    node = doc["components"]["schemas"]["NodeOut"]["properties"]["state"]
    assert "RUNNING" in str(doc["components"]["schemas"]["State"]) and "$ref" in str(node)


# ------------------------------------------------------------------------- fuzzing

# The schema is loaded when the module is (schemathesis' lazy ``from_fixture`` does not work
# with pytest 9.2: it sets ``node._nodeid``); the app makes nothing until a request comes, and
# its state directory is filled (and removed) by the fixture of the one test that uses it.
_FUZZ_STATE = Path(tempfile.gettempdir()) / f"elastic-fuzz-{os.getpid()}-{uuid.uuid4().hex}"
_fuzz_app = create_app(_FUZZ_STATE, token=TOKEN, actions=FakeActions(), clock=FakeClock(NOW),
                       metrics_registry=make_registry(_FUZZ_STATE, now=lambda: NOW,
                                                      vpn_peers=None))
fuzzed = schemathesis.openapi.from_asgi("/api/v1/openapi.json", _fuzz_app)


@pytest.fixture(scope="module")
def fuzz_state() -> Iterator[Path]:
    fill_state(_FUZZ_STATE)
    yield _FUZZ_STATE
    shutil.rmtree(_FUZZ_STATE, ignore_errors=True)


@pytest.mark.slow
@fuzzed.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_the_whole_api(case, fuzz_state: Path) -> None:
    """No request the schema allows (and none of schemathesis' near misses) gets a 500;
    every answer matches the schema (status codes, content types, bodies)."""
    case.call_and_validate(headers=AUTH)
