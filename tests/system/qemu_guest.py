"""Booting an image with QEMU directly (no libvirt), for the image tests: a network namespace
with a bridge and a tap that the test owns, one QEMU process in it under TCG, and what a user
would look at (the serial console, ping, the monitor's power button)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def require(tool: str, package: str) -> None:
    assert shutil.which(tool), f"{tool} is missing: install the Debian package {package}"


@contextlib.contextmanager
def bridged_netns(prefix: str, bridge_ip: str) -> Iterator[str]:
    """A namespace with bridge br0 (``bridge_ip``/24) and tap0 on it; deleted afterwards."""
    name = f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 100000}"
    sh("ip", "netns", "add", name)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge"],
            ["addr", "add", f"{bridge_ip}/24", "dev", "br0"],
            ["link", "set", "br0", "up"],
            ["tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["link", "set", "tap0", "master", "br0", "up"],
        ):
            sh("ip", "-n", name, *cmd)
        yield name
    finally:
        sh("ip", "-n", name, "link", "del", "tap0", check=False)
        sh("ip", "netns", "del", name, check=False)


class Guest:
    """One QEMU process inside the namespace, its NIC on tap0; stop() in a finalizer."""

    def __init__(self, ns: str, workdir: Path, *, ip: str, mac: str, memory_mib: int,
                 boot_timeout: float) -> None:
        self.ns = ns
        self.workdir = workdir
        self.ip = ip
        self.mac = mac
        self.memory_mib = memory_mib
        self.boot_timeout = boot_timeout
        self.serial = workdir / "serial.log"
        self.monitor = workdir / "monitor.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self, *args: str) -> None:
        """Start QEMU; ``args`` add the boot method and the disks."""
        cmd = [
            "ip", "netns", "exec", self.ns,  # execs qemu: same pid
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mib), "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
            "-serial", f"file:{self.serial}",
            "-monitor", f"unix:{self.monitor},server,nowait",
            *args,
        ]
        self.started = time.monotonic()
        with open(self.workdir / "qemu.stderr", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        p = self.workdir / "qemu.stderr"
        return p.read_text(errors="replace") if p.exists() else ""

    def wait_for(self, what: str, timeout: float | None = None) -> float:
        """Seconds from QEMU's start until WHAT is on the console."""
        timeout = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what in self.console():
                return time.monotonic() - self.started
            assert self.alive(), f"qemu exited:\n{self.console()}\n{self.stderr()}"
            time.sleep(0.1)
        raise AssertionError(f"{what!r} not on the console after {timeout} s:\n{self.console()}")

    def ping(self, timeout: float | None = None) -> float:
        """Seconds from QEMU's start until the guest answers ping (from inside the namespace)."""
        timeout = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = sh("ip", "netns", "exec", self.ns, "ping", "-c1", "-W1", self.ip, check=False)
            if r.returncode == 0:
                return time.monotonic() - self.started
            assert self.alive(), f"qemu exited:\n{self.console()}\n{self.stderr()}"
            time.sleep(0.1)
        raise AssertionError(f"{self.ip} did not answer ping within {timeout} s:\n"
                             f"{self.console()}")

    def monitor_command(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.monitor))
            time.sleep(0.2)
            s.recv(65536)  # banner
            s.sendall(command.encode() + b"\n")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def context_iso(tmp_path: Path, context_sh: str, files: dict[str, str] | None = None) -> Path:
    """A context ISO (label CONTEXT) with context.sh and a files/ tree."""
    require("genisoimage", "genisoimage")
    src = tmp_path / "context"
    src.mkdir()
    (src / "context.sh").write_text(context_sh)
    for path, content in (files or {}).items():
        target = src / "files" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    iso = tmp_path / "context.iso"
    sh("genisoimage", "-quiet", "-o", str(iso), "-V", "CONTEXT", "-r", "-J", str(src))
    return iso


def overlay(image: Path, tmp_path: Path, size: str | None = None) -> Path:
    """A qcow2 overlay of the image's disk.qcow2 (the base is never written)."""
    require("qemu-img", "qemu-utils")
    disk = tmp_path / "node.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
       "-b", str(image / "disk.qcow2"), str(disk), *([size] if size else []))
    return disk
