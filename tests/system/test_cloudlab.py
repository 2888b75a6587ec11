"""The lab's local cloud: moto's EC2 on loopback behind the fault proxy, and the agent that
makes its instances real (a namespace on a public bridge made here, running the user-data).

Scaffolding (all removed at the end, even on failure): ``elastic-t-inet-<tag>`` holds the
bridge pub0 (the public segment); ``elastic-t-hub-<tag>`` is on it at 172.31.255.254/16
(the hub / front end, and the instances' gateway). No traffic leaves these namespaces."""

from __future__ import annotations

import ipaddress
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from botocore.exceptions import ClientError  # noqa: E402

from elastic.adapters import cloudlab, net  # noqa: E402
from elastic.adapters.run import run  # noqa: E402
from elastic.errors import ConfigError  # noqa: E402
from tests.system.waiting import wait_for as _wait_for  # noqa: E402

pytestmark = pytest.mark.system

REGION = "us-east-1"
HUB = "172.31.255.254"


def _missing() -> list[str]:
    out = [b for b in ("ip", "unshare", "ping") if shutil.which(b) is None]
    if os.geteuid() != 0:
        out.append("root (network namespaces)")
    return out


def wait_for(what: str, check: Callable[[], Any], timeout: float = 8.0) -> Any:
    return _wait_for(what, check, timeout, every=0.1)


@pytest.fixture(scope="module")
def segment():
    """The public segment: a bridge in a namespace of ours, and a hub on it."""
    missing = _missing()
    if missing:
        pytest.skip("the local cloud's tests need: " + ", ".join(missing))
    tag = uuid.uuid4().hex[:6]
    inet, hub = f"elastic-t-inet-{tag}", f"elastic-t-hub-{tag}"
    try:
        net.create_netns(inet)
        net.create_netns(hub)
        net.add_bridge("pub0", ns=inet)
        net.add_veth("eth0", hub, f"vt-{tag}", inet, peer_master="pub0")
        net.set_address("eth0", f"{HUB}/16", ns=hub)
        yield inet, hub
    finally:
        for ns in (hub, inet):
            net.kill_netns_pids(ns)
            net.delete_netns(ns)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, segment):
    inet, _ = segment
    directory = tmp_path_factory.mktemp("cloud")
    c = cloudlab.LocalCloud(directory)
    agent = None
    try:
        c.start()
        agent = cloudlab.CloudAgent(c.moto_endpoint, c.directory, bridge_netns=inet,
                                    bridge="pub0", gateway=HUB, poll=0.2).start()
        yield c, agent
    finally:
        try:
            if agent is not None:
                agent.stop()
        finally:
            c.stop()
        left = [n for n in net.list_netns() if n.startswith(cloudlab.NETNS_PREFIX)
                and agent is not None and n in agent.made().values()]
        assert not left


@pytest.fixture
def ec2(cloud):
    c, agent = cloud
    c.set_knobs(**{k: None for k in c.knobs()})
    client = c.client(REGION)
    launched: list[str] = []
    yield c, agent, client, launched
    c.set_knobs(**{k: None for k in c.knobs()})
    if launched:
        c.client(REGION, direct=True).terminate_instances(InstanceIds=launched)
    wait_for("the test's instances unmade",
             lambda: not set(launched) & set(agent.made()), timeout=10)


@pytest.fixture(scope="module")
def ami(cloud) -> str:
    c, _ = cloud
    return c.client(REGION, direct=True).describe_images(Owners=["amazon"])["Images"][0][
        "ImageId"]


def user_data(out: Path, marker: str) -> str:
    return f"""#!/bin/sh
O={out}/$ELASTIC_INSTANCE_ID
hostname > $O.hostname
id -u > $O.uid
ip -4 addr show dev eth0 > $O.addr
sleep 300 &
echo $! > $O.pid
echo {marker}
wait
"""


def launch(ec2, ami: str, body: str, itype: str = "t3.small", name: str | None = None) -> str:
    _, _, client, launched = ec2
    kw: dict[str, Any] = {}
    if name:
        kw["TagSpecifications"] = [{"ResourceType": "instance",
                                    "Tags": [{"Key": "Name", "Value": name}]}]
    reply = client.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType=itype,
                                 UserData=body, **kw)
    iid = reply["Instances"][0]["InstanceId"]
    launched.append(iid)
    return iid


def state(ec2, iid: str) -> str:
    c = ec2[0]
    d = c.client(REGION, direct=True).describe_instances(InstanceIds=[iid])
    return d["Reservations"][0]["Instances"][0]["State"]["Name"]


def ping(ns: str, address: str) -> bool:
    return run(["ping", "-c", "1", "-W", "2", address], netns=ns, timeout=10,
               check=False).returncode == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_an_instance_is_a_namespace_running_its_user_data_until_terminated(
        ec2, ami, tmp_path, segment):
    c, agent, client, _ = ec2
    _, hub = segment
    t0 = time.monotonic()
    iid = launch(ec2, ami, user_data(tmp_path, "BOOTED-1"), name="burst1")
    d = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    private = d["PrivateIpAddress"]
    assert ipaddress.ip_address(private) in ipaddress.ip_network("172.31.0.0/16")
    ns = cloudlab.instance_netns(iid)
    assert ns.startswith("elastic-c-") and len(cloudlab.instance_veth(iid)) <= 15
    wait_for("the marker on the console", lambda: "BOOTED-1" in agent.console(iid))
    took = time.monotonic() - t0
    assert net.netns_exists(ns) and agent.made()[iid] == ns
    assert (tmp_path / f"{iid}.hostname").read_text().strip() == "burst1"
    assert (tmp_path / f"{iid}.uid").read_text().strip() == "0"
    assert f"inet {private}/16" in (tmp_path / f"{iid}.addr").read_text()
    assert os.uname().nodename != "burst1"          # the host's own name is untouched
    assert ping(ns, HUB) and ping(hub, private)
    pid = int((tmp_path / f"{iid}.pid").read_text())
    assert _alive(pid)
    print(f"launch -> user-data ran: {took:.2f} s")

    t1 = time.monotonic()
    client.terminate_instances(InstanceIds=[iid])
    wait_for("the namespace gone", lambda: not net.netns_exists(ns))
    assert not _alive(pid)
    assert iid not in agent.made()
    assert not net.link_exists(cloudlab.instance_veth(iid), ns=segment[0])
    print(f"terminate -> namespace and processes gone: {time.monotonic() - t1:.2f} s")
    assert "removed" in agent.console(iid)


def test_boot_delay_delays_the_user_data(ec2, ami, tmp_path):
    c, agent, _, _ = ec2
    c.set_knobs(boot_delay=2.0)
    t0 = time.monotonic()
    iid = launch(ec2, ami, user_data(tmp_path, "BOOTED-2"))
    wait_for("the namespace", lambda: iid in agent.made())
    assert "BOOTED-2" not in agent.console(iid)
    wait_for("the marker", lambda: "BOOTED-2" in agent.console(iid))
    took = time.monotonic() - t0
    assert 2.0 <= took < 6.0, took
    print(f"boot_delay 2 s: marker after {took:.2f} s")


def test_never_boot_keeps_the_instance_running_and_idle(ec2, ami, tmp_path):
    c, agent, _, _ = ec2
    c.set_knobs(never_boot=["idle1"])
    iid = launch(ec2, ami, user_data(tmp_path, "BOOTED-3"), name="idle1")
    wait_for("the namespace", lambda: iid in agent.made())
    time.sleep(1.5)
    assert "BOOTED-3" not in agent.console(iid)
    assert "never_boot" in agent.console(iid)
    assert state(ec2, iid) == "running"
    assert net.netns_pids(cloudlab.instance_netns(iid)) == []


def test_the_proxy_injects_capacity_errors_and_throttling(ec2, ami):
    c, _, client, launched = ec2

    def code(**kw: Any) -> str | None:
        try:
            r = client.run_instances(ImageId=ami, MinCount=1, MaxCount=1, **kw)
        except ClientError as e:
            return e.response["Error"]["Code"]
        launched.append(r["Instances"][0]["InstanceId"])
        return None

    c.set_knobs(insufficient_capacity={"types": ["t3.small"], "zones": [f"{REGION}b"]})
    assert code(InstanceType="t3.small") == "InsufficientInstanceCapacity"
    assert code(InstanceType="t3.medium") is None
    assert code(InstanceType="t3.medium",
                Placement={"AvailabilityZone": f"{REGION}b"}) == "InsufficientInstanceCapacity"
    c.set_knobs(insufficient_capacity=None, throttle=2)
    client.describe_instances()                         # other actions are not counted
    assert [code(InstanceType="t3.micro") for _ in range(3)] == [
        "RequestLimitExceeded", "RequestLimitExceeded", None]
    assert c.knobs()["throttle"] == 0
    with pytest.raises(ConfigError):
        c.set_knobs(throttle="many")
    with pytest.raises(ConfigError):
        c.set_knobs(bogus=1)


def test_a_spot_instance_is_reclaimed_by_itself(ec2, ami, tmp_path):
    c, agent, _, _ = ec2
    c.set_knobs(spot_interrupt={"spot1": 1.0})
    iid = launch(ec2, ami, user_data(tmp_path, "BOOTED-5"), name="spot1")
    ns = cloudlab.instance_netns(iid)
    wait_for("the marker", lambda: "BOOTED-5" in agent.console(iid))
    t0 = time.monotonic()
    wait_for("terminated by the agent", lambda: state(ec2, iid) == "terminated")
    wait_for("its namespace gone", lambda: not net.netns_exists(ns))
    assert "spot interruption" in agent.console(iid)
    print(f"spot interruption: gone {time.monotonic() - t0:.2f} s after the marker")


def test_a_restarted_agent_adopts_running_instances_and_removes_gone_ones(
        ec2, ami, tmp_path, segment):
    c, agent, client, _ = ec2
    keep = launch(ec2, ami, user_data(tmp_path, "BOOTED-6"))
    gone = launch(ec2, ami, user_data(tmp_path, "BOOTED-6"))
    for iid in (keep, gone):
        wait_for("the marker", lambda iid=iid: "BOOTED-6" in agent.console(iid))
    agent.stop(keep=True)                                # as if the agent died
    try:
        assert net.netns_exists(cloudlab.instance_netns(gone))
        client.terminate_instances(InstanceIds=[gone])
        agent.start()
        wait_for("the gone one removed",
                 lambda: not net.netns_exists(cloudlab.instance_netns(gone)))
        assert agent.made().get(keep) == cloudlab.instance_netns(keep)
        assert gone not in agent.made()
        time.sleep(0.5)
        assert agent.console(keep).count("BOOTED-6") == 1   # not booted twice
        assert "adopted" in agent.console(keep)
    finally:
        agent.start()


def test_the_provider_fails_over_to_the_next_type_and_the_instance_is_real(ec2, ami, tmp_path):
    from elastic.adapters.providers.ec2 import EC2
    from elastic.spec.schema import CloudSpec

    c, agent, _, launched = ec2
    c.set_knobs(insufficient_capacity={"types": ["t3.small"]})
    spec = CloudSpec(region=REGION, endpoint_url=c.endpoint, image=ami,
                     instance_types=["t3.small", "t3.medium"])
    import boto3
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name=REGION)
    provider = EC2(spec, project="lab", cluster_id=f"c-{uuid.uuid4().hex[:6]}",
                   session=session, sleep=lambda s: None)
    inst = provider.launch("worker9", user_data(tmp_path, "BOOTED-7"), token="lab-worker9-1")
    launched.append(inst.id)
    assert inst.instance_type == "t3.medium"
    wait_for("the marker", lambda: "BOOTED-7" in agent.console(inst.id))
    assert (tmp_path / f"{inst.id}.hostname").read_text().strip() == "worker9"
    assert [i.id for i in provider.instances()] == [inst.id]
    provider.terminate([inst.id])
    wait_for("its namespace gone", lambda: not net.netns_exists(cloudlab.instance_netns(inst.id)))
    assert provider.instances() == []


def test_the_daemon_serves_other_processes_and_stops_clean(tmp_path, segment, ami):
    inet, _ = segment
    directory = tmp_path / "daemon"
    ns = None
    try:
        info = cloudlab.start_daemon(directory, bridge_netns=inet, bridge="pub0", gateway=HUB)
        assert cloudlab.start_daemon(directory, bridge_netns=inet, bridge="pub0") == info
        assert info["endpoint"].startswith("http://127.0.0.1:") and info["pid"] != os.getpid()
        client = cloudlab.ec2_client(info["endpoint"], REGION)
        cloudlab.set_knobs(directory, insufficient_capacity={"types": ["t3.small"]})
        with pytest.raises(ClientError) as e:
            client.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.small")
        assert e.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
        iid = client.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.large",
                                   UserData=user_data(tmp_path, "BOOTED-8"))[
            "Instances"][0]["InstanceId"]
        console = directory / "instances" / iid / "console.log"
        wait_for("the marker", lambda: console.exists() and "BOOTED-8" in console.read_text())
        ns = cloudlab.instance_netns(iid)
        assert net.netns_exists(ns)
    finally:
        cloudlab.stop_daemon(directory)
    assert cloudlab.daemon_info(directory) is None
    assert ns is not None and not net.netns_exists(ns)
    assert "removed elastic-c-" in console.read_text()     # the daemon cleaned up itself
