"""The state database: one SQLite file (WAL) under a state directory, plus per-project locks.

A thin class over ``sqlite3``. Rows come back as frozen records. Every write runs in one
``BEGIN IMMEDIATE`` transaction (nested ones become savepoints); time is always passed in as
``now`` (epoch seconds). Two elastic processes may share a state directory: SQLite serialises
the writes (``busy_timeout``) and ``Store.lock`` keeps long operations on a project apart.
"""

from __future__ import annotations

import dataclasses
import fcntl
import ipaddress
import json
import os
import re
import shlex
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elastic.errors import ConfigError, PermanentError, TransientError
from elastic.lifecycle import State, check_transition
from elastic.monitoring import DomainSample, HostSample
from elastic.state.migrations import SCHEMA_VERSION, migrate

if TYPE_CHECKING:
    from elastic.model import Job

DB_NAME = "elastic.db"
LOCK_DIR = "locks"
OPEN_LOCK = "elastic.db.lock"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another one before giving up
QUEUE_RETENTION = 7 * 86400.0  # seconds of queue samples and ended jobs kept
SAMPLE_RETENTION = 3600.0  # seconds of host samples kept (per host, before its newest one)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NODE_FIELDS = frozenset({"host", "site", "provider_id", "data"})
_LOGGED_FIELDS = ("host", "site", "provider_id")  # node data is not copied into the log


# --- errors -------------------------------------------------------------------------------

class NotFound(PermanentError):
    """A project or node that the operation needs does not exist."""


class AlreadyExists(PermanentError):
    """The thing to create exists already."""


class LeaseConflict(AlreadyExists):
    """The address (or MAC) is leased to someone else."""


class LockHeld(TransientError):
    """Another process holds the project's lock."""

    def __init__(self, project: str, pid: int | None, command: str, path: Path) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        if command:
            holder += f": {command}"
        super().__init__(f"project {project!r} is locked by another elastic process ({holder}); "
                         f"try again when it has finished (lock file {path})")
        self.project, self.pid, self.command, self.path = project, pid, command, path


# --- records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProjectRecord:
    name: str
    source: str          # path of the spec file
    spec_hash: str
    created: float
    updated: float
    data: dict[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> ProjectRecord:
        return cls(r["name"], r["source"], r["spec_hash"], r["created"], r["updated"],
                   _loads(r["data"]))


@dataclass(frozen=True)
class NodeRecord:
    project: str
    name: str
    state: State
    host: str | None
    site: str            # 'private' or a cloud name
    provider_id: str | None
    data: dict[str, Any] = field(hash=False)
    state_since: float
    created: float

    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.project}"

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> NodeRecord:
        return cls(r["project"], r["name"], State(r["state"]), r["host"], r["site"],
                   r["provider_id"], _loads(r["data"]), r["state_since"], r["created"])


@dataclass(frozen=True)
class LeaseRecord:
    project: str
    network: str
    address: str
    node: str
    iface: str
    mac: str
    created: float

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> LeaseRecord:
        return cls(r["project"], r["network"], r["address"], r["node"], r["iface"], r["mac"],
                   r["created"])


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: float
    project: str | None
    node: str | None
    kind: str
    from_state: State | None
    to_state: State | None
    reason: str
    data: dict[str, Any] = field(hash=False)

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> EventRecord:
        return cls(r["id"], r["time"], r["project"], r["node"], r["kind"],
                   _state_or_none(r["from_state"]), _state_or_none(r["to_state"]), r["reason"],
                   _loads(r["data"]))


@dataclass(frozen=True)
class HostRecord:
    name: str
    uri: str             # libvirt URI
    domain_type: str     # kvm, qemu, xen, ...
    memory: int          # MiB
    vcpus: int
    groups: tuple[str, ...]
    data: dict[str, Any] = field(hash=False)
    updated: float

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> HostRecord:
        return cls(r["name"], r["uri"], r["domain_type"], r["memory"], r["vcpus"],
                   tuple(_loads(r["groups"])), _loads(r["data"]), r["updated"])


@dataclass(frozen=True)
class QueueSampleRecord:
    project: str
    t: float
    pending_jobs: int
    pending_slots: int
    running_jobs: int
    workers: dict[str, int] = field(hash=False)    # site -> workers that exist there

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> QueueSampleRecord:
        return cls(r["project"], r["t"], r["pending_jobs"], r["pending_slots"],
                   r["running_jobs"], _loads(r["workers"]))


@dataclass(frozen=True)
class JobRecord:
    project: str
    id: str
    name: str
    owner: str
    slots: int
    submitted: float | None
    started: float | None      # None: never seen running
    ended: float | None        # None: still there at the last look
    host: str | None
    site: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> JobRecord:
        return cls(r["project"], r["id"], r["name"], r["owner"], r["slots"], r["submitted"],
                   r["started"], r["ended"], r["host"], r["site"])


@dataclass(frozen=True)
class PlanRecord:
    id: int
    project: str
    time: float
    plan: dict[str, Any] = field(hash=False)

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> PlanRecord:
        return cls(r["id"], r["project"], r["time"], _loads(r["plan"]))


# --- the store ----------------------------------------------------------------------------

def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$ELASTIC_STATE_DIR`` if set, else the user's data directory for elastic."""
    configured = env.get("ELASTIC_STATE_DIR", "")
    if configured:
        return Path(configured).expanduser()
    import platformdirs  # only needed when nothing is configured

    return Path(platformdirs.user_data_dir("elastic"))


class Store:
    """The state database of one state directory. Make one with ``Store.open``."""

    def __init__(self, conn: sqlite3.Connection, state_dir: Path) -> None:
        self._conn = conn
        self.state_dir = state_dir

    @staticmethod
    def exists(state_dir: Path | str) -> bool:
        """Whether a state database is there (without creating anything)."""
        return (Path(state_dir).expanduser() / DB_NAME).is_file()

    @classmethod
    def open(cls, state_dir: Path | str, *, readonly: bool = False) -> Store:
        """Open (creating the directory, the file and the schema if needed) and migrate.

        ``readonly``: open an existing database for reading only; creates and migrates
        nothing (for commands that promise to change nothing)."""
        state_dir = Path(state_dir).expanduser()
        if readonly:
            return cls(cls._connect_readonly(state_dir / DB_NAME), state_dir)
        _make_private_dir(state_dir)
        path = state_dir / DB_NAME
        # Two processes switching a new file to WAL at once get SQLITE_BUSY without waiting,
        # so opening (WAL, migrations) is serialised with a short flock next to the file.
        guard = os.open(state_dir / OPEN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            return cls(cls._connect(path), state_dir)
        finally:
            os.close(guard)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise PermanentError(f"{path}: SQLite cannot use WAL mode here (got {mode!r}); "
                                     "put the state directory on a local file system")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, path)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise _translate(e, f"{path}: cannot open the state database") from e
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _connect_readonly(path: Path) -> sqlite3.Connection:
        if not path.is_file():
            raise NotFound(f"{path}: no state database here")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT,
                               isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise PermanentError(
                    f"{path}: the state database has schema version {version} and this elastic "
                    f"reads version {SCHEMA_VERSION}; run a command that changes state (or a "
                    "matching elastic) first")
        except sqlite3.DatabaseError as e:
            conn.close()
            raise _translate(e, f"{path}: cannot read the state database") from e
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def path(self) -> Path:
        return self.state_dir / DB_NAME

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints."""
        conn = self._conn
        if conn.in_transaction:
            conn.execute("SAVEPOINT elastic")
            try:
                yield
                conn.execute("RELEASE elastic")
            except BaseException:
                conn.execute("ROLLBACK TO elastic")
                conn.execute("RELEASE elastic")
                raise
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise _translate(e, f"{self.path}: cannot start a write") from e
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):
                raise _translate(e, f"{self.path}: write failed") from e
            raise

    # --- projects ---------------------------------------------------------------------------

    def put_project(self, name: str, source: str, spec_hash: str, now: float,
                    data: Mapping[str, Any] | None = None) -> ProjectRecord:
        """Create or update a project (``created`` is kept); logs an event when it changed."""
        _check_name(name, "project")
        data = dict(data or {})
        with self.transaction():
            old = self.get_project(name)
            if old is None:
                self._conn.execute(
                    "INSERT INTO projects (name, source, spec_hash, created, updated, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (name, source, spec_hash, now, now, _dumps(data)))
                self._log(now, name, None, "project-created", reason=source,
                          data={"spec_hash": spec_hash})
            elif (old.source, old.spec_hash, old.data) != (source, spec_hash, data):
                self._conn.execute(
                    "UPDATE projects SET source = ?, spec_hash = ?, updated = ?, data = ? "
                    "WHERE name = ?", (source, spec_hash, now, _dumps(data), name))
                self._log(now, name, None, "project-updated", reason=source,
                          data={"spec_hash": spec_hash, "old_spec_hash": old.spec_hash})
            else:
                return old
        return ProjectRecord(name, source, spec_hash, old.created if old else now, now, data)

    def get_project(self, name: str) -> ProjectRecord | None:
        row = self._conn.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
        return ProjectRecord.from_row(row) if row else None

    def list_projects(self) -> list[ProjectRecord]:
        rows = self._conn.execute("SELECT * FROM projects ORDER BY name")
        return [ProjectRecord.from_row(r) for r in rows]

    def delete_project(self, project: str, now: float, reason: str = "") -> bool:
        """Remove a project with its nodes and leases; events (and plans) stay.

        Returns False if there was no such project. Making sure nothing of it is still running
        is the caller's job.
        """
        with self.transaction():
            if self.get_project(project) is None:
                return False
            leases = self._conn.execute("DELETE FROM leases WHERE project = ?", (project,))
            nodes = self._conn.execute("DELETE FROM nodes WHERE project = ?", (project,))
            self._conn.execute("DELETE FROM projects WHERE name = ?", (project,))
            self._log(now, project, None, "project-deleted", reason=reason,
                      data={"nodes": nodes.rowcount, "leases": leases.rowcount})
        return True

    # --- nodes ------------------------------------------------------------------------------

    def add_node(self, project: str, name: str, now: float, *, site: str = "private",
                 host: str | None = None, provider_id: str | None = None,
                 data: Mapping[str, Any] | None = None, reason: str = "") -> NodeRecord:
        """Create a node in PENDING and log it. A DONE node of that name is replaced."""
        data = dict(data or {})
        with self.transaction():
            self._require_project(project)
            old = self.get_node(project, name)
            if old is not None and old.state is not State.DONE:
                raise AlreadyExists(f"node {old.full_name} already exists (state {old.state})")
            self._conn.execute(
                "INSERT INTO nodes (project, name, state, host, site, provider_id, data, "
                "state_since, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project, name) DO UPDATE SET state = excluded.state, "
                "host = excluded.host, site = excluded.site, provider_id = excluded.provider_id, "
                "data = excluded.data, state_since = excluded.state_since, "
                "created = excluded.created",
                (project, name, State.PENDING, host, site, provider_id, _dumps(data), now, now))
            self._log(now, project, name, "node-added", old.state if old else None, State.PENDING,
                      reason, {"site": site, "host": host, "provider_id": provider_id})
        return NodeRecord(project, name, State.PENDING, host, site, provider_id, data, now, now)

    def transition(self, project: str, node: str, to_state: State | str, reason: str,
                   now: float, **fields: Any) -> NodeRecord:
        """Move a node to ``to_state`` and log it, in one transaction.

        ``fields`` may set ``host``, ``site``, ``provider_id`` and ``data`` (replaced whole).
        Raises ``lifecycle.InvalidTransition`` (writing nothing) if the move is not allowed.
        """
        unknown = sorted(set(fields) - _NODE_FIELDS)
        if unknown:
            raise TypeError(f"transition() got unknown node fields: {', '.join(unknown)}")
        dst = State(to_state)
        if "data" in fields:
            fields["data"] = dict(fields["data"] or {})
        with self.transaction():
            old = self.get_node(project, node)
            if old is None:
                raise NotFound(f"no node {node}.{project}")
            check_transition(old.state, dst)
            values = {k: _dumps(v) if k == "data" else v for k, v in fields.items()}
            sets = "".join(f", {k} = ?" for k in values)
            self._conn.execute(
                f"UPDATE nodes SET state = ?, state_since = ?{sets} WHERE project = ? AND name = ?",
                (dst, now, *values.values(), project, node))
            self._log(now, project, node, "transition", old.state, dst, reason,
                      {k: fields[k] for k in _LOGGED_FIELDS if k in fields})
        return dataclasses.replace(old, state=dst, state_since=now, **fields)

    def update_node_data(self, project: str, name: str, data: Mapping[str, Any]) -> None:
        """Replace a node's ``data`` (observations such as idle_since); not a state change,
        so no event is logged."""
        with self.transaction():
            cur = self._conn.execute("UPDATE nodes SET data = ? WHERE project = ? AND name = ?",
                                     (_dumps(dict(data)), project, name))
            if cur.rowcount == 0:
                raise NotFound(f"no node {name} in project {project}")

    def update_project_data(self, name: str, data: Mapping[str, Any], now: float) -> None:
        """Replace a project's ``data`` (e.g. the autoscaler's memory); no event logged."""
        with self.transaction():
            cur = self._conn.execute("UPDATE projects SET data = ?, updated = ? WHERE name = ?",
                                     (_dumps(dict(data)), now, name))
            if cur.rowcount == 0:
                raise NotFound(f"no project {name}")

    def get_node(self, project: str, name: str) -> NodeRecord | None:
        row = self._conn.execute("SELECT * FROM nodes WHERE project = ? AND name = ?",
                                 (project, name)).fetchone()
        return NodeRecord.from_row(row) if row else None

    def list_nodes(self, project: str | None,
                   states: Iterable[State | str] | None = None) -> list[NodeRecord]:
        """Nodes of a project (of every project if None), optionally only in ``states``."""
        where, args = _where(project=project)
        if states is not None:
            wanted = [State(s).value for s in states]
            if not wanted:
                return []
            where += (" AND " if where else " WHERE ") + \
                f"state IN ({', '.join('?' * len(wanted))})"
            args += wanted
        rows = self._conn.execute(f"SELECT * FROM nodes{where} ORDER BY project, name", args)
        return [NodeRecord.from_row(r) for r in rows]

    # --- leases -----------------------------------------------------------------------------

    def lease(self, project: str, network: str, address: str, node: str, iface: str, mac: str,
              now: float) -> LeaseRecord:
        """Lease ``address`` on ``network`` to a node's interface. The same lease again is a
        no-op; an address or MAC held by anyone else raises ``LeaseConflict``."""
        mac = mac.lower()
        with self.transaction():
            if self.get_node(project, node) is None:
                raise NotFound(f"no node {node}.{project} to lease {address} to")
            held = [LeaseRecord.from_row(r) for r in self._conn.execute(
                "SELECT * FROM leases WHERE project = ? AND ((network = ? AND address = ?) "
                "OR mac = ?)", (project, network, address, mac))]
            for h in held:
                if (h.network, h.address, h.node, h.iface, h.mac) == \
                        (network, address, node, iface, mac):
                    return h
            for h in held:
                if (h.network, h.address) == (network, address):
                    raise LeaseConflict(
                        f"address {address} on network {network!r} of project {project!r} is "
                        f"already leased to node {h.node} ({h.iface}, {h.mac})")
                raise LeaseConflict(
                    f"MAC {mac} in project {project!r} is already used by node {h.node} "
                    f"({h.iface}, {h.address} on network {h.network!r})")
            self._conn.execute(
                "INSERT INTO leases (project, network, address, node, iface, mac, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (project, network, address, node, iface, mac, now))
        return LeaseRecord(project, network, address, node, iface, mac, now)

    def release(self, project: str, node: str) -> int:
        """Release every lease of a node; returns how many there were."""
        with self.transaction():
            cur = self._conn.execute("DELETE FROM leases WHERE project = ? AND node = ?",
                                     (project, node))
        return cur.rowcount

    def release_project(self, project: str) -> int:
        """Release every lease of a project; returns how many there were."""
        with self.transaction():
            cur = self._conn.execute("DELETE FROM leases WHERE project = ?", (project,))
        return cur.rowcount

    def leases(self, project: str, network: str | None = None) -> list[LeaseRecord]:
        where, args = _where(project=project, network=network)
        rows = self._conn.execute(f"SELECT * FROM leases{where}", args)
        return sorted((LeaseRecord.from_row(r) for r in rows),
                      key=lambda x: (x.network, _address_key(x.address)))

    # --- hosts ------------------------------------------------------------------------------

    def put_host(self, name: str, uri: str, now: float, *, domain_type: str = "kvm",
                 memory: int = 0, vcpus: int = 0, groups: Iterable[str] = (),
                 data: Mapping[str, Any] | None = None) -> HostRecord:
        """Create or replace a host (memory in MiB)."""
        record = HostRecord(name, uri, domain_type, memory, vcpus, tuple(groups),
                            dict(data or {}), now)
        with self.transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO hosts (name, uri, domain_type, memory, vcpus, groups, "
                "data, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, uri, domain_type, memory, vcpus, _dumps(list(record.groups)),
                 _dumps(record.data), now))
        return record

    def remove_host(self, name: str) -> bool:
        with self.transaction():
            cur = self._conn.execute("DELETE FROM hosts WHERE name = ?", (name,))
        return cur.rowcount > 0

    def hosts(self) -> list[HostRecord]:
        return [HostRecord.from_row(r)
                for r in self._conn.execute("SELECT * FROM hosts ORDER BY name")]

    # --- host samples (their load: elastic.monitoring) ---------------------------------------

    def add_sample(self, sample: HostSample, *, keep: float = SAMPLE_RETENTION) -> None:
        """Store one host sample; that host's samples more than ``keep`` seconds older than
        it are removed in the same transaction."""
        domains = [dataclasses.asdict(d) for d in sample.domains]
        with self.transaction():
            self._conn.execute(
                "INSERT INTO host_samples (host, t, cpu_busy_ns, cpu_source, ncpus, "
                "memory_total, memory_free, domains) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sample.host, sample.t, sample.cpu_busy_ns, sample.cpu_source, sample.ncpus,
                 sample.memory_total_mib, sample.memory_free_mib, _dumps(domains)))
            self._conn.execute("DELETE FROM host_samples WHERE host = ? AND t < ?",
                               (sample.host, sample.t - keep))

    def samples(self, host: str, since: float) -> list[HostSample]:
        """The samples of ``host`` taken at or after ``since``, oldest first."""
        rows = self._conn.execute(
            "SELECT * FROM host_samples WHERE host = ? AND t >= ? ORDER BY t, id", (host, since))
        return [_sample_from_row(r) for r in rows]

    def prune_samples(self, before: float, host: str | None = None) -> int:
        """Remove the samples (of ``host``, or of every host) taken before ``before``."""
        where, args = _where(host=host)
        where += (" AND " if where else " WHERE ") + "t < ?"
        with self.transaction():
            cur = self._conn.execute(f"DELETE FROM host_samples{where}", [*args, before])
        return cur.rowcount

    # --- what the controller saw: the queue and its jobs -----------------------------------

    def add_queue_sample(self, project: str, t: float, *, pending_jobs: int, pending_slots: int,
                         running_jobs: int, workers: Mapping[str, int],
                         keep: float = QUEUE_RETENTION) -> None:
        """One tick's view of the queue and of the workers by site; that project's samples
        more than ``keep`` seconds older are removed in the same transaction."""
        with self.transaction():
            self._conn.execute(
                "INSERT INTO queue_samples (project, t, pending_jobs, pending_slots, "
                "running_jobs, workers) VALUES (?, ?, ?, ?, ?, ?)",
                (project, t, pending_jobs, pending_slots, running_jobs,
                 _dumps(dict(workers))))
            self._conn.execute("DELETE FROM queue_samples WHERE project = ? AND t < ?",
                               (project, t - keep))

    def queue_samples(self, project: str | None, since: float) -> list[QueueSampleRecord]:
        """The queue samples (of ``project``, or of all) at or after ``since``, oldest first."""
        where, args = _where(project=project)
        where += (" AND " if where else " WHERE ") + "t >= ?"
        rows = self._conn.execute(f"SELECT * FROM queue_samples{where} ORDER BY t, id",
                                  [*args, since])
        return [QueueSampleRecord.from_row(r) for r in rows]

    def observe_jobs(self, project: str, now: float, pending: Iterable[Job],
                     running: Iterable[tuple[Job, str | None]],
                     keep: float = QUEUE_RETENTION) -> None:
        """What one look at the queue says of its jobs: new ones are added, a job seen
        running gets its start (the first look that saw it so) and host and site, and a
        job that was there and is gone now has ended. ``running``: (job, site of its host).
        Jobs that ended more than ``keep`` seconds ago are removed."""
        seen: set[str] = set()
        with self.transaction():
            for job in pending:
                seen.add(job.id)
                self._conn.execute(
                    "INSERT INTO jobs (project, id, name, owner, slots, submitted) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, id) DO UPDATE SET "
                    "ended = NULL WHERE ended IS NOT NULL AND started IS NULL",
                    (project, job.id, job.name, job.owner, job.slots, job.submitted))
            for job, site in running:
                seen.add(job.id)
                host = job.host.split("@")[-1].split(".")[0] if job.host else None
                self._conn.execute(
                    "INSERT INTO jobs (project, id, name, owner, slots, submitted, started, "
                    "host, site) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, id) "
                    "DO UPDATE SET started = COALESCE(started, excluded.started), "
                    "host = excluded.host, site = excluded.site, ended = NULL",
                    (project, job.id, job.name, job.owner, job.slots, job.submitted, now,
                     host, site))
            open_jobs = [r["id"] for r in self._conn.execute(
                "SELECT id FROM jobs WHERE project = ? AND ended IS NULL", (project,))]
            for job_id in open_jobs:
                if job_id not in seen:
                    self._conn.execute("UPDATE jobs SET ended = ? WHERE project = ? AND id = ?",
                                       (now, project, job_id))
            self._conn.execute("DELETE FROM jobs WHERE project = ? AND ended < ?",
                               (project, now - keep))

    def jobs(self, project: str | None, since: float | None = None) -> list[JobRecord]:
        """Jobs (of ``project``, or of all) still there or ended at or after ``since``,
        by submission time."""
        where, args = _where(project=project)
        if since is not None:
            where += (" AND " if where else " WHERE ") + "(ended IS NULL OR ended >= ?)"
            args = [*args, since]
        rows = self._conn.execute(f"SELECT * FROM jobs{where} ORDER BY submitted, id", args)
        return [JobRecord.from_row(r) for r in rows]

    # --- events and plans -------------------------------------------------------------------

    def record_event(self, project: str | None, kind: str, now: float, *, node: str | None = None,
                     reason: str = "", data: Mapping[str, Any] | None = None) -> int:
        """Append an event that is not a node transition (a decision, an error...)."""
        with self.transaction():
            return self._log(now, project, node, kind, reason=reason, data=data)

    def events(self, project: str | None = None, since: float | None = None,
               limit: int | None = None, node: str | None = None, *,
               after: int | None = None) -> list[EventRecord]:
        """Events oldest first: at or after time ``since``, with id > ``after``; with
        ``limit``, the most recent ``limit`` of them."""
        where, args = _where(project=project, node=node)
        for clause, value in (("time >= ?", since), ("id > ?", after)):
            if value is not None:
                where += (" AND " if where else " WHERE ") + clause
                args.append(value)
        sql = f"SELECT * FROM events{where} ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"
            args.append(max(limit, 0))
        return [EventRecord.from_row(r) for r in self._conn.execute(sql, args)]

    def save_plan(self, project: str, plan: Mapping[str, Any], now: float) -> int:
        with self.transaction():
            cur = self._conn.execute("INSERT INTO plans (project, time, plan) VALUES (?, ?, ?)",
                                     (project, now, _dumps(dict(plan))))
        return int(cur.lastrowid or 0)

    def plans(self, project: str, limit: int | None = None) -> list[PlanRecord]:
        """Plans of a project, oldest first (the most recent ``limit`` if given)."""
        sql, args = "SELECT * FROM plans WHERE project = ? ORDER BY id", [project]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"
            args.append(max(limit, 0))
        return [PlanRecord.from_row(r) for r in self._conn.execute(sql, args)]

    # --- the per-project lock ---------------------------------------------------------------

    @contextmanager
    def lock(self, project: str, blocking: bool = False, wait: float = 0.0) -> Iterator[Path]:
        """Hold ``<state_dir>/locks/<project>.lock`` (flock) for a long operation.

        Raises ``LockHeld`` naming the holder's pid when another process has it (unless
        ``blocking``, which waits as long as it takes, or for up to ``wait`` seconds). The
        kernel frees the lock if the holder dies.
        """
        _check_name(project, "project")
        locks = self.state_dir / LOCK_DIR
        locks.mkdir(mode=0o700, exist_ok=True)
        path = locks / f"{project}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    pid, command = _parse_holder(os.pread(fd, 4096, 0))
                    raise LockHeld(project, pid, command, path) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_command()}\n".encode(), 0)
            try:
                yield path
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    # --- helpers ----------------------------------------------------------------------------

    def _require_project(self, project: str) -> None:
        if self.get_project(project) is None:
            raise NotFound(f"no project {project!r} in {self.path}")

    def _log(self, now: float, project: str | None, node: str | None, kind: str,
             from_state: State | None = None, to_state: State | None = None, reason: str = "",
             data: Mapping[str, Any] | None = None) -> int:
        cur = self._conn.execute(
            "INSERT INTO events (time, project, node, kind, from_state, to_state, reason, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (now, project, node, kind, from_state, to_state, reason, _dumps(dict(data or {}))))
        return int(cur.lastrowid or 0)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    return json.loads(text)


def _sample_from_row(r: sqlite3.Row) -> HostSample:
    try:
        return HostSample(r["host"], r["t"], r["cpu_busy_ns"], r["ncpus"], r["memory_total"],
                          r["memory_free"], tuple(DomainSample(**d) for d in _loads(r["domains"])),
                          r["cpu_source"])
    except (TypeError, ValueError) as e:
        raise PermanentError(f"host sample {r['id']} of {r['host']} in the state database is "
                             f"damaged: {e}") from None


def _state_or_none(value: str | None) -> State | None:
    return State(value) if value is not None else None


def _where(**equal: str | None) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b = ?`` for the arguments that are not None."""
    pairs = [(k, v) for k, v in equal.items() if v is not None]
    if not pairs:
        return "", []
    return " WHERE " + " AND ".join(f"{k} = ?" for k, _ in pairs), [v for _, v in pairs]


def _address_key(address: str) -> tuple[int, int, str]:
    try:
        return (0, int(ipaddress.ip_address(address)), "")
    except ValueError:
        return (1, 0, address)


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r} must start with a letter or digit and use only "
                          "letters, digits, '.', '_' and '-'", key=what)


def _make_private_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _command() -> str:
    command = shlex.join(sys.argv) if sys.argv and sys.argv[0] else sys.executable
    return " ".join(command.split())[:300]


def _parse_holder(content: bytes) -> tuple[int | None, str]:
    pid_text, _, command = content.decode(errors="replace").strip().partition(" ")
    return (int(pid_text) if pid_text.isdigit() else None), command.strip()


def _translate(e: sqlite3.DatabaseError, what: str) -> Exception:
    """A busy database is worth retrying; anything else is not."""
    message = f"{what}: {e}"
    if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
        return TransientError(message, retry_after=1.0)
    return PermanentError(message)
