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


def burst_spec(tmp: Path, info, *, extra_cloud: str = "") -> Path:
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
             f"    endpoint_url: {info.cloud_endpoint}" + extra_cloud)):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / f"{PROJECT}.yaml"
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


def test_full_private_hosts_burst_cloud_workers_that_run_the_jobs_and_then_go(
        cloud_lab, tmp_path):
    info = cloud_lab
    state = tmp_path / "state"
    spec = burst_spec(tmp_path, info)
    log = tmp_path / "autoscale.log"
    elastic(state, "up", str(spec), timeout=600)
    head = Head(state, PROJECT, HEAD_LAN)
    DIAGNOSE.append((head, state, PROJECT))
    try:
        head.wait_ready()
        jobs = head.qsub(6, count=4)
        seen: dict[str, str] = {}          # worker -> site
        most = 0
        with autoscaler(state, spec, log):
            def finished():
                nonlocal most
                nodes = [n for n in status(state, PROJECT)["nodes"]
                         if n["name"].startswith("worker")]
                seen.update({n["name"]: n["site"] for n in nodes})
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
            wait_for("the cloud workers to go", lambda: not [
                n for n in status(state, PROJECT)["nodes"] if n["name"].startswith("worker")],
                180, log, every=2)
            wait_for("their instances to be terminated", lambda: not cloud_instances(info),
                     60, log)
        assert not hub_peers(), hub_peers()
        report = status(state, PROJECT)
        reasons = [d["reason"] for d in report["decisions"] if d["kind"] == "decision:launch"]
        assert any("private hosts are full" in r and "bursting" in r and "to ec2" in r
                   for r in reasons), reasons
        qhost = head.sh("qhost")
        assert not re.search(r"^worker", qhost, re.M), qhost
        print(f"\n4 jobs ran on {sorted(seen)} (at most {most} at once), all gone after")
    finally:
        head.close()
        elastic(state, "down", PROJECT, timeout=300, check=False)
    assert not cloud_instances(info)
