"""Projects as the engine sees them: a spec file resolved against what the state DB knows."""

from __future__ import annotations

from pathlib import Path

from elastic.model import Project
from elastic.spec import load_document, resolve
from elastic.spec.loader import display_path


def resolve_with_state(spec: Path, state_dir: Path | None) -> Project:
    """Resolve ``spec``, keeping the addresses its nodes were leased before (if the state DB
    knows the project). Reads the DB only; never creates or changes it."""
    doc = load_document(spec)
    leases: dict[tuple[str, str], str] = {}
    name = doc.get("project")
    if state_dir is not None and isinstance(name, str):
        from elastic.state import Store
        if Store.exists(state_dir):
            with Store.open(state_dir, readonly=True) as store:
                for lease in store.leases(name):
                    leases[(lease.node, lease.iface)] = lease.address
    return resolve(doc, display_path(spec), leases=leases)
