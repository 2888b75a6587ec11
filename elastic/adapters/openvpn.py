"""OpenVPN (``vpn.type: openvpn``): a small CA, the hub's server and its management socket.

    pki = PKI(state_dir / "vpn" / "sgelab" / "openvpn", "ec2", now=time.time)
    pki.ca()                                     # made once: ca.key (0600), ca.crt
    hub_cert = pki.get("hub", cn="hub-ec2", server=True)
    node = pki.get("node-worker5", cn="worker5")  # EC P-256, signed by the CA
    srv = OpenVPNServer("eov1a2b3c4d", netns="elastic-front", directory=pki.dir,
                        log_dir=state_dir / "vpn")
    srv.up(server_config(...))                   # started, or kept running, or restarted
    srv.kill_client("worker5")                   # through the management socket
    srv.down()

Files (directories 0700, private keys 0600, written once and exclusively):

    <state>/vpn/<project>/openvpn/ca.key, ca.crt      the project's CA
    <state>/vpn/<project>/openvpn/<cloud>/            one per cloud (its hub):
        hub.key hub.crt  node-NAME.key node-NAME.crt  ccd/NAME  <ifname>.conf  mgmt.sock
        crl.pem                                       the revoked node certificates
    <state>/vpn/openvpn-<ifname>.log, .pid            the server's output and pid

The server runs in the foreground (``elastic.adapters.run.spawn``), supervised like
wireguard-go: ``up`` starts it again if it died. Its config ``cd``s into the cloud directory
and names every file relatively, so the management socket's path stays short (a unix
socket path has at most 107 bytes).

``make_ca``, ``issue``, ``make_crl``, ``server_config``, ``ccd_entry``, ``parse_status`` and
``OpenVPNEnrolment`` are pure. Private keys are never logged; a repr never shows one.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from elastic.adapters import net
from elastic.adapters.keys import write_private
from elastic.adapters.run import run, spawn
from elastic.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

CIPHERS = "AES-256-GCM:CHACHA20-POLY1305"
KEEPALIVE = (10, 60)           # ping every 10 s, restart after 60 s of silence (pushed)
CA_DAYS = 3650
CERT_DAYS = 3650               # a retired node is refused by ccd-exclusive, not by expiry
SKEW = dt.timedelta(hours=1)   # certs valid from an hour ago: nodes' clocks differ
MANAGEMENT = "mgmt.sock"
CRL = "crl.pem"                # the cloud's revoked node certificates (crl-verify)


# ---------------------------------------------------------------------------------- PKI

@dataclass(frozen=True)
class Issued:
    """A PEM key and certificate."""

    cert_pem: str
    key_pem: str = field(repr=False)


def _when(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, tz=dt.timezone.utc)


def _pem_key(key) -> str:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _load_key(pem: str):
    from cryptography.hazmat.primitives import serialization
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(cn: str, now: float, *, key_pem: str | None = None) -> Issued:
    """A self-signed CA (EC P-256; ``key_pem``: with this key instead of a new one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _load_key(key_pem) if key_pem else _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = _when(now) - SKEW
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(),
                  key_pem or _pem_key(key))


def issue(ca: Issued, cn: str, now: float, *, server: bool = False,
          key_pem: str | None = None) -> Issued:
    """A certificate for ``cn`` signed by ``ca``: TLS server (the hub) or client (a node).
    A new EC P-256 key unless ``key_pem`` is given."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = _load_key(ca.key_pem)
    key = _load_key(key_pem) if key_pem else _new_key()
    start = _when(now) - SKEW
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, True, False, False,
                                         False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(),
                  key_pem or _pem_key(key))


def make_crl(ca: Issued, serials, now: float) -> str:
    """A CRL of ``ca`` listing ``serials``. Its next update is as far off as the CA's end:
    OpenSSL refuses every client once a CRL is past it, and elastic signs a new one each
    time it revokes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    start = _when(now) - SKEW
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(start).next_update(ca_cert.not_valid_after_utc))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(start)
            .build())
    return builder.sign(_load_key(ca.key_pem), hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM).decode()


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the certificate, colon-separated hex (as ``openvpn --peer-fingerprint``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def common_name(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check(name: str, what: str) -> str:
    if not _FILE_NAME.fullmatch(name):
        raise ValueError(f"not a {what}: {name!r}")
    return name


def _write_public(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically if it differs; True if it changed."""
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


class PKI:
    """The project's CA (``directory``) and the certificates of one cloud's hub and nodes
    (``directory/<cloud>``), made on first use. Keys are created exclusively (two processes
    at once end with one key); a certificate lost after its key was written is issued again
    for the same key."""

    def __init__(self, directory: Path, cloud: str, *, now: Callable[[], float],
                 ca_name: str = "elastic CA") -> None:
        self.root = Path(directory)
        self.dir = self.root / _check(cloud, "cloud name")
        self.now = now
        self.ca_name = ca_name

    def _paths(self, name: str, where: Path) -> tuple[Path, Path]:
        _check(name, "certificate name")
        return where / f"{name}.key", where / f"{name}.crt"

    def _made(self, key_path: Path, cert_path: Path,
              make: Callable[[str | None], Issued]) -> Issued:
        if not key_path.exists():
            fresh = make(None)
            if write_private(key_path, fresh.key_pem.encode()):
                _write_public(cert_path, fresh.cert_pem)
                return fresh
        key_pem = key_path.read_text()
        if not cert_path.exists():
            _write_public(cert_path, make(key_pem).cert_pem)
        return Issued(cert_path.read_text(), key_pem)

    def ca(self) -> Issued:
        key, cert = self._paths("ca", self.root)
        return self._made(key, cert, lambda k: make_ca(self.ca_name, self.now(), key_pem=k))

    def get(self, name: str, *, cn: str, server: bool = False) -> Issued:
        """The key and certificate ``name`` (CN ``cn``), made and signed on first use."""
        key, cert = self._paths(name, self.dir)
        ca = self.ca()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._made(key, cert, lambda k: issue(ca, cn, self.now(), server=server,
                                                     key_pem=k))

    def has(self, name: str) -> bool:
        return self._paths(name, self.dir)[0].exists()

    @property
    def crl_path(self) -> Path:
        return self.dir / CRL

    def crl(self) -> Path:
        """This cloud's certificate revocation list (``crl-verify``), signed by the CA;
        made empty on first use."""
        if not self.crl_path.exists():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_public(self.crl_path, make_crl(self.ca(), (), self.now()))
        return self.crl_path

    def revoked(self) -> list[int]:
        """The serial numbers the CRL lists."""
        from cryptography import x509
        crl = x509.load_pem_x509_crl(self.crl().read_bytes())
        return sorted(r.serial_number for r in crl)

    def revoke(self, name: str) -> int | None:
        """Put certificate ``name``'s serial on the CRL (signed again): from then on the
        server refuses that certificate even if a node of the same name is admitted again.
        Returns the serial, or None when there is no such certificate."""
        from cryptography import x509
        cert_path = self._paths(name, self.dir)[1]
        if not cert_path.exists():
            return None
        serial = x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number
        with open(self.dir / ".crl.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            serials = self.revoked()
            if serial not in serials:
                _write_public(self.crl_path, make_crl(self.ca(), [*serials, serial],
                                                      self.now()))
        return serial

    def forget(self, name: str) -> None:
        for path in self._paths(name, self.dir):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- rendering

def netmask(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr).netmask)


def server_config(*, ifname: str, directory: Path, port: int, hub_address: str,
                  overlay: str, mtu: int, keepalive: tuple[int, int] = KEEPALIVE,
                  cert: str = "hub") -> str:
    """The hub's server config: TLS with the project's CA (no static key) and its CRL
    (read again by the server when it changes), tun ``ifname``, topology subnet, only
    clients with a ccd file (which pushes their leased address)."""
    mask = netmask(overlay)
    return "\n".join([
        f"# elastic: the OpenVPN hub {ifname} (rendered by elastic; edits are overwritten)",
        f"cd {directory}",
        "mode server", "tls-server", "proto udp", f"port {port}",
        "dev-type tun", f"dev {ifname}", "topology subnet",
        f"ifconfig {hub_address} {mask}",
        'push "topology subnet"', f'push "route-gateway {hub_address}"',
        f"tun-mtu {mtu}",
        "ca ../ca.crt", f"cert {cert}.crt", f"key {cert}.key",
        "dh none", "remote-cert-tls client", "tls-version-min 1.2", f"crl-verify {CRL}",
        f"data-ciphers {CIPHERS}",
        "client-config-dir ccd", "ccd-exclusive",
        f"keepalive {keepalive[0]} {keepalive[1]}", "explicit-exit-notify 1",
        f"management {MANAGEMENT} unix",
        "verb 3", ""])


def ccd_entry(address: str, overlay: str) -> str:
    """A node's client-config-dir file: its leased overlay address."""
    ipaddress.ip_address(address)
    return f"ifconfig-push {address} {netmask(overlay)}\n"


@dataclass(frozen=True)
class Client:
    common_name: str
    real_address: str
    virtual_address: str
    bytes_received: int
    bytes_sent: int
    connected_since: int


def parse_status(text: str) -> list[Client]:
    """The management interface's ``status 3`` (tab-separated) answer: connected clients."""
    out = []
    header: list[str] = []
    for line in text.splitlines():
        f = line.rstrip("\r").split("\t")
        if f[0] == "HEADER" and len(f) > 1 and f[1] == "CLIENT_LIST":
            header = f[2:]
        elif f[0] == "CLIENT_LIST" and header:
            row = dict(zip(header, f[1:]))
            out.append(Client(row.get("Common Name", ""), row.get("Real Address", ""),
                              row.get("Virtual Address", ""),
                              int(row.get("Bytes Received") or 0),
                              int(row.get("Bytes Sent") or 0),
                              int(row.get("Connected Since (time_t)") or 0)))
    return out


@dataclass(frozen=True)
class OpenVPNEnrolment:
    """What a cloud node needs to bring its OpenVPN tunnel up
    (``contextualization/elastic-vpn.sh``). Holds the node's private key: never log it."""

    node: str
    address: str           # overlay address with prefix, 10.250.0.5/24
    ca: str                # PEM texts
    cert: str
    key: str = field(repr=False)
    hub_name: str = "hub"  # the hub certificate's CN (verify-x509-name)
    hub_endpoint: str = ""  # host:port (UDP)
    routes: tuple[str, ...] = ()
    mtu: int = 1420
    hub_fingerprint: str = ""   # SHA-256 of the hub's certificate (peer-fingerprint)

    def context(self) -> dict[str, str]:
        """The ``VPN_*`` context variables (they hold the private key: never log them)."""
        return {"VPN_TYPE": "openvpn", "VPN_ADDRESS": self.address,
                "VPN_HUB_ENDPOINT": self.hub_endpoint, "VPN_HUB_NAME": self.hub_name,
                "VPN_HUB_FINGERPRINT": self.hub_fingerprint,
                "VPN_ROUTES": " ".join(self.routes), "VPN_MTU": str(self.mtu),
                "VPN_CA": self.ca.strip(), "VPN_CERT": self.cert.strip(),
                "VPN_KEY": self.key.strip()}

    def __repr__(self) -> str:   # never the key
        return f"OpenVPNEnrolment({self.node}, {self.address}, hub {self.hub_endpoint})"


# ------------------------------------------------------------------------------- server

def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connection to the unix socket ``path``, however long the path is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    target, fd = str(path), None
    if len(os.fsencode(target)) > 100:     # sun_path: go through the directory's fd
        fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
        target = f"/proc/self/fd/{fd}/{path.name}"
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock


class OpenVPNServer:
    """The OpenVPN server of tun ``ifname`` in ``netns``: config ``directory/<ifname>.conf``,
    output and pid in ``log_dir``."""

    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 5.0

    def __init__(self, ifname: str, *, netns: str | None, directory: Path, log_dir: Path,
                 timeout: float = 10.0) -> None:
        if not ifname or len(ifname) > 15 or not _FILE_NAME.fullmatch(ifname):
            raise ValueError(f"a tun device name has 1-15 plain characters: {ifname!r}")
        self.ifname, self.netns = ifname, netns
        self.directory = Path(directory)
        self.log_dir = Path(log_dir)
        self.timeout = timeout
        self._child = None

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.ifname}.conf"

    @property
    def socket(self) -> Path:
        return self.directory / MANAGEMENT

    @staticmethod
    def pid_path(log_dir: Path, ifname: str) -> Path:
        return Path(log_dir) / f"openvpn-{ifname}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"openvpn-{self.ifname}.log"

    @staticmethod
    def running_pid(ifname: str, log_dir: Path) -> int | None:
        """The pid of the live server of ``ifname`` (from its pid file), else None."""
        try:
            pid = int(OpenVPNServer.pid_path(log_dir, ifname).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        argv = _cmdline(pid)
        mine = (argv and os.path.basename(argv[0]) == "openvpn"
                and any(a.endswith(f"/{ifname}.conf") for a in argv))
        return pid if mine and not net.is_gone(pid) else None

    def pid(self) -> int | None:
        return self.running_pid(self.ifname, self.log_dir)

    def exists(self) -> bool:
        return net.link_exists(self.ifname, ns=self.netns)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time starts or stops this server."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / f".{self.ifname}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def up(self, config: str) -> str:
        """The server running with ``config``: 'running' (as it was), 'started' (it was not,
        or it had died) or 'restarted' (its config changed)."""
        with self._locked():
            return self._up(config)

    def _up(self, config: str) -> str:
        changed = _write_public(self.config_path, config)
        pid = self.pid()
        how = "started"
        if pid is not None and not changed and self._wait_ready(pid, quiet=True):
            return "running"
        if pid is not None:
            self._stop(pid)
            how = "restarted" if changed else "started"
        self._start()
        return how

    def _wait_ready(self, pid: int, *, quiet: bool = False) -> bool:
        deadline = time.monotonic() + self.START_TIMEOUT
        while not (self.exists() and self.socket.exists()):
            if net.is_gone(pid):
                if quiet:
                    return False
                tail = self.log_file.read_text(errors="replace")[-800:] \
                    if self.log_file.exists() else ""
                raise PermanentError(f"openvpn {self.ifname} exited at start: {tail}")
            if time.monotonic() > deadline:
                if quiet:
                    return False
                raise TransientError(f"openvpn {self.ifname} made no tun device in "
                                     f"{self.START_TIMEOUT:g} s")
            time.sleep(0.02)
        return True

    def _start(self) -> None:
        self.socket.unlink(missing_ok=True)          # a dead server's
        self._child = spawn(["openvpn", "--config", self.config_path], log_file=self.log_file,
                            netns=self.netns)
        pid_file = self.pid_path(self.log_dir, self.ifname)
        _write_public(pid_file, f"{self._child.pid}\n")
        try:
            self._wait_ready(self._child.pid)
        except Exception:
            self._stop(self._child.pid)
            raise
        log.info("openvpn %s started (pid %d)", self.ifname, self._child.pid)

    def _stop(self, pid: int) -> None:
        self.stop_pid(pid, timeout=self.STOP_TIMEOUT)
        if self._child is not None and self._child.pid == pid:
            try:
                self._child.wait(1)
            except Exception:   # noqa: BLE001 - reaped already
                pass
            self._child = None

    @staticmethod
    def stop_pid(pid: int, *, timeout: float) -> None:
        """SIGTERM (the clients are told to reconnect), SIGKILL after ``timeout``."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if net.is_gone(pid):
                    return
                time.sleep(0.02)
        raise TransientError(f"openvpn (pid {pid}) did not exit")

    def down(self) -> None:
        """The server stopped, its tun device gone. Gone already is fine."""
        with self._locked():
            pid = self.pid()
            if pid is not None:
                self._stop(pid)
            self.stop(self.ifname, self.netns, self.log_dir)

    @staticmethod
    def stop(ifname: str, netns: str | None, log_dir: Path) -> None:
        """Stop the server of ``ifname`` found from its pid file; no tun device left."""
        pid = OpenVPNServer.running_pid(ifname, log_dir)
        if pid is not None:
            OpenVPNServer.stop_pid(pid, timeout=OpenVPNServer.STOP_TIMEOUT)
        OpenVPNServer.pid_path(log_dir, ifname).unlink(missing_ok=True)
        if netns is not None and not net.netns_exists(netns):
            return
        deadline = time.monotonic() + 3.0
        while net.link_exists(ifname, ns=netns):       # a tun goes with its process
            if time.monotonic() > deadline:
                run(["ip", "link", "del", "dev", ifname], netns=netns, timeout=10,
                    check=False)
                break
            time.sleep(0.02)

    # --------------------------------------------------------------------- management
    def manage(self, command: str, *, end: Callable[[str], bool] | None = None) -> str:
        """One command on the management socket; its answer (up to a SUCCESS:/ERROR: line,
        or until ``end(line)``)."""
        if "\n" in command or "\r" in command:
            raise ValueError("one management command, one line")
        done = end or (lambda ln: ln.startswith(("SUCCESS:", "ERROR:")))
        try:
            sock = _connect_unix(self.socket, self.timeout)
        except OSError as e:
            raise TransientError(f"openvpn {self.ifname}: its management socket does not "
                                 f"answer: {e}") from None
        lines: list[str] = []
        buf = b""
        try:
            sock.sendall(command.encode() + b"\n")
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                *whole, buf = buf.split(b"\n")
                for raw in whole:
                    line = raw.decode(errors="replace").rstrip("\r")
                    if line.startswith(">"):        # greeting, real-time notifications
                        continue
                    lines.append(line)
                    if done(line):
                        sock.sendall(b"quit\n")
                        return "\n".join(lines)
        except OSError as e:
            raise TransientError(f"openvpn {self.ifname}: management: {e}") from None
        finally:
            sock.close()
        raise TransientError(f"openvpn {self.ifname}: management closed before answering "
                             f"{command.split()[0]!r}")

    def kill_client(self, common_name: str) -> bool:
        """End the sessions of ``common_name``: True if there was one. No server: False."""
        _check(common_name, "common name")
        if self.pid() is None:
            return False
        answer = self.manage(f"kill {common_name}")
        return "SUCCESS:" in answer

    def clients(self) -> list[Client]:
        if self.pid() is None:
            return []
        return parse_status(self.manage("status 3", end=lambda ln: ln == "END"))
