"""WireGuard: keys, the hub interface and its peers (one per cloud node).

    keys = KeyStore(state_dir / "vpn" / "sgelab")          # 0700 directory, 0600 keys
    hub_key, hub_pub = keys.pair("hub")                     # made on first use
    hub = WireGuard("ewg-sgelab", netns="elastic-front", log_dir=state_dir / "vpn")
    hub.up(private_key=hub_key, address="10.250.0.1/24", port=51820)
    hub.add_peer(peer_pub, ["10.250.0.2/32"])               # before the cloud node is launched
    hub.peers()                                              # endpoints, handshakes, bytes
    hub.remove_peer(peer_pub)                                # after it is terminated

The interface is the kernel's when it has the WireGuard module, else ``wireguard-go`` runs it
(in the foreground, its output in ``log_dir``; ``up`` is idempotent and starts it again if it
died). wireguard-go's control socket is ``/var/run/wireguard/<ifname>.sock`` for the whole
machine, not per namespace, so interface names must be unique on the machine.

Private keys exist only in files (mode 0600) and in the user-data of the node they belong
to: they are handed to ``wg`` as file paths, never on a command line, and ``wg show dump``
output (whose first line holds the private key) is parsed, never logged.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elastic.adapters import net
from elastic.adapters.keys import write_private
from elastic.adapters.run import run, spawn
from elastic.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

WG_SOCKET_DIR = Path("/var/run/wireguard")
KEEPALIVE = 25


# ------------------------------------------------------------------------------- keys

def keypair() -> tuple[str, str]:
    """A new WireGuard key pair (private, public), base64 as ``wg genkey``/``wg pubkey``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return base64.b64encode(raw).decode(), public_of(base64.b64encode(raw).decode())


def public_of(private: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    try:
        raw = base64.b64decode(private.strip(), validate=True)
        key = X25519PrivateKey.from_private_bytes(raw)
    except ValueError as e:
        raise PermanentError(f"not a WireGuard private key: {type(e).__name__}") from None
    pub = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def valid_public(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except ValueError:
        return False


class KeyStore:
    """Key pairs by name in one directory (0700): ``NAME.key`` (0600) and ``NAME.pub``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a key name: {name!r}")
        return self.dir / f"{name}.key"

    def pair(self, name: str) -> tuple[Path, str]:
        """(path of the private key, public key) of ``name``, made on first use."""
        path = self.path(name)
        if not path.exists():
            write_private(path, (keypair()[0] + "\n").encode())
        return path, self.public(name)

    def public(self, name: str) -> str:
        return public_of(self.path(name).read_text())

    def private(self, name: str) -> str:
        """The private key itself: only to put into the node's own user-data."""
        return self.path(name).read_text().strip()

    def forget(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)


# -------------------------------------------------------------------- address plan

def overlay_addresses(cidr: str) -> tuple[str, list[str]]:
    """The overlay's plan: the hub takes the first host address, peers the rest in order."""
    net_ = ipaddress.ip_network(cidr)
    hosts = [str(h) for h in net_.hosts()]
    if len(hosts) < 2:
        raise PermanentError(f"the VPN overlay {cidr} has no room for peers")
    return hosts[0], hosts[1:]


# -------------------------------------------------------------------------- interface

@dataclass(frozen=True)
class Peer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int          # unix time, 0 = never
    rx_bytes: int
    tx_bytes: int
    keepalive: int | None


def parse_dump(text: str) -> tuple[int | None, list[Peer]]:
    """``wg show IF dump``: (listen port, peers). The first line (which holds the private
    key) is read for its port only."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None, []
    first = lines[0].split("\t")
    port = int(first[2]) if len(first) >= 3 and first[2].isdigit() else None
    peers = []
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) < 8:
            raise ValueError(f"unexpected line in wg show dump ({len(f)} fields)")
        ips = tuple(x for x in f[3].split(",") if x and x != "(none)")
        peers.append(Peer(f[0], None if f[2] == "(none)" else f[2], ips, int(f[4]),
                          int(f[5]), int(f[6]), None if f[7] == "off" else int(f[7])))
    return port, peers


class WireGuard:
    """One WireGuard interface ``ifname`` in namespace ``netns`` (None: this one)."""

    START_TIMEOUT = 10.0

    def __init__(self, ifname: str, *, netns: str | None = None,
                 log_dir: Path | None = None, timeout: float = 15.0) -> None:
        if not ifname or len(ifname) > 15:
            raise ValueError(f"a WireGuard interface name has 1-15 characters: {ifname!r}")
        self.ifname = ifname
        self.netns = netns
        self.log_dir = log_dir
        self.timeout = timeout
        self._child = None

    def _wg(self, *args: str, check: bool = True):
        return run(["wg", *args], netns=self.netns, timeout=self.timeout, check=check)

    @property
    def socket(self) -> Path:
        return WG_SOCKET_DIR / f"{self.ifname}.sock"

    def exists(self) -> bool:
        return net.link_exists(self.ifname, ns=self.netns)

    def up(self, *, private_key: Path, address: str, port: int | None = None,
           mtu: int = 1420) -> str:
        """Make (or keep) the interface with this key, address (CIDR) and listen port; bring
        it up. Returns 'kernel' or 'wireguard-go'. Idempotent; a dead userspace interface is
        started again (its peers must then be added again: see ``add_peer``)."""
        how = "kernel"
        if not self.exists():
            how = self._create()
        elif self.socket.exists():
            how = "wireguard-go"
        args = ["set", self.ifname, "private-key", str(private_key)]
        if port is not None:
            args += ["listen-port", str(port)]
        self._wg(*args)
        net.set_address(self.ifname, address, ns=self.netns)
        run(["ip", "link", "set", self.ifname, "mtu", str(mtu), "up"], netns=self.netns,
            timeout=self.timeout)
        return how

    def _create(self) -> str:
        made = run(["ip", "link", "add", "dev", self.ifname, "type", "wireguard"],
                   netns=self.netns, timeout=self.timeout, check=False)
        if made.returncode == 0:
            return "kernel"
        # no kernel module: userspace, in the foreground, watched by us
        if self.socket.exists():   # a stale socket of a dead wireguard-go
            self.socket.unlink()
        log_file = (self.log_dir or Path("/tmp")) / f"wireguard-go-{self.ifname}.log"
        self._child = spawn(["wireguard-go", "-f", self.ifname], log_file=log_file,
                            netns=self.netns)
        deadline = time.monotonic() + self.START_TIMEOUT
        while not (self.socket.exists() and self.exists()):
            if self._child.poll() is not None:
                tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
                raise PermanentError(f"wireguard-go {self.ifname} exited at start "
                                     f"({self._child.returncode}): {tail}")
            if time.monotonic() > deadline:
                raise TransientError(f"wireguard-go {self.ifname} made no interface in "
                                     f"{self.START_TIMEOUT:g} s")
            time.sleep(0.02)
        return "wireguard-go"

    def add_peer(self, public_key: str, allowed_ips: Sequence[str], *,
                 endpoint: str | None = None, keepalive: int | None = None) -> None:
        """Add or update a peer. Idempotent."""
        if not valid_public(public_key):
            raise ValueError("not a WireGuard public key")
        for cidr in allowed_ips:
            ipaddress.ip_network(cidr)
        args = ["set", self.ifname, "peer", public_key, "allowed-ips", ",".join(allowed_ips)]
        if endpoint:
            args += ["endpoint", endpoint]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        self._wg(*args)

    def remove_peer(self, public_key: str) -> None:
        """Remove a peer; one already gone is fine."""
        if not valid_public(public_key):
            raise ValueError("not a WireGuard public key")
        self._wg("set", self.ifname, "peer", public_key, "remove")

    def peers(self) -> list[Peer]:
        # not through CommandFailed: its message would quote stdout, which holds the key
        result = self._wg("show", self.ifname, "dump", check=False)
        if result.returncode != 0:
            raise TransientError(f"wg show {self.ifname}: the interface does not answer: "
                                 f"{result.stderr.strip()[-300:]}")
        return parse_dump(result.stdout)[1]

    def down(self) -> None:
        """Remove the interface (a userspace one's process then exits). Gone is fine."""
        if self.exists():
            run(["ip", "link", "del", "dev", self.ifname], netns=self.netns,
                timeout=self.timeout, check=False)
        if self._child is not None:
            try:
                self._child.wait(5)
            except Exception:   # noqa: BLE001 - still there: make it go
                self._child.kill()
                self._child.wait(5)
            self._child = None
