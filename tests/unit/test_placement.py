"""Placement of chunks (filters, then weighers): fixed hosts win, running chunks stay while they
pass, reasons everywhere; each host and the filter that rejected it when nothing fits."""

from __future__ import annotations

from elastic.placement import HostCapacity, place
from elastic.spec import load_project


def project(write, body: str):
    return load_project(write("c.yaml", "project: p\nhosts: {h1: {}, h2: {}, h3: {type: xen}}\n"
                              + body))


def caps(**free):
    return {name: HostCapacity(name, mem, 4, domain_type="xen" if name == "h3" else "kvm")
            for name, mem in free.items()}


def test_largest_chunk_first_then_packing_best_fit(write):
    p = project(write, """
networks: {a: {cidr: 10.0.1.0/24}, b: {cidr: 10.0.2.0/24}}
nodes:
  small: {image: t, memory: 100, interfaces: {eth0: {network: a}}}
  big1: {image: t, memory: 300, interfaces: {eth0: {network: b}}}
  big2: {image: t, memory: 300, interfaces: {eth0: {network: b}}}
""")
    placed = place(p, caps(h1=500, h2=700, h3=10000))
    assert placed.ok
    assert placed.host_of("b") == "h2"     # 600 MiB: h1 (500) is too small, h2 is the tightest
    assert placed.host_of("a") == "h2"     # exactly the 100 MiB h2 has left
    assert placed.decisions[-1].reason == ("packing: h2 has the least free memory that fits "
                                           "(100 MiB free, the chunk needs 100)")


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
    assert "already runs there, but 3000 MiB free of 3000" in why["grown"]["h1"]
    assert "fixed by host: h2 in the spec, but 2000 MiB free of 2000" in why["pinned"]["h2"]


# ---------------------------------------------------------------- filters and weighers
HOSTS = """project: p
hosts:
  h1: {memory: 4G, vcpus: 4, groups: [fast], attributes: {rack: r1, gpus: 2}}
  h2: {memory: 8G, vcpus: 4, groups: [slow], attributes: {rack: r2, gpus: 0}}
  h3: {memory: 2G, vcpus: 4, groups: [fast, small], attributes: {rack: r1}}
"""


def from_spec(write, body: str, used: dict[str, int] | None = None, load=None):
    p = load_project(write("c.yaml", HOSTS + body))
    caps = {h.name: HostCapacity(h.name, h.usable_memory, 4 * h.usable_vcpus,
                                 used_memory=(used or {}).get(h.name, 0),
                                 domain_type=h.domain_type, groups=h.groups,
                                 attributes=h.attributes,
                                 cpu_load=(load or {}).get(h.name, 0.0))
            for h in p.hosts}
    return p, caps


def test_the_three_policies(write):
    body = "nodes:\n  n: {image: t, memory: 1G}\n"
    for policy, host in (("packing", "h3"), ("striping", "h2"), ("load-aware", "h1")):
        # packing: the tightest fit; striping: no VMs anywhere, so the most free memory
        p, caps = from_spec(write, f"placement: {{policy: {policy}}}\n" + body,
                            load={"h1": 0.05, "h2": 0.6, "h3": 0.3})
        placed = place(p, caps)
        assert placed.host_of("n") == host, (policy, placed)
        assert placed.decisions[0].reason.startswith(policy + ":")
    assert "lowest CPU load (5%)" in placed.decisions[0].reason


def test_striping_spreads_and_packing_fills(write):
    body = "nodes:\n  w: {image: t, memory: 1G, count: 6, interfaces: {}}\n"
    p, caps = from_spec(write, "placement: {policy: striping}\n" + body)
    spread = [place(p, caps).host_of(f"w{i}") for i in range(1, 7)]
    assert sorted(spread) == ["h1", "h1", "h2", "h2", "h3", "h3"], spread   # by VMs, then memory
    p, caps = from_spec(write, body)
    packed = [place(p, caps).host_of(f"w{i}") for i in range(1, 7)]
    assert packed.count("h3") == 2 and packed.count("h1") == 4, packed


def test_requirements_filter_hosts_and_say_so_when_nothing_passes(write):
    p, caps = from_spec(write, """
nodes:
  gpu: {image: t, memory: 1G, requirements: 'gpus > 0 & group == "fast"'}
  r2: {image: t, memory: 1G, requirements: 'rack == "r2"'}
  none: {image: t, memory: 1G, requirements: 'memory_free > 2048 & group == "small"'}
""")
    placed = place(p, caps)
    assert placed.host_of("gpu") == "h1" and placed.host_of("r2") == "h2"
    (rej,) = placed.rejected
    assert rej.chunk == "none"
    assert rej.why == {
        "h1": "fails requirements: memory_free > 2048 & group == \"small\"",
        "h2": "fails requirements: memory_free > 2048 & group == \"small\"",
        "h3": "fails requirements: memory_free > 2048 & group == \"small\""}


def test_requirements_read_the_plan_so_far(write):
    """memory_free counts what this plan already put on the host."""
    p, caps = from_spec(write, """
nodes:
  a: {image: t, memory: 3G, requirements: 'name == "h1"'}
  b: {image: t, memory: 512M, requirements: 'memory_free > 1024 & group == "fast"'}
""")
    placed = place(p, caps)
    assert placed.host_of("a") == "h1"
    assert placed.host_of("b") == "h3"      # h1 has only 1024 MiB left after a


def test_rank_orders_first_then_the_policy(write):
    p, caps = from_spec(write, "placement: {rank: '-vms + 10 * gpus'}\n"
                        "nodes:\n  w: {image: t, memory: 256M, count: 3, interfaces: {}}\n")
    placed = place(p, caps)
    # h1 ranks 20 - vms: it takes all three (ranks 20, 19, 18 > h2's 0 and h3's missing)
    assert [placed.host_of(f"w{i}") for i in (1, 2, 3)] == ["h1", "h1", "h1"]
    assert "rank -vms + 10 * gpus: h1 ranks highest (20)" in placed.decisions[0].reason


def test_anti_affinity_keeps_two_web_nodes_apart_and_affinity_joins(write):
    p, caps = from_spec(write, """
classes:
  web: {image: t, memory: 512M, anti_affinity: [web]}
nodes:
  web: {class: web, count: 3, interfaces: {}}
  db: {image: t, memory: 512M}
  cache: {image: t, memory: 256M, affinity: [db]}
""")
    placed = place(p, caps)
    assert placed.ok, placed.rejected
    assert len({placed.host_of(f"web{i}") for i in (1, 2, 3)}) == 3
    assert placed.host_of("cache") == placed.host_of("db")
    # a fourth web server has nowhere to go; each host says why
    p, caps = from_spec(write, "classes:\n  web: {image: t, memory: 512M, anti_affinity: [web]}\n"
                        "nodes:\n  web: {class: web, count: 4, interfaces: {}}\n")
    placed = place(p, caps)
    (rej,) = placed.rejected
    assert all("anti_affinity: web" in why for why in rej.why.values()), rej.why


def test_anti_affinity_inside_one_chunk_is_a_contradiction(write):
    p, caps = from_spec(write, """
networks: {lan: {cidr: 10.0.0.0/24}}
nodes:
  a: {image: t, memory: 256M, anti_affinity: [b], interfaces: {eth0: {network: lan}}}
  b: {image: t, memory: 256M, interfaces: {eth0: {network: lan}}}
""")
    (rej,) = place(p, caps).rejected
    assert rej.why == {"(all hosts)": "a has anti_affinity: b, but b is on the same host by a "
                                      "private network"}


def test_vcpus_are_a_filter(write):
    p = load_project(write("c.yaml", "project: p\nhosts: {h1: {}, h2: {}}\n"
                           "nodes:\n  big: {image: t, memory: 100, vcpus: 6}\n"))
    placed = place(p, {"h1": HostCapacity("h1", 1000, 4), "h2": HostCapacity("h2", 1000, 8,
                                                                              used_vcpus=1)})
    assert placed.host_of("big") == "h2"
    placed = place(p, {"h1": HostCapacity("h1", 1000, 4), "h2": HostCapacity("h2", 1000, 4)})
    assert placed.rejected[0].why["h1"] == "4 vcpus free of 4, the chunk needs 6"


def test_a_running_chunk_that_no_longer_passes_moves(write):
    p, caps = from_spec(write, "nodes:\n  n: {image: t, memory: 1G, requirements: "
                        "'rack == \"r2\"'}\n")
    placed = place(p, caps, current={"n": "h1"})
    assert placed.host_of("n") == "h2"
    assert "moved: it runs on h1, which now fails requirements: rack == \"r2\"" in \
        placed.decisions[0].reason
