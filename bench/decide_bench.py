"""Benchmark: one autoscaling decision on a big queue.

    .venv/bin/python bench/decide_bench.py [--jobs 100000] [--workers 1000] [--repeat 7]

Builds a snapshot of N pending jobs of mixed shapes (one-slot jobs, array jobs, $pe_slots
jobs of 2-4 slots, $fill_up MPI jobs of 8-64 slots, jobs with memory requests, a few that
fit no worker) and W workers (running with some slots used, booting, draining), then times
decide() (the median of --repeat runs, after one warm-up). Building the input is not timed.
Prints the time and its ratio to the 100 ms target; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from elastic.lifecycle import State  # noqa: E402
from elastic.model import Job, QueueSnapshot  # noqa: E402
from elastic.policy import Capacity, Memory, WorkerShape, WorkerView, decide  # noqa: E402
from elastic.spec.schema import ScalingSpec  # noqa: E402

TARGET = 0.100
NOW = 1_700_000_000.0


def make_jobs(n: int, rng: random.Random) -> list[Job]:
    jobs = []
    for i in range(n):
        r = rng.random()
        kw: dict = {}
        if r < 0.70:
            slots, tasks, pe = 1, 1, None
        elif r < 0.80:
            slots, tasks, pe = 1, rng.randint(2, 100), None            # array job
        elif r < 0.90:
            slots, tasks, pe = rng.choice((2, 4)), 1, "smp"
        elif r < 0.95:
            slots, tasks, pe = rng.choice((8, 16, 32, 64)), 1, "mpi"
        elif r < 0.999:
            slots, tasks, pe = 1, 1, None
            kw["resources"] = {"h_vmem": rng.choice(("1G", "2G", "4G", "6G"))}
        else:
            slots, tasks, pe = 16, 1, "smp"                            # fits no worker
        jobs.append(Job(str(i), f"job{i}", f"user{i % 50}", "qw", slots=slots, tasks=tasks,
                        pe=pe, submitted=NOW - rng.uniform(0, 7200), **kw))
    return jobs


def make_workers(n: int, rng: random.Random) -> list[WorkerView]:
    out = []
    for i in range(n):
        r = rng.random()
        site = "private" if i < n // 2 else "ec2"
        created = NOW - rng.uniform(600, 86400)
        if r < 0.85:
            used = rng.randint(0, 8)
            out.append(WorkerView(f"w{i}", site, State.RUNNING, created, created, 8,
                                  running_jobs=used, slots_used=used,
                                  idle_since=None if used else NOW - 30, joined=True))
        elif r < 0.95:
            out.append(WorkerView(f"w{i}", site, State.BOOT, NOW - 60, NOW - 60, 8))
        else:
            used = rng.randint(0, 8)
            out.append(WorkerView(f"w{i}", site, State.DRAINING, created, NOW - 100, 8,
                                  running_jobs=used, slots_used=used, joined=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    jobs = make_jobs(args.jobs, rng)
    workers = make_workers(args.workers, rng)
    snap = QueueSnapshot(NOW, True, pending=tuple(jobs))
    spec = ScalingSpec(group="worker", batch={"master": "head"}, max_workers=2000,
                       max_launch_per_tick=50, burst=["ec2"])
    shape = WorkerShape(slots=8, memory=16384)
    cap = Capacity(private=20, clouds={"ec2": 500})
    rules = {"mpi": "$fill_up", "smp": "$pe_slots"}

    def once():
        t0 = time.perf_counter()
        plan = decide(snap, workers, spec, shape, cap, Memory(), NOW, pe_rules=rules)
        return time.perf_counter() - t0, plan

    once()                                       # warm-up
    times, plan = [], None
    for _ in range(args.repeat):
        t, plan = once()
        times.append(t)
    med = statistics.median(times)
    tasks = sum(j.tasks for j in jobs)
    print(f"decide(): {args.jobs:,} pending jobs ({tasks:,} tasks, "
          f"{snap.pending_slots:,} slots), {args.workers:,} workers")
    print(f"  median {med * 1000:.1f} ms, best {min(times) * 1000:.1f} ms "
          f"over {args.repeat} runs")
    print(f"  ratio to the {TARGET * 1000:.0f} ms target: {med / TARGET:.2f}")
    print(f"  plan: {len(plan.actions)} actions, {plan.launched} workers to launch, "
          f"{len(plan.notes)} notes")
    for a in plan.actions[:3]:
        print(f"    {a}")


if __name__ == "__main__":
    main()
