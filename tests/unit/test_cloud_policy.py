"""The pure cloud decisions: orphans, vanished nodes, the budget, the launch order."""

from __future__ import annotations

import pytest

from elastic.errors import ConfigError
from elastic.model import CloudInstance
from elastic.policy.cloud import (
    Verdict,
    affordable,
    budget_allows,
    candidates,
    hourly_cost,
    orphans,
    price_of,
    vanished,
)

NOW = 1_000_000.0
PRICES = {"t3.small": 0.0208, "t3.medium": 0.0416}


def inst(id: str, node: str | None = None, *, state: str = "running", age: float = 3600,
         type: str = "t3.small") -> CloudInstance:
    return CloudInstance(id=id, node=node, state=state, instance_type=type,
                         launched_at=NOW - age)


# ----------------------------------------------------------------------------- orphans

def test_known_instances_are_not_orphans():
    assert orphans([inst("i-1", "w1"), inst("i-2", "w2")], {"w1": "i-1", "w2": "i-2"},
                   now=NOW, grace=600) == []


def test_unknown_old_instance_is_an_orphan_with_a_reason():
    [(o, why)] = orphans([inst("i-1", "w1"), inst("i-9", "w9", age=1200)], {"w1": "i-1"},
                         now=NOW, grace=600)
    assert o.id == "i-9"
    assert "w9" in why and "does not know" in why and "20 min" in why
    assert "terminate" in why


def test_unknown_young_instance_is_left_alone():
    # launched 30 s ago: its launch may be being recorded right now
    assert orphans([inst("i-9", "w9", age=30)], {}, now=NOW, grace=600) == []
    assert orphans([inst("i-9", "w9", age=600)], {}, now=NOW, grace=600) == []   # not older
    assert len(orphans([inst("i-9", "w9", age=601)], {}, now=NOW, grace=600)) == 1


def test_duplicate_launch_of_a_known_node_is_an_orphan():
    [(o, why)] = orphans([inst("i-1", "w1", age=5000), inst("i-2", "w1", age=4000)],
                         {"w1": "i-1"}, now=NOW, grace=600)
    assert o.id == "i-2"
    assert "duplicate" in why and "i-1" in why


def test_untagged_and_going_instances():
    out = orphans([inst("i-3"), inst("i-4", "w4", state="shutting-down"),
                   inst("i-5", "w5", state="terminated"), inst("i-6", "w6", state="stopped")],
                  {}, now=NOW, grace=60)
    assert [(o.id, "no node tag" in why) for o, why in out] == [("i-3", True), ("i-6", False)]


def test_a_node_without_an_instance_id_yet_protects_nothing():
    out = orphans([inst("i-7", "w7")], {"w7": None}, now=NOW, grace=60)
    assert [o.id for o, _ in out] == ["i-7"]


# ---------------------------------------------------------------------------- vanished

def test_vanished_nodes_with_reasons():
    listed = [inst("i-1", "w1"), inst("i-2", "w2", state="stopped"),
              inst("i-3", "w3", state="shutting-down"), inst("i-4", "w4", state="pending")]
    known = {"w1": "i-1", "w2": "i-2", "w3": "i-3", "w4": "i-4", "w5": "i-5", "w6": ""}
    out = dict(vanished(known, listed))
    assert sorted(out) == ["w2", "w3", "w5"]
    assert "stopped" in out["w2"] and "spot interruption" in out["w2"]
    assert "shutting-down" in out["w3"]
    assert "no longer listed" in out["w5"] and "i-5" in out["w5"]
    assert all("replace" in why for why in out.values())


def test_nothing_vanished():
    assert vanished({}, []) == []
    assert vanished({"w1": "i-1"}, [inst("i-1", "w1")]) == []


# ------------------------------------------------------------------------------ budget

def test_budget_exceeded_says_by_how_much():
    ok, why = budget_allows(1.98, 0.0416, 2.0, instance_type="t3.medium")
    assert not ok
    assert why == ("budget: 1.98 $/h of 2.00 $/h used; a t3.medium (0.0416 $/h) "
                   "would exceed it")


def test_budget_fits():
    v = budget_allows(1.0, 0.0416, 2.0, instance_type="t3.medium")
    assert isinstance(v, Verdict) and v.ok
    assert "fits" in v.reason and "1.0416 $/h after" in v.reason
    assert budget_allows(1.9584, 0.0416, 2.0).ok       # exactly at the budget: allowed


def test_no_budget_allows_everything():
    ok, why = budget_allows(100.0, 5.0, None, instance_type="p4d.24xlarge")
    assert ok and "no budget" in why


def test_zero_budget_allows_nothing():
    assert not budget_allows(0.0, 0.0208, 0.0).ok


def test_hourly_cost_counts_billed_states_only():
    listed = [inst("i-1"), inst("i-2", type="t3.medium", state="pending"),
              inst("i-3", state="stopped"), inst("i-4", state="terminated")]
    assert hourly_cost(listed, PRICES) == pytest.approx(0.0624)
    assert hourly_cost([], {}) == 0.0


def test_missing_price_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as e:
        hourly_cost([inst("i-1", type="c5.large")], PRICES, key="clouds.aws.prices")
    assert e.value.key == "clouds.aws.prices"
    assert "c5.large" in str(e.value)
    with pytest.raises(ConfigError):
        price_of("m5.large", {})


def test_affordable_keeps_order_and_says_why_not():
    fit, why_not = affordable(["t3.medium", "t3.small"], PRICES, 1.97, 2.0)
    assert fit == ["t3.small"]
    assert len(why_not) == 1 and "t3.medium" in why_not[0]
    assert affordable(["x"], {}, 5.0, None) == (["x"], [])   # no budget: no price needed


# -------------------------------------------------------------------------- candidates

def test_candidates_type_major():
    assert candidates(["a", "b"], ["z1", "z2"]) == [("a", "z1"), ("a", "z2"),
                                                     ("b", "z1"), ("b", "z2")]
    assert candidates(["a", "b"]) == [("a", None), ("b", None)]
    assert candidates([], ["z"]) == []


def test_budget_room_counts_at_the_dearest_type_that_fits():
    from elastic.policy.cloud import budget_room
    prices = {"small": 0.02, "medium": 0.04}
    assert budget_room(["small", "medium"], prices, 0.0, None, 5) == (5, "no budget set")
    n, why = budget_room(["small", "medium"], prices, 0.0, 0.05, 5)
    assert n == 1 and "room for 1 more at 0.04 $/h (medium)" in why   # a failover may cost 0.04
    n, why = budget_room(["small", "medium"], prices, 0.04, 0.05, 5)
    assert n == 0 and "no instance type fits" in why and "0.04 $/h of" in why
    assert budget_room(["small"], prices, 0.0, 1.0, 3)[0] == 3


def test_an_instance_type_without_capacity_backs_off_doubling_then_comes_back():
    from elastic.policy.cloud import type_failed, type_worked, usable_types
    types = ["t3.small", "t3.medium"]
    f = type_failed({}, "t3.small", 1000.0)
    ok, why = usable_types(types, f, 1010.0, backoff=60)
    assert ok == ["t3.medium"] and "t3.small had no capacity 1 time(s)" in why[0]
    assert usable_types(types, f, 1061.0, backoff=60)[0] == types     # 60 s later: tried again
    f = type_failed(f, "t3.small", 1061.0)                            # 2nd in a row: 120 s
    assert usable_types(types, f, 1061.0 + 100, backoff=60)[0] == ["t3.medium"]
    assert usable_types(types, f, 1061.0 + 121, backoff=60)[0] == types
    both = type_failed(f, "t3.medium", 1100.0)                        # every type waits:
    assert usable_types(types, both, 1101.0, backoff=60) == (types, [])   # all are tried
    assert type_worked(f, "t3.small") == {}                          # one launch: forgotten
