"""The Prometheus metrics (elastic.server.metrics): scraped through the API's /metrics and
parsed back with prometheus_client's own parser, every figure is the state DB's (the DB of
test_server_api.fill_state, whose figures are worked out below)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from elastic.adapters.vpn import Peer
from elastic.clock import FakeClock
from elastic.errors import TransientError
from elastic.lifecycle import State
from elastic.server import metrics
from elastic.server.app import create_app
from elastic.server.metrics import make_registry, render
from elastic.state import Store
from tests.unit.test_server_api import NOW, PROJECT, T0, TOKEN, fill_state

MIB = 1024 * 1024


def scrape(text: str | bytes) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value; the text must parse."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def families(text: str | bytes) -> dict[str, str]:
    if isinstance(text, bytes):
        text = text.decode()
    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}


def v(got: dict, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    fill_state(path)
    return path


def fake_peers(calls: list | None = None):
    def peers(ifname: str, netns: str | None) -> list[Peer]:
        if calls is not None:
            calls.append((ifname, netns))
        return [Peer("A" * 43 + "=", "198.51.100.7:40000", ("10.250.0.2/32",), int(NOW - 42),
                     1000, 2000, 25),
                Peer("B" * 43 + "=", None, ("10.250.0.9/32",), 0, 0, 0, None)]
    return peers


@pytest.fixture
def client(state: Path) -> TestClient:
    app = create_app(state, token=TOKEN, actions=object(), clock=FakeClock(NOW),  # type: ignore[arg-type]
                     metrics_registry=make_registry(state, now=lambda: NOW,
                                                    vpn_peers=fake_peers()))
    return TestClient(app)


def test_metrics_match_the_database(client: TestClient, state: Path) -> None:
    with Store.open(state) as s:      # worker2's overlay address, so its peer has a name
        s.lease(PROJECT, "vpn:ec2", "10.250.0.2", "worker2", "vpn0", "02:57:0a:fa:00:02", T0)
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = scrape(r.text)
    types = families(r.text)

    assert v(got, "elastic_up") == 1
    assert v(got, "elastic_info", version="0.1.0") == 1

    # nodes by state and site (worker4 is DONE: not there)
    nodes = {dict(k[1])["state"] + "/" + dict(k[1])["site"] + "/" + dict(k[1])["project"]: val
             for k, val in got.items() if k[0] == "elastic_nodes"}
    assert nodes == {"RUNNING/private/sgelab": 3, "RUNNING/ec2/sgelab": 1,
                     "BOOT/private/sgelab": 1, "FAILED/private/sgelab": 1,
                     "PENDING/private/other": 1}

    # the last queue summary, read 30 s ago
    assert v(got, "elastic_queue_pending_jobs", project=PROJECT) == 3
    assert v(got, "elastic_queue_pending_slots", project=PROJECT) == 6
    assert v(got, "elastic_queue_running_jobs", project=PROJECT) == 2
    assert v(got, "elastic_queue_age_seconds", project=PROJECT) == pytest.approx(30)
    assert ("elastic_queue_pending_jobs", frozenset({("project", "other")})) not in got

    # decisions by kind; a note is none
    assert types["elastic_decisions"] == "counter"
    decisions = {(dict(k[1])["project"], dict(k[1])["kind"]): val for k, val in got.items()
                 if k[0] == "elastic_decisions_total"}
    assert decisions == {(PROJECT, "launch"): 2, (PROJECT, "drain"): 1, (PROJECT, "tier"): 1,
                         ("other", "launch"): 1}

    # launch failures by site
    assert v(got, "elastic_launch_failures_total", project=PROJECT, site="private") == 1
    assert v(got, "elastic_launch_failures_total", project=PROJECT, site="ec2") == 1

    # boots: private 8 s, 25 s, 3 s; ec2 50 s
    assert types["elastic_boot_duration_seconds"] == "histogram"

    def bucket(name: str, le: str, **labels: str) -> float:
        return v(got, f"{name}_bucket", le=le, **labels)

    boot = "elastic_boot_duration_seconds"
    private = {"project": PROJECT, "site": "private"}
    assert [bucket(boot, le, **private) for le in
            ["5.0", "10.0", "20.0", "30.0", "60.0", "120.0", "300.0", "600.0", "+Inf"]] == \
        [1, 2, 2, 3, 3, 3, 3, 3, 3]
    assert v(got, f"{boot}_count", **private) == 3 and v(got, f"{boot}_sum", **private) == 36
    ec2 = {"project": PROJECT, "site": "ec2"}
    assert bucket(boot, "30.0", **ec2) == 0 and bucket(boot, "60.0", **ec2) == 1
    assert v(got, f"{boot}_sum", **ec2) == 50

    # job waits: job 1 waited 30 s (ec2), job 2 105 s (private); job 3 has not started
    wait = "elastic_job_wait_seconds"
    assert bucket(wait, "10.0", **ec2) == 0 and bucket(wait, "30.0", **ec2) == 1
    assert bucket(wait, "60.0", **private) == 0 and bucket(wait, "300.0", **private) == 1
    assert v(got, f"{wait}_count", **private) == 1 and v(got, f"{wait}_sum", **private) == 105
    # the newest worker that ran a job: worker2, RUNNING at T0+150, its first job at T0+420
    assert v(got, "elastic_time_to_first_job_seconds", project=PROJECT) == 270

    # cloud spend: worker2 (t3.small, 0.5 $/h) from T0+100 to now; worker4 had no instance
    assert v(got, "elastic_cloud_spend_dollars", project=PROJECT, cloud="ec2") == \
        pytest.approx(530 / 3600 * 0.5, abs=1e-6)

    # the VPN hub: two peers, one of which shook hands 42 s ago
    assert v(got, "elastic_vpn_peers", project=PROJECT, cloud="ec2") == 2
    assert v(got, "elastic_vpn_handshake_age_seconds", project=PROJECT, peer="worker2") == 42
    assert len([k for k in got if k[0] == "elastic_vpn_handshake_age_seconds"]) == 1

    # h1: 20 s busy of 4 CPUs over its last 10 s; memory of its newest sample; h2 unsampled
    assert v(got, "elastic_host_cpu_ratio", host="h1") == pytest.approx(0.5)
    assert v(got, "elastic_host_memory_free_bytes", host="h1") == 2048 * MIB
    assert v(got, "elastic_host_memory_total_bytes", host="h1") == 8192 * MIB
    assert not [k for k in got if dict(k[1]).get("host") == "h2"]

    # the web tier: web1 and web2 exist, web1 serves
    assert v(got, "elastic_tier_frontends", project=PROJECT, tier="web") == 2
    assert v(got, "elastic_tier_serving", project=PROJECT, tier="web") == 1


def test_counters_follow_new_events_between_scrapes(client: TestClient, state: Path) -> None:
    first = scrape(client.get("/metrics").text)
    with Store.open(state) as s:
        s.record_event(PROJECT, "decision:launch", NOW, reason="more demand")
        s.record_event(PROJECT, "decision:replace", NOW, reason="worker3 failed")
        s.add_node(PROJECT, "worker5", NOW - 100, site="ec2", data={"group": "worker"})
        s.transition(PROJECT, "worker5", State.PROLOG, "enrolled", NOW - 99)
        s.transition(PROJECT, "worker5", State.BOOT, "instance i-9 (t3.large) starting on "
                     "clouds.ec2", NOW - 98)
        s.transition(PROJECT, "worker5", State.RUNNING, "joined", NOW - 100 + 200)
        s.transition(PROJECT, "worker5", State.FAILED, "vanished", NOW)
    second = client.get("/metrics").text
    got = scrape(second)
    assert v(got, "elastic_decisions_total", project=PROJECT, kind="launch") == \
        v(first, "elastic_decisions_total", project=PROJECT, kind="launch") + 1
    assert v(got, "elastic_decisions_total", project=PROJECT, kind="replace") == 1
    assert v(got, "elastic_launch_failures_total", project=PROJECT, site="ec2") == 2
    ec2 = {"project": PROJECT, "site": "ec2"}
    assert v(got, "elastic_boot_duration_seconds_bucket", le="120.0", **ec2) == 1
    assert v(got, "elastic_boot_duration_seconds_bucket", le="300.0", **ec2) == 2
    # worker5: 100 s at 2 $/h more
    assert v(got, "elastic_cloud_spend_dollars", project=PROJECT, cloud="ec2") == \
        pytest.approx(530 / 3600 * 0.5 + 100 / 3600 * 2.0, abs=1e-6)
    # a collector that reads the whole log at once agrees with the incremental one
    fresh = scrape(render(state, now=lambda: NOW, vpn_peers=fake_peers()))
    assert fresh == got


def test_an_empty_state_directory_has_only_up_and_info(tmp_path: Path) -> None:
    text = render(tmp_path / "none", now=lambda: NOW)
    assert families(text) == {"elastic_up": "gauge", "elastic_info": "gauge"}
    got = scrape(text)
    assert got == {("elastic_up", frozenset()): 1.0,
                   ("elastic_info", frozenset({("version", "0.1.0")})): 1.0}
    assert not (tmp_path / "none").exists()
    app = create_app(tmp_path / "none", token=TOKEN, actions=object())  # type: ignore[arg-type]
    assert scrape(TestClient(app).get("/metrics").text) == got


def test_a_database_that_cannot_be_read_gives_up_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "elastic.db").write_bytes(b"this is not a database" * 100)
    got = scrape(render(state, now=lambda: NOW))
    assert got[("elastic_up", frozenset())] == 0
    assert len(got) == 2


def test_no_hub_recorded_no_vpn_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state) as s:
        s.put_project("p", "/specs/p.yaml", "h", T0)
    calls: list = []
    got = scrape(render(state, now=lambda: NOW, vpn_peers=fake_peers(calls)))
    assert calls == [] and not [k for k in got if k[0].startswith("elastic_vpn")]


def test_a_hub_that_fails_or_hangs_is_left_out(state: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ifname: str, netns: str | None) -> list[Peer]:
        raise TransientError(f"wg show {ifname}: the interface does not answer")

    got = scrape(render(state, now=lambda: NOW, vpn_peers=broken))
    assert not [k for k in got if k[0].startswith("elastic_vpn")]
    assert v(got, "elastic_tier_serving", project=PROJECT, tier="web") == 1   # the rest is there

    release = threading.Event()
    calls: list = []

    def hanging(ifname: str, netns: str | None) -> list[Peer]:
        calls.append(ifname)
        release.wait(5)
        return []

    monkeypatch.setattr(metrics, "VPN_TIMEOUT", 0.2)
    try:
        got = scrape(render(state, now=lambda: NOW, vpn_peers=hanging))
    finally:
        release.set()
    assert calls == ["ewg0123abcd"]
    assert not [k for k in got if k[0].startswith("elastic_vpn")]
    assert v(got, "elastic_up") == 1


def test_the_registry_is_its_own(state: Path) -> None:
    from prometheus_client import REGISTRY
    before = {m.name for m in REGISTRY.collect()}
    registry = make_registry(state, now=lambda: NOW, vpn_peers=None)
    assert not any(n.startswith("elastic") for n in before)
    assert not any(m.name.startswith("elastic") for m in REGISTRY.collect())
    assert "elastic_nodes" in {m.name for m in registry.collect()}
