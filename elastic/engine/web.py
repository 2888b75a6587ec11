"""Web tiers: front-end VMs behind an nginx balancer, sized by elasticity rules (OneFlow's).

A tier (``frontends.NAME`` in the spec) is a count group of nodes (the front-ends) and a
balancer on the controller's machine. Every ``tick`` the controller:

1. reads the new lines of the balancer's access log (and, for ``cpu`` rules, the front-ends'
   CPU time from libvirt);
2. keeps the upstream in step with the front-ends: one that is RUNNING and answers the
   health path joins it, one that is gone or FAILED leaves it;
3. asks ``elastic.policy.web.decide_tier`` for the size, with its reason;
4. carries it out. Growing: the new nodes are made (the same machinery as `elastic up`),
   and each joins the upstream once it answers. Shrinking: the newest front-ends leave the
   upstream first (nginx reloads gracefully: requests in flight finish), their connections
   are waited for (at most ``drain_timeout``), then their VMs are destroyed.

Everything the next tick or a restarted controller needs is in the state DB (project data
``tiers.NAME``: the upstream, the last change and its cooldown, the last decisions), the
group's members (``members.GROUP``), and the event log (``tier:*`` events).

    tier = WebTier.build(project, "www", cluster, spec_path, state_dir, lab=True)
    tier.sync()                    # after `elastic up`: the balancer up, healthy ones in
    result = tier.tick()           # one decision, carried out
    tier.scale(3, reason="by hand")
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elastic.adapters.balancer import LogReader, Nginx, nginx_conf
from elastic.clock import Clock, SystemClock
from elastic.errors import ElasticError, PermanentError
from elastic.lifecycle import State
from elastic.model import NodeSpec, Project
from elastic.policy.web import (
    Request,
    TierDecision,
    TierMetrics,
    TierPolicy,
    TierRule,
    TierView,
    decide_tier,
    leaving,
)
from elastic.state import Store

log = logging.getLogger(__name__)

BALANCERS = "balancers"          # under the state directory: one directory per tier
HISTORY = 10                     # decisions kept in the tier's record for `elastic status`
HEALTH_EVERY = 0.5               # seconds between health checks of a new front-end
DRAIN_EVERY = 0.25               # seconds between looks at a leaving front-end's connections


def balancer_dir(state_dir: Path, project: str, tier: str) -> Path:
    return state_dir / BALANCERS / f"{project}-{tier}"


def policy_of(name: str, tier) -> TierPolicy:
    """The pure policy's view of a ``FrontendSpec``."""
    return TierPolicy(name=name, min=tier.min, max=tier.max, rules=tuple(
        TierRule(metric=r.metric, op=r.op, threshold=r.threshold, period=r.period,
                 period_number=r.period_number, adjustment=r.adjustment, value=r.value,
                 cooldown=tier.cooldown if r.cooldown is None else r.cooldown,
                 min_step=r.min_step)
        for r in tier.rules))


def backend_address(project: Project, node: NodeSpec) -> str | None:
    """Where the balancer (on the controller's machine) reaches ``node``: its address on a
    bridged network (the hosts' LAN), else its first address."""
    addressed = [i for i in node.interfaces if i.address]
    for iface in addressed:
        try:
            if project.network(iface.network).kind == "bridged":
                return iface.address
        except KeyError:
            continue
    return addressed[0].address if addressed else None


@dataclass
class TierTick:
    """One tick of a tier: what was seen, decided and done."""

    tier: str
    decision: TierDecision
    size: int
    serving: list[str]
    requests: int                                 # log lines read this tick
    applied: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class WebTier:
    """The controller of one web tier (see the module's docstring)."""

    def __init__(self, project_name: str, tier_name: str, fleet, balancer: Nginx, *,
                 state_dir: Path, netns: str | None, clock: Clock | None = None,
                 say: Callable[[str], None] | None = None, sampler=None) -> None:
        self.name = project_name
        self.tier = tier_name
        self.fleet = fleet
        self.nginx = balancer
        self.state_dir = state_dir
        self.netns = netns
        self.clock = clock or SystemClock()
        self.say = say or (lambda _msg: None)
        self.sampler = sampler                        # for cpu rules: node -> (t, cpu_ns, vcpus)
        self.reader = LogReader(balancer.directory / "access.log", start_at_end=True)
        self.requests: deque[Request] = deque()
        self.cpu: deque[tuple[float, float]] = deque()
        self._cpu_last: dict[str, tuple[float, int]] = {}
        self.started = self.clock.now()               # what the log says before is not known

    @classmethod
    def build(cls, project: Project, tier_name: str, cluster, spec: Path, state_dir: Path, *,
              lab: bool = False, say: Callable[[str], None] | None = None) -> WebTier:
        from elastic.engine.autoscale import ClusterFleet
        tier = project.frontends[tier_name]
        netns = tier.balancer.netns
        if netns is None and lab:
            from elastic.adapters.lab import FRONT_NETNS
            netns = FRONT_NETNS
        directory = balancer_dir(state_dir, project.name, tier_name)
        fleet = ClusterFleet(cluster, spec, state_dir, lab=lab, group=tier.group)
        sampler = None
        if any(r.metric == "cpu" for r in tier.rules):
            sampler = _CpuSampler(cluster)
        return cls(project.name, tier_name, fleet, Nginx(directory, netns=netns),
                   state_dir=state_dir, netns=netns, say=say, sampler=sampler)

    # ------------------------------------------------------------------- the record
    def _spec(self, project: Project):
        try:
            return project.frontends[self.tier]
        except KeyError:
            raise PermanentError(f"project {self.name} has no tier '{self.tier}' (frontends: "
                                 f"{', '.join(project.frontends) or 'none'})") from None

    def record(self) -> dict:
        with Store.open(self.state_dir) as store:
            rec = store.get_project(self.name)
            if rec is None:
                raise PermanentError(f"project {self.name} is not up (run elastic up first)")
            return dict(((rec.data or {}).get("tiers") or {}).get(self.tier) or {})

    def _save(self, *, members: tuple[str, list[int]] | None = None, **fields) -> None:
        """Update the tier's record with ``fields``; ``members``: (group, indices)."""
        with Store.open(self.state_dir) as store:
            rec = store.get_project(self.name)
            if rec is None:
                raise PermanentError(f"project {self.name} is not up (run elastic up first)")
            data = dict(rec.data or {})
            tiers = dict(data.get("tiers") or {})
            mine = {**(tiers.get(self.tier) or {}), **fields}
            tiers[self.tier] = mine
            data["tiers"] = tiers
            if members is not None:
                group, indices = members
                data["members"] = {**(data.get("members") or {}), group: sorted(indices)}
            store.update_project_data(self.name, data, self.clock.now())

    def _event(self, kind: str, reason: str, node: str | None = None) -> None:
        with Store.open(self.state_dir) as store:
            store.record_event(self.name, kind, self.clock.now(), node=node,
                               reason=f"{self.tier}: {reason}")

    # ------------------------------------------------------------------ front-ends
    def frontends(self, project: Project) -> list[NodeSpec]:
        group = self._spec(project).group
        return sorted((n for n in project.nodes if n.group == group),
                      key=lambda n: n.index or 0)

    def _states(self) -> dict[str, State]:
        with Store.open(self.state_dir) as store:
            return {r.name: r.state for r in store.list_nodes(self.name)}

    def backend(self, project: Project, node: NodeSpec) -> str:
        address = backend_address(project, node)
        if address is None:
            raise PermanentError(f"front-end {node.name} has no address the balancer could "
                                 "reach (give it an interface with an address)")
        return f"{address}:{self._spec(project).balancer.backend_port}"

    # -------------------------------------------------------------------- balancer
    def sync(self, project: Project | None = None, serving: Sequence[str] | None = None, *,
             wait: bool = False) -> list[str]:
        """The balancer configured for ``serving`` (default: the recorded upstream, kept in
        step with the front-ends; with ``wait``, RUNNING front-ends get health_timeout to
        answer) and running; reloaded if its upstream changed. Returns the names now in the
        upstream."""
        project = project or self.fleet.project(None)
        if serving is None:
            serving = self._reconcile(project, wait=wait)
        spec = self._spec(project).balancer
        by_name = {n.name: n for n in self.frontends(project)}
        names = [n for n in serving if n in by_name]
        backends = [self.backend(project, by_name[n]) for n in names]
        generation = hashlib.sha256("\n".join(
            [spec.listen, str(spec.port), spec.health_path, *backends]).encode()).hexdigest()[:12]
        conf = nginx_conf(directory=self.nginx.directory, listen=spec.listen, port=spec.port,
                          backends=backends, health_path=spec.health_path,
                          generation=generation, drain_timeout=spec.drain_timeout,
                          connect_timeout=spec.connect_timeout)
        changed = self.nginx.configure(conf)
        info = json.dumps({"project": self.name, "tier": self.tier, "netns": self.netns,
                           "listen": spec.listen, "port": spec.port}) + "\n"
        info_file = self.nginx.directory / "tier.json"
        if not info_file.is_file() or info_file.read_text() != info:   # not every tick
            info_file.write_text(info)
        if self.nginx.running() is None:
            self.nginx.start()
            self._event("tier:balancer", f"nginx started on {spec.listen}:{spec.port} with "
                        f"{len(names)} front-ends: {', '.join(names) or 'none'}")
        elif changed:
            self.nginx.reload(generation, self._poll_address(spec), spec.port)
        now = {"serving": names, "generation": generation, "group": self._spec(project).group}
        if {k: self.record().get(k) for k in now} != now:          # a DB write only on change
            self._save(**now)
        return names

    @staticmethod
    def _poll_address(spec) -> str:
        return "127.0.0.1" if spec.listen in ("0.0.0.0", "*", "::") else spec.listen

    def _reconcile(self, project: Project, *, wait: bool = False) -> list[str]:
        """The upstream as it should be now: the recorded one without front-ends that are
        gone or not RUNNING, plus RUNNING ones that answer the health path."""
        spec = self._spec(project).balancer
        states = self._states()
        serving = [n for n in self.record().get("serving", [])]
        nodes = self.frontends(project)
        names = {n.name for n in nodes}
        kept = [n for n in serving if n in names and states.get(n) == State.RUNNING]
        for gone in sorted(set(serving) - set(kept)):
            self._event("tier:upstream", f"{gone} left the upstream (it is "
                        f"{states.get(gone, 'gone')})", node=gone)
        for node in nodes:
            if node.name in kept or states.get(node.name) != State.RUNNING:
                continue
            if wait:
                ok, why = self._wait_healthy(project, node, spec.health_path,
                                             spec.health_timeout), "no answer"
            else:
                ok, why = self.nginx.health(self.backend(project, node), spec.health_path)
            if ok:
                kept.append(node.name)
                self._event("tier:upstream", f"{node.name} joined the upstream (it answered "
                            f"{spec.health_path})", node=node.name)
            else:
                log.info("%s: %s does not answer %s yet: %s", self.tier, node.name,
                         spec.health_path, why)
        return kept

    # ------------------------------------------------------------------- metrics
    def _read_metrics(self, project: Project, span: float, now: float) -> int:
        fresh = self.reader.read()
        self.requests.extend(fresh)
        while self.requests and self.requests[0].time < now - span - 5:
            self.requests.popleft()
        if self.sampler is not None:
            for t, pct in self.sampler.tier_cpu(project, self.frontends(project), self._cpu_last):
                self.cpu.append((t, pct))
            while self.cpu and self.cpu[0][0] < now - span - 5:
                self.cpu.popleft()
        return len(fresh)

    # ---------------------------------------------------------------------- a tick
    def tick(self, *, dry_run: bool = False,
             on_plan: Callable[[TierTick], None] | None = None) -> TierTick:
        now = self.clock.now()
        project = self.fleet.project(None)
        spec = self._spec(project)
        policy = policy_of(self.tier, spec)
        span = max([r.period * r.period_number for r in policy.rules] or [0.0])
        read = self._read_metrics(project, span, now)
        errors: list[str] = []
        serving = list(self.record().get("serving", []))
        if not dry_run:
            try:
                serving = self.sync(project)
            except ElasticError as e:
                errors.append(f"balancer: {e}")
        members = self.frontends(project)
        rec = self.record()
        view = TierView(size=len(members), serving=len(serving),
                        last_change=rec.get("last_change"), cooldown=rec.get("cooldown", 0.0))
        decision = decide_tier(policy, view, TierMetrics(
            requests=tuple(self.requests), cpu=tuple(self.cpu), since=self.started), now)
        result = TierTick(self.tier, decision, len(members), serving, read, errors=errors)
        if dry_run:
            return result
        history = list(rec.get("history") or [])
        if decision.target != len(members):
            history = (history + [{"at": now, "from": len(members), "to": decision.target,
                                   "reason": decision.reason}])[-HISTORY:]
            self._event("tier:decision", decision.reason)
        self._save(last={"at": now, "size": len(members), "serving": len(serving),
                         "target": decision.target, "reason": decision.reason,
                         "values": list(decision.values)}, history=history)
        if on_plan is not None:
            on_plan(result)
        if decision.target != len(members):
            try:
                result.applied += self.resize(decision.target, decision.cooldown,
                                              project=project)
            except ElasticError as e:
                result.errors.append(f"resize to {decision.target}: {e}")
        return result

    # -------------------------------------------------------------------- resizing
    def scale(self, size: int, *, reason: str = "elastic scale") -> list[str]:
        """Set the tier's size by hand (within min..max); the tier's cooldown follows."""
        project = self.fleet.project(None)
        spec = self._spec(project)
        if not spec.min <= size <= spec.max:
            raise PermanentError(f"tier {self.tier}: {size} is outside min {spec.min} .. max "
                                 f"{spec.max} (change the spec to go beyond)")
        have = len(self.frontends(project))
        self._event("tier:decision", f"{reason}: {have} -> {size} front-ends")
        self.sync(project)
        return self.resize(size, spec.cooldown, project=project)

    def resize(self, size: int, cooldown: float, *, project: Project | None = None) -> list[str]:
        project = project or self.fleet.project(None)
        nodes = self.frontends(project)
        if size > len(nodes):
            done = self._grow(project, nodes, size - len(nodes))
        elif size < len(nodes):
            done = self._shrink(project, nodes, len(nodes) - size)
        else:
            return []
        self._save(last_change=self.clock.now(), cooldown=cooldown)
        return done

    def _grow(self, project: Project, nodes: list[NodeSpec], count: int) -> list[str]:
        from elastic.engine.autoscale import _next_indices
        spec = self._spec(project)
        members = [n.index for n in nodes if n.index is not None]
        new = _next_indices(members, count)
        self._save(members=(spec.group, members + new))
        self.say(f"{self.tier}: making {count} front-end{'s' if count > 1 else ''}")
        t0 = time.monotonic()
        failures = self.fleet.converge(sorted(members + new))
        target = self.fleet.project(None)
        fresh = [n for n in self.frontends(target) if n.index in new]
        applied = []
        for node in fresh:
            if failures.get(node.name):
                applied.append(f"{node.name} FAILED: {failures[node.name]}")
                continue
            if self._wait_healthy(target, node, spec.balancer.health_path,
                                  spec.balancer.health_timeout):
                serving = [*self.record().get("serving", []), node.name]
                self.sync(target, serving)
                self._event("tier:upstream", f"{node.name} joined the upstream "
                            f"{time.monotonic() - t0:.1f} s after the decision", node=node.name)
                applied.append(f"{node.name} serving")
            else:
                applied.append(f"{node.name} up but not answering {spec.balancer.health_path}")
        return applied

    def _wait_healthy(self, project: Project, node: NodeSpec, path: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        backend = self.backend(project, node)
        while True:
            ok, why = self.nginx.health(backend, path)
            if ok:
                return True
            if time.monotonic() > deadline:
                self._event("tier:upstream", f"{node.name} did not answer {path} in "
                            f"{timeout:g} s ({why}); it stays out of the upstream",
                            node=node.name)
                return False
            time.sleep(HEALTH_EVERY)

    def _shrink(self, project: Project, nodes: list[NodeSpec], count: int) -> list[str]:
        spec = self._spec(project)
        going = set(leaving([(n.name, n.index or 0) for n in nodes], count))
        serving = [n for n in self.record().get("serving", []) if n not in going]
        self.say(f"{self.tier}: taking {', '.join(sorted(going))} out of the upstream")
        self.sync(project, serving)
        by_name = {n.name: n for n in nodes}
        deadline = time.monotonic() + spec.balancer.drain_timeout
        open_left: dict[str, int] = {}
        for name in sorted(going):
            backend = self.backend(project, by_name[name])
            while True:
                left = self.nginx.connections_to(backend)
                if left == 0 or time.monotonic() > deadline:
                    break
                time.sleep(DRAIN_EVERY)
            open_left[name] = left
            self._event("tier:drained", f"{name} out of the upstream; " + (
                "its connections closed" if left == 0 else
                f"{left} connections still open after drain_timeout "
                f"{spec.balancer.drain_timeout:g} s"), node=name)
        kept = [n.index for n in nodes if n.name not in going and n.index is not None]
        self._save(members=(spec.group, kept))
        failures = self.fleet.converge(sorted(kept))
        return [f"{name} removed" + (f" ({open_left[name]} connections cut)"
                                     if open_left[name] else "")
                for name in sorted(going)] + \
            [f"{n} FAILED: {why}" for n, why in failures.items() if why]


class _CpuSampler:
    """The front-ends' CPU (percent of their vcpus, averaged), from libvirt's CPU time of
    each domain between two ticks."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster

    def tier_cpu(self, project: Project, nodes: Sequence[NodeSpec],
                 last: dict[str, tuple[float, int]]) -> list[tuple[float, float]]:
        from elastic.adapters.monitor import sample
        with Store.open(self.cluster.state_dir) as store:
            where = {r.name: r.host for r in store.list_nodes(project.name) if r.host}
        wanted = {n.name for n in nodes}
        hosts = {h.name: h for h in project.hosts}
        shares: list[float] = []
        now = self.cluster.clock.now()       # the clock the tier's windows are on
        for host_name in sorted({where[n] for n in wanted if n in where}):
            h = hosts.get(host_name)
            if h is None:
                continue
            try:
                s = sample(self.cluster.host(h.name, h.uri), now)
            except ElasticError as e:
                log.warning("cpu of %s: %s", host_name, e)
                continue
            for d in s.domains:
                if d.project != project.name or d.node not in wanted:
                    continue
                before = last.get(d.node)
                last[d.node] = (now, d.cpu_time_ns)
                if before is not None and now > before[0] and d.cpu_time_ns >= before[1]:
                    shares.append(100.0 * (d.cpu_time_ns - before[1]) / 1e9
                                  / (now - before[0]) / max(1, d.vcpus))
        return [(now, sum(shares) / len(shares))] if shares else []


def stop_balancers(state_dir: Path, project: str) -> list[str]:
    """`elastic down`: every balancer of ``project`` stopped (gracefully); their names."""
    out = []
    root = state_dir / BALANCERS
    if not root.is_dir():
        return out
    for directory in sorted(root.iterdir()):
        info_file = directory / "tier.json"
        if not info_file.is_file():
            continue
        try:
            info = json.loads(info_file.read_text())
        except ValueError:
            continue
        if info.get("project") != project:
            continue
        Nginx(directory, netns=info.get("netns")).stop()
        out.append(f"balancer {info.get('tier')}")
    return out
