"""The tiny guest image, built and booted for real.

images/tiny/build.sh makes the image; QEMU boots it under TCG (the KVM here cannot run stock
kernels) with its NIC on a tap inside a network namespace that this test makes, so that all
traffic to 10.11.0.0/24 stays in that namespace. A context ISO (label CONTEXT) names the node
and carries a startup command. We check what a user would see: the readiness marker on the
serial console, ping, the web page, the startup command's output, /data mounted, and a
graceful power-off from the ACPI button.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastic.adapters.render import TINY_INITRD, tiny_kernel
from tests.system.qemu_guest import Guest, bridged_netns, overlay, sh
from tests.system.qemu_guest import context_iso as _context_iso
from tests.system.waiting import wait_for

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "images" / "tiny" / "build.sh"
MAC = "02:00:0a:0b:00:05"
IP = "10.11.0.5"
BRIDGE_IP = "10.11.0.1"
BOOT_TIMEOUT = 120.0  # seconds; an idle machine needs about 6


def _missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
    if os.geteuid() != 0:
        return "needs root (network namespaces and tap devices)"
    if not glob.glob("/boot/vmlinuz-*"):
        return "no guest kernel in /boot/vmlinuz-* (Debian package linux-image-amd64)"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The image, built once for this module."""
    out = tmp_path_factory.mktemp("tiny-image")
    # A payload, as a scheduler daemon will bring later: a boot.d hook that the
    # contextualization runs after the readiness marker.
    payload = tmp_path_factory.mktemp("payload")
    hook = payload / "etc" / "elastic" / "boot.d" / "50-test-payload"
    hook.parent.mkdir(parents=True)
    hook.write_text('#!/bin/sh\necho "PAYLOAD-HOOK ran on $ELASTIC_HOSTNAME $ELASTIC_IP"\n')
    hook.chmod(0o755)
    t0 = time.monotonic()
    r = subprocess.run(["sh", str(BUILD), str(out)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PAYLOAD": str(payload)})
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\n[tiny image] {r.stdout.strip()} (wall {time.monotonic() - t0:.2f} s)")
    return out


@pytest.fixture
def netns():
    """A namespace with bridge br0 (10.11.0.1/24) and tap0 on it; deleted afterwards."""
    with bridged_netns("eltiny", BRIDGE_IP) as name:
        yield name


@pytest.fixture
def guest(netns, tmp_path):
    g = TinyGuest(netns, tmp_path, ip=IP, mac=MAC, memory_mib=128, boot_timeout=BOOT_TIMEOUT)
    yield g
    g.stop()  # before the namespace fixture deletes the namespace


class TinyGuest(Guest):
    def start(self, image: Path, *devices: str) -> None:   # direct kernel boot
        super().start("-kernel", str(tiny_kernel(image)),
                      "-initrd", str(image / TINY_INITRD),
                      "-append", "console=ttyS0 panic=-1 quiet", *devices)


def context_iso(tmp_path: Path, context_sh: str) -> Path:
    return _context_iso(tmp_path, context_sh, {"/etc/motd": "managed by elastic\n"})


def http_get(ns: str, url: str, timeout: float = 30) -> str:
    """The page at ``url``, from inside ``ns``. init starts httpd only after rcS (which prints
    ELASTIC-STARTED) has ended, so the first answer may come a moment after that line."""
    def get() -> subprocess.CompletedProcess[str] | None:
        r = sh("ip", "netns", "exec", ns, sys.executable, "-c",
               f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')",
               check=False)
        return r if r.returncode == 0 else None
    return wait_for(f"{url} to answer", get, timeout=timeout, every=0.5).stdout


# ------------------------------------------------------------------ tests
def test_build_outputs_and_is_idempotent(image) -> None:
    manifest = json.loads((image / "manifest.json").read_text())
    kver = manifest["kernel_version"]
    assert Path(f"/boot/vmlinuz-{kver}").exists()
    assert (image / "vmlinuz").read_bytes() == Path(f"/boot/vmlinuz-{kver}").read_bytes()
    for name in ("vmlinuz", "vmlinux", "initramfs.cpio.lz4", "disk.qcow2"):
        assert manifest["files"][name]["bytes"] == (image / name).stat().st_size
    # Debian's kernel has a PVH entry point: the uncompressed ELF is what boots
    assert manifest["pvh"] is True and tiny_kernel(image) == image / "vmlinux"
    assert (image / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert (image / "initramfs.cpio.lz4").read_bytes()[:4] == b"\x02\x21\x4c\x18"  # legacy
    assert {"virtio_pci", "virtio_net", "virtio_blk", "isofs", "sr_mod", "ext4"} <= set(manifest["modules"])
    assert manifest["build_seconds"] < 60
    assert manifest["payload"]
    before = {p.name: p.stat().st_mtime_ns for p in image.iterdir()}
    r = subprocess.run(["sh", str(BUILD), str(image)], capture_output=True, text=True, check=True,
                       env={**os.environ, "PAYLOAD": manifest["payload"]})
    assert "up to date" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in image.iterdir()} == before


def test_boot_with_context_iso_reaches_running_and_answers_ping(image, guest, tmp_path, capsys) -> None:
    iso = context_iso(tmp_path, """\
HOSTNAME='tiny-test'
ETH0_MASK='255.255.255.0'
ETH0_GATEWAY='10.11.0.1'
USER0_NAME='alice'
USER0_SSH_KEYS='ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest alice@test'
START_SCRIPT='echo "STARTUP-SAYS hello from $(hostname) as $(id -un alice) motd=$(cat /etc/motd)"
grep -q " /data " /proc/mounts && echo "STARTUP-SAYS data mounted"'
""")
    disk = overlay(image, tmp_path)
    guest.start(image,
                "-drive", f"file={disk},if=virtio,format=qcow2",               # vda: /data
                "-drive", f"file={iso},if=virtio,format=raw,readonly=on")      # vdb: context

    t_ready = guest.wait_for(f"ELASTIC-READY tiny-test {IP}\n")
    t_ping = guest.ping()
    guest.wait_for("ELASTIC-STARTED tiny-test 0\n", timeout=30)
    with capsys.disabled():
        print(f"\n[tiny boot] qemu start -> ELASTIC-READY {t_ready:.2f} s, -> ping {t_ping:.2f} s")

    out = guest.console()
    assert "STARTUP-SAYS hello from tiny-test as alice motd=managed by elastic" in out
    assert "STARTUP-SAYS data mounted" in out
    assert f"PAYLOAD-HOOK ran on tiny-test {IP}" in out
    assert out.count("ELASTIC-READY") == 1
    assert http_get(guest.ns, f"http://{IP}/") == f"hello from tiny-test ({IP})\n"


def test_boot_with_cdrom_context_then_acpi_poweroff(image, guest, tmp_path, capsys) -> None:
    iso = context_iso(tmp_path, "HOSTNAME='tiny-cd'\nSTART_SCRIPT='echo STARTUP-SAYS cdrom'\n")
    guest.start(image, "-cdrom", str(iso))  # no disk: no /data
    guest.wait_for(f"ELASTIC-READY tiny-cd {IP}\n")
    guest.wait_for("STARTUP-SAYS cdrom")
    t_ping = guest.ping()
    # wait until init has started acpid (it starts after rcS, with the getty)
    guest.wait_for("login:", timeout=30)

    t0 = time.monotonic()
    guest.monitor_command("system_powerdown")  # the ACPI power button, as libvirt's shutdown()
    assert guest.proc is not None
    guest.proc.wait(timeout=60)
    with capsys.disabled():
        print(f"\n[tiny boot] cdrom context: ping {t_ping:.2f} s; "
              f"power button -> qemu exit {time.monotonic() - t0:.2f} s")
    assert "reboot: Power down" in guest.console()
