"""First-fit placement of chunks: fixed hosts win, running chunks stay, reasons everywhere."""

from __future__ import annotations

from elastic.placement import HostCapacity, place
from elastic.spec import load_project


def project(write, body: str):
    return load_project(write("c.yaml", "project: p\nhosts: {h1: {}, h2: {}, h3: {type: xen}}\n"
                              + body))


def caps(**free):
    return {name: HostCapacity(name, mem, 4, domain_type="xen" if name == "h3" else "kvm")
            for name, mem in free.items()}


def test_largest_chunk_first_then_first_fit(write):
    p = project(write, """
networks: {a: {cidr: 10.0.1.0/24}, b: {cidr: 10.0.2.0/24}}
nodes:
  small: {image: t, memory: 100, interfaces: {eth0: {network: a}}}
  big1: {image: t, memory: 300, interfaces: {eth0: {network: b}}}
  big2: {image: t, memory: 300, interfaces: {eth0: {network: b}}}
""")
    placed = place(p, caps(h1=500, h2=700, h3=10000))
    assert placed.ok
    assert placed.host_of("b") == "h2"     # 600 MiB does not fit h1 (500)
    assert placed.host_of("a") == "h1"
    assert "first host with room" in placed.decisions[-1].reason


def test_fixed_host_and_current_host_win(write):
    p = project(write, """
nodes:
  f: {image: t, memory: 100, host: h2}
  r: {image: t, memory: 100}
""")
    placed = place(p, caps(h1=1000, h2=1000), current={"r": "h2"})
    assert placed.host_of("f") == "h2" and "fixed" in placed.decisions[0].reason
    assert placed.host_of("r") == "h2" and placed.decisions[1].reason == "already runs there"


def test_what_fits_nowhere_is_rejected_with_a_reason_per_host(write):
    p = project(write, """
nodes:
  huge: {image: t, memory: 4G}
  xenonly: {image: t, memory: 100, hypervisor: xen}
""")
    placed = place(p, caps(h1=1000, h2=2000, h3=50))
    assert not placed.ok
    rej = {r.chunk: r for r in placed.rejected}
    assert rej["huge"].why["h1"] == "1000 MiB free of 1000, the chunk needs 4096 MiB"
    assert "fits no host" in str(rej["huge"])
    assert rej["xenonly"].why["h1"] == "runs kvm, the chunk needs xen"
    assert "50 MiB free" in rej["xenonly"].why["h3"]


def test_memory_already_used_counts(write):
    p = project(write, "nodes:\n  a: {image: t, memory: 600}\n")
    placed = place(p, {"h1": HostCapacity("h1", 1000, 4, used_memory=500),
                       "h2": HostCapacity("h2", 1000, 4)})
    assert placed.host_of("a") == "h2"


def test_a_placed_chunk_that_outgrew_its_host_is_rejected_not_kept(write):
    """A running chunk stays where it is only while it fits there: one grown by more
    workers than its host has room for is rejected (the autoscaler then bursts), never
    placed past the host's memory (qemu failed: cannot allocate memory)."""
    p = project(write, """
nodes:
  grown: {image: t, memory: 4G}
  pinned: {image: t, memory: 3G, host: h2}
""")
    placed = place(p, caps(h1=3000, h2=2000), current={"grown": "h1"})
    assert not placed.ok
    why = {r.chunk: r.why for r in placed.rejected}
    assert "already runs there, but 3000 MiB are free" in why["grown"]["h1"]
    assert "fixed by host: h2 in the spec, but 2000 MiB are free" in why["pinned"]["h2"]
