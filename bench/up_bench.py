"""Benchmark: `elastic up` wall time in the lab, and overlay clone vs full copy of a base disk.

    .venv/bin/python bench/up_bench.py [--counts 1,4,8] [--boot-timeout 600]

Needs root and the Debian packages of scripts/setup.sh. Uses the CLI as a user would, with a
temporary state directory:

1. `elastic lab up --hosts 2` (two hypervisor hosts in network namespaces on this machine).
   Only one lab can exist on a machine at a time: the run refuses to start if `elastic-*`
   namespaces already exist, and always removes its own lab at the end (`elastic lab down`).
2. A warm-up `up`/`down` (one node on each host) that builds the tiny image and uploads its
   base files to both hosts, not counted. Then `up` of 1, 4 and 8 tiny nodes (128M, one
   private network) on host h1, and of 4 and 8 spread over h1 and h2 (two node groups, each
   on its own private network); `down` after each. `up` returns when every node is RUNNING
   (it said ELASTIC-READY on its console).
3. Without the lab: `qemu-img create -f qcow2 -b BASE` (what `up` does per node) vs `cp` of
   BASE, for the tiny image's disk.qcow2 (almost empty) and for a ~200 MiB qcow2 filled with
   `qemu-io -c 'write 0 190M'`. Median of 5 each.

Prints the figures of one run and their ratios; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ELASTIC = [sys.executable, "-m", "elastic.cli.main"]
PROJECT = "upbench"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """Run cmd; on failure print its output and raise."""
    p = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, **kw)
    if p.returncode != 0:
        sys.stderr.write(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}{p.stderr}\n")
        raise SystemExit(1)
    return p


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    sh(cmd)
    return time.perf_counter() - t0


def lab_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], text=True, capture_output=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("elastic-")]


def spec(groups: list[tuple[str, int]]) -> str:
    """A project of tiny nodes: one group per (host, count), each on its own private network."""
    lines = [f"project: {PROJECT}", "networks:"]
    for i in range(1, len(groups) + 1):
        lines.append(f"  net{i}: {{cidr: 10.61.{i}.0/24, gateway: 10.61.{i}.1, kind: private}}")
    lines += [
        "classes:",
        "  tiny: {image: tiny, memory: 128M, vcpus: 1}",
        "nodes:",
    ]
    for i, (host, count) in enumerate(groups, 1):
        lines.append(f"  g{i}: {{class: tiny, count: {count}, names: \"g{i}n{{n}}\", host: {host}, "
                     f"interfaces: {{eth0: {{network: net{i}}}}}}}")
    return "\n".join(lines) + "\n"


def bench_up(state: Path, counts: list[int], boot_timeout: float) -> None:
    e = ELASTIC + ["--state-dir", str(state)]
    t_lab = timed(e + ["lab", "up", "--hosts", "2"])
    print(f"lab up --hosts 2: {t_lab:.1f} s")
    spec_file = state / "bench.yaml"

    def up_down(groups: list[tuple[str, int]]) -> tuple[float, float]:
        spec_file.write_text(spec(groups))
        try:
            t_up = timed(e + ["up", "--lab", "--boot-timeout", str(boot_timeout), str(spec_file)])
        finally:
            t0 = time.perf_counter()
            subprocess.run(e + ["down", PROJECT], cwd=REPO, capture_output=True)
        return t_up, time.perf_counter() - t0

    t_up, t_down = up_down([("h1", 1), ("h2", 1)])
    print(f"warm-up (not counted; builds the tiny image, uploads its base files to h1 and h2): "
          f"up of 1 node on each host {t_up:.1f} s, down {t_down:.1f} s")

    rows: list[tuple[int, int, float, float]] = []
    for n in counts:
        t_up, t_down = up_down([("h1", n)])
        rows.append((n, 1, t_up, t_down))
    for n in counts:
        if n < 2:
            continue  # one node is one host
        t_up, t_down = up_down([("h1", n - n // 2), ("h2", n // 2)])
        rows.append((n, 2, t_up, t_down))

    print()
    print("up of N tiny nodes (128M, TCG), wall time of the CLI until every node is RUNNING")
    print(f"  {'nodes':>5}  {'hosts':>5}  {'up s':>7}  {'s/node':>7}  {'down s':>7}")
    for n, h, t_up, t_down in rows:
        print(f"  {n:>5}  {h:>5}  {t_up:>7.1f}  {t_up / n:>7.1f}  {t_down:>7.1f}")
    t = {(n, h): t_up for n, h, t_up, _ in rows}
    lo, hi = min(counts), max(counts)
    if (lo, 1) in t and (hi, 1) in t and hi != lo:
        print(f"  ratio {hi}/{lo} nodes, one host:   {t[hi, 1] / t[lo, 1]:.2f}  (linear would be {hi / lo:g})")
        if (hi, 2) in t:
            print(f"  ratio {hi}/{lo} nodes, two hosts:  {t[hi, 2] / t[lo, 1]:.2f}  "
                  f"({lo} node{'s' if lo > 1 else ''} = one host)")
    if (hi, 2) in t:
        print(f"  ratio two hosts / one host, {hi} nodes: {t[hi, 2] / t[hi, 1]:.2f}")


def median_time(cmd_list: list[list[str]], before=None, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        for cmd in cmd_list:
            sh(cmd)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_clone(work: Path, repeat: int = 5) -> None:
    tiny = work / "tiny"
    p = sh(["sh", str(REPO / "images/tiny/build.sh"), str(tiny)])
    print(p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "build.sh: done")
    big = work / "big.qcow2"
    sh(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "200M"])
    sh(["qemu-io", "-f", "qcow2", "-c", "write 0 190M", str(big)])

    print()
    print(f"overlay clone vs full copy (median of {repeat}; files in {work}, "
          f"{fs_type(work)}; 'sync' = then `sync FILE`)")
    print(f"  {'base':<22} {'file MiB':>8}  {'overlay ms':>10}  {'cp ms':>8}  {'cp/overlay':>10}  "
          f"{'+sync: overlay':>14}  {'cp':>8}  {'cp/overlay':>10}")
    for label, base in (("tiny disk.qcow2", tiny / "disk.qcow2"), ("qcow2, 190M written", big)):
        ov, cp = work / "overlay.qcow2", work / "copy.qcow2"

        def clean() -> None:
            ov.unlink(missing_ok=True)
            cp.unlink(missing_ok=True)

        ov_cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(ov)]
        cp_cmd = ["cp", "--reflink=never", str(base), str(cp)]
        t_ov = median_time([ov_cmd], clean, repeat)
        t_cp = median_time([cp_cmd], clean, repeat)
        t_ovs = median_time([ov_cmd, ["sync", str(ov)]], clean, repeat)
        t_cps = median_time([cp_cmd, ["sync", str(cp)]], clean, repeat)
        clean()
        mib = base.stat().st_size / 2**20
        print(f"  {label:<22} {mib:>8.1f}  {t_ov * 1000:>10.1f}  {t_cp * 1000:>8.1f}  "
              f"{t_cp / t_ov:>10.1f}  {t_ovs * 1000:>14.1f}  {t_cps * 1000:>8.1f}  "
              f"{t_cps / t_ovs:>10.1f}")


def fs_type(path: Path) -> str:
    p = subprocess.run(["df", "--output=fstype", str(path)], text=True, capture_output=True)
    lines = p.stdout.split()
    return lines[-1] if len(lines) > 1 else "unknown filesystem"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,4,8", help="node counts (default 1,4,8)")
    ap.add_argument("--boot-timeout", type=float, default=600.0)
    ap.add_argument("--skip-lab", action="store_true", help="only the overlay/copy part")
    args = ap.parse_args()
    counts = sorted({int(c) for c in args.counts.split(",")})
    if os.geteuid() != 0 and not args.skip_lab:
        raise SystemExit("up_bench.py needs root for the lab (namespaces, libvirtd); "
                         "--skip-lab runs only the overlay/copy part")
    print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")

    with tempfile.TemporaryDirectory(prefix="upbench-") as d:
        root = Path(d)
        if not args.skip_lab:
            busy = lab_namespaces()
            if busy:
                raise SystemExit(f"a lab already exists on this machine ({', '.join(busy)}): "
                                 "wait until it is removed; only one lab can exist at a time")
            state = root / "state"
            state.mkdir()
            try:
                bench_up(state, counts, args.boot_timeout)
            finally:
                t0 = time.perf_counter()
                p = subprocess.run(ELASTIC + ["--state-dir", str(state), "lab", "down"],
                                   cwd=REPO, text=True, capture_output=True)
                if p.returncode != 0:
                    sys.stderr.write(f"lab down failed:\n{p.stdout}{p.stderr}\n")
                else:
                    print(f"lab down: {time.perf_counter() - t0:.1f} s")
                left = lab_namespaces()
                if left:
                    sys.stderr.write(f"namespaces left after lab down: {', '.join(left)}\n")
            print()
        work = root / "clone"
        work.mkdir()
        bench_clone(work)
        # disk images can be large; remove them before the directory goes
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
