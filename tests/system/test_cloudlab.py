"""The lab's local cloud: moto's EC2 on loopback behind the fault proxy, and the agent that
makes its instances real (a namespace on a public bridge made here, running the user-data).

Scaffolding (all removed at the end, even on failure): ``elastic-t-inet-<tag>`` holds the
bridge pub0 (the public segment); ``elastic-t-hub-<tag>`` is on it at 172.31.255.254/16
(the hub / front end, and the instances' gateway). No traffic leaves these namespaces."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
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


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
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


def user_data(marker: str, first: str = "") -> str:
    """A user-data that says what it sees on its console (an instance's files are its own:
    the host cannot read them at a path of its own), leaves a process behind, and prints
    ``marker`` last. ``first``: shell lines to run first."""
    return f"""#!/bin/sh
{first}
echo "hostname=$(hostname)"
echo "uid=$(id -u)"
echo "addr=$(ip -4 -o addr show dev eth0)"
sleep 300 &
echo "pid=$!"
echo {marker}
wait
"""


def reported(console: str, key: str) -> str:
    """The value of the last ``key=value`` line of a console."""
    values = [line.split("=", 1)[1] for line in console.splitlines()
              if line.startswith(key + "=")]
    assert values, f"no {key}= on the console:\n{console}"
    return values[-1]


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


def host_pid(iid: str, pid: int) -> int:
    """The host's pid of the process that is ``pid`` inside instance ``iid`` (an instance
    has its own PID namespace: what its user-data prints is its own numbering)."""
    for p in net.netns_pids(cloudlab.instance_netns(iid)):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines()
                      if ln.startswith("NSpid:")), [])
        if nspid and int(nspid[-1]) == pid and len(nspid) > 1:
            return p
    raise AssertionError(f"no process {pid} in instance {iid}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_an_instance_is_a_namespace_running_its_user_data_until_terminated(
        ec2, ami, segment):
    c, agent, client, _ = ec2
    _, hub = segment
    t0 = time.monotonic()
    iid = launch(ec2, ami, user_data("BOOTED-1"), name="burst1")
    d = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    private = d["PrivateIpAddress"]
    assert ipaddress.ip_address(private) in ipaddress.ip_network("172.31.0.0/16")
    ns = cloudlab.instance_netns(iid)
    assert ns.startswith("elastic-c-") and len(cloudlab.instance_veth(iid)) <= 15
    wait_for("the marker on the console", lambda: "BOOTED-1" in agent.console(iid))
    took = time.monotonic() - t0
    assert net.netns_exists(ns) and agent.made()[iid] == ns
    console = agent.console(iid)
    assert reported(console, "hostname") == "burst1"
    assert reported(console, "uid") == "0"
    assert f"inet {private}/16" in reported(console, "addr")
    assert os.uname().nodename != "burst1"          # the host's own name is untouched
    assert ping(ns, HUB) and ping(hub, private)
    pid = host_pid(iid, int(reported(console, "pid")))
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


# what a cloud user-data writes on its machine; none of it may reach the host
OWN_FILES = ("/var/spool/elastic-test/x", "/home/clouduser/y", "/root/z",
             "/etc/elastic/marker", "/opt/w")


def own_files_user_data(tag: str) -> str:
    """A user-data that makes itself a user and files as cloud user-data does, then says
    what it sees; ``tag`` is written in every file (and names one file of its own)."""
    return f"""#!/bin/sh
echo 'clouduser:x:4242:4242:cloud user:/home/clouduser:/bin/sh' >>/etc/passwd
echo 'clouduser:x:4242:' >>/etc/group
mkdir -p /var/spool/elastic-test /home/clouduser /etc/elastic
for f in {" ".join(OWN_FILES)} /var/spool/elastic-test/{tag} /tmp/{tag}; do
    echo {tag} >"$f"
done
echo "id=$(id clouduser)"
echo "passwd-lines=$(grep -c '^clouduser:' /etc/passwd)"
for f in {" ".join(OWN_FILES)}; do echo "file $f=$(cat "$f")"; done
echo "spool=$(ls /var/spool/elastic-test | tr '\\n' ' ')"
echo "tmp=$(ls -A /tmp | tr '\\n' ' ')"
echo "etc-hostname=$(cat /etc/hostname)"
echo "etc-hosts=$(grep -c "$(hostname)" /etc/hosts)"
echo "user-data=$(ls /var/lib/cloud/instance)"
for m in / /etc /var /home /root /opt /usr/local /tmp /var/tmp /run/elastic; do
    echo "mount $m=$(findmnt -no FSTYPE,PROPAGATION -T $m | tr -s ' ' ' ')"
done
sleep 300 &
echo "pid=$!"
echo OWN-FILES-{tag}
wait
"""


def _host_untouched() -> None:
    assert not [line for line in Path("/etc/passwd").read_text().splitlines()
                if line.startswith("clouduser:")], "clouduser in the host's /etc/passwd"
    assert not [f for f in (*OWN_FILES, "/var/spool/elastic-test", "/home/clouduser",
                            "/etc/elastic/marker") if os.path.lexists(f)]


def test_an_instance_has_a_file_system_of_its_own(ec2, ami):
    c, agent, _, _ = ec2
    _host_untouched()                    # else this test would prove nothing
    t0 = time.monotonic()
    a = launch(ec2, ami, own_files_user_data("AAA"), name="fs-a")
    wait_for("a's marker", lambda: "OWN-FILES-AAA" in agent.console(a))
    booted = time.monotonic() - t0
    b = launch(ec2, ami, own_files_user_data("BBB"), name="fs-b")   # a is still running
    wait_for("b's marker", lambda: "OWN-FILES-BBB" in agent.console(b))
    for iid, tag, name in ((a, "AAA", "fs-a"), (b, "BBB", "fs-b")):
        console = agent.console(iid)
        assert "uid=4242(clouduser)" in reported(console, "id"), console
        assert reported(console, "passwd-lines") == "1"       # not the other one's too
        for f in OWN_FILES:
            assert reported(console, f"file {f}") == tag, console
        assert sorted(reported(console, "spool").split()) == sorted(["x", tag])
        assert reported(console, "tmp").split() == [tag]       # a fresh /tmp
        assert reported(console, "etc-hostname") == name
        assert reported(console, "etc-hosts") != "0"
        assert reported(console, "user-data") == "user-data.txt"
        for m in ("/etc", "/var", "/home", "/root", "/opt", "/usr/local"):
            assert reported(console, f"mount {m}") == "overlay private", console
        for m in ("/tmp", "/var/tmp", "/run/elastic"):
            assert reported(console, f"mount {m}") == "tmpfs private", console
        # its writes are in its disk in the cloud's directory, and nowhere else
        upper = agent.instances_dir / iid / "root" / "upper"
        assert "clouduser:x:4242" in (upper / "etc" / "passwd").read_text()
        assert (upper / "root" / "z").read_text().strip() == tag
        assert (upper / "root").stat().st_mode & 0o777 == Path("/root").stat().st_mode & 0o777
    _host_untouched()
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert " - overlay " not in host_mounts and "/run/elastic" not in host_mounts

    t1 = time.monotonic()
    c.client(REGION).terminate_instances(InstanceIds=[a, b])
    for iid in (a, b):
        wait_for("it unmade", lambda iid=iid: iid not in agent.made())
        assert not net.netns_exists(cloudlab.instance_netns(iid))
        assert not (agent.instances_dir / iid / "root").exists()   # its disk is gone
        assert "removed" in agent.console(iid)                      # its console stays
        assert json.loads((agent.instances_dir / iid / "instance.json").read_text())[
            "id"] == iid
    _host_untouched()
    print(f"own file system: booted in {booted:.2f} s; both gone and their disks removed "
          f"{time.monotonic() - t1:.2f} s after terminate")


def test_a_daemon_of_the_user_data_lives_on_in_its_file_system_until_terminated(ec2, ami):
    c, agent, client, _ = ec2
    iid = launch(ec2, ami, """#!/bin/sh
mkdir -p /var/spool/elastic-test
sh -c 'while :; do date +%s.%N >/var/spool/elastic-test/t; sleep 0.2; done' \
    </dev/null >/dev/null 2>&1 &
echo "daemon=$!"
""", name="daemon1")
    wait_for("the user-data's end", lambda: "user-data exited 0" in agent.console(iid))
    pid = host_pid(iid, int(reported(agent.console(iid), "daemon")))
    seen = Path(f"/proc/{pid}/root/var/spool/elastic-test/t")    # the daemon's own view
    first = wait_for("the daemon's first write", lambda: _read(seen))
    wait_for("the daemon writing on", lambda: _read(seen) not in ("", first))
    assert _alive(pid)
    assert " /var overlay " in _mounts_of(pid) and " /tmp tmpfs " in _mounts_of(pid)
    assert (agent.instances_dir / iid / "root" / "upper" / "var" / "spool" / "elastic-test"
            / "t").exists()
    assert not os.path.lexists("/var/spool/elastic-test")
    t0 = time.monotonic()
    client.terminate_instances(InstanceIds=[iid])
    wait_for("it unmade", lambda: iid not in agent.made())
    assert not net.netns_exists(cloudlab.instance_netns(iid))
    assert not _alive(pid)
    assert not (agent.instances_dir / iid / "root").exists()
    assert not os.path.lexists("/var/spool/elastic-test")
    print(f"terminate -> daemon and disk gone: {time.monotonic() - t0:.2f} s")


def test_no_overlayfs_means_no_boot(ec2, ami, monkeypatch):
    _, agent, _, _ = ec2
    monkeypatch.setattr(cloudlab, "overlay_available", lambda: False)
    iid = launch(ec2, ami, user_data("BOOTED-9"))
    wait_for("the refusal", lambda: "no overlayfs" in agent.console(iid))
    time.sleep(0.5)
    assert "BOOTED-9" not in agent.console(iid)
    assert net.netns_pids(cloudlab.instance_netns(iid)) == []
    assert not (agent.instances_dir / iid / "root").exists()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _mounts_of(pid: int) -> str:
    """``mount point fstype`` lines of a process's mount namespace."""
    out = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        out.append(f" {fields[4]} {fields[fields.index('-') + 1]} ")
    return "\n".join(out)


def test_boot_delay_delays_the_user_data(ec2, ami):
    c, agent, _, _ = ec2
    c.set_knobs(boot_delay=2.0)
    t0 = time.monotonic()
    iid = launch(ec2, ami, user_data("BOOTED-2"))
    wait_for("the namespace", lambda: iid in agent.made())
    assert "BOOTED-2" not in agent.console(iid)
    wait_for("the marker", lambda: "BOOTED-2" in agent.console(iid))
    took = time.monotonic() - t0
    assert 2.0 <= took < 6.0, took
    print(f"boot_delay 2 s: marker after {took:.2f} s")


def test_never_boot_keeps_the_instance_running_and_idle(ec2, ami):
    c, agent, _, _ = ec2
    c.set_knobs(never_boot=["idle1"])
    iid = launch(ec2, ami, user_data("BOOTED-3"), name="idle1")
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


def test_a_spot_instance_is_reclaimed_by_itself(ec2, ami):
    c, agent, _, _ = ec2
    c.set_knobs(spot_interrupt={"spot1": 5.0})   # after it was made: the boot comes first
    iid = launch(ec2, ami, user_data("BOOTED-5"), name="spot1")
    ns = cloudlab.instance_netns(iid)
    wait_for("the marker", lambda: "BOOTED-5" in agent.console(iid))
    t0 = time.monotonic()
    wait_for("terminated by the agent", lambda: state(ec2, iid) == "terminated")
    wait_for("its namespace gone", lambda: not net.netns_exists(ns))
    assert "spot interruption" in agent.console(iid)
    print(f"spot interruption: gone {time.monotonic() - t0:.2f} s after the marker")


def test_a_restarted_agent_adopts_running_instances_and_removes_gone_ones(
        ec2, ami, segment):
    c, agent, client, _ = ec2
    keep = launch(ec2, ami, user_data("BOOTED-6"))
    gone = launch(ec2, ami, user_data("BOOTED-6"))
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
        # the adopted one's processes still see its own file system; the gone one's disk
        # went with it
        pid = host_pid(keep, int(reported(agent.console(keep), "pid")))
        assert _alive(pid)
        assert Path(f"/proc/{pid}/root/etc/hostname").read_text().strip() == keep
        assert (agent.instances_dir / keep / "root" / "upper" / "etc").is_dir()
        assert not (agent.instances_dir / gone / "root").exists()
    finally:
        agent.start()


def test_the_provider_fails_over_to_the_next_type_and_the_instance_is_real(ec2, ami):
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
    inst = provider.launch("worker9", user_data("BOOTED-7"), token="lab-worker9-1")
    launched.append(inst.id)
    assert inst.instance_type == "t3.medium"
    wait_for("the marker", lambda: "BOOTED-7" in agent.console(inst.id))
    assert reported(agent.console(inst.id), "hostname") == "worker9"
    assert [i.id for i in provider.instances()] == [inst.id]
    provider.terminate([inst.id])
    wait_for("its namespace gone", lambda: not net.netns_exists(cloudlab.instance_netns(inst.id)))
    assert provider.instances() == []


def test_the_daemon_serves_other_processes_and_stops_clean(segment, ami):
    """Also: the cloud's directory inside one that instances get a copy of (as the lab's,
    in root's home by default): their disks work, and they do not see the directory."""
    inet, _ = segment
    directory = Path(tempfile.mkdtemp(prefix="elastic-test-cloud-", dir="/var/lib"))
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
                                   UserData=user_data("BOOTED-8", first=(
                                       f'echo "cloud-dir=$(ls -A {directory} | wc -l)"\n'
                                       "echo 8 >/var/spool/elastic-test-8")))[
            "Instances"][0]["InstanceId"]
        console = directory / "instances" / iid / "console.log"
        wait_for("the marker", lambda: console.exists() and "BOOTED-8" in console.read_text())
        ns = cloudlab.instance_netns(iid)
        assert net.netns_exists(ns)
        assert reported(console.read_text(), "cloud-dir") == "0"
        upper = directory / "instances" / iid / "root" / "upper"
        assert (upper / "var" / "spool" / "elastic-test-8").read_text() == "8\n"
        assert not os.path.lexists("/var/spool/elastic-test-8")
    finally:
        try:
            cloudlab.stop_daemon(directory)
        finally:
            text = console.read_text() if ns else ""
            disks = list(directory.glob("instances/*/root"))
            shutil.rmtree(directory, ignore_errors=True)
    assert cloudlab.daemon_info(directory) is None
    assert ns is not None and not net.netns_exists(ns)
    assert "removed elastic-c-" in text                     # the daemon cleaned up itself
    assert disks == []                                      # and removed their disks
