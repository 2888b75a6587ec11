"""Pure renderers for libvirt: domain XML for a node, network XML for a private network, and
the names elastic gives to both. No libvirt import, no I/O but reading the templates.

    boot = tiny_boot("/var/lib/elastic/images/tiny")
    xml = domain_xml(node, domain_type="qemu", disk_path=overlay, context_path=iso,
                     bridges={"cluster": bridge_name(node.project, "cluster")},
                     console_log=log_path, boot=boot, project_source=project.source)

Every domain carries ``<metadata><elastic:node xmlns:elastic="https://elastic.invalid/xmlns/1">``
with the project, node, group, index, chunk, image, spec hash and spec file; read it back with
``domain_metadata(xml)`` (or libvirt's ``dom.metadata(VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)``)
to find elastic's domains on a host and tell whether their spec changed.

The templates are in ``elastic/adapters/templates/`` (jinja2, autoescaped, StrictUndefined).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from elastic.model import NodeSpec

__all__ = [
    "METADATA_NS", "METADATA_PREFIX", "DOMAIN_TYPES", "TINY_CMDLINE", "BootSpec", "tiny_boot",
    "domain_name", "domain_xml", "network_xml", "network_name", "bridge_name", "spec_hash",
    "DomainMetadata", "domain_metadata",
]

METADATA_NS = "https://elastic.invalid/xmlns/1"
METADATA_PREFIX = "elastic"
DOMAIN_TYPES = ("kvm", "qemu", "xen")
# What the tiny image expects (images/tiny/README.md): the serial console, reboot at once on a
# panic (with on_reboot=destroy a failed boot becomes a stopped VM), a quiet kernel.
TINY_CMDLINE = "console=ttyS0 panic=-1 quiet"
# A Xen PV guest has no emulated serial port: its console is the PV console hvc0.
TINY_CMDLINE_XEN_PV = "console=hvc0 panic=-1 quiet"
IFNAMSIZ = 15  # longest Linux interface name

TEMPLATES = Path(__file__).resolve().parent / "templates"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True)
class BootSpec:
    """How a domain boots: direct kernel boot (``kernel``, optional ``initrd`` and ``cmdline``)
    or, with no kernel, from its first disk. Paths are on the host that runs the domain."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""

    def __post_init__(self) -> None:
        if self.kernel is None and (self.initrd is not None or self.cmdline):
            raise ValueError("an initrd or a kernel command line needs a kernel (direct boot)")

    @classmethod
    def direct(cls, kernel: str | Path, initrd: str | Path | None = None,
               cmdline: str = TINY_CMDLINE) -> BootSpec:
        return cls(str(kernel), None if initrd is None else str(initrd), cmdline)

    @classmethod
    def disk(cls) -> BootSpec:
        return cls()

    @property
    def is_direct(self) -> bool:
        return self.kernel is not None


TINY_INITRD = "initramfs.cpio.lz4"


def tiny_kernel(image_dir: str | Path) -> Path | None:
    """The kernel of a tiny image built into ``image_dir``: ``vmlinux`` (uncompressed, started
    at its PVH entry point: under QEMU TCG the compressed ``vmlinuz`` spends 4-7 s of each
    boot unpacking itself) when the build made one, else ``vmlinuz``; None if neither."""
    for name in ("vmlinux", "vmlinuz"):
        if (Path(image_dir) / name).is_file():
            return Path(image_dir) / name
    return None


def tiny_boot(image_dir: str | Path, *, domain_type: str = "qemu", extra: str = "") -> BootSpec:
    """Direct kernel boot of the tiny image built by images/tiny/build.sh into ``image_dir``
    (``vmlinux`` or ``vmlinuz``, and ``initramfs.cpio.lz4``). ``extra`` is appended to the
    kernel command line, e.g. ``elastic.context_wait=5`` or ``elastic.autologin=1``."""
    d = Path(image_dir)
    cmdline = TINY_CMDLINE_XEN_PV if domain_type == "xen" else TINY_CMDLINE
    if extra:
        cmdline = f"{cmdline} {extra}"
    return BootSpec.direct(tiny_kernel(d) or d / "vmlinuz", d / TINY_INITRD, cmdline)


# ------------------------------------------------------------------------------ names
def domain_name(node: NodeSpec) -> str:
    """``<node>.<project>``, e.g. ``worker3.sge``; any character outside ``[A-Za-z0-9_.+-]``
    becomes ``-`` (spec names are already tame; this only guards libvirt and file names)."""
    return _SAFE_NAME.sub("-", node.fullname)


def bridge_name(project: str, network: str) -> str:
    """The Linux bridge of a private network: ``el-`` and 12 hex digits of a SHA-256 of
    ``project/network`` (15 characters, the kernel's limit). Stable across runs and hosts;
    a collision needs about 2**24 networks."""
    digest = hashlib.sha256(f"{project}/{network}".encode()).hexdigest()
    name = "el-" + digest[:IFNAMSIZ - 3]
    assert len(name) <= IFNAMSIZ
    return name


def network_name(project: str, network: str) -> str:
    """The libvirt network that owns a private network's bridge: ``elastic-<project>-<net>``."""
    return _SAFE_NAME.sub("-", f"elastic-{project}-{network}")


def spec_hash(node: NodeSpec) -> str:
    """A short, stable digest of everything the spec says about a node (not where it was
    written, nor where it may be placed): equal hashes mean an unchanged node."""
    data = dataclasses.asdict(node)
    for key in ("where", "requirements", "affinity", "anti_affinity"):
        data.pop(key, None)
    blob = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ rendering
@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _render(template: str, **values: Any) -> str:
    return _env().get_template(template).render(**values)


def domain_xml(node: NodeSpec, *, domain_type: str, disk_path: str, context_path: str | None,
               bridges: Mapping[str, str], console_log: str, boot: BootSpec,
               uuid: str | None = None, project_source: str = "",
               on_reboot: str = "restart", machine: str = "pc", arch: str = "x86_64",
               tcg_tb_cache_mib: int | None = 32) -> str:
    """The libvirt domain XML of ``node``.

    ``domain_type``: ``kvm``, ``qemu`` (TCG: ``qemu64`` CPU model and, unless
    ``tcg_tb_cache_mib`` is None, a smaller translation cache, ~20 MiB less RSS per guest) or
    ``xen`` (PV when ``boot`` is a direct kernel boot, HVM when it boots from disk).
    ``disk_path``: the node's qcow2 overlay (vda / xvda). ``context_path``: the context ISO,
    attached read-only as the second disk (vdb / xvdb), or None. ``bridges``: network name ->
    host bridge, one entry per network the node is on. ``console_log``: where the serial
    console is copied (appended; the console stays interactive through ``virsh console``).
    """
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"unknown domain type {domain_type!r} (one of {', '.join(DOMAIN_TYPES)})")
    if on_reboot not in ("destroy", "restart", "preserve", "rename-restart"):
        raise ValueError(f"bad on_reboot {on_reboot!r}")
    for what, path in (("disk_path", disk_path), ("console_log", console_log),
                       ("context_path", context_path), ("kernel", boot.kernel),
                       ("initrd", boot.initrd)):
        if path is not None and not path.startswith("/"):
            raise ValueError(f"{what} must be an absolute path, not {path!r}")
    if node.memory <= 0 or node.vcpus <= 0:
        raise ValueError(f"{node.fullname}: memory and vcpus must be positive")
    xen = domain_type == "xen"
    nics = []
    for iface in node.interfaces:
        try:
            bridge = bridges[iface.network]
        except KeyError:
            raise ValueError(f"{node.fullname}: no bridge given for network {iface.network!r} "
                             f"(interface {iface.name})") from None
        # Xen picks its own NIC (netfront, or an emulated one plus netfront in HVM).
        nics.append({"mac": iface.mac.lower(), "bridge": bridge,
                     "model": None if xen else iface.model})
    return _render(
        "domain.xml.j2",
        node=node, name=domain_name(node), uuid=uuid, domain_type=domain_type, ns=METADATA_NS,
        spec_hash=spec_hash(node), project_source=project_source, boot=boot,
        xen_pv=xen and boot.is_direct, arch=arch, machine=machine, on_reboot=on_reboot,
        tb_cache=tcg_tb_cache_mib if domain_type == "qemu" else None,
        disk_path=disk_path, context_path=context_path,
        disk_prefix="xvd" if xen else "vd", disk_bus="xen" if xen else "virtio",
        nics=nics, console_log=console_log,
    )


def network_xml(name: str, bridge: str) -> str:
    """An isolated libvirt network that makes the Linux bridge ``bridge`` (no forward, no IP,
    no DHCP): a private network's switch, defined on the host of its chunk."""
    if not bridge or len(bridge) > IFNAMSIZ or "/" in bridge or any(c.isspace() for c in bridge):
        raise ValueError(f"bad bridge name {bridge!r} (at most {IFNAMSIZ} characters)")
    if not name:
        raise ValueError("a network needs a name")
    return _render("network.xml.j2", name=name, bridge=bridge)


# ------------------------------------------------------------------------------ reading back
@dataclass(frozen=True)
class DomainMetadata:
    project: str
    name: str
    group: str
    chunk: str
    spec_hash: str
    source: str
    image: str = ""
    index: int | None = None


def domain_metadata(xml: str) -> DomainMetadata | None:
    """elastic's metadata from a domain XML (or from the ``<elastic:node>`` element alone, as
    ``dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)`` returns it); None when
    the domain is not elastic's."""
    root = ET.fromstring(xml)
    tag = f"{{{METADATA_NS}}}node"
    if root.tag == "domain":
        el = root.find(f"./metadata/{tag}")
        ns = f"{{{METADATA_NS}}}"
    elif root.tag in (tag, "node"):
        # libvirt's metadata() hands the element back without its namespace
        el, ns = root, ("" if root.tag == "node" else f"{{{METADATA_NS}}}")
    else:
        return None
    if el is None:
        return None

    def text(field: str) -> str:
        child = el.find(ns + field)
        return (child.text or "") if child is not None else ""

    index = text("index")
    return DomainMetadata(project=text("project"), name=text("name"), group=text("group"),
                          chunk=text("chunk"), spec_hash=text("spec-hash"), source=text("source"),
                          image=text("image"), index=int(index) if index.isdigit() else None)
