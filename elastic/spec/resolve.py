"""Resolve a raw document into a Project: inheritance, counts, addresses, MACs, chunks.

Pure (no I/O). Problems are collected per phase and raised together as one ConfigError.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from elastic import expr
from elastic import model as m
from elastic.addressing import LeasePool, RangeExhausted, hashed_mac, ip_to_mac
from elastic.model import Where
from elastic.spec import schema as s
from elastic.spec.source import SList, SMap, where_at
from elastic.spec.suggest import did_you_mean
from elastic.spec.validate import Problems, validate_block

DEFAULT_MEMORY = 128   # MiB
DEFAULT_VCPUS = 1
LOCAL_HOST = "localhost"

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_IFACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")

# A lease kept from an earlier run: (node name, interface) -> address.
Leases = Mapping[tuple[str, str], str]


Members = Mapping[str, "int | Sequence[int]"]
MemberClasses = Mapping[str, Mapping[int, str]]


def resolve(doc: SMap, source: str, *, counts: Members | None = None,
            leases: Leases | None = None,
            member_classes: MemberClasses | None = None) -> m.Project:
    """The resolved project of a raw document.

    ``counts`` overrides the ``count`` of node groups (the autoscaler's view of a group): a
    number (members index_start..) or the exact member indices (worker2 removed from worker1..3
    leaves [1, 3]);
    ``leases`` are addresses handed out before, kept so that nodes keep their addresses when
    the file changes around them;
    ``member_classes`` gives single members of a group another class than the group's
    (`elastic add-workers --class big`): group -> {index: class}. The group's own settings
    still apply on top, as they do over its class.
    """
    return _Resolver(doc, source, counts or {}, leases or {}, member_classes or {}).run()


def _w(mapping: Any, key: str) -> Where | None:
    if isinstance(mapping, (SMap, SList)):
        return mapping.where_of(key) if isinstance(mapping, SMap) else mapping.where
    return None


@dataclass
class _Net:
    spec: m.NetworkSpec
    net: ipaddress.IPv4Network | None
    pool: LeasePool | None
    raw: SMap


@dataclass
class _Iface:
    """An interface on its way to being resolved (its address may still be 'auto')."""

    node: str
    name: str
    network: str
    address: str | None            # fixed address, or None until leased
    auto: bool
    dhcp: bool
    start: str | None
    prefixlen: int | None
    gateway: str | None
    mac: str | None
    routes: tuple[m.Route, ...]
    model: str
    raw: SMap                      # the merged interface block (for positions)
    group: str


@dataclass
class _Node:
    name: str
    group: str
    index: int | None
    classes: tuple[str, ...]
    settings: s.SettingsBlock
    raw: SMap                      # merged settings (for positions)
    host: str | None
    ifaces: list[_Iface] = field(default_factory=list)
    where: Where | None = None


class _Resolver:
    def __init__(self, doc: SMap, source: str, counts: Members, leases: Leases,
                 member_classes: MemberClasses | None = None) -> None:
        self.doc = doc
        self.source = source
        # a web tier's group starts at the tier's initial size (min), not its nodes: count
        self.counts = {**_tier_sizes(doc), **counts}
        self.member_classes = member_classes or {}
        self.leases = leases
        self.problems = Problems()

    # ------------------------------------------------------------------------------ run
    def run(self) -> m.Project:
        self._top_level()
        self.problems.raise_if_any()
        self.nets = self._networks()
        self.hosts = self._hosts()
        self.class_raw, self.class_chain = self._classes()
        self.problems.raise_if_any()
        nodes = self._nodes()
        self.problems.raise_if_any()
        self._addresses(nodes)
        self.problems.raise_if_any()
        chunk_of = self._chunk_names(nodes)
        node_specs = [self._node_spec(n, chunk_of[i]) for i, n in enumerate(nodes)]
        self._unique_macs(nodes, node_specs)
        chunks = self._chunks(nodes, node_specs)
        clouds, scaling, frontends = self._sections(nodes)
        placement, rebalance = self._placement_sections(nodes, node_specs)
        self.problems.raise_if_any()
        return m.Project(
            name=self.project,
            source=self.source,
            nodes=tuple(node_specs),
            networks=tuple(n.spec for n in self.nets.values()),
            hosts=tuple(self.hosts.values()),
            chunks=tuple(chunks),
            classes=tuple(self.class_raw),
            clouds=clouds,
            scaling=scaling,
            frontends=frontends,
            placement=placement,
            rebalance=rebalance,
        )

    def section(self, key: str) -> SMap:
        value = self.doc.get(key)
        if value is None:
            return SMap(where=self.doc.where_of(key))
        if not isinstance(value, SMap):
            self.problems.add(f"{key}: must be a mapping of names to settings",
                              self.doc.where_of(key), key)
            return SMap()
        return value

    # ------------------------------------------------------------------------ top level
    def _top_level(self) -> None:
        for key in self.doc:
            if key not in s.TOP_LEVEL_KEYS:
                self.problems.add(f"unknown section '{key}'" + did_you_mean(key, s.TOP_LEVEL_KEYS),
                                  self.doc.where_of(key), key)
        project = self.doc.get("project")
        if project is None:
            self.problems.add("missing 'project:' (every spec names its project)",
                              self.doc.where, "project")
        elif not isinstance(project, str) or not _HOSTNAME_RE.match(project):
            self.problems.add(f"'{project}' is not a valid project name (letters, digits and '-')",
                              self.doc.where_of("project"), "project")
        self.project = str(project)

    # ------------------------------------------------------------------------- networks
    def _networks(self) -> dict[str, _Net]:
        out: dict[str, _Net] = {}
        raw_section = self.section("networks")
        for name, raw in raw_section.items():
            key = f"networks.{name}"
            where = raw_section.where_of(name)
            if not _HOSTNAME_RE.match(name):
                self.problems.add(f"'{name}' is not a valid network name", where, key)
            blk = validate_block(s.NetworkBlock, raw, key, self.problems, where)
            if blk is None:
                continue
            net = self._network(name, blk, raw if isinstance(raw, SMap) else SMap(), where)
            if net is not None:
                out[name] = net
        return out

    def _network(self, name: str, blk: s.NetworkBlock, raw: SMap, where: Where | None) -> _Net | None:
        key = f"networks.{name}"
        if blk.cidr is None:
            if not (blk.kind == "bridged" and blk.dhcp):
                self.problems.add("missing required key 'cidr' (only a bridged network with "
                                  "dhcp: true may leave it out)", where, key + ".cidr")
                return None
            spec = m.NetworkSpec(name, blk.kind, None, blk.gateway, blk.mac_prefix, None, None,
                                 blk.bridge, tuple(blk.nameservers), True, where)
            return _Net(spec, None, None, raw)
        net = ipaddress.IPv4Network(blk.cidr)
        ok = True
        if blk.gateway is not None:
            gw = ipaddress.IPv4Address(blk.gateway)
            if gw not in net:
                self.problems.add(f"gateway {gw} is outside the network {net}",
                                  raw.where_of("gateway"), key + ".gateway")
                ok = False
            elif net.prefixlen < 31 and gw in (net.network_address, net.broadcast_address):
                self.problems.add(f"gateway {gw} is the network's own "
                                  f"{'network' if gw == net.network_address else 'broadcast'} address",
                                  raw.where_of("gateway"), key + ".gateway")
                ok = False
        hosts = (net.network_address, net.broadcast_address) if net.prefixlen >= 31 else \
            (net.network_address + 1, net.broadcast_address - 1)
        first, last = hosts
        if blk.range is not None:
            rw = raw.get("range")
            for end in ("start", "end"):
                addr = ipaddress.IPv4Address(getattr(blk.range, end))
                if addr not in net:
                    self.problems.add(f"range {end} {addr} is outside the network {net}",
                                      where_at(raw, ("range", end)) or raw.where_of("range"),
                                      f"{key}.range.{end}")
                    ok = False
            first = ipaddress.IPv4Address(blk.range.start)
            last = ipaddress.IPv4Address(blk.range.end)
            if first > last:
                self.problems.add(f"range starts at {first}, after its end {last}",
                                  getattr(rw, "where", None) or raw.where_of("range"), key + ".range")
                ok = False
        if not ok:
            return None
        exclude = tuple(str(a) for a in (blk.gateway,) if a) + \
            ((str(net.network_address), str(net.broadcast_address)) if net.prefixlen < 31 else ())
        pool = LeasePool(str(first), str(last), exclude)
        spec = m.NetworkSpec(name, blk.kind, str(net), blk.gateway, blk.mac_prefix, str(first),
                             str(last), blk.bridge, tuple(blk.nameservers), blk.dhcp, where)
        return _Net(spec, net, pool, raw)

    # ---------------------------------------------------------------------------- hosts
    def _hosts(self) -> dict[str, m.HostSpec]:
        out: dict[str, m.HostSpec] = {}
        raw_section = self.section("hosts")
        for name, raw in raw_section.items():
            key = f"hosts.{name}"
            where = raw_section.where_of(name)
            if not _HOSTNAME_RE.match(name):
                self.problems.add(f"'{name}' is not a valid host name", where, key)
            blk = validate_block(s.HostBlock, raw, key, self.problems, where)
            if blk is None:
                continue
            if blk.memory is not None and blk.reserved.memory >= blk.memory:
                self.problems.add(f"reserved memory ({blk.reserved.memory} MiB) leaves nothing of "
                                  f"the host's {blk.memory} MiB", where_at(raw, ("reserved", "memory")),
                                  key + ".reserved.memory")
            if blk.vcpus is not None and blk.reserved.vcpus >= blk.vcpus:
                self.problems.add(f"reserved vcpus ({blk.reserved.vcpus}) leave none of the "
                                  f"host's {blk.vcpus}", where_at(raw, ("reserved", "vcpus")),
                                  key + ".reserved.vcpus")
            out[name] = m.HostSpec(name, blk.uri, blk.type, blk.memory, blk.vcpus,
                                   blk.reserved.memory, blk.reserved.vcpus, tuple(blk.groups),
                                   blk.uplink, dict(blk.attributes), where, blk.cpu_cgroup,
                                   blk.vcpu_ratio)
        if not out and "hosts" not in self.doc:
            # a project with no hosts runs on the local machine
            out[LOCAL_HOST] = m.HostSpec(LOCAL_HOST, "qemu:///system", "kvm",
                                         where=Where(self.source))
        return out

    # -------------------------------------------------------------------------- classes
    def _classes(self) -> tuple[dict[str, SMap], dict[str, tuple[str, ...]]]:
        raw_section = self.section("classes")
        blocks: dict[str, SMap] = {}
        parents: dict[str, str | None] = {}
        for name, raw in raw_section.items():
            key = f"classes.{name}"
            if not _HOSTNAME_RE.match(name) and not re.match(r"^[A-Za-z0-9_-]+$", name):
                self.problems.add(f"'{name}' is not a valid class name", raw_section.where_of(name), key)
            raw = _normalise(raw)
            blk = validate_block(s.ClassBlock, raw, key, self.problems,
                                 raw_section.where_of(name))
            if blk is None:
                continue
            blocks[name] = raw if isinstance(raw, SMap) else SMap(where=raw_section.where_of(name))
            parents[name] = blk.inherit
        chains: dict[str, tuple[str, ...]] = {}
        for name in blocks:
            chain = self._chain(name, parents, blocks)
            if chain is not None:
                chains[name] = chain
        merged: dict[str, SMap] = {}
        for name, chain in chains.items():
            out = SMap(where=blocks[name].where)
            for cls in reversed(chain):
                out = deep_merge(out, _without(blocks[cls], s.CLASS_ONLY_KEYS))
            merged[name] = out
        return merged, chains

    def _chain(self, name: str, parents: dict[str, str | None],
               blocks: dict[str, SMap]) -> tuple[str, ...] | None:
        chain = [name]
        while (parent := parents.get(chain[-1])) is not None:
            child = chain[-1]
            where = blocks[child].where_of("inherit")
            if parent not in blocks:
                if parent not in parents:   # not merely a class that failed validation
                    self.problems.add(f"unknown class '{parent}'" + did_you_mean(parent, parents),
                                      where, f"classes.{child}.inherit")
                return None
            if parent in chain:
                cycle = " -> ".join(chain[chain.index(parent):] + [parent])
                self.problems.add(f"inheritance cycle: {cycle}", where, f"classes.{child}.inherit")
                return None
            chain.append(parent)
        return tuple(chain)

    # ---------------------------------------------------------------------------- nodes
    def _nodes(self) -> list[_Node]:
        raw_section = self.section("nodes")
        nodes: list[_Node] = []
        seen: dict[str, tuple[str, Where | None]] = {}
        self.groups: dict[str, s.NodeBlock] = {}
        for group, raw in raw_section.items():
            key = f"nodes.{group}"
            gwhere = raw_section.where_of(group)
            raw = _normalise(raw)
            blk = validate_block(s.NodeBlock, raw, key, self.problems, gwhere)
            if blk is None:
                continue
            assert isinstance(raw, SMap) or raw is None
            raw = raw if isinstance(raw, SMap) else SMap(where=gwhere)
            self.groups[group] = blk

            def settings_of(cls: str | None, cwhere: Where | None, ckey: str, *,
                            raw: SMap = raw, key: str = key, gwhere: Where | None = gwhere):
                """(class chain, merged raw, settings) of the group with class ``cls``."""
                chain: tuple[str, ...] = ()
                base = SMap(where=gwhere)
                if cls is not None:
                    if cls not in self.class_chain:
                        if cls not in self.section("classes"):
                            self.problems.add(f"unknown class '{cls}'"
                                              + did_you_mean(cls, self.class_chain), cwhere,
                                              ckey)
                        return None
                    chain = self.class_chain[cls]
                    base = self.class_raw[cls]
                merged = deep_merge(base, _without(raw, s.NODE_ONLY_KEYS))
                settings = validate_block(s.SettingsBlock, merged, key, self.problems, gwhere)
                if settings is None:
                    return None
                if settings.image is None:
                    via = f" (its classes: {' -> '.join(chain)})" if chain else ""
                    self.problems.add(f"no image: set image: in the node or in a class it "
                                      f"inherits{via}", gwhere, f"{key}.image")
                return chain, merged, settings

            own = settings_of(blk.class_, raw.where_of("class"), f"{key}.class")
            if own is None:
                continue
            overrides = self.member_classes.get(group, {})
            names = self._names(group, blk, raw, gwhere)
            hosts = self._spread(group, blk, own[2], raw, len(names))
            variants: dict[str, Any] = {}
            for index in sorted({i for _n, i in names if i in overrides}):
                cls = overrides[index]
                if cls in variants:
                    continue
                if cls not in self.class_chain:
                    self.problems.add(
                        f"members of {group} were added with class '{cls}' (elastic "
                        "add-workers --class), which the spec does not have any more: put the "
                        "class back, or remove those workers first", gwhere, key)
                    variants[cls] = None
                    continue
                variants[cls] = settings_of(cls, gwhere, key)
            for (name, index), host in zip(names, hosts):
                if not _HOSTNAME_RE.match(name):
                    self.problems.add(f"'{name}' is not a valid host name (letters, digits and "
                                      "'-', at most 63)", gwhere, key)
                    continue
                if name.lower() in seen:
                    other, owhere = seen[name.lower()]
                    self.problems.add(f"node name '{name}' is already used by nodes.{other}"
                                      f" ({owhere})", gwhere, key)
                    continue
                seen[name.lower()] = (group, gwhere)
                n_chain, n_merged, n_settings = variants.get(overrides.get(index)) or own
                node = _Node(name, group, index, n_chain, n_settings, n_merged, host,
                             where=gwhere)
                node.ifaces = self._interfaces(node, key)
                nodes.append(node)
        return nodes

    def _names(self, group: str, blk: s.NodeBlock, raw: SMap,
               where: Where | None) -> list[tuple[str, int | None]]:
        count = self.counts.get(group, blk.count)
        if count is None:
            if blk.names is not None:
                self.problems.add("names: needs count:", raw.where_of("names"),
                                  f"nodes.{group}.names")
            return [(group, None)]
        pattern = blk.names or (group + "{n}")
        if "{n" not in pattern:
            self.problems.add(f"names pattern '{pattern}' must contain {{n}} (e.g. worker{{n}} or "
                              "node{n:02d})", raw.where_of("names"), f"nodes.{group}.names")
            return []
        indices = range(blk.index_start, blk.index_start + count) if isinstance(count, int) \
            else sorted(set(count))
        try:
            return [(pattern.format(n=i), i) for i in indices]
        except (KeyError, IndexError, ValueError) as e:
            self.problems.add(f"bad names pattern '{pattern}': {e} (only {{n}} may be used)",
                              raw.where_of("names"), f"nodes.{group}.names")
            return []

    def _spread(self, group: str, blk: s.NodeBlock, settings: s.SettingsBlock, raw: SMap,
                n: int) -> list[str | None]:
        """The fixed host of each node of a group (None: placement decides)."""
        key = f"nodes.{group}"
        if blk.hosts is None:
            if settings.host is not None:
                self._known_host(settings.host, raw.where_of("host") or raw.where, key + ".host")
            return [settings.host] * n
        if "host" in raw:
            self.problems.add("host: and hosts: cannot both be set (host: fixes every node, "
                              "hosts: spreads them)", raw.where_of("hosts"), key + ".hosts")
            return [None] * n
        where = raw.where_of("hosts")
        for h in blk.hosts:
            self._known_host(h, where, key + ".hosts")
        if isinstance(blk.hosts, list):
            if not blk.hosts:
                return [None] * n
            return [blk.hosts[i % len(blk.hosts)] for i in range(n)]
        total = sum(blk.hosts.values())
        spec_count = blk.count if blk.count is not None else 1
        if total != spec_count:
            self.problems.add(f"hosts: places {total} nodes but count is {spec_count}",
                              where, key + ".hosts")
            return [None] * n
        out: list[str | None] = [h for h, k in blk.hosts.items() for _ in range(k)]
        return (out + [None] * n)[:n]   # beyond the spec's count (autoscaler): placement decides

    def _known_host(self, host: str, where: Where | None, key: str) -> bool:
        if host in self.hosts:
            return True
        self.problems.add(f"unknown host '{host}'" + did_you_mean(host, self.hosts), where, key)
        return False

    # ----------------------------------------------------------------------- interfaces
    def _interfaces(self, node: _Node, key: str) -> list[_Iface]:
        out = []
        raw_ifaces = node.raw.get("interfaces") if isinstance(node.raw.get("interfaces"), SMap) \
            else SMap()
        for name, blk in node.settings.interfaces.items():
            ikey = f"{key}.interfaces.{name}"
            raw = raw_ifaces.get(name) if isinstance(raw_ifaces.get(name), SMap) else \
                SMap(where=raw_ifaces.where_of(name))
            where = raw.where or raw_ifaces.where_of(name)
            if not _IFACE_RE.match(name):
                self.problems.add(f"'{name}' is not a valid interface name (e.g. eth0)", where, ikey)
                continue
            if blk.network is None:
                self.problems.add("missing 'network:' (which switch is this interface on?)",
                                  where, ikey + ".network")
                continue
            net = self.nets.get(blk.network)
            if net is None:
                if blk.network not in self.section("networks"):
                    self.problems.add(f"unknown network '{blk.network}'"
                                      + did_you_mean(blk.network, self.nets),
                                      raw.where_of("network"), ikey + ".network")
                continue
            iface = self._interface(node, name, blk, net, raw, ikey)
            if iface is not None:
                out.append(iface)
        return out

    def _interface(self, node: _Node, name: str, blk: s.InterfaceBlock, net: _Net, raw: SMap,
                   key: str) -> _Iface | None:
        spec = net.spec
        address = blk.address or ("dhcp" if spec.dhcp else "auto")
        if address == "dhcp" and spec.kind == "private" and not spec.dhcp:
            self.problems.add(f"network {spec.name} is private and runs no DHCP server: use an "
                              "address or auto", raw.where_of("address"), key + ".address")
            return None
        if address != "dhcp" and net.net is None:
            self.problems.add(f"network {spec.name} has no cidr, so only address: dhcp works on it",
                              raw.where_of("address") or raw.where, key + ".address")
            return None
        prefixlen = net.net.prefixlen if net.net is not None else None
        if blk.netmask is not None and prefixlen is not None and blk.netmask != prefixlen:
            self.problems.add(f"netmask /{blk.netmask} differs from network {spec.name} "
                              f"({spec.cidr})", raw.where_of("netmask"), key + ".netmask")
        gateway = blk.gateway or spec.gateway
        if blk.gateway is not None and net.net is not None and \
                ipaddress.IPv4Address(blk.gateway) not in net.net:
            self.problems.add(f"gateway {blk.gateway} is outside the network {spec.name} "
                              f"({spec.cidr})", raw.where_of("gateway"), key + ".gateway")
        start = None
        if blk.address_start is not None and net.net is not None:
            if isinstance(blk.address_start, int):
                start_ip = net.net.network_address + blk.address_start
            else:
                start_ip = ipaddress.IPv4Address(blk.address_start)
            if start_ip not in net.net:
                self.problems.add(f"address_start {start_ip} is outside the network {spec.name} "
                                  f"({spec.cidr})", raw.where_of("address_start"),
                                  key + ".address_start")
            start = str(start_ip)
        routes = []
        for i, r in enumerate(blk.routes):
            if net.net is not None and ipaddress.IPv4Address(r.via) not in net.net:
                self.problems.add(f"route via {r.via} is not on network {spec.name} ({spec.cidr})",
                                  where_at(raw, ("routes", i)), f"{key}.routes")
            routes.append(m.Route(r.to, r.via))
        fixed = None if address in ("auto", "dhcp") else address
        return _Iface(node.name, name, spec.name, fixed, address == "auto", address == "dhcp",
                      start, prefixlen, gateway, blk.mac, tuple(routes), blk.model or "virtio",
                      raw, node.group)

    # ------------------------------------------------------------------------ addresses
    def _addresses(self, nodes: list[_Node]) -> None:
        owners: dict[tuple[str, str], tuple[str, Where | None]] = {}
        # fixed leases first (explicit addresses, then addresses leased in an earlier run) ...
        for node in nodes:
            for iface in node.ifaces:
                if iface.address is None:
                    continue
                self._fixed(iface, owners)
        for node in nodes:
            for iface in node.ifaces:
                prior = self.leases.get((node.name, iface.name))
                if iface.auto and prior is not None:
                    net = self.nets[iface.network]
                    if net.net is not None and ipaddress.IPv4Address(prior) in net.net and \
                            net.pool is not None and net.pool.reserve(prior):
                        iface.address = prior
                        owners[(iface.network, prior)] = (f"{node.name}.{iface.name}",
                                                          iface.raw.where)
        # ... then 'auto' takes the lowest free address of the range, in file order.
        exhausted: set[tuple[str, str]] = set()
        for node in nodes:
            for iface in node.ifaces:
                if not iface.auto or iface.address is not None:
                    continue
                net = self.nets[iface.network]
                assert net.pool is not None
                try:
                    iface.address = net.pool.lease(iface.start)
                except RangeExhausted:
                    if (node.group, iface.network) not in exhausted:
                        exhausted.add((node.group, iface.network))
                        wanted = sum(1 for n in nodes if n.group == node.group)
                        self.problems.add(
                            f"network {iface.network} has no free address left for "
                            f"{node.name}.{iface.name}: its range {net.spec.range_first}-"
                            f"{net.spec.range_last} holds {net.pool.size} and nodes.{node.group} "
                            f"asks for {wanted} (make the range larger or the count smaller)",
                            node.where, f"nodes.{node.group}.interfaces.{iface.name}")

    def _fixed(self, iface: _Iface, owners: dict[tuple[str, str], tuple[str, Where | None]]) -> None:
        net = self.nets[iface.network]
        addr = iface.address
        assert addr is not None and net.net is not None and net.pool is not None
        where = iface.raw.where_of("address")
        key = f"nodes.{iface.group}.interfaces.{iface.name}.address"
        ip = ipaddress.IPv4Address(addr)
        if ip not in net.net:
            self.problems.add(f"address {addr} of {iface.node}.{iface.name} is outside the "
                              f"network {net.spec.name} ({net.spec.cidr})", where, key)
            return
        if net.net.prefixlen < 31 and ip in (net.net.network_address, net.net.broadcast_address):
            self.problems.add(f"address {addr} is the network {net.spec.name}'s own "
                              f"{'network' if ip == net.net.network_address else 'broadcast'} "
                              "address", where, key)
            return
        if net.spec.gateway == addr:
            self.problems.add(f"address {addr} is the gateway of network {net.spec.name}",
                              where, key)
            return
        if not net.pool.reserve(addr):
            other, owhere = owners.get((iface.network, addr), ("another node", None))
            at = f" ({owhere})" if owhere else ""
            self.problems.add(f"address {addr} of {iface.node}.{iface.name} is already used by "
                              f"{other}{at}", where, key)
            return
        owners[(iface.network, addr)] = (f"{iface.node}.{iface.name}", where)

    # ---------------------------------------------------------------------- node specs
    def _node_spec(self, node: _Node, chunk: str) -> m.NodeSpec:
        st = node.settings
        ifaces = []
        for i in node.ifaces:
            prefix = self.nets[i.network].spec.mac_prefix
            mac = i.mac or (ip_to_mac(i.address, prefix) if i.address else
                            hashed_mac(f"{self.project}/{node.name}/{i.name}", prefix))
            ifaces.append(m.Interface(i.name, i.network, mac, i.address, i.prefixlen, i.gateway,
                                      i.routes, i.model))
        users = tuple(m.User(name, u.password, tuple(u.ssh_keys), tuple(u.groups),
                             u.shell or "/bin/sh", u.uid, bool(u.sudo))
                      for name, u in ((n, u or s.UserBlock()) for n, u in st.users.items()))
        groups = tuple(m.Group(name, g.gid if g else None) for name, g in st.groups.items())
        files = tuple(m.File(path, f.content, f.source, f.mode, f.owner)
                      for path, f in st.files.items())
        mounts = tuple(m.Mount(x.source, x.target, x.type, x.options) for x in st.mounts)
        return m.NodeSpec(
            name=node.name, project=self.project, classes=node.classes,
            image=st.image or "", memory=st.memory or DEFAULT_MEMORY,
            vcpus=st.vcpus or DEFAULT_VCPUS, disk=st.disk, free_space=st.free_space,
            interfaces=tuple(ifaces), nameservers=tuple(st.nameservers), search=tuple(st.search),
            users=users, groups=groups, startup=tuple(st.startup), files=files, mounts=mounts,
            host=node.host, hypervisor=st.hypervisor, storage=st.storage or "qcow2",
            console=st.console, priority=st.priority or 0, plugins=_plain(st.plugins),
            requirements=st.requirements, affinity=tuple(st.affinity),
            anti_affinity=tuple(st.anti_affinity),
            group=node.group, index=node.index, chunk=chunk, where=node.where)

    def _unique_macs(self, nodes: list[_Node], specs: list[m.NodeSpec]) -> None:
        owner: dict[str, str] = {}
        for node, spec in zip(nodes, specs):
            for raw_iface, iface in zip(node.ifaces, spec.interfaces):
                who = f"{spec.name}.{iface.name}"
                if iface.mac in owner:
                    self.problems.add(
                        f"MAC {iface.mac} of {who} is also used by {owner[iface.mac]} (two "
                        "networks with the same addresses need different mac_prefix values)",
                        raw_iface.raw.where_of("mac") or node.where,
                        f"nodes.{node.group}.interfaces.{iface.name}")
                else:
                    owner[iface.mac] = who

    # --------------------------------------------------------------------------- chunks
    def _chunk_names(self, nodes: list[_Node]) -> list[str]:
        """The chunk of each node: nodes joined through private networks share one, named
        after those networks; a node on no private network is a chunk of its own."""
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            parent.setdefault(x, x)
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for node in nodes:
            find("n:" + node.name)
            for iface in node.ifaces:
                if self.nets[iface.network].spec.kind == "private":
                    parent[find("n:" + node.name)] = find("w:" + iface.network)
        nets_of: dict[str, list[str]] = {}
        for name in sorted(self.nets):
            if "w:" + name in parent:
                nets_of.setdefault(find("w:" + name), []).append(name)
        return ["+".join(nets_of[root]) if (root := find("n:" + node.name)) in nets_of
                else node.name for node in nodes]

    def _chunks(self, nodes: list[_Node], specs: list[m.NodeSpec]) -> list[m.Chunk]:
        members: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            members.setdefault(spec.chunk, []).append(i)
        chunks: list[m.Chunk] = []
        for name, idx in members.items():
            networks = tuple(sorted({iface.network for i in idx for iface in specs[i].interfaces
                                     if self.nets[iface.network].spec.kind == "private"}))
            fixed = {specs[i].host for i in idx if specs[i].host is not None}
            host = None
            if len(fixed) > 1:
                by_host: dict[str, list[str]] = {}
                for i in idx:
                    if specs[i].host is not None:
                        by_host.setdefault(specs[i].host, []).append(specs[i].name)
                detail = ", ".join(f"{short_list(names)} on {h}" for h, names in by_host.items())
                self.problems.add(
                    f"chunk {name} joins nodes fixed to different hosts ({detail}); a private "
                    "network lives on one host: fix them to one host or make the network bridged",
                    nodes[idx[0]].where, f"nodes.{nodes[idx[0]].group}.host")
            elif fixed:
                host = fixed.pop()
            memory = sum(specs[i].memory for i in idx)
            vcpus = sum(specs[i].vcpus for i in idx)
            self._fits(name, host, memory, specs, idx, nodes)
            chunks.append(m.Chunk(name, tuple(specs[i].name for i in idx), networks, memory,
                                  vcpus, host))
        return chunks

    def _fits(self, chunk: str, host: str | None, memory: int, specs: list[m.NodeSpec],
              idx: list[int], nodes: list[_Node]) -> None:
        if host is None or host not in self.hosts:
            return
        h = self.hosts[host]
        first = nodes[idx[0]]
        if h.usable_memory is not None and memory > h.usable_memory:
            self.problems.add(f"chunk {chunk} needs {memory} MiB but host {host} has "
                              f"{h.usable_memory} MiB for guests", first.where,
                              f"nodes.{first.group}.memory")
        for i in idx:
            want = specs[i].hypervisor
            if want is not None and want != h.domain_type:
                self.problems.add(f"node {specs[i].name} wants hypervisor {want} but host {host} "
                                  f"runs {h.domain_type}", nodes[i].where,
                                  f"nodes.{nodes[i].group}.hypervisor")

    # ------------------------------------------------------------------------- sections
    def _sections(self, nodes: list[_Node]) -> tuple[dict[str, s.CloudSpec], s.ScalingSpec | None,
                                                     dict[str, s.FrontendSpec]]:
        node_names = {n.name for n in nodes}
        clouds: dict[str, s.CloudSpec] = {}
        raw_clouds = self.section("clouds")
        for name, raw in raw_clouds.items():
            blk = validate_block(s.CloudSpec, raw, f"clouds.{name}", self.problems,
                                 raw_clouds.where_of(name))
            if blk is not None:
                self._node_ref(blk.vpn.hub, node_names, where_at(raw, ("vpn", "hub")),
                               f"clouds.{name}.vpn.hub")
                clouds[name] = blk
        scaling = None
        if self.doc.get("scaling") is not None:
            raw = self.doc["scaling"]
            scaling = validate_block(s.ScalingSpec, raw, "scaling", self.problems,
                                     self.doc.where_of("scaling"))
            if scaling is not None:
                self._group_ref(scaling.group, where_at(raw, ("group",)), "scaling.group",
                                need_count=True)
                self._node_ref(scaling.batch.master, node_names,
                               where_at(raw, ("batch", "master")), "scaling.batch.master",
                               controller=False)
                for i, cloud in enumerate(scaling.burst):
                    if cloud not in clouds and cloud not in raw_clouds:
                        self.problems.add(f"unknown cloud '{cloud}'" + did_you_mean(cloud, clouds),
                                          where_at(raw, ("burst", i)), "scaling.burst")
        frontends: dict[str, s.FrontendSpec] = {}
        raw_frontends = self.section("frontends")
        for name, raw in raw_frontends.items():
            blk = validate_block(s.FrontendSpec, raw, f"frontends.{name}", self.problems,
                                 raw_frontends.where_of(name))
            if blk is not None:
                self._group_ref(blk.group, where_at(raw, ("group",)), f"frontends.{name}.group",
                                need_count=True)
                if blk.balancer.node != "controller":
                    self.problems.add(
                        "only 'controller' for now: nginx runs on the machine running elastic "
                        "(in balancer.netns if given)", where_at(raw, ("balancer", "node")),
                        f"frontends.{name}.balancer.node")
                taken = {scaling.group: "scaling.group"} if scaling is not None else {}
                taken.update({t.group: f"frontends.{n}.group" for n, t in frontends.items()})
                if blk.group in taken:
                    self.problems.add(f"nodes.{blk.group} is already sized by "
                                      f"{taken[blk.group]}", where_at(raw, ("group",)),
                                      f"frontends.{name}.group")
                frontends[name] = blk
        return clouds, scaling, frontends

    def _placement_sections(self, nodes: list[_Node], specs: list[m.NodeSpec]
                            ) -> tuple[s.PlacementBlock, s.RebalanceBlock]:
        """placement: and rebalance:, and every placement expression (a node's requirements,
        the rank) parsed now, so that a typo is reported with its line before anything runs."""
        placement = s.PlacementBlock()
        if self.doc.get("placement") is not None:
            raw = self.doc["placement"]
            placement = validate_block(s.PlacementBlock, raw, "placement", self.problems,
                                       self.doc.where_of("placement")) or placement
            if placement.rank is not None:
                self._expression(placement.rank, where_at(raw, ("rank",)) or
                                 self.doc.where_of("placement"), "placement.rank")
        rebalance = s.RebalanceBlock()
        if self.doc.get("rebalance") is not None:
            rebalance = validate_block(s.RebalanceBlock, self.doc["rebalance"], "rebalance",
                                       self.problems, self.doc.where_of("rebalance")) or rebalance
        names = {n.name for n in specs} | {n.group for n in specs} | \
            {c for n in specs for c in n.classes}
        seen: set[tuple[str, str]] = set()
        for node, spec in zip(nodes, specs):
            group = f"nodes.{spec.group}"
            if spec.requirements is not None and (spec.group, spec.requirements) not in seen:
                seen.add((spec.group, spec.requirements))
                self._expression(spec.requirements,
                                 node.raw.where_of("requirements") or spec.where,
                                 f"{group}.requirements")
            for key in ("affinity", "anti_affinity"):
                for i, ref in enumerate(getattr(spec, key)):
                    if ref not in names and (spec.group, ref) not in seen:
                        seen.add((spec.group, ref))
                        self.problems.add(f"unknown node, group or class '{ref}'" +
                                          did_you_mean(ref, names),
                                          where_at(node.raw, (key, i)) or spec.where,
                                          f"{group}.{key}")
        return placement, rebalance

    def _expression(self, text: str, where: Where | None, key: str) -> None:
        known = {k for h in self.hosts.values() for k in h.attributes}
        try:
            expr.compile_expression(text, known)
        except expr.ExpressionError as e:
            self.problems.add(str(e), where, key)

    def _group_ref(self, group: str, where: Where | None, key: str, need_count: bool) -> None:
        if group not in self.groups:
            self.problems.add(f"unknown node group '{group}'" + did_you_mean(group, self.groups),
                              where, key)
        elif need_count and self.groups[group].count is None:
            self.problems.add(f"nodes.{group} has no count: (a group the autoscaler sizes needs "
                              "count:, which may be 0)", where, key)

    def _node_ref(self, name: str, nodes: set[str], where: Where | None, key: str,
                  controller: bool = True) -> None:
        if controller and name == "controller":
            return
        if name not in nodes:
            hint = " (or 'controller' for the machine running elastic)" if controller else ""
            self.problems.add(f"unknown node '{name}'" + did_you_mean(name, nodes) + hint,
                              where, key)


# ----------------------------------------------------------------------------- helpers

def _tier_sizes(doc: SMap) -> dict[str, int]:
    """The initial size (initial:, else min:, else 1) of each web tier's group, from the raw
    frontends: section (validated later; what is not a number is left to the validation)."""
    out: dict[str, int] = {}
    tiers = doc.get("frontends")
    if not isinstance(tiers, dict):
        return out
    for raw in tiers.values():
        if not isinstance(raw, dict) or not isinstance(raw.get("group"), str):
            continue
        size = raw.get("initial", raw.get("min", 1))
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            out[raw["group"]] = size
    return out


_REPLACE_CHILDREN = frozenset({"files"})   # a file is replaced whole, never merged


def deep_merge(base: SMap, over: SMap, _parent: str | None = None) -> SMap:
    """``over`` on top of ``base``: nested mappings merge key by key (overriding only
    ``eth0.address`` keeps the inherited ``eth0.netmask``); lists and values replace."""
    out = SMap(where=over.where or base.where)
    for k, v in base.items():
        out.set(k, v, base.key_where.get(k))
    for k, v in over.items():
        old = out.get(k)
        if isinstance(old, SMap) and isinstance(v, SMap) and _parent not in _REPLACE_CHILDREN:
            out.set(k, deep_merge(old, v, k), over.key_where.get(k))
        else:
            out.set(k, v, over.key_where.get(k))
    return out


def short_list(names: list[str], limit: int = 4) -> str:
    """'a, b, c' or 'a, b, c, d and 996 more' for messages that must stay readable."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def _without(raw: SMap, keys: frozenset[str]) -> SMap:
    out = SMap(where=raw.where)
    for k, v in raw.items():
        if k not in keys:
            out.set(k, v, raw.key_where.get(k))
    return out


def _normalise(raw: Any) -> Any:
    """Lists of names where mappings are expected (``groups: [a, b]``, ``users: [alice]``)."""
    if not isinstance(raw, SMap):
        return raw
    for key in ("groups", "users"):
        value = raw.get(key)
        if isinstance(value, SList) and all(isinstance(v, str) for v in value):
            as_map = SMap(where=value.where)
            for i, v in enumerate(value):
                as_map.set(v, None, value.where_of(i))
            raw.set(key, as_map, raw.key_where.get(key))
    return raw


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
