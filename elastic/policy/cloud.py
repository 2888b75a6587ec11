"""Cloud decisions: what to terminate, what to replace, what the budget allows. Pure: the
caller passes the instances its provider listed, what the state DB knows and the time.

    from elastic.policy.cloud import budget_allows, hourly_cost, orphans, vanished

    known = {"worker7": "i-0abc", "worker8": "i-0def"}        # node -> instance id (state DB)
    listed = ec2.instances()                                    # tagged with our cluster id
    for inst, why in orphans(listed, known, now=now, grace=600):
        ...                                                     # terminate inst.id, log why
    for node, why in vanished(known, listed):
        ...                                                     # mark node FAILED, replace it
    ok, why = budget_allows(hourly_cost(listed, prices), prices["t3.medium"], 2.0,
                            instance_type="t3.medium")

Every decision comes with a reason a user can read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from elastic.errors import ConfigError
from elastic.model import CloudInstance

# States in which an instance costs money by the hour (EC2 bills from 'running'; 'pending'
# is counted because it will be running in a moment and the budget should see it now).
BILLED = frozenset({"pending", "running", "stopping", "shutting-down"})
# States of an instance that is already going away: no need to terminate it again.
GOING = frozenset({"shutting-down", "terminated"})


class Verdict(NamedTuple):
    """A yes/no decision with its reason; unpacks as ``ok, reason``."""

    ok: bool
    reason: str


def orphans(instances: Iterable[CloudInstance], known: Mapping[str, str | None], *,
            now: float, grace: float) -> list[tuple[CloudInstance, str]]:
    """Instances of our cluster that the state DB does not know (by id), launched more than
    ``grace`` seconds ago: they cost money and nobody will ever use them, so terminate them.

    Younger unknown instances are left alone: their launch may be being recorded right now
    (the DB row is written after run_instances returns). Instances already shutting down
    or terminated are skipped. ``known`` maps node name -> instance id (None or "" for a
    node whose launch has no instance id yet).
    """
    node_of = {i: n for n, i in known.items() if i}
    out: list[tuple[CloudInstance, str]] = []
    for inst in sorted(instances, key=lambda i: (i.launched_at, i.id)):
        if inst.id in node_of or inst.state in GOING:
            continue
        age = now - inst.launched_at
        if age <= grace:
            continue
        what = f"instance {inst.id} ({inst.instance_type}, {inst.state})"
        if inst.node and inst.node in known and known[inst.node]:
            why = (f"{what} is tagged as node {inst.node}, but the state DB has "
                   f"{known[inst.node]} for that node (a duplicate launch)")
        elif inst.node:
            why = f"{what} is tagged as node {inst.node}, which the state DB does not know"
        else:
            why = f"{what} carries our cluster id but no node tag"
        out.append((inst, f"{why}; launched {_age(age)} ago (grace {_age(grace)}): terminate"))
    return out


def vanished(known: Mapping[str, str | None],
             instances: Iterable[CloudInstance]) -> list[tuple[str, str]]:
    """Nodes of the state DB whose instance is gone or not live (stopped, stopping, shutting
    down, terminated): mark them FAILED and replace them. A stopped instance still exists
    and still holds its disk: the caller terminates it too. Nodes without an instance id
    yet (None or "") are not judged. In node-name order."""
    by_id = {i.id: i for i in instances}
    out: list[tuple[str, str]] = []
    for node in sorted(known):
        iid = known[node]
        if not iid:
            continue
        inst = by_id.get(iid)
        if inst is None:
            out.append((node, f"node {node}: its instance {iid} is no longer listed by the "
                              "cloud (terminated, or removed by hand): replace it"))
        elif not inst.live:
            extra = (" (a spot interruption or a stop by hand)"
                     if inst.state in ("stopping", "stopped") else "")
            out.append((node, f"node {node}: its instance {iid} is {inst.state}{extra}: "
                              "replace it"))
    return out


def hourly_cost(instances: Iterable[CloudInstance], prices: Mapping[str, float], *,
                key: str = "clouds.ec2.prices") -> float:
    """What the instances that are billed (``BILLED`` states) cost per hour at ``prices``
    ($/h per instance type; spot instances are counted at that price too, an upper bound).
    A type without a price is a ConfigError naming ``key``."""
    total = 0.0
    for inst in instances:
        if inst.state not in BILLED:
            continue
        total += price_of(inst.instance_type, prices, key=key)
    return total


def price_of(instance_type: str, prices: Mapping[str, float], *,
             key: str = "clouds.ec2.prices") -> float:
    """The price of one instance type, or a ConfigError naming ``key``."""
    try:
        return float(prices[instance_type])
    except KeyError:
        raise ConfigError(f"no price for instance type {instance_type} (add "
                          f"'{instance_type}: <dollars per hour>')", key=key) from None


def budget_allows(running_cost_per_hour: float, price_of_next: float,
                  max_hourly_cost: float | None, *, instance_type: str = "instance") -> Verdict:
    """May one more instance costing ``price_of_next`` $/h start while the cloud already
    costs ``running_cost_per_hour``? No budget (None) allows everything."""
    nxt = f"a {instance_type} ({_money(price_of_next)} $/h)"
    if max_hourly_cost is None:
        return Verdict(True, f"no budget set; {nxt} may start")
    used = f"{_money(running_cost_per_hour)} $/h of {_money(max_hourly_cost)} $/h used"
    after = running_cost_per_hour + price_of_next
    if after > max_hourly_cost + 1e-9:
        return Verdict(False, f"budget: {used}; {nxt} would exceed it")
    return Verdict(True, f"budget: {used}; {nxt} fits ({_money(after)} $/h after)")


def affordable(instance_types: Sequence[str], prices: Mapping[str, float],
               running_cost_per_hour: float, max_hourly_cost: float | None, *,
               key: str = "clouds.ec2.prices") -> tuple[list[str], list[str]]:
    """The instance types (in the given order) one more of which fits the budget, and the
    reasons for those left out. Without a budget every type fits and no price is needed."""
    if max_hourly_cost is None:
        return list(instance_types), []
    fit: list[str] = []
    why_not: list[str] = []
    for t in instance_types:
        ok, why = budget_allows(running_cost_per_hour, price_of(t, prices, key=key),
                                max_hourly_cost, instance_type=t)
        (fit if ok else why_not).append(t if ok else why)
    return fit, why_not


def budget_room(instance_types: Sequence[str], prices: Mapping[str, float],
                running_cost_per_hour: float, max_hourly_cost: float | None, limit: int, *,
                key: str = "clouds.ec2.prices") -> tuple[int, str]:
    """How many more instances (at most ``limit``) the budget allows now, and why not more.
    Counted at the dearest type that fits: a launch may fail over to it (a capacity error
    on the cheaper one), and the budget must hold even then."""
    if max_hourly_cost is None:
        return limit, "no budget set"
    used = f"{_money(running_cost_per_hour)} $/h of max_hourly_cost " \
        f"{_money(max_hourly_cost)} $/h used"
    fit, _ = affordable(instance_types, prices, running_cost_per_hour, max_hourly_cost,
                        key=key)
    if not fit:
        return 0, f"budget: {used}; no instance type fits"
    dearest = max(fit, key=lambda t: price_of(t, prices, key=key))
    price = price_of(dearest, prices, key=key)
    n = int((max_hourly_cost - running_cost_per_hour + 1e-9) // price) if price else limit
    if n < limit:
        return n, f"budget: {used}, room for {n} more at {_money(price)} $/h ({dearest})"
    return limit, f"budget: {used}"


def usable_types(instance_types: Sequence[str], failures: Mapping[str, Mapping[str, float]],
                 now: float, *, backoff: float, max_factor: int = 8) -> tuple[list[str], list[str]]:
    """The instance types a launch tries now, in order, and why the others are skipped. A
    type that had no capacity ``n`` times in a row (``failures[type] = {"n": n, "at": t}``)
    waits ``backoff`` x 2^(n-1) (at most x ``max_factor``) after ``t``. When every type
    waits, all are tried: a cloud with no capacity at all is the site's own backoff."""
    ok: list[str] = []
    skipped: list[str] = []
    for t in instance_types:
        f = failures.get(t)
        if f:
            wait = backoff * min(2 ** (int(f["n"]) - 1), max_factor)
            if now < float(f["at"]) + wait:
                skipped.append(f"{t} had no capacity {int(f['n'])} time(s) in a row: skipped "
                               f"for {_age(float(f['at']) + wait - now)} more")
                continue
        ok.append(t)
    return (ok, skipped) if ok else (list(instance_types), [])


def type_failed(failures: Mapping[str, Mapping[str, float]], instance_type: str,
                now: float) -> dict[str, dict[str, float]]:
    """``failures`` with one more capacity failure of ``instance_type`` at ``now``."""
    out = {t: dict(f) for t, f in failures.items()}
    n = int(out.get(instance_type, {}).get("n", 0)) + 1
    out[instance_type] = {"n": n, "at": now}
    return out


def type_worked(failures: Mapping[str, Mapping[str, float]],
                instance_type: str) -> dict[str, dict[str, float]]:
    """``failures`` once ``instance_type`` launched: its record forgotten."""
    return {t: dict(f) for t, f in failures.items() if t != instance_type}


def candidates(instance_types: Sequence[str],
               zones: Sequence[str] = ()) -> list[tuple[str, str | None]]:
    """The (instance type, zone) pairs a launch tries, in order: the first type in every
    zone, then the next type... (the type is the user's preference, the zone is not).
    No zones: one pair per type with zone None (the cloud or the subnet decides)."""
    zs: Sequence[str | None] = list(zones) or [None]
    return [(t, z) for t in instance_types for z in zs]


def _money(x: float) -> str:
    s = f"{x:.4f}".rstrip("0")
    whole, _, frac = s.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"
