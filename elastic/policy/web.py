"""One tick of the web-tier autoscaler as a pure function: decide_tier(...) -> TierDecision.

Front-end VMs serve behind an nginx load balancer; the tier grows when traffic rises and
shrinks when it falls, with elasticity rules in the manner of OpenNebula OneFlow. No I/O,
no clock, no randomness: the balancer's access log, the CPU samples and the time arrive as
arguments, and every decision carries the sentence that says why. The engine calls
``decide_tier`` every tick and carries out ``target``.

A rule's metric is measured in ``period_number`` consecutive windows of ``period`` seconds
ending now, oldest first; window k covers (start, end] (``metric_windows``):

- ``rps``: the requests that ended in the window (any status, served or not), per second
  and per front-end in the balancer's upstream now (at least 1);
- ``p95_latency``: the 95th percentile of ``request_time``, nearest rank (the
  ceil(0.95 n)-th smallest), in milliseconds; 0 when the window has no request;
- ``cpu``: the mean of the tier's CPU samples in the window; unknown when it has none;
- a window that starts before the log covers (``TierMetrics.since``) is unknown.

A rule holds when every window is known and passes its comparison (``holds``). Its target
is the size after its adjustment, clamped to [min, max] (``adjusted``): ``change`` adds
``value``, ``cardinality`` sets it, ``percentage`` adds ``value`` % of the size rounded
away from zero (any fraction is one more front-end), and at least ``min_step``.

The rules of a tick, in the order they are applied:

1. A size below ``min`` is brought to ``min``, above ``max`` to ``max``, cooldown or not.
2. Within the cooldown of the last change (``TierView.cooldown`` after
   ``TierView.last_change``) the size stays.
3. After the cooldown the periods are counted afresh (as OneFlow does): a rule can only
   hold once its whole span (``period`` x ``period_number``) starts at or after the end of
   the cooldown, so a rule that held through the cooldown waits one more full span.
4. A rule that holds but would not change the size (it wants to grow at ``max``, to shrink
   at ``min``, a cardinality equal to the size) is reported and does not fire.
5. Growing beats shrinking: of the rules that grow, the one with the largest target wins;
   only when none grows, of the rules that shrink the one with the largest target (the
   most cautious) wins. On a tie the first rule wins. The decision records that rule's
   cooldown, to be applied after the change.

``leaving`` says which front-ends go when the tier shrinks: the newest first.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from elastic.errors import ConfigError

METRICS = ("rps", "p95_latency", "cpu")
ADJUSTMENTS = ("change", "cardinality", "percentage")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
}
# how a metric is named in a reason, the unit after its values, and its number format
_LABEL = {"rps": ("rps per front-end", "", "{:.1f}"),
          "p95_latency": ("p95 latency", " ms", "{:.0f}"),
          "cpu": ("cpu", " %", "{:.1f}")}


@dataclass(frozen=True)
class Request:
    """One line of the balancer's access log."""

    time: float             # when the request ended, epoch seconds (nginx $msec)
    upstream: str           # the front-end that served it, "10.77.0.31:80", or "-" if none
    status: int             # HTTP status sent to the client
    request_time: float     # seconds (nginx $request_time)


@dataclass(frozen=True)
class TierRule:
    """One elasticity rule: when ``metric op threshold`` holds for ``period_number``
    consecutive periods of ``period`` seconds, adjust the size, then wait ``cooldown``."""

    metric: str             # "rps" | "p95_latency" | "cpu"
    op: str                 # ">" | "<" | ">=" | "<="
    threshold: float
    period: float           # seconds
    period_number: int      # how many consecutive periods it must hold
    adjustment: str         # "change" | "cardinality" | "percentage"
    value: int              # change: +/- N; cardinality: the size; percentage: +/- N %
    cooldown: float         # seconds to wait after a change this rule made
    min_step: int = 1       # percentage only: at least this many front-ends added/removed


@dataclass(frozen=True)
class TierPolicy:
    """The tier's bounds and its rules."""

    name: str               # the tier's name, for reasons ("web")
    min: int
    max: int
    rules: tuple[TierRule, ...]


@dataclass(frozen=True)
class TierView:
    """The tier as the engine sees it this tick."""

    size: int               # front-ends that exist now (serving or coming)
    serving: int            # front-ends in the balancer's upstream now
    last_change: float | None   # epoch s when the size last changed (None: never)
    cooldown: float = 0.0   # the cooldown that applies after last_change


@dataclass(frozen=True)
class TierMetrics:
    """What was measured: the balancer's access log and the tier's CPU."""

    requests: Sequence[Request]          # sorted by time
    cpu: Sequence[tuple[float, float]] = ()   # (time, percent 0..100), sorted by time
    since: float | None = None           # the earliest time the log covers (None: all)


@dataclass(frozen=True)
class TierDecision:
    """The size to have, and why."""

    target: int             # the size to have
    reason: str             # why (always non-empty, even for "stay")
    rule: int | None        # index of the rule that fired, None if none
    cooldown: float         # the cooldown to record with this change (0 if no change)
    values: tuple[float | None, ...] = ()   # the fired rule's metric per period, oldest first


# ------------------------------------------------------------------------------ metrics

def metric_windows(rule: TierRule, metrics: TierMetrics, serving: int,
                   now: float) -> tuple[float | None, ...]:
    """The rule's metric in each of its ``period_number`` windows ending at ``now``, oldest
    first (None: unknown). Window k covers (end - period, end] with
    end = now - (period_number - 1 - k) * period."""
    _check(rule)
    out: list[float | None] = []
    for k in range(rule.period_number):
        end = now - (rule.period_number - 1 - k) * rule.period
        start = end - rule.period
        if metrics.since is not None and start < metrics.since:
            out.append(None)        # the log does not cover the whole window
        elif rule.metric == "rps":
            lo, hi = _span(metrics.requests, start, end, _request_time)
            out.append((hi - lo) / rule.period / max(serving, 1))
        elif rule.metric == "p95_latency":
            lo, hi = _span(metrics.requests, start, end, _request_time)
            out.append(_p95_ms([metrics.requests[i].request_time for i in range(lo, hi)]))
        else:
            lo, hi = _span(metrics.cpu, start, end, _sample_time)
            out.append(sum(metrics.cpu[i][1] for i in range(lo, hi)) / (hi - lo)
                       if hi > lo else None)
    return tuple(out)


def _request_time(r: Request) -> float:
    return r.time


def _sample_time(s: tuple[float, float]) -> float:
    return s[0]


def _span(items: Sequence, start: float, end: float, key: Callable) -> tuple[int, int]:
    """The indexes [lo, hi) of the sorted items whose time is in (start, end]."""
    return bisect_right(items, start, key=key), bisect_right(items, end, key=key)


def _p95_ms(seconds: list[float]) -> float:
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    rank = (95 * len(ordered) + 99) // 100      # ceil(0.95 n) in integers: no float edge
    return ordered[rank - 1] * 1000.0


def holds(rule: TierRule, values: Sequence[float | None]) -> bool:
    """Every value is known and passes ``value <op> threshold`` (no value: it does not)."""
    cmp = _op(rule)
    return bool(values) and all(v is not None and cmp(v, rule.threshold) for v in values)


# --------------------------------------------------------------------------- adjustment

def adjusted(size: int, rule: TierRule, lo: int, hi: int) -> int:
    """The size after the rule's adjustment, clamped to [lo, hi]."""
    return max(lo, min(hi, _raw_target(size, rule)))


def _raw_target(size: int, rule: TierRule) -> int:
    if rule.adjustment == "change":
        return size + rule.value
    if rule.adjustment == "cardinality":
        return rule.value
    if rule.adjustment == "percentage":
        return size + _percent_step(size, rule)
    raise ConfigError(f"unknown adjustment {rule.adjustment!r} (one of "
                      f"{', '.join(ADJUSTMENTS)})", key="adjustment")


def _percent_step(size: int, rule: TierRule) -> int:
    """value % of size, rounded away from zero, at least min_step, with the sign of value
    (OneFlow's PERCENTAGE_CHANGE with min_adjust_step)."""
    if rule.value == 0:
        return 0
    sign = 1 if rule.value > 0 else -1
    return sign * max(_percent_of(size, rule), rule.min_step)


def _percent_of(size: int, rule: TierRule) -> int:
    """|value| % of size, any fraction rounded up: ceil(|size * value| / 100)."""
    return (abs(size * rule.value) + 99) // 100


# ----------------------------------------------------------------------------- decision

@dataclass(frozen=True)
class _Eval:
    """One rule, measured this tick."""

    index: int
    rule: TierRule
    values: tuple[float | None, ...]
    held: bool              # the values pass, whatever the cooldown
    wait: float             # seconds until its span starts after the cooldown (<= 0: now)
    target: int             # adjusted and clamped

    def fires(self, size: int) -> bool:
        return self.held and self.wait <= 0 and self.target != size


def decide_tier(policy: TierPolicy, view: TierView, metrics: TierMetrics,
                now: float) -> TierDecision:
    """The size the tier should have this tick, and why.

    Args:
        policy: the tier's bounds and rules.
        view: its size now, how many front-ends serve, when the size last changed and the
            cooldown that applies after that change.
        metrics: the balancer's access log (at least the longest span of the rules) and
            the tier's CPU samples.
        now: the time of this tick.
    """
    name, size, lo, hi = policy.name, view.size, policy.min, policy.max
    if size < lo:
        return TierDecision(lo, f"{name} has {_fe(size)}, below min {lo}: growing to {lo}",
                            None, 0.0)
    if size > hi:
        return TierDecision(hi, f"{name} has {_fe(size)}, above max {hi}: shrinking to "
                            f"{hi}", None, 0.0)
    last = view.last_change
    if last is not None and now < last + view.cooldown:
        return TierDecision(size, f"cooling down: {_dur(last + view.cooldown - now)} more "
                            f"after the change {_dur(now - last)} ago (cooldown "
                            f"{_dur(view.cooldown)}); {name} stays at {_fe(size)}", None, 0.0)

    evals = [_evaluate(i, rule, view, metrics, lo, hi, now)
             for i, rule in enumerate(policy.rules)]
    grow = [e for e in evals if e.fires(size) and e.target > size]
    shrink = [e for e in evals if e.fires(size) and e.target < size]
    if grow or shrink:
        best = max(grow or shrink, key=lambda e: (e.target, -e.index))
        why = f"{_held_text(best)}: {_action_text(best, policy, size)}"
        if grow and shrink:
            why += f"; growing beats {_n(len(shrink), 'rule')} that would shrink"
        elif len(grow) > 1:
            why += f"; the largest of {len(grow)} rules that would grow"
        elif len(shrink) > 1:
            why += f"; the most cautious of {len(shrink)} rules that would shrink"
        return TierDecision(best.target, why, best.index, best.rule.cooldown, best.values)
    return TierDecision(size, _stay_text(evals, policy, view, now), None, 0.0)


def _evaluate(index: int, rule: TierRule, view: TierView, metrics: TierMetrics, lo: int,
              hi: int, now: float) -> _Eval:
    values = metric_windows(rule, metrics, view.serving, now)
    wait = 0.0
    if view.last_change is not None:    # the periods count afresh after the last change
        wait = (view.last_change + view.cooldown) - (now - rule.period * rule.period_number)
    return _Eval(index, rule, values, holds(rule, values), wait,
                 adjusted(view.size, rule, lo, hi))


# ------------------------------------------------------------------------------- words

def _stay_text(evals: Sequence[_Eval], policy: TierPolicy, view: TierView,
               now: float) -> str:
    size, stays = view.size, f"{policy.name} stays at {_fe(view.size)}"
    if not evals:
        return f"{policy.name} has no rule; {stays}"
    noted, quiet = [], []
    for e in evals:
        if not e.held:
            quiet.append(_brief_text(e))
        elif e.wait > 0:
            since = now - (view.last_change or 0.0)    # wait > 0: there was a change
            noted.append(f"{_held_text(e)}, but its periods count afresh after the change "
                         f"{_dur(since)} ago: {_dur(e.wait)} more")
        else:
            raw = _raw_target(size, e.rule)
            if raw > size:
                noted.append(f"{_held_text(e)}: would grow but at max {policy.max}")
            elif raw < size:
                noted.append(f"{_held_text(e)}: would shrink but at min {policy.min}")
            else:
                noted.append(f"{_held_text(e)}: {_how(e.rule, size)} keeps {_fe(size)}")
    if not noted:
        return f"no rule holds: {', '.join(quiet)}; {stays}"
    rest = f"; not holding: {', '.join(quiet)}" if quiet else ""
    return f"{'; '.join(noted)}{rest}; {stays}"


def _held_text(e: _Eval) -> str:
    """'rps per front-end 152.0, 160.3, 171.9 > 100 for 3 periods of 5 s'"""
    label, unit, fmt = _LABEL[e.rule.metric]
    values = ", ".join(_value(v, fmt) for v in e.values)
    return f"{label} {values}{unit} {e.rule.op} {e.rule.threshold:g} for " \
        f"{_n(e.rule.period_number, 'period')} of {_dur(e.rule.period)}"


def _brief_text(e: _Eval) -> str:
    """'rps per front-end 12.0 (> 100 for 3x5 s)': the latest value against the rule."""
    label, unit, fmt = _LABEL[e.rule.metric]
    latest = e.values[-1] if e.values else None
    shown = "no data" if latest is None else f"{_value(latest, fmt)}{unit}"
    return f"{label} {shown} ({e.rule.op} {e.rule.threshold:g} for " \
        f"{e.rule.period_number}x{_dur(e.rule.period)})"


def _action_text(e: _Eval, policy: TierPolicy, size: int) -> str:
    """'change +1 -> 3 front-ends (web: 2 now, max 4)'"""
    bound = f"max {policy.max}" if e.target > size else f"min {policy.min}"
    if _raw_target(size, e.rule) != e.target:
        bound = f"capped at {bound}"
    return f"{_how(e.rule, size)} -> {_fe(e.target)} ({policy.name}: {size} now, {bound})"


def _how(rule: TierRule, size: int) -> str:
    if rule.adjustment == "change":
        return f"change {rule.value:+d}"
    if rule.adjustment == "cardinality":
        return f"cardinality {rule.value}"
    raised = rule.value != 0 and _percent_of(size, rule) < rule.min_step
    return f"change {rule.value:+d} % of {size} = {_percent_step(size, rule):+d}" + \
        (f" (min step {rule.min_step})" if raised else "")


def _value(v: float | None, fmt: str) -> str:
    return "no data" if v is None else fmt.format(v)


def _fe(count: int) -> str:
    return _n(count, "front-end")


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _dur(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 10 and s != int(s):
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ------------------------------------------------------------------------------ checks

def _check(rule: TierRule) -> None:
    if rule.metric not in METRICS:
        raise ConfigError(f"unknown metric {rule.metric!r} (one of {', '.join(METRICS)})",
                          key="metric")
    if not rule.period > 0:
        raise ConfigError(f"period must be more than 0 s, not {rule.period}", key="period")
    if rule.period_number < 1:
        raise ConfigError(f"period_number must be at least 1, not {rule.period_number}",
                          key="period_number")
    _op(rule)
    if rule.adjustment not in ADJUSTMENTS:
        raise ConfigError(f"unknown adjustment {rule.adjustment!r} (one of "
                          f"{', '.join(ADJUSTMENTS)})", key="adjustment")


def _op(rule: TierRule) -> Callable[[float, float], bool]:
    try:
        return OPS[rule.op]
    except KeyError:
        raise ConfigError(f"unknown comparison {rule.op!r} (one of {', '.join(OPS)})",
                          key="op") from None


# ------------------------------------------------------------------------------ leaving

def leaving(frontends: Sequence[tuple[str, int]], count: int) -> list[str]:
    """Which front-ends leave when the tier shrinks by ``count``: the highest index (the
    newest) first; never more than exist, none for a count of 0 or less."""
    newest_first = sorted(frontends, key=lambda f: (f[1], f[0]), reverse=True)
    return [name for name, _ in newest_first[:max(0, count)]]
