"""The autoscaler: every tick, observe the queue and the workers, decide (pure, elastic.policy),
act through the same machinery as `elastic up`, and record every decision with its reason.

The group's members (which worker indices exist) live in the state DB (project data
``members``), so `elastic up`/`plan` of the same file see the autoscaled group, and a
controller killed at any point starts again from what the DB and the hosts say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from elastic.clock import Clock, SystemClock
from elastic.errors import ConfigError, ElasticError, PermanentError, TransientError
from elastic.lifecycle import State
from elastic.model import Project, QueueSnapshot
from elastic.policy import (PRIVATE, Capacity, LaunchOutcome, Memory, Plan, WorkerShape, WorkerView,
                            decide, reset_breaker)
from elastic.state import Store

log = logging.getLogger(__name__)


class BatchSystem(Protocol):
    """What the autoscaler needs of a batch system (elastic.adapters.batch.sge.SGE)."""

    def snapshot(self, now: float) -> QueueSnapshot: ...
    def admit(self, name: str, address: str) -> None: ...
    def route(self, destination: str, via: str) -> None: ...
    def add_exec_host(self, name: str, slots: int) -> None: ...
    def disable(self, name: str) -> None: ...
    def reschedule(self, name: str) -> None: ...
    def enable(self, name: str) -> None: ...
    def remove_exec_host(self, name: str) -> None: ...


class Fleet(Protocol):
    """What the autoscaler needs of the VM machinery (engine.cluster.Cluster with a spec)."""

    def project(self, members: list[int] | None) -> Project: ...
    def room(self, members: list[int], limit: int) -> int: ...
    def converge(self, members: list[int]) -> dict[str, str]: ...   # node -> '' | failure
    def resume(self, members: list[int]) -> dict[str, str] | None: ...  # None: busy
    def move(self, store: Store, node: str, state: State, reason: str) -> None: ...


@dataclass
class TickResult:
    plan: Plan
    snapshot: QueueSnapshot
    workers: list[WorkerView]
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class CloudSites(Protocol):
    """What the autoscaler needs of a cloud (engine.cloud.CloudSite)."""

    name: str

    def room(self, store: Store) -> tuple[int, str]: ...
    def launch(self, store: Store, project: Project, node, now: float) -> str: ...
    def destroy(self, store: Store, node: str, reason: str) -> None: ...
    def sweep(self, store: Store, now: float) -> list[str]: ...


class Autoscaler:
    def __init__(self, project_name: str, store_open: Callable[[], Store], batch: BatchSystem,
                 fleet: Fleet, *, clock: Clock | None = None,
                 clouds: Mapping[str, CloudSites] | None = None) -> None:
        self.name = project_name
        self.store_open = store_open
        self.batch = batch
        self.fleet = fleet
        self.clock = clock or SystemClock()
        self.clouds = dict(clouds or {})     # the clouds of scaling.burst, by name
        self.newly_joined: list[str] = []   # workers that joined in the last observation

    # -------------------------------------------------------------------- observing
    def _members(self, store: Store, project: Project) -> list[int]:
        rec = store.get_project(self.name)
        members = (rec.data or {}).get("members", {}) if rec else {}
        group = project.scaling.group
        if group in members:
            return sorted(members[group])
        return sorted(n.index for n in project.nodes if n.group == group and n.index is not None)

    def _cloud_indices(self, store: Store, group: str) -> list[int]:
        """Indices of the group's workers that live in a cloud (not in ``members``)."""
        return sorted(int(r.data["index"]) for r in store.list_nodes(self.name)
                      if r.site != PRIVATE and r.state != State.DONE
                      and (r.data or {}).get("group") == group
                      and (r.data or {}).get("index") is not None)

    def _save(self, store: Store, *, members: list[int] | None = None,
              memory: Memory | None = None, outcomes: list[LaunchOutcome] | None = None,
              queue: dict | None = None, member_classes: dict[int, str] | None = None,
              group: str, reset_applied: str | None = None) -> None:
        rec = store.get_project(self.name)
        if rec is None:
            raise PermanentError(f"project {self.name} is not up (run elastic up first)")
        data = dict(rec.data or {})
        if members is not None:
            data["members"] = {**data.get("members", {}), group: sorted(members)}
            # a removed member's class goes with it (its index may be used again)
            classes = dict(data.get("member_classes") or {})
            kept = {i: c for i, c in (classes.get(group) or {}).items() if int(i) in members}
            if kept:
                classes[group] = kept
            else:
                classes.pop(group, None)
            data["member_classes"] = classes
        if member_classes:
            classes = dict(data.get("member_classes") or {})
            classes[group] = {**(classes.get(group) or {}),
                              **{str(i): c for i, c in member_classes.items()}}
            data["member_classes"] = classes
        if memory is not None:
            data["autoscale"] = memory.to_dict()
            if reset_applied is not None and data.get("breaker_reset") == reset_applied:
                del data["breaker_reset"]
        if outcomes is not None:
            data["outcomes"] = [o.__dict__ for o in outcomes]
        if queue is not None:
            data["queue"] = queue
        store.update_project_data(self.name, data, self.clock.now())

    def workers(self, store: Store, project: Project, snapshot: QueueSnapshot,
                now: float) -> list[WorkerView]:
        group = project.scaling.group
        specs = {n.name: n for n in project.nodes if n.group == group}
        hosts = {h.name.split(".")[0]: h for h in snapshot.hosts}
        running: dict[str, int] = {}
        for job in snapshot.running:
            if job.host:
                running[job.host.split(".")[0]] = running.get(job.host.split(".")[0], 0) + 1
        out = []
        self.newly_joined = []
        for rec in store.list_nodes(self.name):
            if rec.state == State.DONE or (rec.data or {}).get("group") != group:
                continue
            exec_host = hosts.get(rec.name)
            data = dict(rec.data or {})
            joined = bool(data.get("joined")) or (exec_host is not None and not exec_host.alarm)
            busy_slots = exec_host.slots_used if exec_host else 0
            jobs = running.get(rec.name, 0)
            idle_since = data.get("idle_since")
            if snapshot.known:
                idle_since = None if (jobs or busy_slots) else (idle_since or now)
            if joined and not data.get("joined"):
                self.newly_joined.append(rec.name)
            state = rec.state
            if rec.site != PRIVATE and joined and state == State.BOOT and rec.provider_id:
                # a cloud node is RUNNING when it joined (there is no console to read)
                self.fleet.move(store, rec.name, State.RUNNING,
                                f"joined the batch system from clouds.{rec.site}")
                state = State.RUNNING
            if (joined, idle_since) != (data.get("joined"), data.get("idle_since")):
                store.update_node_data(self.name, rec.name,
                                       {**data, "joined": joined, "idle_since": idle_since})
            node = specs.get(rec.name)
            out.append(WorkerView(rec.name, rec.site, state, rec.created, rec.state_since,
                                  node.vcpus if node else int(data.get("vcpus", 1)),
                                  running_jobs=jobs, slots_used=busy_slots,
                                  idle_since=idle_since, joined=joined, host=rec.host))
        return out

    # --------------------------------------------------------------------- one tick
    def tick(self, *, dry_run: bool = False,
             on_plan: Callable[[TickResult], None] | None = None) -> TickResult:
        """Look at the queue and the workers, decide, record the decision, then act on it.
        ``on_plan`` sees the decision before it is carried out (making VMs takes a while)."""
        now = self.clock.now()
        project = self.fleet.project(None)
        if project.scaling is None:
            raise PermanentError(f"{project.source}: no scaling: section, nothing to autoscale")
        spec = project.scaling
        snapshot = self.batch.snapshot(now)
        with self.store_open() as store:
            rec = store.get_project(self.name)
            if rec is None:
                raise PermanentError(f"project {self.name} is not up (run elastic up first)")
            memory = Memory.from_dict((rec.data or {}).get("autoscale") or {})
            # an operator's `elastic reset-breaker` (asked while a tick may have been running)
            reset = (rec.data or {}).get("breaker_reset")
            if reset is not None:
                memory = reset_breaker(memory, None if reset == "*" else reset)
            outcomes = [LaunchOutcome(**o) for o in (rec.data or {}).get("outcomes", [])]
            members = self._members(store, project)
            # the clouds first: a launch cut off by a killed controller is adopted (or a
            # vanished instance's node FAILED) before the workers are looked at
            cloud_notes, cloud_errors = ([], []) if dry_run else self._sweep(store, now)
            workers = self.workers(store, project, snapshot, now)
            # a launch succeeded when its worker joined the batch system (not when its VM
            # booted: an image that boots but never joins is a failed launch)
            outcomes += [LaunchOutcome(w.site, True, w.name) for w in workers
                         if w.name in self.newly_joined]
            shape = self._shape(project)
            room = self.fleet.room(members, max(0, spec.max_workers - len(workers)))
            clouds, limits = self._rooms(store, cloud_errors)
            plan = decide(snapshot, workers, spec, shape,
                          Capacity(private=room, clouds=clouds, limits=limits),
                          memory, now, outcomes=outcomes)
            if cloud_notes:
                plan = Plan(plan.actions, plan.notes + tuple(cloud_notes), plan.memory)
            result = TickResult(plan, snapshot, workers, errors=cloud_errors)
            if dry_run:
                return result
            self._save(store, memory=plan.memory, outcomes=[], group=spec.group,
                       queue={**queue_summary(snapshot), "group": spec.group},
                       reset_applied=reset)
            if snapshot.known:
                self._history(store, snapshot, workers, now)
            for action in plan.actions:
                store.record_event(self.name, f"decision:{action.kind}", now,
                                   node=action.node, reason=action.reason)
            for note in plan.notes:
                store.record_event(self.name, "note", now, reason=note)
            self._admit(store, project, workers, result)
        if on_plan is not None:
            on_plan(result)
        if not self.apply(plan, project, result):
            self._resume(project, members, workers, result)
        return result

    def _history(self, store: Store, snapshot: QueueSnapshot, workers: list[WorkerView],
                 now: float) -> None:
        """The timeline (`elastic report`, the status page): the queue and the workers by
        site this tick, and what became of each job."""
        by_site = {PRIVATE: 0, **{name: 0 for name in self.clouds}}
        for w in workers:
            by_site[w.site] = by_site.get(w.site, 0) + 1
        site_of = {w.name: w.site for w in workers}
        store.add_queue_sample(self.name, now, pending_jobs=len(snapshot.pending),
                               pending_slots=snapshot.pending_slots,
                               running_jobs=len(snapshot.running), workers=by_site)
        store.observe_jobs(self.name, now, snapshot.pending, [
            (j, site_of.get((j.host or "").split("@")[-1].split(".")[0], PRIVATE))
            for j in snapshot.running])

    def _sweep(self, store: Store, now: float) -> tuple[list[str], list[str]]:
        """Each cloud's sweep (half-recorded launches adopted, orphans terminated, vanished
        nodes FAILED): what was done, and errors."""
        notes: list[str] = []
        errors: list[str] = []
        for name, site in self.clouds.items():
            try:
                for what in site.sweep(store, now):
                    store.record_event(self.name, "cloud:sweep", now, reason=what)
                    notes.append(f"clouds.{name}: {what}")
            except ElasticError as e:
                errors.append(f"clouds.{name}: {e}")
        return notes, errors

    def _rooms(self, store: Store, errors: list[str]) -> tuple[dict[str, int], dict[str, str]]:
        """Each cloud's room this tick and what limits it; a cloud that does not answer is
        left out (not connected) and its error added to ``errors``."""
        rooms: dict[str, int] = {}
        limits: dict[str, str] = {}
        for name, site in self.clouds.items():
            try:
                rooms[name], limits[name] = site.room(store)
            except ElasticError as e:
                errors.append(f"clouds.{name}: {e}")
        return rooms, limits

    def _resume(self, project: Project, members: list[int], workers: list[WorkerView],
                result: TickResult) -> None:
        """Workers left half-made (a controller killed mid-launch: PENDING, PROLOG or BOOT
        with nobody working on them) are finished: the group is converged again, unless
        another elastic process holds the project (then it is that one's work)."""
        stuck = sorted(w.name for w in workers if w.site == PRIVATE
                       and w.state in (State.PENDING, State.PROLOG, State.BOOT))
        if not stuck:
            return
        failures = self.fleet.resume(members)
        if failures is None:
            return
        result.applied.append(f"resumed {', '.join(stuck)}")
        with self.store_open() as store:
            store.record_event(self.name, "note", self.clock.now(),
                               reason=f"finishing {', '.join(stuck)}, left half-made by an "
                               "earlier run")

    def _shape(self, project: Project) -> WorkerShape:
        group = project.scaling.group
        node = next((n for n in project.nodes if n.group == group), None)
        if node is None:   # the group is empty: resolve one member to learn its shape
            node = next(n for n in self.fleet.project([1]).nodes if n.group == group)
        return WorkerShape.of(node)

    def _admit(self, store: Store, project: Project, workers: list[WorkerView],
               result: TickResult) -> None:
        """Workers that are up (or coming up) but not yet admitted by the master are: the
        master learns their names and addresses, and each then joins by itself. (Usually
        done just before launch; this catches what a killed controller left undone.)"""
        for w in workers:
            if w.joined or w.state not in (State.PROLOG, State.BOOT, State.RUNNING):
                continue
            rec = store.get_node(self.name, w.name)
            if rec is None or (rec.data or {}).get("admitted"):
                continue
            if self._admit_one(project, w.name, result):
                store.update_node_data(self.name, w.name, {**(rec.data or {}), "admitted": True})

    def _admit_one(self, project: Project, name: str, result: TickResult | None) -> bool:
        try:
            node = project.node(name)
        except KeyError:
            return False
        address = batch_address(project, node)
        if address is None:
            return False
        try:
            self.batch.admit(name, address)
        except ElasticError as e:
            if result is not None:
                result.errors.append(f"admit {name}: {e}")
            log.warning("admit %s: %s", name, e)
            return False
        if result is not None:
            result.applied.append(f"admitted {name} ({address})")
        return True

    def _launch(self, group: str, members: list[int], new: list[int],
                result: TickResult | None) -> tuple[dict[str, str], set[str]]:
        """Bring the group to ``members + new``: the master admits the new workers first (so
        that they join the moment they boot), then the VMs are made. Returns the failures
        (node -> why) and the new workers' names."""
        target = self.fleet.project(sorted(members + new))
        new_names = {n.name for n in target.nodes if n.group == group and n.index in new}
        admitted = {name for name in sorted(new_names)
                    if self._admit_one(target, name, result)}
        failures = self.fleet.converge(sorted(members + new))
        if admitted:
            with self.store_open() as store:
                for name in admitted:
                    rec = store.get_node(self.name, name)
                    if rec is not None:
                        store.update_node_data(self.name, name,
                                               {**(rec.data or {}), "admitted": True})
        return failures, new_names

    # ------------------------------------------------------------------------- acting
    def apply(self, plan: Plan, project: Project, result: TickResult) -> bool:
        """Carry out the plan's actions in their order; one failed action never stops the
        others (it is recorded and the next tick sees the world as it is). True if the
        group's VMs were converged (made or removed)."""
        group = project.scaling.group
        gone: list[str] = []                       # private workers whose VMs go
        launches = 0                               # new private workers
        bursts: list[tuple[str, int]] = []         # (cloud, count)
        site_of = {w.name: w.site for w in result.workers}
        with self.store_open() as store:
            for action in plan.actions:
                try:
                    if action.kind == "drain":
                        self.batch.disable(action.node)
                        self.fleet.move(store, action.node, State.DRAINING, action.reason)
                    elif action.kind == "reschedule":
                        self.batch.reschedule(action.node)
                    elif action.kind == "undrain":
                        self.batch.enable(action.node)
                        self.fleet.move(store, action.node, State.RUNNING, action.reason)
                    elif action.kind in ("remove", "replace"):
                        if action.kind == "remove":
                            self.batch.remove_exec_host(action.node)   # refuses a busy host
                        site = site_of.get(action.node, PRIVATE)
                        if site == PRIVATE:
                            gone.append(action.node)
                        else:
                            self._site(site).destroy(store, action.node, action.reason)
                    elif action.kind == "launch":
                        if action.site == PRIVATE:
                            launches += action.count
                        elif action.site in self.clouds:
                            bursts.append((action.site, action.count))
                        else:
                            result.errors.append(f"launch on {action.site}: that cloud is "
                                                 "not connected")
                            continue
                    result.applied.append(f"{action.kind} {action.node or action.count}")
                except (ElasticError, ValueError) as e:
                    result.errors.append(f"{action.kind} {action.node or ''}: {e}")
            members = self._members(store, project)
            # a cloud worker never takes the name of a private one going away this tick
            # (its VM is removed by name below)
            leaving = set(members)
            index_of = {n.name: n.index for n in project.nodes if n.group == group}
            members = [i for i in members if i not in {index_of.get(g) for g in gone}]
            new = _next_indices(sorted(set(members) | set(self._cloud_indices(store, group))),
                                launches)
            if gone or new:
                self._save(store, members=members + new, group=group)
        outcomes = [o for site, count in bursts
                    for o in self._burst(site, count, project, members + new, result,
                                         avoid=leaving)]
        if gone or new:
            failures, new_names = self._launch(group, members, new, result)
            # only failures now; a success is counted when the worker joins (see tick)
            outcomes += [LaunchOutcome(PRIVATE, False, n, failures[n])
                         for n in sorted(new_names) if failures.get(n)]
        if outcomes:
            with self.store_open() as store:
                self._save(store, outcomes=outcomes, group=group)
        return bool(gone or new)

    def _site(self, name: str) -> CloudSites:
        try:
            return self.clouds[name]
        except KeyError:
            raise PermanentError(f"cloud {name} is not connected (not in scaling.burst, or "
                                 "its section is gone)") from None

    def _burst(self, site: str, count: int, project: Project, members: list[int],
               result: TickResult | None,
               avoid: frozenset[int] | set[int] = frozenset()) -> list[LaunchOutcome]:
        """``count`` new workers on cloud ``site`` (indices neither in ``members`` nor in
        ``avoid``); the failed launches as outcomes."""
        group = project.scaling.group
        cloud = self._site(site)
        out: list[LaunchOutcome] = []
        with self.store_open() as store:
            taken = sorted(set(members) | set(avoid) | set(self._cloud_indices(store, group)))
            for i in _next_indices(taken, count):
                node = self._member_spec(members, i, group)
                try:
                    why = cloud.launch(store, project, node, self.clock.now())
                except PermanentError as e:        # the breaker of that cloud opens now
                    out.append(LaunchOutcome(site, False, node.name, str(e), fatal=True))
                    if result is not None:
                        result.errors.append(f"launch {node.name} on {site}: {e}")
                    break
                if why:
                    out.append(LaunchOutcome(site, False, node.name, why))
                    if result is not None:
                        result.errors.append(f"launch {node.name} on {site}: {why}")
                elif result is not None:
                    result.applied.append(f"launched {node.name} on {site}")
        return out

    def _member_spec(self, members: list[int], index: int, group: str):
        """The node spec of the group's member ``index`` (its class, settings, name)."""
        resolved = self.fleet.project(sorted(set(members) | {index}))
        return next(n for n in resolved.nodes if n.group == group and n.index == index)

    # --------------------------------------------------------------------- by hand
    def add_workers(self, count: int, cls: str | None = None) -> dict[str, str]:
        """Launch ``count`` workers now (through the same machinery as the daemon), of the
        group's class or of class ``cls``."""
        project = self.fleet.project(None)
        group = project.scaling.group
        if cls is not None and cls not in project.classes:
            from elastic.spec.suggest import did_you_mean
            raise ConfigError(f"unknown class '{cls}'" + did_you_mean(cls, project.classes)
                              + f" (classes: {', '.join(project.classes)})", project.source,
                              key="--class")
        with self.store_open() as store:
            members = self._members(store, project)
            room = self.fleet.room(members, count)
            bursts: list[tuple[str, int]] = []
            left = count - room
            for name, site in self.clouds.items():
                if left <= 0:
                    break
                at, why = site.room(store)
                if at > 0:
                    bursts.append((name, min(at, left)))
                    left -= min(at, left)
            if left > 0:
                clouds = ", ".join(self.clouds) or "none is connected (scaling.burst)"
                raise TransientError(f"only {count - left} more worker(s) fit (private hosts: "
                                     f"{room}; clouds: {clouds}); asked for {count}")
            private = count - sum(k for _, k in bursts)
            taken = sorted(set(members) | set(self._cloud_indices(store, group)))
            new = _next_indices(taken, count)
            if cls:   # the class of every new member, cloud ones included
                self._save(store, group=group, member_classes={i: cls for i in new})
            new = new[:private]
            self._save(store, members=members + new, group=group)
            store.record_event(self.name, "decision:launch", self.clock.now(),
                               reason=f"elastic add-workers {count}"
                               + (f" --class {cls}" if cls else "")
                               + "".join(f"; {k} on clouds.{c}" for c, k in bursts))
        failures: dict[str, str] = {}
        for site, k in bursts:
            before = self._cloud_names(project)
            outcomes = self._burst(site, k, project, members + new, None)
            failures.update({o.node: o.detail for o in outcomes if o.node})
            failures.update({n: "" for n in self._cloud_names(project) - before})
        if new:
            failures.update(self._launch(group, members, new, None)[0])
        return failures

    def _cloud_names(self, project: Project) -> set[str]:
        with self.store_open() as store:
            return {r.name for r in store.list_nodes(self.name)
                    if r.site != PRIVATE and r.state != State.DONE
                    and (r.data or {}).get("group") == project.scaling.group}

    def drain_workers(self, count: int) -> list[str]:
        """Drain ``count`` workers (cloud first, then the newest private ones); they are
        removed by :meth:`remove_drained` once they run nothing. Never kills a job."""
        project = self.fleet.project(None)
        now = self.clock.now()
        snapshot = self.batch.snapshot(now)
        if not snapshot.known:
            raise TransientError(f"the batch system does not answer ({snapshot.error}); "
                                 "nothing drained")
        with self.store_open() as store:
            workers = [w for w in self.workers(store, project, snapshot, now)
                       if w.state == State.RUNNING]
            workers.sort(key=lambda w: (not w.is_cloud, -w.created, w.name))
            chosen = workers[:count]
            for w in chosen:
                self.batch.disable(w.name)
                self.fleet.move(store, w.name, State.DRAINING,
                                f"elastic remove-workers: drained (runs {w.running_jobs} jobs)")
        return [w.name for w in chosen]

    def remove_drained(self) -> tuple[list[str], list[str]]:
        """Remove the draining workers that run nothing; (removed, still busy)."""
        project = self.fleet.project(None)
        now = self.clock.now()
        snapshot = self.batch.snapshot(now)
        if not snapshot.known:
            return [], []
        removed, busy, private = [], [], []
        group = project.scaling.group
        with self.store_open() as store:
            for w in self.workers(store, project, snapshot, now):
                if w.state != State.DRAINING:
                    continue
                if w.busy:
                    busy.append(w.name)
                    continue
                try:
                    self.batch.remove_exec_host(w.name)
                except TransientError:
                    busy.append(w.name)
                    continue
                removed.append(w.name)
                if w.site == PRIVATE:
                    private.append(w.name)
                else:
                    self._site(w.site).destroy(store, w.name, "elastic remove-workers: "
                                               "drained and runs nothing")
            if private:
                index_of = {n.name: n.index for n in project.nodes if n.group == group}
                members = [i for i in self._members(store, project)
                           if i not in {index_of.get(r) for r in private}]
                self._save(store, members=members, group=group)
        if private:
            self.fleet.converge(self._members_now(project))
        return removed, busy

    def _members_now(self, project: Project) -> list[int]:
        with self.store_open() as store:
            return self._members(store, project)


def reset_breakers(store: Store, project: str, site: str | None, now: float) -> dict[str, str]:
    """The operator fixed what tripped a breaker: close that of ``site`` (every site's if
    None) and forget its failures and backoff. A running autoscaler applies it at its next
    tick too (it may have read the old memory already). Returns the breakers closed."""
    rec = store.get_project(project)
    if rec is None:
        raise PermanentError(f"project {project} is not up")
    data = dict(rec.data or {})
    memory = Memory.from_dict(data.get("autoscale") or {})
    closed = {s: why for s, why in memory.breakers.items() if site is None or s == site}
    data["autoscale"] = reset_breaker(memory, site).to_dict()
    data["breaker_reset"] = site or "*"
    store.update_project_data(project, data, now)
    store.record_event(project, "operator:reset-breaker", now, reason=(
        f"breaker of {', '.join(sorted(closed))} closed by the operator" if closed else
        f"no breaker was open{f' for {site}' if site else ''}; failures and backoff forgotten"))
    return closed


def queue_summary(snapshot: QueueSnapshot) -> dict:
    """What `elastic status` shows of the queue the last tick saw."""
    if not snapshot.known:
        return {"known": False, "at": snapshot.taken_at, "error": snapshot.error}
    return {"known": True, "at": snapshot.taken_at, "pending_jobs": len(snapshot.pending),
            "pending_slots": snapshot.pending_slots, "running_jobs": len(snapshot.running),
            "held": snapshot.held, "errored": snapshot.errored}


def batch_address(project: Project, node) -> str | None:
    """The address the batch master knows ``node`` by: on a network the master is on too,
    else the node's first address."""
    sc = project.scaling
    master_nets = set()
    if sc is not None:
        try:
            master_nets = {i.network for i in project.node(sc.batch.master).interfaces}
        except KeyError:
            pass
    addressed = [i for i in node.interfaces if i.address]
    for iface in addressed:
        if iface.network in master_nets:
            return iface.address
    return addressed[0].address if addressed else None


def _next_indices(members: list[int], count: int) -> list[int]:
    """The lowest free member indices (a removed worker's name is used again later)."""
    out, i, have = [], 1, set(members)
    while len(out) < count:
        if i not in have:
            out.append(i)
        i += 1
    return out


class Stopper:
    """SIGTERM/SIGINT stop the daemon between ticks."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, *_: object) -> None:
        self.event.set()


class ClusterFleet:
    """The real Fleet: the project's spec file and the libvirt machinery of `elastic up`."""

    def __init__(self, cluster, spec, state_dir, *, lab: bool = False,
                 group: str | None = None) -> None:
        self.cluster = cluster
        self.spec = spec
        self.state_dir = state_dir
        self.lab = lab
        self.group = group          # the count group it sizes (default: scaling.group)
        self._name: str | None = None

    def project(self, members: list[int] | None) -> Project:
        from elastic.engine.projects import resolve_with_state
        base = resolve_with_state(self.spec, self.state_dir, lab=self.lab)
        group = self.group or (base.scaling.group if base.scaling is not None else None)
        if members is None or group is None:
            return base
        return resolve_with_state(self.spec, self.state_dir, lab=self.lab,
                                  members={group: members})

    def room(self, members: list[int], limit: int) -> int:
        """How many more workers fit on the private hosts (placement decides), up to limit."""
        return self.cluster.room(lambda extra: self.project(members + _next_indices(members,
                                                                                    extra)),
                                 limit)

    def converge(self, members: list[int]) -> dict[str, str]:
        project = self.project(members)
        outcome = self.cluster.up(self.spec, project, lab=self.lab)
        return {**{n: "" for n in outcome.running}, **outcome.failed}

    def resume(self, members: list[int]) -> dict[str, str] | None:
        """converge, unless another process holds the project's lock (None then)."""
        from elastic.state.store import LockHeld
        wait, self.cluster.lock_wait = self.cluster.lock_wait, 0.0
        try:
            return self.converge(members)
        except LockHeld:
            return None
        finally:
            self.cluster.lock_wait = wait

    def move(self, store: Store, node: str, state: State, reason: str) -> None:
        self.cluster.move_node(store, self.project(None).name, node, state, reason)
