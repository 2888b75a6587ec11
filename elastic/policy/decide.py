"""One tick of the autoscaler as a pure function: decide(...) -> Plan.

No I/O, no clock, no randomness: everything arrives as an argument, and every action
carries the sentence that says why. The rules, in the order they are applied:

1. Learn from what happened to earlier launches (``outcomes``): the n-th failure in a row at
   a site backs that site off for ``backoff`` x 2^(n-1) (at most x8); after
   ``breaker_failures`` in a row its breaker opens and no launch goes there until a launch
   there succeeds or the operator resets it (``reset_breaker``). Breakers are per site, so
   a dead cloud account does not stop the private hosts.
2. A blind tick (the batch master did not answer) is *unknown*, never *empty*: nothing is
   launched, drained, removed or replaced.
3. A worker that has not joined ``boot_timeout`` after its launch, or FAILED before joining,
   is replaced: destroyed, counted as a launch failure of its site, and its place is free
   for a launch in the same plan when demand still needs one.
4. Demand is the pending jobs that waited at least ``scale_up_after``, cut into units and
   bin-packed (see ``demand``) onto free slots of running workers, then booting workers,
   then draining ones (taken back: undrain), then new workers. A job that fits no worker is
   reported, not scaled for, and does not hold back scale-down.
5. Launch what the packing needs (or what min_workers needs): at most max_workers in all
   (every worker that exists counts until it is gone), at most max_launch_per_tick, not
   within ``cooldown`` of the last launch or drain. Private hosts first, then the clouds of
   ``burst`` in order; a site backing off or with its breaker open is skipped, a site whose
   last launch failed gets one at a time; what fits nowhere is reported as 'no capacity'.
6. Scale down only when no job waits that a worker could run: a running worker that runs
   nothing, idle for ``idle_timeout`` and up for ``min_lifetime`` is drained, cloud workers
   first (the last burst site first), then the newest private ones, never below
   min_workers, not within ``cooldown``. A draining worker is removed (out of the batch
   system, then its VM destroyed) only once it runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from elastic.lifecycle import State
from elastic.model import QueueSnapshot
from elastic.policy.demand import Bins, Demand, Packing, collect, pack
from elastic.policy.types import (
    PRIVATE, Action, Capacity, LaunchOutcome, Memory, Plan, WorkerShape, WorkerView,
)

if TYPE_CHECKING:   # read only for its fields: the policy does not depend on the spec package
    from elastic.spec.schema import ScalingSpec

BOOTING = frozenset({State.PENDING, State.PROLOG, State.BOOT, State.RUNNING})  # not joined
AT_WORK = frozenset({State.RUNNING, State.MIGRATING})                         # joined
# joined the batch system before its own record caught up (a cloud launch adopted after a
# controller was killed, a console marker not read yet): it takes jobs, it counts as running
JOINED_EARLY = frozenset({State.PENDING, State.PROLOG, State.BOOT})
BACKOFF_MAX_FACTOR = 8
MAX_REJECTED_NOTES = 5


def decide(snapshot: QueueSnapshot, workers: Sequence[WorkerView], spec: ScalingSpec,
           shape: WorkerShape, capacity: Capacity, memory: Memory, now: float, *,
           outcomes: Sequence[LaunchOutcome] = (),
           pe_rules: Mapping[str, str | int] | None = None) -> Plan:
    """What to do this tick, and why.

    Args:
        snapshot: what the batch system said (``known`` False: the master did not answer).
        workers: the group's workers that exist or are being made (DONE ones are ignored).
        spec: the scaling section (bounds, timers, burst order).
        shape: what one new worker brings (slots = vcpus, memory).
        capacity: how many more workers fit now on private hosts and on each cloud.
        memory: what the previous tick's plan returned (``Memory()`` at first).
        now: the time of this tick.
        outcomes: what became of earlier launches since the previous tick.
        pe_rules: allocation_rule per parallel environment (``$pe_slots``, ``$fill_up``,
            ``$round_robin`` or an integer); a PE not named is taken as ``$pe_slots``.

    Returns:
        The actions in the order to apply them (replace, remove, undrain, launch, drain),
        notes for the operator, and the memory for the next tick.
    """
    notes: list[str] = []
    ledger = _Ledger(memory, spec, now, notes)
    for o in outcomes:
        ledger.outcome(o)

    live = [w for w in workers if w.state != State.DONE]
    if not snapshot.known:
        why = f" ({snapshot.error})" if snapshot.error else ""
        notes.append(f"the batch master did not answer{why}: the queue is unknown, not empty: "
                     "nothing is launched, drained, removed or replaced this tick")
        return Plan((), tuple(ledger.breaker_notes() + notes),
                    ledger.memory(live, None))

    # -- 3. workers that never joined
    replaced: list[Action] = []
    for w in sorted(live, key=lambda w: w.name):
        if w.joined or w.busy:
            continue
        if w.state == State.FAILED:
            replaced.append(Action("replace", f"{w.name} FAILED before joining the batch "
                                   "system: destroying it", site=w.site, node=w.name))
        elif w.state in BOOTING and now - w.created >= spec.boot_timeout:
            replaced.append(Action(
                "replace", f"{w.name} has not joined the batch system {_dur(now - w.created)} "
                f"after its launch (boot_timeout {_dur(spec.boot_timeout)}): destroying it",
                site=w.site, node=w.name))
            ledger.boot_timeout(w, now - w.created)
    gone = {a.node for a in replaced}
    counted = [w for w in live if w.name not in gone]        # exist until destroyed
    running = [w for w in counted if w.joined and w.state in AT_WORK | JOINED_EARLY]
    booting = [w for w in counted if not w.joined and w.state in BOOTING]
    draining = [w for w in counted if w.state == State.DRAINING]

    # -- 4. demand
    demand = collect(snapshot.pending, shape, now=now, ready_after=spec.scale_up_after,
                     queue=spec.batch.queue, pe_rules=pe_rules or {},
                     max_workers=spec.max_workers)
    _report_rejected(demand, shape, notes)
    packing = pack(demand.ready,
                   running=Bins((w.name, w.slots - w.slots_used) for w in running),
                   booting=Bins((w.name, w.slots) for w in booting),
                   draining=Bins((w.name, w.slots - w.slots_used) for w in draining),
                   size=shape.slots)
    site_of = {w.name: w.site for w in draining}
    undrain = [Action("undrain", f"{_demand_sentence(demand, now)}; {name} is draining but has "
                      "free slots for them: taking it back instead of launching", node=name,
                      site=site_of[name]) for name in packing.undrain]
    taken_back = set(packing.undrain)
    removes = [Action("remove", f"{w.name} is drained and runs nothing: removing it from the "
                      "batch system, then destroying its VM", site=w.site, node=w.name)
               for w in sorted(draining, key=lambda w: w.name)
               if not w.busy and w.name not in taken_back]
    # a worker lost after it joined (a spot interruption, a host that died): out of the
    # batch system once the batch system has taken its jobs back (rescheduled them)
    reschedules: list[Action] = []
    for w in sorted(counted, key=lambda w: w.name):
        if w.state != State.FAILED or not w.joined:
            continue
        if w.busy:
            reschedules.append(Action(
                "reschedule", f"{w.name} ({_label(w.site)}) FAILED after it joined (its "
                f"machine is gone) and the batch system still shows "
                f"{_n(w.running_jobs, 'job')} on it: requeueing them elsewhere; it is removed "
                "once it shows none", site=w.site, node=w.name))
        else:
            removes.append(Action("remove", f"{w.name} ({_label(w.site)}) FAILED after it "
                                  "joined and runs nothing now: removing it from the batch "
                                  "system", site=w.site, node=w.name))

    # -- 5. launch
    serving = len(running) + len(booting) + len(undrain)
    launches = _launches(spec, capacity, ledger, demand, packing, serving, len(counted), now,
                         notes)

    # -- 6. scale down
    drains: list[Action] = []
    if not demand.servable and not launches and not undrain:
        drains = _drains(spec, running, serving, ledger, now, notes)

    actions = tuple(replaced + reschedules + removes + undrain + launches + drains)
    return Plan(actions, tuple(ledger.breaker_notes() + notes),
                ledger.memory(live, now if launches or drains else None))


# ----------------------------------------------------------------------------- scale up

def _launches(spec: ScalingSpec, capacity: Capacity, ledger: _Ledger, demand: Demand,
              packing: Packing, serving: int, counted: int, now: float,
              notes: list[str]) -> list[Action]:
    floor = max(0, spec.min_workers - serving)
    wanted = max(packing.new, floor)
    if not demand.ready and demand.young:
        n = demand.young_slots
        notes.append(f"{_n(n, 'slot')} wait{'s' if n == 1 else ''} for less than "
                     f"scale_up_after ({_dur(spec.scale_up_after)}): not scaling for "
                     f"{'it' if n == 1 else 'them'} yet")
    if wanted == 0:
        return []
    if packing.new >= floor:
        why = f"{_demand_sentence(demand, now)}; {_covered(packing)}"
    else:
        why = f"{_n(serving, 'worker')} at work or booting, below min_workers " \
            f"{spec.min_workers}"
    sites = [PRIVATE, *spec.burst]
    if all(site in ledger.breakers for site in sites):
        notes.append(f"{why}: not launching, the breaker of every site is open")
        return []
    since = ledger.since_change(now)
    if since is not None and since < spec.cooldown:
        notes.append(f"{why}: cooldown, the last change was {_dur(since)} ago "
                     f"(cooldown {_dur(spec.cooldown)}): launching waits")
        return []
    room = spec.max_workers - counted
    if room <= 0:
        notes.append(f"{why}: at max_workers ({spec.max_workers} workers exist): "
                     f"{wanted} more would be needed")
        return []
    n = min(wanted, room, spec.max_launch_per_tick)
    caps = []
    if n < wanted:
        caps.append(f"max_workers {spec.max_workers} leaves room for {room}"
                    if room <= spec.max_launch_per_tick
                    else f"at most {spec.max_launch_per_tick} per tick")

    out: list[Action] = []
    earlier: list[str] = []     # what the sites before this one could not take, and why
    left = n
    if caps:
        why = f"{why}; {caps[0]}"
    for site in sites:
        at = capacity.at(site)
        label = _label(site)
        are = "are" if site == PRIVATE else "is"
        until = ledger.backoff_until.get(site)
        if at is None:
            earlier.append(f"{label} is not connected")
        elif site in ledger.breakers:
            earlier.append(f"the breaker of {label} is open")
        elif until is not None and until > now:
            earlier.append(f"{label} {are} backing off for {_dur(until - now)} more after "
                           f"{_n(ledger.site_failures.get(site, 0), 'failed launch')}")
        elif at <= 0:
            limit = capacity.limits.get(site)
            earlier.append(f"{label} {are} full" + (f" ({limit})" if limit else ""))
        else:
            k = min(left, at)
            probe = ""
            failed = ledger.site_failures.get(site, 0)
            if failed and k > 1:            # after a failure, one at a time until one works
                k, probe = 1, f" (one at a time after {_n(failed, 'failed launch')} there)"
            verb = f"launching {k} on {label}" if site == PRIVATE else f"bursting {k} to {label}"
            verb += probe
            before = f"{'; '.join(earlier)}: " if earlier else ""
            out.append(Action("launch", f"{why}: {before}{verb}", site=site, count=k))
            left -= k
            if not left:
                break
            earlier.append(f"{label} take{'' if site == PRIVATE else 's'} one at a time" if probe
                           else f"{label} {'have' if site == PRIVATE else 'has'} room for {k} "
                           "only")
    if left:
        if not spec.burst:
            earlier.append("no cloud to burst to (scaling.burst is empty)")
        notes.append(f"no capacity for {_n(left, 'more worker')} of "
                     f"{spec.group}: {'; '.join(earlier)}")
    return out


def _demand_sentence(demand: Demand, now: float) -> str:
    oldest = demand.oldest
    age = f" (the oldest for {_dur(now - oldest)})" if oldest is not None else ""
    slots = demand.ready_slots
    return f"{_n(slots, 'slot')} in {_n(demand.ready_jobs, 'job')} " \
        f"wait{'s' if slots == 1 else ''}{age}"


def _covered(packing: Packing) -> str:
    parts = []
    if packing.running_slots:
        parts.append(f"{packing.running_slots} fit free slots of running workers")
    if packing.booting_used:
        parts.append(f"{packing.booting_used} booting worker"
                     f"{'s take' if packing.booting_used != 1 else ' takes'} some")
    if packing.undrain:
        parts.append(f"{len(packing.undrain)} draining worker"
                     f"{'s are' if len(packing.undrain) != 1 else ' is'} taken back")
    rest = "the rest" if parts else "them"
    new = f"{_n(packing.new, 'new worker')} cover{'s' if packing.new == 1 else ''} {rest}"
    return ", ".join(parts + [new])


def _report_rejected(demand: Demand, shape: WorkerShape, notes: list[str]) -> None:
    for g, why in demand.rejected[:MAX_REJECTED_NOTES]:
        notes.append(f"{g.describe()} fits no worker ({shape.slots} slots"
                     f"{f', {shape.memory} MiB' if shape.memory else ''}): {why}: "
                     "reported, not scaled for")
    extra = len(demand.rejected) - MAX_REJECTED_NOTES
    if extra > 0:
        notes.append(f"and {extra} more kinds of job that fit no worker")


# --------------------------------------------------------------------------- scale down

def _drains(spec: ScalingSpec, running: list[WorkerView], serving: int, ledger: _Ledger,
            now: float, notes: list[str]) -> list[Action]:
    idle = [w for w in running
            if w.state == State.RUNNING and not w.busy and w.idle_since is not None
            and now - w.idle_since >= spec.idle_timeout and now - w.created >= spec.min_lifetime]
    allowed = serving - spec.min_workers
    if not idle or allowed <= 0:
        return []
    since = ledger.since_change(now)
    if since is not None and since < spec.cooldown:
        notes.append(f"{len(idle)} idle worker{'s wait' if len(idle) != 1 else ' waits'} for "
                     f"the cooldown to end ({_dur(spec.cooldown - since)} more) before draining")
        return []
    burst = list(spec.burst)

    def order(w: WorkerView) -> tuple:
        last = burst.index(w.site) if w.site in burst else len(burst)
        return (not w.is_cloud, -last, -w.created, w.name)

    out = []
    for i, w in enumerate(sorted(idle, key=order)[:allowed]):
        which = "cloud workers go first" if w.is_cloud else "the newest private workers go first"
        out.append(Action(
            "drain", f"no job waits; {w.name} ({_label(w.site)}) has run nothing for "
            f"{_dur(now - w.idle_since)} (idle_timeout {_dur(spec.idle_timeout)}) and is up for "
            f"{_dur(now - w.created)} (min_lifetime {_dur(spec.min_lifetime)}); "
            f"{_n(serving - i, 'worker')} > min_workers {spec.min_workers}: draining it "
            f"({which})",
            site=w.site, node=w.name))
    return out


# ------------------------------------------------------------------------------- memory

class _Ledger:
    """Failures, backoff and breakers while one tick is decided; becomes the next Memory."""

    def __init__(self, memory: Memory, spec: ScalingSpec, now: float,
                 notes: list[str]) -> None:
        self.spec, self.now, self.notes = spec, now, notes
        self.last_change_at = memory.last_change_at
        self.failures = memory.consecutive_failures
        self.site_failures = dict(memory.site_failures)
        self.backoff_until = {s: t for s, t in memory.backoff_until.items() if t > now}
        self.breakers = dict(memory.breakers)
        self.timed_out = set(memory.timed_out)

    def outcome(self, o: LaunchOutcome) -> None:
        if o.ok:
            self.failures = 0
            self.site_failures.pop(o.site, None)
            self.backoff_until.pop(o.site, None)
            if self.breakers.pop(o.site, None) is not None:
                self.notes.append(f"a launch on {_label(o.site)} succeeded"
                                  f"{f' ({o.node})' if o.node else ''}: its breaker is closed")
        else:
            what = f"{o.node}: " if o.node else ""
            self.failure(o.site, f"{what}{o.detail or 'launch failed'}", fatal=o.fatal)

    def boot_timeout(self, w: WorkerView, age: float) -> None:
        if w.name not in self.timed_out:
            self.timed_out.add(w.name)
            self.failure(w.site, f"{w.name} did not join within {_dur(age)}")

    def failure(self, site: str, detail: str, fatal: bool = False) -> None:
        self.failures += 1
        n = self.site_failures[site] = self.site_failures.get(site, 0) + 1
        wait = self.spec.backoff * min(2 ** (n - 1), BACKOFF_MAX_FACTOR)
        self.backoff_until[site] = self.now + wait
        self.notes.append(f"launch failed on {_label(site)} ({detail}): no launch there for "
                          f"{_dur(wait)} ({_nth(n)} failure in a row there)")
        if site not in self.breakers and fatal:
            self.breakers[site] = (f"after a launch failure that needs a person "
                                   f"({detail})")
        elif site not in self.breakers and n >= self.spec.breaker_failures:
            self.breakers[site] = (f"after {n} consecutive launch failures there "
                                   f"(last: {detail})")

    def since_change(self, now: float) -> float | None:
        return None if self.last_change_at is None else now - self.last_change_at

    def breaker_notes(self) -> list[str]:
        return [f"breaker open on {_label(site)} {why}: no launches there until one succeeds "
                "or the breaker is reset once the cause is fixed"
                for site, why in sorted(self.breakers.items())]

    def memory(self, live: Sequence[WorkerView], changed_at: float | None) -> Memory:
        names = {w.name for w in live}
        return Memory(
            last_change_at=changed_at if changed_at is not None else self.last_change_at,
            consecutive_failures=self.failures,
            site_failures={s: n for s, n in self.site_failures.items() if n},
            backoff_until=dict(self.backoff_until), breakers=dict(self.breakers),
            timed_out=frozenset(self.timed_out & names))


# ------------------------------------------------------------------------------- words

def _label(site: str) -> str:
    return "private hosts" if site == PRIVATE else site


def _n(count: int, word: str) -> str:
    plural = "es" if word.endswith(("ch", "sh", "s", "x")) else "s"
    return f"{count} {word}{'' if count == 1 else plural}"


def _nth(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _dur(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
