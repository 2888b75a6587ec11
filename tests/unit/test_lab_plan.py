"""The lab's pure parts: names, addresses, rendered files, the hosts section. No root needed."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from elastic.adapters import lab
from elastic.adapters.lab import Lab, LabHost
from elastic.errors import ConfigError, PermanentError
from elastic.spec.schema import HostBlock

ROOT = Path("/var/lib/elastic/lab")


def conf_pairs(text: str) -> dict[str, str]:
    """key = value lines of a libvirt config file (comments skipped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------------- naming, addressing

def test_names_and_addresses():
    assert lab.host_name(1) == "h1"
    assert lab.host_index("h12") == 12
    assert lab.host_netns(3) == "elastic-h3"
    assert lab.lan_port(2) == "port-h2"
    assert lab.host_address(1) == "10.77.0.11"
    assert lab.host_address(2) == "10.77.0.12"
    assert lab.host_address(lab.MAX_HOSTS) == "10.77.0.254"
    for bad in (0, lab.MAX_HOSTS + 1):
        with pytest.raises(ValueError):
            lab.host_address(bad)
    for bad in ("x1", "h0", "h", "h01"):
        with pytest.raises(ValueError):
            lab.host_index(bad)


def test_every_address_is_inside_the_lan_and_every_name_fits_the_kernel():
    net = ipaddress.ip_network(lab.LAN_CIDR)
    addresses = {lab.host_address(i) for i in range(1, lab.MAX_HOSTS + 1)}
    assert len(addresses) == lab.MAX_HOSTS
    assert all(ipaddress.ip_address(a) in net for a in addresses)
    assert str(net.broadcast_address) not in addresses
    assert net.is_private
    longest = lab.MAX_HOSTS
    assert len(lab.lan_port(longest)) <= 15
    assert len(lab.HOST_BRIDGE) <= 15 and len(lab.LAN_BRIDGE) <= 15


def test_host_uuids_are_stable_and_distinct():
    assert lab.host_uuid("h1") == lab.host_uuid("h1")
    uuids = {lab.host_uuid(lab.host_name(i)) for i in range(1, 50)}
    assert len(uuids) == 49
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        lab.host_uuid("h1"))


def test_uris():
    assert lab.socket_path(ROOT, "h1") == ROOT / "hosts/h1/run/libvirt/libvirt-sock"
    assert lab.local_uri(ROOT, "h2") == (
        "qemu:///system?socket=/var/lib/elastic/lab/hosts/h2/run/libvirt/libvirt-sock")
    assert lab.migration_uri("10.77.0.11") == "qemu+tcp://10.77.0.11/system"


def test_plan_hosts():
    hosts = lab.plan_hosts(ROOT, 3, 4096, 2)
    assert [h.name for h in hosts] == ["h1", "h2", "h3"]
    assert [h.netns for h in hosts] == ["elastic-h1", "elastic-h2", "elastic-h3"]
    assert [h.address for h in hosts] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
    assert all(h.memory_mib == 4096 and h.vcpus == 2 and not h.alive for h in hosts)
    assert hosts[1].migration_uri == "qemu+tcp://10.77.0.12/system"


@pytest.mark.parametrize("bad", [0, -1, lab.MAX_HOSTS + 1, True, "2", 1.5])
def test_bad_host_counts_are_config_errors(bad):
    with pytest.raises(ConfigError) as e:
        lab.plan_hosts(ROOT, bad, 1024, 1)
    assert e.value.key == "hosts"


def test_a_state_dir_too_deep_for_a_unix_socket_is_refused():
    deep = Path("/" + "d" * 90)
    with pytest.raises(ConfigError, match="too deep"):
        lab.plan_hosts(deep, 1, 1024, 1)


def test_default_memory_is_a_capped_share():
    assert lab.default_memory_mib(24 * 1024, 2) == 11264        # (24 G - 2 G) / 2
    assert lab.default_memory_mib(24 * 1024, 3) % 128 == 0
    assert lab.default_memory_mib(1024 * 1024, 2) == lab.MEMORY_CAP_MIB
    assert lab.default_memory_mib(2048, 50) == lab.MEMORY_MIN_MIB
    # never more than the machine in total (above the floor)
    for n in range(1, 9):
        assert lab.default_memory_mib(24 * 1024, n) * n <= 24 * 1024


def test_owner_tags_fit_an_interface_alias():
    assert lab.owner_tag(ROOT) == "elastic-lab /var/lib/elastic/lab"
    long = Path("/" + "x" * 300)
    tag = lab.owner_tag(long)
    assert len(tag.encode()) <= 128
    assert tag != lab.owner_tag(Path("/" + "y" * 300))


# ---------------------------------------------------------------------------- rendered files

def test_libvirtd_conf():
    text = lab.render_libvirtd_conf("h1", "10.77.0.11", lab.host_uuid("h1"))
    kv = conf_pairs(text)
    assert kv["listen_tcp"] == "1"
    assert kv["listen_tls"] == "0"          # --listen with TLS on would want certificates
    assert kv["listen_addr"] == '"10.77.0.11"'
    assert kv["auth_tcp"] == '"none"'
    assert kv["host_uuid"] == f'"{lab.host_uuid("h1")}"'
    assert "stderr" in kv["log_outputs"]


def test_qemu_conf():
    kv = conf_pairs(lab.render_qemu_conf("h2", "10.77.0.12"))
    assert kv["security_driver"] == '"none"'
    assert kv["cgroup_controllers"] == "[ ]"
    assert kv["namespaces"] == "[ ]"
    assert kv["user"] == '"root"' and kv["group"] == '"root"'
    assert kv["dynamic_ownership"] == "0"
    assert kv["remember_owner"] == "0"
    assert kv["migration_address"] == '"10.77.0.12"'


def test_start_script_binds_private_copies_and_runs_libvirtd_in_the_foreground():
    hdir = ROOT / "hosts/h1"
    text = lab.render_start_script(hdir, "h1", "/usr/sbin/libvirtd", ROOT / "cache/libvirt")
    for d in ("etc/libvirt", "run", "var/lib/libvirt", "var/log/libvirt"):
        assert f'mount --bind "$H/{d}" /{d}' in text
    assert f"H='{hdir}'" in text
    assert "mount --bind '/var/lib/elastic/lab/cache/libvirt' /var/cache/libvirt" in text
    assert 'mount --bind "$H/hosts" /etc/hosts' in text
    assert "hostname h1" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("exec /usr/sbin/libvirtd --listen")
    assert " -d" not in last and "--daemon" not in last
    assert text.index("set -e") < text.index("mount")


def test_a_command_joins_its_cgroup_before_entering_a_namespace(tmp_path):
    import subprocess
    cg = tmp_path / "cg"        # a stand-in: cgroup.procs is a plain file here
    cg.mkdir()
    argv = lab.in_cgroup(["sh", "-c", 'echo "$$ $*"', "x", "a b", "c"], cg)
    assert argv[:2] == ["sh", "-c"] and argv[4:6] == ["sh", "-c"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    pid, _, args = out.stdout.strip().partition(" ")
    assert args == "a b c"
    assert (cg / "cgroup.procs").read_text().strip() == pid    # the very process, exec'd
    # required: no cgroup, no command; else a warning and it runs anyway
    gone = tmp_path / "gone"
    strict = subprocess.run(lab.in_cgroup(["echo", "ran"], gone), capture_output=True,
                            text=True, timeout=10)
    assert strict.returncode != 0 and strict.stdout == ""
    lax = subprocess.run(lab.in_cgroup(["echo", "ran"], gone, required=False),
                         capture_output=True, text=True, timeout=10)
    assert lax.stdout == "ran\n" and "warning: cannot join cgroup" in lax.stderr
    assert lab.in_cgroup(["echo", "x"], None) == ["echo", "x"]


def test_a_command_on_a_lab_host_runs_in_its_namespace_and_cgroup(tmp_path):
    cg = Path("/sys/fs/cgroup/cpuacct/elastic-lab/h2")
    prefix = lab.host_command_prefix("elastic-h2", cg)
    # the cgroup first: `ip netns exec` mounts a /sys without the cgroup file systems
    assert prefix == ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "elastic-lab",
                      "ip", "netns", "exec", "elastic-h2"]
    assert lab.host_command_prefix("elastic-h2", None) == ["ip", "netns", "exec", "elastic-h2"]
    assert lab.host_cgroup("h2") == "elastic-lab/h2"

    class FakeRoot(Lab):
        CGROUP_ROOT = tmp_path
    (tmp_path / "cpuacct").mkdir()
    assert FakeRoot(tmp_path / "lab").cgroup_dir("h2") == tmp_path / "cpuacct/elastic-lab/h2"
    assert FakeRoot(tmp_path / "lab").host_command("h2")[2] == \
        f"echo $$ > {tmp_path}/cpuacct/elastic-lab/h2/cgroup.procs && exec \"$@\""

    class NoCgroups(Lab):
        CGROUP_ROOT = tmp_path / "nothing"
    assert NoCgroups(tmp_path / "lab").cgroup_dir("h1") is None
    assert NoCgroups(tmp_path / "lab").host_command("h1") == ["ip", "netns", "exec",
                                                              "elastic-h1"]


def test_hosts_file():
    text = lab.render_hosts_file([("h1", "10.77.0.11"), ("h2", "10.77.0.12")])
    assert "127.0.0.1\tlocalhost" in text
    assert "10.77.0.12\th2 elastic-h2" in text


# ------------------------------------------------------------------------------ hosts.yaml

def test_hosts_yaml_parses_and_validates():
    hosts = lab.plan_hosts(ROOT, 2, 4096, 2)
    text = lab.render_hosts_yaml(hosts, ROOT / "hosts.yaml")
    assert text.startswith("# written by `elastic lab up`")
    doc = yaml.safe_load(text)
    assert list(doc) == ["hosts"]
    assert list(doc["hosts"]) == ["h1", "h2"]
    for h in hosts:
        raw = doc["hosts"][h.name]
        block = HostBlock.model_validate(raw)
        assert block.uri == h.uri
        assert block.type == "qemu"
        assert block.memory == 4096
        assert block.vcpus == 2
        assert block.uplink == "br0"
        assert block.attributes == {"lab": True, "address": h.address,
                                    "migration_uri": h.migration_uri, "netns": h.netns}
        assert block.cpu_cgroup == f"elastic-lab/{h.name}"
    plain = yaml.safe_load(lab.render_hosts_yaml(hosts, cpu_cgroups=False))
    assert all("cpu_cgroup" not in raw for raw in plain["hosts"].values())


def test_hosts_yaml_quotes_odd_paths():
    odd = Path("/tmp/a b: #c")
    hosts = lab.plan_hosts(odd, 1, 1024, 1)
    doc = yaml.safe_load(lab.render_hosts_yaml(hosts))
    assert HostBlock.model_validate(doc["hosts"]["h1"]).uri == hosts[0].uri


# ----------------------------------------------------------------------- a lab never made

def test_status_of_no_lab_is_empty(tmp_path):
    info = Lab(tmp_path / "lab").status()
    assert info.hosts == ()
    assert info.lan_netns == "elastic-lan" and info.lan_cidr == "10.77.0.0/24"
    assert info.hosts_file == tmp_path / "lab" / "hosts.yaml"
    with pytest.raises(PermanentError, match="lab up"):
        Lab(tmp_path / "lab").hosts_yaml()


def test_lab_host_is_frozen():
    h = LabHost("h1", "elastic-h1", "qemu:///system", "10.77.0.11", 1024, 1)
    with pytest.raises(AttributeError):
        h.alive = True  # type: ignore[misc]
