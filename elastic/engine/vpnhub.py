"""The VPN hub of a project's cloud: one WireGuard interface, one peer per cloud node, kept in
line with the state DB (the DB says which cloud nodes exist; the interface follows).

    hub = Hub("sgelab", "ec2", cloud_spec.vpn, state_dir, netns="elastic-front")
    hub.ensure()                                  # keys, interface, forwarding: idempotent
    with Store.open(state_dir) as store:
        vpn = hub.enroll(store, "worker5")        # overlay address leased, key made, peer added
        ...launch the instance with vpn.context() in its user-data...
        hub.retire(store, "worker5")              # after it is terminated
        hub.reconcile(store)                      # after a crash: peers == cloud nodes in the DB

The overlay address plan (``vpn.overlay``): the hub has the first host address, cloud nodes
lease the next free ones in the state DB under the network name ``vpn:<cloud>``, like any
other address (released with the node).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elastic.adapters.openvpn import (
    PKI, OpenVPNEnrolment, OpenVPNServer, ccd_entry, fingerprint, server_config,
)
from elastic.adapters.run import run
from elastic.adapters.vpn import KeyStore, WireGuard, overlay_addresses
from elastic.clock import Clock, SystemClock
from elastic.errors import PermanentError
from elastic.lifecycle import State
from elastic.state import Store

KEEPALIVE = 25


def overlay_network(cloud: str) -> str:
    return f"vpn:{cloud}"


def hub_ifname(project: str, cloud: str) -> str:
    """A name unique on the machine (wireguard-go's control sockets are machine-wide): 'ewg'
    and a short hash of project and cloud, 11 characters."""
    digest = hashlib.sha256(f"{project}/{cloud}".encode()).hexdigest()[:8]
    return f"ewg{digest}"


@dataclass(frozen=True)
class Enrolment:
    """What a cloud node needs to bring its tunnel up (``contextualization/elastic-vpn.sh``)."""

    node: str
    address: str           # overlay address with prefix, 10.250.0.5/24
    private_key: str
    hub_public_key: str
    hub_endpoint: str      # host:port the node reaches the hub at
    routes: tuple[str, ...]
    mtu: int

    def context(self) -> dict[str, str]:
        """The ``VPN_*`` context variables (hold the private key: never log them)."""
        return {"VPN_TYPE": "wireguard", "VPN_ADDRESS": self.address,
                "VPN_PRIVATE_KEY": self.private_key, "VPN_HUB_PUBLIC_KEY": self.hub_public_key,
                "VPN_HUB_ENDPOINT": self.hub_endpoint, "VPN_ROUTES": " ".join(self.routes),
                "VPN_MTU": str(self.mtu), "VPN_KEEPALIVE": str(KEEPALIVE)}

    def __repr__(self) -> str:   # never the key
        return f"Enrolment({self.node}, {self.address}, hub {self.hub_endpoint})"


class Hub:
    def __init__(self, project: str, cloud: str, vpn, state_dir: Path, *,
                 endpoint: str, routes: tuple[str, ...] = (), netns: str | None = None,
                 wireguard: Callable[..., WireGuard] = WireGuard,
                 clock: Clock | None = None) -> None:
        if vpn.type != "wireguard":
            raise PermanentError(f"clouds.{cloud}.vpn.type {vpn.type}: only wireguard is built "
                                 "so far")
        self.project, self.cloud, self.vpn = project, cloud, vpn
        self.endpoint = endpoint          # host:port as the cloud nodes see the hub
        self.routes = tuple(routes)
        self.netns = netns
        self.keys = KeyStore(Path(state_dir) / "vpn" / project)
        self.wg = wireguard(hub_ifname(project, cloud), netns=netns,
                            log_dir=Path(state_dir) / "vpn")
        self.clock = clock or SystemClock()
        self.hub_address, self._peer_addresses = overlay_addresses(vpn.overlay)
        self.prefix = ipaddress.ip_network(vpn.overlay).prefixlen

    @property
    def ifname(self) -> str:
        """The hub's interface (unique on the machine; recorded so `elastic down` finds it)."""
        return self.wg.ifname

    def down(self) -> None:
        """The hub's interface gone (its peers with it); keys stay until the project goes."""
        self.wg.down()

    # ------------------------------------------------------------------------ the hub
    def ensure(self) -> str:
        """Keys, the interface with the hub's overlay address and port, forwarding on.
        Idempotent. Returns the hub's public key."""
        key, public = self.keys.pair("hub")
        self.wg.up(private_key=key, address=f"{self.hub_address}/{self.prefix}",
                   port=self.vpn.port, mtu=self.vpn.mtu)
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=self.netns, timeout=10)
        return public

    # ---------------------------------------------------------------------- the peers
    def enroll(self, store: Store, node: str) -> Enrolment:
        """Before a cloud node is launched: its overlay address (leased), its key pair, and
        its peer on the hub. The node's record must exist. Idempotent."""
        address = self._lease(store, node)
        _key, public = self.keys.pair(_key_name(node))
        self.wg.add_peer(public, [f"{address}/32"])
        return Enrolment(node, f"{address}/{self.prefix}", self.keys.private(_key_name(node)),
                         self.keys.pair("hub")[1], self.endpoint, self.routes, self.vpn.mtu)

    def retire(self, store: Store, node: str) -> None:
        """After a cloud node is gone: its peer off the hub, its key forgotten. (Its overlay
        address goes with the node's other leases when the node is released.)"""
        name = _key_name(node)
        if self.keys.path(name).exists():
            self.wg.remove_peer(self.keys.public(name))
            self.keys.forget(name)

    def reconcile(self, store: Store) -> tuple[list[str], list[str]]:
        """Make the hub's peers exactly the live cloud nodes of the DB: (added, removed)."""
        want: dict[str, str] = {}
        for rec in store.list_nodes(self.project):
            if rec.site == self.cloud and rec.state not in (State.DONE,) \
                    and self.keys.path(_key_name(rec.name)).exists():
                want[self.keys.public(_key_name(rec.name))] = rec.name
        have = {p.public_key for p in self.wg.peers()}
        added, removed = [], []
        for public, node in sorted(want.items(), key=lambda kv: kv[1]):
            if public not in have:
                self.enroll(store, node)
                added.append(node)
        for public in sorted(have - set(want)):
            self.wg.remove_peer(public)
            removed.append(public[:8] + "...")
        return added, removed

    def _lease(self, store: Store, node: str) -> str:
        return lease_overlay(store, self.project, self.cloud, self.vpn.overlay, node,
                             self.clock.now())


def lease_overlay(store: Store, project: str, cloud: str, overlay: str, node: str,
                  now: float) -> str:
    """A cloud node's overlay address (the one it holds, else the first free one after the
    hub's), leased in the state DB under ``vpn:<cloud>``. Both hubs lease through here."""
    network = overlay_network(cloud)
    held = {lease.address: lease.node for lease in store.leases(project, network)}
    mine = next((a for a, n in held.items() if n == node), None)
    if mine:
        return mine
    for address in overlay_addresses(overlay)[1]:
        if address not in held:
            store.lease(project, network, address, node, "vpn0", _overlay_mac(address), now)
            return address
    raise PermanentError(f"the VPN overlay {overlay} of clouds.{cloud} is full: make "
                         f"clouds.{cloud}.vpn.overlay larger")


def _key_name(node: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", node):
        raise ValueError(f"not a node name: {node!r}")
    return f"node-{node}"


def _overlay_mac(address: str) -> str:
    """Leases carry a MAC; a tunnel has none, so a locally administered one from the address
    (prefix 02:57, 'W'), which cannot clash with the nodes' 02:00 MACs."""
    octets = [int(o) for o in address.split(".")]
    return "02:57:" + ":".join(f"{o:02x}" for o in octets)


def make_hub(project: str, cloud: str, vpn, state_dir: Path, *, endpoint: str,
             routes: tuple[str, ...] = (), netns: str | None = None):
    """The hub for ``vpn.type``: WireGuard (``Hub``) or OpenVPN (``OpenVPNHub``)."""
    if vpn.type == "wireguard":
        return Hub(project, cloud, vpn, state_dir, endpoint=endpoint, routes=routes,
                   netns=netns)
    if vpn.type == "openvpn":
        return OpenVPNHub(project, cloud, vpn, state_dir, endpoint=endpoint, routes=routes,
                          netns=netns)
    raise PermanentError(f"clouds.{cloud}.vpn.type {vpn.type}: not a VPN elastic knows")


def take_down(kind: str, ifname: str, netns: str | None, state_dir: Path) -> None:
    """`elastic down`: the hub interface (and its daemon) of a project's cloud gone, from
    what the state DB recorded (``kind`` is vpn.type)."""
    if kind == "openvpn":
        OpenVPNHub.take_down(ifname, netns, state_dir)
        return
    WireGuard(ifname, netns=netns, log_dir=Path(state_dir) / "vpn").down()


def openvpn_ifname(project: str, cloud: str) -> str:
    """The OpenVPN hub's tun device: 'eov' and a short hash of project and cloud."""
    return "eov" + hashlib.sha256(f"{project}/{cloud}".encode()).hexdigest()[:8]


class OpenVPNHub:
    """The OpenVPN hub of a project's cloud (vpn.type: openvpn), with the surface of ``Hub``:
    one server (tun ``ifname``, UDP ``vpn.port``) whose clients are the cloud nodes, each
    with a certificate of the project's CA (CN = node name) and a client-config-dir file
    that pushes its leased overlay address. ``ccd-exclusive``: a client without a ccd file
    is refused, so retiring a node is revoking its certificate (the CRL), removing its file
    and killing its session. A node pins the hub's certificate by its fingerprint.

        hub = OpenVPNHub("sgelab", "ec2", cloud_spec.vpn, state_dir, endpoint="203.0.113.7:1194")
        hub.ensure()                        # CA, server cert, server running: idempotent
        vpn = hub.enroll(store, "worker5")  # address leased, cert issued, ccd file written
        hub.retire(store, "worker5")        # cert revoked, ccd gone, session killed
    """

    def __init__(self, project: str, cloud: str, vpn, state_dir: Path, *,
                 endpoint: str, routes: tuple[str, ...] = (), netns: str | None = None,
                 clock: Clock | None = None, keepalive: tuple[int, int] = (10, 60),
                 server: Callable[..., OpenVPNServer] = OpenVPNServer) -> None:
        if vpn.type != "openvpn":
            raise PermanentError(f"clouds.{cloud}.vpn.type {vpn.type}: not openvpn")
        self.project, self.cloud, self.vpn = project, cloud, vpn
        self.endpoint = endpoint          # host:port as the cloud nodes see the hub
        self.routes = tuple(routes)
        self.netns = netns
        self.clock = clock or SystemClock()
        self.keepalive = keepalive
        self.hub_address = overlay_addresses(vpn.overlay)[0]
        self.prefix = ipaddress.ip_network(vpn.overlay).prefixlen
        self.hub_name = f"hub-{cloud}"    # the server certificate's CN
        self.pki = PKI(Path(state_dir) / "vpn" / project / "openvpn", cloud,
                       now=self.clock.now, ca_name=f"elastic {project} CA")
        self.ccd = self.pki.dir / "ccd"
        self.server = server(openvpn_ifname(project, cloud), netns=netns,
                             directory=self.pki.dir, log_dir=Path(state_dir) / "vpn")

    @property
    def ifname(self) -> str:
        """The hub's tun device (unique on the machine; recorded so `elastic down` finds it)."""
        return self.server.ifname

    def config(self) -> str:
        return server_config(ifname=self.ifname, directory=self.pki.dir, port=self.vpn.port,
                             hub_address=self.hub_address, overlay=self.vpn.overlay,
                             mtu=self.vpn.mtu, keepalive=self.keepalive)

    # ------------------------------------------------------------------------ the hub
    def ensure(self) -> str:
        """The CA, the server's certificate, the server running (started again if it
        died), forwarding on. Idempotent. Returns the CA's SHA-256 fingerprint."""
        ca = self.pki.ca()
        self.pki.get("hub", cn=self.hub_name, server=True)
        self.pki.crl()
        self.ccd.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.server.up(self.config())
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=self.netns, timeout=10)
        return fingerprint(ca.cert_pem)

    def down(self) -> None:
        """The server stopped and its tun device gone; the CA and certificates stay."""
        self.server.down()

    @staticmethod
    def take_down(ifname: str, netns: str | None, state_dir: Path) -> None:
        """`elastic down`: the server of ``ifname`` (from its pid file) stopped, no tun."""
        OpenVPNServer.stop(ifname, netns, Path(state_dir) / "vpn")

    # ---------------------------------------------------------------------- the nodes
    def enroll(self, store: Store, node: str) -> OpenVPNEnrolment:
        """Before a cloud node is launched: its overlay address (leased), its key and
        certificate (CN = node name), its ccd file. The node's record must exist.
        Idempotent."""
        name = _key_name(node)
        address = lease_overlay(store, self.project, self.cloud, self.vpn.overlay, node,
                                self.clock.now())
        issued = self.pki.get(name, cn=node)
        hub = self.pki.get("hub", cn=self.hub_name, server=True)
        self._write_ccd(node, address)
        return OpenVPNEnrolment(node, f"{address}/{self.prefix}", self.pki.ca().cert_pem,
                                issued.cert_pem, issued.key_pem, self.hub_name,
                                self.endpoint, self.routes, self.vpn.mtu,
                                fingerprint(hub.cert_pem))

    def _write_ccd(self, node: str, address: str) -> bool:
        self.ccd.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.ccd / node
        text = ccd_entry(address, self.vpn.overlay)
        if path.exists() and path.read_text() == text:
            return False
        tmp = self.ccd / f".{node}.tmp"
        tmp.write_text(text)
        tmp.replace(path)
        return True

    def retire(self, store: Store, node: str) -> None:
        """After a cloud node is gone: its certificate revoked (on the CRL: refused even if
        a node of that name is enrolled again, with a new one), its ccd file removed (the
        server refuses the name from now on), its session killed, its key and certificate
        forgotten. (Its overlay address goes with the node's other leases when the node is
        released.)"""
        name = _key_name(node)
        self.pki.revoke(name)
        (self.ccd / node).unlink(missing_ok=True)
        self.server.kill_client(node)
        self.pki.forget(name)

    def enrolled(self) -> list[str]:
        """The nodes that have a ccd file (the server admits exactly those)."""
        if not self.ccd.is_dir():
            return []
        return sorted(p.name for p in self.ccd.iterdir() if not p.name.startswith("."))

    def reconcile(self, store: Store) -> tuple[list[str], list[str]]:
        """The server running (``ensure``: started again after a crash), and the ccd files
        exactly the live, enrolled cloud nodes of the DB: (added, removed) node names."""
        self.ensure()
        want = sorted(rec.name for rec in store.list_nodes(self.project)
                      if rec.site == self.cloud and rec.state != State.DONE
                      and self.pki.has(_key_name(rec.name)))
        have = set(self.enrolled())
        added = []
        for node in want:
            missing = node not in have
            address = lease_overlay(store, self.project, self.cloud, self.vpn.overlay, node,
                                    self.clock.now())
            if self._write_ccd(node, address) or missing:
                added.append(node)
        removed = sorted(have - set(want))
        for node in removed:
            if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", node):
                self.retire(store, node)
            else:                                 # not elastic's: admit no one by it
                (self.ccd / node).unlink(missing_ok=True)
        return added, removed
