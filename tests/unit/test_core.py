"""The pure core: the MAC rule, leases, the lifecycle table, units."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastic.addressing import LeasePool, RangeExhausted, hashed_mac, ip_to_mac, mac_to_ip
from elastic.lifecycle import TRANSITIONS, InvalidTransition, State, check_transition
from elastic.spec import units

VECTORS = Path(__file__).parent.parent / "data" / "mac-vectors.txt"


def _vectors() -> list[tuple[str, str, str]]:
    rows = []
    for line in VECTORS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            prefix, ip, mac = line.split()
            rows.append((prefix, ip, mac))
    return rows


@pytest.mark.parametrize("prefix,ip,mac", _vectors())
def test_mac_rule_matches_golden_vectors(prefix: str, ip: str, mac: str) -> None:
    assert ip_to_mac(ip, prefix) == mac
    assert mac_to_ip(mac) == ip


@given(st.ip_addresses(v=4))
def test_mac_rule_round_trips(ip) -> None:
    assert mac_to_ip(ip_to_mac(str(ip))) == str(ip)


def test_bad_addresses_are_refused() -> None:
    for bad in ("10.0.0", "10.0.0.256", "a.b.c.d", "10.0.0.1.2"):
        with pytest.raises(ValueError):
            ip_to_mac(bad)
    with pytest.raises(ValueError):
        mac_to_ip("02:00:0a")


def test_hashed_mac_is_stable_and_keeps_prefix() -> None:
    assert hashed_mac("p/n/eth0") == hashed_mac("p/n/eth0")
    assert hashed_mac("p/n/eth0") != hashed_mac("p/n/eth1")
    assert hashed_mac("x", "0a:00").startswith("0a:00:")


def test_lease_pool_fixed_first_then_lowest_free() -> None:
    pool = LeasePool("10.0.0.1", "10.0.0.5", exclude=("10.0.0.1",))
    assert pool.reserve("10.0.0.3")
    assert not pool.reserve("10.0.0.3")
    assert [pool.lease() for _ in range(3)] == ["10.0.0.2", "10.0.0.4", "10.0.0.5"]
    with pytest.raises(RangeExhausted):
        pool.lease()


def test_lease_pool_start_offset() -> None:
    pool = LeasePool("10.0.0.1", "10.0.0.254")
    assert pool.lease("10.0.0.100") == "10.0.0.100"
    assert pool.lease("10.0.0.100") == "10.0.0.101"
    assert pool.lease() == "10.0.0.1"


def test_every_state_has_a_row_and_done_is_final() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.DONE] == frozenset()
    for state in State:
        if state is not State.DONE:
            assert TRANSITIONS[state], f"{state} is a dead end"


def test_the_opennebula_path_is_allowed_and_shortcuts_are_not() -> None:
    path = ["PENDING", "PROLOG", "BOOT", "RUNNING", "DRAINING", "SHUTDOWN", "EPILOG", "DONE"]
    for a, b in zip(path, path[1:]):
        check_transition(a, b)
    for a, b in [("PENDING", "RUNNING"), ("RUNNING", "DONE"), ("DONE", "PENDING"),
                 ("BOOT", "EPILOG")]:
        with pytest.raises(InvalidTransition):
            check_transition(a, b)


@pytest.mark.parametrize("text,mib", [("128M", 128), ("2G", 2048), ("1.5G", 1536), (512, 512),
                                      ("512K", 1), ("1T", 1024 * 1024), ("2GiB", 2048),
                                      ("64 MB", 64)])
def test_sizes(text, mib) -> None:
    assert units.parse_size(text) == mib


@pytest.mark.parametrize("bad", ["128Q", "", "M", "-1G", "1,5G", True])
def test_bad_sizes(bad) -> None:
    with pytest.raises(ValueError):
        units.parse_size(bad)


@pytest.mark.parametrize("text,sec", [("5s", 5), ("2m", 120), ("1h", 3600), (30, 30),
                                      ("250ms", 0.25), ("1d", 86400)])
def test_durations(text, sec) -> None:
    assert units.parse_duration(text) == sec


@pytest.mark.parametrize("text,prefix", [("255.255.255.0", 24), ("/16", 16), (8, 8),
                                         ("255.255.255.252", 30)])
def test_netmasks(text, prefix) -> None:
    assert units.parse_netmask(text) == prefix


def test_bad_netmask() -> None:
    with pytest.raises(ValueError):
        units.parse_netmask("255.0.255.0")


def test_lifecycle_path_walks_down_through_epilog() -> None:
    from elastic.lifecycle import path
    assert path("RUNNING", "DONE") == [State.SHUTDOWN, State.EPILOG, State.DONE]
    assert path("PENDING", "DONE") == [State.EPILOG, State.DONE]
    assert path("FAILED", "DONE") == [State.EPILOG, State.DONE]
    assert path("RUNNING", "RUNNING") == []
    with pytest.raises(InvalidTransition):
        path("DONE", "RUNNING")
