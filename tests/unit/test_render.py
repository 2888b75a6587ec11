"""elastic/adapters/render.py: domain and network XML for libvirt.

Golden files in tests/data/golden/ are compared byte for byte; after an intended change,
rewrite them with ``ELASTIC_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and review the
diff. Every rendered XML is also parsed, checked against libvirt's RelaxNG schemas with
virt-xml-validate (Debian packages libvirt-clients and libxml2-utils) and defined on
libvirt's test:///default driver (libvirt-python), where those are present.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from elastic.adapters.render import (
    METADATA_NS,
    BootSpec,
    bridge_name,
    domain_metadata,
    domain_name,
    domain_xml,
    network_name,
    network_xml,
    spec_hash,
    tiny_boot,
    tiny_kernel,
)
from elastic.model import Interface, NodeSpec, Project, Route
from elastic.spec import load_project

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
SGE = REPO / "examples" / "sge" / "cluster.yaml"
NS = {"elastic": METADATA_NS}

UUID = "4b3c9d1e-1f0a-4c55-9a7e-2d1c3b4a5f60"
IMAGES = "/var/lib/elastic/images/tiny"
DISK = "/var/lib/elastic/sge/head.qcow2"
ISO = "/var/lib/elastic/sge/head.context.iso"
LOG = "/var/log/elastic/sge/head.console.log"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ELASTIC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with ELASTIC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (ELASTIC_UPDATE_GOLDEN=1)"


@pytest.fixture(scope="module")
def sge() -> Project:
    return load_project(SGE)


@pytest.fixture(scope="module")
def head(sge) -> NodeSpec:
    return sge.node("head")


def render(node: NodeSpec, domain_type: str, **kw) -> str:
    args = dict(domain_type=domain_type, disk_path=DISK, context_path=ISO,
                bridges={"cluster": bridge_name(node.project, "cluster")}, console_log=LOG,
                boot=tiny_boot(IMAGES, domain_type=domain_type), uuid=UUID,
                project_source="examples/sge/cluster.yaml")
    args.update(kw)
    return domain_xml(node, **args)


def two_nic_node(head: NodeSpec) -> NodeSpec:
    extra = Interface("eth1", "storage", "02:00:0a:15:00:07", "10.21.0.7", 24, None,
                      (Route("10.50.0.0/16", "10.21.0.254"),))
    return dataclasses.replace(head, interfaces=(*head.interfaces, extra))


# ------------------------------------------------------------------ schema and test driver
def _validator() -> str | None:
    if shutil.which("virt-xml-validate") and shutil.which("xmllint"):
        return None
    return "virt-xml-validate or xmllint missing (Debian packages libvirt-clients, libxml2-utils)"


def xml_validate(tmp_path: Path, text: str, schema: str) -> None:
    reason = _validator()
    if reason:
        pytest.skip(reason)
    f = tmp_path / f"{schema}.xml"
    f.write_text(text)
    r = subprocess.run(["virt-xml-validate", str(f), schema], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def test_conn():
    libvirt = pytest.importorskip("libvirt")
    libvirt.registerErrorHandler(lambda *_: None, None)
    # test:///default is one driver per process: undo what a failed test may have left
    conn = libvirt.open("test:///default")
    yield conn
    for dom in conn.listAllDomains():
        if dom.name() == "head.sge":
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for net in conn.listAllNetworks():
        if net.name() == "elastic-sge-cluster":
            if net.isActive():
                net.destroy()
            net.undefine()
    conn.close()


# ------------------------------------------------------------------ golden files
@pytest.mark.parametrize("domain_type", ["kvm", "qemu", "xen"])
def test_domain_golden(head, domain_type) -> None:
    golden(f"domain-{domain_type}.xml", render(head, domain_type))


def test_network_golden() -> None:
    golden("network.xml", network_xml(network_name("sge", "cluster"), bridge_name("sge", "cluster")))


# ------------------------------------------------------------------ what the domain says
@pytest.mark.parametrize("domain_type", ["kvm", "qemu", "xen"])
def test_domain_contents(head, domain_type) -> None:
    root = ET.fromstring(render(head, domain_type))
    assert root.tag == "domain" and root.get("type") == domain_type
    assert root.findtext("name") == "head.sge" == domain_name(head)
    assert root.findtext("uuid") == UUID
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "256"
    assert root.findtext("vcpu") == "1"
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_crash") == "destroy"
    assert root.findtext("on_reboot") == "restart"

    md = root.find("metadata/elastic:node", NS)
    assert md is not None
    assert {c.tag.split("}")[1]: c.text for c in md} == {
        "project": "sge", "name": "head", "group": "head", "chunk": "cluster", "image": "tiny",
        "spec-hash": spec_hash(head), "source": "examples/sge/cluster.yaml"}

    disks = root.findall("devices/disk")
    assert len(disks) == 2
    prefix, bus = ("xvd", "xen") if domain_type == "xen" else ("vd", "virtio")
    assert disks[0].find("driver").attrib == {"name": "qemu", "type": "qcow2"}
    assert disks[0].find("source").get("file") == DISK
    assert disks[0].find("target").attrib == {"dev": prefix + "a", "bus": bus}
    assert disks[0].find("readonly") is None
    assert disks[1].find("driver").attrib == {"name": "qemu", "type": "raw"}
    assert disks[1].find("source").get("file") == ISO
    assert disks[1].find("target").attrib == {"dev": prefix + "b", "bus": bus}
    assert disks[1].find("readonly") is not None

    (nic,) = root.findall("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("mac").get("address") == "02:00:0a:14:00:02"
    assert nic.find("source").get("bridge") == bridge_name("sge", "cluster")
    model = nic.find("model")
    assert (model is None) if domain_type == "xen" else (model.get("type") == "virtio")

    # the console is a pty (virsh console) and is copied to the log file, appended
    if domain_type == "xen":  # PV: no serial port, the PV console
        assert root.find("devices/serial") is None
        log = root.find("devices/console/log")
        assert root.find("devices/console/target").get("type") == "xen"
    else:
        serial = root.find("devices/serial")
        assert serial.get("type") == "pty"
        log = serial.find("log")
        assert root.find("devices/console").get("type") == "pty"
        assert root.find("devices/console/target").get("type") == "serial"
    assert log.attrib == {"file": LOG, "append": "on"}


@pytest.mark.parametrize("domain_type", ["kvm", "qemu"])
def test_kvm_and_qemu_os_cpu_features(head, domain_type) -> None:
    root = ET.fromstring(render(head, domain_type))
    os_ = root.find("os")
    assert os_.find("type").text == "hvm"
    assert os_.find("type").attrib == {"arch": "x86_64", "machine": "pc"}
    assert os_.findtext("kernel") == f"{IMAGES}/vmlinuz"
    assert os_.findtext("initrd") == f"{IMAGES}/initramfs.cpio.lz4"
    assert "console=ttyS0" in os_.findtext("cmdline").split()
    assert root.find("features/acpi") is not None and root.find("features/apic") is not None
    cpu = root.find("cpu")
    if domain_type == "qemu":
        # TCG: no host CPU to pass through
        assert cpu.get("mode") == "custom" and cpu.findtext("model") == "qemu64"
        assert root.findtext("features/tcg/tb-cache") == "32"
    else:
        assert cpu.get("mode") == "host-model"
        assert root.find("features/tcg") is None


def test_qemu_tb_cache_can_be_left_to_qemu(head) -> None:
    root = ET.fromstring(render(head, "qemu", tcg_tb_cache_mib=None))
    assert root.find("features/tcg") is None


def test_xen_pv_and_hvm(head) -> None:
    pv = ET.fromstring(render(head, "xen"))
    assert pv.find("os/type").text == "linux"
    assert pv.find("os/type").get("machine") == "xenpv"
    assert "console=hvc0" in pv.findtext("os/cmdline").split()
    assert pv.find("features") is None and pv.find("cpu") is None

    hvm = ET.fromstring(render(head, "xen", boot=BootSpec.disk()))
    assert hvm.find("os/type").text == "hvm"
    assert hvm.find("os/type").get("machine") == "xenfv"
    assert hvm.find("os/boot").get("dev") == "hd"
    assert hvm.find("os/kernel") is None
    assert hvm.find("features/pae") is not None
    assert hvm.find("devices/serial/log").get("append") == "on"


def test_disk_boot_and_no_context(head) -> None:
    root = ET.fromstring(render(head, "qemu", boot=BootSpec.disk(), context_path=None))
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None and root.find("os/cmdline") is None
    assert len(root.findall("devices/disk")) == 1


def test_uuid_is_optional(head) -> None:
    assert ET.fromstring(render(head, "qemu", uuid=None)).find("uuid") is None


def test_one_interface_per_nic_in_order(head) -> None:
    node = two_nic_node(head)
    xml = render(node, "qemu", bridges={"cluster": "el-a", "storage": "br-storage"})
    nics = ET.fromstring(xml).findall("devices/interface")
    assert [(n.find("mac").get("address"), n.find("source").get("bridge")) for n in nics] == [
        ("02:00:0a:14:00:02", "el-a"), ("02:00:0a:15:00:07", "br-storage")]


def test_a_missing_bridge_is_an_error(head) -> None:
    with pytest.raises(ValueError, match="no bridge given for network 'storage'"):
        render(two_nic_node(head), "qemu")


def test_values_are_escaped(head) -> None:
    xml = render(head, "qemu", project_source="specs/<a&b>'q'\".yaml",
                 console_log="/var/log/it's & <here>.log")
    root = ET.fromstring(xml)
    assert root.findtext("metadata/elastic:node/elastic:source", namespaces=NS) == \
        "specs/<a&b>'q'\".yaml"
    assert root.find("devices/serial/log").get("file") == "/var/log/it's & <here>.log"


def test_bad_arguments(head) -> None:
    with pytest.raises(ValueError, match="unknown domain type"):
        render(head, "lxc")
    with pytest.raises(ValueError, match="absolute"):
        render(head, "qemu", disk_path="head.qcow2")
    with pytest.raises(ValueError, match="needs a kernel"):
        BootSpec(initrd="/x")
    with pytest.raises(ValueError, match="on_reboot"):
        render(head, "qemu", on_reboot="explode")


def test_boot_specs() -> None:
    b = tiny_boot("/img", extra="elastic.autologin=1")
    assert b == BootSpec("/img/vmlinuz", "/img/initramfs.cpio.lz4",
                         "console=ttyS0 panic=-1 quiet elastic.autologin=1")
    assert b.is_direct and not BootSpec.disk().is_direct


def test_the_uncompressed_kernel_is_booted_when_the_build_made_one(tmp_path) -> None:
    assert tiny_kernel(tmp_path) is None
    (tmp_path / "vmlinuz").write_bytes(b"bzImage")
    assert tiny_boot(tmp_path).kernel == str(tmp_path / "vmlinuz")
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    assert tiny_kernel(tmp_path) == tmp_path / "vmlinux"
    assert tiny_boot(tmp_path).kernel == str(tmp_path / "vmlinux")


# ------------------------------------------------------------------ names
def test_bridge_name_is_short_stable_and_distinct() -> None:
    names = {bridge_name(p, n) for p in ("sge", "web", "a-very-long-project-name-indeed")
             for n in ("cluster", "storage", "x")}
    assert len(names) == 9
    for name in names:
        assert len(name) <= 15 and name.startswith("el-")
        assert all(c.isalnum() or c == "-" for c in name)
    assert bridge_name("sge", "cluster") == bridge_name("sge", "cluster") == "el-301bbbe68db1"


def test_domain_name_is_made_safe(head) -> None:
    assert domain_name(head) == "head.sge"
    odd = dataclasses.replace(head, name="a/b c", project="p'q")
    assert domain_name(odd) == "a-b-c.p-q"


def test_spec_hash_follows_the_spec_not_where_it_was_written(head) -> None:
    moved = dataclasses.replace(head, where=None)
    assert spec_hash(moved) == spec_hash(head)
    assert spec_hash(dataclasses.replace(head, memory=512)) != spec_hash(head)


def test_metadata_reads_back(head) -> None:
    md = domain_metadata(render(head, "qemu"))
    assert md is not None
    assert (md.project, md.name, md.group, md.chunk, md.image, md.index) == \
        ("sge", "head", "head", "cluster", "tiny", None)
    assert md.spec_hash == spec_hash(head) and md.source == "examples/sge/cluster.yaml"
    assert domain_metadata("<domain type='qemu'><name>other</name></domain>") is None


def test_metadata_of_a_counted_worker(sge) -> None:
    w = sge.node("worker3")
    md = domain_metadata(render(w, "qemu"))
    assert (md.name, md.group, md.index) == ("worker3", "worker", 3)


# ------------------------------------------------------------------ network
def test_network_is_an_isolated_bridge() -> None:
    root = ET.fromstring(network_xml("elastic-sge-cluster", "el-301bbbe68db1"))
    assert root.tag == "network"
    assert root.findtext("name") == "elastic-sge-cluster"
    assert root.find("bridge").attrib == {"name": "el-301bbbe68db1", "stp": "off", "delay": "0"}
    assert root.find("forward") is None and root.find("ip") is None  # no NAT, no dnsmasq


def test_network_rejects_bad_bridge_names() -> None:
    for bad in ("", "a-name-longer-than-15", "has space"):
        with pytest.raises(ValueError):
            network_xml("n", bad)


# ------------------------------------------------------------------ libvirt's own checks
def _all_domains(head: NodeSpec) -> dict[str, str]:
    return {
        "kvm": render(head, "kvm"),
        "qemu": render(head, "qemu"),
        "xen-pv": render(head, "xen"),
        "xen-hvm": render(head, "xen", boot=BootSpec.disk()),
        "qemu-disk-boot": render(head, "qemu", boot=BootSpec.disk(), context_path=None),
        "qemu-2nic": render(two_nic_node(head), "qemu",
                            bridges={"cluster": "el-a", "storage": "br-storage"}),
    }


@pytest.mark.parametrize("variant", ["kvm", "qemu", "xen-pv", "xen-hvm", "qemu-disk-boot",
                                     "qemu-2nic"])
def test_domain_validates_against_libvirt_schema(head, tmp_path, variant) -> None:
    xml_validate(tmp_path, _all_domains(head)[variant], "domain")


def test_network_validates_against_libvirt_schema(tmp_path) -> None:
    xml_validate(tmp_path, network_xml("elastic-sge-cluster", "el-301bbbe68db1"), "network")


@pytest.mark.parametrize("variant", ["kvm", "qemu", "xen-pv", "xen-hvm", "qemu-disk-boot",
                                     "qemu-2nic"])
def test_domain_defines_on_the_test_driver(head, test_conn, variant) -> None:
    import libvirt

    xml = _all_domains(head)[variant]
    dom = test_conn.defineXML(xml)
    assert dom.name() == "head.sge"
    assert dom.UUIDString() == UUID
    # libvirt hands our metadata back (without its namespace prefix), and we can read it
    md = domain_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
    assert md is not None and (md.project, md.name) == ("sge", "head")
    assert domain_metadata(dom.XMLDesc()) == md
    live = ET.fromstring(dom.XMLDesc())
    assert live.find("devices/interface/mac").get("address") == "02:00:0a:14:00:02"
    assert live.find("memory").text == str(256 * 1024)  # KiB
    dom.create()
    assert dom.isActive()
    dom.destroy()
    dom.undefine()


def test_network_defines_and_starts_on_the_test_driver(test_conn) -> None:
    net = test_conn.networkDefineXML(network_xml("elastic-sge-cluster", "el-301bbbe68db1"))
    net.create()
    assert net.isActive() and net.bridgeName() == "el-301bbbe68db1"
    root = ET.fromstring(net.XMLDesc())
    assert root.find("forward") is None and root.find("ip") is None
    net.destroy()
    net.undefine()
