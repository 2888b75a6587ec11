"""Schema migrations: SQL scripts applied in order, tracked with ``PRAGMA user_version``.

Version N means the first N scripts have been applied. Never edit a script that has shipped:
append a new one. Each script runs in its own ``BEGIN IMMEDIATE`` transaction together with
the version bump, so a failed migration leaves the database at the previous version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from elastic.errors import PermanentError

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE projects (
        name        TEXT PRIMARY KEY,
        source      TEXT NOT NULL,              -- path of the spec file
        spec_hash   TEXT NOT NULL,
        created     REAL NOT NULL,
        updated     REAL NOT NULL,
        data        TEXT NOT NULL DEFAULT '{}'  -- json
    );

    CREATE TABLE nodes (
        project     TEXT NOT NULL REFERENCES projects(name),
        name        TEXT NOT NULL,
        state       TEXT NOT NULL,              -- elastic.lifecycle.State
        host        TEXT,
        site        TEXT NOT NULL DEFAULT 'private',  -- 'private' or a cloud name
        provider_id TEXT,                       -- libvirt domain uuid / EC2 instance id
        data        TEXT NOT NULL DEFAULT '{}', -- json
        state_since REAL NOT NULL,
        created     REAL NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE INDEX nodes_state ON nodes(project, state);
    CREATE INDEX nodes_provider_id ON nodes(provider_id);

    CREATE TABLE leases (
        project     TEXT NOT NULL,
        network     TEXT NOT NULL,
        address     TEXT NOT NULL,
        node        TEXT NOT NULL,
        iface       TEXT NOT NULL,
        mac         TEXT NOT NULL,
        created     REAL NOT NULL,
        PRIMARY KEY (project, network, address),
        UNIQUE (project, mac),
        FOREIGN KEY (project, node) REFERENCES nodes(project, name)
    );
    CREATE INDEX leases_node ON leases(project, node);

    CREATE TABLE hosts (
        name        TEXT PRIMARY KEY,
        uri         TEXT NOT NULL,
        domain_type TEXT NOT NULL,
        memory      INTEGER NOT NULL,           -- MiB
        vcpus       INTEGER NOT NULL,
        groups      TEXT NOT NULL DEFAULT '[]', -- json list
        data        TEXT NOT NULL DEFAULT '{}', -- json
        updated     REAL NOT NULL
    );

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        time        REAL NOT NULL,
        project     TEXT,
        node        TEXT,
        kind        TEXT NOT NULL,
        from_state  TEXT,
        to_state    TEXT,
        reason      TEXT NOT NULL DEFAULT '',
        data        TEXT NOT NULL DEFAULT '{}'  -- json
    );
    CREATE INDEX events_project ON events(project, node, id);
    CREATE INDEX events_time ON events(time);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
    END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN
        SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
    END;

    CREATE TABLE plans (
        id          INTEGER PRIMARY KEY,
        project     TEXT NOT NULL,
        time        REAL NOT NULL,
        plan        TEXT NOT NULL               -- json
    );
    CREATE INDEX plans_project ON plans(project, id);
    """,
    # 2: samples of the hosts' counters (elastic.monitoring.HostSample): their load, for
    # `status --hosts` and the rebalancer. Kept for a while (Store.add_sample prunes).
    """
    CREATE TABLE host_samples (
        id           INTEGER PRIMARY KEY,
        host         TEXT NOT NULL,
        t            REAL NOT NULL,              -- epoch seconds
        cpu_busy_ns  INTEGER NOT NULL,           -- busy CPU time of all CPUs since some start
        cpu_source   TEXT NOT NULL,              -- 'libvirt' or 'cgroup <path>'
        ncpus        INTEGER NOT NULL,
        memory_total INTEGER NOT NULL,           -- MiB
        memory_free  INTEGER NOT NULL,           -- MiB
        domains      TEXT NOT NULL DEFAULT '[]'  -- json: [{name, cpu_time_ns, ...}, ...]
    );
    CREATE INDEX host_samples_host_t ON host_samples(host, t);
    """,
    # 3: what the controller saw each tick: the queue and the workers by site (the timeline
    # of `elastic report` and the status page), and every job it saw (their waits).
    """
    CREATE TABLE queue_samples (
        id            INTEGER PRIMARY KEY,
        project       TEXT NOT NULL,
        t             REAL NOT NULL,             -- epoch seconds
        pending_jobs  INTEGER NOT NULL,
        pending_slots INTEGER NOT NULL,
        running_jobs  INTEGER NOT NULL,
        workers       TEXT NOT NULL DEFAULT '{}' -- json: site -> workers that exist there
    );
    CREATE INDEX queue_samples_project_t ON queue_samples(project, t);

    CREATE TABLE jobs (
        project    TEXT NOT NULL,
        id         TEXT NOT NULL,                -- the scheduler's job id
        name       TEXT NOT NULL DEFAULT '',
        owner      TEXT NOT NULL DEFAULT '',
        slots      INTEGER NOT NULL DEFAULT 1,
        submitted  REAL,                         -- as the scheduler says
        started    REAL,                         -- the first tick that saw it running
        ended      REAL,                         -- the first tick it was gone after that
        host       TEXT,
        site       TEXT,
        PRIMARY KEY (project, id)
    );
    CREATE INDEX jobs_project_submitted ON jobs(project, submitted);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """Split a script into complete statements (trigger bodies stay whole)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {current.strip()!r}")
    return out


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: Path | str,
            migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the database up to ``len(migrations)``; return the version it is at.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Safe to call from two
    processes at once: the version is read again inside each write transaction.
    """
    known = len(migrations)
    while True:
        version = user_version(conn)
        if version > known:
            raise _too_new(path, version, known)
        if version == known:
            return version
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(conn)  # another process may have migrated meanwhile
            if version > known:
                raise _too_new(path, version, known)
            if version < known:
                for statement in statements(migrations[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _too_new(path: Path | str, version: int, known: int) -> PermanentError:
    return PermanentError(
        f"{path}: the state database is at schema version {version}, but this elastic "
        f"only knows up to version {known}; use a newer elastic (or another state directory)")
