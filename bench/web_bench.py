"""Benchmark: a web tier in the lab (`examples/web/cluster-lab.yaml`, nginx in the lab's
front end, tiny front-ends running busybox httpd under QEMU TCG).

    .venv/bin/python bench/web_bench.py [--rounds 3] [--seconds 10]

Needs root and a free machine (it makes and removes its own lab). One run; prints figures:

- requests per second through the balancer (one front-end behind it) against the same
  front-end hit directly, from the same namespace with the same wrk (ratio);
- the time from a load step (wrk, 16 connections) to the first request a new front-end
  serves (the autoscaler running, its rule: > 30 rps per front-end for 3 periods of 2 s),
  median of ``--rounds``; between rounds the tier is set back to 1 by `elastic scale`, and
  its cooldown is waited out.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.adapters.balancer import LogReader  # noqa: E402

EXAMPLE = ROOT / "examples" / "web" / "cluster-lab.yaml"
FRONT = "elastic-front"
COOLDOWN = 21                         # s: the example's tier cooldown (20 s), and a second


def elastic(state: Path, *args: str, timeout: float = 600) -> str:
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"elastic {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def wrk(url: str, seconds: int, connections: int = 16) -> float:
    out = subprocess.run(["ip", "netns", "exec", FRONT, "wrk", "-t1", f"-c{connections}",
                          f"-d{seconds}s", "--timeout", "10s", url], capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit(f"wrk said:\n{out}")
    return float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="each throughput run")
    args = ap.parse_args()
    if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
            "elastic-"):
        raise SystemExit("a lab is up on this machine: run this on a free machine")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        lab = json.loads(elastic(state, "lab", "up", "--hosts", "2", "-o", "json"))
        try:
            run(state, lab, args)
        finally:
            subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                            "down", "weblab"], cwd=ROOT, capture_output=True, timeout=300)
            subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                            "lab", "down"], cwd=ROOT, capture_output=True, timeout=300)


def run(state: Path, lab: dict, args) -> None:
    spec = EXAMPLE
    elastic(state, "up", "--lab", str(spec))
    front = lab["front"]["address"]
    balancer = f"http://{front}:8080/"
    status = json.loads(elastic(state, "status", "-o", "json", "weblab"))
    web1 = next(a["address"] for n in status["nodes"] if n["name"] == "web1"
                for a in n["addresses"])
    direct_rps = wrk(f"http://{web1}:80/", args.seconds)
    through_rps = wrk(balancer, args.seconds)
    access = state / "balancers" / "weblab-www" / "access.log"
    reactions: list[float] = []
    decisions: list[float] = []
    for i in range(args.rounds):
        log = Path(state) / f"autoscale-{i}.log"
        out = open(log, "ab")
        daemon = subprocess.Popen([sys.executable, "-m", "elastic.cli.main", "--state-dir",
                                   str(state), "autoscale", "--lab", str(spec)],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while "front-ends" not in log.read_text():
                if time.monotonic() > deadline:
                    raise SystemExit(f"the autoscaler did not tick:\n{log.read_text()}")
                time.sleep(0.2)
            reader = LogReader(access, start_at_end=True)
            reader.read()
            load = subprocess.Popen(["ip", "netns", "exec", FRONT, "wrk", "-t1", "-c16",
                                     "-d300s", "--timeout", "10s", balancer],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.time()
            first = None
            while first is None and time.time() - t0 < 240:
                for r in reader.read():
                    if r.upstream not in ("-", f"{web1}:80") and r.status == 200:
                        first = r.time
                        break
                time.sleep(0.2)
            load.send_signal(signal.SIGINT)
            load.wait(30)
            if first is None:
                raise SystemExit(f"no new front-end served in 240 s:\n{log.read_text()}")
            reactions.append(first - t0)
            decided = _decided_after(state, t0)
            decisions.append(decided - t0 if decided else float("nan"))
            print(f"  round {i + 1}: load step -> decision {decisions[-1]:.1f} s -> a new "
                  f"front-end served {first - t0:.1f} s")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
            out.close()
        elastic(state, "scale", "www", "1", "weblab")
        time.sleep(COOLDOWN)          # the manual scale's cooldown: each round starts alike
    print("web tier in the lab (tiny front-ends, busybox httpd, QEMU TCG; nginx on the "
          "front end)")
    print(f"  one front-end directly:      {direct_rps:8.1f} req/s (wrk -c16, {args.seconds} s)")
    print(f"  the same through the balancer: {through_rps:6.1f} req/s: ratio "
          f"{through_rps / direct_rps:.2f}")
    print(f"  load step -> new front-end serving: median {statistics.median(reactions):.1f} s "
          f"of {len(reactions)} ({', '.join(f'{r:.1f}' for r in reactions)}); the rule "
          f"itself needs 6 s (3 periods of 2 s); the decision came at median "
          f"{statistics.median(decisions):.1f} s, the rest is making and booting the VMs")


def _decided_after(state: Path, t0: float) -> float | None:
    """When the autoscaler decided to grow the tier, after ``t0`` (the event log)."""
    from elastic.state import Store
    with Store.open(state, readonly=True) as store:
        times = [e.time for e in store.events("weblab", since=t0) if e.kind == "tier:decision"]
    return times[0] if times else None


if __name__ == "__main__":
    main()
