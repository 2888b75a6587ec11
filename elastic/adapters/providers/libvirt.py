"""libvirt hosts: storage (base images, qcow2 overlays, context ISOs), private bridges,
domains, console logs — all through the libvirt URI, so a remote host needs nothing but
libvirtd (no SSH, no shared file system).

Each public method is idempotent: creating what exists or removing what is gone is fine.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from elastic.adapters.render import METADATA_NS, domain_metadata
from elastic.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

POOL = "elastic"
POOL_PATH = "/var/lib/libvirt/images/elastic"
CONNECT_TIMEOUT = 20.0
_CHUNK = 1 << 20
# a dropped connection between the two libvirtds: the migration did not happen
_DROPPED_CONNECTION = ("socket is closed", "Cannot recv data", "Connection reset",
                       "End of file while reading data")


def _libvirt():  # imported lazily: only hosts need it, not the CLI's other commands
    try:
        import libvirt
    except ImportError:
        raise PermanentError("libvirt-python is not installed (run scripts/setup.sh)") from None
    libvirt.registerErrorHandler(lambda *_: None, None)   # errors come as exceptions, not stderr
    return libvirt


class HostUnreachable(TransientError):
    pass


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    active: bool
    state: int
    memory_mib: int
    vcpus: int
    project: str | None
    node: str | None
    cpu_time_ns: int


@dataclass(frozen=True)
class HostInfo:
    memory_mib: int
    vcpus: int
    free_mib: int
    hostname: str


def _open(uri: str, timeout: float):
    libvirt = _libvirt()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(libvirt.open, uri)
    try:
        conn = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise HostUnreachable(f"{uri}: libvirt did not answer in {timeout:g} s") from None
    except libvirt.libvirtError as e:
        raise HostUnreachable(f"{uri}: {e.get_error_message()}") from None
    finally:
        pool.shutdown(wait=False)
    try:
        conn.setKeepAlive(5, 3)   # a dead connection fails calls in ~15 s instead of hanging
    except libvirt.libvirtError:
        pass
    return conn


class LibvirtHost:
    """One hypervisor host, reached through its libvirt URI."""

    def __init__(self, name: str, uri: str, *, timeout: float = CONNECT_TIMEOUT) -> None:
        self.name = name
        self.uri = uri
        self.timeout = timeout
        self._conn = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ connection
    @property
    def conn(self):
        with self._lock:
            if self._conn is None or not self._alive():
                self._conn = self._connect()
            return self._conn

    @retry(retry=retry_if_exception_type(HostUnreachable), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
    def _connect(self):
        return _open(self.uri, self.timeout)

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except Exception:
            return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    pass
                self._conn = None

    def info(self) -> HostInfo:
        model, memory, cpus, *_ = self.conn.getInfo()
        return HostInfo(memory_mib=int(memory), vcpus=int(cpus),
                        free_mib=int(self.conn.getFreeMemory() // (1 << 20)),
                        hostname=self.conn.getHostname())

    # ---------------------------------------------------------------------- storage
    def pool(self):
        libvirt = _libvirt()
        try:
            pool = self.conn.storagePoolLookupByName(POOL)
        except libvirt.libvirtError:
            xml = (f"<pool type='dir'><name>{POOL}</name>"
                   f"<target><path>{POOL_PATH}</path></target></pool>")
            pool = self.conn.storagePoolDefineXML(xml, 0)
            pool.build(0)
            pool.setAutostart(1)
        if not pool.isActive():
            pool.create(0)
        return pool

    def volume(self, name: str):
        libvirt = _libvirt()
        try:
            return self.pool().storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def volume_path(self, name: str) -> str:
        return f"{POOL_PATH}/{name}"

    def upload(self, name: str, local: Path, fmt: str = "raw") -> str:
        """A volume with the bytes of ``local`` (kept if already there with the same size)."""
        size = local.stat().st_size
        vol = self.volume(name)
        if vol is not None and vol.info()[1] == size:
            return vol.path()
        if vol is not None:
            vol.delete(0)
        xml = (f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
               f"<target><format type='{fmt}'/></target></volume>")
        vol = self.pool().createXML(xml, 0)
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with open(local, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    stream.send(chunk)
            stream.finish()
        except Exception:
            try:
                stream.abort()
            finally:
                vol.delete(0)
            raise
        return vol.path()

    def upload_image_file(self, local: Path, fmt: str = "raw") -> str:
        """Upload a base file under a content-addressed name, so a changed image is a new
        volume and overlays made on the old one keep working."""
        digest = _file_digest(local)[:12]
        return self.upload(f"base-{digest}-{local.name}", local, fmt)

    def overlay(self, name: str, backing: str, capacity_mib: int | None = None) -> str:
        """A qcow2 overlay of ``backing`` (made once; an existing one is kept)."""
        vol = self.volume(name)
        if vol is not None:
            return vol.path()
        try:   # never smaller than the base: that would cut its file system off
            base_bytes = self.conn.storageVolLookupByPath(backing).info()[1]
        except Exception:
            base_bytes = 0
        want = max((capacity_mib or 0) << 20, base_bytes)
        cap = f"<capacity unit='bytes'>{want}</capacity>"
        xml = (f"<volume><name>{name}</name>{cap}<target><format type='qcow2'/></target>"
               f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>"
               f"</volume>")
        return self.pool().createXML(xml, 0).path()

    def delete_volume(self, name: str) -> bool:
        vol = self.volume(name)
        if vol is None:
            self.pool().refresh(0)
            vol = self.volume(name)
            if vol is None:
                return False
        vol.delete(0)
        return True

    def read_volume(self, name: str, limit: int = 4 << 20) -> bytes:
        """The bytes of a volume (e.g. a console log qemu writes into the pool)."""
        pool = self.pool()
        vol = self.volume(name)
        if vol is None:
            pool.refresh(0)
            vol = self.volume(name)
            if vol is None:
                return b""
        else:
            pool.refresh(0)    # capacity of a growing log is read at refresh
            vol = self.volume(name)
        stream = self.conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        out = bytearray()
        while True:
            data = stream.recv(_CHUNK)
            if not data or isinstance(data, int):
                if data == -2:     # would block
                    continue
                break
            out += data
            if len(out) >= limit:
                stream.abort()
                return bytes(out)
        stream.finish()
        return bytes(out)

    # --------------------------------------------------------------------- networks
    def ensure_network(self, name: str, xml: str) -> None:
        libvirt = _libvirt()
        try:
            net = self.conn.networkLookupByName(name)
        except libvirt.libvirtError:
            net = self.conn.networkDefineXML(xml)
        if not net.isActive():
            net.create()
        net.setAutostart(1)

    def remove_network(self, name: str) -> bool:
        libvirt = _libvirt()
        try:
            net = self.conn.networkLookupByName(name)
        except libvirt.libvirtError:
            return False
        if net.isActive():
            net.destroy()
        net.undefine()
        return True

    def networks(self) -> list[str]:
        return [n.name() for n in self.conn.listAllNetworks(0)]

    # ---------------------------------------------------------------------- domains
    def domain(self, name: str):
        libvirt = _libvirt()
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return None

    def define(self, xml: str):
        return self.conn.defineXML(xml)

    def start(self, name: str) -> None:
        dom = self.domain(name)
        if dom is None:
            raise PermanentError(f"{self.name}: no domain {name}")
        if not dom.isActive():
            dom.create()

    def destroy(self, name: str) -> None:
        libvirt = _libvirt()
        dom = self.domain(name)
        if dom is not None and dom.isActive():
            try:
                dom.destroy()
            except libvirt.libvirtError:
                if dom.isActive():
                    raise

    def undefine(self, name: str) -> None:
        dom = self.domain(name)
        if dom is None:
            return
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    def shutdown(self, name: str, timeout: float) -> bool:
        """ACPI power button, then wait; False if it did not stop in time."""
        libvirt = _libvirt()
        dom = self.domain(name)
        if dom is None or not dom.isActive():
            return True
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            return not dom.isActive()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return True
            time.sleep(0.25)
        return False

    def domains(self) -> list[DomainInfo]:
        """Every domain on the host, with elastic's metadata when it has some."""
        libvirt = _libvirt()
        out = []
        for dom in self.conn.listAllDomains(0):
            project = node = None
            try:
                meta = domain_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                                    METADATA_NS, 0))
                if meta is not None:
                    project, node = meta.project, meta.name
            except libvirt.libvirtError:
                pass
            state, maxmem, mem, vcpus, cpu_time = dom.info()
            out.append(DomainInfo(dom.name(), dom.UUIDString(), bool(dom.isActive()), state,
                                  int(maxmem // 1024), int(vcpus), project, node, int(cpu_time)))
        return out

    def migrate(self, name: str, dest_uri: str, *, copy_disks: tuple[str, ...] = ("vda",),
                timeout: float = 300.0) -> float:
        """Live-migrate a domain to the libvirtd at ``dest_uri`` (peer to peer; the source
        host's libvirtd connects to it). The disks in ``copy_disks`` are copied while the
        guest runs (their backing files and the other disks must already be there, at the
        same paths). Returns the seconds it took."""
        libvirt = _libvirt()
        dom = self.domain(name)
        if dom is None:
            raise PermanentError(f"{self.name}: no domain {name} to migrate")
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
                 libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        params: dict = {}
        if copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(copy_disks)
        t0 = time.monotonic()
        try:
            dom.migrateSetMaxDowntime(300, 0)       # ms of pause allowed at the switch-over
        except libvirt.libvirtError:
            pass
        done = threading.Event()

        def watchdog() -> None:
            if not done.wait(timeout):
                try:
                    dom.abortJob()
                except libvirt.libvirtError:
                    pass

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as e:
            message = f"migration of {name} from {self.name} to {dest_uri} failed: " \
                      f"{e.get_error_message()}"
            still_here = self.domain(name) is not None
            if still_here and any(t in str(e) for t in _DROPPED_CONNECTION):
                raise TransientError(message) from None   # the guest stayed: safe to retry
            raise PermanentError(message) from None
        finally:
            done.set()
        return time.monotonic() - t0


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def hosts_connected(hosts: list[LibvirtHost]) -> Iterator[list[LibvirtHost]]:
    try:
        yield hosts
    finally:
        for h in hosts:
            h.close()
