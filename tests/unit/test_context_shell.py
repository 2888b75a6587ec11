"""The boot-time shell (contextualization/) run without a VM and without root.

* lib.sh's MAC <-> IPv4 rule against the golden vectors shared with elastic/addressing.py,
  under every POSIX shell found here (sh, dash, busybox sh);
* elastic-context.sh in its --dry-run mode against a fake sysfs and a fake context
  directory: what it would run, the files it writes, the console markers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CTX = REPO / "contextualization"
LIB = CTX / "lib.sh"
SCRIPT = CTX / "elastic-context.sh"
VECTORS = REPO / "tests" / "data" / "mac-vectors.txt"


def _shells() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [("sh",)]
    if shutil.which("dash"):
        found.append(("dash",))
    if shutil.which("busybox"):
        found.append(("busybox", "sh"))
    return found


SHELLS = _shells()
SHELL_IDS = [" ".join(s) for s in SHELLS]


def _vectors() -> list[tuple[str, str, str]]:
    rows = []
    for line in VECTORS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            prefix, ip, mac = line.split()
            rows.append((prefix, ip, mac))
    return rows


VECTOR_ROWS = _vectors()


def lib(shell: tuple[str, ...], snippet: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run SNIPPET after sourcing lib.sh; ARGS are its positional parameters."""
    return subprocess.run(
        [*shell, "-c", f'. "{LIB}"; {snippet}', "lib", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_vectors_file_is_not_empty() -> None:
    assert len(VECTOR_ROWS) >= 10


# ------------------------------------------------------------------ the MAC rule
@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize("prefix,ip,mac", VECTOR_ROWS, ids=[r[1] for r in VECTOR_ROWS])
def test_mac_to_ip_matches_golden_vectors(shell, prefix, ip, mac) -> None:
    r = lib(shell, 'mac_to_ip "$1"', mac)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ip + "\n"
    # upper-case MACs (as some tools print them) decode the same
    assert lib(shell, 'mac_to_ip "$1"', mac.upper()).stdout == ip + "\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize("prefix,ip,mac", VECTOR_ROWS, ids=[r[1] for r in VECTOR_ROWS])
def test_ip_to_mac_matches_golden_vectors(shell, prefix, ip, mac) -> None:
    r = lib(shell, 'ip_to_mac "$1" "$2"', prefix, ip)
    assert r.returncode == 0, r.stderr
    assert r.stdout == mac.lower() + "\n"
    assert lib(shell, 'ip_to_mac "$1" "$2"', prefix.upper(), ip).stdout == mac.lower() + "\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize(
    "mac",
    ["", "02:00:0a:0b:00", "02:00:0a:0b:00:05:06", "02:00:0a:0b:00:0g", "02:00:0a:0b:00:5",
     "02-00-0a-0b-00-05", "02:00:0a:0b:00:$(x)"],
)
def test_mac_to_ip_rejects_malformed_macs(shell, mac) -> None:
    r = lib(shell, 'mac_to_ip "$1" && echo ok || echo "rc=$?"', mac)
    assert r.stdout.strip() == "rc=1"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize(
    "prefix,ip",
    [("02:00", "10.0.0.256"), ("02:00", "10.0.0"), ("02:00", "10.0.0.1.2"), ("02:00", "a.b.c.d"),
     ("02:00", "-1.0.0.1"), ("0200", "10.0.0.1"), ("02:0g", "10.0.0.1"), ("02:00:00", "10.0.0.1")],
)
def test_ip_to_mac_rejects_malformed_input(shell, prefix, ip) -> None:
    r = lib(shell, 'ip_to_mac "$1" "$2" && echo ok || echo "rc=$?"', prefix, ip)
    assert r.stdout.strip() == "rc=1"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_leading_zeros_are_decimal_not_octal(shell) -> None:
    assert lib(shell, "ip_to_mac 02:00 010.008.09.0").stdout == "02:00:0a:08:09:00\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
@pytest.mark.parametrize(
    "mask,prefix",
    [("24", "24"), ("/16", "16"), ("0", "0"), ("32", "32"), ("255.255.255.0", "24"),
     ("255.255.254.0", "23"), ("255.255.255.255", "32"), ("0.0.0.0", "0"), ("255.128.0.0", "9"),
     ("255.0.255.0", None), ("33", None), ("", None), ("abc", None), ("255.255.255", None)],
)
def test_mask_to_prefix(shell, mask, prefix) -> None:
    r = lib(shell, 'mask_to_prefix "$1" || echo "rc=$?"', mask)
    assert r.stdout.strip() == (prefix if prefix is not None else "rc=1")


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_hostname_from_ip(shell) -> None:
    assert lib(shell, "hostname_from_ip 10.11.0.5").stdout == "node-10-11-0-5\n"


# ------------------------------------------------------------------ finding the context ISO
def fake_iso(path: Path, label: str) -> Path:
    """Just enough of an ISO9660 image for the label check: the primary volume descriptor."""
    data = bytearray(32768 + 2048)
    data[32768] = 1
    data[32769:32774] = b"CD001"
    data[32774] = 1
    data[32808:32840] = label.encode().ljust(32, b" ")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_iso_label_reads_the_volume_id(shell, tmp_path) -> None:
    iso = fake_iso(tmp_path / "a.iso", "CONTEXT")
    assert lib(shell, 'iso_label "$1"', str(iso)).stdout == "CONTEXT\n"
    not_iso = tmp_path / "b.img"
    not_iso.write_bytes(b"\0" * 40000)
    assert lib(shell, 'iso_label "$1" || echo "rc=$?"', str(not_iso)).stdout == "rc=1\n"
    short = tmp_path / "c.img"
    short.write_bytes(b"x" * 100)
    assert lib(shell, 'iso_label "$1" || echo "rc=$?"', str(short)).stdout == "rc=1\n"


@pytest.mark.parametrize("shell", SHELLS, ids=SHELL_IDS)
def test_find_iso_by_label_picks_the_labelled_device(shell, tmp_path) -> None:
    (tmp_path / "vda").write_bytes(b"\0" * 40000)  # a data disk
    fake_iso(tmp_path / "vdb", "OTHER")
    fake_iso(tmp_path / "sr0", "CONTEXT")
    r = lib(shell, 'find_iso_by_label CONTEXT "$1"/vd? "$1"/sr? "$1"/xvd?', str(tmp_path))
    assert r.stdout == f"{tmp_path}/sr0\n"


@pytest.mark.skipif(not shutil.which("genisoimage"), reason="genisoimage is not installed")
def test_iso_label_of_a_real_genisoimage_image(tmp_path) -> None:
    src = tmp_path / "ctx"
    src.mkdir()
    (src / "context.sh").write_text("HOSTNAME='x'\n")
    iso = tmp_path / "ctx.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "CONTEXT", "-r", "-J", str(src)],
                   check=True)
    assert lib(SHELLS[0], 'iso_label "$1"', str(iso)).stdout == "CONTEXT\n"


# ------------------------------------------------------------------ elastic-context.sh --dry-run
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
    (root / "dev").mkdir()
    return root


def context_dir(tmp_path: Path, context_sh: str, files: dict[str, str] | None = None) -> Path:
    d = tmp_path / "ctx"
    d.mkdir()
    (d / "context.sh").write_text(context_sh)
    for rel, text in (files or {}).items():
        p = d / "files" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def dry_run(shell: tuple[str, ...], root: Path, ctx: Path | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ELASTIC_CONTEXT_ROOT": str(root),
               "ELASTIC_CONTEXT_WAIT": "0", "ELASTIC_NET_WAIT": "0", **env}
    if ctx is not None:
        environ["ELASTIC_CONTEXT_DIR"] = str(ctx)
    r = subprocess.run([*shell, str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                       env=environ, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def markers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("ELASTIC-")]


FULL_CONTEXT = r"""# written by the renderer
HOSTNAME='web1.example.org'
ETH0_MASK='255.255.0.0'
ETH0_GATEWAY='10.11.0.1'
ETH0_ROUTES='10.50.0.0/16 via 10.11.0.254 , 10.60.0.0/16'
ETH1_IP='192.168.7.9'
ETH1_MTU='1400'
ETH1_GATEWAY='192.168.7.1'
DNS='10.11.0.1
9.9.9.9'
SEARCH_DOMAIN='example.org'
HOSTS='10.11.0.6 web2
10.11.0.7 web3'
GROUP0_NAME='sgeadmin'
GROUP0_GID='1500'
GROUP0_MEMBERS='bob'
USER0_NAME='alice'
USER0_PASSWORD_HASH='$6$salt$hash'
USER0_SSH_KEYS='ssh-ed25519 AAAA alice@x
ssh-rsa BBBB alice@y'
USER0_GROUPS='sgeadmin, wheel'
USER0_SHELL='/bin/ash'
USER1_NAME='bob'
USER1_UID='2001'
USER1_HOME='/srv/bob'
ROOT_PASSWORD_HASH='$6$r$roothash'
ROOT_SSH_KEYS='ssh-ed25519 RRRR root@admin'
FILE0_PATH='/etc/app/secret'
FILE0_MODE='0600'
FILE0_OWNER='alice'
START_SCRIPT='echo it'\''s started'
START_SCRIPT_BASE64='ZWNobyBiNjQK'
SERIAL_AUTOLOGIN='yes'
MY_OWN_SETTING='passed on'
"""


@pytest.fixture(params=SHELLS, ids=SHELL_IDS)
def shell(request) -> tuple[str, ...]:
    return request.param


def test_dry_run_full_context(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05", "eth1": "02:00:0a:0c:00:07"})
    ctx = context_dir(tmp_path, FULL_CONTEXT,
                      {"etc/app/conf": "hello\n", "etc/app/secret": "s3cret\n"})
    out = dry_run(shell, root, ctx).stdout
    cmds = commands(out)

    # network: address from the MAC with the context's mask, ETH1_IP overrides its MAC
    assert "ip addr add 10.11.0.5/16 broadcast + dev eth0" in cmds
    assert "ip addr add 192.168.7.9/24 broadcast + dev eth1" in cmds
    assert "ip link set dev eth1 mtu 1400" in cmds
    assert "ip link set dev eth0 up" in cmds
    # only the lowest-numbered gateway becomes the default route
    assert [c for c in cmds if " default " in c] == ["ip route replace default via 10.11.0.1 dev eth0"]
    assert "ip route replace 10.50.0.0/16 via 10.11.0.254 dev eth0" in cmds
    assert "ip route replace 10.60.0.0/16 dev eth0" in cmds
    assert "hostname web1" in cmds

    assert (root / "etc/hostname").read_text() == "web1\n"
    hosts = (root / "etc/hosts").read_text()
    assert "10.11.0.5\tweb1.example.org web1\n" in hosts
    assert "10.11.0.6 web2\n10.11.0.7 web3\n" in hosts
    assert (root / "etc/resolv.conf").read_text() == (
        "search example.org\nnameserver 10.11.0.1\nnameserver 9.9.9.9\n")

    passwd = (root / "etc/passwd").read_text().splitlines()
    assert "alice:x:1000:1000::/home/alice:/bin/ash" in passwd
    assert "bob:x:2001:2001::/srv/bob:/bin/sh" in passwd
    shadow = {line.split(":")[0]: line.split(":") for line in
              (root / "etc/shadow").read_text().splitlines()}
    assert shadow["alice"][1] == "$6$salt$hash"
    assert shadow["bob"][1] == "*"
    assert shadow["root"][1] == "$6$r$roothash"
    groups = {line.split(":")[0]: line for line in (root / "etc/group").read_text().splitlines()}
    assert groups["sgeadmin"] == "sgeadmin:x:1500:alice,bob"
    assert groups["alice"] == "alice:x:1000:"
    assert groups["wheel"].endswith(":alice")
    assert (root / "home/alice/.ssh/authorized_keys").read_text() == (
        "ssh-ed25519 AAAA alice@x\nssh-rsa BBBB alice@y\n")
    assert oct((root / "home/alice/.ssh/authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 RRRR root@admin\n"
    assert f"chown 1000:1000 {root}/home/alice" in cmds
    assert (root / "srv/bob").is_dir()

    # files/ laid over /, FILEn_* fix modes and owners
    assert (root / "etc/app/conf").read_text() == "hello\n"
    assert oct((root / "etc/app/conf").stat().st_mode & 0o777) == "0o644"
    assert oct((root / "etc/app/secret").stat().st_mode & 0o777) == "0o600"
    assert f"chown alice {root}/etc/app/secret" in cmds

    # markers in order; startup scripts only printed in a dry run
    assert markers(out) == ["ELASTIC-READY web1 10.11.0.5", "ELASTIC-STARTED web1 0"]
    state = root / "run/elastic"
    assert (state / "start-script").read_text() == "echo it's started\n"
    assert (state / "start-script-base64").read_text() == "echo b64\n"
    assert f"sh {state}/start-script-base64" in cmds
    assert cmds[-1] == f"sh {state}/start-script"  # START_SCRIPT runs last
    assert out.index("ELASTIC-READY") < out.index(f"+ sh {state}/start-script")
    assert (state / "serial-autologin").exists()
    st = dict(line.split("=", 1) for line in (state / "state").read_text().splitlines())
    assert st["hostname"] == "web1" and st["ip"] == "10.11.0.5" and st["context"] == f"dir:{ctx}"
    assert st["failures"] == "0"


def test_dry_run_is_idempotent(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    ctx = context_dir(tmp_path, FULL_CONTEXT)
    dry_run(shell, root, ctx)
    first = {f: (root / "etc" / f).read_text() for f in ("passwd", "group", "hosts")}
    dry_run(shell, root, ctx)
    assert {f: (root / "etc" / f).read_text() for f in ("passwd", "group", "hosts")} == first
    names = [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()]
    assert names == ["root", "alice", "bob"]


def test_dry_run_without_context_uses_the_mac_and_a_24(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    r = dry_run(shell, root)
    cmds = commands(r.stdout)
    assert "ip addr add 10.11.0.5/24 broadcast + dev eth0" in cmds
    assert not any("route" in c for c in cmds)
    assert "hostname node-10-11-0-5" in cmds
    assert markers(r.stdout) == ["ELASTIC-READY node-10-11-0-5 10.11.0.5",
                                 "ELASTIC-STARTED node-10-11-0-5 0"]
    assert not (root / "etc/resolv.conf").exists()
    assert (root / "etc/passwd").read_text() == "root:x:0:0:root:/root:/bin/sh\n"


def test_dry_run_finds_the_iso_among_devices(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    (root / "dev/vda").write_bytes(b"\0" * 40000)
    fake_iso(root / "dev/vdb", "CONTEXT")
    r = dry_run(shell, root)
    assert "context ISO labelled CONTEXT on /dev/vdb" in r.stdout
    assert f"mount -t iso9660 -o ro {root}/dev/vdb {root}/run/elastic/mnt" in commands(r.stdout)


def test_dry_run_maps_interfaces_by_ethn_mac_and_skips(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"ens3": "02:00:0A:0B:00:05", "ens4": "02:00:0a:0c:00:09",
                                "ens5": "02:00:0a:0d:00:01"})
    ctx = context_dir(tmp_path, "ETH0_MAC='02:00:0a:0b:00:05'\nETH1_MAC='02:00:0A:0C:00:09'\n"
                                "ETH1_METHOD='skip'\n")
    r = dry_run(shell, root, ctx)
    cmds = commands(r.stdout)
    assert "ip addr add 10.11.0.5/24 broadcast + dev ens3" in cmds
    assert not any("ens4" in c or "ens5" in c for c in cmds)
    assert "leaving ens5" in r.stdout
    assert markers(r.stdout)[0] == "ELASTIC-READY node-10-11-0-5 10.11.0.5"


def test_dry_run_reports_failure_without_eth0(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth1": "02:00:0a:0c:00:07"})
    r = dry_run(shell, root)
    assert "ip addr add 10.12.0.7/24 broadcast + dev eth1" in commands(r.stdout)
    assert markers(r.stdout)[0] == "ELASTIC-FAILED localhost no-eth0"


def test_dry_run_survives_a_broken_context_sh(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    ctx = context_dir(tmp_path, "HOSTNAME='unterminated\n")
    r = dry_run(shell, root, ctx)
    assert "ip addr add 10.11.0.5/24 broadcast + dev eth0" in commands(r.stdout)
    assert markers(r.stdout)[0] == "ELASTIC-FAILED node-10-11-0-5 context.sh-unreadable"


def test_dry_run_rejects_bad_values_but_carries_on(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    ctx = context_dir(tmp_path, "HOSTNAME='bad name!'\nETH0_MASK='255.0.255.0'\n"
                                "USER0_NAME='Bad:User'\nUSER1_NAME='ok'\n")
    r = dry_run(shell, root, ctx)
    assert "ip addr add 10.11.0.5/24 broadcast + dev eth0" in commands(r.stdout)
    assert "hostname node-10-11-0-5" in commands(r.stdout)
    passwd = (root / "etc/passwd").read_text()
    assert "Bad" not in passwd and "\nok:x:1000:" in passwd
    assert markers(r.stdout)[0] == "ELASTIC-READY node-10-11-0-5 10.11.0.5"
    assert "failures=3" in (root / "run/elastic/state").read_text()


def test_dry_run_runs_image_hooks_then_startup_sh(shell, tmp_path) -> None:
    root = fake_root(tmp_path, {"eth0": "02:00:0a:0b:00:05"})
    hooks = root / "etc/elastic/boot.d"
    hooks.mkdir(parents=True)
    for name in ("20-b", "10-a"):
        (hooks / name).write_text("#!/bin/sh\ntrue\n")
        (hooks / name).chmod(0o755)
    (hooks / "README").write_text("not executable\n")
    ctx = context_dir(tmp_path, "START_SCRIPT='true'\n")
    (ctx / "startup.sh").write_text("echo from startup.sh\n")
    cmds = commands(dry_run(shell, root, ctx).stdout)
    runs = [c for c in cmds if "boot.d" in c or c.startswith("sh ")]
    assert runs == [f"{hooks}/10-a", f"{hooks}/20-b", f"sh {ctx}/startup.sh",
                    f"sh {root}/run/elastic/start-script"]


def test_dry_run_needs_a_root(tmp_path) -> None:
    r = subprocess.run(["sh", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin"}, timeout=10)
    assert r.returncode == 2
    assert "ELASTIC_CONTEXT_ROOT" in r.stderr
