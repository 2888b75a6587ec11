"""The autoscaler of a project, put together from its spec: the batch system, the fleet (the
libvirt machinery of `elastic up`) and the cloud sites of ``scaling.burst``. One place for
the CLI (`elastic autoscale`, add-workers, remove-workers) and the API's actions.

    with autoscaler(state_dir, spec, cluster, lab=False) as scaler:
        scaler.add_workers(2)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elastic.state import Store


@contextlib.contextmanager
def autoscaler(state_dir: Path, spec: Path, cluster, *, lab: bool = False,
               batch_netns: str | None = None) -> Iterator[Any]:
    """The project's Autoscaler on ``cluster``; the batch system's connection is closed
    afterwards."""
    from elastic.engine.autoscale import Autoscaler, ClusterFleet
    from elastic.engine.batch import batch_system
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, state_dir, lab=lab)
    front = None
    if lab:
        from elastic.adapters.lab import FRONT_NETNS
        front = FRONT_NETNS
    sge = batch_system(project, state_dir, netns=batch_netns, lab_front=front)
    try:
        fleet = ClusterFleet(cluster, spec, state_dir, lab=lab)
        clouds = cloud_sites(state_dir, project, sge, cluster, lab=lab)
        yield Autoscaler(project.name, lambda: Store.open(state_dir), sge, fleet,
                         clouds=clouds)
    finally:
        close = getattr(sge.runner, "close", None)
        if close:
            close()


def cloud_sites(state_dir: Path, project, sge, cluster, *, lab: bool = False) -> dict:
    """The clouds of scaling.burst, each with its VPN hub. In the lab, what the spec leaves
    out comes from the lab: its local EC2 (and moto's dummy credentials), the front end's
    namespace for the hub and its address on the lab's internet as the hub's endpoint."""
    from elastic.engine.cloud import CloudSite
    sc = project.scaling
    if sc is None or not sc.burst:
        return {}
    opts: dict = {}
    if lab:
        from elastic.adapters import cloudlab
        from elastic.adapters.lab import FRONT_INET_ADDRESS, FRONT_NETNS, Lab
        info = cloudlab.daemon_info(Lab(state_dir / "lab").cloud_dir)
        if info:
            opts["lab_endpoint"] = info["endpoint"]
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(var, cloudlab.FAKE_KEY)
        opts.update(lab_front=FRONT_NETNS, lab_hub_endpoint=FRONT_INET_ADDRESS)
    return {name: CloudSite.build(project, name, state_dir, batch=sge,
                                  move=cluster.move_node, **opts)
            for name in sc.burst}
