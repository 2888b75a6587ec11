"""Bursting to the lab's local EC2: what an operator sees.

The cluster is `examples/sge/cluster-lab-burst.yaml` as shipped (a head running sge_qmaster,
workers too big for any lab host, so the private hosts are "full"), renamed, on its own
addresses, with the lab's local EC2 and front end named explicitly (these tests keep their
own state directory instead of `--lab`). Jobs are submitted on the head as `sgeuser`; the
autoscaler runs as the real command. A cloud worker is a namespace on the lab's internet
that runs its user-data: it brings up WireGuard to the hub in the front end and joins the
head's Grid Engine through it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.system.test_autoscale_sge import DIAGNOSE, FRONT, Head, autoscaler, wait_for
from tests.system.test_sge_guests import missing_sge
from tests.system.test_up import elastic, status

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sge" / "cluster-lab-burst.yaml"
PROJECT = "sgeburstt"
HEAD_LAN = "10.77.0.26"
OVERLAY = "10.250.9.0/24"


@pytest.fixture(scope="module")
def cloud_lab(lab):
    """The session's lab with its local EC2 (`lab up --cloud` on the same lab)."""
    missing = missing_sge()
    if missing:
        pytest.skip("Grid Engine in guests and on cloud nodes needs: " + ", ".join(missing))
    try:
        import moto  # noqa: F401
    except ImportError:
        pytest.skip("the lab's local EC2 needs moto[server] (the test extra)")
    from elastic.adapters.lab import Lab
    info = Lab(lab.hosts_file.parent).up(cloud=True)
    assert info.cloud_endpoint, "lab up --cloud gave no endpoint"
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(var, "testing")      # moto takes any; never real ones
    return info


def burst_spec(tmp: Path, info, *, extra_cloud: str = "", name: str = PROJECT,
               replace: tuple[tuple[str, str], ...] = ()) -> Path:
    """The shipped example as this module's project; ``extra_cloud`` adds lines to
    clouds.ec2, ``replace`` changes other settings (old, new)."""
    text = EXAMPLE.read_text()
    for old, new in (
            ("project: sgeburst", f"project: {PROJECT}"),
            ("batch: {system: sge, master: head}",
             f"batch: {{system: sge, master: head, netns: {FRONT}}}"),
            ("eth1: {address: 10.77.0.23}", f"eth1: {{address: {HEAD_LAN}}}"),
            ("10.23.0.", "10.24.0."),
            ("vpn: {type: wireguard, port: 51820, overlay: 10.250.0.0/24}",
             f"vpn: {{type: wireguard, port: 51829, overlay: {OVERLAY}, "
             f"endpoint: 172.31.255.254, netns: {FRONT}}}\n"
             f"    endpoint_url: {info.cloud_endpoint}" + extra_cloud),
            # quicker than the example's timers: every test waits for the scale-down
            ("idle_timeout: 20s", "idle_timeout: 3s"), ("min_lifetime: 20s", "min_lifetime: 3s"),
            ("cooldown: 5s", "cooldown: 2s"), ("tick: 2s", "tick: 1s\n  backoff: 3s"),
            *replace):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / f"{name}.yaml"
    path.write_text(f"include: [{info.hosts_file}]\n" + text)
    return path


def cloud_instances(info) -> dict[str, str]:
    """Our instances in the local EC2 that are not terminated: id -> state."""
    from elastic.adapters.cloudlab import ec2_client
    c = ec2_client(info.cloud_endpoint, "us-east-1")
    out = {}
    for r in c.describe_instances(Filters=[{"Name": "tag:elastic:project",
                                            "Values": [PROJECT]}])["Reservations"]:
        for i in r["Instances"]:
            if i["State"]["Name"] != "terminated":
                out[i["InstanceId"]] = i["State"]["Name"]
    return out


def hub_peers() -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", FRONT, "wg", "show", "all", "peers"],
                         capture_output=True, text=True, timeout=20).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def burst_cluster(cloud_lab, tmp_path_factory):
    """The head of the module's project, up for its tests; each test runs the autoscaler
    with its own variant of the spec (clouds and scaling settings only)."""
    tmp = tmp_path_factory.mktemp("burst")
    state = tmp / "state"
    elastic(state, "up", str(burst_spec(tmp, cloud_lab)), timeout=600)
    head = Head(state, PROJECT, HEAD_LAN)
    DIAGNOSE.append((head, state, PROJECT))
    try:
        head.wait_ready()
        yield state, head
    finally:
        head.close()
        elastic(state, "down", PROJECT, timeout=300, check=False)
        assert not cloud_instances(cloud_lab), "elastic down left instances running"


@pytest.fixture
def knobs(cloud_lab):
    """Set the local EC2's knobs; all cleared after the test."""
    from elastic.adapters import cloudlab
    directory = cloud_lab.hosts_file.parent / "cloud"
    set_ = []

    def set_knobs(**kw):
        set_.extend(kw)
        return cloudlab.set_knobs(directory, **kw)
    yield set_knobs
    cloudlab.set_knobs(directory, **{k: None for k in set_})


def cloud_workers(state: Path) -> dict[str, dict]:
    return {n["name"]: n for n in status(state, PROJECT)["nodes"]
            if n["name"].startswith("worker") and n["state"] != "DONE"}


def events(state: Path) -> list:
    from elastic.state import Store
    with Store.open(state, readonly=True) as store:
        return store.events(PROJECT)


def no_workers_left(state: Path, info, log: Path) -> None:
    wait_for("the cloud workers to go", lambda: not cloud_workers(state), 180, log, every=2)
    wait_for("their instances to be terminated", lambda: not cloud_instances(info), 60, log)
    assert not hub_peers(), hub_peers()


def test_full_private_hosts_burst_cloud_workers_that_run_the_jobs_and_then_go(
        burst_cluster, cloud_lab, tmp_path):
    state, head = burst_cluster
    spec = burst_spec(tmp_path, cloud_lab)
    log = tmp_path / "autoscale.log"
    jobs = head.qsub(6, count=4)
    seen: dict[str, str] = {}          # worker -> site
    most = 0
    with autoscaler(state, spec, log):
        def finished():
            nonlocal most
            nodes = cloud_workers(state)
            seen.update({n: w["site"] for n, w in nodes.items()})
            most = max(most, len(nodes))
            done = head.qacct()
            return done if all(j in done for j in jobs) else None
        done = wait_for("4 jobs to finish on cloud workers", finished, 300, log, every=2)
        for j in jobs:
            assert done[j]["exit_status"] == "0" and done[j]["failed"] == "0", done[j]
            assert done[j]["owner"] == "sgeuser"
            assert seen.get(done[j]["hostname"]) == "ec2", (done[j]["hostname"], seen)
        assert 1 <= most <= 2                       # clouds.ec2.max_nodes 2
        # idle: drained, out of Grid Engine, terminated, peers off the hub
        no_workers_left(state, cloud_lab, log)
    report = status(state, PROJECT)
    reasons = [d["reason"] for d in report["decisions"] if d["kind"] == "decision:launch"]
    assert any("private hosts are full" in r and "bursting" in r and "to ec2" in r
               for r in reasons), reasons
    qhost = head.sh("qhost")
    assert not re.search(r"^worker", qhost, re.M), qhost
    print(f"\n4 jobs ran on {sorted(seen)} (at most {most} at once), all gone after")


def test_no_capacity_for_the_first_type_fails_over_and_the_budget_stops_launches(
        burst_cluster, cloud_lab, tmp_path, knobs):
    state, head = burst_cluster
    # t3.small has no capacity; a t3.medium costs 0.0416 $/h: one fits 0.05 $/h, two do not
    spec = burst_spec(tmp_path, cloud_lab, replace=(
        ("max_hourly_cost: 1.0", "max_hourly_cost: 0.05"),))
    knobs(insufficient_capacity={"types": ["t3.small"]})
    log = tmp_path / "autoscale.log"
    before = set(cloud_instances_types(cloud_lab))
    jobs = head.qsub(10, count=2)
    with autoscaler(state, spec, log):
        # while the second job waits, status says why nothing more is launched
        said = wait_for("status to name the budget", lambda: next((m for d in status(
            state, PROJECT)["decisions"] if (m := re.search(r"ec2 is full \(budget: [^)]*\)",
                                                            d["reason"]))), None), 120,
            log, every=1)
        done = wait_for("2 jobs to finish", lambda: (d := head.qacct()) and all(
            j in d for j in jobs) and d, 300, log, every=2)
        no_workers_left(state, cloud_lab, log)
    new = {i: t for i, t in cloud_instances_types(cloud_lab).items() if i not in before}
    assert sorted(new.values()) == ["t3.medium"], new   # failed over, and only one of them
    assert len({done[j]["hostname"] for j in jobs}) == 1, done   # one worker ran both
    assert "max_hourly_cost 0.05" in said.group(0), said.group(0)


def cloud_instances_types(info) -> dict[str, str]:
    from elastic.adapters.cloudlab import ec2_client
    c = ec2_client(info.cloud_endpoint, "us-east-1")
    return {i["InstanceId"]: i["InstanceType"]
            for r in c.describe_instances(Filters=[{"Name": "tag:elastic:project",
                                                    "Values": [PROJECT]}])["Reservations"]
            for i in r["Instances"]}


def test_a_boot_that_never_completes_is_terminated_and_replaced(
        burst_cluster, cloud_lab, tmp_path, knobs):
    state, head = burst_cluster
    spec = burst_spec(tmp_path, cloud_lab, replace=(("boot_timeout: 90s", "boot_timeout: 12s"),))
    knobs(never_boot=["worker1"])
    log = tmp_path / "autoscale.log"
    (job,) = head.qsub(2)
    with autoscaler(state, spec, log):
        first = wait_for("the first instance", lambda: next(iter(cloud_instances(cloud_lab)),
                                                            None), 60, log, every=0.5)
        knobs(never_boot=[first])          # that one never boots; its replacement will
        wait_for("the replacement", lambda: any(
            e.kind == "decision:replace" for e in events(state)), 90, log)
        done = wait_for("the job to finish", lambda: head.qacct().get(job), 180, log, every=2)
        assert first not in cloud_instances(cloud_lab)        # terminated
        no_workers_left(state, cloud_lab, log)
    assert done["exit_status"] == "0", done
    (replace,) = [e for e in events(state) if e.kind == "decision:replace"]
    assert "has not joined the batch system" in replace.reason


def test_a_controller_killed_between_run_instances_and_recording_adopts_the_instance(
        burst_cluster, cloud_lab, tmp_path, knobs):
    import signal
    state, head = burst_cluster
    spec = burst_spec(tmp_path, cloud_lab)
    knobs(answer_delay={"RunInstances": 5})   # launched at once, answered 5 s late
    log = tmp_path / "autoscale.log"
    (job,) = head.qsub(2)
    before = set(cloud_instances_types(cloud_lab))
    with autoscaler(state, spec, log) as p:
        wait_for("an instance launched but not yet answered", lambda: cloud_instances(
            cloud_lab), 60, log, every=0.2)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    (made,) = cloud_instances(cloud_lab)
    (node,) = cloud_workers(state).values()
    assert node["state"] == "PROLOG" and node["host"] in (None, ""), node   # not recorded
    knobs(answer_delay=None)
    with autoscaler(state, spec, log):
        done = wait_for("the job to finish", lambda: head.qacct().get(job), 180, log, every=2)
        assert done["exit_status"] == "0" and done["hostname"] == node["name"], done
        # adopted, never a second one
        assert set(cloud_instances_types(cloud_lab)) - before == {made}
        no_workers_left(state, cloud_lab, log)
    assert any(e.kind == "cloud:sweep" and "adopted" in e.reason for e in events(state))


def test_a_spot_interruption_reschedules_the_job_which_completes_elsewhere(
        burst_cluster, cloud_lab, tmp_path, knobs):
    state, head = burst_cluster
    spec = burst_spec(tmp_path, cloud_lab, extra_cloud="\n    spot: true")
    knobs(spot_interrupt={"worker1": 18})      # AWS takes worker1 back 18 s after it starts
    log = tmp_path / "autoscale.log"
    jobs = head.qsub(25, count=2)
    with autoscaler(state, spec, log):
        # that instance only: a later worker1 (the name is used again) is left alone
        first = wait_for("worker1's instance", lambda: cloud_workers(state).get(
            "worker1", {}).get("host"), 60, log, every=0.5)
        knobs(spot_interrupt={first: 18})
        on_worker1 = wait_for("a job running on worker1", lambda: [
            j for j, h in head.running().items() if h == "worker1"], 90, log, every=1)
        wait_for("worker1 to be interrupted", lambda: any(
            "worker1" in (e.reason or "") and "replace it" in (e.reason or "")
            for e in events(state)), 120, log, every=2)
        done = wait_for("both jobs to finish", lambda: (d := head.qacct()) and all(
            j in d and d[j]["failed"] == "0" for j in jobs) and d, 300, log, every=3)
        no_workers_left(state, cloud_lab, log)
    (moved,) = on_worker1
    # the interrupted run is accounted as rescheduled, then the job ran again to the end
    # (on worker2, or on a new worker1: the name is used again, the instance is another)
    acct = head.sh(f"qacct -j {moved}")
    assert re.search(r"^failed\s+25\s*: rescheduling", acct, re.M), acct
    assert done[moved]["exit_status"] == "0" and done[moved]["failed"] == "0", done[moved]
    assert any(e.kind == "decision:reschedule" for e in events(state))
    failed = [e for e in events(state) if e.kind == "decision:remove" and "FAILED" in e.reason]
    assert failed, "worker1 was not removed as FAILED"


def test_the_same_burst_through_openvpn(burst_cluster, cloud_lab, tmp_path):
    """vpn.type openvpn: per-node certificates from elastic's CA, the hub an OpenVPN server
    in the front end; the cloud workers join Grid Engine through it and go when idle."""
    state, head = burst_cluster
    spec = burst_spec(tmp_path, cloud_lab, replace=(
        (f"vpn: {{type: wireguard, port: 51829, overlay: {OVERLAY}",
         "vpn: {type: openvpn, port: 1194, overlay: 10.250.10.0/24"),))
    log = tmp_path / "autoscale.log"
    jobs = head.qsub(4, count=2)
    seen: set[str] = set()
    tunnels: set[str] = set()
    with autoscaler(state, spec, log):
        def finished():
            seen.update(cloud_workers(state))
            out = subprocess.run(["ip", "netns", "exec", FRONT, "ip", "-o", "link"],
                                 capture_output=True, text=True, timeout=20).stdout
            tunnels.update(re.findall(r"^\d+: (eov[0-9a-f]+):", out, re.M))
            d = head.qacct()
            return d if all(j in d for j in jobs) else None
        done = wait_for("2 jobs to finish through OpenVPN", finished, 300, log, every=2)
        for j in jobs:
            assert done[j]["exit_status"] == "0", done[j]
            assert done[j]["hostname"] in seen, (done[j]["hostname"], seen)
        assert tunnels, "no OpenVPN hub (tun eov...) in the front end"
        wait_for("the cloud workers to go", lambda: not cloud_workers(state), 180, log, every=2)
        wait_for("their instances to be terminated", lambda: not cloud_instances(cloud_lab),
                 60, log)
    ccd = list((state / "vpn" / PROJECT / "openvpn" / "ec2" / "ccd").glob("*"))
    assert not ccd, ccd                    # every node's client config is gone with it
