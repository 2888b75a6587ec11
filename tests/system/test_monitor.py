"""`elastic status --hosts` on the lab: each lab host's load is its own cgroup's CPU time
(the hosts share one kernel), split into the guests' part and the host's own part."""

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

pytestmark = [pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
BURN = "while :; do :; done"

# h1: no VM, a CPU burner "on the host" (its namespace and cgroup): its own load.
# h2: a VM whose guest burns one vcpu: guest load, which a migration could move.
SPEC = """
project: load
networks:
  net: {cidr: 10.36.0.0/24}
nodes:
  busy:
    image: tiny
    memory: 128M
    vcpus: 1
    host: h2
    interfaces: {eth0: {network: net}}
    startup: ["sh -c '""" + BURN + """' </dev/null >/dev/null 2>&1 &"]
"""


def elastic(state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if p.returncode != 0:
        raise AssertionError(f"elastic {' '.join(args)} exited {p.returncode}\n{p.stdout}\n"
                             f"{p.stderr}")
    return p


def host_loads(state: Path, seconds: float) -> dict[str, dict]:
    out = elastic(state, "status", "--hosts", "-o", "json", "--interval", str(seconds),
                  "--window", str(seconds), timeout=120)
    return {h["name"]: h for h in json.loads(out.stdout)["hosts"]}


def cores(h: dict, key: str) -> float:
    """A fraction of the host's CPUs, in cores."""
    return h[key] * h["ncpus"]


@contextlib.contextmanager
def burner_on(lab_obj, host: str):
    p = subprocess.Popen([*lab_obj.host_command(host), "sh", "-c", BURN],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def test_own_load_of_a_host_and_the_load_of_a_guest(lab, tmp_path):
    from elastic.adapters.lab import Lab
    lab_obj = Lab(lab.hosts_file.parent)
    if lab_obj.cgroup_dir("h1") is None:
        pytest.skip("this machine has no CPU accounting cgroup (cgroup v1 cpuacct or v2)")
    assert "cpu_cgroup: elastic-lab/h1" in lab.hosts_file.read_text()
    state = tmp_path / "state"
    spec = tmp_path / "load.yaml"
    spec.write_text(f"include: [{lab.hosts_file}]\n" + SPEC)
    try:
        up = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
        assert up["running"] == ["busy"], up
        # the VM's QEMU was born in h2's cgroup (libvirtd's; qemu.conf makes none of its own)
        procs = (lab_obj.cgroup_dir("h2") / "cgroup.procs").read_text().split()
        comms = {Path(f"/proc/{p}/comm").read_text().strip() for p in procs
                 if Path(f"/proc/{p}/comm").exists()}
        assert any(c.startswith("qemu") for c in comms), comms

        with burner_on(lab_obj, "h1") as burner:
            time.sleep(1)
            assert str(burner.pid) in \
                (lab_obj.cgroup_dir("h1") / "cgroup.procs").read_text().split()
            loads = host_loads(state, 4)
        h1, h2 = loads["h1"], loads["h2"]
        print(f"\nh1: cpu {cores(h1, 'cpu'):.2f} cores, own {cores(h1, 'cpu_own'):.2f}, "
              f"guests {cores(h1, 'cpu_guests'):.2f}; h2: cpu {cores(h2, 'cpu'):.2f}, own "
              f"{cores(h2, 'cpu_own'):.2f}, guests {cores(h2, 'cpu_guests'):.2f} "
              f"(ncpus {h1['ncpus']}, over {h1['window']} s)")
        for h in (h1, h2):
            assert h["answers"] and h["cpu_source"] == f"cgroup elastic-lab/{h['name']}"
            assert h["samples"] == 2 and 3.5 < h["window"] < 10
            assert h["memory_total"] == 3072
        # h1: the burner is its own load, no guest
        assert cores(h1, "cpu_own") > 0.3
        assert cores(h1, "cpu_guests") < 0.1
        assert not [v for v in h1["vms"] if v["project"] == "load"]
        # h2: the busy guest is guest load, and the host itself is nearly idle
        assert cores(h2, "cpu_own") < 0.15
        assert cores(h1, "cpu_own") > cores(h2, "cpu_own") + 0.2
        assert cores(h2, "cpu_guests") > 0.3
        (vm,) = h2["vms"]
        assert (vm["name"], vm["project"], vm["node"]) == ("busy.load", "load", "busy")
        assert vm["vcpus"] == 1 and vm["memory"] == 128 and vm["cpu_vcpus"] > 0.3
        assert vm["window"] > 3.5
        assert h2["memory_assigned"] == 128

        # without the burner h1 falls quiet; the stored samples are there for a window
        quiet = host_loads(state, 3)["h1"]
        assert cores(quiet, "cpu_own") < 0.15, quiet
        text = elastic(state, "status", "--hosts", "--interval", "1").stdout
        assert "host load" in text and "busy.load" in text and "cgroup elastic-lab/h1" in text
    finally:
        subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        "down", "load"], capture_output=True, timeout=300, cwd=ROOT)
