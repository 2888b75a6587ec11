"""The state database (SQLite, WAL): projects, nodes, leases, hosts, events, plans."""

from elastic.state.migrations import SCHEMA_VERSION
from elastic.state.store import (
    DB_NAME,
    AlreadyExists,
    EventRecord,
    HostRecord,
    LeaseConflict,
    LeaseRecord,
    LockHeld,
    NodeRecord,
    NotFound,
    PlanRecord,
    ProjectRecord,
    Store,
    default_state_dir,
)

__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "AlreadyExists",
    "EventRecord",
    "HostRecord",
    "LeaseConflict",
    "LeaseRecord",
    "LockHeld",
    "NodeRecord",
    "NotFound",
    "PlanRecord",
    "ProjectRecord",
    "Store",
    "default_state_dir",
]
