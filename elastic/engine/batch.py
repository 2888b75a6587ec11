"""The batch system a project's autoscaler talks to, built from its ``scaling.batch`` block:
Grid Engine through a command runner that is local (optionally inside a namespace) or SSH
to the master node (as StarCluster did). The adapter code is the same for both."""

from __future__ import annotations

from pathlib import Path

from elastic.adapters.batch.sge import SGE
from elastic.adapters.run import SSH, run
from elastic.errors import ConfigError
from elastic.model import NodeSpec, Project


def master_address(project: Project, master: NodeSpec) -> str | None:
    """Where to reach the master: its address on a bridged network (one the controller's
    side of the world can see), else its first address."""
    kinds = {n.name: n.kind for n in project.networks}
    addressed = [i for i in master.interfaces if i.address]
    for iface in addressed:
        if kinds.get(iface.network) == "bridged":
            return iface.address
    return addressed[0].address if addressed else None


def batch_system(project: Project, state_dir: Path, *, netns: str | None = None,
                 lab_front: str | None = None) -> SGE:
    """The project's batch system. ``netns`` (the command line's --batch-netns) overrides
    the spec's; ``lab_front``: the namespace SSH connects from when neither names one."""
    from elastic.engine.projects import controller_key
    sc = project.scaling
    if sc is None:
        raise ConfigError("no scaling: section: nothing to autoscale", project.source,
                          key="scaling")
    b = sc.batch
    if b.system != "sge":
        raise ConfigError(f"batch system {b.system} is not supported yet (sge is)",
                          project.source, key="scaling.batch.system")
    ns = netns or b.netns
    if b.via == "local":
        runner = run
        where_ns = ns
    else:
        try:
            master = project.node(b.master)
        except KeyError:
            raise ConfigError(f"scaling.batch.master {b.master} is not a node of the project",
                              project.source, key="scaling.batch.master") from None
        address = b.address or master_address(project, master)
        if address is None:
            raise ConfigError(f"the batch master {b.master} has no address to reach it by SSH "
                              "(give scaling.batch.address)", project.source,
                              key="scaling.batch.address")
        key = Path(b.key).expanduser() if b.key else controller_key(state_dir, project.name)
        if not key.exists():
            raise ConfigError(f"no SSH key at {key}: run `elastic up` first (it makes elastic's "
                              "own key), or name one in scaling.batch.key", project.source,
                              key="scaling.batch.key")
        runner = SSH(address, key=key, user=b.user, port=b.port, via_netns=ns or lab_front,
                     connect_timeout=min(10.0, b.timeout))
        where_ns = None
    return SGE(root=b.root, cell=b.cell, netns=where_ns, runner=runner, queue=b.queue,
               hostgroup=b.hostgroup, timeout=b.timeout)
