"""A cloud node's user-data: the context a private node reads from its ISO, and elastic's boot
scripts, in one shell script that the cloud runs as root at first boot (EC2: cloud-init runs
a user-data that starts with ``#!``; the lab's cloud agent does the same).

    tree = cloud_context(node, project, spec_dir, hosts=[("10.250.0.2", "worker3"), ...],
                         extra={**enrolment.context(), "SGE_MASTER_IP": "10.77.0.20"},
                         batch="sge")
    data = render_user_data(tree, boot_scripts("sge"), node.fullname)   # gzip, < 16 KiB

So a cloud node needs no elastic image: any image with a POSIX shell, ``ip``, WireGuard
(kernel or wireguard-go) and ``wg``, and the batch system's execution daemon (Debian:
wireguard-tools, gridengine-exec) works. At boot the script writes the scripts and the
context tree (mode 0700: it holds the node's VPN private key) under ``BOOT_DIR``, then runs
``elastic-context.sh`` on it (contextualization/README.md is the contract): hostname,
/etc/hosts, users, files, ``ELASTIC-READY``; then its hooks: ``30-vpn`` brings the tunnel
up (``ELASTIC-VPN-UP``), ``50-sge`` joins Grid Engine (``SGE-EXEC-JOINED``). Markers go to
the script's standard output (EC2: the console and cloud-init's log).

``cloud_context`` and ``render_user_data`` are pure; ``boot_scripts`` reads the scripts
from this checkout. The user-data holds the node's VPN private key: never log it.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from elastic.adapters.context import context_files, context_vars, render_vars
from elastic.errors import ConfigError
from elastic.model import NodeSpec, Project

BOOT_DIR = "/var/lib/elastic/cloud"      # on the node: scripts/ and context/ (0700)
MAX_USER_DATA = 16384                    # EC2's limit, before base64
SGE_SHARE = "/usr/share/gridengine"      # Debian's gridengine packages

# the hooks the context lays down in /etc/elastic/boot.d (run in name order after READY)
VPN_HOOK = f"""#!/bin/sh
# elastic: the tunnel to the hub first, so that the batch daemon can reach its master
exec sh {BOOT_DIR}/scripts/elastic-vpn.sh
"""
SGE_HOOK = f"""#!/bin/sh
# elastic: join Grid Engine as an execution host (SGE_ROLE from /etc/elastic/sge.conf)
[ -r /etc/elastic/sge.conf ] && . /etc/elastic/sge.conf
case ${{SGE_ROLE:-exec}} in
    exec) exec sh {BOOT_DIR}/scripts/elastic-sge exec ;;
    *) exit 0 ;;
esac
"""


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def boot_scripts(batch: str | None) -> dict[str, bytes]:
    """elastic's boot scripts by name, from this checkout: the contextualization (lib.sh,
    elastic-context.sh, elastic-vpn.sh) and, for ``batch == "sge"``, elastic-sge."""
    root = _repo()
    paths = {name: root / "contextualization" / name
             for name in ("lib.sh", "elastic-context.sh", "elastic-vpn.sh")}
    if batch == "sge":
        paths["elastic-sge"] = root / "images" / "tiny" / "payloads" / "sge" / "elastic-sge"
    return {name: strip_comments(path.read_bytes()) for name, path in paths.items()}


_COMMENT = re.compile(rb"^[ \t]*#(?!!).*\n|^[ \t]*\n", re.M)


def strip_comments(script: bytes) -> bytes:
    """A shell script without its whole-line comments and blank lines (the ``#!`` line
    stays): the user-data must fit EC2's 16 KiB. Only for elastic's own scripts, which keep
    no ``#`` line inside a quoted string or a here-document (a unit test checks)."""
    return _COMMENT.sub(b"", script)


def cloud_node(node: NodeSpec) -> NodeSpec:
    """The node as it runs in a cloud: the same settings, none of the private networks (the
    cloud's own network configures eth0; the private ones are reached through the VPN), and
    users and groups by name only: a cloud image has accounts of its own (Debian's AMIs:
    uid 1000 is 'admin') and shares no file system with the private nodes, so the batch
    system needs the name, not the number."""
    return dataclasses.replace(
        node, interfaces=(), host=None,
        users=tuple(dataclasses.replace(u, uid=None) for u in node.users),
        groups=tuple(dataclasses.replace(g, gid=None) for g in node.groups))


def cloud_context(node: NodeSpec, project: Project, spec_dir: Path, *,
                  hosts: Sequence[tuple[str, str]], extra: Mapping[str, str],
                  batch: str | None = None) -> dict[str, bytes]:
    """The context tree of a cloud node (``context.sh``, ``files/...``): the node's own
    settings (users, groups, files, startup), eth0 left to the cloud (``ETH0_METHOD=skip``),
    ``HOSTS`` = ``hosts`` (address, name) instead of the private addresses, and ``extra``
    variables (the VPN's, the batch master's). The hooks ``30-vpn`` (and ``50-sge`` for
    ``batch == "sge"``) are laid down in /etc/elastic/boot.d."""
    bare = cloud_node(node)
    values = context_vars(bare, project)
    values["ETH0_METHOD"] = "skip"
    values["HOSTS"] = "\n".join(f"{address} {name}" for address, name in hosts)
    for name, value in extra.items():
        if name in values and name != "HOSTS":
            raise ValueError(f"{name} is already set by elastic")
        values[name] = value
    hooks = {"files/etc/elastic/boot.d/30-vpn": VPN_HOOK.encode()}
    if batch == "sge":
        hooks["files/etc/elastic/boot.d/50-sge"] = SGE_HOOK.encode()
    tree = context_files(bare, project, spec_dir, extra=hooks)
    tree["context.sh"] = render_vars(values, node.fullname).encode()
    return tree


def _delimiter(data: bytes) -> str:
    """A here-document delimiter that is not a line of ``data``."""
    lines = set(data.split(b"\n"))
    for i in range(1000):
        word = f"ELASTIC_EOF_{hashlib.sha256(data + str(i).encode()).hexdigest()[:12]}"
        if word.encode() not in lines:
            return word
    raise ValueError("no here-document delimiter fits")   # pragma: no cover


def _sh_path(path: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", path):
        raise ValueError(f"not a plain path for the user-data: {path!r}")
    return path


def _write(path: str, data: bytes, mode: str) -> list[str]:
    """Shell lines that write ``data`` to ``path`` with ``mode``: text that ends in a newline
    as a quoted here-document (compresses best), anything else in base64."""
    p = _sh_path(path)
    out = [f"mkdir -p \"$(dirname {p})\""]
    try:
        text = data.decode()
        plain = "\r" not in text and "\0" not in text and text.endswith("\n")
    except UnicodeDecodeError:
        plain = False
    word = _delimiter(data)
    if plain:
        out += [f"cat >{p} <<'{word}'", text + word]
    else:
        out += [f"base64 -d >{p} <<'{word}'", base64.encodebytes(data).decode() + word]
    out.append(f"chmod {mode} {p}")
    return out


def render_user_data(tree: Mapping[str, bytes], scripts: Mapping[str, bytes],
                     fullname: str, *, compress: bool = True) -> bytes:
    """The user-data script (gzip'd unless ``compress`` is False; cloud-init and the lab's
    agent unpack it): writes ``scripts`` to BOOT_DIR/scripts and the context ``tree`` to
    BOOT_DIR/context, then runs elastic-context.sh on it. Raises ConfigError when it is
    larger than EC2 takes (16 KiB)."""
    lines = [
        "#!/bin/sh",
        f"# user-data of {fullname}, written by elastic: its context and elastic's boot",
        "# scripts (contextualization/README.md). It holds the node's VPN key: do not log it.",
        "set -eu",
        "umask 077",
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"d={BOOT_DIR}",
        "rm -rf \"$d\"",
        "mkdir -p -m 0700 \"$d\" \"$d/scripts\" \"$d/context\"",
    ]
    for name in sorted(scripts):
        lines += _write(f"{BOOT_DIR}/scripts/{name}", scripts[name], "0700")
    for name in sorted(tree):
        executable = tree[name][:2] == b"#!" or name.startswith("files/etc/elastic/boot.d/")
        lines += _write(f"{BOOT_DIR}/context/{name}", tree[name],
                        "0700" if executable else "0600")
    lines += [
        "echo \"elastic: user-data of " + _sh_path(fullname) + ": running elastic-context.sh\"",
        # markers: to our output when it is a file (the lab's console log), kept open on
        # fd 9 for the daemons the hooks leave behind; else to the console (EC2's serial
        # log; cloud-init's pipe goes away when the user-data ends)
        "if [ -f /proc/self/fd/1 ]; then exec 9>&1; console=/dev/fd/9; "
        "else console=/dev/console; fi",
        f"ELASTIC_CONTEXT_DIR={BOOT_DIR}/context ELASTIC_CONSOLE=$console \\",
        f"    exec sh {BOOT_DIR}/scripts/elastic-context.sh",
        "",
    ]
    text = "\n".join(lines).encode()
    data = gzip.compress(text, mtime=0) if compress else text
    if len(data) > MAX_USER_DATA:
        raise ConfigError(f"the user-data of {fullname} is {len(data)} bytes, more than EC2 "
                          f"takes ({MAX_USER_DATA}): fewer or smaller files: for its class",
                          key="clouds")
    return data
