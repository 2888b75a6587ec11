"""Network namespaces, bridges, veth pairs, addresses and routes, with pyroute2.

Every function is idempotent: creating what exists is fine, deleting what is gone is fine.
``ns`` is the name of a network namespace under /run/netns, or None for the root namespace.

    from elastic.adapters import net
    net.create_netns("elastic-lan")
    net.add_bridge("lan0", ns="elastic-lan")
    net.add_veth("port-h1", "elastic-lan", "eth0", "elastic-h1")
    net.set_address("br0", "10.77.0.11/24", ns="elastic-h1")

pyroute2 is imported lazily, so that importing this module costs nothing where it is missing.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from elastic.errors import PermanentError, TransientError

NETNS_DIR = "/run/netns"
IFNAMSIZ = 15  # longest interface name the kernel accepts


class NetError(PermanentError):
    """A network change the kernel refused."""


def _pyroute2() -> Any:
    try:
        import pyroute2
    except ImportError:  # pragma: no cover - depends on the installation
        raise PermanentError("pyroute2 is not installed: pip install 'elastic[lab]'") from None
    return pyroute2


@contextmanager
def _ipr(ns: str | None) -> Iterator[Any]:
    """An IPRoute socket inside ``ns`` (which must exist)."""
    pr = _pyroute2()
    if ns is not None and not netns_exists(ns):
        raise NetError(f"network namespace {ns} does not exist")
    ipr = pr.IPRoute(netns=ns) if ns is not None else pr.IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetError(f"'{name}' is not a valid interface name (1-{IFNAMSIZ} characters)")


# ------------------------------------------------------------------------- namespaces

def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
    """True if ``name`` is a live network namespace (a bound nsfs file, not a stale file)."""
    try:
        return os.stat(netns_path(name)).st_dev == _nsfs_dev()
    except FileNotFoundError:
        return False


def list_netns() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if netns_exists(n))
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    """Make network namespace ``name`` with its loopback up. A stale file left by a creation
    killed half-way is replaced."""
    pr = _pyroute2()
    if not netns_exists(name):
        path = netns_path(name)
        if os.path.lexists(path):  # a mountpoint file without a namespace on it
            _remove_netns_file(name)
        try:
            pr.netns.create(name)
        except FileExistsError:  # made by someone else meanwhile
            pass
        if not netns_exists(name):
            raise NetError(f"could not create network namespace {name}")
    link_up("lo", ns=name)


def _remove_netns_file(name: str) -> None:
    pr = _pyroute2()
    try:
        pr.netns.remove(name)  # umount2(MNT_DETACH) + unlink
    except FileNotFoundError:
        pass


def delete_netns(name: str, *, timeout: float = 10.0) -> None:
    """Remove network namespace ``name``. Processes still inside keep it alive (without a
    name): call :func:`kill_netns_pids` first when that matters."""
    if os.path.lexists(netns_path(name)):
        _remove_netns_file(name)
    deadline = time.monotonic() + timeout
    while os.path.lexists(netns_path(name)):
        if time.monotonic() > deadline:
            raise TransientError(f"network namespace {name} is still there after {timeout:g} s")
        time.sleep(0.05)


def netns_pids(name: str) -> list[int]:
    """The processes whose network namespace is ``name`` (zombies included)."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    if st.st_dev != _nsfs_dev():
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            s = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return sorted(pids)


def is_gone(pid: int) -> bool:
    """True if ``pid`` has exited (a zombie counts as gone; it is reaped if it is our child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def kill_netns_pids(name: str, *, timeout: float = 10.0) -> list[int]:
    """End every process inside namespace ``name``: SIGTERM, then SIGKILL after half of
    ``timeout``. Returns the pids that were signalled. Raises TransientError if some survive."""
    pids = [p for p in netns_pids(name) if not is_gone(p)]
    if not pids:
        return []
    signalled = list(pids)
    deadline = time.monotonic() + timeout
    kill_at = time.monotonic() + timeout / 2
    sig = signal.SIGTERM
    while True:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
        pids = [p for p in netns_pids(name) if not is_gone(p)]
        if not pids:
            return signalled
        signalled.extend(p for p in pids if p not in signalled)
        now = time.monotonic()
        if now > deadline:
            raise TransientError(f"processes {pids} in network namespace {name} did not exit")
        if now > kill_at:
            sig = signal.SIGKILL


# ------------------------------------------------------------------------------ links

def link_index(ifname: str, *, ns: str | None = None) -> int | None:
    """The index of interface ``ifname`` in ``ns``, or None if there is none (or no ``ns``)."""
    if ns is not None and not netns_exists(ns):
        return None
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_exists(ifname: str, *, ns: str | None = None) -> bool:
    return link_index(ifname, ns=ns) is not None


def link_info(ifname: str, *, ns: str | None = None) -> dict[str, Any] | None:
    """A few facts about an interface: kind, state, master index, alias, addresses; or None."""
    if ns is not None and not netns_exists(ns):
        return None
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        msg = ipr.link("get", index=found[0])[0]
        addrs = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                 for a in ipr.get_addr(index=found[0], family=2)]
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    info: dict[str, Any] = {
        "index": found[0],
        "kind": kind,
        "up": bool(msg["flags"] & 1),
        "master": msg.get("IFLA_MASTER"),
        "alias": msg.get("IFLA_IFALIAS"),
        "addresses": addrs,
    }
    if kind == "bridge":
        info["stp_state"] = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_STP_STATE")
        info["forward_delay"] = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA",
                                               "IFLA_BR_FORWARD_DELAY")
    return info


def link_up(ifname: str, *, ns: str | None = None) -> None:
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetError(f"no interface {ifname} in {ns or 'the root namespace'}")
        ipr.link("set", index=found[0], state="up")


def delete_link(ifname: str, *, ns: str | None = None) -> None:
    """Delete an interface (a veth takes its peer with it). Gone already is fine."""
    if ns is not None and not netns_exists(ns):
        return
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            try:
                ipr.link("del", index=found[0])
            except Exception as e:  # NetlinkError ENODEV: deleted meanwhile
                if getattr(e, "code", None) != errno.ENODEV:
                    raise NetError(f"cannot delete {ifname}: {e}") from e


def set_alias(ifname: str, alias: str, *, ns: str | None = None) -> None:
    """Label an interface (IFLA_IFALIAS, up to 128 bytes): a cheap ownership tag."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetError(f"no interface {ifname} in {ns or 'the root namespace'}")
        ipr.link("set", index=found[0], ifalias=alias)


def add_bridge(name: str, *, ns: str | None = None, up: bool = True) -> None:
    """A bridge with STP off and forward delay 0 (ports forward at once), brought up.
    An existing bridge gets those settings too; another kind of link of that name is an error."""
    _check_ifname(name)
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            msg = ipr.link("get", index=found[0])[0]
            kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind != "bridge":
                raise NetError(f"{name} in {ns or 'the root namespace'} is a {kind}, not a bridge")
            ipr.link("set", index=found[0], kind="bridge", br_stp_state=0, br_forward_delay=0)
        else:
            try:
                ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            except Exception as e:
                if getattr(e, "code", None) != errno.EEXIST:
                    raise NetError(f"cannot add bridge {name}: {e}") from e
            found = ipr.link_lookup(ifname=name)
        if up:
            ipr.link("set", index=found[0], state="up")


def add_veth(name: str, ns: str | None, peer: str, peer_ns: str | None, *,
             master: str | None = None, peer_master: str | None = None,
             up: bool = True) -> None:
    """A veth pair: ``name`` in ``ns`` and ``peer`` in ``peer_ns``, each optionally enslaved to
    a bridge in its namespace, both brought up. A pair of that name that already exists is
    kept; a lone end (or a non-veth of that name) is replaced."""
    _check_ifname(name)
    _check_ifname(peer)
    if (name, ns) == (peer, peer_ns):
        raise NetError(f"a veth pair needs two names: {name}")
    a = link_info(name, ns=ns)
    b = link_info(peer, ns=peer_ns)
    if not (a and b and a["kind"] == "veth" and b["kind"] == "veth"):
        if a:
            delete_link(name, ns=ns)
        if b:
            delete_link(peer, ns=peer_ns)
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_ns != ns:
            if peer_ns is None:
                peer_spec["net_ns_pid"] = 1  # the root namespace (pid 1 lives there)
            else:
                peer_spec["net_ns_fd"] = peer_ns
        with _ipr(ns) as ipr:
            try:
                ipr.link("add", ifname=name, kind="veth", peer=peer_spec)
            except Exception as e:
                raise NetError(f"cannot add veth {name} ({ns}) <-> {peer} ({peer_ns}): {e}") \
                    from e
    if master:
        set_master(name, master, ns=ns)
    if peer_master:
        set_master(peer, peer_master, ns=peer_ns)
    if up:
        link_up(name, ns=ns)
        link_up(peer, ns=peer_ns)


def set_master(ifname: str, bridge: str, *, ns: str | None = None) -> None:
    """Make ``ifname`` a port of ``bridge`` (both in ``ns``)."""
    with _ipr(ns) as ipr:
        port = ipr.link_lookup(ifname=ifname)
        br = ipr.link_lookup(ifname=bridge)
        if not port or not br:
            missing = ifname if not port else bridge
            raise NetError(f"no interface {missing} in {ns or 'the root namespace'}")
        msg = ipr.link("get", index=port[0])[0]
        if msg.get("IFLA_MASTER") != br[0]:
            ipr.link("set", index=port[0], master=br[0])


# ------------------------------------------------------------------ addresses, routes

def set_address(ifname: str, cidr: str, *, ns: str | None = None) -> None:
    """Give ``ifname`` the address ``cidr`` (e.g. 10.77.0.11/24); already there is fine."""
    iface = ipaddress.ip_interface(cidr)
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetError(f"no interface {ifname} in {ns or 'the root namespace'}")
        family = 2 if iface.version == 4 else 10
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=found[0], family=family)}
        if (str(iface.ip), iface.network.prefixlen) in have:
            return
        try:
            ipr.addr("add", index=found[0], address=str(iface.ip),
                     prefixlen=iface.network.prefixlen)
        except Exception as e:
            if getattr(e, "code", None) != errno.EEXIST:
                raise NetError(f"cannot add {cidr} to {ifname}: {e}") from e


def add_route(dst: str, *, gateway: str | None = None, dev: str | None = None,
              ns: str | None = None) -> None:
    """A route to ``dst`` (a CIDR or 'default') via ``gateway`` and/or ``dev``; replaces one
    to the same destination."""
    with _ipr(ns) as ipr:
        kwargs: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
        if gateway:
            kwargs["gateway"] = gateway
        if dev:
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise NetError(f"no interface {dev} in {ns or 'the root namespace'}")
            kwargs["oif"] = found[0]
        try:
            ipr.route("replace", **kwargs)
        except Exception as e:
            raise NetError(f"cannot add route to {dst}: {e}") from e


# ------------------------------------------------------------------ sockets in a namespace

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def connect_in_netns(ns: str | None, host: str, port: int, *, timeout: float) -> Any:
    """A TCP socket connected to ``host:port`` from inside network namespace ``ns`` (the
    root namespace when None). The socket is made by a short-lived thread that enters the
    namespace (setns affects only the calling thread), so this process stays where it is; a
    socket keeps the namespace it was made in. Raises OSError (timeouts included)."""
    import socket
    import threading
    if ns is None:
        return socket.create_connection((host, port), timeout=timeout)
    if not netns_exists(ns):
        raise NetError(f"network namespace {ns} does not exist")
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            with open(netns_path(ns), "rb") as f:
                _setns(f.fileno())
            box["sock"] = socket.create_connection((host, port), timeout=timeout)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=work, name=f"connect-{ns}", daemon=True)
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise TimeoutError(f"connecting to {host}:{port} in {ns} did not finish")
    if "error" in box:
        raise box["error"]
    return box["sock"]
