"""The resolved model: what a spec means once every class, variable, count and address
is worked out. Frozen; built by ``elastic.spec``; read by everything else.

Sizes are MiB (int). Addresses are dotted-quad strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the section schemas are pydantic models; only their types are named here
    from elastic.spec.schema import (CloudSpec, FrontendSpec, PlacementBlock, RebalanceBlock,
                                     ScalingSpec)


@dataclass(frozen=True)
class Where:
    """Where something was written: the user's file and line."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Route:
    to: str
    via: str


@dataclass(frozen=True)
class Interface:
    name: str                  # eth0
    network: str               # network name
    mac: str
    address: str | None        # None: the network hands it out by DHCP
    prefixlen: int | None
    gateway: str | None
    routes: tuple[Route, ...] = ()
    model: str = "virtio"

    @property
    def netmask(self) -> str | None:
        if self.prefixlen is None:
            return None
        bits = (0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF
        return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))


@dataclass(frozen=True)
class User:
    name: str
    password: str | None = None       # a crypt(3) hash, never plain text
    ssh_keys: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    shell: str = "/bin/sh"
    uid: int | None = None
    sudo: bool = False


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None = None


@dataclass(frozen=True)
class File:
    path: str                  # where in the node
    content: str | None = None
    source: str | None = None  # a file next to the spec, copied in
    mode: str = "0644"
    owner: str = "root"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    type: str = "nfs"
    options: str = "defaults"


@dataclass(frozen=True)
class NodeSpec:
    name: str                  # worker3
    project: str
    classes: tuple[str, ...]   # class chain, nearest first: (worker, common)
    image: str
    memory: int
    vcpus: int
    disk: int | None
    free_space: int | None
    interfaces: tuple[Interface, ...]
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()
    startup: tuple[str, ...] = ()
    files: tuple[File, ...] = ()
    mounts: tuple[Mount, ...] = ()
    host: str | None = None    # fixed placement (MLN service_host)
    hypervisor: str | None = None  # required domain type (kvm, qemu, xen), if any
    storage: str = "qcow2"     # qcow2 overlay (or lvm on hosts that have it)
    console: str | None = None
    priority: int = 0          # higher moves last when rebalancing
    requirements: str | None = None      # an expression a host must satisfy
    affinity: tuple[str, ...] = ()       # nodes/groups/classes it shares a host with
    anti_affinity: tuple[str, ...] = ()  # ... and never shares one with
    plugins: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    group: str = ""            # the nodes: entry it came from (worker for worker1..N)
    index: int | None = None   # its number within a count group
    chunk: str = ""
    where: Where | None = field(default=None, compare=False)

    @property
    def fullname(self) -> str:
        return f"{self.name}.{self.project}"

    def interface(self, name: str) -> Interface:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        raise KeyError(name)


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    kind: str                  # private | bridged
    cidr: str | None           # 10.0.0.0/24; None: a bridged DHCP network of unknown subnet
    gateway: str | None
    mac_prefix: str
    range_first: str | None    # first leasable address
    range_last: str | None
    bridge: str | None = None  # for bridged: the host's uplink bridge
    nameservers: tuple[str, ...] = ()
    dhcp: bool = False         # addresses come from an outside DHCP server
    where: Where | None = field(default=None, compare=False)

    @property
    def prefixlen(self) -> int | None:
        return None if self.cidr is None else int(self.cidr.split("/")[1])


@dataclass(frozen=True)
class HostSpec:
    name: str
    uri: str
    domain_type: str = "kvm"   # kvm | qemu | xen
    memory: int | None = None  # MiB; None: ask the host
    vcpus: int | None = None
    reserved_memory: int = 0   # kept for the host itself
    reserved_vcpus: int = 0
    groups: tuple[str, ...] = ()
    uplink: str | None = None  # bridge for bridged networks
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    where: Where | None = field(default=None, compare=False)
    cpu_cgroup: str | None = None  # the host's load is this cgroup's CPU time (lab hosts)
    vcpu_ratio: float = 4.0        # vcpus for guests per CPU (overcommit)

    @property
    def usable_memory(self) -> int | None:
        return None if self.memory is None else self.memory - self.reserved_memory

    @property
    def usable_vcpus(self) -> int | None:
        return None if self.vcpus is None else self.vcpus - self.reserved_vcpus


@dataclass(frozen=True)
class Chunk:
    """Nodes joined through private networks, and those networks: placed on one host."""

    name: str
    nodes: tuple[str, ...]     # node names
    networks: tuple[str, ...]  # private network names
    memory: int
    vcpus: int
    host: str | None           # fixed by a node's host:, if any


@dataclass(frozen=True)
class Project:
    name: str
    source: str                # the spec file
    nodes: tuple[NodeSpec, ...]
    networks: tuple[NetworkSpec, ...]
    hosts: tuple[HostSpec, ...]
    chunks: tuple[Chunk, ...]
    classes: tuple[str, ...]
    clouds: dict[str, CloudSpec] = field(default_factory=dict, hash=False, compare=False)
    scaling: ScalingSpec | None = field(default=None, hash=False, compare=False)
    frontends: dict[str, FrontendSpec] = field(default_factory=dict, hash=False, compare=False)
    placement: PlacementBlock | None = field(default=None, hash=False, compare=False)
    rebalance: RebalanceBlock | None = field(default=None, hash=False, compare=False)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def network(self, name: str) -> NetworkSpec:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(name)

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


# ------------------------------------------------------------------------ the batch queue

@dataclass(frozen=True)
class Job:
    """One job of the batch queue as the scheduler reports it (an array job is one Job with
    ``tasks`` pending tasks)."""

    id: str                    # "42" (array: the job id; tasks counts the pending ones)
    name: str
    owner: str
    state: str                 # the scheduler's own letters: qw, hqw, Eqw, r, t, dr, ...
    slots: int = 1             # per task
    tasks: int = 1             # pending tasks (array jobs); 1 otherwise
    pe: str | None = None      # parallel environment
    queue: str | None = None   # hard queue request
    resources: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    submitted: float | None = None   # epoch seconds
    priority: float = 0.0
    host: str | None = None    # where it runs (running jobs)

    @property
    def pending_slots(self) -> int:
        return self.slots * self.tasks


@dataclass(frozen=True)
class ExecHost:
    """An execution host of the batch system."""

    name: str
    slots_total: int
    slots_used: int
    load: float | None = None
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    enabled: bool = True       # False when disabled (qmod -d) or in an error state
    alarm: bool = False        # unknown / unreachable (au)


@dataclass(frozen=True)
class QueueSnapshot:
    """What the batch system said at one moment. ``known`` is False when the master did not
    answer: that is 'unknown', never 'empty queue' (no scale-down on a blind tick)."""

    taken_at: float
    known: bool
    pending: tuple[Job, ...] = ()      # waiting and schedulable
    running: tuple[Job, ...] = ()
    held: int = 0                      # hqw and similar: not demand
    errored: int = 0                   # Eqw: not demand
    hosts: tuple[ExecHost, ...] = ()
    error: str | None = None           # why it is unknown

    @property
    def pending_slots(self) -> int:
        return sum(j.pending_slots for j in self.pending)


@dataclass(frozen=True)
class CloudInstance:
    """One cloud instance as its provider reported it. ``state`` is the provider's word
    (EC2: pending, running, stopping, stopped, shutting-down, terminated); ``node`` is the
    node name elastic tagged it with (None: not tagged); ``launched_at`` is epoch seconds;
    ``tags`` are all its tags."""

    id: str
    node: str | None
    state: str
    instance_type: str
    zone: str | None = None
    private_ip: str | None = None
    public_ip: str | None = None
    launched_at: float = 0.0
    spot: bool = False
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def live(self) -> bool:
        """Booting or running: neither stopped nor on its way out."""
        return self.state in ("pending", "running")
