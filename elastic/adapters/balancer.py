"""The load balancer in front of a web tier: nginx, one master and one worker per balancer,
every file under one directory, controlled only through ``elastic.adapters.run``.

    lb = Nginx(state_dir / "balancer" / "web", netns="elastic-front")
    conf = nginx_conf(directory=lb.directory, listen="10.77.0.1", port=80,
                      backends=["10.77.0.21:80", "10.77.0.22:80"], health_path="/healthz",
                      generation="7")
    lb.configure(conf)                # written atomically, only if changed, after nginx -t
    lb.start()                        # no-op when running; returns the master's pid
    ...                               # later, the tier changed:
    if lb.configure(nginx_conf(..., backends=["10.77.0.21:80"], generation="8")):
        lb.reload("8", "10.77.0.1", 80)   # graceful; returns once generation 8 serves
    lb.connections_to("10.77.0.22:80")    # 0 once the removed front-end is drained
    lb.health("10.77.0.21:80", "/healthz")  # (True, "200") / (False, "connection refused")
    reader = LogReader(lb.access_log, start_at_end=True)
    reader.read()                     # [Request(time, upstream, status, request_time), ...]
    lb.stop()                         # graceful (nginx -s quit), then TERM; idempotent

Files, in ``directory``: ``nginx.conf`` (``nginx.conf.new`` while it is being tested),
``nginx.pid``, ``error.log``, ``access.log`` (one tab-separated line per request, format
``elastic``: ``$msec $upstream_addr $status $request_time $request_method $request_uri``,
unbuffered) and ``tmp/`` (nginx's temporary files).

The config carries a *generation* (any short token the engine picks): ``GET
/.elastic/config`` answers it, so ``reload`` knows when the new config is the one that
serves. On a reload nginx starts new workers and the old ones stop accepting, finish the
requests they have and exit (after at most ``drain_timeout``): no request is lost, and with
client keep-alive off (``nginx_conf``'s default) no client sees an error. ``reload``
returns only once every old worker has stopped accepting, so a request that starts after it
returns is served by the new config. ``/.elastic/config`` and ``/.elastic/status``
(stub_status) are not logged. Requests nginx retried on another server (connection refused,
timeout, 502-504; idempotent methods only, at most 3 tries) are logged once, with the
server that answered.

``nginx_conf``, ``parse_log`` and ``parse_stub_status`` are pure; ``LogReader`` reads a file.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import os
import re
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import BinaryIO

import jinja2

from elastic.adapters import net
from elastic.adapters.run import CommandFailed, Result, run
from elastic.errors import PermanentError, TransientError
from elastic.policy.web import Request

__all__ = [
    "LOG_FORMAT", "LOG_FORMAT_NAME", "LogReader", "Nginx", "Request", "nginx_conf", "parse_log",
    "parse_stub_status",
]

log = logging.getLogger(__name__)

LOG_FORMAT_NAME = "elastic"
# As written in nginx.conf: nginx turns \t into a tab. Variables' values have control
# characters, quotes and backslashes escaped (\xHH), so a line is always one line of six
# tab-separated fields.
LOG_FORMAT = r"$msec\t$upstream_addr\t$status\t$request_time\t$request_method\t$request_uri"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
TAIL_BYTES = 4 * 1024 * 1024

TEMPLATES = Path(__file__).resolve().parent / "templates"
# characters nginx would read as syntax (or as a variable) in an unquoted parameter
_UNSAFE = re.compile(r"[\s;{}'\"$#\\]")
_TOKEN = re.compile(r"[A-Za-z0-9._:+@=-]{1,64}")


# ------------------------------------------------------------------------------ rendering
@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,   # nginx syntax, not markup: every value is checked instead
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _split_hostport(address: str) -> tuple[str, int]:
    """``"10.0.0.1:80"`` -> ("10.0.0.1", 80); ``"[::1]:80"`` -> ("::1", 80)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: an IPv6 address is written [addr]:port")
    if not host or _UNSAFE.search(host):
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _duration(seconds: float) -> str:
    """An nginx time: ``30s``, or ``2500ms`` when not whole seconds."""
    if not seconds > 0:
        raise ValueError(f"a timeout must be positive, not {seconds!r}")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def nginx_conf(*, directory: Path, listen: str, port: int, backends: Sequence[str],
               health_path: str, generation: str, user: str | None = None,
               drain_timeout: float = 30, client_keepalive: float = 0,
               connect_timeout: float = 5) -> str:
    """The nginx.conf of a balancer listening on ``listen:port`` (an address, ``0.0.0.0``
    for all) and spreading requests round-robin over ``backends`` (``ip:port``; order and
    duplicates do not matter: they are sorted and made unique, so the same set gives the
    same text). With no backends every request is answered 503 ``no backends`` (and logged).
    ``health_path`` is what the controller checks on each backend (``Nginx.health``; nginx
    itself only notices failures passively: a server that fails 3 times in 5 s is skipped
    for 5 s); the config records it in a comment. ``generation`` is answered by ``GET
    /.elastic/config``. ``user``: the workers' user, or ``"user group"`` (nginx's default
    when None; the master must run as root to switch). ``drain_timeout``: how long old
    workers may take to finish their requests after a reload or a graceful stop.
    ``client_keepalive``: seconds an idle client connection is kept open; 0 (the default)
    closes it after each response. With keep-alive, a reload makes the old workers close
    their idle keep-alive connections at once: a client that just sent its next request on
    one has it closed unanswered (browsers retry; wrk counts read errors, 2-6 per reload at
    -c8). ``connect_timeout``: how long nginx waits for a backend to accept (a busy one
    drops SYNs; the kernel retries after 1 s and 3 s, so under 4 s a request to the only
    backend of an overloaded tier fails with 504 instead of waiting). Raises ValueError on
    a value nginx would read as syntax."""
    directory = Path(directory)
    if not directory.is_absolute() or _UNSAFE.search(str(directory)):
        raise ValueError(f"the balancer directory must be an absolute path without spaces, "
                         f"quotes or ; $ {{ }} #: {str(directory)!r}")
    if not listen or _UNSAFE.search(listen):
        raise ValueError(f"bad listen address {listen!r}")
    if ":" in listen.strip("[]"):
        listen = f"[{listen.strip('[]')}]"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")
    servers = sorted({_hostport(*_split_hostport(b)) for b in backends})
    if not health_path.startswith("/") or _UNSAFE.search(health_path):
        raise ValueError(f"a health path starts with / and has no spaces, quotes or ; $ {{ }} "
                         f"#: {health_path!r}")
    if not _TOKEN.fullmatch(generation):
        raise ValueError(f"a generation is 1-64 of [A-Za-z0-9._:+@=-], not {generation!r}")
    if user is not None:
        parts = user.split(" ")
        if len(parts) > 2 or any(not p or _UNSAFE.search(p) for p in parts):
            raise ValueError(f"bad user {user!r} (a user, or a user and a group)")
    return _env().get_template("nginx.conf.j2").render(
        directory=str(directory).rstrip("/") or "/", listen=listen, port=port,
        backends=servers, health_path=health_path, generation=generation, user=user,
        drain=_duration(drain_timeout), connect=_duration(connect_timeout),
        keepalive="0" if client_keepalive == 0 else _duration(client_keepalive),
        log_format_name=LOG_FORMAT_NAME,
        log_format_parts=LOG_FORMAT.replace(r"$status\t", "$status\\t\n").splitlines())


# ------------------------------------------------------------------------------ the log
def _parse_line(line: str) -> Request | None:
    fields = line.rstrip("\r").split("\t")
    if len(fields) != 6:
        return None
    msec, upstream, status, request_time = fields[:4]
    try:
        when = float(msec)
        took = float(request_time)
    except ValueError:
        return None
    if not status.isdigit():
        return None
    # "a:80, b:80" when nginx tried several servers, "a:80 : b:80" across an internal
    # redirect: the last one answered. "-": no upstream; the group's name ("tier"): none
    # was live, nginx answered 502 itself.
    last = re.split(r", | : ", upstream)[-1].strip()
    if ":" not in last:
        last = "-"
    return Request(time=when, upstream=last, status=int(status), request_time=took)


def parse_log(text: str) -> list[Request]:
    """The requests of complete lines of an ``elastic``-format access log, in order.
    Malformed lines are skipped, and so is whatever follows the last newline (a line nginx
    is still writing: ``LogReader`` keeps it for later). ``upstream`` is the server that
    sent the response (the last of nginx's list when it retried), ``"-"`` when none did (the
    503 of a balancer without backends, nginx's 502 when no server was live)."""
    complete = text.split("\n")[:-1]
    out = []
    for line in complete:
        r = _parse_line(line)
        if r is not None:
            out.append(r)
    return out


class LogReader:
    """Reads an access log incrementally: each ``read()`` returns the requests appended
    since the last one. A line without its newline yet is kept for the next call. A file
    truncated (smaller than what was read) or replaced (another inode: rotated) is read
    again from its beginning; a missing file reads as []. With ``start_at_end``, the first
    read only looks at the last ``tail_bytes`` of the file (its first, cut line dropped): a
    controller that restarts does not parse a huge log again. A file truncated and then
    grown past the old offset between two reads is not noticed (its start is missed)."""

    MAX_PARTIAL = 1024 * 1024   # a "line" longer than this is not one of nginx's: dropped

    def __init__(self, path: Path, start_at_end: bool = False, *,
                 tail_bytes: int = TAIL_BYTES) -> None:
        self.path = Path(path)
        self.start_at_end = start_at_end
        self.tail_bytes = int(tail_bytes)
        self._file: tuple[int, int] | None = None   # (st_dev, st_ino) being read
        self._offset = 0
        self._partial = b""
        self._skip = False
        self._first = True

    def read(self) -> list[Request]:
        try:
            with open(self.path, "rb") as f:
                return self._read(f)
        except FileNotFoundError:
            return []

    def _read(self, f: BinaryIO) -> list[Request]:
        st = os.fstat(f.fileno())
        ident = (st.st_dev, st.st_ino)
        if self._first:
            self._first = False
            self._file = ident
            self._offset = 0
            if self.start_at_end and st.st_size > self.tail_bytes:
                return parse_log(self._from_tail(f, st.st_size))
        if ident != self._file or st.st_size < self._offset:
            log.debug("%s was truncated or replaced: reading it from the start", self.path)
            self._file, self._offset, self._partial = ident, 0, b""
            self._skip = False
        f.seek(self._offset)
        chunk = f.read()
        self._offset += len(chunk)
        return parse_log(self._take(chunk))

    def _from_tail(self, f: BinaryIO, size: int) -> str:
        start = size - self.tail_bytes
        f.seek(start - 1)
        chunk = f.read()
        self._offset = start - 1 + len(chunk)
        # from the byte before the tail: a newline there means it starts on a line of its own
        self._partial, self._skip = b"", True
        return self._take(chunk)

    def _take(self, chunk: bytes) -> str:
        data = self._partial + chunk
        if self._skip:          # the rest of a line whose start was not read
            cut = data.find(b"\n")
            if cut < 0:
                self._partial = b""
                return ""
            data, self._skip = data[cut + 1:], False
        end = data.rfind(b"\n") + 1
        complete, self._partial = data[:end], data[end:]
        if len(self._partial) > self.MAX_PARTIAL:
            self._partial, self._skip = b"", True
        return complete.decode("utf-8", errors="replace")


def parse_stub_status(text: str) -> dict[str, int]:
    """nginx's stub_status page as numbers: active, accepts, handled, requests, reading,
    writing, waiting."""
    m = re.search(r"Active connections:\s*(\d+)\s+server accepts handled requests\s+"
                  r"(\d+)\s+(\d+)\s+(\d+)\s+Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+"
                  r"Waiting:\s*(\d+)", text)
    if not m:
        raise ValueError(f"not a stub_status page: {text[:80]!r}")
    keys = ("active", "accepts", "handled", "requests", "reading", "writing", "waiting")
    return dict(zip(keys, map(int, m.groups()), strict=True))


# ------------------------------------------------------------------------------ nginx
def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_nginx(pid: int) -> bool:
    """A live (not zombie) process whose command line starts with nginx: its title
    ``nginx: master process ...``, or the binary's path before it sets one."""
    args = _cmdline(pid)     # empty for a zombie
    return bool(args) and os.path.basename(args[0].split(" ", 1)[0]).startswith("nginx") \
        and not net.is_gone(pid)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _connect_host(address: str) -> str:
    """Where to connect to reach a server listening on ``address``."""
    address = address.strip("[]")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return address


class Nginx:
    """One balancer: the nginx process tree whose config, pid file and logs are in
    ``directory``, run inside network namespace ``netns`` (None: this one). Every command
    goes through ``elastic.adapters.run.run`` with a timeout."""

    START_TIMEOUT = 10.0
    COMMAND_TIMEOUT = 15.0

    def __init__(self, directory: Path, *, netns: str | None = None,
                 binary: str = "nginx") -> None:
        self.directory = Path(directory)
        self.netns = netns
        self.binary = binary

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"Nginx({self.directory}{where})"

    @property
    def conf(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.directory / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def _nginx(self, *args: str | Path, conf: Path | None = None,
               check: bool = True, timeout: float | None = None) -> Result:
        if self.netns is not None and not net.netns_exists(self.netns):
            raise net.NetError(f"{self}: network namespace {self.netns} does not exist")
        return run([self.binary, *args, "-c", conf or self.conf, "-p", f"{self.directory}/"],
                   netns=self.netns, timeout=timeout or self.COMMAND_TIMEOUT, check=check)

    def _error_tail(self, lines: int = 5) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    # ---------------------------------------------------------------- config
    def configure(self, conf_text: str) -> bool:
        """Install ``conf_text`` as nginx.conf if it differs from the current one, after
        ``nginx -t`` accepted it (a refused config leaves the old file and raises
        PermanentError with nginx's message). Makes the directories nginx writes to.
        Returns whether the file changed (then ``reload`` to put it in effect)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in TEMP_DIRS:
            (self.directory / "tmp" / name).mkdir(parents=True, exist_ok=True)
        try:
            if self.conf.read_text() == conf_text:
                return False
        except FileNotFoundError:
            pass
        new = self.conf.with_name(self.conf.name + ".new")
        with open(new, "w") as f:
            f.write(conf_text)
            f.flush()
            os.fsync(f.fileno())
        try:
            r = self._nginx("-t", "-q", conf=new, check=False)
            if r.returncode != 0:
                message = (r.stderr or r.stdout).strip().replace(str(new), "nginx.conf")
                raise PermanentError(f"{self}: nginx refused the new config: {message}")
            os.replace(new, self.conf)
        finally:
            new.unlink(missing_ok=True)
        log.info("%s: new config written", self)
        return True

    # ---------------------------------------------------------------- process
    def running(self) -> int | None:
        """The master's pid, if the pid file names a live nginx; else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and _is_nginx(pid) else None

    def start(self) -> int:
        """Start nginx (it daemonizes) unless it runs; returns the master's pid. Raises
        PermanentError when nginx refuses to start (a port in use, a bad config), with the
        end of its error log, TransientError when it did not come up in time."""
        pid = self.running()
        if pid is not None:
            return pid
        if not self.conf.exists():
            raise PermanentError(f"{self}: no nginx.conf: configure() first")
        try:
            self._nginx()
        except CommandFailed as e:
            tail = self._error_tail()
            raise PermanentError(f"{self}: nginx did not start: {e}"
                                 + (f"; error.log: {tail}" if tail else "")) from None
        deadline = time.monotonic() + self.START_TIMEOUT
        while (pid := self.running()) is None:
            if time.monotonic() > deadline:
                raise TransientError(f"{self}: nginx did not come up in "
                                     f"{self.START_TIMEOUT:g} s; error.log: "
                                     f"{self._error_tail() or '(empty)'}")
            time.sleep(0.05)
        log.info("%s: started, master pid %d", self, pid)
        return pid

    def reload(self, generation: str, address: str, port: int, timeout: float = 10) -> None:
        """Put the installed config in effect, gracefully (nginx starts new workers, the
        old ones finish their requests), starting nginx if it is not running. Returns once
        ``GET /.elastic/config`` on ``address:port`` (from the namespace) answers
        ``generation`` and every old worker has stopped accepting connections; raises
        TransientError if that did not happen within ``timeout`` seconds."""
        master = self.running()
        if master is None:
            master = self.start()
            old: set[int] = set()
        else:
            old = set(_children(master))
            self._nginx("-s", "reload")
        deadline = time.monotonic() + timeout
        host = _connect_host(address)
        seen = ""
        while True:
            try:
                status, body = self._get(host, port, "/.elastic/config", timeout=1)
                seen = body.strip() if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as e:
                seen = str(e) or type(e).__name__
            if seen == generation:
                break
            if time.monotonic() > deadline:
                raise TransientError(f"{self}: generation {generation} not in effect after "
                                     f"{timeout:g} s (/.elastic/config: {seen!r}); "
                                     f"error.log: {self._error_tail(3) or '(empty)'}")
            time.sleep(0.05)
        while (busy := [p for p in old if self._accepting(p)]):
            if time.monotonic() > deadline:
                raise TransientError(f"{self}: old workers {sorted(busy)} still accept "
                                     f"connections {timeout:g} s after the reload")
            time.sleep(0.02)
        log.info("%s: generation %s in effect", self, generation)

    @staticmethod
    def _accepting(pid: int) -> bool:
        """Whether an (old) worker may still accept: alive and not "shutting down" (nginx
        sets that title just before it closes its listening sockets, in the same step)."""
        args = _cmdline(pid)
        return bool(args) and "shutting down" not in " ".join(args) and not net.is_gone(pid)

    def stop(self, timeout: float = 30) -> None:
        """Stop gracefully (``nginx -s quit``: requests in progress finish) and wait until
        the master is gone; after ``timeout``, SIGTERM (then SIGKILL). Stopped already is
        fine. Raises TransientError if it survives all that."""
        pid = self.running()
        if pid is None:
            return
        workers = _children(pid)
        r = self._nginx("-s", "quit", check=False)
        if r.returncode != 0:       # no usable config: signal the pid we know
            run(["kill", "-QUIT", str(pid)], timeout=10, check=False)
        if self._wait_gone(pid, timeout):
            log.info("%s: stopped", self)
            return
        log.warning("%s: still running %g s after quit: SIGTERM", self, timeout)
        run(["kill", "-TERM", str(pid)], timeout=10, check=False)
        if self._wait_gone(pid, 5):
            return
        for p in [pid, *workers, *_children(pid)]:
            if _is_nginx(p):
                run(["kill", "-KILL", str(p)], timeout=10, check=False)
        if not self._wait_gone(pid, 5):
            raise TransientError(f"{self}: nginx (pid {pid}) does not stop")

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _is_nginx(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ---------------------------------------------------------------- probes
    def _get(self, host: str, port: int, path: str, *, timeout: float) -> tuple[int, str]:
        """GET ``path`` from ``host:port``, connecting from the balancer's namespace."""
        sock = net.connect_in_netns(self.netns, host, port, timeout=timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.request("GET", path, headers={"Connection": "close",
                                               "User-Agent": "elastic-balancer"})
            resp = conn.getresponse()
            body = resp.read(65536).decode(errors="replace")
            return resp.status, body
        finally:
            conn.close()

    def connections_to(self, backend: str) -> int:
        """Established TCP connections from the balancer's namespace to ``backend``
        (``ip:port``): 0 once a removed front-end is drained."""
        host, port = _split_hostport(backend)
        out = run(["ss", "-Htn", "state", "established", "dst", host, "dport", "=",
                   f":{port}"], netns=self.netns, timeout=10).stdout
        return sum(1 for line in out.splitlines() if line.strip())

    def health(self, backend: str, path: str, timeout: float = 2) -> tuple[bool, str]:
        """GET ``path`` on ``backend`` (``ip:port``) from the balancer's namespace:
        (True, "200") for a 2xx, else (False, why): ``status 503``, ``connection refused``,
        ``timed out``, ..."""
        host, port = _split_hostport(backend)
        try:
            status, _ = self._get(host, port, path, timeout=timeout)
        except ConnectionRefusedError:
            return False, "connection refused"
        except TimeoutError:
            return False, "timed out"
        except (OSError, http.client.HTTPException) as e:
            return False, str(e) or type(e).__name__
        if 200 <= status < 300:
            return True, str(status)
        return False, f"status {status}"

    def stub_status(self, address: str, port: int, timeout: float = 2) -> dict[str, int]:
        """The balancer's counters (``parse_stub_status`` of ``/.elastic/status``)."""
        try:
            status, body = self._get(_connect_host(address), port, "/.elastic/status",
                                     timeout=timeout)
        except (OSError, http.client.HTTPException) as e:
            raise TransientError(f"{self}: /.elastic/status: {e or type(e).__name__}") \
                from None
        if status != 200:
            raise TransientError(f"{self}: /.elastic/status answered {status}")
        return parse_stub_status(body)
