"""The lab's local cloud: a local EC2 whose instances are real.

moto's EC2 server on 127.0.0.1 answers the EC2 API (the provider in providers/ec2.py talks
to it as to AWS); a small proxy in front of it injects the failures moto cannot make
(no capacity, throttling); and an agent turns every running moto instance into a network
namespace on a "public" bridge that runs the instance's user-data as root.

    cloud = LocalCloud(state_dir / "cloud").start()   # moto + the fault proxy, on loopback
    cloud.endpoint                                    # http://127.0.0.1:PORT: give it to boto3
    agent = CloudAgent(cloud.moto_endpoint, cloud.directory,
                       bridge_netns="elastic-inet", bridge="inet0",
                       gateway="172.31.255.254").start()
    cloud.set_knobs(insufficient_capacity={"types": ["t3.small"]}, boot_delay=2)
    agent.console("i-0123456789abcdef0")              # what its user-data printed
    agent.stop(); cloud.stop()                        # processes killed, namespaces removed

Both also run as one daemon (for `elastic lab up --cloud`, which must outlive the CLI):

    info = start_daemon(DIR, bridge_netns="elastic-inet", bridge="inet0")  # kept if running
    info["endpoint"]                                  # also in DIR/cloud.json for others
    set_knobs(DIR, throttle=3)                        # from any process
    stop_daemon(DIR)                                  # SIGTERM; leftover namespaces removed

    # that is: python -m elastic.adapters.cloudlab DIR --bridge-netns NS --bridge BR
    #          [--gateway IP] [--cidr CIDR] [--region R ...]   (log: DIR/cloud.log)

Instances. An instance that moto says is ``running`` becomes, within a poll (0.5 s):

- the network namespace ``elastic-c-<last 8 of its id>``, with lo up and ``eth0``, one end
  of a veth pair whose other end (``vc-<last 8>``) is a port of ``bridge`` in
  ``bridge_netns``. ``eth0`` has the instance's moto PrivateIpAddress with the prefix of
  ``cidr`` (default 172.31.0.0/16, which covers moto's default subnets) and a default route
  via ``gateway`` when given. The PublicIpAddress is never used: no traffic may go to it.
- its user-data (DescribeInstanceAttribute userData), run once as a root shell script
  (a ``#!`` line picks the interpreter; gzip is unpacked; ``#cloud-config`` is refused)
  by ``ip netns exec NS unshare --uts --mount --propagation private --pid --fork
  --mount-proc`` (the boot shell stays as the instance's init), with its own
  hostname (tag Name, else elastic:node, else the id), its own file system (below), a
  clean environment (PATH, HOME=/root and ELASTIC_INSTANCE_ID); its stdin is /dev/null.
  What it starts in the background (sge_execd, wireguard-go) lives on in the instance's
  namespaces after it exits, until the instance is unmade.
- its file system, made in its private mount namespace before the user-data runs, so that
  a user-data that does what cloud user-data does (users in /etc/passwd, /etc/default/...,
  /var/spool, /var/lib, /home, /root) changes the instance and never the host: the host's
  / is its image, and it has a copy-on-write copy (overlayfs, lower = the host's
  directory) of each of /etc /var /home /root /opt /srv /usr/local, its writes in
  ``DIR/instances/<id>/root/upper/<dir>`` (overlayfs' work directories in ``root/work``:
  DIR must be on a file system overlayfs takes as upper, not on overlayfs); a fresh tmpfs
  on /tmp and /var/tmp; /etc/hosts (its name and address) and /etc/hostname written in
  its /etc; its user-data in /var/lib/cloud/instance/user-data.txt, as cloud-init keeps
  it. /run is the host's but for private tmpfs on /run/wireguard (its own ``wg0`` with
  wireguard-go), /run/elastic (the boot scripts' context) and /run/gridengine (Debian's
  gridengine-exec pid file); their mount points are empty directories in the host's /run.
  DIR itself is covered by an empty tmpfs (an instance sees no other instance's disk).
  The rest (/usr, /work, ...) is the host's, read-write: a believable machine, not a
  security boundary (it is root, in no user namespace). A host whose kernel has no
  overlayfs boots no instance: its console says why, and its user-data is not run.
- its console, ``DIR/instances/<id>/console.log``: what the agent did and what the
  user-data printed.

An instance that is no longer running (terminated, stopped, or gone from moto) has every
process in its namespaces killed (its mounts go with the last of them), the network
namespace removed and its disk (``DIR/instances/<id>/root``) removed; its console and
record stay. The agent records each instance in ``DIR/instances/<id>/instance.json``
before making its namespace: on start it adopts the namespaces of its records whose
instance still runs (their processes and file systems untouched) and removes the others.
Namespaces ``elastic-c-*`` without a record in DIR belong to another cloud: left alone.

Knobs: ``DIR/knobs.json``, re-read by the proxy on every request and by the agent on every
poll, so that any process may change them (``set_knobs(DIR, ...)`` merges under a lock;
a key set to None is removed):

    {
      "insufficient_capacity": {"types": ["t3.small"], "zones": ["us-east-1a"]},
                          # RunInstances for that type or in that zone: HTTP 500
                          # InsufficientInstanceCapacity
      "throttle": 2,      # the next 2 matching calls: HTTP 503 RequestLimitExceeded (the
                          # proxy counts it down in the file)
      "throttle_actions": ["RunInstances"],   # which actions "throttle" counts ("*": all)
      "boot_delay": 3.0,  # seconds between the namespace and the user-data
      "never_boot": ["t3.nano", "worker3"],   # types, node names or ids whose user-data
                          # never runs (the instance stays running and does nothing)
      "answer_delay": {"RunInstances": 5},    # the call is carried out, its answer comes
                          # that many seconds late (a controller killed meanwhile)
      "spot_interrupt": {"worker2": 5}        # id or node name -> seconds after it was made
                          # real: the agent terminates it on moto, as AWS reclaims spot
    }

Regions: the agent lists instances in ``regions`` and in every region the proxy has seen a
request for (``DIR/regions``). Two regions' default subnets overlap: an instance whose
private address is already in use on the bridge gets no address (its console says so).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import gzip
import http.client
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from elastic.adapters import net
from elastic.adapters.run import run, spawn
from elastic.errors import ConfigError, ElasticError, PermanentError, TransientError

log = logging.getLogger(__name__)

NETNS_PREFIX = "elastic-c-"
VETH_PREFIX = "vc-"
INSTANCE_IF = "eth0"
DEFAULT_CIDR = "172.31.0.0/16"      # moto's default VPC (its default subnets are /20s in it)
DEFAULT_REGIONS = ("us-east-1",)
KNOBS_FILE = "knobs.json"
REGIONS_FILE = "regions"
INFO_FILE = "cloud.json"
FAKE_KEY = "testing"                 # moto takes any credentials; never real ones
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# An instance's own file system (see the module's docstring). The host's directories that
# an instance gets a copy-on-write copy of (overlayfs, when they exist on the host):
OVERLAID = ("etc", "var", "home", "root", "opt", "srv", "usr/local")
# fresh and empty at every boot, as on a machine (tmpfs, mount options):
FRESH = (("tmp", "mode=1777,nosuid,nodev"), ("var/tmp", "mode=1777,nosuid,nodev"))
# the instance's own directories in the host's /run (wireguard-go's sockets, the boot
# scripts' context, Debian's gridengine-exec pid file); the rest of /run is the host's:
PRIVATE_RUN = (("run/wireguard", "mode=0700"), ("run/elastic", "mode=0700"),
               ("run/gridengine", "mode=0755"))
LAYERS = "root"                      # DIR/instances/<id>/root/{upper,work}/<dir>: its disk
USER_DATA_COPY = "/var/lib/cloud/instance/user-data.txt"   # where cloud-init keeps it

_REGION_RE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


class CloudLabError(PermanentError):
    """The local cloud cannot do what was asked (a missing part, a bad directory)."""


def short_id(instance_id: str) -> str:
    """The last 8 characters of an instance id: names its namespace and veth."""
    tail = instance_id.rsplit("-", 1)[-1]
    if len(tail) < 8 or not tail.isalnum():
        raise ValueError(f"'{instance_id}' is not an EC2 instance id")
    return tail[-8:].lower()


def instance_netns(instance_id: str) -> str:
    return NETNS_PREFIX + short_id(instance_id)


def instance_veth(instance_id: str) -> str:
    """The bridge's end of the instance's veth pair (in the bridge's namespace)."""
    return VETH_PREFIX + short_id(instance_id)


def hostname_of(instance_id: str, tags: Mapping[str, str]) -> str:
    name = tags.get("Name") or tags.get("elastic:node") or instance_id
    name = re.sub(r"[^A-Za-z0-9.-]", "-", name).strip("-.")[:63]
    return name or instance_id


def render_hosts(hostname: str, address: str | None) -> str:
    lines = ["# written by elastic's local cloud", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback", f"127.0.1.1\t{hostname}"]
    if address:
        lines.append(f"{address}\t{hostname}")
    return "\n".join(lines) + "\n"


def _overlay_listed() -> bool:
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1:] == ["overlay"] for line in lines)


def overlay_available() -> bool:
    """Can this kernel mount overlayfs? (It may be a module not loaded yet: modprobe it.)
    Without it an instance cannot have a file system of its own, and is not booted."""
    if _overlay_listed():
        return True
    if _which("modprobe"):
        with contextlib.suppress(ElasticError):
            run(["modprobe", "overlay"], timeout=30, check=False)
    return _overlay_listed()


def remove_layers(instance_dir: Path) -> bool:
    """Remove an instance's disk (``instance_dir/root``: its overlays' upper and work
    directories); its console and record stay. True if there was one. Call it once no
    process of the instance is left (its mounts go with its last process)."""
    path = Path(instance_dir) / LAYERS
    if not os.path.lexists(path):
        return False
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)             # does not follow the instance's symlinks
    except OSError as e:
        raise TransientError(f"cannot remove the instance's disk {path}: {e}") from None
    return True


def ec2_error_xml(code: str, message: str) -> bytes:
    """An error body as EC2 sends it (botocore reads Code and Message from it)."""
    from xml.sax.saxutils import escape
    return ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>").encode()


# ------------------------------------------------------------------------------ knobs

_KNOWN = ("insufficient_capacity", "throttle", "throttle_actions", "boot_delay", "never_boot",
          "spot_interrupt", "answer_delay")


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def knob_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid value of knob ``key``, or None."""
    if key not in _KNOWN:
        return f"unknown knob (known: {', '.join(_KNOWN)})"
    if key == "insufficient_capacity":
        if not (isinstance(value, dict) and set(value) <= {"types", "zones"}
                and all(_str_list(v) for v in value.values())):
            return 'a mapping {"types": [...], "zones": [...]}'
    elif key == "throttle":
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return "a number of calls (0 or more)"
    elif key in ("throttle_actions", "never_boot"):
        if not _str_list(value):
            return "a list of strings"
    elif key == "boot_delay":
        if not _number(value):
            return "seconds (0 or more)"
    elif key == "answer_delay":
        if not (isinstance(value, dict) and all(isinstance(k, str) and _number(v)
                                                for k, v in value.items())):
            return 'a mapping {"<action>": seconds}'
    elif key == "spot_interrupt":
        if not (isinstance(value, dict) and all(isinstance(k, str) and _number(v)
                                                for k, v in value.items())):
            return 'a mapping {"<instance id or node>": seconds}'
    return None


def read_knobs(directory: Path) -> dict[str, Any]:
    """The knobs in ``directory/knobs.json`` ({} when there is none); invalid entries are
    dropped with a warning (the file is edited by hand too)."""
    path = Path(directory) / KNOBS_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        log.warning("%s is not JSON (%s): no knobs", path, e)
        return {}
    if not isinstance(raw, dict):
        log.warning("%s is not a JSON object: no knobs", path)
        return {}
    out = {}
    for k, v in raw.items():
        why = knob_problem(k, v)
        if why:
            log.warning("%s: %s: ignored, %s", path, k, why)
        else:
            out[k] = v
    return out


@contextlib.contextmanager
def _knobs_locked(directory: Path) -> Iterator[None]:
    fd = os.open(Path(directory) / ".knobs.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_knobs(directory: Path, knobs: Mapping[str, Any]) -> None:
    path = Path(directory) / KNOBS_FILE
    tmp = path.with_name(f".{KNOBS_FILE}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(knobs, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def set_knobs(directory: Path, **changes: Any) -> dict[str, Any]:
    """Merge ``changes`` into ``directory/knobs.json`` (a value None removes the knob) and
    return the knobs now in force. Raises ConfigError for an unknown knob or a bad value."""
    problems = [(k, why) for k, v in changes.items()
                if v is not None and (why := knob_problem(k, v))]
    if problems:
        k, why = problems[0]
        raise ConfigError(f"{why}, not {changes[k]!r}", key=f"knobs.{k}")
    Path(directory).mkdir(parents=True, exist_ok=True)
    with _knobs_locked(directory):
        knobs = read_knobs(directory)
        for k, v in changes.items():
            if v is None:
                knobs.pop(k, None)
            else:
                knobs[k] = v
        _write_knobs(directory, knobs)
    return knobs


def _take_throttle(directory: Path, action: str) -> bool:
    """Count one throttled call down, if the knobs say this call is throttled."""
    knobs = read_knobs(directory)
    if not knobs.get("throttle"):
        return False
    with _knobs_locked(directory):
        knobs = read_knobs(directory)
        left = knobs.get("throttle", 0)
        actions = knobs.get("throttle_actions", ["RunInstances"])
        if left <= 0 or not ("*" in actions or action in actions):
            return False
        knobs["throttle"] = left - 1
        _write_knobs(directory, knobs)
    return True


# ------------------------------------------------------------------------------ the proxy

_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                  "trailer", "upgrade", "content-length"})


class _FaultProxy(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, directory: Path, upstream: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.directory = directory
        self.upstream = upstream
        self.regions: set[str] = set()
        self._regions_lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def saw_region(self, region: str) -> None:
        with self._regions_lock:
            if region in self.regions:
                return
            self.regions.add(region)
            path = self.directory / REGIONS_FILE
            tmp = path.with_name(f".{REGIONS_FILE}.tmp")
            tmp.write_text("".join(f"{r}\n" for r in sorted(self.regions)))
            os.replace(tmp, path)

    def default_subnet(self, region: str, zone: str | None) -> str | None:
        """The default subnet of ``zone`` (else of the region's first zone) in moto."""
        with self._regions_lock:
            if region not in self._clients:
                self._clients[region] = ec2_client(
                    f"http://{self.upstream[0]}:{self.upstream[1]}", region)
            client = self._clients[region]
        subnets = client.describe_subnets(
            Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        by_zone = {s["AvailabilityZone"]: s["SubnetId"] for s in subnets}
        if zone:
            return by_zone.get(zone)
        return by_zone[min(by_zone)] if by_zone else None

    def fault(self, params: Mapping[str, str]) -> tuple[int, str, str] | None:
        """(HTTP status, code, message) to answer instead of moto, or None."""
        action = params.get("Action", "")
        if action and _take_throttle(self.directory, action):
            return 503, "RequestLimitExceeded", "Request limit exceeded."
        if action != "RunInstances":
            return None
        short = read_knobs(self.directory).get("insufficient_capacity") or {}
        itype = params.get("InstanceType", "m1.small")
        zone = params.get("Placement.AvailabilityZone", "")
        if itype in short.get("types", ()) or (zone and zone in short.get("zones", ())):
            where = f"the Availability Zone you requested ({zone})" if zone else \
                "the Availability Zone we chose"
            return 500, "InsufficientInstanceCapacity", (
                f"We currently do not have sufficient {itype} capacity in {where}. Our system "
                "will be working on provisioning additional capacity. You can currently get "
                f"{itype} capacity by not specifying an Availability Zone in your request or "
                "choosing a different Availability Zone.")
        return None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("cloud proxy: " + format, *args)

    def _params(self, body: bytes) -> dict[str, str]:
        query = urllib.parse.urlsplit(self.path).query
        params = dict(urllib.parse.parse_qsl(query))
        ctype = self.headers.get("Content-Type", "")
        if body and "x-www-form-urlencoded" in ctype:
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        return params

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _into_default_subnet(self, body: bytes, region: str) -> bytes:
        """RunInstances without a subnet: add the zone's default subnet, as AWS does in a
        default VPC. (moto would make up an address in 10.0.0.0/8 instead of one of the
        subnet's, and the agent puts the private address on the public segment.)"""
        params = self._params(body)
        if params.get("Action") != "RunInstances" or "SubnetId" in params or any(
                k.startswith("NetworkInterface.") for k in params):
            return body
        try:
            subnet = self.server.default_subnet(region,
                                                params.get("Placement.AvailabilityZone"))
        except Exception as e:
            log.warning("cloud proxy: no default subnet in %s: %s", region, e)
            return body
        if subnet is None:
            return body
        return body + b"&" + urllib.parse.urlencode({"SubnetId": subnet}).encode()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        m = _REGION_RE.search(self.headers.get("Authorization", ""))
        if m:
            self.server.saw_region(m.group(1))
        try:
            fault = self.server.fault(self._params(body))
        except Exception as e:  # a broken knob file must not break the cloud
            log.warning("cloud proxy: knobs: %s", e)
            fault = None
        if fault is not None:
            status, code, message = fault
            log.info("cloud proxy: injected %s", code)
            self._answer(status, [("Content-Type", "text/xml")], ec2_error_xml(code, message))
            return
        if m and not fault:
            body = self._into_default_subnet(body, m.group(1))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self._delay(self._params(body).get("Action", ""))
            self._answer(resp.status, resp.getheaders(), data)
        except OSError as e:
            self._answer(503, [("Content-Type", "text/xml")],
                         ec2_error_xml("Unavailable", f"the local cloud's moto: {e}"))
        finally:
            conn.close()

    def _delay(self, action: str) -> None:
        """Knob answer_delay: the call is done (moto has carried it out), its answer comes
        late, as from a slow or dropped connection: a client killed meanwhile never
        learns what it started."""
        try:
            delay = float((read_knobs(self.server.directory).get("answer_delay") or {})
                          .get(action, 0))
        except (TypeError, ValueError):
            delay = 0.0
        if delay > 0:
            log.info("cloud proxy: answering %s in %.1f s (answer_delay)", action, delay)
            time.sleep(delay)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


# ------------------------------------------------------------------------------ the cloud

def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TransientError(f"nothing answers on {host}:{port} after {timeout:g} s") \
                    from None
            time.sleep(0.05)


class LocalCloud:
    """moto's EC2 on 127.0.0.1 (a free port) and the proxy in front of it (faults from the
    knobs; RunInstances without a subnet goes to the zone's default subnet, as in AWS).
    ``endpoint`` is the proxy: what clients use. ``moto_endpoint`` is moto itself (the
    agent polls it, unaffected by the knobs). ``directory`` holds the knobs, the regions
    seen and ``cloud.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(os.path.abspath(directory))
        self._moto: Any = None
        self._proxy: _FaultProxy | None = None
        self._proxy_thread: threading.Thread | None = None
        self._moto_endpoint: str | None = None
        self._endpoint: str | None = None

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise CloudLabError("the local cloud is not started")
        return self._endpoint

    @property
    def moto_endpoint(self) -> str:
        if self._moto_endpoint is None:
            raise CloudLabError("the local cloud is not started")
        return self._moto_endpoint

    def start(self) -> LocalCloud:
        """Start moto and the proxy (already started: nothing); ready when it returns."""
        if self._endpoint is not None:
            return self
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise CloudLabError("moto is not installed: pip install 'moto[server]'") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            # port 0: the kernel picks a free port at bind time (no race with another user)
            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._moto.start()
            host, port = self._moto.get_host_and_port()
            _wait_port(host, port, 30)
            self._moto_endpoint = f"http://{host}:{port}"
            self._proxy = _FaultProxy(self.directory, (host, port))
            self._proxy_thread = threading.Thread(
                target=self._proxy.serve_forever, kwargs={"poll_interval": 0.2},
                daemon=True, name="elastic-cloud-proxy")
            self._proxy_thread.start()
            self._endpoint = f"http://127.0.0.1:{self._proxy.server_address[1]}"
        except BaseException:
            self.stop()
            raise
        self._write_info()
        log.info("local cloud: EC2 at %s (moto at %s)", self._endpoint, self._moto_endpoint)
        return self

    def _write_info(self) -> None:
        info = {"endpoint": self._endpoint, "moto_endpoint": self._moto_endpoint,
                "pid": os.getpid()}
        path = self.directory / INFO_FILE
        tmp = path.with_name(f".{INFO_FILE}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, path)

    def stop(self) -> None:
        """Stop the proxy and moto (its instances are forgotten). Idempotent."""
        if self._proxy is not None:
            self._proxy.shutdown()
            self._proxy.server_close()
            if self._proxy_thread is not None:
                self._proxy_thread.join(5)
            self._proxy = self._proxy_thread = None
        if self._moto is not None:
            with contextlib.suppress(Exception):
                self._moto.stop()
            self._moto = None
        if self._endpoint is not None:
            with contextlib.suppress(FileNotFoundError):
                info = json.loads((self.directory / INFO_FILE).read_text())
                if info.get("pid") == os.getpid():
                    (self.directory / INFO_FILE).unlink()
        self._endpoint = self._moto_endpoint = None

    def set_knobs(self, **changes: Any) -> dict[str, Any]:
        return set_knobs(self.directory, **changes)

    def knobs(self) -> dict[str, Any]:
        return read_knobs(self.directory)

    def client(self, region: str = "us-east-1", *, direct: bool = False) -> Any:
        """A boto3 EC2 client on this cloud (fake credentials; botocore's retries off)."""
        return ec2_client(self.moto_endpoint if direct else self.endpoint, region)


def ec2_client(endpoint: str, region: str, *, timeout: float = 10.0) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise CloudLabError("boto3 is not installed (pip install 'elastic[cloud]')") from None
    return boto3.session.Session().client(
        "ec2", region_name=region, endpoint_url=endpoint, aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_KEY,
        config=Config(connect_timeout=timeout, read_timeout=timeout,
                      retries={"mode": "standard", "total_max_attempts": 1}))


# ------------------------------------------------------------------------------ the agent

@dataclass
class _Made:
    id: str
    region: str
    netns: str
    veth: str
    instance_type: str
    node: str | None
    hostname: str
    address: str | None
    made_at: float                  # time.monotonic()
    boot_at: float
    dir: Path
    booted: bool = False
    never_boot_said: bool = False
    proc: Any = None
    interrupted: bool = False
    names: set[str] = field(default_factory=set)


class CloudAgent:
    """Makes moto's running instances real (see the module's docstring) until ``stop()``.

    ``endpoint``: moto itself (LocalCloud.moto_endpoint), so that the knobs do not throttle
    the agent. ``directory``: the cloud's directory (knobs, instance records, consoles).
    ``bridge_netns``/``bridge``: the public segment (both must exist). ``cidr``: its prefix
    (addresses get its length). ``gateway``: the instances' default route, if any.
    """

    KILL_TIMEOUT = 5.0

    def __init__(self, endpoint: str, directory: Path, *, bridge_netns: str, bridge: str,
                 cidr: str = DEFAULT_CIDR, gateway: str | None = None,
                 regions: tuple[str, ...] = DEFAULT_REGIONS, poll: float = 0.5) -> None:
        self.endpoint = endpoint
        self.directory = Path(os.path.abspath(directory))
        self.bridge_netns = bridge_netns
        self.bridge = bridge
        self.cidr = ipaddress.ip_network(cidr)
        self.gateway = gateway
        self.regions = tuple(regions)
        self.poll = poll
        self._made: dict[str, _Made] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._adopted = False
        self._lock_fd: int | None = None
        self.last_error: str | None = None

    def __enter__(self) -> CloudAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- paths
    @property
    def instances_dir(self) -> Path:
        return self.directory / "instances"

    def console_path(self, instance_id: str) -> Path:
        return self.instances_dir / instance_id / "console.log"

    def console(self, instance_id: str) -> str:
        """What the instance's console says ('' before it is made)."""
        try:
            return self.console_path(instance_id).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def made(self) -> dict[str, str]:
        """The instances made real now: id -> namespace."""
        with self._lock:
            return {i: m.netns for i, m in self._made.items()}

    def _say(self, m: _Made | Path, text: str) -> None:
        path = (m.dir if isinstance(m, _Made) else m) / "console.log"
        stamp = time.strftime("%H:%M:%S")
        with open(path, "a") as f:
            f.write(f"[cloud {stamp}] {text}\n")

    # ---------------------------------------------------------------- start, stop
    def start(self) -> CloudAgent:
        """Check the parts, take the directory's lock and start polling in a thread."""
        if self._thread is not None:
            return self
        missing = [p for p in ("ip", "unshare") if not _which(p)]
        if os.geteuid() != 0:
            missing.append("root (network namespaces)")
        if missing:
            raise CloudLabError("the local cloud's agent needs: " + ", ".join(missing))
        if not net.link_exists(self.bridge, ns=self.bridge_netns):
            raise CloudLabError(f"no bridge {self.bridge} in network namespace "
                                f"{self.bridge_netns}: make the public segment first")
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".agent.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TransientError(f"another agent works on {self.directory}", retry_after=5) \
                from None
        self._lock_fd = fd
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="elastic-cloud-agent")
        self._thread.start()
        return self

    def stop(self, *, keep: bool = False) -> None:
        """Stop polling, kill every made instance's processes and remove its namespace
        (the moto instances stay as they are). Idempotent. ``keep``: leave the namespaces
        and their processes running, for another agent on this directory to adopt."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        errors = []
        with self._lock:
            for iid in [] if keep else list(self._made):
                try:
                    self._unmake(iid, "the agent stops")
                except ElasticError as e:
                    errors.append(str(e))
            if keep:
                self._made.clear()
            self._adopted = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if errors:
            raise TransientError("the local cloud's agent could not clean up: "
                                 + "; ".join(errors))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as e:  # one bad poll must not end the agent
                if str(e) != self.last_error:
                    log.warning("local cloud agent: %s", e)
                self.last_error = str(e)
            self._stop.wait(self.poll)

    # ---------------------------------------------------------------- one poll
    def _client(self, region: str) -> Any:
        if region not in self._clients:
            self._clients[region] = ec2_client(self.endpoint, region)
        return self._clients[region]

    def _regions(self) -> list[str]:
        seen = set(self.regions)
        with contextlib.suppress(FileNotFoundError):
            seen.update(r.strip() for r in (self.directory / REGIONS_FILE).read_text()
                        .splitlines() if r.strip())
        return sorted(seen)

    def _describe(self) -> dict[str, dict[str, Any]]:
        """Every instance moto has, in every region we know: id -> description (+ region)."""
        found: dict[str, dict[str, Any]] = {}
        for region in self._regions():
            try:
                pages = self._client(region).get_paginator("describe_instances").paginate()
                for page in pages:
                    for r in page.get("Reservations", ()):
                        for d in r.get("Instances", ()):
                            found[d["InstanceId"]] = {**d, "_region": region}
            except Exception as e:
                raise TransientError(f"cannot list the instances of {region} at "
                                     f"{self.endpoint}: {e}") from None
        return found

    def tick(self) -> None:
        """One poll: make new running instances real, boot them when due, interrupt spot
        ones, and unmake those that are no longer running."""
        with self._lock:
            live = self._describe()
            running = {i for i, d in live.items()
                       if (d.get("State") or {}).get("Name") == "running"}
            if not self._adopted:
                self._adopt(running, live)
                self._adopted = True
            knobs = read_knobs(self.directory)
            for iid in sorted(running - set(self._made)):
                self._make(live[iid], knobs)
            for iid in list(self._made):
                if iid not in running:
                    state = (live.get(iid, {}).get("State") or {}).get("Name", "gone")
                    self._unmake(iid, f"the instance is {state}")
            now = time.monotonic()
            for m in list(self._made.values()):
                if m.proc is not None and m.proc.poll() is not None:
                    m.proc = None
                if self._interrupt_due(m, knobs, now):
                    continue
                if not m.booted and now >= m.boot_at:
                    self._boot(m, knobs)

    # ---------------------------------------------------------------- adoption
    def _records(self) -> dict[str, dict[str, Any]]:
        """Our instance records whose namespace exists: netns -> record."""
        out = {}
        if not self.instances_dir.is_dir():
            return out
        for d in self.instances_dir.iterdir():
            try:
                rec = json.loads((d / "instance.json").read_text())
            except (FileNotFoundError, ValueError, NotADirectoryError):
                continue
            out[rec.get("netns", "")] = rec
        return out

    def _adopt(self, running: set[str], live: Mapping[str, Any]) -> None:
        records = self._records()
        present = net.list_netns()
        for ns, rec in records.items():     # made by an agent that died, then removed:
            if ns not in present and isinstance(rec.get("id"), str):    # its disk goes
                with contextlib.suppress(ElasticError):
                    remove_layers(self.instances_dir / rec["id"])
        for ns in present:
            if not ns.startswith(NETNS_PREFIX):
                continue
            rec = records.get(ns)
            if rec is None:
                log.info("local cloud: %s is not ours (no record in %s): left alone", ns,
                         self.instances_dir)
                continue
            iid = rec["id"]
            m = self._record_to_made(rec)
            if iid in running and net.link_exists(INSTANCE_IF, ns=ns):
                m.booted = bool(rec.get("booted")) or bool(net.netns_pids(ns))
                self._made[iid] = m
                self._say(m, "adopted by a restarted agent")
            else:
                self._made[iid] = m
                self._unmake(iid, "its instance is gone (found on start)")

    def _record_to_made(self, rec: Mapping[str, Any]) -> _Made:
        now = time.monotonic()
        return _Made(id=rec["id"], region=rec.get("region", ""), netns=rec["netns"],
                     veth=rec["veth"], instance_type=rec.get("instance_type", ""),
                     node=rec.get("node"), hostname=rec.get("hostname", rec["id"]),
                     address=rec.get("address"), made_at=now, boot_at=now,
                     dir=self.instances_dir / rec["id"], booted=bool(rec.get("booted")))

    def _save(self, m: _Made) -> None:
        rec = {"id": m.id, "region": m.region, "netns": m.netns, "veth": m.veth,
               "instance_type": m.instance_type, "node": m.node, "hostname": m.hostname,
               "address": m.address, "booted": m.booted, "bridge_netns": self.bridge_netns}
        tmp = m.dir / ".instance.json.tmp"
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, m.dir / "instance.json")

    # ---------------------------------------------------------------- make, unmake
    def _address(self, d: Mapping[str, Any], m: _Made) -> str | None:
        ip = d.get("PrivateIpAddress")
        if not ip:
            self._say(m, "no private address: eth0 has none")
            return None
        addr = ipaddress.ip_address(ip)
        if addr not in self.cidr or not addr.is_private:
            self._say(m, f"private address {ip} is outside {self.cidr}: eth0 has none")
            return None
        taken = {o.address for o in self._made.values() if o.id != m.id}
        if ip in taken:
            self._say(m, f"private address {ip} is already used on the bridge by another "
                         "instance (two regions?): eth0 has none")
            return None
        return f"{ip}/{self.cidr.prefixlen}"

    def _make(self, d: Mapping[str, Any], knobs: Mapping[str, Any]) -> None:
        iid = d["InstanceId"]
        tags = {t["Key"]: t["Value"] for t in d.get("Tags") or ()}
        now = time.monotonic()
        m = _Made(id=iid, region=d["_region"], netns=instance_netns(iid),
                  veth=instance_veth(iid), instance_type=d.get("InstanceType", ""),
                  node=tags.get("elastic:node"), hostname=hostname_of(iid, tags),
                  address=None, made_at=now,
                  boot_at=now + float(knobs.get("boot_delay", 0)),
                  dir=self.instances_dir / iid)
        m.names = {iid, m.hostname, m.instance_type, *(v for k, v in tags.items()
                                                        if k in ("Name", "elastic:node"))}
        m.dir.mkdir(parents=True, exist_ok=True)
        cidr = self._address(d, m)
        m.address = cidr.split("/")[0] if cidr else None
        self._save(m)                       # the record first: a crash leaves it findable
        self._made[iid] = m
        try:
            net.create_netns(m.netns)
            net.add_veth(INSTANCE_IF, m.netns, m.veth, self.bridge_netns,
                         peer_master=self.bridge)
            net.set_alias(m.veth, f"elastic-cloud {iid} {self.directory}"[:120],
                          ns=self.bridge_netns)
            if cidr:
                net.set_address(INSTANCE_IF, cidr, ns=m.netns)
                if self.gateway:
                    net.add_route("default", gateway=self.gateway, ns=m.netns)
            (m.dir / "hosts").write_text(render_hosts(m.hostname, m.address))
        except ElasticError as e:
            self._say(m, f"could not make the instance real: {e}")
            with contextlib.suppress(ElasticError):
                self._unmake(iid, "making it failed")
            raise TransientError(f"instance {iid}: {e}") from e
        self._say(m, f"made {m.netns} ({m.instance_type}, hostname {m.hostname}, "
                     f"eth0 {cidr or 'without address'} on {self.bridge_netns}/{self.bridge})")
        log.info("local cloud: %s is real as %s", iid, m.netns)

    def _unmake(self, iid: str, why: str) -> None:
        m = self._made.get(iid)
        if m is None:
            return
        net.kill_netns_pids(m.netns, timeout=self.KILL_TIMEOUT)
        if m.proc is not None:
            m.proc.poll()
            m.proc = None
        net.delete_link(INSTANCE_IF, ns=m.netns)
        net.delete_link(m.veth, ns=self.bridge_netns)
        net.delete_netns(m.netns)
        remove_layers(m.dir)                # its disk; failing, the next poll tries again
        del self._made[iid]
        with contextlib.suppress(OSError):
            self._say(m, f"removed {m.netns}: {why}")
        log.info("local cloud: %s unmade (%s)", iid, why)

    # ---------------------------------------------------------------- boot
    def _user_data(self, m: _Made) -> bytes:
        reply = self._client(m.region).describe_instance_attribute(
            InstanceId=m.id, Attribute="userData")
        value = (reply.get("UserData") or {}).get("Value") or ""
        data = base64.b64decode(value) if value else b""
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data

    def _layers(self, m: _Made) -> list[str]:
        """Make the upper and work directories of the instance's overlays, for the
        directories of OVERLAID that the host has, and return those. An upper directory
        gets its lower one's owner and mode (the merged directory takes them: /root stays
        0700)."""
        (m.dir / LAYERS).mkdir(mode=0o700, exist_ok=True)
        dirs = []
        for d in OVERLAID:
            lower = Path("/") / d
            if lower.is_symlink() or not lower.is_dir():
                continue
            st = lower.stat()
            upper = m.dir / LAYERS / "upper" / d
            for p in (upper, m.dir / LAYERS / "work" / d):
                p.mkdir(parents=True, exist_ok=True)
            os.chown(upper, st.st_uid, st.st_gid)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            dirs.append(d)
        return dirs

    def _boot_script(self, m: _Made, dirs: list[str], runner: str) -> str:
        """The root shell script that makes the instance's file system, inside its own mount
        namespace (private propagation: nothing it mounts reaches the host), then runs its
        user-data. Paths to the layers are relative to the instance's directory (the
        shell's working directory): they stay reachable after /root, /var or /tmp, which
        may hold DIR, are covered."""
        q = shlex.quote
        here = m.dir / LAYERS

        def must(cmd: str, what: str) -> str:
            return f"{cmd} || fail {q(what)}"

        lines = [
            "set -e",
            'fail() { echo "[cloud $(date +%H:%M:%S)] cannot boot: $*: its user-data is not '
            'run"; exit 1; }',
            must(f"cd {q(str(m.dir))}", "no instance directory"),
            # mount points in the host's /run: empty directories (/run/gridengine as
            # Debian's gridengine-exec makes it)
            "mkdir -p /run/wireguard /run/elastic",
            "[ -d /run/gridengine ] || { mkdir -m 0755 /run/gridengine && "
            "{ chown sgeadmin:sgeadmin /run/gridengine 2>/dev/null || :; }; }",
        ]
        for d in dirs:
            lines.append(must(
                f"mount -t overlay overlay -o lowerdir=/{d},upperdir={LAYERS}/upper/{d},"
                f"workdir={LAYERS}/work/{d} /{d}",
                f"cannot mount overlayfs on /{d} (its upper and work directories are in "
                f"{here}: that must be a file system overlayfs takes as upper, such as ext4, "
                "xfs or tmpfs, and not overlayfs itself)"))
        for d, opts in FRESH + PRIVATE_RUN:
            lines.append(must(f"mkdir -p /{d} && mount -t tmpfs -o {opts} tmpfs /{d}",
                              f"cannot mount a tmpfs on /{d}"))
        lines += [
            "chown sgeadmin:sgeadmin /run/gridengine 2>/dev/null || :",
            # the agent's directory (other instances' disks and consoles, the knobs): hidden
            f"if [ -d {q(str(self.directory))} ]; then "
            + must(f"mount -t tmpfs -o ro,mode=0755,size=16k tmpfs {q(str(self.directory))}",
                   f"cannot hide {self.directory}") + "; fi",
            must("cp hosts /etc/hosts", "cannot write /etc/hosts"),
            must(f"echo {q(m.hostname)} >/etc/hostname", "cannot write /etc/hostname"),
            must(f"hostname {q(m.hostname)}", "cannot set the hostname"),
            must(f"mkdir -p {q(os.path.dirname(USER_DATA_COPY))} && "
                 f"cp user-data {q(USER_DATA_COPY)} && chmod 0700 {q(USER_DATA_COPY)}",
                 f"cannot write {USER_DATA_COPY}"),
            "cd /",
            "set +e",
            f"env -i PATH={USER_PATH} HOME=/root USER=root LOGNAME=root "
            f"ELASTIC_INSTANCE_ID={m.id} {runner} </dev/null",
            "rc=$?",
            'echo "[cloud $(date +%H:%M:%S)] user-data exited $rc"',
            # this shell is the instance's init (pid 1 of its PID namespace): when it ends,
            # the kernel ends every process of the instance, so it stays, reaping orphans,
            # until the instance is unmade (SIGTERM)
            "trap 'exit 0' TERM INT",
            "while :; do sleep 3600 & wait $!; done",
        ]
        return "\n".join(lines)

    def _boot(self, m: _Made, knobs: Mapping[str, Any]) -> None:
        if m.names & set(knobs.get("never_boot", ())):
            if not m.never_boot_said:
                self._say(m, "never_boot: its user-data will not run")
                m.never_boot_said = True
            return
        data = self._user_data(m)
        m.booted = True
        self._save(m)
        if not data.strip():
            self._say(m, "no user-data: nothing to run")
            return
        if data.lstrip().startswith(b"#cloud-config"):
            self._say(m, "#cloud-config user-data is not handled here (only scripts): not run")
            return
        if not overlay_available():
            log.warning("local cloud: %s not booted: no overlayfs on this host", m.id)
            self._say(m, "cannot boot: this kernel has no overlayfs ('overlay' is not in "
                         "/proc/filesystems, and modprobe overlay did not add it), so the "
                         "instance cannot have a file system of its own: its user-data is "
                         "not run (it would change the host's files)")
            return
        script = m.dir / "user-data"
        script.write_bytes(data)
        script.chmod(0o700)
        runner = shlex.quote(USER_DATA_COPY) if data.startswith(b"#!") \
            else "sh " + shlex.quote(USER_DATA_COPY)
        try:
            dirs = self._layers(m)
        except OSError as e:
            self._say(m, f"cannot boot: cannot make its disk in {m.dir / LAYERS}: {e}")
            return
        boot = self._boot_script(m, dirs, runner)
        self._say(m, "booting: its own file system, then its user-data")
        # its own PID namespace too: Grid Engine's execd ends a job by killing every process
        # with the job's additional group id, which two instances sharing the host's
        # process table would hand out alike (one job's end killed the other's job)
        m.proc = spawn(["unshare", "--uts", "--mount", "--propagation", "private", "--pid",
                        "--fork", "--mount-proc", "sh", "-c", boot],
                       log_file=m.dir / "console.log", netns=m.netns)

    def _interrupt_due(self, m: _Made, knobs: Mapping[str, Any], now: float) -> bool:
        plan = knobs.get("spot_interrupt") or {}
        after = min((float(v) for k, v in plan.items() if k in m.names), default=None)
        if after is None or m.interrupted or now < m.made_at + after:
            return False
        self._say(m, f"spot interruption after {after:g} s: terminating it")
        try:
            self._client(m.region).terminate_instances(InstanceIds=[m.id])
        except Exception as e:
            raise TransientError(f"cannot terminate {m.id} (spot interruption): {e}") from None
        m.interrupted = True
        self._unmake(m.id, "spot interruption")
        return True


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


# ------------------------------------------------------------------------------ daemon

def daemon_info(directory: Path) -> dict[str, Any] | None:
    """``DIR/cloud.json`` ({"endpoint", "moto_endpoint", "pid"}) if its process is alive."""
    try:
        info = json.loads((Path(directory) / INFO_FILE).read_text())
        pid = int(info["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return None if _gone(pid) else dict(info)


def start_daemon(directory: Path, *, bridge_netns: str, bridge: str,
                 cidr: str = DEFAULT_CIDR, gateway: str | None = None,
                 regions: tuple[str, ...] = DEFAULT_REGIONS,
                 timeout: float = 30.0) -> dict[str, Any]:
    """Run the cloud and its agent as a daemon (``python -m elastic.adapters.cloudlab``,
    its log in DIR/cloud.log) and return its ``cloud.json`` once it answers. One that runs
    already on DIR is kept (its info is returned)."""
    directory = Path(os.path.abspath(directory))
    info = daemon_info(directory)
    if info is not None:
        return info
    directory.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "elastic.adapters.cloudlab", str(directory),
            "--bridge-netns", bridge_netns, "--bridge", bridge, "--cidr", cidr]
    if gateway:
        argv += ["--gateway", gateway]
    for r in regions:
        argv += ["--region", r]
    proc = spawn(argv, log_file=directory / "cloud.log")
    deadline = time.monotonic() + timeout
    while True:
        info = daemon_info(directory)
        if info is not None and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            raise CloudLabError(f"the local cloud exited {proc.returncode} at start: "
                                + _tail(directory / "cloud.log"))
        if time.monotonic() > deadline:
            _stop_pid(proc.pid, 5.0)
            raise TransientError(f"the local cloud did not start in {timeout:g} s: "
                                 + _tail(directory / "cloud.log"))
        time.sleep(0.1)


def stop_daemon(directory: Path, timeout: float = 30.0) -> None:
    """Stop the daemon on DIR (SIGTERM, SIGKILL after ``timeout``) and remove every
    namespace recorded in DIR that is still there. Idempotent."""
    directory = Path(os.path.abspath(directory))
    info = daemon_info(directory)
    if info is not None:
        _stop_pid(int(info["pid"]), timeout)
        with contextlib.suppress(FileNotFoundError):
            (directory / INFO_FILE).unlink()
    remove_namespaces(directory)


def remove_namespaces(directory: Path) -> list[str]:
    """Kill the processes of, and remove, every namespace recorded in DIR/instances, and
    remove the instances' disks (for after an agent that was killed; consoles and records
    stay). Returns the namespaces removed."""
    removed = []
    inst = Path(directory) / "instances"
    for rec_file in sorted(inst.glob("*/instance.json")) if inst.is_dir() else ():
        try:
            rec = json.loads(rec_file.read_text())
            ns = rec["netns"]
        except (ValueError, KeyError, OSError):
            continue
        if ns.startswith(NETNS_PREFIX) and os.path.lexists(net.netns_path(ns)):
            net.kill_netns_pids(ns)
            if rec.get("bridge_netns") and rec.get("veth"):
                net.delete_link(rec["veth"], ns=rec["bridge_netns"])
            net.delete_netns(ns)
            removed.append(ns)
        remove_layers(rec_file.parent)
    return removed


def _stop_pid(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.05)
    raise TransientError(f"the local cloud (pid {pid}) did not exit after SIGKILL")


def _gone(pid: int) -> bool:
    """Has ``pid`` exited? (A zombie has; it is reaped if it is our child.)"""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return " | ".join(text) or f"({path} is empty)"


def main(argv: list[str] | None = None) -> int:
    """Run a LocalCloud and its CloudAgent in this process until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="python -m elastic.adapters.cloudlab",
                                description="the lab's local cloud (moto + faults + agent)")
    p.add_argument("directory", type=Path)
    p.add_argument("--bridge-netns", required=True)
    p.add_argument("--bridge", required=True)
    p.add_argument("--cidr", default=DEFAULT_CIDR)
    p.add_argument("--gateway")
    p.add_argument("--region", action="append", dest="regions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    cloud = LocalCloud(args.directory)
    agent = None
    try:
        cloud.start()
        agent = CloudAgent(cloud.moto_endpoint, cloud.directory,
                           bridge_netns=args.bridge_netns, bridge=args.bridge,
                           cidr=args.cidr, gateway=args.gateway,
                           regions=tuple(args.regions or DEFAULT_REGIONS)).start()
        done.wait()
    except ElasticError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            if agent is not None:
                agent.stop()
        finally:
            cloud.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
