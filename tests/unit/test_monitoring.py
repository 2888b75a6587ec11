"""The load of hosts and VMs from counter samples (elastic.monitoring): pure, no libvirt."""

from __future__ import annotations

import pytest

from elastic.monitoring import NS, DomainSample, HostSample, load

T0 = 1_700_000_000.0


def dom(name: str = "web1.shop", cpu_s: float = 0.0, *, vcpus: int = 1, memory: int = 512,
        rx: int = 0, tx: int = 0, rd: int = 0, wr: int = 0) -> DomainSample:
    node, _, project = name.partition(".")
    return DomainSample(name, project or None, node, int(cpu_s * NS), vcpus, memory,
                        rx, tx, rd, wr)


def host(t: float, busy_s: float, *domains: DomainSample, ncpus: int = 4,
         name: str = "h1", total: int = 8192, free: int = 4096) -> HostSample:
    return HostSample(name, T0 + t, int(busy_s * NS), ncpus, total, free, tuple(domains))


def test_fewer_than_two_samples_measure_nothing():
    assert load([], 60) is None
    assert load([host(0, 10)], 60) is None
    assert load([host(0, 10), host(0, 12)], 60) is None      # same time: one sample


def test_two_samples_give_the_busy_fraction_of_all_cpus():
    # 4 CPUs for 10 s = 40 CPU-seconds; 10 of them busy: 25 %
    got = load([host(0, 100), host(10, 110)], 60)
    assert got is not None
    assert got.cpu == pytest.approx(0.25)
    assert got.window == pytest.approx(10) and got.samples == 2
    assert got.t == T0 + 10 and got.ncpus == 4 and got.host == "h1"
    assert (got.memory_total_mib, got.memory_free_mib) == (8192, 4096)


def test_a_spike_in_one_interval_is_averaged_away_over_a_longer_window():
    # 2 s samples for a minute; one interval has all 4 CPUs busy, the rest 1 of 4 (25 %)
    samples, busy = [], 0.0
    for i in range(31):
        samples.append(host(2 * i, busy))
        busy += 8.0 if i == 29 else 2.0       # the interval from 58 s to 60 s: 4 CPUs x 2 s
    short = load(samples, 2)
    long = load(samples, 60)
    assert short.cpu == pytest.approx(1.0) and short.window == pytest.approx(2)
    assert long.cpu == pytest.approx((29 * 2 + 8) / (60 * 4))   # 27.5 %: hardly more than 25
    assert long.window == pytest.approx(60) and long.samples == 31


def test_the_window_starts_at_the_newest_sample_old_enough_to_cover_it():
    samples = [host(t, t) for t in (0, 10, 20, 25, 30)]
    got = load(samples, 12)           # 30 - 12 = 18: the sample at 10 s is the newest <= 18
    assert got.window == pytest.approx(20) and got.samples == 4
    # a window longer than the samples: all of them, and it says how much that covers
    everything = load(samples, 3600)
    assert everything.window == pytest.approx(30) and everything.samples == 5


def test_samples_in_any_order():
    a = [host(0, 0), host(10, 10), host(20, 30)]
    assert load(list(reversed(a)), 60) == load(a, 60)


def test_a_host_counter_reset_leaves_that_interval_out():
    # libvirtd (or the cgroup) restarted between 10 s and 20 s: the counter fell to 1 s
    got = load([host(0, 100), host(10, 120), host(20, 1), host(30, 21)], 60)
    # the two good intervals: 20 + 20 busy seconds over 2 x 10 s x 4 CPUs
    assert got.cpu == pytest.approx(40 / 80)
    assert got.window == pytest.approx(20)
    # nothing but resets: nothing to measure
    assert load([host(0, 100), host(10, 50)], 60) is None


def test_a_counter_that_changed_its_source_is_a_reset_too():
    # the spec got a cpu_cgroup: the machine's counter (large) became the cgroup's (small),
    # and back: neither jump is load
    def src(t, busy, source):
        return HostSample("h1", T0 + t, int(busy * NS), 4, 8192, 4096, (), source)
    s = [src(0, 1000, "libvirt"), src(10, 1, "cgroup elastic-lab/h1"),
         src(20, 11, "cgroup elastic-lab/h1"), src(30, 5000, "libvirt")]
    got = load(s, 60)
    assert got.cpu == pytest.approx(10 / 40) and got.window == pytest.approx(10)


def test_the_guests_share_and_the_hosts_own_load():
    # 4 CPUs, 10 s: 20 busy CPU-seconds (50 %), of which the VM used 8 (20 %)
    got = load([host(0, 0, dom(cpu_s=0, vcpus=2)), host(10, 20, dom(cpu_s=8, vcpus=2))], 60)
    assert got.cpu == pytest.approx(0.5)
    assert got.cpu_guests == pytest.approx(0.2)
    assert got.cpu_own == pytest.approx(0.3)
    (d,) = got.domains
    assert d.cpu == pytest.approx(0.2)           # of the host's 4 CPUs
    assert d.cpu_vcpus == pytest.approx(0.4)     # of its own 2 vcpus
    assert d.window == pytest.approx(10)
    assert (d.name, d.project, d.node, d.vcpus) == ("web1.shop", "shop", "web1", 2)


def test_own_load_is_never_negative():
    # guests counted more than the host's counter (e.g. QEMU outside the cgroup)
    got = load([host(0, 0, dom(cpu_s=0)), host(10, 1, dom(cpu_s=5))], 60)
    assert got.cpu_guests > got.cpu
    assert got.cpu_own == 0.0


def test_rates_and_memory_of_a_domain():
    a = dom(cpu_s=1, memory=1024, rx=1000, tx=2000, rd=0, wr=10_000)
    b = dom(cpu_s=3, memory=2048, rx=6000, tx=2000, rd=40_000, wr=30_000)
    got = load([host(0, 0, a), host(10, 20, b)], 60)
    (d,) = got.domains
    assert d.net_rx_bps == pytest.approx(500)
    assert d.net_tx_bps == 0
    assert d.disk_rd_bps == pytest.approx(4000)
    assert d.disk_wr_bps == pytest.approx(2000)
    assert d.memory_mib == 2048                  # the newest sample's
    assert got.memory_assigned_mib == 2048


def test_a_domain_that_just_started_has_no_rates_yet_then_its_own_span():
    other = "db1.shop"
    s = [host(0, 0), host(10, 10), host(20, 20, dom(other, 2))]
    got = load(s, 60)
    (d,) = got.domains
    assert d.name == other and d.window == 0.0
    assert (d.cpu, d.cpu_vcpus, d.net_rx_bps) == (0.0, 0.0, 0.0)
    assert got.memory_assigned_mib == 512        # it holds its memory already
    # one sample later it is measured over the 10 s it was there, not the host's 30
    got = load(s + [host(30, 30, dom(other, 6))], 60)
    (d,) = got.domains
    assert d.window == pytest.approx(10)
    assert d.cpu == pytest.approx(4 / (10 * 4))
    assert got.window == pytest.approx(30)


def test_a_restarted_domain_is_measured_since_its_restart():
    s = [host(0, 0, dom(cpu_s=100, rx=10**6)), host(10, 10, dom(cpu_s=110, rx=2 * 10**6)),
         host(20, 20, dom(cpu_s=1, rx=0)),     # restarted: every counter from scratch
         host(30, 30, dom(cpu_s=5, rx=1000))]
    (d,) = load(s, 60).domains
    assert d.window == pytest.approx(10)
    assert d.cpu == pytest.approx(4 / 40)
    assert d.net_rx_bps == pytest.approx(100)
    # its guest share leaves the restart interval out: 10 s + 4 s of CPU in 30 s x 4 CPUs
    assert load(s, 60).cpu_guests == pytest.approx(14 / 120)


def test_a_domain_that_left_still_counts_as_guest_load_but_is_not_listed():
    # migrated away at 20 s: its CPU time until then was the guests', not the host's own
    s = [host(0, 0, dom(cpu_s=0)), host(10, 10, dom(cpu_s=10)), host(20, 12)]
    got = load(s, 60)
    assert got.domains == ()
    assert got.memory_assigned_mib == 0
    assert got.cpu_guests == pytest.approx(10 / 80)
    assert got.cpu_own == pytest.approx(2 / 80)


def test_a_domain_that_was_away_for_a_sample_is_measured_since_it_came_back():
    s = [host(0, 0, dom(cpu_s=0)), host(10, 10), host(20, 20, dom(cpu_s=50)),
         host(30, 30, dom(cpu_s=54))]
    (d,) = load(s, 60).domains
    assert d.window == pytest.approx(10) and d.cpu == pytest.approx(4 / 40)


def test_bad_input_is_refused_clearly():
    for bad in (0, -1, float("nan"), float("inf"), "60", True):
        with pytest.raises(ValueError, match="window"):
            load([host(0, 0), host(1, 1)], bad)
    with pytest.raises(ValueError, match="one host"):
        load([host(0, 0), host(1, 1, name="h2")], 60)
    with pytest.raises(ValueError, match="ncpus"):
        host(0, 0, ncpus=0)
    with pytest.raises(ValueError, match="cpu_busy_ns"):
        HostSample("h1", T0, -1, 1, 0, 0)
    with pytest.raises(ValueError, match="finite"):
        HostSample("h1", float("nan"), 0, 1, 0, 0)
    with pytest.raises(ValueError, match="twice"):
        host(0, 0, dom(), dom())
    with pytest.raises(ValueError, match="net_rx_bytes"):
        dom(rx=-5)
    with pytest.raises(ValueError, match="name"):
        DomainSample("", None, None, 0, 1, 0)
