"""Projects as the engine sees them: a spec file resolved against what the state DB knows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from elastic.errors import ConfigError
from elastic.model import Project, User
from elastic.spec import load_document, resolve
from elastic.spec.loader import display_path

LAB_HOSTS = Path("lab") / "hosts.yaml"


def controller_key(state_dir: Path, project: str) -> Path:
    """elastic's own SSH key for ``project`` (the controller's way into the batch master)."""
    return state_dir / "keys" / project


def resolve_with_state(spec: Path, state_dir: Path | None, *, lab: bool = False,
                       members: dict[str, list[int]] | None = None,
                       make_key: bool = False) -> Project:
    """Resolve ``spec``, keeping the addresses its nodes were leased before (if the state DB
    knows the project). Reads the DB only; never creates or changes it.

    ``lab``: run the project on the lab's hosts (``elastic lab up``) instead of its own.
    The batch master (``scaling.batch.via: ssh`` without a ``key``) gets elastic's own
    public key in root's authorized keys; ``make_key`` makes that key if it is missing
    (`elastic up`), else a project whose key does not exist yet is left as it is."""
    doc = load_document(spec)
    if lab:
        if state_dir is None or not (state_dir / LAB_HOSTS).is_file():
            raise ConfigError("there is no lab in this state directory: run `elastic lab up` "
                              "first", key="--lab")
        if "hosts" in doc:
            where = doc.where_of("hosts")
            raise ConfigError("--lab runs a project on the lab's hosts, but this spec names "
                              "its own hosts: leave out --lab, or the hosts: section",
                              where.file if where else None, where.line if where else None,
                              "hosts")
        lab_doc = load_document(state_dir / LAB_HOSTS)
        doc.set("hosts", lab_doc["hosts"], lab_doc.where_of("hosts"))
    leases: dict[tuple[str, str], str] = {}
    stored: dict[str, list[int]] = {}
    classes: dict[str, dict[int, str]] = {}
    name = doc.get("project")
    if state_dir is not None and isinstance(name, str):
        from elastic.state import Store
        if Store.exists(state_dir):
            with Store.open(state_dir, readonly=True) as store:
                for lease in store.leases(name):
                    leases[(lease.node, lease.iface)] = lease.address
                rec = store.get_project(name)
                # the autoscaler's (or add-workers') view of its group wins over count:
                stored = dict((rec.data or {}).get("members", {})) if rec else {}
                # members added with another class (add-workers --class)
                classes = {g: {int(i): c for i, c in by_index.items()}
                           for g, by_index in ((rec.data or {}).get("member_classes")
                                               or {}).items()} if rec else {}
    project = resolve(doc, display_path(spec), counts={**stored, **(members or {})},
                      leases=leases, member_classes=classes)
    return with_controller_key(project, state_dir, make=make_key)


def with_controller_key(project: Project, state_dir: Path | None, *, make: bool) -> Project:
    sc = project.scaling
    if state_dir is None or sc is None or sc.batch.via != "ssh" or sc.batch.key is not None \
            or sc.batch.user != "root":
        return project
    from elastic.adapters.keys import ensure_key, read_public
    path = controller_key(state_dir, project.name)
    if make:
        pub = ensure_key(path, f"elastic@{project.name}")
    elif path.exists():
        pub = read_public(path)
    else:
        return project
    nodes = []
    for node in project.nodes:
        if node.name == sc.batch.master:
            users = list(node.users)
            root = next((i for i, u in enumerate(users) if u.name == "root"), None)
            if root is None:
                users.append(User("root", ssh_keys=(pub,)))
            elif pub not in users[root].ssh_keys:
                users[root] = replace(users[root], ssh_keys=(*users[root].ssh_keys, pub))
            node = replace(node, users=tuple(users))
        nodes.append(node)
    return replace(project, nodes=tuple(nodes))


def recorded_spec(state_dir: Path, project: str) -> tuple[Path, bool]:
    """The spec file a project was brought up from, and whether it ran on the lab."""
    from elastic.errors import PermanentError
    from elastic.state import Store
    if not Store.exists(state_dir):
        raise PermanentError(f"no project named {project} in {state_dir}")
    with Store.open(state_dir, readonly=True) as store:
        rec = store.get_project(project)
    if rec is None:
        raise PermanentError(f"no project named {project} in {state_dir}")
    spec = Path(rec.source)
    if not spec.is_file():
        raise PermanentError(f"project {project} was brought up from {spec}, which is gone: "
                             "use elastic up FILE")
    return spec, bool((rec.data or {}).get("lab"))
