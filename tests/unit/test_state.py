"""The state database: schema and migrations, lifecycle writes, the event log, leases, locks,
and two processes sharing one state directory."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastic.errors import ConfigError, PermanentError, TransientError
from elastic.lifecycle import InvalidTransition, State
from elastic.monitoring import DomainSample, HostSample
from elastic.state import (
    DB_NAME,
    SCHEMA_VERSION,
    AlreadyExists,
    LeaseConflict,
    LockHeld,
    NotFound,
    Store,
    default_state_dir,
)
from elastic.state.migrations import MIGRATIONS, migrate, statements

T0 = 1_700_000_000.0
MP = multiprocessing.get_context("spawn")  # children start clean: no inherited connections
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    s.put_project("web", "/specs/web.yaml", "hash1", T0)
    yield s
    s.close()


def raw(store: Store) -> sqlite3.Connection:
    """A second, plain connection to the same file (as another program would open it)."""
    return sqlite3.connect(store.path, isolation_level=None)


def count(store: Store, table: str) -> int:
    with raw(store) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --- opening, schema, migrations ------------------------------------------------------------

def test_open_creates_private_dir_db_in_wal_mode_at_current_version(tmp_path: Path) -> None:
    state_dir = tmp_path / "a" / "state"
    with Store.open(state_dir) as s:
        assert s.path == state_dir / DB_NAME
        assert s.path.is_file()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    conn = sqlite3.connect(state_dir / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"projects", "nodes", "leases", "hosts", "events", "plans", "host_samples"} <= tables
    triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {"events_no_update", "events_no_delete"}


def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.put_project("web", "web.yaml", "h", T0)
        s.add_node("web", "n1", T0)
    for _ in range(3):
        with Store.open(tmp_path) as s, Store.open(tmp_path) as again:
            assert [n.name for n in s.list_nodes("web")] == ["n1"]
            assert again.get_project("web") is not None
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2


def test_migrations_apply_in_order_and_a_failing_one_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    scripts = ["CREATE TABLE a (x);\nINSERT INTO a VALUES (1);",
               "INSERT INTO a VALUES (2);\nCREATE TABLE b (y);\nINSERT INTO nowhere VALUES (1);"]
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(conn, "m.db", scripts)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT x FROM a").fetchall() == [(1,)]   # script 2 left no trace
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='b'").fetchone()[0] == 0
    scripts[1] = "INSERT INTO a VALUES (2);\nCREATE TABLE b (y);"
    assert migrate(conn, "m.db", scripts) == 2
    assert migrate(conn, "m.db", scripts) == 2                    # idempotent
    assert conn.execute("SELECT x FROM a ORDER BY x").fetchall() == [(1,), (2,)]


def test_statements_keep_trigger_bodies_whole() -> None:
    parts = statements(MIGRATIONS[0])
    triggers = [p for p in parts if p.startswith("CREATE TRIGGER")]
    assert len(triggers) == 2 and all(t.endswith("END;") for t in triggers)


def test_newer_schema_is_refused_naming_file_and_versions(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(PermanentError) as e:
        Store.open(tmp_path)
    message = str(e.value)
    assert str(tmp_path / DB_NAME) in message
    assert f"version {SCHEMA_VERSION + 5}" in message and f"version {SCHEMA_VERSION}" in message


def test_a_file_that_is_not_a_database_is_a_permanent_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PermanentError, match="cannot open the state database"):
        Store.open(tmp_path)


def test_importing_creates_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "ELASTIC_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = ("import os, elastic.state, elastic.state.store, elastic.state.migrations\n"
            "print(elastic.state.default_state_dir(os.environ))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == str(tmp_path / "state")
    assert list(tmp_path.iterdir()) == []


def test_default_state_dir() -> None:
    assert default_state_dir({"ELASTIC_STATE_DIR": "/srv/elastic"}) == Path("/srv/elastic")
    assert default_state_dir({"ELASTIC_STATE_DIR": "~/st"}) == Path.home() / "st"
    platformdirs = pytest.importorskip("platformdirs")
    assert default_state_dir({}) == Path(platformdirs.user_data_dir("elastic"))


# --- projects and nodes ---------------------------------------------------------------------

def test_put_project_keeps_created_and_logs_only_changes(store: Store) -> None:
    again = store.put_project("web", "/specs/web.yaml", "hash1", T0 + 5)
    assert (again.created, again.updated) == (T0, T0)          # unchanged: nothing written
    changed = store.put_project("web", "/specs/web.yaml", "hash2", T0 + 9, data={"k": 1})
    assert (changed.created, changed.updated) == (T0, T0 + 9)
    assert store.get_project("web") == changed
    assert [e.kind for e in store.events()] == ["project-created", "project-updated"]
    assert [p.name for p in store.list_projects()] == ["web"]
    assert store.get_project("nope") is None
    with pytest.raises(ConfigError):
        store.put_project("../evil", "x.yaml", "h", T0)


def test_add_node_starts_pending_and_is_logged(store: Store) -> None:
    n = store.add_node("web", "head", T0 + 1, site="private", data={"role": "head"})
    assert n.state is State.PENDING and n.state_since == T0 + 1 and n.full_name == "head.web"
    assert store.get_node("web", "head") == n
    [event] = store.events(node="head")
    assert (event.kind, event.from_state, event.to_state, event.time) == \
        ("node-added", None, State.PENDING, T0 + 1)
    with pytest.raises(AlreadyExists, match="head.web"):
        store.add_node("web", "head", T0 + 2)
    with pytest.raises(NotFound, match="nope"):
        store.add_node("nope", "x", T0)


def test_a_done_node_can_be_added_again(store: Store) -> None:
    store.add_node("web", "w1", T0)
    for to in ("EPILOG", "DONE"):
        store.transition("web", "w1", to, "removed from spec", T0 + 1)
    again = store.add_node("web", "w1", T0 + 10, site="ec2")
    assert (again.state, again.site, again.created) == (State.PENDING, "ec2", T0 + 10)
    assert store.get_node("web", "w1") == again
    assert store.events(node="w1")[-1].from_state is State.DONE


def test_valid_transitions_update_fields_and_log_each_step(store: Store) -> None:
    store.add_node("web", "w1", T0)
    store.transition("web", "w1", State.PROLOG, "placed on kvm1", T0 + 1, host="kvm1")
    store.transition("web", "w1", "BOOT", "defined", T0 + 2, provider_id="uuid-1",
                     data={"disk": "/var/lib/w1.qcow2"})
    n = store.transition("web", "w1", State.RUNNING, "ready", T0 + 3)
    assert n == store.get_node("web", "w1")
    assert (n.state, n.host, n.provider_id, n.state_since, n.created) == \
        (State.RUNNING, "kvm1", "uuid-1", T0 + 3, T0)
    assert n.data == {"disk": "/var/lib/w1.qcow2"}
    steps = [(e.from_state, e.to_state, e.reason, e.time) for e in store.events(node="w1")[1:]]
    assert steps == [(State.PENDING, State.PROLOG, "placed on kvm1", T0 + 1),
                     (State.PROLOG, State.BOOT, "defined", T0 + 2),
                     (State.BOOT, State.RUNNING, "ready", T0 + 3)]
    assert store.events(node="w1")[2].data == {"provider_id": "uuid-1"}  # node data not logged


def test_invalid_transition_raises_and_writes_nothing(store: Store) -> None:
    store.add_node("web", "w1", T0)
    before_events = count(store, "events")
    with pytest.raises(InvalidTransition):
        store.transition("web", "w1", State.RUNNING, "skip ahead", T0 + 5, host="kvm9")
    n = store.get_node("web", "w1")
    assert n is not None and (n.state, n.state_since, n.host) == (State.PENDING, T0, None)
    assert count(store, "events") == before_events
    with pytest.raises(NotFound):
        store.transition("web", "ghost", State.PROLOG, "", T0)
    with pytest.raises(TypeError, match="colour"):
        store.transition("web", "w1", State.PROLOG, "", T0, colour="red")
    assert store.get_node("web", "w1") == n


def test_transition_is_one_transaction(store: Store) -> None:
    store.add_node("web", "w1", T0)
    with raw(store) as conn:   # make the event insert fail after the node update
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON events "
                     "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        store.transition("web", "w1", State.PROLOG, "placed", T0 + 1, host="kvm1")
    n = store.get_node("web", "w1")
    assert n is not None and (n.state, n.host) == (State.PENDING, None)


def test_nested_transactions_roll_back_only_the_failed_part(store: Store) -> None:
    store.add_node("web", "w1", T0)
    store.add_node("web", "w2", T0)
    with store.transaction():
        store.transition("web", "w1", State.PROLOG, "ok", T0 + 1)
        with pytest.raises(InvalidTransition):
            store.transition("web", "w2", State.DONE, "bad", T0 + 1)
    assert store.get_node("web", "w1").state is State.PROLOG  # type: ignore[union-attr]
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.transition("web", "w2", State.PROLOG, "ok", T0 + 2)
            raise RuntimeError("crash before commit")
    assert store.get_node("web", "w2").state is State.PENDING  # type: ignore[union-attr]


def test_list_nodes_by_state_and_across_projects(store: Store) -> None:
    store.put_project("db", "db.yaml", "h", T0)
    for name in ("b", "a", "c"):
        store.add_node("web", name, T0)
    store.add_node("db", "x", T0)
    store.transition("web", "c", State.PROLOG, "", T0)
    assert [n.name for n in store.list_nodes("web")] == ["a", "b", "c"]
    assert [n.name for n in store.list_nodes("web", states=[State.PROLOG])] == ["c"]
    assert [n.name for n in store.list_nodes("web", states=["PENDING"])] == ["a", "b"]
    assert store.list_nodes("web", states=[]) == []
    assert [n.full_name for n in store.list_nodes(None)] == ["x.db", "a.web", "b.web", "c.web"]


# --- the event log --------------------------------------------------------------------------

def test_events_are_append_only(store: Store) -> None:
    store.add_node("web", "w1", T0)
    before = store.events()
    with raw(store) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET reason = 'rewritten'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events")
    assert store.events() == before and len(before) == 2


def test_event_queries(store: Store) -> None:
    store.put_project("db", "db.yaml", "h", T0)
    for i in range(5):
        store.add_node("web", f"w{i}", T0 + i)
    store.add_node("db", "d0", T0 + 2.5)
    decision = store.record_event("web", "decision", T0 + 9, reason="queue wait 600 s",
                                  data={"add": 2})
    assert len(store.events()) == 2 + 6 + 1
    assert [e.node for e in store.events("web", since=T0 + 3)] == ["w3", "w4", None]
    assert [e.node for e in store.events("web", limit=2)] == ["w4", None]
    assert store.events("web", limit=0) == []
    assert [e.node for e in store.events(node="d0")] == ["d0"]
    [last] = store.events(after=decision - 1)
    assert (last.id, last.kind, last.reason, last.data) == \
        (decision, "decision", "queue wait 600 s", {"add": 2})
    ids = [e.id for e in store.events()]
    assert ids == sorted(ids)


# --- leases ---------------------------------------------------------------------------------

def test_leases_and_conflicts(store: Store) -> None:
    store.add_node("web", "a", T0)
    store.add_node("web", "b", T0)
    first = store.lease("web", "lan", "10.0.0.5", "a", "eth0", "02:00:0A:00:00:05", T0)
    assert first.mac == "02:00:0a:00:00:05"
    assert store.lease("web", "lan", "10.0.0.5", "a", "eth0", "02:00:0a:00:00:05", T0 + 1) == first
    with pytest.raises(LeaseConflict, match=r"10\.0\.0\.5.*'lan'.*node a \(eth0"):
        store.lease("web", "lan", "10.0.0.5", "b", "eth0", "02:00:0a:00:00:99", T0)
    with pytest.raises(LeaseConflict, match="MAC 02:00:0a:00:00:05.*node a"):
        store.lease("web", "lan", "10.0.0.6", "b", "eth0", "02:00:0a:00:00:05", T0)
    with pytest.raises(NotFound):
        store.lease("web", "lan", "10.0.0.7", "ghost", "eth0", "02:00:0a:00:00:07", T0)
    store.lease("web", "lan", "10.0.0.10", "b", "eth0", "02:00:0a:00:00:0a", T0)
    store.lease("web", "dmz", "10.0.0.5", "b", "eth1", "02:01:0a:00:00:05", T0)  # other network
    store.put_project("db", "db.yaml", "h", T0)
    store.add_node("db", "a", T0)
    store.lease("db", "lan", "10.0.0.5", "a", "eth0", "02:00:0a:00:00:05", T0)  # other project
    assert [(x.network, x.address) for x in store.leases("web")] == \
        [("dmz", "10.0.0.5"), ("lan", "10.0.0.5"), ("lan", "10.0.0.10")]
    assert [x.node for x in store.leases("web", network="lan")] == ["a", "b"]
    assert store.release("web", "b") == 2
    assert [x.node for x in store.leases("web")] == ["a"]
    store.lease("web", "lan", "10.0.0.6", "b", "eth0", "02:00:0a:00:00:06", T0)
    assert store.release_project("web") == 2
    assert store.leases("web") == [] and len(store.leases("db")) == 1


def test_delete_project_keeps_the_event_log(store: Store) -> None:
    store.add_node("web", "a", T0)
    store.lease("web", "lan", "10.0.0.5", "a", "eth0", "02:00:0a:00:00:05", T0)
    store.save_plan("web", {"actions": []}, T0)
    events_before = len(store.events("web"))
    assert store.delete_project("web", T0 + 1, reason="elastic down") is True
    assert store.get_project("web") is None
    assert store.list_nodes("web") == [] and store.leases("web") == []
    events = store.events("web")
    assert len(events) == events_before + 1
    assert (events[-1].kind, events[-1].data) == ("project-deleted", {"nodes": 1, "leases": 1})
    assert store.delete_project("web", T0 + 2) is False
    assert len(store.plans("web")) == 1


# --- hosts and plans ------------------------------------------------------------------------

def test_hosts(store: Store) -> None:
    store.put_host("kvm2", "qemu+ssh://kvm2/system", T0, memory=65536, vcpus=32,
                   groups=["compute"])
    h = store.put_host("kvm1", "qemu:///system", T0, memory=32768, vcpus=16,
                       groups=("compute", "service"), data={"rack": 3})
    assert [x.name for x in store.hosts()] == ["kvm1", "kvm2"]
    assert store.hosts()[0] == h and h.groups == ("compute", "service")
    store.put_host("kvm1", "qemu:///system", T0 + 1, memory=16384, vcpus=8)
    assert (store.hosts()[0].memory, store.hosts()[0].updated) == (16384, T0 + 1)
    assert store.remove_host("kvm1") and not store.remove_host("kvm1")
    assert [x.name for x in store.hosts()] == ["kvm2"]


def test_plans(store: Store) -> None:
    ids = [store.save_plan("web", {"n": i}, T0 + i) for i in range(3)]
    assert [p.plan for p in store.plans("web")] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [p.id for p in store.plans("web", limit=1)] == ids[-1:]


# --- host samples ---------------------------------------------------------------------------

def host_sample(t: float, host: str = "h1", busy: int = 0, *domains: DomainSample,
                source: str = "libvirt") -> HostSample:
    return HostSample(host, T0 + t, busy, 2, 3072, 1024, domains, source)


def test_samples_round_trip_in_time_order(store: Store) -> None:
    vm = DomainSample("web1.shop", "shop", "web1", 5 * 10**18, 2, 512, 1, 2, 3, 4)
    other = DomainSample("test", None, None, 7, 1, 128)
    later = host_sample(10, "h1", 2_000, vm, other, source="cgroup elastic-lab/h1")
    store.add_sample(later)
    store.add_sample(host_sample(0, "h1", 1_000))
    store.add_sample(host_sample(5, "h2", 9))
    assert store.samples("h1", T0 - 1) == [host_sample(0, "h1", 1_000), later]
    assert store.samples("h1", T0 + 10) == [later]
    assert store.samples("h1", T0 + 11) == []
    assert store.samples("h3", 0) == []
    assert [s.host for s in store.samples("h2", 0)] == ["h2"]


def test_old_samples_are_pruned(store: Store) -> None:
    for t in (0, 1000, 3000, 4000):
        store.add_sample(host_sample(t), keep=3600)
    store.add_sample(host_sample(0, "h2"))
    # 4000 - 3600 = 400: the sample at 0 went, the others stay (and h2's is h2's)
    assert [s.t - T0 for s in store.samples("h1", 0)] == [1000, 3000, 4000]
    assert len(store.samples("h2", 0)) == 1
    assert store.prune_samples(T0 + 3500, host="h1") == 2
    assert store.prune_samples(T0 + 10**6) == 2
    assert count(store, "host_samples") == 0


def test_a_version_1_database_gains_the_samples_table(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, MIGRATIONS[:1])
    conn.execute("INSERT INTO projects VALUES ('old', 'a.yaml', 'h', 1, 1, '{}')")
    conn.close()
    with Store.open(tmp_path) as s:
        assert s.get_project("old") is not None
        s.add_sample(host_sample(0))
        assert len(s.samples("h1", 0)) == 1


def test_a_damaged_sample_is_a_clear_error(store: Store) -> None:
    store.add_sample(host_sample(0))
    with raw(store) as conn:
        conn.execute("UPDATE host_samples SET ncpus = 0")
    with pytest.raises(PermanentError, match="host sample 1 of h1 .* damaged: .*ncpus"):
        store.samples("h1", 0)


# --- the per-project lock -------------------------------------------------------------------

def hold_lock(state_dir: str, project: str, ready: Any, release: Any) -> None:
    with Store.open(state_dir) as s, s.lock(project):
        ready.set()
        release.wait(60)


def test_lock_records_the_holder_and_is_reusable(store: Store) -> None:
    with store.lock("web") as path:
        assert path == store.state_dir / "locks" / "web.lock"
        pid, _, command = path.read_text().partition(" ")
        assert int(pid) == os.getpid() and command.strip()
    assert path.read_text() == ""
    with store.lock("web"):
        pass
    with pytest.raises(ConfigError):
        with store.lock("../web"):
            pass


def test_lock_held_by_another_process(store: Store) -> None:
    ready, release = MP.Event(), MP.Event()
    holder = MP.Process(target=hold_lock, args=(str(store.state_dir), "web", ready, release))
    holder.start()
    try:
        assert ready.wait(30), "the holder never took the lock"
        with pytest.raises(LockHeld) as e:
            with store.lock("web"):
                pytest.fail("got a lock another process holds")
        assert isinstance(e.value, TransientError)
        assert e.value.pid == holder.pid and e.value.project == "web"
        assert f"pid {holder.pid}" in str(e.value) and "'web'" in str(e.value)
        with store.lock("other-project"):   # locks are per project
            pass
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    with store.lock("web"):
        pass


def test_lock_of_a_killed_holder_is_free(store: Store) -> None:
    ready, release = MP.Event(), MP.Event()
    holder = MP.Process(target=hold_lock, args=(str(store.state_dir), "web", ready, release))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(LockHeld):
        with store.lock("web"):
            pass
    holder.kill()
    holder.join(30)
    with store.lock("web"):
        pass


# --- two processes, one state directory -----------------------------------------------------

N = 200


def writer(state_dir: str, tag: str, start: Any) -> None:
    start.wait(30)
    with Store.open(state_dir) as s:  # both open (and migrate) a fresh directory at once
        s.put_project("race", "race.yaml", "h", T0)
        for i in range(N):
            s.add_node("race", f"{tag}{i}", T0 + i)
            s.transition("race", f"{tag}{i}", State.PROLOG, "placed", T0 + i + 0.5)


def test_two_processes_write_concurrently_without_loss(tmp_path: Path) -> None:
    state_dir = tmp_path / "shared"
    start = MP.Barrier(2)
    procs = [MP.Process(target=writer, args=(str(state_dir), tag, start)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store.open(state_dir) as s:
        nodes = s.list_nodes("race")
        assert len(nodes) == 2 * N and {n.state for n in nodes} == {State.PROLOG}
        events = s.events()
        assert Counter(e.kind for e in events) == \
            {"project-created": 1, "node-added": 2 * N, "transition": 2 * N}
        assert [e.id for e in events] == list(range(1, 4 * N + 2))
        for tag in "ab":   # each node's own history is in order
            assert [e.kind for e in s.events(node=f"{tag}7")] == ["node-added", "transition"]
    conn = sqlite3.connect(state_dir / DB_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_readonly_open_reads_and_cannot_write(tmp_path):
    from elastic.state import Store
    assert not Store.exists(tmp_path / "s")
    with Store.open(tmp_path / "s") as store:
        store.put_project("p", "p.yaml", "0" * 64, 1.0)
    assert Store.exists(tmp_path / "s")
    with Store.open(tmp_path / "s", readonly=True) as ro:
        assert [p.name for p in ro.list_projects()] == ["p"]
        with pytest.raises(Exception):
            ro.put_project("q", "q.yaml", "0" * 64, 2.0)
    with Store.open(tmp_path / "s", readonly=True) as ro:
        assert [p.name for p in ro.list_projects()] == ["p"]


def test_queue_samples_and_jobs_make_a_history(tmp_path):
    """What the controller saw each tick: the queue and the workers by site (pruned after
    a while), and each job's submission, start (first look that saw it running), host and
    end (first look it was gone)."""
    from elastic.model import Job
    with Store.open(tmp_path) as store:
        for i, t in enumerate((100.0, 105.0, 110.0)):
            store.add_queue_sample("p", t, pending_jobs=3 - i, pending_slots=6 - 2 * i,
                                   running_jobs=i, workers={"private": i, "ec2": 0},
                                   keep=7.0)
        kept = store.queue_samples("p", 0)
        assert [(s.t, s.pending_jobs, s.workers["private"]) for s in kept] == \
            [(105.0, 2, 1), (110.0, 1, 2)]                        # 100 is > 7 s older
        assert store.queue_samples("other", 0) == []
        a = Job("1", "sleep", "alice", "qw", submitted=90.0)
        b = Job("2", "sleep", "bob", "qw", slots=2, submitted=95.0)
        store.observe_jobs("p", 100.0, [a, b], [])
        store.observe_jobs("p", 105.0, [b], [(Job("1", "sleep", "alice", "r", submitted=90.0,
                                                  host="all.q@worker1.p"), "private")])
        store.observe_jobs("p", 110.0, [], [(Job("1", "sleep", "alice", "r", submitted=90.0,
                                                 host="all.q@worker1.p"), "private"),
                                            (Job("2", "sleep", "bob", "r", slots=2,
                                                 submitted=95.0, host="all.q@i-1"), "ec2")])
        store.observe_jobs("p", 120.0, [], [])
        jobs = {j.id: j for j in store.jobs("p")}
        assert (jobs["1"].started, jobs["1"].ended, jobs["1"].host, jobs["1"].site) == \
            (105.0, 120.0, "worker1", "private")
        assert (jobs["2"].started, jobs["2"].ended, jobs["2"].site, jobs["2"].slots) == \
            (110.0, 120.0, "ec2", 2)
        assert store.jobs("p", since=121.0) == []
        # a job rescheduled while it ran (pending again) keeps its first start, and is open
        c = Job("3", "sleep", "carol", "r", submitted=125.0, host="all.q@i-2")
        store.observe_jobs("p", 126.0, [], [(c, "ec2")])
        store.observe_jobs("p", 130.0, [Job("3", "sleep", "carol", "Rq", submitted=125.0)], [])
        (back,) = store.jobs("p", since=121.0)
        assert (back.id, back.started, back.ended) == ("3", 126.0, None)
