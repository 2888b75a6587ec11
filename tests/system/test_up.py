"""`elastic up/down/stop/start/status` on lab hosts, with real guests: what a user sees."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastic.adapters.run import run

pytestmark = [pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]


def elastic(state: Path, *args: str, timeout: float = 300, check: bool = True):
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"elastic {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def status(state: Path, project: str | None = None) -> dict:
    args = ["status", "-o", "json"] + ([project] if project else [])
    return json.loads(elastic(state, *args).stdout)


def write_spec(tmp: Path, lab, body: str, name: str = "cluster.yaml") -> Path:
    path = tmp / name
    path.write_text(f"include: [{lab.hosts_file}]\n" + body)
    return path


def ping(netns: str, address: str, count: int = 1) -> bool:
    r = run(["ping", "-c", str(count), "-W", "2", address], netns=netns, timeout=15, check=False)
    return r.returncode == 0


def lab_host(lab, name: str):
    return next(h for h in lab.hosts if h.name == name)


@contextlib.contextmanager
def host_conn(lab, name: str):
    """A libvirt connection to a lab host, closed afterwards."""
    import libvirt
    conn = libvirt.open(lab_host(lab, name).uri)
    try:
        yield conn
    finally:
        conn.close()


def host_domains(lab, name: str) -> list[str]:
    with host_conn(lab, name) as conn:
        return sorted(d.name() for d in conn.listAllDomains(0))


def host_volumes(lab, name: str) -> list[str]:
    import libvirt
    with host_conn(lab, name) as conn:
        try:
            pool = conn.storagePoolLookupByName("elastic")
        except libvirt.libvirtError:
            return []
        pool.refresh(0)
        return sorted(pool.listVolumes())


def host_networks(lab, name: str) -> list[str]:
    with host_conn(lab, name) as conn:
        return sorted(n.name() for n in conn.listAllNetworks(0))


TWO_NODES = """
project: pair
networks:
  net: {cidr: 10.31.0.0/24, gateway: 10.31.0.1}
classes:
  n:
    image: tiny
    memory: 128M
    host: h1
    interfaces: {eth0: {network: net}}
nodes:
  a:
    class: n
    startup: ["sleep 1; ping -c 2 -W 2 10.31.0.3 >/dev/null && echo PEER-OK-a || echo PEER-FAIL-a"]
  b:
    class: n
    interfaces: {eth0: {address: 10.31.0.3}}
"""


def test_two_nodes_answer_on_their_mac_addresses_and_reach_each_other(lab, tmp_path):
    from elastic.adapters.providers.libvirt import LibvirtHost
    from elastic.adapters.render import bridge_name
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, TWO_NODES)
    t0 = time.monotonic()
    out = elastic(state, "up", str(spec), "-o", "json")
    took = time.monotonic() - t0
    result = json.loads(out.stdout)
    assert sorted(result["running"]) == ["a", "b"] and result["failed"] == {}
    print(f"\nup of 2 tiny nodes on one lab host: {took:.1f} s")
    nodes = {n["name"]: n for n in status(state, "pair")["nodes"]}
    assert {n: v["state"] for n, v in nodes.items()} == {"a": "RUNNING", "b": "RUNNING"}
    addr = {n: v["addresses"][0] for n, v in nodes.items()}
    assert addr["a"]["address"] == "10.31.0.2" and addr["b"]["address"] == "10.31.0.3"
    # the MAC encodes the address
    assert addr["b"]["mac"] == "02:00:0a:1f:00:03"
    # ping them from the host: give the (private, address-less) bridge the gateway address
    h1 = lab_host(lab, "h1")
    bridge = bridge_name("pair", "net")
    run(["ip", "addr", "replace", "10.31.0.1/24", "dev", bridge], netns=h1.netns, timeout=10)
    assert ping(h1.netns, "10.31.0.2", 3) and ping(h1.netns, "10.31.0.3", 3)
    # a reached b over the private network (its startup command says so on its console)
    host = LibvirtHost("h1", h1.uri)
    deadline = time.monotonic() + 30
    log = ""
    while time.monotonic() < deadline and "PEER-" not in log:
        log = host.read_volume("pair-a.console.log").decode(errors="replace")
        time.sleep(0.5)
    host.close()
    assert "PEER-OK-a" in log, log[-2000:]
    # a second up changes nothing
    again = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
    assert sorted(again["running"]) == ["a", "b"] and again["removed"] == []
    # down leaves nothing behind: no domain, disk, bridge, lease or project
    elastic(state, "down", "pair")
    assert not [d for d in host_domains(lab, "h1") if d.endswith(".pair")]
    assert not [v for v in host_volumes(lab, "h1") if v.startswith("pair-")]
    assert not [n for n in host_networks(lab, "h1") if "pair" in n]
    links = run(["ip", "-o", "link"], netns=h1.netns, timeout=10).stdout
    assert bridge not in links
    assert status(state)["nodes"] == []
    import sqlite3
    db = sqlite3.connect(state / "elastic.db")
    assert db.execute("select count(*) from leases").fetchone()[0] == 0
    db.close()


TWO_HOSTS = """
project: split
networks:
  left: {cidr: 10.32.1.0/24}
  right: {cidr: 10.32.2.0/24}
classes:
  n: {image: tiny, memory: 128M}
nodes:
  l1: {class: n, host: h1, interfaces: {eth0: {network: left}}}
  l2: {class: n, interfaces: {eth0: {network: left}}}
  r1: {class: n, host: h2, interfaces: {eth0: {network: right}}}
"""


def test_chunks_go_to_their_fixed_hosts(lab, tmp_path):
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, TWO_HOSTS)
    try:
        result = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
        assert sorted(result["running"]) == ["l1", "l2", "r1"]
        assert sorted(d for d in host_domains(lab, "h1") if d.endswith(".split")) == \
            ["l1.split", "l2.split"]
        assert [d for d in host_domains(lab, "h2") if d.endswith(".split")] == ["r1.split"]
        hosts = {n["name"]: n["host"] for n in status(state, "split")["nodes"]}
        assert hosts == {"l1": "h1", "l2": "h1", "r1": "h2"}
    finally:
        elastic(state, "down", "split", check=False)
    assert not [d for h in ("h1", "h2") for d in host_domains(lab, h) if d.endswith(".split")]


def test_sigkill_mid_up_then_up_again_converges_with_nothing_orphaned(lab, tmp_path):
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, """
project: crash
networks: {net: {cidr: 10.33.0.0/24}}
nodes:
  w: {image: tiny, memory: 128M, count: 3, host: h2, interfaces: {eth0: {network: net}}}
""")
    p = subprocess.Popen([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                          "up", str(spec)], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    # kill it once it has started making domains
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if [d for d in host_domains(lab, "h2") if d.endswith(".crash")]:
            break
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    try:
        result = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
        assert sorted(result["running"]) == ["w1", "w2", "w3"], result
        assert sorted(d for d in host_domains(lab, "h2") if d.endswith(".crash")) == \
            ["w1.crash", "w2.crash", "w3.crash"]
        vols = [v for v in host_volumes(lab, "h2") if v.startswith("crash-")]
        assert sorted(vols) == sorted(f"crash-w{i}{s}" for i in (1, 2, 3)
                                      for s in (".qcow2", "-context.iso", ".console.log"))
    finally:
        elastic(state, "down", "crash", check=False)
    assert not [v for v in host_volumes(lab, "h2") if v.startswith("crash-")]


@pytest.mark.parametrize("case,body,code,text", [
    ("unknown-image", "nodes:\n  a: {image: tinyy, host: h1}\n", 2,
     "unknown image 'tinyy' (did you mean 'tiny'?)"),
    ("too-big", "nodes:\n  a: {image: tiny, memory: 64G}\n", 2, "fits no host"),
])
def test_bad_input_is_refused_before_anything_is_made(lab, tmp_path, case, body, code, text):
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, f"project: bad{case.replace('-', '')}\n" + body)
    before = {h.name: host_domains(lab, h.name) for h in lab.hosts}
    p = elastic(state, "up", str(spec), check=False)
    assert p.returncode == code, p.stderr
    assert text in p.stderr
    assert "Traceback" not in p.stderr
    assert {h.name: host_domains(lab, h.name) for h in lab.hosts} == before
    assert status(state)["nodes"] == []


def test_a_host_that_does_not_answer_is_reported_before_anything_is_made(lab, tmp_path):
    state = tmp_path / "state"
    spec = tmp_path / "c.yaml"
    spec.write_text(f"""
project: nohost
hosts:
  ghost: {{uri: "qemu:///system?socket={tmp_path}/nothing/libvirt-sock", type: qemu}}
nodes:
  a: {{image: tiny, host: ghost}}
""")
    p = elastic(state, "up", str(spec), check=False, timeout=120)
    assert p.returncode == 1
    assert "ghost" in p.stderr and "do not answer" in p.stderr
    assert "Traceback" not in p.stderr
    assert status(state)["nodes"] == []


def test_a_node_that_never_becomes_ready_is_failed_with_its_reason_and_removed(lab, tmp_path):
    state = tmp_path / "state"
    # 40 MiB is too little for the Debian kernel and its initramfs: it never says READY
    spec = write_spec(tmp_path, lab, """
project: broken
networks: {net: {cidr: 10.35.0.0/24}}
nodes:
  ok: {image: tiny, memory: 128M, host: h1, interfaces: {eth0: {network: net}}}
  starved: {image: tiny, memory: 40M, host: h1, interfaces: {eth0: {network: net}}}
""")
    p = elastic(state, "up", "--boot-timeout", "25", str(spec), "-o", "json", check=False)
    assert p.returncode == 1
    result = json.loads(p.stdout)
    assert result["running"] == ["ok"]
    assert "starved" in result["failed"]
    nodes = {n["name"]: n for n in status(state, "broken")["nodes"]}
    assert nodes["starved"]["state"] == "FAILED"
    assert "not ready after 25 s" in nodes["starved"]["reason"] or \
        "stopped while booting" in nodes["starved"]["reason"]
    assert "starved.broken" not in host_domains(lab, "h1")
    assert not [v for v in host_volumes(lab, "h1") if v.startswith("broken-starved")]
    elastic(state, "down", "broken")
    assert not [d for d in host_domains(lab, "h1") if d.endswith(".broken")]


def test_stop_keeps_the_disk_and_start_boots_it_again(lab, tmp_path):
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, """
project: pause
networks: {net: {cidr: 10.38.0.0/24}}
nodes:
  s: {image: tiny, memory: 128M, host: h2, interfaces: {eth0: {network: net}},
      startup: ["cat /data/mark 2>/dev/null | sed 's/^/MARK /'; echo kept > /data/mark; sync"]}
""")
    try:
        elastic(state, "up", str(spec))
        elastic(state, "stop", "pause")
        assert status(state, "pause")["nodes"][0]["state"] == "STOPPED"
        with host_conn(lab, "h2") as conn:
            assert not conn.lookupByName("s.pause").isActive()
        assert "pause-s.qcow2" in host_volumes(lab, "h2")
        result = json.loads(elastic(state, "start", "pause", "-o", "json").stdout)
        assert result["running"] == ["s"]
        node = status(state, "pause")["nodes"][0]
        assert node["state"] == "RUNNING" and node["addresses"][0]["address"] == "10.38.0.1"
        # what it wrote on its disk before the stop is still there
        from elastic.adapters.providers.libvirt import LibvirtHost
        host = LibvirtHost("h2", lab_host(lab, "h2").uri)
        deadline, log = time.monotonic() + 20, ""
        while time.monotonic() < deadline and "MARK kept" not in log:
            log = host.read_volume("pause-s.console.log").decode(errors="replace")
            time.sleep(0.5)
        host.close()
        assert "MARK kept" in log, log[-1500:]
    finally:
        elastic(state, "down", "pause", check=False)


def test_bridged_network_spans_hosts_through_their_uplinks(lab, tmp_path):
    from elastic.adapters.providers.libvirt import LibvirtHost
    state = tmp_path / "state"
    spec = write_spec(tmp_path, lab, """
project: span
networks:
  lan: {cidr: 10.77.0.0/24, kind: bridged, range: 10.77.0.100-10.77.0.120}
nodes:
  x:
    image: tiny
    host: h1
    interfaces: {eth0: {network: lan}}
    startup: ["ping -c 3 -W 2 10.77.0.110 >/dev/null && echo BRIDGE-OK || echo BRIDGE-FAIL"]
  y: {image: tiny, host: h2, interfaces: {eth0: {network: lan, address: 10.77.0.110}}}
""")
    try:
        result = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
        assert sorted(result["running"]) == ["x", "y"]
        # y runs on h2; h1's namespace reaches it over the LAN, through h2's uplink bridge
        assert ping(lab_host(lab, "h1").netns, "10.77.0.110", 3)
        assert ping(lab_host(lab, "h2").netns, "10.77.0.100", 3)
        host = LibvirtHost("h1", lab_host(lab, "h1").uri)
        deadline, log = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "BRIDGE-" not in log:
            log = host.read_volume("span-x.console.log").decode(errors="replace")
            time.sleep(0.5)
        host.close()
        assert "BRIDGE-OK" in log, log[-1500:]
        # no private network was made for a bridged one
        assert not [n for h in ("h1", "h2") for n in host_networks(lab, h) if "span" in n]
    finally:
        elastic(state, "down", "span", check=False)
