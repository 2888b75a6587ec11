"""`elastic upgrade`'s diff: spec (placed) against the state DB's records."""

from __future__ import annotations

from elastic.engine.diff import diff
from elastic.lifecycle import State
from elastic.placement import HostCapacity, place
from elastic.spec import load_project
from elastic.state import NodeRecord


def rec(name, host, memory=128, vcpus=1, state=State.RUNNING):
    return NodeRecord("p", name, state, host, "private", None,
                      {"memory": memory, "vcpus": vcpus}, 0.0, 0.0)


CAPS = {h: HostCapacity(h, 4096, 4) for h in ("h1", "h2")}


def test_moved_chunk_removed_resized_and_new_nodes(write):
    p = load_project(write("c.yaml", """
project: p
hosts: {h1: {}, h2: {}}
networks: {lan: {cidr: 10.0.0.0/24}}
nodes:
  a: {image: t, memory: 128M, host: h2, interfaces: {eth0: {network: lan}}}
  b: {image: t, memory: 128M, interfaces: {eth0: {network: lan}}}
  c: {image: t, memory: 256M, host: h1}
  d: {image: t, memory: 128M, host: h1}
"""))
    records = [rec("a", "h1"), rec("b", "h1"), rec("c", "h1"), rec("old", "h1"),
               rec("gone", "h1", state=State.DONE)]
    placement = place(p, CAPS, current={"lan": "h1", "c": "h1"})
    changes = diff(p, placement, records)
    assert [(c.kind, c.target) for c in changes] == [
        ("remove", "old"), ("move", "lan"), ("resize", "c"), ("add", "d")]
    move = changes[1]
    assert (move.src, move.dst, move.nodes) == ("h1", "h2", ("a", "b"))
    assert "fixed by host: h2" in move.reason
    assert "memory 128 -> 256 MiB" in changes[2].reason
    assert str(move).startswith("move   chunk lan (a, b) h1 -> h2")


def test_nothing_to_change(write):
    p = load_project(write("c.yaml", "project: p\nhosts: {h1: {}}\nnodes:\n  a: {image: t}\n"))
    placement = place(p, CAPS, current={"a": "h1"})
    assert diff(p, placement, [rec("a", "h1")]) == []
