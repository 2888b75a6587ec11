"""What `elastic upgrade` would change: the spec (resolved and placed) against what runs.
Pure: every change carries its reason."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from elastic.lifecycle import State
from elastic.model import Project
from elastic.placement import Placement
from elastic.state import NodeRecord

ORDER = {"remove": 0, "move": 1, "resize": 2, "add": 3}


@dataclass(frozen=True)
class Change:
    kind: str                 # add | remove | resize | move
    target: str               # node name (add/remove/resize) or chunk name (move)
    reason: str
    src: str | None = None    # host
    dst: str | None = None    # host
    nodes: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f" {self.src} -> {self.dst}" if self.kind == "move" else \
            f" on {self.dst}" if self.dst else f" on {self.src}" if self.src else ""
        what = f"chunk {self.target} ({', '.join(self.nodes)})" if self.kind == "move" \
            else self.target
        return f"{self.kind:<6} {what}{where}: {self.reason}"


def diff(project: Project, placement: Placement, records: Iterable[NodeRecord]) -> list[Change]:
    alive = {r.name: r for r in records if r.state != State.DONE}
    changes: list[Change] = []
    wanted = {n.name: n for n in project.nodes}
    for name, rec in sorted(alive.items()):
        if name not in wanted:
            changes.append(Change("remove", name, "not in the spec any more", src=rec.host))
    for chunk in project.chunks:
        dst = placement.host_of(chunk.name)
        now = {alive[n].host for n in chunk.nodes if n in alive and alive[n].host}
        if len(now) == 1 and (src := next(iter(now))) != dst:
            decision = next(d for d in placement.decisions if d.chunk == chunk.name)
            moving = tuple(n for n in chunk.nodes if n in alive)
            changes.append(Change("move", chunk.name, f"live migration: {decision.reason}",
                                  src=src, dst=dst, nodes=moving))
    for node in project.nodes:
        rec = alive.get(node.name)
        if rec is None:
            changes.append(Change("add", node.name, "new in the spec",
                                  dst=placement.host_of(node.chunk)))
            continue
        data = rec.data or {}
        sizes = []
        if data.get("memory") not in (None, node.memory):
            sizes.append(f"memory {data['memory']} -> {node.memory} MiB")
        if data.get("vcpus") not in (None, node.vcpus):
            sizes.append(f"vcpus {data['vcpus']} -> {node.vcpus}")
        if sizes:
            changes.append(Change("resize", node.name, ", ".join(sizes) +
                                  " (restarted with the new size; its disk is kept)",
                                  src=rec.host))
    return sorted(changes, key=lambda c: (ORDER[c.kind], c.target))
