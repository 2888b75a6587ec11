"""A cloud the autoscaler bursts to: EC2 instances as workers, each joined to the private
cluster through the project's VPN hub.

    site = CloudSite.build(project, "ec2", state_dir, batch=sge, move=cluster.move_node)
    site.ensure(store)                       # hub, master's route to the overlay, sec. group
    room, why = site.room(store)             # max_nodes and the budget
    failure = site.launch(store, project, node, now)   # '' or why it failed
    site.destroy(store, "worker5", "drained and idle")  # terminate, peer off, leases freed
    site.sweep(store, now)                   # orphans terminated, vanished nodes FAILED

A launch, in the order that makes a crash at any point recoverable:

1. the node's record (PENDING, site = the cloud's name) with its launch token, in the DB;
2. its overlay address (leased), key pair and peer on the hub (``Hub.enroll``);
3. the batch master admits it by its overlay address (hosts entry, admin host);
4. PROLOG, then ``run_instances`` with its user-data and the token as ClientToken;
5. the instance id recorded (``provider_id``), BOOT. RUNNING once it joined the batch system.

A controller killed between 4 and 5 finds the node in PROLOG without an instance id: the
sweep looks the token up among the cluster's instances and adopts what it finds, or fails
the node (the autoscaler replaces it). An instance that the DB does not know at all (a
record lost) is terminated by the sweep after ``orphan_grace``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elastic.adapters.providers.ec2 import EC2
from elastic.adapters.run import run
from elastic.adapters.userdata import SGE_SHARE, boot_scripts, cloud_context, render_user_data
from elastic.engine.vpnhub import make_hub, overlay_network, take_down
from elastic.errors import ConfigError, ElasticError, PermanentError, TransientError
from elastic.lifecycle import State
from elastic.model import NodeSpec, Project
from elastic.policy.cloud import (affordable, budget_room, orphans, type_failed, type_worked,
                                  usable_types, vanished)
from elastic.state import Store

log = logging.getLogger(__name__)

Move = Callable[[Store, str, str, State, str], None]   # (store, project, node, state, why)


class BudgetExhausted(TransientError):
    """No instance type fits clouds.<name>.max_hourly_cost now."""


def _cloud_entry(store: Store, project: str, cloud: str) -> dict[str, Any]:
    """What the DB keeps of one cloud of a project (project data ``clouds.<cloud>``)."""
    rec = store.get_project(project)
    return dict((((rec.data or {}).get("clouds") or {}).get(cloud) or {}) if rec else {})


def cluster_id(store: Store, project: str, cloud: str) -> str:
    """The id that tags every instance of this project's cloud (made once, kept in the DB)."""
    if store.get_project(project) is None:
        raise PermanentError(f"project {project} is not up (run elastic up first)")
    cid = _cloud_entry(store, project, cloud).get("cluster_id")
    if not cid:
        cid = f"{project}-{secrets.token_hex(4)}"
        _record_cloud(store, project, cloud, cluster_id=cid)
    return cid


def _record_cloud(store: Store, project: str, cloud: str, **fields: Any) -> None:
    rec = store.get_project(project)
    if rec is None:
        return
    data = dict(rec.data or {})
    clouds = dict(data.get("clouds") or {})
    clouds[cloud] = {**(clouds.get(cloud) or {}), **fields}
    data["clouds"] = clouds
    store.update_project_data(project, data, rec.updated)


def _network_of(project: Project, address: str) -> str | None:
    for net in project.networks:
        if ipaddress.ip_address(address) in ipaddress.ip_network(net.cidr):
            return net.cidr
    return None


def route_source(address: str, netns: str | None) -> str:
    """The address this machine (or namespace) sends from toward ``address``."""
    out = run(["ip", "-o", "route", "get", address], netns=netns, timeout=10).stdout
    m = re.search(r"\bsrc (\S+)", out)
    if not m:
        raise PermanentError(f"no route from {'namespace ' + netns if netns else 'here'} to "
                             f"{address}: the VPN hub cannot reach the batch master")
    return m.group(1)


class CloudSite:
    """One cloud of one project, as the autoscaler uses it."""

    def __init__(self, project: Project, name: str, state_dir: Path, *, batch: Any,
                 move: Move, provider: EC2, hub: Any, master: tuple[str, str],
                 spec_dir: Path) -> None:
        self.project_name = project.name
        self.name = name
        self.spec = project.clouds[name]
        self.state_dir = Path(state_dir)
        self.batch = batch
        self.move = move
        self.ec2 = provider
        self.hub = hub
        self.master = master               # (name, address) of the batch master
        self.spec_dir = spec_dir
        self.lab = False                   # the lab's local EC2 (its dummy credentials)
        self.type_backoff = 60.0           # a type without capacity waits this, doubling
        self.route_source = route_source   # (address, netns) -> the hub's address toward it
        self._ready = False

    @classmethod
    def build(cls, project: Project, name: str, state_dir: Path, *, batch: Any, move: Move,
              lab_front: str | None = None, lab_endpoint: str | None = None,
              lab_hub_endpoint: str | None = None, **ec2_options: Any) -> CloudSite:
        """The site of ``clouds.<name>``. ``lab_*``: the lab's defaults (the front end's
        namespace for the hub, the lab's local EC2, the front end's address on the lab's
        internet) for what the spec leaves out."""
        from elastic.engine.batch import master_address
        spec = project.clouds.get(name)
        if spec is None:
            raise ConfigError(f"scaling.burst names cloud '{name}', which clouds: lacks",
                              project.source, key="scaling.burst")
        key = f"clouds.{name}"
        sc = project.scaling
        if spec.vpn.hub != "controller":
            raise ConfigError(f"vpn.hub {spec.vpn.hub}: a hub on a node is not built yet; "
                              "use 'controller' (the machine running elastic)",
                              project.source, key=f"{key}.vpn.hub")
        endpoint = spec.vpn.endpoint or lab_hub_endpoint
        if not endpoint:
            raise ConfigError("vpn.endpoint: where the cloud nodes reach the hub (this "
                              "machine's public address) is needed to burst",
                              project.source, key=f"{key}.vpn.endpoint")
        if ":" not in endpoint:
            endpoint = f"{endpoint}:{spec.vpn.port}"
        master = project.node(sc.batch.master)
        address = sc.batch.address or master_address(project, master)
        if address is None:
            raise ConfigError(f"the batch master {master.name} has no address the cloud "
                              "nodes could reach", project.source, key="scaling.batch.master")
        routes = tuple(spec.vpn.routes) or tuple(r for r in [_network_of(project, address)]
                                                 if r)
        netns = spec.vpn.netns or sc.batch.netns or lab_front
        lab = spec.endpoint_url is None and bool(lab_endpoint)
        if lab:
            spec = spec.model_copy(update={"endpoint_url": lab_endpoint})
            project.clouds[name] = spec
        with Store.open(state_dir) as store:
            cid = cluster_id(store, project.name, name)
        provider = EC2(spec, project=project.name, cluster_id=cid, name=name, **ec2_options)
        hub = make_hub(project.name, name, spec.vpn, state_dir, endpoint=endpoint,
                       routes=routes, netns=netns)
        site = cls(project, name, state_dir, batch=batch, move=move, provider=provider,
                   hub=hub, master=(master.name, address), spec_dir=Path(project.source).parent)
        site.lab = lab
        site.type_backoff = sc.backoff
        return site

    # ----------------------------------------------------------------------- the hub
    def ensure(self, store: Store) -> None:
        """The hub interface and its peers, the master's route to the overlay through the
        hub, the security group; recorded in the DB so that `elastic down` can undo it.
        Idempotent; done once per process."""
        if self._ready:
            return
        self.hub.ensure()
        self.hub.reconcile(store)
        via = self.route_source(self.master[1], self.hub.netns)
        # the master answers the cloud nodes through the hub (it is on the master's network)
        self.batch.route(self.spec.vpn.overlay, via)
        self.ec2.ensure_security_group(self.spec.vpn.port)
        entry = _cloud_entry(store, self.project_name, self.name)
        hub = {"type": self.spec.vpn.type, "ifname": self.hub.ifname, "netns": self.hub.netns}
        hubs = [h for h in entry.get("hubs") or () if h != hub] + [hub]   # every hub made
        _record_cloud(store, self.project_name, self.name,
                      spec=self.spec.model_dump(mode="json"), hubs=hubs, lab=self.lab)
        self._ready = True

    # ---------------------------------------------------------------------- capacity
    def nodes(self, store: Store) -> list:
        return [r for r in store.list_nodes(self.project_name)
                if r.site == self.name and r.state != State.DONE]

    def room(self, store: Store) -> tuple[int, str]:
        """How many more workers may start here now (max_nodes, then the budget), and why
        not more."""
        live = len(self.nodes(store))
        room = max(0, self.spec.max_nodes - live)
        why = f"clouds.{self.name}.max_nodes {self.spec.max_nodes} ({live} exist)"
        if self.spec.max_hourly_cost is None or room == 0:
            return room, why
        cost = self.ec2.hourly_cost(self.ec2.instances())
        n, budget = budget_room(self.spec.instance_types, self.spec.prices, cost,
                                self.spec.max_hourly_cost, room,
                                key=f"clouds.{self.name}.prices")
        return (n, budget) if n < room else (room, why)

    def _affordable(self) -> list[str]:
        """The instance types one more of which fits the budget now, in the spec's order."""
        if self.spec.max_hourly_cost is None:
            return list(self.spec.instance_types)
        cost = self.ec2.hourly_cost(self.ec2.instances())
        fit, why_not = affordable(self.spec.instance_types, self.spec.prices, cost,
                                  self.spec.max_hourly_cost, key=f"clouds.{self.name}.prices")
        if not fit:
            raise BudgetExhausted("; ".join(why_not))
        return fit

    # ------------------------------------------------------------------------ launch
    def launch(self, store: Store, project: Project, node: NodeSpec, now: float) -> str:
        """Start ``node`` as an instance (see the module's docstring); '' when the instance
        is starting, else why the launch failed (the node is then gone again). A failure
        that trying again will not cure (CloudAuthError, EC2Refused) is raised, after the
        node is gone again."""
        self.ensure(store)
        rec = store.get_node(self.project_name, node.name)
        attempt = int(((rec.data or {}).get("attempt", 0)) if rec else 0) + 1
        token = f"{self.hub.ifname}-{node.name}-{int(now)}-{attempt}"[:64]
        data = {"group": node.group, "index": node.index, "vcpus": node.vcpus,
                "memory": node.memory, "cloud": self.name, "token": token, "attempt": attempt}
        if rec is None or rec.state == State.DONE:
            store.add_node(self.project_name, node.name, now, site=self.name, data=data,
                           reason=f"bursting to clouds.{self.name}")
        try:
            types = self._types(store, now)   # the budget and the types backing off
            batch = project.scaling.batch.system if project.scaling else None
            vpn = self.hub.enroll(store, node.name)
            overlay = vpn.address.split("/")[0]
            self.batch.admit(node.name, overlay)
            tree = cloud_context(
                node, project, self.spec_dir,
                hosts=[(overlay, node.name), (self.master[1], self.master[0])],
                extra={**vpn.context(), "SGE_MASTER": self.master[0],
                       "SGE_MASTER_IP": self.master[1], "SGE_SLOTS": str(node.vcpus),
                       "SGE_ROOT": self.spec.sge_root, "SGE_SHARE": SGE_SHARE},
                batch=batch)
            user_data = render_user_data(tree, boot_scripts(batch), node.fullname)
            self.move(store, self.project_name, node.name, State.PROLOG,
                      f"enrolled on the VPN hub as {overlay}; launching on clouds.{self.name}")
            inst = self.ec2.launch(
                node.name, user_data, token=token, instance_types=types,
                on_capacity=lambda itype, _zone, _code: self._type_failures(
                    store, lambda f: type_failed(f, itype, now)))
        except ElasticError as e:
            self._forget(store, node.name, f"launch on clouds.{self.name} failed: {e}",
                         State.FAILED)
            if isinstance(e, PermanentError):
                raise      # credentials refused, a request EC2 will never take: a person's
            return str(e)
        self._type_failures(store, lambda f: type_worked(f, inst.instance_type))
        rec = store.get_node(self.project_name, node.name)
        store.transition(self.project_name, node.name, State.BOOT,
                         f"instance {inst.id} ({inst.instance_type}) starting on "
                         f"clouds.{self.name}", now, provider_id=inst.id, host=inst.id,
                         data={**((rec.data or {}) if rec else {}),
                               "instance_type": inst.instance_type})
        return ""

    def _types(self, store: Store, now: float) -> list[str]:
        """The instance types to try, in order: those one more of which fits the budget,
        without those backing off after capacity failures (unless all are)."""
        fit = self._affordable()
        entry = _cloud_entry(store, self.project_name, self.name)
        usable, skipped = usable_types(fit, entry.get("type_failures") or {}, now,
                                       backoff=self.type_backoff)
        for why in skipped:
            log.info("clouds.%s: %s", self.name, why)
        return usable

    def _type_failures(self, store: Store, change) -> None:
        """Apply ``change`` to the per-type capacity failures kept in the DB."""
        entry = _cloud_entry(store, self.project_name, self.name)
        before = entry.get("type_failures") or {}
        after = change(before)
        if after != before:
            _record_cloud(store, self.project_name, self.name, type_failures=after)

    # ----------------------------------------------------------------------- removal
    def destroy(self, store: Store, node: str, reason: str) -> None:
        """Terminate the node's instance, take its peer off the hub, free its leases, DONE."""
        rec = store.get_node(self.project_name, node)
        if rec is None:
            return
        if rec.provider_id:
            self.ec2.terminate([rec.provider_id])
        self._forget(store, node, reason, State.DONE)

    def _forget(self, store: Store, node: str, reason: str, via: State) -> None:
        try:
            self.hub.retire(store, node)
        except ElasticError as e:
            log.warning("retiring %s from the hub: %s", node, e)
        rec = store.get_node(self.project_name, node)
        if rec is not None and rec.state != State.DONE:
            if via == State.FAILED and rec.state != State.FAILED:
                self.move(store, self.project_name, node, State.FAILED, reason)
            self.move(store, self.project_name, node, State.DONE, reason)
        store.release(self.project_name, node)

    # ------------------------------------------------------------------------- sweep
    def sweep(self, store: Store, now: float) -> list[str]:
        """What the cloud says against what the DB says: half-recorded launches adopted,
        instances nobody knows terminated (after the grace), nodes whose instance vanished
        FAILED (the autoscaler replaces them). Returns what was done, as sentences."""
        done: list[str] = []
        if self.nodes(store):      # cloud workers exist: their hub must be up (a restart)
            self.ensure(store)
        listed = self.ec2.instances()
        by_token = {i.tags.get("elastic:launch-token"): i for i in listed}
        known: dict[str, str | None] = {}
        for rec in self.nodes(store):
            iid = rec.provider_id
            token = (rec.data or {}).get("token")
            if not iid and token in by_token:          # launched, then the controller died
                inst = by_token[token]
                store.transition(self.project_name, rec.name, State.BOOT,
                                 f"adopted instance {inst.id}, launched before the last "
                                 "controller stopped", now, provider_id=inst.id, host=inst.id)
                done.append(f"adopted {inst.id} as {rec.name}")
                iid = inst.id
            elif not iid and rec.state in (State.PENDING, State.PROLOG) \
                    and now - rec.state_since > self.spec.orphan_grace:
                self._forget(store, rec.name, "its launch left no instance (the controller "
                             "stopped before run_instances)", State.FAILED)
                done.append(f"{rec.name}: launch never happened, forgotten")
                continue
            if rec.state != State.FAILED:
                known[rec.name] = iid
        for inst, why in orphans(listed, known, now=now, grace=self.spec.orphan_grace):
            self.ec2.terminate([inst.id])
            store.record_event(self.project_name, "cloud:orphan", now, node=inst.node,
                               reason=why)
            done.append(why)
        for node, why in vanished(known, listed):
            rec = store.get_node(self.project_name, node)
            if rec is None:
                continue
            inst = next((i for i in listed if i.id == rec.provider_id), None)
            if inst is not None:
                self.ec2.terminate([inst.id])   # stopped: it still holds its disk
            self.move(store, self.project_name, node, State.FAILED, why)
            done.append(why)
        return done


def teardown(store: Store, project: str, state_dir: Path) -> list[str]:
    """`elastic down`: terminate every instance of the project's clouds and take their hubs
    down (from what the DB recorded). Returns what was done."""
    from elastic.spec.schema import CloudSpec
    rec = store.get_project(project)
    done: list[str] = []
    for name, entry in ((rec.data or {}).get("clouds") or {}).items() if rec else ():
        if not entry.get("spec"):
            continue
        spec = CloudSpec.model_validate(entry["spec"])
        if entry.get("lab"):     # the lab's local EC2 takes any credentials
            from elastic.adapters.cloudlab import FAKE_KEY
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(var, FAKE_KEY)
        ec2 = EC2(spec, project=project, cluster_id=entry["cluster_id"], name=name)
        ids = [i.id for i in ec2.instances()]
        ec2.terminate(ids)
        done += [f"terminated {i}" for i in ids]
        for hub in entry.get("hubs") or ():
            take_down(hub["type"], hub["ifname"], hub.get("netns"), state_dir)
            done.append(f"hub {hub['ifname']} down")
    keys = Path(state_dir) / "vpn" / project
    if keys.exists():
        shutil.rmtree(keys)     # the hub's and nodes' private keys
    return done


__all__ = ["BudgetExhausted", "CloudSite", "cluster_id", "overlay_network", "route_source",
           "teardown"]
