"""The rebalancer's plan (pure): overloaded hosts -> chunk migrations that fit, with reasons;
what fits nowhere is reported, never split."""

from __future__ import annotations

import pytest

from elastic.placement import HostCapacity, units_of
from elastic.placement.rebalance import HostState, Placed, Settings, plan
from elastic.spec import load_project

THESIS = """project: thesis
hosts: {h1: {}, h2: {}, h3: {}}
networks:
  a: {cidr: 10.1.0.0/24}
  b: {cidr: 10.2.0.0/24}
  c: {cidr: 10.3.0.0/24}
classes:
  vm: {image: t, memory: 128M, vcpus: 1}
nodes:
  small: {class: vm, count: 3, interfaces: {eth0: {network: a}}}
  big: {class: vm, count: 6, interfaces: {eth0: {network: b}}}
  router: {class: vm, interfaces: {eth0: {network: b}, eth1: {network: c}}}
"""


def units(write, text: str = THESIS):
    p = load_project(write("c.yaml", text))
    us, rejected = units_of(p)
    assert not rejected
    return p, {u.name: u for u in us}


def host(name, memory, cpu, own=0.0, ncpus=2, used=0, free=None):
    return HostState(HostCapacity(name, memory, 8 * ncpus, used_memory=used), ncpus, cpu,
                     own, free)


@pytest.mark.parametrize("a_cores, bc_cores", [(0.04, 0.06), (0.3, 0.06)])
def test_the_thesis_scenario_splits_the_two_chunks_over_two_hosts(write, a_cores, bc_cores):
    """10 VMs in 3 networks forming 2 chunks (3 VMs + 1 switch; 7 VMs + 2 switches) on h1,
    loaded by a CPU burner on the host itself; neither target has memory for both."""
    p, u = units(write)
    assert sorted((n, len(x.chunks[0].nodes), len(x.chunks[0].networks))
                  for n, x in u.items()) == [("a", 3, 1), ("b+c", 7, 2)]
    hosts = {"h1": host("h1", 2048, cpu=0.95, own=0.9),
             "h2": host("h2", 1000, cpu=0.02),         # room for b (896 MiB), not for both
             "h3": host("h3", 600, cpu=0.05)}          # room for a (384 MiB) only
    # whichever chunk moves first (the busier), the small one goes to the tightest fit (h3)
    # and leaves h2's room for the big one
    placed = [Placed(u["a"], "h1", cores=a_cores), Placed(u["b+c"], "h1", cores=bc_cores)]
    result = plan(hosts, placed, Settings())
    moves = {m.unit: (m.src, m.dst) for m in result.migrations}
    assert moves == {"a": ("h1", "h3"), "b+c": ("h1", "h2")}
    assert "CPU 95% > cpu_high 70%" in result.overloaded["h1"]
    assert any("its own load (90%" in n and "no migration relieves the host" in n
               for n in result.notes), result.notes
    (b,) = [m for m in result.migrations if m.unit == "b+c"]
    assert b.nodes == ("big1", "big2", "big3", "big4", "big5", "big6", "router")
    assert "uses the most CPU of what can move (least-migrations)" in b.reason
    assert "h2 is under 10% CPU (2%) and has the least free memory that fits it (1000 MiB)" \
        in b.reason


def test_a_chunk_too_large_for_any_host_is_reported_and_not_moved(write):
    p, u = units(write)
    hosts = {"h1": host("h1", 2048, cpu=0.9), "h2": host("h2", 500, cpu=0.0),
             "h3": host("h3", 700, cpu=0.0)}
    result = plan(hosts, [Placed(u["b+c"], "h1", cores=1.8)], Settings())
    assert not result.migrations
    assert result.unplaced["b+c"] == {"h1": "excluded (the chunk moves away from it)",
                                    "h2": "500 MiB free of 500, the chunk needs 896 MiB",
                                    "h3": "700 MiB free of 700, the chunk needs 896 MiB"}


def test_moves_stop_once_the_host_is_under_cpu_high(write):
    p, u = units(write)
    hosts = {"h1": host("h1", 4096, cpu=0.8), "h2": host("h2", 4096, cpu=0.0),
             "h3": host("h3", 4096, cpu=0.0)}
    # b uses 0.4 of h1's 2 CPUs (20% of the host): moving it leaves 60% < 70%
    result = plan(hosts, [Placed(u["a"], "h1", cores=0.1), Placed(u["b+c"], "h1", cores=0.4)],
                  Settings())
    assert [(m.unit, m.dst) for m in result.migrations] == [("b+c", "h2")]
    assert "h1 then at 60%" in result.migrations[0].reason


@pytest.mark.parametrize("policy, first", [("least-migrations", "b+c"),
                                           ("least-memory-copied", "a"),
                                           ("most-important-last", "b+c")])
def test_which_chunk_moves_first(write, policy, first):
    text = THESIS.replace("  small: {class: vm,", "  small: {class: vm, priority: 5,")
    p, u = units(write, text)
    hosts = {"h1": host("h1", 4096, cpu=0.95), "h2": host("h2", 4096, cpu=0.0),
             "h3": host("h3", 4096, cpu=0.0)}
    # one move is not enough to bring h1 under 70%: the cap of one per round shows
    placed = [Placed(u["a"], "h1", cores=0.3, priority=5), Placed(u["b+c"], "h1", cores=0.35)]
    result = plan(hosts, placed, Settings(policy=policy, max_migrations=1))
    assert [m.unit for m in result.migrations] == [first]
    assert any("waits for a later round (max_migrations 1" in n for n in result.notes)


def test_cpu_low_is_raised_step_by_step_when_no_target_is_under_it(write):
    p, u = units(write)
    hosts = {"h1": host("h1", 4096, cpu=0.9), "h2": host("h2", 4096, cpu=0.35),
             "h3": host("h3", 4096, cpu=0.25)}
    result = plan(hosts, [Placed(u["a"], "h1", cores=0.6)], Settings())
    (m,) = result.migrations
    assert m.dst == "h3"
    assert "cpu_low 10% raised to 30%: no host was under it" in m.reason


def test_a_target_is_not_pushed_over_cpu_high_and_fixed_chunks_stay(write):
    text = THESIS.replace("  small: {class: vm,", "  small: {class: vm, host: h1,")
    p, u = units(write, text)
    hosts = {"h1": host("h1", 4096, cpu=0.95), "h2": host("h2", 4096, cpu=0.05),
             "h3": host("h3", 4096, cpu=0.08)}
    result = plan(hosts, [Placed(u["a"], "h1", cores=0.5, fixed=True),
                          Placed(u["b+c"], "h1", cores=1.4)], Settings())
    assert not result.migrations        # b's 1.4 CPUs would put either target at ~75%
    assert "over cpu_high 70%" in result.unplaced["b+c"]["h2"]
    assert any("a stays on h1: a node of it has a fixed host:" in n for n in result.notes)


def test_a_host_under_its_memory_floor_is_overloaded(write):
    p, u = units(write)
    hosts = {"h1": host("h1", 4096, cpu=0.1, free=200), "h2": host("h2", 4096, cpu=0.0,
                                                                     free=3000),
             "h3": host("h3", 4096, cpu=0.0, free=600)}
    result = plan(hosts, [Placed(u["a"], "h1", cores=0.0), Placed(u["b+c"], "h1", cores=0.0)],
                  Settings(memory_floor=512))
    assert result.overloaded == {"h1": "200 MiB free < memory_floor 512 MiB"}
    (m,) = result.migrations                # a or b frees enough; h3 would drop under 512
    assert m.dst == "h2"


def test_nothing_to_do_says_so(write):
    p, u = units(write)
    hosts = {"h1": host("h1", 4096, cpu=0.5), "h2": host("h2", 4096, cpu=None)}
    result = plan(hosts, [Placed(u["a"], "h1", cores=0.3)], Settings())
    assert result.empty
    assert result.notes == ("h2: no load measured, neither a source nor a target",
                            "no host is overloaded")


def test_anti_affinity_holds_for_targets(write):
    text = THESIS + "  web: {class: vm, count: 2, anti_affinity: [web]}\n"
    p, u = units(write, text)
    hosts = {"h1": host("h1", 4096, cpu=0.9), "h2": host("h2", 4096, cpu=0.0),
             "h3": host("h3", 4096, cpu=0.05)}
    placed = [Placed(u["web1"], "h1", cores=0.8), Placed(u["web2"], "h2", cores=0.1)]
    (m,) = plan(hosts, placed, Settings()).migrations
    assert m.dst == "h3"                    # h2 is less loaded, but runs web2
