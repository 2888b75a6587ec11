"""A web tier on the lab, as an operator sees it: `examples/web/cluster-lab.yaml` (tiny
front-ends whose page names their node, nginx in the lab's front end), real load from wrk
in the front end's namespace, the autoscaler as the real command.

Load rises: the tier grows from 1 to at least 3, and requests are spread over all of them.
Load falls: it shrinks back to its minimum, each leaving front-end taken out of the upstream
and drained before its VM is destroyed. Through both, wrk counts no failed request (non-2xx
or socket errors)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from elastic.adapters.run import run
from tests.system.test_autoscale_sge import FRONT, autoscaler
from tests.system.test_up import elastic, status

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "web" / "cluster-lab.yaml"
PORT = 8080


def web_spec(tmp: Path, lab) -> Path:
    """The shipped example, with its balancer in the lab's front end (these tests keep
    their own state directory, so --lab does not say it)."""
    text = EXAMPLE.read_text()
    old = "balancer: {port: 8080,"
    assert old in text
    text = text.replace(old, f"balancer: {{netns: {FRONT}, port: {PORT},")
    # quicker to shrink than the example (this test waits for every step down)
    quiet = "period: 5s, period_number: 2,\n         adjustment: change, value: -1, cooldown: 10s"
    assert quiet in text
    text = text.replace(quiet, quiet.replace("5s", "2s").replace("10s", "4s"))
    path = tmp / "weblab.yaml"
    path.write_text(f"include: [{lab.hosts_file}]\n" + text)
    return path


def get(lab, path: str = "/") -> str:
    """One GET through the balancer, from the front end's namespace; the body, or what
    went wrong."""
    import http.client

    from elastic.adapters import net
    try:
        sock = net.connect_in_netns(FRONT, lab.front_address, PORT, timeout=5)
    except OSError as e:
        return f"FAILED ({e})"
    conn = http.client.HTTPConnection(lab.front_address, PORT, timeout=5)
    conn.sock = sock
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        return body if resp.status == 200 else f"FAILED (status {resp.status}: {body})"
    except (OSError, http.client.HTTPException) as e:
        return f"FAILED ({e})"
    finally:
        conn.close()


def served_by(lab, count: int) -> dict[str, int]:
    names: dict[str, int] = {}
    for _ in range(count):
        m = re.search(r"hello from (\S+)", get(lab))
        key = m.group(1) if m else "FAILED"
        names[key] = names.get(key, 0) + 1
    return names


class Wrk:
    """wrk slices in the front end's namespace; every slice's failures are added up."""

    def __init__(self, lab, tmp: Path) -> None:
        self.url = f"http://{lab.front_address}:{PORT}/"
        self.slow = tmp / "slow.lua"
        self.slow.write_text("function delay()\n  return 200\nend\n")   # ms between requests
        self.requests = 0
        self.failed: list[str] = []
        self.rates: list[float] = []

    def slice(self, seconds: int, *, connections: int, slow: bool = False) -> None:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
        if slow:
            argv += ["-s", str(self.slow)]
        out = run([*argv, self.url], netns=FRONT, timeout=seconds + 30).stdout
        m = re.search(r"(\d+) requests in", out)
        assert m, out
        self.requests += int(m.group(1))
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if rate:
            self.rates.append(float(rate.group(1)))
        for pattern in (r"Non-2xx or 3xx responses: \d+", r"Socket errors: [^\n]+"):
            for found in re.findall(pattern, out):
                if re.search(r"[1-9]", found):
                    self.failed.append(found)


def tier(state: Path) -> dict:
    return next(t for t in status(state, "weblab")["tiers"] if t["tier"] == "www")


@pytest.fixture
def weblab(lab, tmp_path):
    missing = [b for b in ("nginx", "wrk", "ss") if shutil.which(b) is None]
    if missing:
        pytest.skip("the web tier test needs: " + ", ".join(missing))
    state = tmp_path / "state"
    spec = web_spec(tmp_path, lab)
    elastic(state, "up", str(spec), timeout=600)
    try:
        yield state, spec, tmp_path
    finally:
        elastic(state, "down", "weblab", timeout=300, check=False)


def test_the_tier_grows_with_its_load_spreads_it_and_shrinks_back_without_a_failed_request(
        weblab, lab):
    state, spec, tmp = weblab
    t = tier(state)
    assert (t["size"], t["serving"]) == (1, ["web1"]), t
    assert get(lab).startswith("hello from web1"), get(lab)
    wrk = Wrk(lab, tmp)
    log = tmp / "autoscale.log"
    with autoscaler(state, spec, log):
        # load rises: 16 connections at once, in slices, until the tier has grown
        t0 = time.monotonic()
        while len(tier(state)["serving"]) < 3:
            assert time.monotonic() - t0 < 240, log.read_text()[-4000:]
            wrk.slice(10, connections=16)
        grown = time.monotonic() - t0
        serving = tier(state)["serving"]
        assert len(serving) >= 3, serving
        # every front-end in the upstream answers its share
        spread = served_by(lab, 12 * len(serving))
        assert set(spread) == set(serving), spread
        assert min(spread.values()) >= 6, spread
        wrk.slice(5, connections=16)            # and under load too, with all of them
        page = status_page_dom(state, tmp)          # the operator's view, in a browser
        for name in serving:
            assert f"{name}.weblab" in page, name
        assert "www" in page and "tier:decision" in page, page[-2000:]
        # load falls to ~10 requests per second in all: one front-end less per step
        t1 = time.monotonic()
        while tier(state)["size"] > 1:
            assert time.monotonic() - t1 < 240, log.read_text()[-4000:]
            wrk.slice(5, connections=2, slow=True)
        shrunk = time.monotonic() - t1
        wrk.slice(3, connections=2, slow=True)
    assert wrk.failed == [], (wrk.failed, log.read_text()[-4000:])
    assert wrk.requests > 1000, wrk.requests
    final = tier(state)
    assert (final["size"], final["serving"]) == (1, ["web1"]), final
    nodes = {n["name"] for n in status(state, "weblab")["nodes"]}
    assert nodes == {"web1"}, nodes
    # each front-end that left was drained before its VM went
    events = [e for e in _events(state) if e["kind"] in ("tier:drained", "tier:upstream")]
    drained = [e["node"] for e in events if e["kind"] == "tier:drained"]
    assert sorted(drained) == sorted(set(serving) - {"web1"}), events
    assert all("connections closed" in e["reason"] for e in events
               if e["kind"] == "tier:drained"), events
    print(f"\nweb tier: 1 -> {len(serving)} front-ends in {grown:.0f} s of load, back to 1 in "
          f"{shrunk:.0f} s; {wrk.requests} requests, wrk req/s per slice {wrk.rates}")

    # by hand: the project may be left out (one project has a tier www)
    out = elastic(state, "scale", "www", "2", timeout=300).stdout
    assert "2 front-ends, serving: web1, web2" in out, out
    assert set(served_by(lab, 8)) == {"web1", "web2"}
    bad = elastic(state, "scale", "www", "9", check=False)
    assert bad.returncode != 0 and "outside min 1 .. max 4" in bad.stderr, bad.stderr
    elastic(state, "down", "weblab", timeout=300)
    assert _nginx_of(state) == []
    assert get(lab).startswith("FAILED"), "the balancer still answers after down"


def status_page_dom(state: Path, tmp: Path) -> str:
    """The status page of `elastic serve` for this state, as headless Chromium parsed it."""
    from tests.system.test_status_page_chromium import run_chromium, serve
    binary = shutil.which("chromium")
    assert binary, "needs chromium (Debian's package; scripts/setup.sh installs it)"
    with serve(state, tmp, project="weblab") as url:
        dom = run_chromium(binary, tmp, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


def _events(state: Path) -> list[dict]:
    from elastic.state import Store
    with Store.open(state, readonly=True) as store:
        return [{"kind": e.kind, "node": e.node, "reason": e.reason}
                for e in store.events("weblab")]


def _nginx_of(state: Path) -> list[int]:
    """nginx processes started with a configuration under ``state``."""
    out = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = p.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("nginx") and str(state) in cmd:
            out.append(int(p.parent.name))
    return out
