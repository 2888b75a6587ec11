"""The shape of each block of a spec (pydantic). Every block forbids unknown keys.

Classes and nodes are *partial* settings: any key may be missing and is inherited. The
resolver merges them and checks what must be present in the end.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator,
)

from elastic.addressing import DEFAULT_MAC_PREFIX, valid_mac, valid_mac_prefix
from elastic.spec import units


def _wrap(fn: Any) -> Any:
    return BeforeValidator(fn)


def _mac_prefix(v: str) -> str:
    if not valid_mac_prefix(v):
        raise ValueError(f"'{v}' is not a MAC prefix (two hex octets, unicast, e.g. 02:00)")
    return v.lower()


def _mac(v: str) -> str:
    if not valid_mac(v):
        raise ValueError(f"'{v}' is not a unicast MAC address (e.g. 02:00:0a:00:00:05)")
    return v.lower()


def _str_list(v: Any) -> Any:
    """Accept a single string where a list of strings is expected."""
    return [v] if isinstance(v, str) else v


def _address(v: Any) -> Any:
    if isinstance(v, str) and v.strip().lower() in ("auto", "dhcp"):
        return v.strip().lower()
    return units.parse_ipv4(v)


def _start(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 0:
            raise ValueError("an offset cannot be negative")
        return v
    return units.parse_ipv4(v)


def _name(v: str) -> str:
    import re
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$", v):
        raise ValueError(f"'{v}' is not a valid name (letters, digits, '-' and '_', at most 63)")
    return v


Size = Annotated[int, _wrap(units.parse_size)]
Duration = Annotated[float, _wrap(units.parse_duration)]
IPv4 = Annotated[str, _wrap(units.parse_ipv4)]
CIDR = Annotated[str, _wrap(units.parse_cidr)]
Netmask = Annotated[int, _wrap(units.parse_netmask)]
StrList = Annotated[list[str], _wrap(_str_list)]
Name = Annotated[str, AfterValidator(_name)]
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ------------------------------------------------------------------------------ networks

class RangeBlock(Block):
    start: IPv4
    end: IPv4


def _range(v: Any) -> Any:
    """'10.0.0.10-10.0.0.200' -> {start, end}."""
    if isinstance(v, str):
        parts = v.split("-")
        if len(parts) != 2:
            raise ValueError(f"bad range '{v}' (write it as 10.0.0.10-10.0.0.200)")
        return {"start": parts[0].strip(), "end": parts[1].strip()}
    return v


class NetworkBlock(Block):
    cidr: CIDR | None = None      # may be left out only for a bridged network with dhcp: true
    kind: Literal["private", "bridged"] = "private"
    gateway: IPv4 | None = None
    mac_prefix: Annotated[str, AfterValidator(_mac_prefix)] = DEFAULT_MAC_PREFIX
    range: Annotated[RangeBlock | None, _wrap(_range)] = None
    bridge: str | None = None
    nameservers: Annotated[list[IPv4], _wrap(_str_list)] = []
    dhcp: bool = False
    description: str | None = None


# --------------------------------------------------------------------------------- hosts

class ReservedBlock(Block):
    memory: Size = 0
    vcpus: NonNegInt = 0


class HostBlock(Block):
    uri: str = "qemu:///system"
    type: Literal["kvm", "qemu", "xen"] = "kvm"
    memory: Size | None = None
    vcpus: PosInt | None = None
    reserved: ReservedBlock = ReservedBlock()
    # vcpus it may give guests per CPU it has (after the reserved ones); OpenStack's default
    vcpu_ratio: Annotated[float, Field(gt=0, le=64)] = 4.0
    groups: StrList = []
    uplink: str | None = None
    attributes: dict[str, Any] = {}
    # a cgroup whose CPU time is this host's load, for hosts that share one kernel (the lab's);
    # None: the host's own CPU counters, through libvirt
    cpu_cgroup: str | None = None
    description: str | None = None


# ------------------------------------------------------------------------ node settings

class RouteBlock(Block):
    to: CIDR
    via: IPv4


class InterfaceBlock(Block):
    network: str | None = None
    address: Annotated[str | None, _wrap(_address)] = None
    netmask: Netmask | None = None
    gateway: IPv4 | None = None
    mac: Annotated[str | None, AfterValidator(lambda v: v if v is None else _mac(v))] = None
    address_start: Annotated[int | str | None, _wrap(_start)] = None
    routes: list[RouteBlock] = []
    model: str | None = None


class UserBlock(Block):
    password: str | None = None
    ssh_keys: StrList = []
    groups: StrList = []
    shell: str | None = None
    uid: NonNegInt | None = None
    sudo: bool | None = None

    @model_validator(mode="after")
    def _hashed(self) -> UserBlock:
        p = self.password
        if p is not None and p not in ("!", "*") and not p.startswith("$"):
            raise ValueError("password must be a crypt(3) hash such as $6$... "
                             "(make one with: mkpasswd -m sha-512), never plain text")
        return self


class GroupBlock(Block):
    gid: NonNegInt | None = None


class FileBlock(Block):
    content: str | None = None
    source: str | None = None
    mode: str = "0644"
    owner: str = "root"

    @model_validator(mode="after")
    def _one(self) -> FileBlock:
        if (self.content is None) == (self.source is None):
            raise ValueError("a file needs exactly one of content: or source:")
        if not self.mode.isdigit() or any(c not in "01234567" for c in self.mode):
            raise ValueError(f"mode '{self.mode}' is not octal (e.g. '0644')")
        return self


class MountBlock(Block):
    source: str
    target: str
    type: str = "nfs"
    options: str = "defaults"


class SettingsBlock(Block):
    """What a class or a node may set. Everything optional: it may be inherited."""

    image: str | None = None
    memory: Size | None = None
    vcpus: PosInt | None = None
    disk: Size | None = None
    free_space: Size | None = None
    interfaces: dict[str, InterfaceBlock] = {}
    nameservers: Annotated[list[IPv4], _wrap(_str_list)] = []
    search: StrList = []
    users: dict[str, UserBlock | None] = {}
    groups: dict[str, GroupBlock | None] = {}
    startup: StrList = []
    files: dict[str, FileBlock] = {}
    mounts: list[MountBlock] = []
    host: str | None = None
    hypervisor: Literal["kvm", "qemu", "xen"] | None = None
    storage: Literal["qcow2", "lvm", "raw"] | None = None
    console: str | None = None
    priority: int | None = None
    # placement: an expression over host attributes that a host must satisfy
    # (memory_free > 2048 & group == "fast"), and nodes or classes to share / never share
    # a host with
    requirements: str | None = None
    affinity: StrList = []
    anti_affinity: StrList = []
    plugins: dict[str, Any] = {}
    description: str | None = None


class ClassBlock(SettingsBlock):
    inherit: str | None = None


class NodeBlock(SettingsBlock):
    class_: str | None = Field(default=None, alias="class")
    count: Annotated[int, Field(ge=0, le=100_000)] | None = None
    names: str | None = None
    index_start: NonNegInt = 1
    hosts: dict[str, NonNegInt] | list[str] | None = None


# GROUP-level keys that are not settings and are not inherited.
NODE_ONLY_KEYS = frozenset({"class", "count", "names", "index_start", "hosts"})
CLASS_ONLY_KEYS = frozenset({"inherit"})


# ------------------------------------------------------------------------------- clouds

class VpnBlock(Block):
    type: Literal["wireguard", "openvpn"] = "wireguard"
    port: Annotated[int, Field(ge=1, le=65535)] = 51820
    overlay: CIDR = "10.250.0.0/24"
    hub: str = "controller"      # a node name, or 'controller' (the machine running elastic)
    mtu: Annotated[int, Field(ge=576, le=9000)] = 1420
    # where the cloud nodes reach the hub (HOST or HOST:PORT; the port defaults to `port`):
    # the controller's public address. `--lab`: the lab front end's leg on its internet.
    endpoint: str | None = None
    # the network namespace the hub interface lives in (hub: controller); default: that of
    # scaling.batch.netns (the controller's side of the world), `--lab`: the front end.
    netns: str | None = None
    # networks the cloud nodes reach through the tunnel; default: the network the batch
    # master is reached on (its bridged network)
    routes: Annotated[list[CIDR], _wrap(_str_list)] = []


class CloudSpec(Block):
    provider: Literal["ec2"] = "ec2"
    region: str
    endpoint_url: str | None = None
    image: str
    instance_types: Annotated[list[str], _wrap(_str_list), Field(min_length=1)]
    zones: StrList = []
    subnet: str | None = None
    security_group: str | None = None
    key_pair: str | None = None
    spot: bool = False
    max_nodes: NonNegInt = 10
    max_hourly_cost: Annotated[float, Field(ge=0)] | None = None
    prices: dict[str, Annotated[float, Field(ge=0)]] = {}
    vpn: VpnBlock = VpnBlock()
    tags: dict[str, str] = {}
    # where Grid Engine is installed on the cloud image (Debian's gridengine-exec package)
    sge_root: str = "/var/lib/gridengine"
    # an unknown instance tagged with this cluster is terminated after this long (its launch
    # may still be being recorded)
    orphan_grace: Duration = 120.0

    @model_validator(mode="after")
    def _priced(self) -> CloudSpec:
        if self.max_hourly_cost is not None:
            missing = [t for t in self.instance_types if t not in self.prices]
            if missing:
                raise ValueError("max_hourly_cost needs a price for every instance type; "
                                 f"missing: {', '.join(missing)} (add them under prices:)")
        return self


# ------------------------------------------------------------------------------ scaling

class BatchBlock(Block):
    """How the controller reaches the batch master. ``via: ssh`` (the default, as StarCluster
    did): the commands run on the master node over SSH, as ``user`` with ``key`` (default:
    elastic's own key for the project, which `elastic up` puts into the master's root
    authorized_keys), at ``address`` (default: the master's address on a bridged network,
    else its first address), connecting from namespace ``netns`` if given (with --lab: the
    lab's front end). ``via: local``: the clients run here (in ``netns`` if given), for a
    controller on the head machine itself. ``root``/``cell``: SGE_ROOT/SGE_CELL where the
    commands run (default: that machine's own settings)."""

    system: Literal["sge", "slurm", "fake"] = "sge"
    master: str                   # node that runs the batch master
    via: Literal["ssh", "local"] = "ssh"
    address: str | None = None
    user: str = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    key: str | None = None
    netns: str | None = None
    cell: str | None = None
    root: str | None = None
    queue: str = "all.q"
    hostgroup: str = "@allhosts"
    timeout: Duration = 30.0


class PlacementBlock(Block):
    """How hosts are chosen for chunks: the hosts that pass the filters are ordered by
    ``rank`` (an expression over host attributes, higher first), then by ``policy``."""

    policy: Literal["packing", "striping", "load-aware"] = "packing"
    rank: str | None = None


class RebalanceBlock(Block):
    enabled: bool = False
    cpu_high: Annotated[float, Field(gt=0, le=1)] = 0.7
    cpu_low: Annotated[float, Field(ge=0, lt=1)] = 0.1
    memory_floor: Size = 0
    policy: Literal["least-migrations", "least-memory-copied", "most-important-last"] = \
        "least-migrations"
    max_migrations: PosInt = 2
    window: Duration = 60.0

    @model_validator(mode="after")
    def _order(self) -> RebalanceBlock:
        if self.cpu_low >= self.cpu_high:
            raise ValueError(f"cpu_low ({self.cpu_low}) must be below cpu_high ({self.cpu_high})")
        return self


class ScalingSpec(Block):
    group: str                    # the nodes: entry (with count) the autoscaler grows
    batch: BatchBlock
    min_workers: NonNegInt = 0
    max_workers: NonNegInt = 10
    max_launch_per_tick: PosInt = 5
    scale_up_after: Duration = 5.0
    idle_timeout: Duration = 60.0
    min_lifetime: Duration = 60.0
    cooldown: Duration = 20.0
    boot_timeout: Duration = 300.0
    backoff: Duration = 60.0
    breaker_failures: PosInt = 5
    tick: Duration = 5.0
    burst: StrList = []           # cloud names, tried in order when private hosts are full

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) is above max_workers "
                             f"({self.max_workers})")
        return self


# ---------------------------------------------------------------------------- frontends

class BalancerBlock(Block):
    """The tier's load balancer: nginx on the controller's machine (in namespace ``netns``
    if given; with --lab, the lab's front end), listening on ``listen``:``port``, passing
    requests to the front-ends' ``backend_port``. A front-end joins the upstream once it
    answers ``health_path`` with a 2xx; one leaving is taken out of the upstream first and
    destroyed once its connections are closed (at most ``drain_timeout``)."""

    kind: Literal["nginx"] = "nginx"
    node: str = "controller"      # where nginx runs: only 'controller' for now
    netns: str | None = None
    listen: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    backend_port: Annotated[int, Field(ge=1, le=65535)] = 80
    health_path: str = "/"
    health_timeout: Duration = 60.0
    drain_timeout: Duration = 30.0
    connect_timeout: Duration = 5.0   # nginx's wait for a busy front-end to accept

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError(f"'{v}' is not a URL path (it starts with / and has no spaces)")
        return v


class RuleBlock(Block):
    """An elasticity rule (OneFlow's): when ``metric op threshold`` holds in each of
    ``period_number`` consecutive periods of ``period``, the tier is resized by the
    ``adjustment``, then nothing changes for ``cooldown`` (default: the tier's)."""

    metric: Literal["rps", "p95_latency", "cpu"]
    op: Literal[">", "<", ">=", "<="] = ">"
    threshold: Annotated[float, Field(ge=0)]
    period: Duration = 10.0
    period_number: PosInt = 3
    adjustment: Literal["change", "cardinality", "percentage"] = "change"
    value: int
    min_step: PosInt = 1
    cooldown: Duration | None = None

    @model_validator(mode="after")
    def _sense(self) -> RuleBlock:
        if self.adjustment == "cardinality" and self.value < 0:
            raise ValueError(f"cardinality {self.value}: a size is 0 or more")
        if self.adjustment != "cardinality" and self.value == 0:
            raise ValueError(f"{self.adjustment} 0 changes nothing")
        if self.period <= 0:
            raise ValueError("period must be above 0 s")
        return self


class FrontendSpec(Block):
    """A web tier: the front-ends are the nodes of ``group`` (a nodes: entry with count:),
    ``initial`` of them made by `elastic up` (default: min), then sized by the rules."""

    group: str                    # the nodes: entry of the web servers
    balancer: BalancerBlock = BalancerBlock()
    min: NonNegInt = 1
    max: PosInt = 4
    initial: NonNegInt | None = None
    cooldown: Duration = 60.0     # after a change by hand, and for rules without their own
    tick: Duration = 2.0
    rules: list[RuleBlock] = []

    @model_validator(mode="after")
    def _bounds(self) -> FrontendSpec:
        initial = self.min if self.initial is None else self.initial
        if not self.min <= initial <= self.max:
            raise ValueError(f"need min <= initial <= max, got {self.min} <= {initial} <= {self.max}")
        return self

    @property
    def initial_size(self) -> int:
        return self.min if self.initial is None else self.initial


# ------------------------------------------------------------------------------ top level

TOP_LEVEL_KEYS = ("project", "vars", "include", "networks", "hosts", "classes", "nodes",
                  "clouds", "scaling", "frontends", "placement", "rebalance", "description")
