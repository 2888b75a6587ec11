"""Sampling hosts (elastic.adapters.monitor): the pure parsers on captured text, and
``sample()`` against libvirt's ``test:///default`` driver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from elastic.adapters import monitor
from elastic.errors import PermanentError
from elastic.monitoring import load

LIVE_XML = """<domain type='kvm' id='3'>
  <name>web1.shop</name>
  <metadata>
    <elastic:node xmlns:elastic="https://elastic.invalid/xmlns/1">
      <elastic:project>shop</elastic:project><elastic:name>web1</elastic:name>
    </elastic:node>
  </metadata>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/elastic/shop-web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/elastic/shop-web1.context.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='02:00:0a:00:00:05'/>
      <source bridge='el-0123456789ab'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='02:00:0a:01:00:05'/>
      <source bridge='br0'/>
    </interface>
  </devices>
</domain>"""


def test_devices_of_a_live_domain_xml():
    got = monitor.domain_devices(LIVE_XML)
    assert got.disks == ("vda", "vdb")                        # the empty CD-ROM has no stats
    assert got.interfaces == ("vnet3", "02:00:0a:01:00:05")   # no target yet: by MAC
    assert monitor.domain_devices("<domain><name>x</name></domain>") == monitor.Devices((), ())
    with pytest.raises(PermanentError, match="unreadable domain XML"):
        monitor.domain_devices("<domain>")


def test_busy_time_from_the_node_cpu_stats():
    linux = {"kernel": 3_000, "user": 5_000, "idle": 90_000, "iowait": 2_000}
    assert monitor.busy_ns(linux) == 8_000
    assert monitor.busy_ns({"kernel": 1, "user": 2, "intr": 3, "idle": 9}) == 6
    with pytest.raises(PermanentError, match="no busy time"):
        monitor.busy_ns({"idle": 5, "iowait": 1})


def test_cgroup_files_parse():
    assert monitor.parse_cpuacct_usage("123456789\n") == 123456789
    stat = "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n"
    assert monitor.parse_cpu_stat(stat) == 2_500_000
    for bad in ("", "x", "-5"):
        with pytest.raises(ValueError, match="cpuacct.usage"):
            monitor.parse_cpuacct_usage(bad)
    for bad in ("", "user_usec 5\n", "usage_usec many\n"):
        with pytest.raises(ValueError, match="usage_usec"):
            monitor.parse_cpu_stat(bad)


def fake_v1(root: Path, path: str, text: str) -> None:
    d = root / "cpuacct" / path
    d.mkdir(parents=True)
    (d / "cpuacct.usage").write_text(text)


def test_cgroup_v1_and_v2_are_found_and_read(tmp_path):
    v1 = tmp_path / "v1"
    fake_v1(v1, "elastic-lab/h1", "4200000000\n")
    assert monitor.cgroup_cpu_file("elastic-lab/h1", v1) == \
        v1 / "cpuacct/elastic-lab/h1/cpuacct.usage"
    assert monitor.cgroup_dir("/elastic-lab/h1/", v1) == v1 / "cpuacct/elastic-lab/h1"
    assert monitor.read_cgroup_cpu_ns("elastic-lab/h1", v1) == 4_200_000_000
    v2 = tmp_path / "v2"
    (v2 / "elastic-lab/h2").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (v2 / "elastic-lab/h2/cpu.stat").write_text("usage_usec 7\nuser_usec 7\n")
    assert monitor.read_cgroup_cpu_ns("elastic-lab/h2", v2) == 7000
    with pytest.raises(PermanentError, match="lab up"):
        monitor.read_cgroup_cpu_ns("elastic-lab/h9", v2)
    (v2 / "elastic-lab/h2/cpu.stat").write_text("nr_periods 0\n")
    with pytest.raises(PermanentError, match="usage_usec"):
        monitor.read_cgroup_cpu_ns("elastic-lab/h2", v2)
    with pytest.raises(PermanentError, match="no CPU accounting"):
        monitor.cgroup_cpu_file("elastic-lab/h1", tmp_path / "none")
    for bad in ("", "/", "../etc", "a/../../b", "a//b"):
        with pytest.raises(PermanentError, match="not a cgroup path"):
            monitor.cgroup_cpu_file(bad, v1)


def test_names_of_domains():
    assert monitor.split_name("web1.shop") == ("shop", "web1")
    assert monitor.split_name("worker3.sge.v2") == ("sge.v2", "worker3")
    assert monitor.split_name("test") == (None, None)
    assert monitor.split_name(".x") == (None, None)


# -------------------------------------------------------------- against test:///default

def libvirt_or_skip():
    try:
        import libvirt  # noqa: F401
    except ImportError:
        pytest.skip("needs libvirt-python (pip install 'elastic[libvirt]')")


@pytest.fixture
def host():
    libvirt_or_skip()
    from elastic.adapters.providers.libvirt import LibvirtHost
    h = LibvirtHost("t1", "test:///default", timeout=10)
    yield h
    h.close()


def test_sample_of_the_test_driver(host):
    s1 = monitor.sample(host, 1000.0)
    assert s1.host == "t1" and s1.t == 1000.0
    assert s1.ncpus == 16 and s1.memory_total_mib == 3072   # the test driver's node
    assert s1.cpu_busy_ns > 0 and s1.cpu_source == "libvirt"
    (d,) = s1.domains
    assert (d.name, d.project, d.node, d.vcpus, d.memory_mib) == ("test", None, None, 2, 2048)
    assert d.cpu_time_ns > 0
    assert d.net_rx_bytes > 0 and d.disk_rd_bytes > 0   # testnet0 and vda were read
    time.sleep(0.05)
    s2 = monitor.sample(host, 1001.0)
    got = load([s1, s2], 60)
    assert got is not None and got.memory_assigned_mib == 2048
    assert got.domains[0].cpu > 0      # the test driver's CPU time moves with the clock


def test_sample_with_a_cgroup_and_the_hosts_share(host, tmp_path):
    fake_v1(tmp_path, "elastic-lab/h1", "5000000000\n")
    s = monitor.sample(host, 1.0, "elastic-lab/h1", ncpus=2, memory_mib=2560,
                       cgroup_root=tmp_path)
    assert s.cpu_busy_ns == 5_000_000_000 and s.cpu_source == "cgroup elastic-lab/h1"
    assert s.ncpus == 2 and s.memory_total_mib == 2560
    assert s.memory_free_mib <= 2560 - 2048      # the share less what the domain holds
    with pytest.raises(PermanentError, match="does not exist"):
        monitor.sample(host, 1.0, "elastic-lab/h7", cgroup_root=tmp_path)


def test_a_host_that_does_not_answer_is_an_error_in_time(host):
    from elastic.adapters.providers.libvirt import HostUnreachable, LibvirtHost

    class Stuck(LibvirtHost):
        @property
        def conn(self):
            time.sleep(3)
            raise AssertionError("not reached in time")

    t = time.monotonic()
    with pytest.raises(HostUnreachable, match="no statistics from libvirt in 0.2 s"):
        monitor.sample(Stuck("h9", "qemu:///nowhere", timeout=0.2), 1.0)
    assert time.monotonic() - t < 2
    with pytest.raises(HostUnreachable):
        monitor.sample(LibvirtHost("h8", "test:///no/such/file.xml", timeout=5), 1.0)


# ------------------------------------------------------------------- elastic status --hosts

def test_status_hosts_samples_stores_and_shows_a_host_that_does_not_answer(tmp_path):
    libvirt_or_skip()
    import json

    from click.testing import CliRunner

    from elastic.cli.main import cli
    from elastic.state import Store
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_host("t1", "test:///default", 1.0, domain_type="test", memory=3072, vcpus=16)
        store.put_host("h9", f"qemu:///system?socket={tmp_path}/none/sock", 1.0)
    args = ["--state-dir", str(state), "status", "--hosts", "--interval", "0.2"]
    r = CliRunner().invoke(cli, [*args, "-o", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert (data["interval"], data["window"]) == (0.2, 60)
    hosts = {h["name"]: h for h in data["hosts"]}
    dead = hosts["h9"]
    assert dead["answers"] is False and dead["error"] and dead["cpu"] is None
    t1 = hosts["t1"]
    assert t1["answers"] is True and t1["error"] is None and t1["cpu_source"] == "libvirt"
    assert t1["samples"] == 2 and 0.15 < t1["window"] < 5
    assert t1["ncpus"] == 16 and t1["memory_total"] == 3072 and t1["memory_assigned"] == 2048
    (vm,) = t1["vms"]
    assert vm["name"] == "test" and vm["vcpus"] == 2 and vm["memory"] == 2048
    assert vm["cpu"] > 0 and vm["net_rx_bps"] > 0 and vm["window"] > 0
    with Store.open(state) as store:
        assert len(store.samples("t1", 0)) == 2 and store.samples("h9", 0) == []
    # a second run averages over all four stored samples of the window
    again = json.loads(CliRunner().invoke(cli, [*args, "-o", "json"]).output)
    assert {h["name"]: h for h in again["hosts"]}["t1"]["samples"] == 4
    text = CliRunner().invoke(cli, args).output
    assert "host load" in text and "VM load" in text and "t1" in text and "h9" in text
    assert "test" in text and "%" in text and "B/s" in text


def test_status_hosts_finds_each_hosts_cgroup(tmp_path):
    from elastic.engine.status import MonitorTarget, monitor_targets
    from elastic.state import Store
    spec = tmp_path / "lab.yaml"
    spec.write_text("""project: p
hosts:
  h1: {uri: "qemu+tcp://10.99.0.11/system", type: qemu, memory: 3G, vcpus: 2,
       cpu_cgroup: elastic-lab/h1}
  h2: {uri: "qemu+tcp://10.99.0.12/system", type: qemu}
networks:
  pub: {cidr: 10.99.0.0/24, kind: bridged, range: 10.99.0.100-10.99.0.200}
nodes:
  w: {image: tiny, host: h1, interfaces: {eth0: {network: pub}}}
""")
    with Store.open(tmp_path / "s") as store:
        store.put_project("p", str(spec), "0" * 64, 1.0, data={"hosts": ["h1", "h2"]})
        store.put_project("q", str(tmp_path / "gone.yaml"), "0" * 64, 1.0)
        for h in ("h1", "h2", "h3"):
            store.put_host(h, f"qemu+tcp://{h}/system", 1.0, memory=1024, vcpus=1)
        store.put_host("h4", "qemu+tcp://h4/system", 1.0, data={"cpu_cgroup": "x/h4"})
        targets, notes = monitor_targets(store, "p")
        assert targets == [MonitorTarget("h1", "qemu+tcp://h1/system", "elastic-lab/h1", 2, 3072),
                           MonitorTarget("h2", "qemu+tcp://h2/system")]
        assert notes == []
        everything, notes = monitor_targets(store, None)
        assert [t.name for t in everything] == ["h1", "h2", "h3", "h4"]
        assert everything[3].cpu_cgroup == "x/h4"
        assert len(notes) == 1 and "project q" in notes[0] and "gone.yaml" in notes[0]


def test_status_hosts_refuses_bad_input(tmp_path):
    from click.testing import CliRunner

    from elastic.cli.main import cli
    from elastic.engine.status import host_loads
    from elastic.errors import ConfigError
    r = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "status", "--window", "5"])
    assert r.exit_code == 2 and "go with --hosts" in r.output
    r = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "status", "--hosts",
                                 "--interval", "0"])
    assert r.exit_code == 2
    with pytest.raises(ConfigError, match="--window"):
        host_loads(tmp_path, window=-1)
    empty = host_loads(tmp_path / "none", interval=0.1)
    assert empty["hosts"] == [] and "no state database" in empty["notes"][0]
