"""The Debian image (images/debian/build.sh), built and booted for real.

build.sh makes disk.qcow2 with debootstrap (root), into a cache directory under the pytest
tmp, or into $ELASTIC_IMAGE_CACHE/debian when that is set (then a second run only checks that
it is up to date). QEMU boots a qcow2 overlay of it (the base is never written) under TCG
(the KVM here cannot run stock kernels), from its own disk: SeaBIOS, GRUB in the MBR, the
image's kernel. Its NIC (MAC 02:00:0a:0c:00:07) is on a tap inside a network namespace that
this test makes, bridged with 10.12.0.1/24, so that all traffic to 10.12.0.0/24 stays in that
namespace. A context ISO (label CONTEXT) names the node deb1. We check what a user would see:
"ELASTIC-READY deb1 10.12.0.7" on the serial console, ping, sshd's banner, the root
filesystem grown to fill a larger overlay, and a graceful power-off from the ACPI button.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.qemu_guest import Guest, bridged_netns, context_iso, overlay, sh

pytestmark = [pytest.mark.system, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "images" / "debian" / "build.sh"
MAC = "02:00:0a:0c:00:07"
IP = "10.12.0.7"
BRIDGE_IP = "10.12.0.1"
HOSTNAME = "deb1"
BUILD_TIMEOUT = 900.0  # seconds; about 60 here, downloads included
BOOT_TIMEOUT = 240.0   # seconds; an idle machine needs about 20 to ELASTIC-READY
OVERLAY_SIZE = "2G"    # larger than the image (1 GiB): the root grows at the first boot


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, network namespaces, tap devices)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (Debian package debootstrap)"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def build(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(BUILD), str(out)], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The image, built (or found up to date) once for this module."""
    cache = os.environ.get("ELASTIC_IMAGE_CACHE")
    out = Path(cache) / "debian" if cache else tmp_path_factory.mktemp("debian-image")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    r = build(out)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\n[debian image] {r.stdout.strip()}\n[debian image] build wall time "
          f"{time.monotonic() - t0:.2f} s")
    return out


@pytest.fixture
def netns():
    """A namespace with bridge br0 (10.12.0.1/24) and tap0 on it; tap and namespace are
    deleted afterwards."""
    with bridged_netns("eldeb", BRIDGE_IP) as name:
        yield name


class DebianGuest(Guest):
    def ssh_banner(self, timeout: float = 90) -> str:
        """sshd's greeting on port 22, read from inside the namespace. The first boot makes
        the node's host keys first (RSA takes a few seconds under TCG)."""
        probe = ("import socket\n"
                 f"s = socket.create_connection(({self.ip!r}, 22), timeout=5)\n"
                 "print(s.recv(256).decode(errors='replace').strip())\n")
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            r = sh("ip", "netns", "exec", self.ns, sys.executable, "-c", probe, check=False)
            if r.returncode == 0 and r.stdout.startswith("SSH-"):
                return r.stdout.strip()
            last = r.stderr.strip().splitlines()[-1:] or r.stdout
            assert self.alive(), f"qemu exited:\n{self.console()}\n{self.stderr()}"
            time.sleep(1)
        raise AssertionError(f"no SSH banner from {self.ip}:22 within {timeout} s ({last}):\n"
                             f"{self.console()}")



@pytest.fixture
def guest(netns, tmp_path):
    g = DebianGuest(netns, tmp_path, ip=IP, mac=MAC, memory_mib=512, boot_timeout=BOOT_TIMEOUT)
    yield g
    g.stop()  # before the namespace fixture deletes tap and namespace


# ------------------------------------------------------------------ tests
def test_build_outputs_and_is_idempotent(image) -> None:
    manifest = json.loads((image / "manifest.json").read_text())
    assert manifest["image"] == "debian"
    assert manifest["suite"] == "bookworm"
    assert manifest["kernel_version"]
    assert manifest["root_uuid"] in manifest["kernel_cmdline"]
    assert "console=ttyS0" in manifest["kernel_cmdline"]
    disk = manifest["files"]["disk.qcow2"]
    assert disk["bytes"] == (image / "disk.qcow2").stat().st_size
    assert disk["sha256"] == sha256(image / "disk.qcow2")
    info = json.loads(sh("qemu-img", "info", "--output=json", str(image / "disk.qcow2")).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == disk["virtual_bytes"]
    assert "backing-filename" not in info
    # The image boots from its own disk: no kernel beside it, so elastic boots it with
    # <boot dev='hd'/> and copies only the disk to the hosts.
    assert not (image / "vmlinuz").exists()
    packages = dict(line.split("\t") for line in (image / "packages.txt").read_text().splitlines())
    for name in ("systemd-sysv", "udev", "iproute2", "openssh-server", "ca-certificates",
                 "grub-pc-bin", manifest["kernel_package"]):
        assert name in packages, f"{name} is not in the image"
    assert "ifupdown" not in packages  # the contextualization configures the network

    before = {p.name: p.stat().st_mtime_ns for p in image.iterdir()}
    t0 = time.monotonic()
    r = build(image)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "up to date" in r.stdout
    assert time.monotonic() - t0 < 10
    assert {p.name: p.stat().st_mtime_ns for p in image.iterdir()} == before


def test_boot_with_context_iso_reaches_running_and_answers_ping(image, guest, tmp_path,
                                                                capsys) -> None:
    iso = context_iso(tmp_path, f"HOSTNAME='{HOSTNAME}'\n")
    disk = overlay(image, tmp_path, OVERLAY_SIZE)
    base = image / "disk.qcow2"
    base_before = (base.stat().st_mtime_ns, base.stat().st_size)
    guest.start("-drive", f"file={disk},if=virtio,format=qcow2",               # vda: the node
                "-drive", f"file={iso},if=virtio,format=raw,readonly=on")      # vdb: context

    t_ready = guest.wait_for(f"ELASTIC-READY {HOSTNAME} {IP}\n")
    t_ping = guest.ping(timeout=60)
    with capsys.disabled():
        print(f"\n[debian boot] qemu start -> ELASTIC-READY {t_ready:.2f} s, -> ping {t_ping:.2f} s")

    out = guest.console()
    assert out.count("ELASTIC-READY") == 1
    assert "ELASTIC-FAILED" not in out
    guest.wait_for(f"ELASTIC-STARTED {HOSTNAME} 0\n", timeout=60)
    # the root partition and filesystem grew to the overlay's 2 GiB at the first boot
    assert "elastic-growroot: /dev/vda is 2048 MiB; growing /dev/vda1" in out
    assert re.search(r"elastic-growroot: /dev/vda1: (1\.9|2\.0)G\n", out), out
    banner = guest.ssh_banner()
    assert banner.startswith("SSH-2.0-OpenSSH"), banner
    guest.wait_for(f"{HOSTNAME} login:", timeout=60)

    t0 = time.monotonic()
    guest.monitor_command("system_powerdown")  # the ACPI power button, as libvirt's shutdown()
    assert guest.proc is not None
    guest.proc.wait(timeout=90)
    with capsys.disabled():
        print(f"[debian boot] ssh: {banner}; power button -> qemu exit "
              f"{time.monotonic() - t0:.2f} s")
    assert "reboot: Power down" in guest.console()
    # only the overlay was written
    assert (base.stat().st_mtime_ns, base.stat().st_size) == base_before
    assert sh("qemu-img", "check", "-q", str(disk), check=False).returncode == 0
