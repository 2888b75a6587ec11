"""What a node reads at boot: the context (contextualization/README.md is the contract).

    files = context_files(node, project, spec_dir)     # {"context.sh": b"...", "files/etc/x": b"..."}
    build_iso(files, Path("/var/lib/elastic/sge/head.context.iso"))

``context_vars`` and ``render_context_sh`` are pure. ``context_files`` reads the spec's
``source:`` files. ``build_iso`` runs genisoimage through ``elastic.adapters.run``.

context.sh holds password hashes and authorized keys: never log its text or the variables;
``redacted(vars)`` gives a copy that is safe to print.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from elastic.adapters.run import run
from elastic.errors import ConfigError
from elastic.model import Interface, NodeSpec, Project

__all__ = [
    "ISO_LABEL", "context_vars", "render_context_sh", "quote", "redacted", "context_files",
    "build_iso", "tree_digest", "eth_indices",
]

ISO_LABEL = "CONTEXT"
MAX_ETH = 31
# The node's identity, for startup scripts and hooks. Not ELASTIC_*: the contract reserves
# that prefix for what elastic-context.sh itself exports (README section 3 and 6).
VAR_PROJECT = "PROJECT"
VAR_NODE = "NODE_NAME"
VAR_GROUP = "NODE_GROUP"
VAR_INDEX = "NODE_INDEX"

_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_RESERVED = frozenset({"PATH", "IFS", "HOME", "PWD", "ENV", "PS1", "PS2", "PS4", "OPTIND",
                       "SHELL", "USER", "LOGNAME", "TERM"})
_ETH_RE = re.compile(r"^eth(\d{1,2})$")
_SECRET_RE = re.compile(r"(PASSWORD_HASH|SSH_KEYS|PRIVATE_KEY|VPN_KEY)$")
# Files in the ISO get this mtime, so that equal trees make equal file entries.
_EPOCH = 946684800  # 2000-01-01T00:00:00Z
ISO_TIMEOUT = 60.0


# ------------------------------------------------------------------------------ variables
def eth_indices(interfaces: tuple[Interface, ...]) -> list[int]:
    """The ETHn index of each interface: N for an interface named ethN, else the lowest index
    not taken, in the spec's order. Raises ValueError past ETH31."""
    taken: set[int] = set()
    for iface in interfaces:
        m = _ETH_RE.match(iface.name)
        if m is not None:
            taken.add(int(m.group(1)))
    out: list[int] = []
    free = 0
    for iface in interfaces:
        m = _ETH_RE.match(iface.name)
        if m is not None:
            n = int(m.group(1))
        else:
            while free in taken:
                free += 1
            n = free
            taken.add(n)
        if n > MAX_ETH:
            raise ValueError(f"interface {iface.name}: ETH{n} is past ETH{MAX_ETH}")
        out.append(n)
    return out


def _first_address(node: NodeSpec) -> str | None:
    for iface in node.interfaces:
        if iface.address:
            return iface.address
    return None


def _nameservers(node: NodeSpec, project: Project) -> list[str]:
    if node.nameservers:
        return list(node.nameservers)
    out: list[str] = []
    for iface in node.interfaces:
        try:
            net = project.network(iface.network)
        except KeyError:
            continue
        out += [ns for ns in net.nameservers if ns not in out]
    return out


def context_vars(node: NodeSpec, project: Project) -> dict[str, str]:
    """The variables of ``node``'s context.sh, in the order they are written. Values are
    plain text (quoting is ``render_context_sh``'s job); empty settings are left out."""
    v: dict[str, str] = {}
    v["HOSTNAME"] = node.name
    v[VAR_PROJECT] = node.project
    v[VAR_NODE] = node.name
    v[VAR_GROUP] = node.group or node.name
    if node.index is not None:
        v[VAR_INDEX] = str(node.index)

    for n, iface in zip(eth_indices(node.interfaces), node.interfaces):
        p = f"ETH{n}_"
        v[p + "MAC"] = iface.mac.lower()
        if iface.address is None:
            # DHCP: the contract has no DHCP method; leave the interface to the image.
            v[p + "METHOD"] = "skip"
            continue
        v[p + "IP"] = iface.address
        if iface.prefixlen is not None:
            v[p + "MASK"] = str(iface.prefixlen)
        if iface.gateway:
            v[p + "GATEWAY"] = iface.gateway
        if iface.routes:
            v[p + "ROUTES"] = ", ".join(f"{r.to} via {r.via}" for r in iface.routes)

    dns = _nameservers(node, project)
    if dns:
        v["DNS"] = " ".join(dns)
    if node.search:
        v["SEARCH_DOMAIN"] = " ".join(node.search)
    hosts = [f"{addr} {other.name}" for other in project.nodes
             if (addr := _first_address(other)) is not None]
    if hosts:
        v["HOSTS"] = "\n".join(hosts)

    for g, group in enumerate(node.groups):
        v[f"GROUP{g}_NAME"] = group.name
        if group.gid is not None:
            v[f"GROUP{g}_GID"] = str(group.gid)

    u = 0
    for user in node.users:
        if user.name == "root":  # root's line is kept; only its hash and keys are set
            if user.password:
                v["ROOT_PASSWORD_HASH"] = user.password
            if user.ssh_keys:
                v["ROOT_SSH_KEYS"] = "\n".join(user.ssh_keys)
            continue
        p = f"USER{u}_"
        u += 1
        v[p + "NAME"] = user.name
        if user.uid is not None:
            v[p + "UID"] = str(user.uid)
        if user.groups:
            v[p + "GROUPS"] = ",".join(user.groups)
        v[p + "SHELL"] = user.shell
        if user.password:
            v[p + "PASSWORD_HASH"] = user.password
        if user.ssh_keys:
            v[p + "SSH_KEYS"] = "\n".join(user.ssh_keys)
        if user.sudo:
            v[p + "SUDO"] = "yes"

    for f, file in enumerate(node.files):
        v[f"FILE{f}_PATH"] = file.path
        v[f"FILE{f}_MODE"] = file.mode
        v[f"FILE{f}_OWNER"] = file.owner

    if node.startup:
        script = "\n".join(node.startup) + "\n"
        v["START_SCRIPT_BASE64"] = base64.b64encode(script.encode()).decode("ascii")
    return v


def quote(value: str) -> str:
    """``value`` in single quotes for a POSIX shell; a single quote becomes ``'\\''``."""
    if "\0" in value:
        raise ValueError("a shell variable cannot hold a NUL byte")
    return "'" + value.replace("'", "'\\''") + "'"


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or name in _RESERVED or name.startswith("ELASTIC_"):
        raise ValueError(f"{name!r} may not be set by context.sh (contextualization/README.md §3)")


def render_context_sh(node: NodeSpec, project: Project, *,
                      extra: Mapping[str, str] | None = None) -> str:
    """context.sh: ``NAME='value'`` lines (contract section 3). ``extra`` adds variables (they
    are passed on to the startup scripts) after elastic's own."""
    values = context_vars(node, project)
    for name, value in (extra or {}).items():
        if name in values:
            raise ValueError(f"{name} is already set by elastic")
        values[name] = value
    return render_vars(values, node.fullname)


def render_vars(values: Mapping[str, str], fullname: str) -> str:
    """context.sh of these variables, in their order (contract section 3)."""
    lines = [f"# context.sh of {fullname}, written by elastic; the format is "
             "contextualization/README.md section 3.",
             "# It holds password hashes and keys: do not log it."]
    for name, value in values.items():
        _check_name(name)
        lines.append(f"{name}={quote(value)}")
    return "\n".join(lines) + "\n"


def redacted(values: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``values`` fit for a log: password hashes and keys replaced."""
    return {k: ("<redacted>" if _SECRET_RE.search(k) and val else val)
            for k, val in values.items()}


# ------------------------------------------------------------------------------ the file tree
def _where(node: NodeSpec, project: Project) -> tuple[str, int | None]:
    if node.where is not None:
        return node.where.file, node.where.line
    return project.source, None


def _node_file_rel(path: str) -> str | None:
    """``/etc/x.conf`` -> ``etc/x.conf``; None when the path is not a clean absolute path."""
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
        return None
    return "/".join(p.parts[1:])


def context_files(node: NodeSpec, project: Project, spec_dir: Path, *,
                  extra: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """The context ISO's tree: ``context.sh`` and ``files/<path>`` for each of the node's
    files (``content:`` inline, or ``source:`` read relative to ``spec_dir``). The node's
    startup commands travel in context.sh (START_SCRIPT_BASE64), so that the same context.sh
    works where there is no ISO. ``extra`` adds more entries, e.g. ``startup.sh`` or a VPN
    config (readable by the startup scripts in their working directory).

    Raises ConfigError for a missing or unreadable source, or a bad path."""
    file, line = _where(node, project)
    out: dict[str, bytes] = {"context.sh": render_context_sh(node, project).encode()}
    for f in node.files:
        key = f"nodes.{node.group or node.name}.files.{f.path}"
        rel = _node_file_rel(f.path)
        if rel is None:
            raise ConfigError(f"file path '{f.path}' must be absolute, without '..'",
                              file, line, key)
        if f.content is not None:
            data = f.content.encode()
        elif f.source is not None:
            src = Path(spec_dir) / f.source
            try:
                data = src.read_bytes()
            except FileNotFoundError:
                raise ConfigError(f"source file '{f.source}' of {f.path} not found "
                                  f"(looked for {src})", file, line, key + ".source") from None
            except OSError as e:
                raise ConfigError(f"cannot read source file '{f.source}' of {f.path}: "
                                  f"{e.strerror or e}", file, line, key + ".source") from None
        else:
            raise ConfigError(f"file {f.path} has neither content nor source", file, line, key)
        name = "files/" + rel
        if name in out:
            raise ConfigError(f"file {f.path} is given twice", file, line, key)
        out[name] = data
    for name, data in (extra or {}).items():
        _check_rel(name)
        if name in out:
            raise ValueError(f"{name} is already in the context")
        out[name] = data
    return out


def _check_rel(name: str) -> None:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "." in name.split("/") or "" in name.split("/"):
        raise ValueError(f"bad path in the context tree: {name!r}")


def tree_digest(files: Mapping[str, bytes]) -> str:
    """A digest of a context tree, for caching: equal digests mean equal ISOs' contents
    (the ISO bytes themselves differ in their volume timestamps)."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def build_iso(files: Mapping[str, bytes], out: Path, *, mode: int = 0o600,
              timeout: float = ISO_TIMEOUT) -> Path:
    """Write ``files`` (``relative/path`` -> bytes) as an ISO9660 image labelled CONTEXT with
    Rock Ridge (``-r``: names keep their case, owner root, executable bits kept) and Joliet.
    Written next to ``out`` and renamed into place; ``mode`` 0600 because context.sh holds
    password hashes (the hypervisor must be able to read it: QEMU runs as root here, or
    libvirt's dynamic ownership hands it over). Returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".context-", dir=out.parent) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir(mode=0o700)
        dirs = {tree}
        for name in sorted(files):
            _check_rel(name)
            path = tree / name
            for parent in reversed(path.relative_to(tree).parents[:-1]):
                d = tree / parent
                if d not in dirs:
                    d.mkdir(mode=0o755, exist_ok=True)
                    dirs.add(d)
            path.write_bytes(files[name])
            executable = name == "startup.sh" or files[name][:2] == b"#!"
            path.chmod(0o755 if executable else 0o644)
            os.utime(path, (_EPOCH, _EPOCH))
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            os.utime(d, (_EPOCH, _EPOCH))
        partial = Path(tmp) / "context.iso"
        run(["genisoimage", "-quiet", "-V", ISO_LABEL, "-J", "-r", "-o", str(partial), str(tree)],
            timeout=timeout)
        partial.chmod(mode)
        os.replace(partial, out)
    return out
