"""Benchmark: parse a ``qstat -xml -u '*' -r`` with 5,000 pending jobs. Target: under 200 ms.

    .venv/bin/python bench/qstat_parse_bench.py [--jobs 5000] [--repeat 7]

The document is made from a real capture (tests/data/sge/qstat-pending.xml): its pending
``qw`` job elements (plain, array, PE, PE range, -l, -q) are replicated with fresh job
numbers and submission times spread over an hour, until there are ``--jobs`` of them.
Prints its size, the median and best parse time, and the ratio of the median to the target.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from elastic.adapters.batch.sge_parse import parse_qstat

CAPTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "sge" / "qstat-pending.xml"
TARGET = 0.200


def generate(jobs: int) -> str:
    text = CAPTURE.read_text()
    elements = [el for el in re.findall(r"[ \t]*<job_list state=\"pending\">.*?</job_list>\n",
                                        text, re.S) if "<state>qw</state>" in el]
    if not elements:
        raise SystemExit(f"{CAPTURE}: no pending job_list elements")
    start = datetime(2026, 1, 1, 12, 0, 0)
    out = []
    for n in range(jobs):
        el = elements[n % len(elements)]
        el = re.sub(r"<JB_job_number>\d+</JB_job_number>",
                    f"<JB_job_number>{1000 + n}</JB_job_number>", el)
        stamp = (start + timedelta(seconds=n % 3600)).isoformat()
        el = re.sub(r"<JB_submission_time>[^<]*</JB_submission_time>",
                    f"<JB_submission_time>{stamp}</JB_submission_time>", el)
        out.append(el)
    head, _, rest = text.partition("  <job_info>\n")
    _, _, tail = rest.rpartition("</job_list>\n")
    return head + "  <job_info>\n" + "".join(out) + tail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    xml = generate(args.jobs)
    snap = parse_qstat(xml, 0.0, tz=timezone.utc)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        snap = parse_qstat(xml, 0.0, tz=timezone.utc)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(f"document: {len(xml) / 1024:.0f} KiB, {args.jobs} job_list elements "
          f"({len(snap.pending)} pending jobs, {sum(j.tasks for j in snap.pending)} tasks, "
          f"{snap.pending_slots} slots)")
    print(f"parse_qstat: median {median * 1000:.1f} ms, best {min(times) * 1000:.1f} ms "
          f"over {args.repeat} runs")
    print(f"ratio to the {TARGET * 1000:.0f} ms target: {median / TARGET:.2f}")


if __name__ == "__main__":
    main()
