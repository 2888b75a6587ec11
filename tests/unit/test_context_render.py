"""elastic/adapters/context.py: the context a node reads at boot (contextualization/README.md).

* golden context.sh for the SGE example's head and a worker (tests/data/golden/, rewritten
  with ELASTIC_UPDATE_GOLDEN=1);
* context.sh keeps to the contract's grammar and survives awkward values: it is sourced by
  every POSIX shell here and gives back exactly the values rendered;
* the ISO: label CONTEXT, the files inside (genisoimage, isoinfo: Debian package genisoimage);
* the renderer and the boot script agree: contextualization/elastic-context.sh --dry-run
  over a context made by context_files() configures what the spec says.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from elastic.adapters.context import (
    ISO_LABEL,
    build_iso,
    context_files,
    context_vars,
    eth_indices,
    quote,
    redacted,
    render_context_sh,
    tree_digest,
)
from elastic.errors import ConfigError
from elastic.model import Interface, Project
from elastic.spec import load_project

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
SGE = REPO / "examples" / "sge" / "cluster.yaml"
CTX = REPO / "contextualization"
SCRIPT = CTX / "elastic-context.sh"
LIB = CTX / "lib.sh"

HASH = "$6$salt$abc'def"  # a crypt(3)-looking hash with a quote in it

DEMO = r"""
project: demo
networks:
  lan: {cidr: 10.30.0.0/24, gateway: 10.30.0.1, kind: private}
  back: {cidr: 10.31.0.0/24, kind: private}
nodes:
  app:
    image: tiny
    memory: 128M
    vcpus: 1
    nameservers: [10.30.0.1, 9.9.9.9]
    search: [demo.example, example]
    interfaces:
      eth0: {network: lan, address: 10.30.0.5}
      eth1:
        network: back
        address: 10.31.0.9
        routes:
          - {to: 10.40.0.0/16, via: 10.31.0.254}
    groups:
      ops: {gid: 1500}
    users:
      alice:
        password: "$6$salt$abc'def"
        ssh_keys: ["ssh-ed25519 AAAA alice@x", "ssh-rsa BBBB alice@y"]
        groups: [ops, wheel]
        sudo: true
        shell: /bin/ash
        uid: 1001
      bob: {}
      root:
        ssh_keys: ["ssh-ed25519 RRRR root@admin"]
    files:
      /etc/app/motd: {content: "it's a \"test\"\nline 2 $HOME `x`\n"}
      /etc/app/secret: {source: app.secret, mode: "0600", owner: alice}
    startup:
      - echo "started $NODE_NAME" > /tmp/started
      - echo 'second'
  db:
    image: tiny
    memory: 128M
    vcpus: 1
    interfaces:
      eth0: {network: lan, address: 10.30.0.6}
"""


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ELASTIC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with ELASTIC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from the golden file (ELASTIC_UPDATE_GOLDEN=1)"


def _shells() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [("sh",)]
    if shutil.which("dash"):
        found.append(("dash",))
    if shutil.which("busybox"):
        found.append(("busybox", "sh"))
    return found


SHELLS = _shells()
SHELL_IDS = [" ".join(s) for s in SHELLS]


@pytest.fixture(params=SHELLS, ids=SHELL_IDS)
def shell(request) -> tuple[str, ...]:
    return request.param


@pytest.fixture(scope="module")
def sge() -> Project:
    return load_project(SGE)


@pytest.fixture
def demo_dir(tmp_path) -> Path:
    d = tmp_path / "spec"
    d.mkdir()
    (d / "cluster.yaml").write_text(DEMO)
    (d / "app.secret").write_text("s3cret\n")
    return d


@pytest.fixture
def demo(demo_dir) -> Project:
    return load_project(demo_dir / "cluster.yaml")


# The contract's grammar (README section 3): NAME='value' lines (a value may span lines, a
# quote inside is '\''), comment lines and empty lines; nothing else.
_LINE = r"(?:#[^\n]*|[A-Z][A-Z0-9_]*='(?:[^']|'\\'')*')?\n"
CONTRACT = re.compile(f"(?:{_LINE})*")


def source(shell: tuple[str, ...], path: Path, names: list[str]) -> dict[str, str]:
    """Source PATH the way elastic-context.sh does and read back NAMES exactly."""
    script = 'set -eu; set -a; . "$1"; set +a; shift; for n in "$@"; do eval "printf \'%s\\0\' \\"\\${$n}\\""; done'
    r = subprocess.run([*shell, "-c", script, "ctx", str(path), *names], capture_output=True,
                       timeout=10, cwd=path.parent)
    assert r.returncode == 0, r.stderr.decode()
    values = r.stdout.decode().split("\0")[:-1]
    return dict(zip(names, values))


# ------------------------------------------------------------------ golden files
def test_context_golden_head(sge) -> None:
    golden("context-head.sh", render_context_sh(sge.node("head"), sge))


def test_context_golden_worker(sge) -> None:
    golden("context-worker1.sh", render_context_sh(sge.node("worker1"), sge))


# ------------------------------------------------------------------ variables
def test_sge_head_variables(sge) -> None:
    v = context_vars(sge.node("head"), sge)
    assert v["HOSTNAME"] == "head"
    assert (v["ETH0_MAC"], v["ETH0_IP"], v["ETH0_MASK"], v["ETH0_GATEWAY"]) == \
        ("02:00:0a:14:00:02", "10.20.0.2", "24", "10.20.0.1")
    assert v["DNS"] == "10.20.0.1" and v["SEARCH_DOMAIN"] == "sge.cluster"
    assert v["HOSTS"].splitlines() == ["10.20.0.2 head", "10.20.0.10 worker1", "10.20.0.11 worker2",
                                       "10.20.0.12 worker3", "10.20.0.13 worker4"]
    assert (v["USER0_NAME"], v["USER0_UID"], v["USER0_SHELL"]) == ("sgeuser", "1000", "/bin/sh")
    assert "USER1_NAME" not in v
    assert base64.b64decode(v["START_SCRIPT_BASE64"]).decode() == "elastic-sge master\n"
    assert (v["PROJECT"], v["NODE_NAME"], v["NODE_GROUP"]) == ("sge", "head", "head")
    assert "NODE_INDEX" not in v
    w = context_vars(sge.node("worker3"), sge)
    assert (w["NODE_GROUP"], w["NODE_INDEX"], w["ETH0_IP"]) == ("worker", "3", "10.20.0.12")


def test_demo_variables(demo) -> None:
    v = context_vars(demo.node("app"), demo)
    assert v["ETH1_IP"] == "10.31.0.9" and "ETH1_GATEWAY" not in v
    assert v["ETH1_ROUTES"] == "10.40.0.0/16 via 10.31.0.254"
    assert v["DNS"] == "10.30.0.1 9.9.9.9" and v["SEARCH_DOMAIN"] == "demo.example example"
    assert v["HOSTS"] == "10.30.0.5 app\n10.30.0.6 db"
    assert (v["GROUP0_NAME"], v["GROUP0_GID"]) == ("ops", "1500")
    assert v["USER0_NAME"] == "alice" and v["USER0_UID"] == "1001"
    assert v["USER0_GROUPS"] == "ops,wheel" and v["USER0_SUDO"] == "yes"
    assert v["USER0_PASSWORD_HASH"] == HASH
    assert v["USER0_SSH_KEYS"] == "ssh-ed25519 AAAA alice@x\nssh-rsa BBBB alice@y"
    assert v["USER1_NAME"] == "bob" and "USER1_PASSWORD_HASH" not in v and "USER1_SUDO" not in v
    # root is not an account to (re)make: only its keys (and hash) are set
    assert "USER2_NAME" not in v and v["ROOT_SSH_KEYS"] == "ssh-ed25519 RRRR root@admin"
    assert [(v[f"FILE{i}_PATH"], v[f"FILE{i}_MODE"], v[f"FILE{i}_OWNER"]) for i in (0, 1)] == [
        ("/etc/app/motd", "0644", "root"), ("/etc/app/secret", "0600", "alice")]
    assert base64.b64decode(v["START_SCRIPT_BASE64"]).decode() == \
        "echo \"started $NODE_NAME\" > /tmp/started\necho 'second'\n"
    assert not any(k.startswith("ELASTIC_") for k in v)  # reserved by the contract


def test_dhcp_interfaces_are_left_to_the_image(sge) -> None:
    head = sge.node("head")
    dhcp = Interface("eth1", "cluster", "52:54:00:12:34:56", None, None, None)
    node = dataclasses.replace(head, interfaces=(*head.interfaces, dhcp))
    v = context_vars(node, sge)
    assert v["ETH1_MAC"] == "52:54:00:12:34:56" and v["ETH1_METHOD"] == "skip"
    assert "ETH1_IP" not in v


def test_eth_indices_follow_the_names() -> None:
    def iface(name: str) -> Interface:
        return Interface(name, "n", "02:00:0a:00:00:01", "10.0.0.1", 24, None)
    assert eth_indices((iface("eth0"), iface("eth1"))) == [0, 1]
    assert eth_indices((iface("eth1"), iface("ens3"), iface("eth0"), iface("wan"))) == [1, 2, 0, 3]
    with pytest.raises(ValueError):
        eth_indices((iface("eth32"),))


def test_redacted_hides_hashes_and_keys(demo) -> None:
    r = redacted(context_vars(demo.node("app"), demo))
    assert r["USER0_PASSWORD_HASH"] == r["USER0_SSH_KEYS"] == r["ROOT_SSH_KEYS"] == "<redacted>"
    assert r["USER0_NAME"] == "alice"
    assert HASH not in repr(r)


# ------------------------------------------------------------------ quoting and the grammar
NASTY = {
    "Q_QUOTE": "it's",
    "Q_QUOTES": "''",
    "Q_LONE": "'",
    "Q_NEWLINES": "line 1\nline 2\n\nline 4\n",
    "Q_SUBST": "$(touch pwned) `touch pwned2` ${HOME} $HOME",
    "Q_DOUBLE": 'say "hi" \\ \\n \\\'',
    "Q_BLANKS": "  leading and trailing  ",
    "Q_EMPTY": "",
    "Q_HASH": "# not a comment",
    "Q_UNICODE": "grüße ☃",
    "Q_FAKE_LINE": "x'\nHOSTNAME='evil",
}


def test_quote() -> None:
    assert quote("it's") == "'it'\\''s'"
    assert quote("") == "''"
    with pytest.raises(ValueError):
        quote("a\0b")


def test_context_sh_keeps_to_the_contract_grammar(sge, demo) -> None:
    for project, name in ((sge, "head"), (sge, "worker4"), (demo, "app")):
        text = render_context_sh(project.node(name), project, extra=NASTY)
        assert CONTRACT.fullmatch(text), text


def test_context_sh_round_trips_through_the_shell(shell, demo, tmp_path) -> None:
    node = demo.node("app")
    text = render_context_sh(node, demo, extra=NASTY)
    path = tmp_path / "context.sh"
    path.write_text(text)
    expected = {**context_vars(node, demo), **NASTY}
    got = source(shell, path, list(expected))
    assert got == expected
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert got["HOSTNAME"] == "app"  # the fake line inside a value set nothing


def test_reserved_names_are_refused(sge) -> None:
    for bad in ("ELASTIC_IP", "PATH", "lower", "IFS"):
        with pytest.raises(ValueError):
            render_context_sh(sge.node("head"), sge, extra={bad: "x"})
    with pytest.raises(ValueError, match="already set"):
        render_context_sh(sge.node("head"), sge, extra={"HOSTNAME": "x"})


# ------------------------------------------------------------------ the file tree
def test_context_files_sge(sge) -> None:
    files = context_files(sge.node("head"), sge, SGE.parent)
    assert list(files) == ["context.sh"]
    assert files["context.sh"].decode() == render_context_sh(sge.node("head"), sge)


def test_context_files_inline_and_source(demo, demo_dir) -> None:
    files = context_files(demo.node("app"), demo, demo_dir)
    assert sorted(files) == ["context.sh", "files/etc/app/motd", "files/etc/app/secret"]
    assert files["files/etc/app/secret"] == b"s3cret\n"
    assert b"it's a \"test\"\nline 2 $HOME `x`" in files["files/etc/app/motd"]
    more = context_files(demo.node("app"), demo, demo_dir, extra={"startup.sh": b"#!/bin/sh\n"})
    assert more["startup.sh"] == b"#!/bin/sh\n"


def test_a_missing_source_is_a_config_error(demo, demo_dir) -> None:
    (demo_dir / "app.secret").unlink()
    with pytest.raises(ConfigError) as e:
        context_files(demo.node("app"), demo, demo_dir)
    assert "app.secret" in str(e.value)
    assert e.value.file is not None and e.value.file.endswith("cluster.yaml")
    assert e.value.key == "nodes.app.files./etc/app/secret.source"


def test_tree_digest_is_order_free_and_content_bound() -> None:
    a = {"context.sh": b"A='1'\n", "files/etc/x": b"x"}
    assert tree_digest(a) == tree_digest(dict(reversed(list(a.items()))))
    assert tree_digest(a) != tree_digest({**a, "files/etc/x": b"y"})


# ------------------------------------------------------------------ the ISO
needs_genisoimage = pytest.mark.skipif(not shutil.which("genisoimage"),
                                       reason="genisoimage is not installed (Debian package genisoimage)")


def _iso_file(iso: Path, path: str) -> bytes:
    r = subprocess.run(["isoinfo", "-i", str(iso), "-R", "-x", path], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_genisoimage
def test_build_iso(demo, demo_dir, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    files = context_files(demo.node("app"), demo, demo_dir)
    out = build_iso(files, tmp_path / "isos" / "app.context.iso")
    assert out == tmp_path / "isos" / "app.context.iso"
    data = out.read_bytes()
    assert data[32769:32774] == b"CD001"
    assert data[32808:32840].rstrip(b" ") == ISO_LABEL.encode()
    r = subprocess.run(["sh", "-c", '. "$1"; iso_label "$2"', "x", str(LIB), str(out)],
                       capture_output=True, text=True, timeout=10)
    assert r.stdout == "CONTEXT\n"
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # it holds password hashes
    assert sorted(p.name for p in out.parent.iterdir()) == ["app.context.iso"]  # no leftovers
    if shutil.which("isoinfo"):
        assert _iso_file(out, "/context.sh") == files["context.sh"]
        assert _iso_file(out, "/files/etc/app/secret") == b"s3cret\n"
    # nothing secret was logged on the way
    assert HASH not in caplog.text and "alice@x" not in caplog.text
    # rebuilt over the old one
    build_iso({"context.sh": b"A='1'\n"}, out)
    if shutil.which("isoinfo"):
        assert _iso_file(out, "/context.sh") == b"A='1'\n"


def test_build_iso_refuses_paths_outside_the_tree(tmp_path) -> None:
    for bad in ("../x", "/etc/passwd", "a//b", "./a", ""):
        with pytest.raises(ValueError):
            build_iso({bad: b"x"}, tmp_path / "x.iso")


# ------------------------------------------------------------------ renderer and boot script agree
def fake_root(tmp_path: Path, nics: dict[str, str]) -> Path:
    root = tmp_path / "root"
    for name, mac in {"lo": "00:00:00:00:00:00", **nics}.items():
        d = root / "sys/class/net" / name
        d.mkdir(parents=True)
        (d / "address").write_text(mac + "\n")
        (d / "type").write_text("772\n" if name == "lo" else "1\n")
    etc = root / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:0:0:99999:7:::\n")
    (etc / "sudoers.d").mkdir()
    (root / "dev").mkdir()
    return root


def write_tree(files: dict[str, bytes], d: Path) -> Path:
    for name, data in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return d


def dry_run(shell: tuple[str, ...], root: Path, ctx: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ELASTIC_CONTEXT_ROOT": str(root),
           "ELASTIC_CONTEXT_WAIT": "0", "ELASTIC_NET_WAIT": "0"}
    if ctx is not None:
        env["ELASTIC_CONTEXT_DIR"] = str(ctx)
    r = subprocess.run([*shell, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def markers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("ELASTIC-")]


def test_dry_run_of_the_sge_head(shell, sge, tmp_path) -> None:
    head = sge.node("head")
    ctx = write_tree(context_files(head, sge, SGE.parent), tmp_path / "ctx")
    root = fake_root(tmp_path, {"eth0": head.interfaces[0].mac})
    r = dry_run(shell, root, ctx)
    cmds = commands(r.stdout)
    assert "WARNING" not in r.stdout, r.stdout
    assert "ip addr add 10.20.0.2/24 broadcast + dev eth0" in cmds
    assert "ip link set dev eth0 up" in cmds
    assert "ip route replace default via 10.20.0.1 dev eth0" in cmds
    assert "hostname head" in cmds
    assert (root / "etc/hostname").read_text() == "head\n"
    hosts = (root / "etc/hosts").read_text()
    assert "10.20.0.2\thead\n" in hosts and "10.20.0.13 worker4\n" in hosts
    assert (root / "etc/resolv.conf").read_text() == "search sge.cluster\nnameserver 10.20.0.1\n"
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert "sgeuser:x:1000:1000::/home/sgeuser:/bin/sh" in passwd
    shadow = {line.split(":")[0]: line.split(":")[1] for line in
              (root / "etc/shadow").read_text().splitlines()}
    assert shadow["sgeuser"] == "*"  # no password in the spec: key login only
    state = root / "run/elastic"
    assert (state / "start-script-base64").read_text() == "elastic-sge master\n"
    assert f"sh {state}/start-script-base64" in cmds
    assert markers(r.stdout) == ["ELASTIC-READY head 10.20.0.2", "ELASTIC-STARTED head 0"]
    st = dict(line.split("=", 1) for line in (state / "state").read_text().splitlines())
    assert st["failures"] == "0" and st["ip"] == "10.20.0.2"


def test_dry_run_of_a_node_with_users_files_and_two_nics(shell, demo, demo_dir, tmp_path) -> None:
    app = demo.node("app")
    ctx = write_tree(context_files(app, demo, demo_dir), tmp_path / "ctx")
    # kernel names other than ethN: the ETHn_MAC lines map them
    root = fake_root(tmp_path, {"ens3": app.interfaces[0].mac, "ens4": app.interfaces[1].mac})
    r = dry_run(shell, root, ctx)
    cmds = commands(r.stdout)
    assert "WARNING" not in r.stdout, r.stdout
    assert "ip addr add 10.30.0.5/24 broadcast + dev ens3" in cmds
    assert "ip addr add 10.31.0.9/24 broadcast + dev ens4" in cmds
    assert [c for c in cmds if " default " in c] == ["ip route replace default via 10.30.0.1 dev ens3"]
    assert "ip route replace 10.40.0.0/16 via 10.31.0.254 dev ens4" in cmds
    assert (root / "etc/resolv.conf").read_text() == (
        "search demo.example example\nnameserver 10.30.0.1\nnameserver 9.9.9.9\n")

    passwd = (root / "etc/passwd").read_text().splitlines()
    assert "alice:x:1001:1001::/home/alice:/bin/ash" in passwd
    assert "bob:x:1002:1002::/home/bob:/bin/sh" in passwd  # next uid above the highest
    assert not any(line.startswith("root:") and "/home" in line for line in passwd)
    shadow = {line.split(":")[0]: line.split(":")[1] for line in
              (root / "etc/shadow").read_text().splitlines()}
    assert shadow["alice"] == HASH and shadow["bob"] == "*" and shadow["root"] == "*"
    groups = {line.split(":")[0]: line for line in (root / "etc/group").read_text().splitlines()}
    assert groups["ops"] == "ops:x:1500:alice"
    assert groups["wheel"].endswith(":alice")
    assert (root / "home/alice/.ssh/authorized_keys").read_text() == (
        "ssh-ed25519 AAAA alice@x\nssh-rsa BBBB alice@y\n")
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 RRRR root@admin\n"
    assert (root / "etc/sudoers.d/90-elastic-alice").read_text() == "alice ALL=(ALL) NOPASSWD:ALL\n"
    assert not (root / "etc/sudoers.d/90-elastic-bob").exists()

    assert (root / "etc/app/secret").read_text() == "s3cret\n"
    assert oct((root / "etc/app/secret").stat().st_mode & 0o777) == "0o600"
    assert f"chown alice {root}/etc/app/secret" in cmds
    assert (root / "etc/app/motd").read_text().startswith("it's a \"test\"\nline 2 $HOME `x`")

    state = root / "run/elastic"
    assert (state / "start-script-base64").read_text() == (
        "echo \"started $NODE_NAME\" > /tmp/started\necho 'second'\n")
    assert markers(r.stdout) == ["ELASTIC-READY app 10.30.0.5", "ELASTIC-STARTED app 0"]


@needs_genisoimage
def test_dry_run_finds_the_built_iso(sge, tmp_path) -> None:
    head = sge.node("head")
    root = fake_root(tmp_path, {"eth0": head.interfaces[0].mac})
    (root / "dev/vda").write_bytes(b"\0" * 40000)  # the node's own disk comes first
    build_iso(context_files(head, sge, SGE.parent), root / "dev/vdb")
    r = dry_run(SHELLS[0], root, None)
    assert "context ISO labelled CONTEXT on /dev/vdb" in r.stdout
    assert f"mount -t iso9660 -o ro {root}/dev/vdb {root}/run/elastic/mnt" in commands(r.stdout)
