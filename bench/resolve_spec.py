"""Benchmark: resolve a generated spec of 10,000 nodes (classes 4 deep, 3 networks,
count-expanded). Target: under 1 s on the project's machines (2 cores).

    .venv/bin/python bench/resolve_spec.py [--nodes 10000] [--repeat 3]

Prints the wall time of each phase and the ratio to the 1 s target.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from elastic.spec import load_document, resolve


def generate(nodes: int, groups: int = 20) -> str:
    per_group, extra = divmod(nodes - 10, groups)
    lines = [
        "project: bench",
        "networks:",
        "  lan: {cidr: 10.0.0.0/16, gateway: 10.0.0.1, kind: bridged}",
        "  storage: {cidr: 10.1.0.0/16, mac_prefix: \"0a:00\"}",
        "  pub: {cidr: 10.2.0.0/16, kind: bridged, gateway: 10.2.0.1}",
        "hosts:",
    ]
    lines += [f"  h{i}: {{uri: \"qemu+tcp://h{i}/system\", type: qemu, memory: 64G, vcpus: 32}}"
              for i in range(1, 11)]
    lines += [
        "classes:",
        "  c1:",
        "    image: tiny",
        "    memory: 128M",
        "    disk: 1G",
        "    nameservers: [10.0.0.1]",
        "    users: {alice: {password: \"$6$x$y\", groups: [wheel]}}",
        "    interfaces: {eth0: {network: lan, netmask: 255.255.0.0}}",
        "  c2: {inherit: c1, vcpus: 2}",
        "  c3: {inherit: c2, memory: 256M, startup: [\"echo hi\"]}",
        "  c4: {inherit: c3, interfaces: {eth2: {network: pub}}, users: {alice: {shell: /bin/bash}}}",
        "nodes:",
    ]
    # a private network joins a small group into one chunk, fixed to one host
    lines.append("  db: {class: c4, count: 10, host: h1, interfaces: {eth1: {network: storage}}}")
    for g in range(groups):
        hosts = ", ".join(f"h{(g + k) % 10 + 1}" for k in range(3))
        count = per_group + (1 if g < extra else 0)
        lines.append(f"  g{g}: {{class: c4, count: {count}, names: \"g{g}n{{n}}\", "
                     f"hosts: [{hosts}]}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.yaml"
        path.write_text(generate(args.nodes))
        loads, resolves, totals = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            doc = load_document(path)
            t1 = time.perf_counter()
            project = resolve(doc, str(path))
            t2 = time.perf_counter()
            loads.append(t1 - t0)
            resolves.append(t2 - t1)
            totals.append(t2 - t0)
    assert len(project.nodes) == args.nodes, len(project.nodes)
    ifaces = sum(len(n.interfaces) for n in project.nodes)
    best = min(totals)
    print(f"resolve {args.nodes} nodes ({ifaces} interfaces, {len(project.chunks)} chunks, "
          f"classes 4 deep, 3 networks)")
    print(f"  load+includes+vars: {statistics.median(loads) * 1000:.0f} ms (median of {args.repeat})")
    print(f"  resolve:            {statistics.median(resolves) * 1000:.0f} ms")
    print(f"  total:              {statistics.median(totals) * 1000:.0f} ms median, "
          f"{best * 1000:.0f} ms best")
    print(f"  ratio to the 1 s target: {statistics.median(totals) / 1.0:.2f}")


if __name__ == "__main__":
    main()
