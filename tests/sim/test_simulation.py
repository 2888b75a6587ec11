"""Simulation tier: 24 simulated hours of bursty Grid Engine load against a fake provider,
in well under a second each. The simulator asserts as it goes that max_workers is never
exceeded, that no job is ever killed (only drained, empty workers are removed) and that a
blind tick changes nothing; these tests assert the day's figures.

Run ``.venv/bin/python -m tests.sim.test_simulation`` to print the figures of every day.
"""

from __future__ import annotations

import pytest

from elastic.policy import WorkerShape
from elastic.spec.schema import ScalingSpec
from tests.sim.simulator import HOUR, Figures, Knobs, Simulation, bursty_day

SPEC = ScalingSpec(group="worker", batch={"master": "head"}, min_workers=1, max_workers=24,
                   max_launch_per_tick=5, scale_up_after=30, idle_timeout=300,
                   min_lifetime=600, cooldown=60, boot_timeout=600, backoff=60,
                   breaker_failures=5, tick=15, burst=["ec2"])
SHAPE = WorkerShape(slots=4, memory=8192)

# "No oscillation": a flapping policy changes size on every tick the cooldown allows (60 an
# hour with a 60 s cooldown) and reverses direction about as often; this one follows the
# bursts (over 12 seeded days: 16-25 changes and 2-5 reversals in the busiest hour).
MAX_CHANGES_PER_HOUR = 30      # ticks that launch or drain
MAX_FLIPS_PER_HOUR = 6         # a launch after a drain, or a drain after a launch
# Waits (submit -> start, at the 15 s scheduler tick) include booting (1-5 min) and the
# queueing of bursts of up to 160 tasks on at most 96 slots; over 12 days each: median
# 2-5 min, p95 12-22 min (with the flaky provider up to 5.2 and 22 min).
MAX_MEDIAN_WAIT, MAX_P95_WAIT = 360.0, 1500.0

DAYS = {
    "bursty day, 10 min blind": Knobs(blind=((5 * HOUR, 5 * HOUR + 600),)),
    "flaky provider": Knobs(refuse={"private": 0.05, "ec2": 0.10},
                            hang={"private": 0.02, "ec2": 0.05}),
    "dead cloud": Knobs(refuse={"ec2": 1.0}),
}


def day(knobs: Knobs, seed: int = 3, load: int = 7) -> tuple[Simulation, Figures, int]:
    sim = Simulation(SPEC, SHAPE, knobs, seed=seed)
    submitted = bursty_day(sim, seed=load)
    return sim, sim.run(24), submitted


def summary(label: str, fig: Figures, submitted: int) -> str:
    hours = {k: round(v / HOUR, 1) for k, v in sorted(fig.worker_seconds.items())}
    return (f"{label}: {submitted} tasks, {len(fig.waits)} started; wait median "
            f"{fig.wait_percentile(50):.0f} s, p95 {fig.wait_percentile(95):.0f} s, max "
            f"{max(fig.waits):.0f} s; per hour at most {max(fig.changes_per_hour.values())} "
            f"changes, {max(fig.flips_per_hour.values(), default=0)} flips, "
            f"{max(fig.launches_per_hour.values())} launches; peak {fig.peak_vms} VMs; "
            f"{fig.drains} drains, {fig.replaces} replaced, {fig.refused} refused, "
            f"{fig.killed} jobs killed; worker-hours {hours}; {fig.wall:.2f} s of wall time")


def assert_stable(fig: Figures) -> None:
    assert fig.peak_vms <= SPEC.max_workers
    assert fig.killed == 0
    assert max(fig.changes_per_hour.values()) <= MAX_CHANGES_PER_HOUR
    assert max(fig.flips_per_hour.values(), default=0) <= MAX_FLIPS_PER_HOUR
    assert fig.unfinished == 1          # only the job that fits no worker still waits
    assert fig.drains == fig.removes    # every drained worker went away (none stuck)


def test_a_bursty_day_with_a_blind_spell():
    sim, fig, submitted = day(DAYS["bursty day, 10 min blind"])
    print("\n" + summary("bursty day", fig, submitted))
    assert_stable(fig)
    assert len(fig.waits) == submitted
    assert fig.wait_percentile(50) <= MAX_MEDIAN_WAIT
    assert fig.wait_percentile(95) <= MAX_P95_WAIT
    assert fig.peak_vms == SPEC.max_workers             # the bursts needed all of it
    assert fig.worker_seconds["ec2"] > 0                # private hosts (8) were not enough
    assert fig.blind_ticks == 40                        # and nothing was done in them
    # after every burst the cluster shrinks back: each hour ends near min_workers somewhere
    assert sum(min(fig.vms_between(h, h + 1, SPEC.tick)) <= 3 for h in range(24)) >= 20
    assert any(n.startswith("job impossible (16 slots, pe smp) fits no worker")
               for n in fig.notes)


def test_a_flaky_provider():
    sim, fig, submitted = day(DAYS["flaky provider"])
    print("\n" + summary("flaky provider", fig, submitted))
    assert_stable(fig)
    assert fig.refused > 0 and fig.replaces > 0         # refused launches, hung boots
    assert fig.wait_percentile(50) <= MAX_MEDIAN_WAIT
    assert fig.wait_percentile(95) <= MAX_P95_WAIT


def test_a_dead_cloud_trips_its_breaker_and_the_private_hosts_go_on():
    sim, fig, submitted = day(DAYS["dead cloud"])
    print("\n" + summary("dead cloud", fig, submitted))
    assert_stable(fig)
    assert fig.refused == SPEC.breaker_failures          # one at a time after the first
    assert sim.memory.breakers.keys() == {"ec2"}
    assert any(n.startswith("breaker open on ec2 after 5 consecutive launch failures")
               for n in fig.notes)
    assert fig.peak_vms == 8 and set(fig.worker_seconds) == {"private"}
    assert len(fig.waits) == submitted                  # slower, but everything ran


@pytest.mark.parametrize("load", [101, 104, 108])
@pytest.mark.parametrize("label", ["bursty day, 10 min blind", "flaky provider"])
def test_other_days_keep_the_same_bounds(label, load):
    _, fig, submitted = day(DAYS[label], seed=load, load=load)
    assert_stable(fig)
    assert len(fig.waits) == submitted
    assert fig.wait_percentile(50) <= MAX_MEDIAN_WAIT
    assert fig.wait_percentile(95) <= MAX_P95_WAIT


if __name__ == "__main__":
    for label, knobs in DAYS.items():
        _, fig, submitted = day(knobs)
        print(summary(label, fig, submitted))
