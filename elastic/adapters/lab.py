"""The lab: elastic on one machine. N hypervisor hosts, each a network namespace running its
own libvirtd, joined by a LAN switch namespace.

    lab = Lab(state_dir / "lab")
    info = lab.up(2, progress=print)     # idempotent: keeps healthy hosts, makes the rest
    print(lab.hosts_yaml())              # a `hosts:` section a project can `include:`
    lab.down()                           # domains, daemons, namespaces, files: all gone, checked

Layout (``root`` = ``<state_dir>/lab``; everything the lab owns lives there or is a namespace):

    elastic-lan   bridge lan0 (10.77.0.0/24, no address), one port per host: port-h1, port-h2 ...
    elastic-front the operator's machine / the cluster's front end, where elastic itself would
                  run: eth0 = 10.77.0.2/24 (its other end is port-front on lan0). The
                  autoscaler reaches a head node's LAN address from here (SSH).
    elastic-h1    eth0 (the other end of port-h1) enslaved to bridge br0 = 10.77.0.11/24;
                  libvirtd in a private mount + UTS namespace (hostname h1) where
                  root/hosts/h1/{etc/libvirt,run,var/lib/libvirt,var/log/libvirt,var/cache/libvirt}
                  are bind-mounted over the real directories, and root/hosts/h1/hosts over
                  /etc/hosts. It listens on its unix socket (used by elastic from the root
                  namespace) and on tcp 10.77.0.11:16509 without authentication (live migration
                  between lab hosts; reachable only inside the lab's namespaces).
                  libvirtd (and so its QEMUs) runs in the cgroup elastic-lab/h1 (cgroup v1's
                  cpuacct hierarchy, or cgroup v2), joined before it enters the namespace:
                  the lab's hosts share one kernel, so the node CPU counters libvirt reports
                  are the machine's; this cgroup's CPU time is h1's load (``cpu_cgroup`` in
                  hosts.yaml; ``Lab.host_command`` runs a command "on" h1: in its cgroup and
                  namespace). `lab down` removes the cgroups.

Each bridge has STP off and forward delay 0, and carries an alias naming the lab's root, so
that a second lab (another state dir) is refused instead of silently taking over.

With ``cloud=True`` (`elastic lab up --cloud`) the lab also has a local EC2:

    elastic-inet  the "internet": bridge inet0 (172.31.0.0/16, moto's default subnets); every
                  cloud instance is a namespace elastic-c-<id> on it (elastic.adapters.cloudlab)
    elastic-front gets a second leg there, eth1 = 172.31.255.254/16: the instances' gateway and
                  where they reach the VPN hub; it forwards between the LAN and the internet
    root/cloud    moto's EC2 server and a fault-injecting proxy on 127.0.0.1 (the endpoint:
                  ``LabInfo.cloud_endpoint``) and the agent that makes instances real, as a
                  daemon; knobs in root/cloud/knobs.json

The pure parts (names, addresses, rendered files) are module functions, tested without root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elastic.adapters import monitor, net
from elastic.adapters.run import CommandMissing, run, spawn, wrap
from elastic.errors import ConfigError, PermanentError, TransientError

Progress = Callable[[str], None]

# ------------------------------------------------------------------------------ the plan

PREFIX = "elastic-"
LAN_NETNS = "elastic-lan"
LAN_BRIDGE = "lan0"
LAN_CIDR = "10.77.0.0/24"
FRONT_NETNS = "elastic-front"
FRONT_PORT = "port-front"    # its end on lan0
FRONT_IF = "eth0"
FRONT_ADDRESS = "10.77.0.2"
INET_NETNS = "elastic-inet"  # the lab's "internet", where cloud instances live (--cloud)
INET_BRIDGE = "inet0"
INET_CIDR = "172.31.0.0/16"
FRONT_INET_IF = "eth1"       # the front end's leg on it
FRONT_INET_PORT = "port-inet"
FRONT_INET_ADDRESS = "172.31.255.254"
HOST_BRIDGE = "br0"          # each host's uplink bridge; guests of `bridged` networks join it
HOST_PORT = "eth0"           # the host's "NIC": its end of the veth pair to the LAN switch
HOST_OFFSET = 10             # host i gets LAN address .10+i
MAX_HOSTS = 244              # .11 .. .254
TCP_PORT = 16509
MEMORY_CAP_MIB = 16384       # default share per host is capped at this
MEMORY_MIN_MIB = 512
SOCKET_PATH_MAX = 107        # sun_path holds 108 bytes with the NUL
UUID_NAMESPACE = uuid.UUID("8d0cbd7e-0b3c-5e54-9a3e-6c61ab1ae1a5")  # elastic lab host UUIDs
CGROUP_PARENT = "elastic-lab"  # host h1's cgroup is elastic-lab/h1 (machine-wide, like netns)

# the real directories each host gets a private copy of (bind-mounted over them)
BIND_DIRS = ("etc/libvirt", "run", "var/lib/libvirt", "var/log/libvirt")
# ... and the one all lab hosts share: QEMU's capabilities cache (the same binaries on the same
# machine), so that only the first host spends ~8 s probing QEMU
SHARED_CACHE = "var/cache/libvirt"

_HOST_RE = re.compile(r"^h([1-9][0-9]*)$")
_HOST_NETNS_RE = re.compile(r"^elastic-h([1-9][0-9]*)$")


@dataclass(frozen=True)
class LabHost:
    name: str            # "h1"
    netns: str           # "elastic-h1"
    uri: str             # qemu:///system?socket=<root>/hosts/h1/run/libvirt/libvirt-sock
    address: str         # on the LAN, e.g. 10.77.0.11
    memory_mib: int
    vcpus: int
    alive: bool = False

    @property
    def migration_uri(self) -> str:
        return migration_uri(self.address)


@dataclass(frozen=True)
class LabInfo:
    hosts: tuple[LabHost, ...]
    lan_netns: str
    lan_cidr: str
    hosts_file: Path
    front_netns: str = FRONT_NETNS
    front_address: str = FRONT_ADDRESS
    cloud_endpoint: str | None = None       # the local EC2 (lab up --cloud), when it runs


def host_name(i: int) -> str:
    return f"h{i}"


def host_index(name: str) -> int:
    m = _HOST_RE.match(name)
    if not m:
        raise ValueError(f"'{name}' is not a lab host name (h1, h2, ...)")
    return int(m.group(1))


def host_netns(i: int) -> str:
    return f"{PREFIX}{host_name(i)}"


def lan_port(i: int) -> str:
    """The LAN switch's port for host i (in elastic-lan)."""
    return f"port-{host_name(i)}"


def host_address(i: int, cidr: str = LAN_CIDR) -> str:
    if not 1 <= i <= MAX_HOSTS:
        raise ValueError(f"lab host index {i} is outside 1..{MAX_HOSTS}")
    return str(ipaddress.ip_network(cidr)[HOST_OFFSET + i])


def host_uuid(name: str) -> str:
    """A stable, distinct libvirt host UUID per lab host (live migration needs them distinct)."""
    return str(uuid.uuid5(UUID_NAMESPACE, name))


def host_cgroup(name: str) -> str:
    """The cgroup of lab host ``name`` (relative to the CPU controller's mount)."""
    return f"{CGROUP_PARENT}/{name}"


def in_cgroup(argv: Sequence[str], cgroup: Path | None, *, required: bool = True) -> list[str]:
    """``argv``, run in the cgroup directory ``cgroup`` (as is, if None): a shell moves
    itself there, then execs it. The cgroup is joined *before* anything enters a network
    namespace: ``ip netns exec`` mounts a fresh /sys, with no cgroup file system under it.
    ``required``: the command does not run if the cgroup cannot be joined (else a warning
    on stderr, and it runs outside)."""
    argv = [str(a) for a in argv]
    if cgroup is None:
        return argv
    procs = shlex.quote(str(cgroup / "cgroup.procs"))
    warning = shlex.quote(f"elastic lab: warning: cannot join cgroup {cgroup}: its CPU load "
                          "will not be seen")
    join = (f'echo $$ > {procs} && exec "$@"' if required else
            f'echo $$ > {procs} || echo {warning} >&2; exec "$@"')
    return ["sh", "-c", join, "elastic-lab", *argv]


def host_command_prefix(netns: str, cgroup: Path | None) -> list[str]:
    """The argv prefix that runs a command "on" a lab host: in its cgroup directory (if
    given: its CPU time is that host's load) and its network namespace."""
    return in_cgroup(["ip", "netns", "exec", netns], cgroup)


def host_dir(root: Path, name: str) -> Path:
    return root / "hosts" / name


def socket_path(root: Path, name: str) -> Path:
    return host_dir(root, name) / "run" / "libvirt" / "libvirt-sock"


def local_uri(root: Path, name: str) -> str:
    """The URI elastic uses from the root namespace: the host's unix socket."""
    return f"qemu:///system?socket={socket_path(root, name)}"


def migration_uri(address: str) -> str:
    """The URI one lab host uses to reach another (inside the namespaces)."""
    return f"qemu+tcp://{address}/system"


def owner_tag(root: Path) -> str:
    """The alias put on the lab's bridges: which root owns them (IFLA_IFALIAS <= 128 bytes)."""
    path = str(root)
    tag = f"elastic-lab {path}"
    if len(tag.encode()) > 120:
        tag = f"elastic-lab #{hashlib.sha256(path.encode()).hexdigest()[:24]}"
    return tag


def default_memory_mib(total_mib: int, hosts: int) -> int:
    """Each host's share of the machine: total / N (leaving the machine itself an eighth, at
    most 2 GiB), in whole 128 MiB, between MEMORY_MIN_MIB and MEMORY_CAP_MIB."""
    usable = total_mib - min(2048, total_mib // 8)
    share = usable // max(hosts, 1) // 128 * 128
    return max(MEMORY_MIN_MIB, min(MEMORY_CAP_MIB, share))


def check_hosts(hosts: int) -> None:
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
        raise ConfigError(f"the lab has 1 to {MAX_HOSTS} hosts, not {hosts!r}", key="hosts")


def plan_hosts(root: Path, hosts: int, memory_mib: int, vcpus: int) -> tuple[LabHost, ...]:
    """The hosts a lab of ``hosts`` hosts has (alive unknown: False)."""
    check_hosts(hosts)
    out = []
    for i in range(1, hosts + 1):
        name = host_name(i)
        sock = socket_path(root, name)
        if len(str(sock)) > SOCKET_PATH_MAX:
            raise ConfigError(f"the lab's state directory {root} is too deep: the socket path "
                              f"{sock} is longer than {SOCKET_PATH_MAX} bytes; use a shorter "
                              "state directory", key="state_dir")
        out.append(LabHost(name=name, netns=host_netns(i), uri=local_uri(root, name),
                           address=host_address(i), memory_mib=memory_mib, vcpus=vcpus))
    return tuple(out)


# --------------------------------------------------------------------- rendered files

_HEADER = ("# written by `elastic lab up` for lab host {name}; rewritten on every `lab up`,\n"
           "# so edit elastic/adapters/lab.py instead.\n")


def render_libvirtd_conf(name: str, address: str, uuid_: str) -> str:
    return _HEADER.format(name=name) + "\n".join([
        "listen_tls = 0",
        "listen_tcp = 1",
        f'listen_addr = "{address}"',
        f'tcp_port = "{TCP_PORT}"',
        '# no authentication: only lab hosts (namespaces of this machine) can reach it',
        'auth_tcp = "none"',
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        'unix_sock_group = "root"',
        'unix_sock_rw_perms = "0700"',
        f'host_uuid = "{uuid_}"',
        '# warnings and errors go to stderr: <root>/hosts/<name>/libvirtd.log',
        'log_outputs = "3:stderr"',
        "",
    ])


def render_qemu_conf(name: str, address: str) -> str:
    return _HEADER.format(name=name) + "\n".join([
        '# no AppArmor/SELinux and no cgroups inside `ip netns exec`; QEMU runs as root',
        'security_driver = "none"',
        "cgroup_controllers = [ ]",
        "namespaces = [ ]",
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        '# QEMU writes its own log: no virtlogd to supervise and clean up',
        'stdio_handler = "file"',
        '# incoming migrations listen on, and are announced with, the LAN address',
        f'migration_address = "{address}"',
        f'migration_host = "{address}"',
        "",
    ])


def render_hosts_file(hosts: Sequence[tuple[str, str]]) -> str:
    """/etc/hosts inside the lab hosts: lab host names resolve without DNS."""
    lines = ["# written by `elastic lab up`", "127.0.0.1\tlocalhost", "::1\tlocalhost"]
    lines += [f"{address}\t{name} {PREFIX}{name}" for name, address in hosts]
    return "\n".join(lines) + "\n"


def render_start_script(hdir: Path, name: str, libvirtd: str, cache: Path) -> str:
    """Run by ``unshare --mount --uts --propagation private sh <script>`` inside the host's
    network namespace: private copies of libvirt's directories, then exec libvirtd in the
    foreground (the pid spawn() returns is libvirtd's)."""
    lines = [
        "#!/bin/sh",
        f"# written by `elastic lab up`: libvirtd of lab host {name}",
        "set -e",
        f"H='{hdir}'",
    ]
    for d in BIND_DIRS:
        lines.append(f'mount --bind "$H/{d}" /{d}')
    lines += [
        f"mount --bind '{cache}' /{SHARED_CACHE}",
        'mount --bind "$H/hosts" /etc/hosts',
        f"hostname {name}",
        f"exec {libvirtd} --listen --pid-file /run/libvirtd.pid "
        "--config /etc/libvirt/libvirtd.conf",
        "",
    ]
    return "\n".join(lines)


def _quote(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def render_hosts_yaml(hosts: Sequence[LabHost], path: Path | None = None, *,
                      cpu_cgroups: bool = True) -> str:
    """A `hosts:` section for a project to `include:`. ``cpu_cgroups``: each host's load is
    its cgroup's CPU time (``cpu_cgroup: elastic-lab/h1``)."""
    where = f" [{path}]" if path else ""
    lines = ["# written by `elastic lab up`; include it from a project: "
             f"include:{where}", "hosts:"]
    for h in hosts:
        cgroup = f"cpu_cgroup: {host_cgroup(h.name)}, " if cpu_cgroups else ""
        lines.append(
            f"  {h.name}: {{uri: {_quote(h.uri)}, type: qemu, memory: {h.memory_mib}M, "
            f"vcpus: {h.vcpus}, uplink: {HOST_BRIDGE}, {cgroup}attributes: {{lab: true, "
            f"address: {h.address}, migration_uri: {_quote(h.migration_uri)}, "
            f"netns: {h.netns}}}}}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- the machine

def machine_memory_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise PermanentError("cannot read MemTotal from /proc/meminfo")


def machine_vcpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


def _pid_state(pid: int) -> tuple[str, str] | None:
    """(comm, state) of a live process, or None. Reaps it first if it is our dead child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    state = raw[raw.rindex(")") + 1:].split()[0]
    return comm, state


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, and SIGKILL if ``pid`` is still there after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while (st := _pid_state(pid)) is not None and st[1] not in ("Z", "X"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise TransientError(f"process {pid} did not exit after SIGKILL")


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:  # pragma: no cover - depends on the installation
        raise PermanentError("libvirt-python is not installed: pip install 'elastic[libvirt]'") \
            from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no noise on stderr
    return libvirt


def _in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    """fn() with a time limit (a libvirt call on a stopped daemon blocks forever). Raises
    TransientError on timeout; the thread is a daemon and is abandoned."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=work, daemon=True, name="elastic-lab-call")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TransientError(f"no answer in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def probe(uri: str, timeout: float = 5.0) -> str | None:
    """None if the libvirtd behind ``uri`` answers, else why not."""
    libvirt = _libvirt()

    def ask() -> str:
        conn = libvirt.open(uri)
        try:
            return conn.getHostname()
        finally:
            conn.close()

    try:
        _in_thread(ask, timeout)
    except TransientError as e:
        return str(e)
    except libvirt.libvirtError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- the lab

class Lab:
    """One lab on this machine, owned by ``root``. Needs root privileges for up/down."""

    CGROUP_ROOT = monitor.CGROUP_ROOT
    START_TIMEOUT = 60.0     # libvirtd answering after spawn
    STOP_TIMEOUT = 10.0      # libvirtd exiting after SIGTERM (then SIGKILL)
    PROBE_TIMEOUT = 5.0
    DESTROY_TIMEOUT = 30.0   # all domains of the lab destroyed

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self._children: dict[str, Any] = {}   # host name -> Popen (we reap what we spawn)

    # -- paths and saved settings
    @property
    def hosts_file(self) -> Path:
        return self.root / "hosts.yaml"

    @property
    def _cache_dir(self) -> Path:
        return self.root / "cache" / "libvirt"

    @property
    def _state_file(self) -> Path:
        return self.root / "lab.json"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as e:
            raise PermanentError(f"{self._state_file} is damaged ({e}); run `elastic lab down` "
                                 "and `elastic lab up` again") from None

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self._state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up/down at a time per root."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TransientError(f"another `elastic lab` command is working on {self.root}",
                                     retry_after=5) from None
            yield
        finally:
            os.close(fd)

    def _plan(self, hosts: int, memory_mib: int | None) -> tuple[LabHost, ...]:
        mem = memory_mib or default_memory_mib(machine_memory_mib(), hosts)
        return plan_hosts(self.root, hosts, mem, machine_vcpus())

    def _settings(self) -> tuple[int, int | None] | None:
        st = self._load()
        if "hosts" not in st:
            return None
        return int(st["hosts"]), st.get("memory_mib")

    # -- ownership: namespaces of this lab, of no lab (half made), or of another lab
    def _owner(self, ns: str) -> str | None:
        link = {LAN_NETNS: LAN_BRIDGE, FRONT_NETNS: FRONT_IF,
                INET_NETNS: INET_BRIDGE}.get(ns, HOST_BRIDGE)
        info = net.link_info(link, ns=ns)
        return info["alias"] if info else None

    def _check_ours(self, ns: str) -> None:
        """Raise if another lab owns namespace ``ns``."""
        if self._ownership(ns) == "other":
            owner = (self._owner(ns) or "").removeprefix("elastic-lab ")
            raise PermanentError(
                f"network namespace {ns} belongs to another lab ({owner}); run "
                "`elastic lab down` with that state directory first")

    def _existing_host_indexes(self) -> set[int]:
        found = set()
        for ns in net.list_netns():
            m = _HOST_NETNS_RE.match(ns)
            if m:
                found.add(int(m.group(1)))
        hosts_root = self.root / "hosts"
        if hosts_root.is_dir():
            for d in hosts_root.iterdir():
                if _HOST_RE.match(d.name):
                    found.add(host_index(d.name))
        return found

    # -- cgroups (one per host: its CPU load, apart from the other hosts on this kernel)
    def cgroup_dir(self, name: str) -> Path | None:
        """Host ``name``'s cgroup directory; None if this machine has no CPU accounting
        cgroups (the lab then runs without them, and its hosts' loads are not told apart)."""
        try:
            return monitor.cgroup_dir(host_cgroup(name), self.CGROUP_ROOT)
        except PermanentError:
            return None

    def host_command(self, name: str) -> list[str]:
        """The argv prefix that runs a command "on" lab host ``name``, in its network
        namespace and cgroup: ``run([*lab.host_command("h1"), "sh", "-c", "..."])``. Fails
        (the command does not run) if the host's cgroup is not there."""
        return host_command_prefix(host_netns(host_index(name)), self.cgroup_dir(name))

    def _in_own_cgroup(self, name: str, pid: int) -> bool:
        """Whether ``pid`` is in host ``name``'s cgroup (True if there are no cgroups)."""
        cg = self.cgroup_dir(name)
        if cg is None:
            return True
        try:
            return str(pid) in (cg / "cgroup.procs").read_text().split()
        except OSError:
            return False

    def _remove_cgroup(self, name: str, say: Progress) -> None:
        """rmdir the host's cgroup, once its processes are gone (their exit takes a moment;
        stragglers, which only the lab put there, are killed)."""
        cg = self.cgroup_dir(name)
        if cg is None or not cg.is_dir():
            return
        deadline = time.monotonic() + self.STOP_TIMEOUT
        while True:
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() > deadline:
                    raise TransientError(f"cannot remove cgroup {cg}: {e}") from None
            try:
                left = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                left = []
            for pid in left:
                say(f"{name}: ending process {pid} left in cgroup {cg}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        parent = cg.parent
        if parent.name == CGROUP_PARENT:
            with contextlib.suppress(OSError):
                parent.rmdir()    # the last host's: the parent goes too (busy otherwise)

    # -- libvirtd processes
    def _pid_file(self, name: str) -> Path:
        return host_dir(self.root, name) / "libvirtd.pid"

    def _log_file(self, name: str) -> Path:
        return host_dir(self.root, name) / "libvirtd.log"

    def _daemon_pid(self, name: str) -> int | None:
        """The pid of this host's libvirtd if it runs (checked: name, state, namespace)."""
        try:
            pid = int(self._pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        st = _pid_state(pid)
        if st is None or st[1] in ("Z", "X") or st[0] != "libvirtd":
            return None
        if pid not in net.netns_pids(host_netns(host_index(name))):
            return None
        return pid

    def _stop_daemon(self, name: str) -> None:
        pid = self._daemon_pid(name)
        if pid is not None:
            _terminate(pid, self.STOP_TIMEOUT)
        child = self._children.pop(name, None)
        if child is not None:
            child.poll()
        self._pid_file(name).unlink(missing_ok=True)

    def _stop_strays(self, h: LabHost, say: Progress) -> None:
        """End libvirtds in the host's namespace that no pid file names (left by a lab whose
        files were deleted): they hold the TCP port the new one needs."""
        for pid in net.netns_pids(h.netns):
            st = _pid_state(pid)
            if st is not None and st[0] == "libvirtd" and st[1] not in ("Z", "X"):
                say(f"{h.name}: ending a stray libvirtd (pid {pid})")
                _terminate(pid, self.STOP_TIMEOUT)

    def _start_daemon(self, h: LabHost, libvirtd: str) -> None:
        hdir = host_dir(self.root, h.name)
        log_file = self._log_file(h.name)
        with open(log_file, "a") as f:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"---- elastic lab: starting libvirtd at {stamp}\n")
        # a stale socket would make a probe look for a daemon that is not there yet
        socket_path(self.root, h.name).unlink(missing_ok=True)
        # libvirtd (and so its QEMUs: qemu.conf makes no cgroups) in the host's own cgroup
        cgroup = self.cgroup_dir(h.name)
        if cgroup is not None:
            try:
                cgroup.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                with open(log_file, "a") as f:
                    f.write(f"elastic lab: warning: cannot make cgroup {cgroup} ({e}): the "
                            f"CPU load of {h.name} will not be seen\n")
                cgroup = None
        proc = spawn(in_cgroup(wrap(["unshare", "--mount", "--uts", "--propagation", "private",
                                     "sh", str(hdir / "start.sh")], h.netns), cgroup,
                               required=False), log_file=log_file)
        self._children[h.name] = proc
        self._pid_file(h.name).write_text(f"{proc.pid}\n")

    # -- building blocks of up
    def _make_network(self, hosts: Sequence[LabHost], say: Progress) -> None:
        tag = owner_tag(self.root)
        if not net.netns_exists(LAN_NETNS):
            say(f"creating the LAN switch {LAN_NETNS} ({LAN_CIDR})")
        net.create_netns(LAN_NETNS)
        net.add_bridge(LAN_BRIDGE, ns=LAN_NETNS)
        net.set_alias(LAN_BRIDGE, tag, ns=LAN_NETNS)
        prefix = ipaddress.ip_network(LAN_CIDR).prefixlen
        if not net.netns_exists(FRONT_NETNS):
            say(f"creating the front end {FRONT_NETNS} ({FRONT_ADDRESS}/{prefix})")
        net.create_netns(FRONT_NETNS)
        net.add_veth(FRONT_PORT, LAN_NETNS, FRONT_IF, FRONT_NETNS, master=LAN_BRIDGE)
        net.set_alias(FRONT_IF, tag, ns=FRONT_NETNS)
        net.set_address(FRONT_IF, f"{FRONT_ADDRESS}/{prefix}", ns=FRONT_NETNS)
        net.link_up("lo", ns=FRONT_NETNS)
        for h in hosts:
            i = host_index(h.name)
            if not net.netns_exists(h.netns):
                say(f"{h.name}: creating namespace {h.netns}, {HOST_BRIDGE} {h.address}/24")
            net.create_netns(h.netns)
            net.add_bridge(HOST_BRIDGE, ns=h.netns)
            net.set_alias(HOST_BRIDGE, tag, ns=h.netns)
            net.add_veth(lan_port(i), LAN_NETNS, HOST_PORT, h.netns,
                         master=LAN_BRIDGE, peer_master=HOST_BRIDGE)
            net.set_address(HOST_BRIDGE, f"{h.address}/{prefix}", ns=h.netns)

    def _write_files(self, h: LabHost, all_hosts: Sequence[LabHost], libvirtd: str) -> bool:
        """The host's private directories and files. True if a daemon config changed."""
        hdir = host_dir(self.root, h.name)
        for d in BIND_DIRS:
            (hdir / d).mkdir(parents=True, exist_ok=True)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        for d in ("var/lib/libvirt/images", "run/lock", "etc/libvirt/qemu/networks/autostart",
                  "etc/libvirt/storage"):
            (hdir / d).mkdir(parents=True, exist_ok=True)
        etc = hdir / "etc/libvirt"
        src = Path("/etc/libvirt")
        if not (etc / ".copied").exists():
            # the distribution's config files and nwfilter rules; not its domains, networks,
            # storage pools or hooks (those belong to the machine's own libvirtd)
            for f in src.iterdir():
                if f.is_file() and f.suffix == ".conf":
                    shutil.copy2(f, etc / f.name)
            if (src / "nwfilter").is_dir():
                shutil.copytree(src / "nwfilter", etc / "nwfilter", dirs_exist_ok=True)
            (etc / ".copied").touch()
        changed = False
        for path, text in (
            (etc / "libvirtd.conf", render_libvirtd_conf(h.name, h.address, host_uuid(h.name))),
            (etc / "qemu.conf", render_qemu_conf(h.name, h.address)),
            (hdir / "start.sh", render_start_script(hdir, h.name, libvirtd, self._cache_dir)),
        ):
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed = True
        hosts_text = render_hosts_file([(x.name, x.address) for x in all_hosts])
        hosts_path = hdir / "hosts"
        if not hosts_path.exists() or hosts_path.read_text() != hosts_text:
            # rewritten in place: a running daemon has this very inode bind-mounted
            with open(hosts_path, "w") as f:
                f.write(hosts_text)
        return changed

    def _wait_answering(self, hosts: Sequence[LabHost], say: Progress,
                        started: float) -> None:
        pending = {h.name: h for h in hosts}
        deadline = time.monotonic() + self.START_TIMEOUT
        last_error: dict[str, str] = {}
        while pending:
            for name, h in list(pending.items()):
                child = self._children.get(name)
                if child is None or child.poll() is not None:  # (it may still be `ip`/`sh`)
                    self._children.pop(name, None)
                    raise PermanentError(
                        f"libvirtd of lab host {name} exited at start; the end of "
                        f"{self._log_file(name)}:\n{_tail(self._log_file(name))}")
                why = probe(h.uri, self.PROBE_TIMEOUT)
                if why is None:
                    say(f"{name}: libvirtd answers ({time.monotonic() - started:.1f} s)")
                    del pending[name]
                else:
                    last_error[name] = why
            if not pending:
                break
            if time.monotonic() > deadline:
                name = sorted(pending)[0]
                raise TransientError(
                    f"libvirtd of lab host {name} did not answer in {self.START_TIMEOUT:g} s "
                    f"({last_error.get(name)}); the end of {self._log_file(name)}:\n"
                    f"{_tail(self._log_file(name))}")
            time.sleep(0.1)

    def _warm_up(self, hosts: Sequence[LabHost], say: Progress) -> None:
        """Have fresh daemons probe QEMU now (getCapabilities), not at the first domain: the
        first one fills the shared cache (~8 s under TCG), the others then read it."""
        if not hosts:
            return
        libvirt = _libvirt()

        def caps(h: LabHost) -> None:
            conn = libvirt.open(h.uri)
            try:
                conn.getCapabilities()
            finally:
                conn.close()

        cached = any(self._cache_dir.glob("qemu/capabilities/*.xml"))
        t = time.monotonic()
        first, rest = (None, list(hosts)) if cached else (hosts[0], list(hosts[1:]))
        try:
            if first is not None:
                say(f"{first.name}: probing QEMU (once per lab, about 8 s under TCG)")
                _in_thread(lambda: caps(first), self.START_TIMEOUT)
            threads = [threading.Thread(target=caps, args=(h,), daemon=True) for h in rest]
            for th in threads:
                th.start()
            for th in threads:
                th.join(self.START_TIMEOUT)
        except (TransientError, libvirt.libvirtError) as e:
            # not fatal: the first domain start will probe again
            say(f"probing QEMU failed ({e}); the first domain start will retry it")
            return
        say(f"QEMU capabilities known on {', '.join(h.name for h in hosts)} "
            f"({time.monotonic() - t:.1f} s)")

    def _preflight(self) -> str:
        if os.geteuid() != 0:
            raise PermanentError("the lab needs root (network namespaces, mounts, libvirtd)")
        missing = [b for b in ("ip", "unshare", "mount", "hostname", "sh") if _which(b) is None]
        libvirtd = _which("libvirtd")
        if libvirtd is None:
            missing.append("libvirtd")
        if missing:
            raise CommandMissing(
                f"the lab needs {', '.join(missing)}: install the Debian packages "
                "libvirt-daemon-system, qemu-system-x86, iproute2 and util-linux "
                "(scripts/setup.sh does)")
        for d in (*BIND_DIRS, SHARED_CACHE):
            if not Path("/", d).is_dir():
                raise PermanentError(f"/{d} does not exist: is libvirt-daemon-system installed?")
        net._pyroute2()
        _libvirt()
        return libvirtd

    # -- public
    def up(self, hosts: int | None = None, *, memory_mib: int | None = None,
           progress: Progress | None = None, cloud: bool | None = None) -> LabInfo:
        """Make the lab (or finish a half-made one): ``hosts`` hosts (default: as before, or
        2), each with ``memory_mib`` of capacity (default: as before, or a share of the
        machine). Healthy hosts are kept, missing ones made, dead libvirtds restarted, hosts
        beyond ``hosts`` removed (refused while they have domains)."""
        say = progress or (lambda _m: None)
        t0 = time.monotonic()
        libvirtd = self._preflight()
        settings = self._settings()
        if hosts is None:
            hosts = settings[0] if settings else 2
        check_hosts(hosts)
        if memory_mib is None and settings:
            memory_mib = settings[1]
        if cloud is None:   # as before
            cloud = bool(self._load().get("cloud"))
        if memory_mib is not None and (isinstance(memory_mib, bool) or memory_mib < 128):
            raise ConfigError(f"a lab host needs at least 128 MiB, not {memory_mib!r}",
                              key="memory")
        planned = self._plan(hosts, memory_mib)
        extra = sorted(i for i in self._existing_host_indexes() if i > hosts)
        for ns in (LAN_NETNS, FRONT_NETNS, INET_NETNS, *(h.netns for h in planned),
                   *map(host_netns, extra)):
            self._check_ours(ns)  # before making anything
        with self._locked():
            for i in extra:
                doms = self._domains_of(host_name(i))
                if doms:
                    raise PermanentError(
                        f"lab host {host_name(i)} still has domains ({', '.join(doms)}): "
                        f"remove them before shrinking the lab to {hosts} hosts")
            self._save({"version": 1, "hosts": hosts, "memory_mib": memory_mib,
                        "cloud": cloud})
            for i in extra:
                self._remove_host(i, say)

            self._make_network(planned, say)

            to_start = []
            for h in planned:
                changed = self._write_files(h, planned, libvirtd)
                pid = self._daemon_pid(h.name)
                if pid is not None and changed:
                    say(f"{h.name}: configuration changed, restarting libvirtd")
                    self._stop_daemon(h.name)
                elif pid is not None and (why := probe(h.uri, self.PROBE_TIMEOUT)) is not None:
                    say(f"{h.name}: libvirtd (pid {pid}) does not answer ({why}), restarting")
                    self._stop_daemon(h.name)
                elif pid is not None and not self._in_own_cgroup(h.name, pid):
                    say(f"{h.name}: libvirtd (pid {pid}) is not in its cgroup "
                        f"{host_cgroup(h.name)} (a lab made before cgroups), restarting")
                    self._stop_daemon(h.name)
                elif pid is not None:
                    continue
                to_start.append(h)
            started = time.monotonic()
            for h in to_start:
                say(f"{h.name}: starting libvirtd")
                self._stop_daemon(h.name)  # forget a dead one's pid file
                self._stop_strays(h, say)
                self._start_daemon(h, libvirtd)
            self._wait_answering(to_start, say, started)
            self._warm_up(to_start, say)
            self._write_hosts_yaml(planned)
            if cloud:
                self._make_cloud(say)
            else:
                self._remove_cloud(say)
        info = self.status()
        dead = [h.name for h in info.hosts if not h.alive]
        if dead:
            raise TransientError(f"lab hosts {', '.join(dead)} stopped answering right after start")
        n = len(info.hosts)
        say(f"lab up: {n} host{'s' if n != 1 else ''} in {time.monotonic() - t0:.1f} s; "
            f"hosts file {self.hosts_file}")
        return info

    def status(self) -> LabInfo:
        """What exists, and whether each libvirtd answers (probed in parallel)."""
        settings = self._settings()
        if settings is None:
            return LabInfo((), LAN_NETNS, LAN_CIDR, self.hosts_file)
        n, mem = settings
        planned = self._plan(n, mem)
        alive: dict[str, bool] = {}

        def check(h: LabHost) -> None:
            alive[h.name] = (net.netns_exists(h.netns) and self._daemon_pid(h.name) is not None
                             and probe(h.uri, self.PROBE_TIMEOUT) is None)

        threads = [threading.Thread(target=check, args=(h,), daemon=True) for h in planned]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.PROBE_TIMEOUT + 5)
        hosts = tuple(replace(h, alive=alive.get(h.name, False)) for h in planned)
        return LabInfo(hosts, LAN_NETNS, LAN_CIDR, self.hosts_file,
                       cloud_endpoint=self._cloud_endpoint())

    def hosts_yaml(self) -> str:
        """The `hosts:` section for this lab, also written to ``root/hosts.yaml``."""
        settings = self._settings()
        if settings is None:
            raise PermanentError(f"there is no lab at {self.root}: run `elastic lab up` first")
        return self._write_hosts_yaml(self._plan(*settings))

    def _write_hosts_yaml(self, hosts: Sequence[LabHost]) -> str:
        cgroups = all(self.cgroup_dir(h.name) is not None for h in hosts)
        text = render_hosts_yaml(hosts, self.hosts_file, cpu_cgroups=cgroups)
        if not self.hosts_file.exists() or self.hosts_file.read_text() != text:
            tmp = self.hosts_file.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.hosts_file)
        return text

    def down(self, progress: Progress | None = None) -> None:
        """Remove the whole lab: domains first, then libvirtds, every process left in the lab's
        namespaces, the namespaces (with their bridges and veths), and ``root``. Each step is
        checked afterwards. Namespaces that another lab (another root) owns are left alone."""
        say = progress or (lambda _m: None)
        t0 = time.monotonic()
        if os.geteuid() != 0:
            raise PermanentError("the lab needs root (network namespaces, mounts, libvirtd)")
        ours = [ns for ns in net.list_netns() if self._ownership(ns) in ("ours", "nobody")]
        if not self.root.exists() and not ours:
            say("no lab to remove")
            return
        with self._locked():
            indexes = []
            for i in sorted(self._existing_host_indexes()):
                if self._ownership(host_netns(i)) == "other":
                    say(f"leaving {host_netns(i)} alone: it belongs to another lab")
                else:
                    indexes.append(i)
            self._destroy_domains([host_name(i) for i in indexes], say)
            for i in indexes:
                self._remove_host(i, say)
            self._remove_cloud(say)
            for ns, what in ((FRONT_NETNS, "the front end"), (LAN_NETNS, "the LAN switch")):
                self._remove_shared(ns, what, say)
            left = [ns for ns in (LAN_NETNS, FRONT_NETNS, INET_NETNS, *map(host_netns, indexes))
                    if self._ownership(ns) in ("ours", "nobody")]
            if left:
                raise TransientError(f"namespaces {left} are still there")
            users = _mount_users(self.root)
            if users:
                raise TransientError(f"processes {users} still have mounts of {self.root}")
            shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            raise PermanentError(f"could not remove {self.root}")
        say(f"lab down in {time.monotonic() - t0:.1f} s")

    # -- the local cloud (--cloud)
    @property
    def cloud_dir(self) -> Path:
        return self.root / "cloud"

    def _cloud_endpoint(self) -> str | None:
        from elastic.adapters import cloudlab
        info = cloudlab.daemon_info(self.cloud_dir)
        return info["endpoint"] if info else None

    def _make_cloud(self, say: Progress) -> None:
        from elastic.adapters import cloudlab
        tag = owner_tag(self.root)
        prefix = ipaddress.ip_network(INET_CIDR).prefixlen
        if not net.netns_exists(INET_NETNS):
            say(f"creating the internet {INET_NETNS} ({INET_CIDR}); the front end is "
                f"{FRONT_INET_ADDRESS} there")
        net.create_netns(INET_NETNS)
        net.add_bridge(INET_BRIDGE, ns=INET_NETNS)
        net.set_alias(INET_BRIDGE, tag, ns=INET_NETNS)
        net.add_veth(FRONT_INET_PORT, INET_NETNS, FRONT_INET_IF, FRONT_NETNS,
                     master=INET_BRIDGE)
        net.set_address(FRONT_INET_IF, f"{FRONT_INET_ADDRESS}/{prefix}", ns=FRONT_NETNS)
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=FRONT_NETNS, timeout=10)
        info = cloudlab.start_daemon(self.cloud_dir, bridge_netns=INET_NETNS,
                                     bridge=INET_BRIDGE, cidr=INET_CIDR,
                                     gateway=FRONT_INET_ADDRESS)
        say(f"local EC2 at {info['endpoint']} (moto on loopback, instances are namespaces "
            f"on {INET_NETNS}); knobs: {self.cloud_dir / 'knobs.json'}")

    def _remove_cloud(self, say: Progress) -> None:
        from elastic.adapters import cloudlab
        if cloudlab.daemon_info(self.cloud_dir) is not None or self.cloud_dir.exists():
            say("stopping the local EC2 and its instances")
            cloudlab.stop_daemon(self.cloud_dir)
        self._remove_shared(INET_NETNS, "the internet", say)
        if net.link_exists(FRONT_INET_IF, ns=FRONT_NETNS):
            net.delete_link(FRONT_INET_IF, ns=FRONT_NETNS)

    def _remove_shared(self, ns: str, what: str, say: Progress) -> None:
        """Remove one of the lab's own namespaces (not a host's), if it is this lab's."""
        owner = self._ownership(ns)
        if owner == "other":
            say(f"leaving {ns} alone: it belongs to another lab")
        elif owner is not None:
            say(f"removing {what} {ns}")
            net.kill_netns_pids(ns)
            net.delete_netns(ns)

    # -- building blocks of down
    def _ownership(self, ns: str) -> str | None:
        """None (no such namespace or not a lab name), 'ours', 'nobody' (half made: no tagged
        bridge yet) or 'other' (another lab's)."""
        if ns not in (LAN_NETNS, FRONT_NETNS, INET_NETNS) and not _HOST_NETNS_RE.match(ns):
            return None
        if not net.netns_exists(ns):
            return None
        owner = self._owner(ns)
        if not owner:
            return "nobody"
        return "ours" if owner == owner_tag(self.root) else "other"

    def _domains_of(self, name: str) -> list[str]:
        """Names of the domains (running or defined) on host ``name``; [] if it does not answer."""
        if self._daemon_pid(name) is None:
            return []
        libvirt = _libvirt()
        uri = local_uri(self.root, name)

        def ask() -> list[str]:
            conn = libvirt.open(uri)
            try:
                return sorted(d.name() for d in conn.listAllDomains(0))
            finally:
                conn.close()

        try:
            return list(_in_thread(ask, self.PROBE_TIMEOUT))
        except (TransientError, libvirt.libvirtError):
            return []

    def _destroy_domains(self, names: Sequence[str], say: Progress) -> None:
        """Destroy and undefine every domain on the given hosts, in parallel. Best effort:
        whatever survives is killed with the namespace's processes."""
        libvirt = _libvirt()
        jobs: list[tuple[str, str]] = [(n, d) for n in names for d in self._domains_of(n)]
        if not jobs:
            return
        say(f"destroying {len(jobs)} domains: " + ", ".join(f"{d} ({n})" for n, d in jobs))
        flags = 0
        for f in ("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                  "VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA"):
            flags |= getattr(libvirt, f, 0)

        def one(host: str, dom_name: str) -> None:
            conn = libvirt.open(local_uri(self.root, host))
            try:
                dom = conn.lookupByName(dom_name)
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    try:
                        dom.undefineFlags(flags)
                    except libvirt.libvirtError:
                        dom.undefine()
            except libvirt.libvirtError:
                pass  # gone meanwhile, or it dies with the namespace
            finally:
                conn.close()

        threads = [threading.Thread(target=one, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.DESTROY_TIMEOUT
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        left = [(n, d) for n in names for d in self._domains_of(n)]
        if left:
            say(f"{len(left)} domains did not go away through libvirt; killing their processes")

    def _remove_host(self, i: int, say: Progress) -> None:
        """Stop host i's libvirtd, end what else runs in its namespace, remove the namespace
        (its end of the LAN veth pair goes with it) and its files."""
        name, ns = host_name(i), host_netns(i)
        say(f"{name}: stopping libvirtd and removing {ns}")
        self._stop_daemon(name)
        if net.netns_exists(ns):
            killed = net.kill_netns_pids(ns)
            if killed:
                say(f"{name}: ended processes {killed} left in {ns}")
            net.delete_link(lan_port(i), ns=LAN_NETNS)
            net.delete_netns(ns)
        self._remove_cgroup(name, say)
        shutil.rmtree(host_dir(self.root, name), ignore_errors=True)


def _fs_relative(path: Path) -> tuple[str, str]:
    """(major:minor, path within its filesystem) of ``path``, as /proc/*/mountinfo shows."""
    dev = os.stat(path).st_dev
    top = path
    while top.parent != top and os.stat(top.parent).st_dev == dev:
        top = top.parent
    rel = "/" + str(path.relative_to(top)) if path != top else "/"
    return f"{os.major(dev)}:{os.minor(dev)}", rel


def _mount_users(root: Path) -> list[int]:
    """Pids of processes, in any mount namespace, with a mount of something under ``root``
    (a bind mount shows its source as major:minor plus the path within that filesystem)."""
    if not root.exists():
        return []
    dev, rel = _fs_relative(root)
    prefix = rel.rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/mountinfo") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            # mount id, parent id, major:minor, root within the filesystem, mount point, ...
            fields = line.split()
            if len(fields) < 5:
                continue
            source_inside = fields[2] == dev and (fields[3] == rel or fields[3].startswith(prefix))
            point_inside = fields[4] == str(root) or fields[4].startswith(str(root) + "/")
            if source_inside or point_inside:
                pids.append(int(entry))
                break
    return pids
