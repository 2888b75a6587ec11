"""OpenVPN's pure parts (elastic/adapters/openvpn.py): the CA and certificates, the server's
config and ccd files, the management interface's status; and the OpenVPN hub's bookkeeping
against a real state DB and a fake server."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from elastic.adapters import openvpn
from elastic.adapters.openvpn import (
    PKI, OpenVPNEnrolment, ccd_entry, common_name, fingerprint, issue, make_ca, parse_status,
    server_config,
)
from elastic.clock import FakeClock
from elastic.engine import vpnhub
from elastic.engine.vpnhub import Hub, OpenVPNHub, make_hub, openvpn_ifname
from elastic.errors import PermanentError
from elastic.lifecycle import State, path
from elastic.spec.schema import VpnBlock
from elastic.state import Store

NOW = 1_750_000_000.0


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# ------------------------------------------------------------------------------- PKI

def test_a_node_certificate_is_signed_by_the_ca_for_its_name_with_an_ec_key():
    ca = make_ca("elastic p CA", NOW)
    node = issue(ca, "worker5", NOW)
    hub = issue(ca, "hub-ec2", NOW, server=True)
    ca_cert, node_cert, hub_cert = cert(ca.cert_pem), cert(node.cert_pem), cert(hub.cert_pem)
    node_cert.verify_directly_issued_by(ca_cert)
    hub_cert.verify_directly_issued_by(ca_cert)
    ca_cert.verify_directly_issued_by(ca_cert)                       # self-signed
    with pytest.raises(Exception):                                   # noqa: B017
        node_cert.verify_directly_issued_by(cert(make_ca("other", NOW).cert_pem))
    assert common_name(node.cert_pem) == "worker5" and common_name(hub.cert_pem) == "hub-ec2"
    assert node_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker5"
    key = load_pem_private_key(node.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key().public_numbers() == node_cert.public_key().public_numbers()
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not node_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # remote-cert-tls: the hub is a TLS server, a node a TLS client, never the other way
    eku = lambda c: list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)  # noqa: E731
    assert eku(node_cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert eku(hub_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # valid from an hour before now (clock skew), for years
    assert node_cert.not_valid_before_utc.timestamp() == NOW - 3600
    assert node_cert.not_valid_after_utc.timestamp() > NOW + 365 * 86400
    assert len(fingerprint(ca.cert_pem).split(":")) == 32


def test_the_three_pem_texts_fit_in_two_kib_and_no_repr_shows_a_key():
    ca = make_ca("elastic some-long-project-name CA", NOW)
    node = issue(ca, "worker-with-a-long-name-123", NOW)
    assert len(ca.cert_pem) + len(node.cert_pem) + len(node.key_pem) < 2048
    e = OpenVPNEnrolment("worker5", "10.250.0.5/24", ca.cert_pem, node.cert_pem,
                         node.key_pem, "hub-ec2", "203.0.113.7:1194", ("10.77.0.0/24",), 1420)
    body = node.key_pem.split("\n")[1]
    assert body not in repr(e) and body not in str(e) and body not in repr(node)
    ctx = e.context()
    assert ctx["VPN_KEY"] == node.key_pem.strip() and ctx["VPN_CERT"] == node.cert_pem.strip()
    assert {k: ctx[k] for k in ("VPN_TYPE", "VPN_ADDRESS", "VPN_HUB_ENDPOINT", "VPN_HUB_NAME",
                                "VPN_ROUTES", "VPN_MTU")} == {
        "VPN_TYPE": "openvpn", "VPN_ADDRESS": "10.250.0.5/24",
        "VPN_HUB_ENDPOINT": "203.0.113.7:1194", "VPN_HUB_NAME": "hub-ec2",
        "VPN_ROUTES": "10.77.0.0/24", "VPN_MTU": "1420"}
    assert sum(len(v) for v in ctx.values()) < 2200


def test_the_pki_makes_each_key_once_0600_and_reissues_a_lost_certificate(tmp_path):
    clock = FakeClock(NOW)
    pki = PKI(tmp_path / "vpn" / "p" / "openvpn", "ec2", now=clock.now, ca_name="elastic p CA")
    ca = pki.ca()
    node = pki.get("node-worker1", cn="worker1")
    assert pki.get("node-worker1", cn="worker1") == node and pki.ca() == ca   # made once
    for p in (pki.root / "ca.key", pki.dir / "node-worker1.key"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    for d in (pki.root, pki.dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert pki.has("node-worker1")
    (pki.dir / "node-worker1.crt").unlink()           # a crash between key and certificate
    again = pki.get("node-worker1", cn="worker1")
    assert again.key_pem == node.key_pem and again.cert_pem != node.cert_pem
    cert(again.cert_pem).verify_directly_issued_by(cert(ca.cert_pem))
    # revoked: on a CRL the CA signed, valid until the CA's end (OpenSSL refuses everyone
    # once a CRL is past its next update)
    from cryptography import x509
    serial = pki.revoke("node-worker1")
    assert serial == cert(again.cert_pem).serial_number
    assert pki.revoke("node-worker1") == serial and pki.revoked() == [serial]   # once
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.is_signature_valid(cert(ca.cert_pem).public_key())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.next_update_utc == cert(ca.cert_pem).not_valid_after_utc
    pki.forget("node-worker1")
    assert not pki.has("node-worker1") and not (pki.dir / "node-worker1.crt").exists()
    assert pki.revoke("node-worker1") is None and pki.revoked() == [serial]
    with pytest.raises(ValueError):
        pki.get("../escape", cn="x")


# ------------------------------------------------------------------------- rendering

def test_the_server_config_admits_only_ccd_clients_of_the_ca(tmp_path):
    text = server_config(ifname="eov1a2b3c4d", directory=tmp_path, port=1194,
                         hub_address="10.250.0.1", overlay="10.250.0.0/24", mtu=1420)
    lines = text.splitlines()
    assert lines[0].startswith("#") and lines[1] == f"cd {tmp_path}"
    for want in ["mode server", "tls-server", "proto udp", "port 1194", "dev-type tun",
                 "dev eov1a2b3c4d", "topology subnet", "ifconfig 10.250.0.1 255.255.255.0",
                 'push "topology subnet"', 'push "route-gateway 10.250.0.1"', "tun-mtu 1420",
                 "ca ../ca.crt", "cert hub.crt", "key hub.key", "dh none",
                 "remote-cert-tls client", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
                 "client-config-dir ccd", "ccd-exclusive", "keepalive 10 60",
                 "management mgmt.sock unix"]:
        assert want in lines, want
    assert not any(ln.startswith(("secret", "tls-auth", "tls-crypt", "ifconfig-pool",
                                  "duplicate-cn", "server ")) for ln in lines)
    assert "keepalive 2 9" in server_config(ifname="e", directory=tmp_path, port=1,
                                            hub_address="10.9.0.1", overlay="10.9.0.0/29",
                                            mtu=1400, keepalive=(2, 9))
    assert ccd_entry("10.250.0.5", "10.250.0.0/24") == "ifconfig-push 10.250.0.5 255.255.255.0\n"
    assert ccd_entry("10.9.0.6", "10.9.0.0/29") == "ifconfig-push 10.9.0.6 255.255.255.248\n"


# captured from `status 3` on the management socket of OpenVPN 2.6.14 (a second client is
# one refused by ccd-exclusive: no virtual address)
STATUS = (
    "TITLE\tOpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] "
    "[MH/PKTINFO] [AEAD] [DCO]\n"
    "TIME\t2026-12-01 18:46:21\t1796150781\n"
    "HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\t"
    "Bytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\t"
    "Client ID\tPeer ID\tData Channel Cipher\n"
    "CLIENT_LIST\tworker1\t172.31.250.2:53311\t10.250.9.2\t\t2175\t2183\t2026-12-01 18:46:21\t"
    "1796150781\tUNDEF\t0\t0\tAES-256-GCM\n"
    "CLIENT_LIST\tworker2\t172.31.250.2:51833\t\t\t1853\t1853\t2026-12-01 18:46:28\t"
    "1796150788\tUNDEF\t1\t1\tnone\n"
    "HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\t"
    "Last Ref (time_t)\n"
    "ROUTING_TABLE\t10.250.9.2\tworker1\t172.31.250.2:53311\t2026-12-01 18:46:21\t1796150781\n"
    "GLOBAL_STATS\tMax bcast/mcast queue length\t0\nGLOBAL_STATS\tdco_enabled\t0\nEND")


def test_the_status_answer_lists_the_clients():
    one, two = parse_status(STATUS)
    assert (one.common_name, one.real_address, one.virtual_address) == (
        "worker1", "172.31.250.2:53311", "10.250.9.2")
    assert (one.bytes_received, one.bytes_sent, one.connected_since) == (2175, 2183, 1796150781)
    assert two.common_name == "worker2" and two.virtual_address == ""
    assert parse_status("") == [] and parse_status("END") == []


# ------------------------------------------------------------------------- the hub

class FakeServer:
    def __init__(self, ifname, *, netns, directory, log_dir):
        self.ifname, self.netns, self.directory = ifname, netns, directory
        self.config = None
        self.sessions: set[str] = set()
        self.killed: list[str] = []

    def up(self, config):
        self.config = config
        return "started"

    def kill_client(self, cn):
        self.killed.append(cn)
        had = cn in self.sessions
        self.sessions.discard(cn)
        return had


@pytest.fixture
def hub(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(vpnhub, "run", lambda argv, **kw: calls.append((argv, kw)))
    state = tmp_path / "state"
    clock = FakeClock(NOW)
    with Store.open(state) as store:
        store.put_project("p", "p.yaml", "0" * 64, clock.now())
    h = OpenVPNHub("p", "ec2", VpnBlock(type="openvpn", port=1194, overlay="10.250.3.0/29"),
                   state, endpoint="172.31.9.9:1194", routes=("10.77.0.20/32",),
                   netns="elastic-front", clock=clock, server=FakeServer)
    return h, state, calls, clock


def _node(store, name, clock, site="ec2"):
    store.add_node("p", name, clock.now(), site=site, data={"group": "worker"})


def test_enrolment_leases_an_address_issues_a_certificate_and_writes_its_ccd(hub):
    h, state, calls, clock = hub
    fp = h.ensure()
    assert fp == fingerprint((state / "vpn" / "p" / "openvpn" / "ca.crt").read_text())
    assert h.ensure() == fp                                          # made once
    assert "ifconfig 10.250.3.1 255.255.255.248" in h.server.config.splitlines()
    assert "port 1194" in h.server.config.splitlines()
    assert calls[0][0] == ["sysctl", "-qw", "net.ipv4.ip_forward=1"]
    assert calls[0][1]["netns"] == "elastic-front"
    assert h.ifname == openvpn_ifname("p", "ec2") and len(h.ifname) <= 15
    assert h.ifname.startswith("eov") and h.ifname != openvpn_ifname("q", "ec2")
    assert h.hub_address == "10.250.3.1"
    with Store.open(state) as store:
        _node(store, "worker1", clock)
        _node(store, "worker2", clock)
        e1 = h.enroll(store, "worker1")
        e2 = h.enroll(store, "worker2")
        assert h.enroll(store, "worker1") == e1                      # idempotent
        assert [(x.node, x.address) for x in store.leases("p", "vpn:ec2")] == [
            ("worker1", "10.250.3.2"), ("worker2", "10.250.3.3")]
    assert (e1.address, e2.address) == ("10.250.3.2/29", "10.250.3.3/29")
    assert (h.ccd / "worker1").read_text() == "ifconfig-push 10.250.3.2 255.255.255.248\n"
    assert h.enrolled() == ["worker1", "worker2"]
    assert common_name(e1.cert) == "worker1"
    cert(e1.cert).verify_directly_issued_by(cert(e1.ca))
    ctx = e1.context()
    assert ctx["VPN_TYPE"] == "openvpn" and ctx["VPN_HUB_ENDPOINT"] == "172.31.9.9:1194"
    assert ctx["VPN_ROUTES"] == "10.77.0.20/32" and ctx["VPN_HUB_NAME"] == "hub-ec2"
    assert common_name((h.pki.dir / "hub.crt").read_text()) == "hub-ec2"
    # the node pins the hub's certificate; the server checks the CA's CRL
    assert ctx["VPN_HUB_FINGERPRINT"] == fingerprint((h.pki.dir / "hub.crt").read_text())
    assert "crl-verify crl.pem" in h.server.config.splitlines()
    assert (h.pki.dir / "crl.pem").exists() and h.pki.revoked() == []
    assert e1.key.split("\n")[1] not in repr(e1)


def test_both_hubs_lease_the_same_way(hub, tmp_path):
    h, state, calls, clock = hub
    with Store.open(state) as store:
        for n in ("w1", "w2"):
            _node(store, n, clock)
        h.enroll(store, "w1")
        wg = Hub("p", "ec2", VpnBlock(overlay="10.250.3.0/29"), state, endpoint="x:1",
                 wireguard=lambda *a, **k: None, clock=clock)
        assert wg._lease(store, "w1") == "10.250.3.2" and wg._lease(store, "w2") == "10.250.3.3"


def test_retire_and_reconcile_follow_the_db(hub):
    h, state, calls, clock = hub
    h.ensure()
    with Store.open(state) as store:
        for n in ("worker1", "worker2", "worker3"):
            _node(store, n, clock)
            h.enroll(store, n)
        h.server.sessions = {"worker1", "worker2", "worker3"}
        assert h.pki.revoked() == []
        serial2 = cert((h.pki.dir / "node-worker2.crt").read_text()).serial_number
        # worker2 is gone: its certificate is revoked, its ccd file, its session and its
        # certificate go
        for s in path(State.PENDING, State.DONE):
            store.transition("p", "worker2", s, "test", clock.now())
        h.retire(store, "worker2")
        h.retire(store, "worker2")                                   # gone already is fine
        assert h.pki.revoked() == [serial2]
        store.release("p", "worker2")
        assert h.enrolled() == ["worker1", "worker3"]
        assert h.server.sessions == {"worker1", "worker3"}
        assert not h.pki.has("node-worker2")
        # a crash lost worker3's ccd file and left a stranger's and a DONE node's behind
        (h.ccd / "worker3").unlink()
        (h.ccd / "stranger").write_text("ifconfig-push 10.250.3.6 255.255.255.248\n")
        _node(store, "worker4", clock)
        h.enroll(store, "worker4")
        for s in path(State.PENDING, State.DONE):
            store.transition("p", "worker4", s, "test", clock.now())
        h.server.config = None
        added, removed = h.reconcile(store)
        assert h.server.config is not None                           # the server ensured
        assert (added, removed) == (["worker3"], ["stranger", "worker4"])
        assert h.enrolled() == ["worker1", "worker3"]
        assert not h.pki.has("node-worker4") and "worker4" in h.server.killed
        assert len(h.pki.revoked()) == 2 and serial2 in h.pki.revoked()
        assert h.reconcile(store) == ([], [])
        # the freed address is leased again
        store.release("p", "worker4")
        _node(store, "worker5", clock)
        assert h.enroll(store, "worker5").address == "10.250.3.3/29"


def test_a_full_overlay_is_a_clear_error(hub):
    h, state, calls, clock = hub
    with Store.open(state) as store:
        for i in range(1, 7):                 # /29: hub + 5 nodes
            _node(store, f"w{i}", clock)
        for i in range(1, 6):
            h.enroll(store, f"w{i}")
        with pytest.raises(PermanentError, match="overlay 10.250.3.0/29 of clouds.ec2 is full"):
            h.enroll(store, "w6")


def test_make_hub_knows_both_kinds(tmp_path, monkeypatch):
    ovpn = make_hub("p", "ec2", VpnBlock(type="openvpn"), tmp_path, endpoint="h:1")
    assert isinstance(ovpn, OpenVPNHub) and ovpn.netns is None and ovpn.routes == ()
    assert isinstance(make_hub("p", "ec2", VpnBlock(), tmp_path, endpoint="h:1"), Hub)
    with pytest.raises(PermanentError):
        OpenVPNHub("p", "ec2", VpnBlock(), tmp_path, endpoint="h:1")
    assert openvpn.OpenVPNServer.pid_path(tmp_path, ovpn.ifname).name == \
        f"openvpn-{ovpn.ifname}.pid"


def test_an_openvpn_node_still_fits_ec2s_user_data():
    """The whole user-data (scripts and context) of a burst SGE worker, with OpenVPN."""
    from pathlib import Path

    from elastic.adapters.userdata import (
        MAX_USER_DATA, boot_scripts, cloud_context, render_user_data,
    )
    from elastic.spec import load_project
    example = Path(__file__).resolve().parents[2] / "examples" / "sge" / "cluster-lab-burst.yaml"
    project = load_project(example, counts={"worker": 3})
    node = next(n for n in project.nodes if n.name == "worker3")
    ca = make_ca("elastic sge CA", NOW)
    issued = issue(ca, "worker3", NOW)
    vpn = OpenVPNEnrolment("worker3", "10.250.0.5/24", ca.cert_pem, issued.cert_pem,
                           issued.key_pem, "hub-ec2", "172.31.255.254:1194",
                           ("10.77.0.0/24",), 1420)
    tree = cloud_context(node, project, example.parent,
                         hosts=[("10.250.0.5", "worker3"), ("10.77.0.23", "head")],
                         extra={**vpn.context(), "SGE_MASTER_IP": "10.77.0.23"}, batch="sge")
    data = render_user_data(tree, boot_scripts("sge"), node.fullname)
    assert len(data) <= MAX_USER_DATA
    print(f"user-data with OpenVPN: {len(data)} bytes gzip'd of {MAX_USER_DATA}")
