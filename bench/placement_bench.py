"""Placement at scale: 10,000 VMs in 2,000 chunks on 1,000 hosts (issue 7's target: < 1 s).

The project is built from elastic.model directly (resolving a 10,000-node spec is measured by
resolve_spec.py); the hosts differ in size, groups and attributes, a tenth of the chunks carry a
requirements: expression, one class has anti_affinity with itself, and a tenth of the hosts are
already half full. Every policy is run, and a rank expression; prints the median of --repeat
runs per variant and its ratio to the 1 s target.

    .venv/bin/python bench/placement_bench.py [--hosts 1000] [--chunks 2000] [--vms 10000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from elastic.model import Chunk, NodeSpec, Project
from elastic.placement import HostCapacity, place
from elastic.spec.schema import PlacementBlock


def build(hosts: int, chunks: int, vms: int) -> tuple[Project, dict[str, HostCapacity]]:
    per = vms // chunks
    nodes: list[NodeSpec] = []
    chunk_list: list[Chunk] = []
    for c in range(chunks):
        names = []
        for i in range(per):
            name = f"n{c}-{i}"
            names.append(name)
            cls = ("web", "base") if i == 0 and c % 50 == 0 else ("base",)
            nodes.append(NodeSpec(
                name=name, project="bench", classes=cls, image="tiny", memory=512 + 256 * (i % 3),
                vcpus=1 + i % 2, disk=None, free_space=None, interfaces=(), group=f"g{c}",
                chunk=f"c{c}",
                requirements='group == "fast" & memory_free > 4096' if c % 10 == 0 else None,
                anti_affinity=("web",) if cls[0] == "web" else ()))
            names[-1] = name
        members = [n for n in nodes[-per:]]
        chunk_list.append(Chunk(f"c{c}", tuple(names), (f"net{c}",),
                                sum(n.memory for n in members), sum(n.vcpus for n in members),
                                None))
    caps = {}
    for h in range(hosts):
        memory = (64 + 64 * (h % 3)) * 1024
        caps[f"h{h:04d}"] = HostCapacity(
            f"h{h:04d}", memory, 128, used_memory=memory // 2 if h % 10 == 0 else 0,
            groups=("fast",) if h % 4 == 0 else ("slow",), attributes={"rack": f"r{h % 20}"},
            cpu_load=(h * 37 % 100) / 100)
    project = Project("bench", "bench.yaml", tuple(nodes), (), (), tuple(chunk_list), ("base",))
    return project, caps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    project, caps = build(a.hosts, a.chunks, a.vms)
    print(f"{a.vms} VMs in {a.chunks} chunks on {a.hosts} hosts")
    for label, block in (("packing", PlacementBlock()),
                         ("striping", PlacementBlock(policy="striping")),
                         ("load-aware", PlacementBlock(policy="load-aware")),
                         ("rank memory_free - 1000*cpu_load",
                          PlacementBlock(rank="memory_free - 1000 * cpu_load"))):
        p = replace(project, placement=block)
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            placed = place(p, caps)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"  {label:34s} median {med * 1000:7.1f} ms  placed {len(placed.decisions)}, "
              f"rejected {len(placed.rejected)}  ratio to 1 s: {med:.3f}")


if __name__ == "__main__":
    main()
