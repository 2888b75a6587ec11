"""The autoscaling policy: one test per rule, and properties over random clusters."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from elastic.lifecycle import State
from elastic.model import Job, QueueSnapshot
from elastic.policy import (
    Capacity, LaunchOutcome, Memory, Plan, WorkerShape, WorkerView, decide, reset_breaker,
)
from elastic.policy.demand import Bins, collect, pack, parse_memory
from elastic.spec.schema import ScalingSpec

NOW = 100_000.0
SHAPE = WorkerShape(slots=4, memory=8192)


def spec(**kw) -> ScalingSpec:
    kw.setdefault("burst", ["ec2"])
    return ScalingSpec(group="worker", batch={"master": "head"}, **kw)


def job(i, slots=1, tasks=1, pe=None, waited=60.0, **kw) -> Job:
    return Job(str(i), f"j{i}", "alice", "qw", slots=slots, tasks=tasks, pe=pe,
               submitted=None if waited is None else NOW - waited, **kw)


def worker(name, site="private", state=State.RUNNING, age=3600.0, idle=600.0, jobs=0,
           used=None, joined=None, slots=4) -> WorkerView:
    """A worker up for ``age`` s; idle for ``idle`` s (None: busy)."""
    joined = (state in (State.RUNNING, State.DRAINING, State.MIGRATING)) if joined is None \
        else joined
    used = jobs if used is None else used
    return WorkerView(name, site, state, created=NOW - age, state_since=NOW - age, slots=slots,
                      running_jobs=jobs, slots_used=used,
                      idle_since=None if (jobs or idle is None) else NOW - idle, joined=joined)


def run(jobs=(), workers=(), *, sp=None, cap=None, memory=None, known=True, now=NOW,
        **kw) -> Plan:
    snap = QueueSnapshot(now, known, pending=tuple(jobs),
                         error=None if known else "qstat: timed out after 30 s")
    return decide(snap, list(workers), sp or spec(), SHAPE,
                  cap or Capacity(private=100, clouds={"ec2": 100}), memory or Memory(), now,
                  **kw)


def kinds(plan: Plan) -> list[str]:
    return [a.kind for a in plan.actions]


def launched(plan: Plan) -> dict[str, int]:
    return {a.site: a.count for a in plan.of_kind("launch")}


# ----------------------------------------------------------------------------- scale up

def test_demand_is_packed_and_booting_workers_count():
    # 12 one-slot jobs = 3 workers of 4 slots; one is already booting: launch 2
    plan = run([job(i, waited=35) for i in range(12)],
               [worker("w1", state=State.BOOT, age=30, joined=False)])
    assert launched(plan) == {"private": 2}
    reason = plan.actions[0].reason
    assert reason.startswith("12 slots in 12 jobs wait (the oldest for 35 s)")
    assert "1 booting worker takes some, 2 new workers cover the rest" in reason
    assert reason.endswith("launching 2 on private hosts")
    assert plan.memory.last_change_at == NOW


def test_free_slots_on_running_workers_count_first():
    busy = worker("w1", jobs=1, idle=None)        # 3 free slots
    plan = run([job(i) for i in range(5)], [busy])
    assert launched(plan) == {"private": 1}
    assert "3 fit free slots of running workers" in plan.actions[0].reason
    assert run([job(i) for i in range(3)], [busy]).actions == ()


def test_array_tasks_and_parallel_environments():
    sp = spec(max_workers=100, max_launch_per_tick=100)
    # an array of 10 tasks of 2 slots ($pe_slots): 2 per worker -> 5 workers
    assert launched(run([job(1, slots=2, tasks=10, pe="smp")], sp=sp)) == {"private": 5}
    # 16 slots of a $fill_up PE span 4 workers; an integer rule of 2 per host: 8 units of 2
    rules = {"mpi": "$fill_up", "pairs": 2}
    assert launched(run([job(1, slots=16, pe="mpi")], sp=sp, pe_rules=rules)) == {"private": 4}
    assert launched(run([job(1, slots=16, pe="pairs")], sp=sp, pe_rules=rules)) == \
        {"private": 4}
    # first-fit decreasing: three 3-slot jobs and three 1-slot jobs fill exactly 3 workers
    mixed = [job(i, slots=3, pe="smp") for i in range(3)] + [job(9 + i) for i in range(3)]
    assert launched(run(mixed, sp=sp)) == {"private": 3}


def test_memory_requests_take_slots():
    # 6 GiB of an 8 GiB, 4-slot worker is 3 slots' worth: one such job per worker
    plan = run([job(i, resources={"h_vmem": "6G"}) for i in range(3)])
    assert launched(plan) == {"private": 3}
    assert parse_memory("512M") == 512 and parse_memory("1g") == 1e9 / 1024**2
    assert parse_memory("lots") is None


def test_jobs_that_waited_less_than_scale_up_after_wait():
    plan = run([job(i, waited=2) for i in range(4)], sp=spec(scale_up_after=5))
    assert plan.actions == ()
    assert "4 slots wait for less than scale_up_after (5 s)" in plan.notes[0]
    assert launched(run([job(i, waited=5) for i in range(4)], sp=spec(scale_up_after=5)))


def test_a_job_that_fits_no_worker_is_reported_not_scaled_for():
    plan = run([job(42, slots=64, pe="mpi"), job(7, queue="gpu.q"),
                job(8, resources={"mem_free": "16G"})])
    assert plan.actions == ()
    notes = "\n".join(plan.notes)
    assert "job 42 (64 slots, pe mpi) fits no worker (4 slots, 8192 MiB)" in notes
    assert "pe mpi is taken as $pe_slots" in notes and "reported, not scaled for" in notes
    assert "job 7 (1 slot) fits no worker" in notes and "asks for queue gpu.q" in notes
    assert "job 8 (1 slot, 16 GiB per slot)" in notes
    # a spread PE is fine, unless it needs more than max_workers can ever give
    plan = run([job(42, slots=64, pe="mpi")], sp=spec(max_workers=10),
               pe_rules={"mpi": "$round_robin"})
    assert plan.actions == () and "max_workers 10 workers of 4 slots give 40" in plan.notes[0]


def test_min_and_max_workers():
    many = [job(i) for i in range(100)]
    have = [worker(f"w{i}", jobs=4, idle=None) for i in range(8)]
    plan = run(many, have, sp=spec(max_workers=10))
    assert launched(plan) == {"private": 2}
    assert "max_workers 10 leaves room for 2" in plan.actions[0].reason
    full = run(many, have + [worker("w8", jobs=4, idle=None), worker("w9", jobs=4, idle=None)],
               sp=spec(max_workers=10))
    assert full.actions == () and "at max_workers (10 workers exist)" in full.notes[0]
    # below min_workers with no demand at all
    plan = run([], [worker("w1")], sp=spec(min_workers=3))
    assert launched(plan) == {"private": 2}
    assert "1 worker at work or booting, below min_workers 3" in plan.actions[0].reason


def test_max_launch_per_tick():
    plan = run([job(i) for i in range(100)], sp=spec(max_workers=50, max_launch_per_tick=3))
    assert launched(plan) == {"private": 3}
    assert "25 new workers cover them; at most 3 per tick" in plan.actions[0].reason


def test_private_first_then_burst_then_no_capacity():
    jobs = [job(i) for i in range(40)]
    sp = spec(max_launch_per_tick=10, burst=["ec2", "gce"])
    plan = run(jobs, sp=sp, cap=Capacity(private=2, clouds={"ec2": 3, "gce": 100}))
    assert [(a.site, a.count) for a in plan.of_kind("launch")] == \
        [("private", 2), ("ec2", 3), ("gce", 5)]
    assert "private hosts have room for 2 only; ec2 has room for 3 only: bursting 5 to gce" \
        in plan.actions[2].reason
    plan = run(jobs, sp=spec(burst=[]), cap=Capacity(private=1))
    assert launched(plan) == {"private": 1}
    assert plan.notes == ("no capacity for 4 more workers of worker: private hosts have room "
                          "for 1 only; no cloud to burst to (scaling.burst is empty)",)
    plan = run(jobs, cap=Capacity(private=0))
    assert plan.actions == () and "private hosts are full; ec2 is not connected" in plan.notes[0]


def test_cooldown_after_each_change():
    jobs = [job(i) for i in range(8)]
    plan = run(jobs, sp=spec(cooldown=20), memory=Memory(last_change_at=NOW - 12))
    assert plan.actions == ()
    assert "cooldown, the last change was 12 s ago (cooldown 20 s)" in plan.notes[0]
    assert launched(run(jobs, sp=spec(cooldown=20), memory=Memory(last_change_at=NOW - 20)))
    # drains wait too
    idle = [worker("w1"), worker("w2")]
    plan = run([], idle, sp=spec(cooldown=20), memory=Memory(last_change_at=NOW - 5))
    assert plan.actions == () and "wait for the cooldown to end (15 s more)" in plan.notes[0]


def test_a_blind_tick_changes_nothing():
    ws = [worker("w1"), worker("w2", state=State.DRAINING),
          worker("w3", state=State.BOOT, age=9999, joined=False)]
    plan = run([], ws, known=False)
    assert plan.actions == ()
    assert plan.notes == ("the batch master did not answer (qstat: timed out after 30 s): the "
                          "queue is unknown, not empty: nothing is launched, drained, removed "
                          "or replaced this tick",)
    assert plan.memory.last_change_at is None


# --------------------------------------------------------------------------- scale down

def test_idle_timeout_and_min_lifetime():
    sp = spec(idle_timeout=600, min_lifetime=1800)
    assert run([], [worker("w1", idle=599, age=3600)], sp=sp).actions == ()
    assert run([], [worker("w1", idle=900, age=1000)], sp=sp).actions == ()
    assert run([], [worker("w1", idle=None, jobs=1)], sp=sp).actions == ()
    plan = run([], [worker("w1", idle=600, age=1800)], sp=sp)
    assert kinds(plan) == ["drain"] and plan.actions[0].node == "w1"
    assert plan.actions[0].reason == (
        "no job waits; w1 (private hosts) has run nothing for 10 min (idle_timeout 10 min) "
        "and is up for 30 min (min_lifetime 30 min); 1 worker > min_workers 0: draining it "
        "(the newest private workers go first)")
    assert plan.memory.last_change_at == NOW


def test_no_scale_down_while_a_job_waits_even_a_young_one():
    plan = run([job(1, waited=1)], [worker("w1", jobs=4, idle=None), worker("w2")])
    assert "drain" not in kinds(plan)


def test_an_infeasible_job_does_not_hold_back_scale_down():
    plan = run([job(1, slots=64, pe="smp")], [worker("w1")])
    assert kinds(plan) == ["drain"]


def test_cloud_first_last_burst_site_first_then_newest_private():
    ws = [worker("p-old", age=9000), worker("p-new", age=4000), worker("e1", "ec2", age=5000),
          worker("g1", "gce", age=9500), worker("e2", "ec2", age=4500)]
    plan = run([], ws, sp=spec(min_workers=1, burst=["ec2", "gce"]))
    assert [a.node for a in plan.actions] == ["g1", "e2", "e1", "p-new"]
    assert "(cloud workers go first)" in plan.actions[0].reason
    assert "5 workers > min_workers 1" in plan.actions[0].reason


def test_never_below_min_workers():
    ws = [worker(f"w{i}") for i in range(5)] + [worker("b", state=State.BOOT, age=10,
                                                       joined=False)]
    plan = run([], ws, sp=spec(min_workers=4))
    assert kinds(plan) == ["drain", "drain"]      # 6 serving - 4


def test_remove_only_drained_workers_that_run_nothing():
    ws = [worker("d-busy", state=State.DRAINING, jobs=2, idle=None),
          worker("d-empty", state=State.DRAINING),
          worker("d-slot", state=State.DRAINING, jobs=0, used=1)]
    plan = run([], ws)
    assert [(a.kind, a.node) for a in plan.actions] == [("remove", "d-empty")]
    assert plan.actions[0].reason == ("d-empty is drained and runs nothing: removing it from "
                                      "the batch system, then destroying its VM")


def test_demand_takes_draining_workers_back_before_launching():
    ws = [worker("d1", state=State.DRAINING, jobs=1, idle=None), worker("d2",
                                                                       state=State.DRAINING)]
    plan = run([job(i) for i in range(3)], ws)      # d1's 3 free slots cover them; d2 goes
    assert [(a.kind, a.node) for a in plan.actions] == [("remove", "d2"), ("undrain", "d1")]
    assert "d1 is draining but has free slots for them: taking it back" in plan.actions[1].reason
    plan = run([job(i) for i in range(9)], ws)
    assert kinds(plan) == ["undrain", "undrain", "launch"] and plan.launched == 1


# ---------------------------------------------------------------- failures and stability

def test_boot_timeout_replaces_counts_a_failure_once_and_relaunches():
    stuck = worker("w1", state=State.BOOT, age=301, joined=False)
    jobs = [job(i) for i in range(4)]
    plan = run(jobs, [stuck], sp=spec(boot_timeout=300, backoff=60),
               cap=Capacity(private=5, clouds={"ec2": 5}))
    assert [(a.kind, a.node or a.site) for a in plan.actions] == \
        [("replace", "w1"), ("launch", "ec2")]     # private backs off: the replacement bursts
    assert plan.actions[0].reason == ("w1 has not joined the batch system 5 min after its "
                                      "launch (boot_timeout 5 min): destroying it")
    assert "private hosts are backing off for 60 s more after 1 failed launch" in \
        plan.actions[1].reason
    assert plan.memory.consecutive_failures == 1 and plan.memory.timed_out == {"w1"}
    # the actuator did not manage to destroy it: replaced again, not counted again
    again = run(jobs, [stuck], sp=spec(boot_timeout=300), memory=plan.memory, now=NOW + 5)
    assert again.memory.consecutive_failures == 1
    # a FAILED worker that never joined is replaced at once; a busy one never
    plan = run([], [worker("f", state=State.FAILED, age=10, joined=False)])
    assert [(a.kind, a.node) for a in plan.actions] == [("replace", "f")]
    assert run([], [worker("f", state=State.BOOT, age=999, joined=False, jobs=1)]).actions == ()


def test_backoff_per_site_grows_and_success_clears_it():
    sp = spec(backoff=60, breaker_failures=10)
    fail = LaunchOutcome("private", ok=False, detail="no space left on pool default")
    plan = run([], sp=sp, outcomes=[fail])
    assert plan.memory.backoff_until == {"private": NOW + 60}
    assert plan.notes == ("launch failed on private hosts (no space left on pool default): no "
                          "launch there for 60 s (1st failure in a row there)",)
    plan = run([], sp=sp, outcomes=[fail, fail, fail], memory=plan.memory)
    assert plan.memory.backoff_until == {"private": NOW + 480}     # x8 at most
    plan = run([job(1)], sp=sp, memory=plan.memory)
    assert launched(plan) == {"ec2": 1}
    plan = run([], sp=sp, memory=plan.memory, outcomes=[LaunchOutcome("private", ok=True)])
    assert plan.memory.backoff_until == {} and plan.memory.consecutive_failures == 0


def test_after_a_failure_a_site_gets_one_launch_at_a_time():
    mem = Memory(site_failures={"private": 2}, consecutive_failures=2)   # backoff is over
    plan = run([job(i) for i in range(12)], memory=mem)
    assert [(a.site, a.count) for a in plan.of_kind("launch")] == [("private", 1), ("ec2", 2)]
    assert plan.actions[0].reason.endswith(
        "launching 1 on private hosts (one at a time after 2 failed launches there)")
    assert "private hosts take one at a time: bursting 2 to ec2" in plan.actions[1].reason


def test_breaker_opens_per_site_after_n_failures_and_says_why():
    sp = spec(breaker_failures=3, backoff=1)
    outs = [LaunchOutcome("ec2", ok=False, node=f"w{i}", detail="InsufficientInstanceCapacity")
            for i in range(3)]
    plan = run([job(i) for i in range(12)], sp=sp, outcomes=outs,
               cap=Capacity(private=1, clouds={"ec2": 10}))
    assert plan.memory.breaker_open and plan.memory.breakers.keys() == {"ec2"}
    assert plan.notes[0] == ("breaker open on ec2 after 3 consecutive launch failures there "
                             "(last: w2: InsufficientInstanceCapacity): no launches there until "
                             "one succeeds or the breaker is reset once the cause is fixed")
    # the private hosts go on; the cloud is skipped and 'no capacity' says why
    assert launched(plan) == {"private": 1}
    assert "private hosts have room for 1 only; the breaker of ec2 is open" in plan.notes[-1]
    later = run([job(1)], sp=sp, memory=plan.memory, cap=Capacity(0, {"ec2": 10}),
                now=NOW + 3600)
    assert later.actions == () and later.memory.breaker_open
    # every site open: nothing launches, and it says so; scale-down goes on
    both = run([], sp=sp, memory=later.memory, now=NOW + 3601,
               outcomes=[LaunchOutcome("private", ok=False, detail="pool full")] * 3)
    assert both.memory.breakers.keys() == {"private", "ec2"}
    plan = run([job(1)], sp=sp, memory=both.memory, now=NOW + 3700)
    assert plan.actions == ()
    assert "not launching, the breaker of every site is open" in plan.notes[-1]
    assert kinds(run([], [worker("w1")], sp=sp, memory=both.memory, now=NOW + 3700)) == \
        ["drain"]
    # the operator resets one site or all; or a launch made earlier succeeds there
    assert launched(run([job(1)], sp=sp, memory=reset_breaker(both.memory, "private"),
                        now=NOW + 4000)) == {"private": 1}
    assert reset_breaker(both.memory) == Memory(last_change_at=NOW)
    closed = run([job(1)], sp=sp, memory=both.memory, now=NOW + 4000,
                 outcomes=[LaunchOutcome("ec2", ok=True, node="w0")])
    assert closed.memory.breakers.keys() == {"private"} and launched(closed) == {"ec2": 1}
    assert "a launch on ec2 succeeded (w0): its breaker is closed" in closed.notes


def test_memory_round_trips_through_a_dict():
    m = Memory(12.0, 2, {"ec2": 2}, {"ec2": 99.0}, {"ec2": "after 2"}, frozenset({"w1"}))
    assert Memory.from_dict(m.to_dict()) == m


def test_bins_best_fit_and_counts():
    bins = Bins([("a", 4), ("b", 1), ("c", 3)])
    assert bins.take(1, 2) == 0 and bins.used == ["b", "c"]   # smallest room that fits first
    assert bins.take(3, 2) == 1                                 # only 'a' has 3 left
    g = collect([job(1, slots=3, tasks=5, pe="smp"), job(2, tasks=5)], SHAPE, now=NOW,
                ready_after=5, queue="all.q", pe_rules={}, max_workers=10)
    assert [(n.unit, n.units) for n in g.ready] == [(3, 5), (1, 5)]
    packed = pack(g.ready, running=Bins(), booting=Bins(), draining=Bins(), size=4)
    assert packed.new == 5                     # the five 1-slot tasks fill the 3-slot holes


# ----------------------------------------------------------------------------- properties

states = st.sampled_from([State.PENDING, State.PROLOG, State.BOOT, State.RUNNING,
                          State.DRAINING, State.SHUTDOWN, State.FAILED, State.DONE])


@st.composite
def workers(draw):
    out = []
    for i in range(draw(st.integers(0, 14))):
        state = draw(st.just(State.RUNNING) | states)
        jobs = draw(st.just(0) | st.integers(0, 4))
        used = min(4, jobs + draw(st.sampled_from([0, 0, 0, 1])))
        out.append(WorkerView(
            f"w{i}", draw(st.sampled_from(["private", "ec2"])), state,
            created=NOW - draw(st.floats(0, 5000)), state_since=NOW - 1, slots=4,
            running_jobs=jobs, slots_used=used,
            idle_since=None if used else NOW - draw(st.floats(0, 5000)),
            joined=draw(st.booleans())))
    return out


@st.composite
def pending(draw):
    return [job(i, slots=draw(st.sampled_from([1, 2, 4, 8])), tasks=draw(st.integers(1, 30)),
                pe=draw(st.sampled_from([None, "smp", "mpi"])), waited=draw(st.floats(0, 100)))
            for i in range(draw(st.integers(0, 20)))]


@settings(max_examples=300, deadline=None)
@given(ws=workers(), jobs=st.just([]) | pending(), lo=st.integers(0, 6), span=st.integers(0, 10),
       per_tick=st.integers(1, 8), private=st.integers(0, 10), cloud=st.integers(0, 10),
       known=st.booleans(), fails=st.integers(0, 6),
       last_change=st.none() | st.floats(0, 100))
def test_never_above_max_workers_and_never_removes_a_busy_worker(
        ws, jobs, lo, span, per_tick, private, cloud, known, fails, last_change):
    sp = spec(min_workers=lo, max_workers=lo + span, max_launch_per_tick=per_tick)
    outcomes = [LaunchOutcome("ec2", ok=False)] * fails
    plan = run(jobs, ws, sp=sp, cap=Capacity(private=private, clouds={"ec2": cloud}),
               known=known, outcomes=outcomes, pe_rules={"mpi": "$fill_up"},
               memory=Memory(last_change_at=None if last_change is None
                             else NOW - last_change))
    by_name = {w.name: w for w in ws}
    live = [w for w in ws if w.state != State.DONE]
    replaced = {a.node for a in plan.of_kind("replace")}
    if plan.launched:
        assert len(live) - len(replaced) + plan.launched <= sp.max_workers
        assert plan.launched <= per_tick
        assert not {a.site for a in plan.of_kind("launch")} & plan.memory.breakers.keys()
    for a in plan.actions:
        if a.kind in ("remove", "drain", "replace"):
            w = by_name[a.node]
            assert w.running_jobs == 0 and w.slots_used == 0, a
        if a.kind == "remove":   # drained, or lost after it joined (its jobs taken back)
            w = by_name[a.node]
            assert w.state == State.DRAINING or (w.state == State.FAILED and w.joined), a
    if not known:
        assert plan.actions == ()
    drains = plan.of_kind("drain")
    if drains:
        serving = sum(1 for w in live if w.name not in replaced and (
            (w.joined and w.state in (State.RUNNING, State.PENDING, State.PROLOG, State.BOOT))
            or (not w.joined and w.state in (State.PENDING, State.PROLOG, State.BOOT,
                                             State.RUNNING))))
        assert serving - len(drains) >= sp.min_workers
        servable = [j for j in jobs
                    if j.slots <= 4 or (j.pe == "mpi" and j.slots <= sp.max_workers * 4)]
        assert not servable
    event("launch" if plan.launched else "drain" if drains else
          "remove" if plan.of_kind("remove") else "other")


def test_a_worker_that_joined_before_its_record_caught_up_takes_the_jobs():
    """A cloud launch adopted after a killed controller is still PROLOG in the DB, but its
    node has joined the batch system: it runs jobs, and nothing more is launched for them."""
    early = worker("worker1", site="ec2", state=State.PROLOG, joined=True, idle=None, slots=4)
    plan = run([job(1, slots=2)], [early])
    assert not plan.of_kind("launch"), plan
    assert not plan.of_kind("replace"), plan
