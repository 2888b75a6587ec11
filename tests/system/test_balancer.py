"""The nginx balancer with real processes: a "front" network namespace made here holds nginx
and the load generator (wrk), three "web" namespaces each run ``busybox httpd`` serving a
page that names its node, all on one bridge (10.99.<n>.0/24) in the front namespace.
Backends are added and removed by reloads under load without one failed request, a removed
one is drained and gets no new request, a dead one is skipped, and stop leaves nothing."""

from __future__ import annotations

import grp
import http.client
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from elastic.adapters import net
from elastic.adapters.balancer import LogReader, Nginx, nginx_conf, parse_log
from elastic.adapters.run import run, spawn
from tests.system.waiting import wait_for

# alongside: only namespaces and loopback ports of its own, no guests (see tests/conftest.py)
pytestmark = [pytest.mark.system, pytest.mark.alongside]

BUSYBOX = "/bin/busybox"
PORT = 8080
DRAIN = 5.0
HEALTH = "/index.html"
CONNECTIONS = 8          # wrk's


def _missing(*, namespaces: bool) -> list[str]:
    out = [b for b in ("nginx",) if shutil.which(b) is None]
    if namespaces:
        out += [b for b in ("wrk", "ss", "ip") if shutil.which(b) is None]
        if not os.access(BUSYBOX, os.X_OK):
            out.append(f"busybox ({BUSYBOX})")
        if os.geteuid() != 0:
            out.append("root (network namespaces)")
        if importlib.util.find_spec("pyroute2") is None:
            out.append("pyroute2")
    return out


def _get(ns: str | None, host: str, port: int, path: str = "/",
         timeout: float = 5) -> tuple[int, str]:
    sock = net.connect_in_netns(ns, host, port, timeout=timeout)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _nginx_pids(ns: str) -> list[int]:
    out = []
    for pid in net.netns_pids(ns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"nginx") and not net.is_gone(pid):
            out.append(pid)
    return out


def _wrk_numbers(text: str) -> dict[str, float]:
    """What wrk 4 prints: requests, req/s, non-2xx responses and socket errors (the last
    two lines are absent when zero)."""
    total = re.search(r"(\d+) requests in ", text)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", text)
    assert total and rps, f"unexpected wrk output:\n{text}"
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       text)
    return {"requests": int(total.group(1)), "rps": float(rps.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0}


def _only_successes(requests) -> None:
    """200s, and at most one 499 per wrk connection: wrk stops with requests in flight,
    which nginx logs as 499 (the client closed the connection)."""
    statuses = Counter(r.status for r in requests)
    assert set(statuses) <= {200, 499} and statuses[499] <= CONNECTIONS, statuses


class Load:
    """``wrk -t1 -c8 -d<s> --latency`` against the balancer, from the front namespace."""

    def __init__(self, ns: str, url: str, log_file: Path, seconds: int = 6) -> None:
        self.log_file = log_file
        self.proc = spawn(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url],
                          log_file=log_file, netns=ns)
        self.seconds = seconds

    def result(self) -> dict[str, float]:
        self.proc.wait(timeout=self.seconds + 20)
        text = self.log_file.read_text()
        for line in text.splitlines():
            if "Requests/sec" in line or "requests in" in line:
                print(f"wrk ({self.log_file.name}): {line.strip()}")
        numbers = _wrk_numbers(text)
        return numbers | {"text": text}   # type: ignore[dict-item]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture()
def tier(tmp_path):
    missing = _missing(namespaces=True)
    if missing:
        pytest.skip("the balancer test needs: " + ", ".join(missing))
    tag = uuid.uuid4().hex[:6]
    n = 20 + int(tag[:2], 16) % 200
    front = f"elastic-t-bal-{tag}-front"
    webs = [f"elastic-t-bal-{tag}-web{i}" for i in (1, 2, 3)]
    made: list[str] = []
    httpds: dict[str, subprocess.Popen[bytes]] = {}
    lb = Nginx(tmp_path / "lb", netns=front)
    try:
        for ns in (front, *webs):
            net.create_netns(ns)
            made.append(ns)
        net.add_bridge("br0", ns=front)
        net.set_address("br0", f"10.99.{n}.1/24", ns=front)
        ips = []
        for i, ns in enumerate(webs, start=1):
            ip = f"10.99.{n}.{10 + i}"
            net.add_veth(f"web{i}", front, "eth0", ns, master="br0")
            net.set_address("eth0", f"{ip}/24", ns=ns)
            root = tmp_path / f"web{i}"
            root.mkdir()
            (root / "index.html").write_text(f"hello from web{i}\n")
            httpds[f"web{i}"] = spawn([BUSYBOX, "httpd", "-f", "-p", "80", "-h", root],
                                      log_file=tmp_path / f"web{i}.log", netns=ns)
            ips.append(ip)
        for ip in ips:
            wait_for(f"httpd on {ip}", lambda ip=ip: lb.health(f"{ip}:80", HEALTH)[0], 10)
        yield SimpleNamespace(front=front, address=f"10.99.{n}.1", lb=lb, dir=tmp_path,
                              backend={f"web{i}": f"{ip}:80" for i, ip in enumerate(ips, 1)},
                              httpds=httpds)
    finally:
        try:
            lb.stop(timeout=5)
        finally:
            for p in httpds.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            for ns in made:
                net.kill_netns_pids(ns)
                net.delete_netns(ns)


def test_reloads_under_load_lose_no_request_and_a_removed_backend_drains(tier):
    lb, front, addr, be = tier.lb, tier.front, tier.address, tier.backend
    url = f"http://{addr}:{PORT}/"

    def conf(names: list[str], generation: str) -> str:
        return nginx_conf(directory=lb.directory, listen=addr, port=PORT,
                          backends=[be[x] for x in names], health_path=HEALTH,
                          generation=generation, drain_timeout=DRAIN)

    def served(count: int) -> dict[str, int]:
        seen: dict[str, int] = {}
        for _ in range(count):
            status, body = _get(front, addr, PORT)
            assert status == 200, (status, body)
            seen[body.strip()] = seen.get(body.strip(), 0) + 1
        return seen

    # ---- one backend: configured, started, a request served and logged
    assert lb.configure(conf(["web1"], "g1")) is True
    assert lb.configure(conf(["web1"], "g1")) is False          # unchanged: not rewritten
    assert lb.running() is None
    pid = lb.start()
    assert lb.running() == pid and lb.start() == pid            # started once
    assert _get(front, addr, PORT) == (200, "hello from web1\n")
    assert _get(front, addr, PORT, "/.elastic/config") == (200, "g1\n")
    reader = LogReader(lb.access_log)
    first = wait_for("the request in the access log", reader.read, 3, every=0.05)
    assert [(r.upstream, r.status) for r in first] == [(be["web1"], 200)]
    assert lb.stub_status(addr, PORT)["requests"] >= 2

    # ---- web2 and web3 added by a reload under load
    load = Load(front, url, tier.dir / "wrk-add.txt")
    try:
        time.sleep(2)
        assert lb.configure(conf(["web1", "web2", "web3"], "g2")) is True
        started = time.monotonic()
        lb.reload("g2", addr, PORT)
        print(f"reload to g2 took {time.monotonic() - started:.3f} s")
        numbers = load.result()
    finally:
        load.kill()
    assert numbers["requests"] > 0
    assert numbers["non2xx"] == 0 and numbers["socket_errors"] == 0, numbers["text"]
    seen = served(30)
    assert set(seen) == {"hello from web1", "hello from web2", "hello from web3"}, seen
    during = reader.read()
    assert {r.upstream for r in during} == set(be.values())
    _only_successes(during)

    # ---- web3 removed by a reload under load: no error, drained, no new request to it
    load = Load(front, url, tier.dir / "wrk-remove.txt")
    try:
        time.sleep(1)
        # under load nginx holds connections to web3 (busybox closes each after its answer)
        busy = [lb.connections_to(be["web3"]) for _ in range(10)]
        assert max(busy) > 0, busy
        time.sleep(0.5)
        assert lb.configure(conf(["web1", "web2"], "g3")) is True
        lb.reload("g3", addr, PORT)
        in_effect = time.time()
        numbers = load.result()
    finally:
        load.kill()
    assert numbers["non2xx"] == 0 and numbers["socket_errors"] == 0, numbers["text"]
    wait_for("web3 drained", lambda: lb.connections_to(be["web3"]) == 0, DRAIN + 1, every=0.2)
    assert set(served(20)) == {"hello from web1", "hello from web2"}
    after = reader.read()
    to_web3 = [r for r in after if r.upstream == be["web3"]]
    assert to_web3, "web3 served nothing before it was removed?"
    late = [r for r in to_web3 if r.time - r.request_time > in_effect]
    assert late == [], f"requests started after the reload went to web3: {late[:5]}"
    _only_successes(after)

    # ---- web2's httpd dies while it is listed: requests go on (next upstream), health says so
    proc = tier.httpds["web2"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert lb.health(be["web2"], HEALTH) == (False, "connection refused")
    assert lb.health(be["web1"], HEALTH) == (True, "200")
    assert lb.health(be["web1"], "/missing.html") == (False, "status 404")
    assert served(20) == {"hello from web1": 20}
    raw = wait_for("the log lines", lambda: lb.access_log.read_text(), 1, every=0.05)
    retried = [x for x in raw.splitlines() if f"{be['web2']}, {be['web1']}" in x]
    assert retried, "no request was retried on web1"
    assert all(r.upstream == be["web1"] and r.status == 200 for r in parse_log(retried[0] + "\n"))
    assert all(r.upstream == be["web1"] for r in reader.read())

    # ---- stop: nothing left; again: fine
    lb.stop()
    assert lb.running() is None and _nginx_pids(front) == []
    lb.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nginx_accepts_what_is_rendered_refuses_the_rest_and_answers_503_without_backends(
        tmp_path):
    missing = _missing(namespaces=False)
    if missing:
        pytest.skip("the nginx config test needs: " + ", ".join(missing))
    d = tmp_path / "lb"
    lb = Nginx(d)
    port = _free_port()
    nobody = pwd.getpwnam("nobody")
    user = f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}" if os.geteuid() == 0 else None
    full = nginx_conf(directory=d, listen="127.0.0.1", port=port,
                      backends=["127.0.0.1:9", "[::1]:9"], health_path="/", generation="a",
                      user=user, drain_timeout=1.5)
    empty = nginx_conf(directory=d, listen="127.0.0.1", port=port, backends=[],
                       health_path="/", generation="b", drain_timeout=1)
    assert lb.configure(full) is True
    r = run(["nginx", "-t", "-c", lb.conf, "-p", f"{d}/"], timeout=15, check=False)
    assert r.returncode == 0, r.stderr
    assert all((d / "tmp" / t).is_dir() for t in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                   "scgi"))
    # refused: the old file stays, nginx's message is in the error
    from elastic.errors import PermanentError
    with pytest.raises(PermanentError, match="unknown directive"):
        lb.configure(full.replace("keepalive 16;", "keepalive 16;\n        bogus on;"))
    assert lb.conf.read_text() == full and not (d / "nginx.conf.new").exists()

    assert lb.configure(empty) is True
    try:
        lb.start()
        assert _get(None, "127.0.0.1", port) == (503, "no backends\n")
        assert _get(None, "127.0.0.1", port, "/.elastic/config") == (200, "b\n")
        requests = wait_for("the 503 in the log", LogReader(lb.access_log).read, 3, every=0.05)
        assert [(r.upstream, r.status) for r in requests] == [("-", 503)]
    finally:
        lb.stop(timeout=5)
    assert lb.running() is None
