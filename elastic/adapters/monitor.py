"""Samples of a host's and its VMs' counters, read through libvirt (and, for hosts that
share one kernel, from the host's cgroup), for ``elastic.monitoring.load``.

    host = LibvirtHost("h1", uri)
    s1 = sample(host, clock.now(), cpu_cgroup="elastic-lab/h1", ncpus=2, memory_mib=3072)
    ...
    s2 = sample(host, clock.now(), ...)
    load([s1, s2], window=60)

What is read (every call within ``host.timeout``: a host that does not answer raises
``HostUnreachable``, never hangs):

- host CPU: ``virNodeGetCPUStats(-1)``, the busy time of all CPUs (kernel + user (+ intr):
  everything but idle and iowait), in ns;
- host memory: ``virNodeGetMemoryStats(-1)`` (free = free + buffers + cached: what the
  kernel can hand out), else ``virNodeGetInfo`` and ``virNodeGetFreeMemory``;
- per active domain: CPU time (``virDomainGetInfo``: all of QEMU's threads), vcpus, current
  memory, ``virDomainInterfaceStats`` of every ``<interface><target dev>`` and
  ``virDomainBlockStats`` of every ``<disk><target dev>`` of its live XML.

``cpu_cgroup``: the host's busy time is that cgroup's CPU time instead (relative to the CPU
controller's mount; cgroup v1 ``cpuacct.usage``, v2 ``cpu.stat`` ``usage_usec``). The
lab's hosts are namespaces of ONE kernel, so libvirt's node counters are the machine's, the
same for all of them; each lab host's libvirtd, its QEMUs and whatever is started on that
host run in a cgroup of their own (``elastic lab up`` makes them). The file is read on this
machine: it only makes sense for hosts that run here. ``ncpus`` and ``memory_mib`` are then
the host's share of the machine (its spec): the total, and a free figure of at most that
total minus what the domains hold.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.adapters.providers.libvirt import HostUnreachable, LibvirtHost, _libvirt
from elastic.adapters.render import domain_metadata
from elastic.errors import PermanentError
from elastic.monitoring import DomainSample, HostSample

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NOT_BUSY = frozenset({"idle", "iowait", "utilization"})


# ----------------------------------------------------------------------- pure helpers

@dataclass(frozen=True)
class Devices:
    interfaces: tuple[str, ...]   # what virDomainInterfaceStats takes: target dev (or MAC)
    disks: tuple[str, ...]        # what virDomainBlockStats takes: target dev


def domain_devices(xml: str) -> Devices:
    """The interfaces and disks of a domain's (live) XML that have statistics. An
    interface without a target device (an inactive domain's) is named by its MAC; a disk
    with no source (an empty CD-ROM) has nothing to read and is left out."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise PermanentError(f"unreadable domain XML: {e}") from None
    ifaces: list[str] = []
    for iface in root.findall("./devices/interface"):
        target = iface.find("target")
        mac = iface.find("mac")
        dev = target.get("dev") if target is not None else None
        name = dev or (mac.get("address") if mac is not None else None)
        if name and name not in ifaces:
            ifaces.append(name)
    disks: list[str] = []
    for disk in root.findall("./devices/disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if dev and disk.find("source") is not None and dev not in disks:
            disks.append(dev)
    return Devices(tuple(ifaces), tuple(disks))


def busy_ns(cpu_stats: Mapping[str, int]) -> int:
    """Busy CPU time from ``virNodeGetCPUStats``'s fields (ns): all but idle and iowait
    (Linux gives kernel, user, idle, iowait; others add intr)."""
    busy = [int(v) for k, v in cpu_stats.items() if k not in _NOT_BUSY]
    if not busy:
        raise PermanentError(f"the host's CPU statistics have no busy time: {dict(cpu_stats)}")
    return sum(busy)


def parse_cpuacct_usage(text: str) -> int:
    """cgroup v1 ``cpuacct.usage``: one number, ns."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"cpuacct.usage should hold one number of ns, not {text[:60]!r}") \
            from None
    if value < 0:
        raise ValueError(f"cpuacct.usage is negative: {value}")
    return value


def parse_cpu_stat(text: str) -> int:
    """cgroup v2 ``cpu.stat``: ``usage_usec N`` among other lines; returns ns."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value.strip()) * 1000
            except ValueError:
                break
    raise ValueError(f"cpu.stat has no usage_usec line: {text[:80]!r}")


def check_cgroup_path(path: str) -> str:
    """A cgroup path relative to the controller's mount (``elastic-lab/h1``)."""
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise PermanentError(f"cpu_cgroup {path!r} is not a cgroup path such as elastic-lab/h1")
    return "/".join(parts)


def cgroup_cpu_file(path: str, root: Path = CGROUP_ROOT) -> Path:
    """The file with the CPU time of cgroup ``path``: cgroup v1's cpuacct.usage when a
    cpuacct hierarchy is mounted, else cgroup v2's cpu.stat."""
    rel = check_cgroup_path(path)
    if (root / "cpuacct").is_dir():
        return root / "cpuacct" / rel / "cpuacct.usage"
    if (root / "cgroup.controllers").is_file():
        return root / rel / "cpu.stat"
    raise PermanentError(f"no CPU accounting cgroup under {root} (neither cgroup v1's cpuacct "
                         "nor cgroup v2)")


def cgroup_dir(path: str, root: Path = CGROUP_ROOT) -> Path:
    """The directory of cgroup ``path`` in the hierarchy that accounts CPU time."""
    return cgroup_cpu_file(path, root).parent


def read_cgroup_cpu_ns(path: str, root: Path = CGROUP_ROOT) -> int:
    """The CPU time (ns) cgroup ``path`` and its descendants have used."""
    f = cgroup_cpu_file(path, root)
    try:
        text = f.read_text()
    except FileNotFoundError:
        raise PermanentError(f"cgroup {path} does not exist ({f} is missing): is the lab "
                             "up (`elastic lab up` makes its hosts' cgroups)?") from None
    except OSError as e:
        raise PermanentError(f"cannot read {f}: {e}") from None
    try:
        return parse_cpuacct_usage(text) if f.name == "cpuacct.usage" else parse_cpu_stat(text)
    except ValueError as e:
        raise PermanentError(f"{f}: {e}") from None


def split_name(name: str) -> tuple[str | None, str | None]:
    """(project, node) of a domain named ``node.project``; (None, None) for other names."""
    node, dot, project = name.partition(".")
    return (project, node) if dot and node and project else (None, None)


# ------------------------------------------------------------------------------ sampling

def sample(host: LibvirtHost, now: float, cpu_cgroup: str | None = None, *,
           ncpus: int | None = None, memory_mib: int | None = None,
           cgroup_root: Path = CGROUP_ROOT) -> HostSample:
    """The counters of ``host`` and its active domains, stamped ``now``. The libvirt reads
    get ``host.timeout`` seconds in all (HostUnreachable after that)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = _read(host, cpu_cgroup, cgroup_root)
        except BaseException as e:   # handed to the caller
            box["error"] = e

    # a daemon thread: a call that hangs on a dead host is abandoned, and does not hold up
    # the process's exit either (libvirt's keepalive ends it within ~15 s)
    worker = threading.Thread(target=work, daemon=True, name=f"elastic-sample-{host.name}")
    worker.start()
    worker.join(host.timeout)
    if worker.is_alive():
        raise HostUnreachable(f"{host.name} ({host.uri}): no statistics from libvirt in "
                              f"{host.timeout:g} s")
    if "error" in box:
        raise box["error"]
    node_busy, info_cpus, total, free, domains = box["value"]
    if memory_mib is not None:
        held = sum(d.memory_mib for d in domains)
        total, free = memory_mib, max(0, min(free, memory_mib - held))
    source = "libvirt" if cpu_cgroup is None else f"cgroup {check_cgroup_path(cpu_cgroup)}"
    return HostSample(host=host.name, t=now, cpu_busy_ns=node_busy, ncpus=ncpus or info_cpus,
                      memory_total_mib=total, memory_free_mib=free, domains=tuple(domains),
                      cpu_source=source)


def _read(host: LibvirtHost, cpu_cgroup: str | None,
          cgroup_root: Path) -> tuple[int, int, int, int, list[DomainSample]]:
    libvirt = _libvirt()
    try:
        conn = host.conn
        if cpu_cgroup is not None:
            busy = read_cgroup_cpu_ns(cpu_cgroup, cgroup_root)
        else:
            busy = busy_ns(conn.getCPUStats(-1, 0))
        info = conn.getInfo()
        total, free = int(info[1]), int(conn.getFreeMemory() // (1 << 20))
        try:
            mem = conn.getMemoryStats(-1, 0)
            total = int(mem["total"]) // 1024
            free = sum(int(mem.get(k, 0)) for k in ("free", "buffers", "cached")) // 1024
        except (libvirt.libvirtError, KeyError):
            pass   # not every driver has it: getInfo's and getFreeMemory's figures stand
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        domains = [d for d in (_domain(dom, libvirt) for dom in conn.listAllDomains(flags))
                   if d is not None]
    except libvirt.libvirtError as e:
        raise HostUnreachable(f"{host.name} ({host.uri}): {e.get_error_message()}") from None
    return busy, int(info[2]), total, free, domains


def _domain(dom: Any, libvirt: Any) -> DomainSample | None:
    """One active domain's counters; None if it went away meanwhile."""
    try:
        name = dom.name()
        _state, _maxmem, mem_kib, vcpus, cpu_time = dom.info()
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError:
        return None
    meta = domain_metadata(xml)
    project, node = (meta.project, meta.name) if meta is not None else split_name(name)
    devices = domain_devices(xml)
    rx = tx = rd = wr = 0
    for dev in devices.interfaces:
        try:
            st = dom.interfaceStats(dev)
        except libvirt.libvirtError:
            continue   # unplugged meanwhile, or a type without counters
        rx, tx = rx + int(st[0]), tx + int(st[4])
    for dev in devices.disks:
        try:
            st = dom.blockStats(dev)
        except libvirt.libvirtError:
            continue
        rd, wr = rd + max(0, int(st[1])), wr + max(0, int(st[3]))
    return DomainSample(name=name, project=project or None, node=node or None,
                        cpu_time_ns=int(cpu_time), vcpus=int(vcpus),
                        memory_mib=int(mem_kib) // 1024, net_rx_bytes=max(0, rx),
                        net_tx_bytes=max(0, tx), disk_rd_bytes=rd, disk_wr_bytes=wr)
