"""Benchmark: live migration of a chunk between two lab hosts, and the private network's
forwarding gap (MLN's bridges needed 19 s to forward again; the goal here is under 2 s).

    .venv/bin/python bench/migrate_bench.py [--interval 0.1]

Needs root and a free machine (it makes and removes its own lab). One run; prints figures.
A chunk of three tiny guests (a pings b every INTERVAL; c is the third) and a single guest
are moved h1 -> h2 with `elastic upgrade`; the gap is the longest run of lost pings (+1)
times the interval.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastic.adapters.providers.libvirt import LibvirtHost  # noqa: E402
from tests.system.test_upgrade import _seqs, forwarding_gap  # noqa: E402

SPEC = """
include: [{hosts}]
project: migbench
networks:
  net: {{cidr: 10.36.0.0/24}}
  alone: {{cidr: 10.37.0.0/24}}
classes:
  n: {{image: tiny, memory: 128M, host: {host}, interfaces: {{eth0: {{network: net}}}}}}
nodes:
  a:
    class: n
    startup:
      - (ping -i {interval} 10.36.0.3 | while read l; do echo "PING $l"; done) &
  b:
    class: n
    interfaces: {{eth0: {{address: 10.36.0.3}}}}
  c: {{class: n}}
  solo: {{image: tiny, memory: 128M, host: {host}, interfaces: {{eth0: {{network: alone}}}}}}
"""


def elastic(state: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"elastic {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()
    if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count(
            "elastic-"):
        raise SystemExit("a lab is up on this machine: run this on a free machine")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        lab = json.loads(elastic(state, "lab", "up", "--hosts", "2", "-o", "json"))
        try:
            uri = {h["name"]: h["uri"] for h in lab["hosts"]}
            spec = Path(tmp) / "c.yaml"
            spec.write_text(SPEC.format(hosts=lab["hosts_file"], host="h1",
                                        interval=args.interval))
            elastic(state, "up", str(spec))
            h1 = LibvirtHost("h1", uri["h1"])
            h2 = LibvirtHost("h2", uri["h2"])
            time.sleep(3)
            seen = {"log": ""}
            stop = threading.Event()

            def follow() -> None:
                while not stop.is_set():
                    try:
                        text = h1.read_volume("migbench-a.console.log").decode(errors="replace")
                        seen["log"] = text or seen["log"]
                    except Exception:
                        pass
                    time.sleep(0.05)

            watcher = threading.Thread(target=follow, daemon=True)
            watcher.start()
            spec.write_text(spec.read_text().replace("host: h1", "host: h2"))
            t0 = time.monotonic()
            result = json.loads(elastic(state, "upgrade", str(spec), "-o", "json"))
            total = time.monotonic() - t0
            stop.set()
            watcher.join()
            time.sleep(2)
            after = h2.read_volume("migbench-a.console.log").decode(errors="replace")
            gap, lost = forwarding_gap(_seqs(seen["log"]) | _seqs(after), args.interval)
            mig = result["migrations"]
            print("live migration h1 -> h2 in the lab (TCG guests, 128 MiB, qcow2 overlay copied)")
            print(f"  chunk of 3 guests + 1 private switch: {mig['net']:.2f} s "
                  f"(nodes moved at once)")
            print(f"  single guest:                         {mig['alone']:.2f} s")
            print(f"  whole `elastic upgrade`:              {total:.2f} s")
            print(f"  private network forwarding gap:       {gap:.2f} s ({lost} pings lost at "
                  f"{args.interval} s interval); MLN's was 19 s: ratio {gap / 19:.3f}")
            h1.close()
            h2.close()
            elastic(state, "down", "migbench")
        finally:
            subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                            "lab", "down"], cwd=ROOT, capture_output=True, timeout=300)


if __name__ == "__main__":
    main()
