"""Projects on libvirt hosts: up, down, start, stop, status.

observe (state DB + what each host reports) -> decide (placement, what each node needs) ->
act (per host, hosts in parallel) -> record (every state change, with its reason).
Every step is idempotent, so running a command again after a crash finishes the job.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from elastic.adapters import context as ctx
from elastic.adapters import images, render
from elastic.adapters.providers.libvirt import LibvirtHost, POOL_PATH
from elastic.clock import Clock, SystemClock
from elastic.errors import ConfigError, ElasticError, PermanentError, Problem, TransientError
from elastic.lifecycle import InvalidTransition, State, path
from elastic.model import HostSpec, NodeSpec, Project
from elastic.engine.diff import Change, diff
from elastic.placement import HostCapacity, Placement, place
from elastic.state import Store

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 180.0
SHUTDOWN_TIMEOUT = 30.0
READY_MARK = "ELASTIC-READY"
FAILED_MARK = "ELASTIC-FAILED"


class Reporter:
    """What a long operation tells the user. The CLI shows it as progress bars."""

    def step(self, message: str) -> None:
        log.info(message)

    def node(self, node: str, state: str, detail: str = "") -> None:
        log.info("%s: %s %s", node, state, detail)


@dataclass
class Outcome:
    running: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    migrations: dict[str, float] = field(default_factory=dict)   # chunk -> seconds
    changes: list[str] = field(default_factory=list)


def volume_names(node: NodeSpec) -> tuple[str, str, str]:
    """(disk overlay, context ISO, console log) volumes of a node in its host's pool."""
    base = f"{node.project}-{node.name}"
    return f"{base}.qcow2", f"{base}-context.iso", f"{base}.console.log"


def spec_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Cluster:
    """The engine's view of the state directory: one object per command."""

    def __init__(self, state_dir: Path, *, clock: Clock | None = None,
                 reporter: Reporter | None = None, boot_timeout: float = BOOT_TIMEOUT,
                 lock_wait: float = 0.0) -> None:
        self.state_dir = state_dir
        self.lock_wait = lock_wait     # up: how long to wait for another process's lock
        self.clock = clock or SystemClock()
        self.report = reporter or Reporter()
        self.boot_timeout = boot_timeout
        self._hosts: dict[str, LibvirtHost] = {}
        self._hosts_lock = threading.Lock()

    # ---------------------------------------------------------------------- helpers
    def host(self, name: str, uri: str) -> LibvirtHost:
        with self._hosts_lock:
            h = self._hosts.get(name)
            if h is None or h.uri != uri:
                h = self._hosts[name] = LibvirtHost(name, uri)
            return h

    def close(self) -> None:
        for h in self._hosts.values():
            h.close()

    def store(self) -> Store:
        return Store.open(self.state_dir)

    def move_node(self, store: Store, project: str, node: str, to: State, reason: str,
              **fields) -> None:
        """Walk the node to ``to`` through allowed states, recording each step."""
        rec = store.get_node(project, node)
        if rec is None:
            return
        try:
            steps = path(rec.state, to) if rec.state != to else []
        except InvalidTransition:
            # e.g. BOOT -> PROLOG after a crash: the only way back is through FAILED, said so
            store.transition(project, node, State.FAILED,
                             f"was {rec.state} when the last run stopped; {reason}",
                             self.clock.now())
            steps = path(State.FAILED, to)
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            store.transition(project, node, step, reason, self.clock.now(),
                             **(fields if last else {}))
        self.report.node(node, str(to), reason)

    # --------------------------------------------------------------------------- up
    def up(self, spec: Path, project: Project, *, lab: bool = False) -> Outcome:
        """Build and start everything ``project`` describes; converge what exists."""
        t0 = time.monotonic()
        self._check_images(project)
        hosts = {h.name: h for h in project.hosts}
        infos = self._preflight(project.hosts)
        with self.store() as store, store.lock(project.name, wait=self.lock_wait):
            # placed under the lock: another elastic process may have just changed things
            current = self._current_placement(store, project)
            placement = self._place(project, infos, current)
            outcome = Outcome()
            # first what the spec no longer has: its addresses may be handed out again
            self._remove_orphans(store, project, hosts, outcome)
            self._record_project(store, spec, project, placement, lab)
            by_host: dict[str, list[NodeSpec]] = {}
            for node in project.nodes:
                by_host.setdefault(placement.host_of(node.chunk), []).append(node)
            cache = images.cache_dir(self.state_dir)
            built = {name: images.build(name, cache, self.report.step)
                     for name in sorted({n.image for n in project.nodes})}
            self._parallel(
                {h: (lambda h=h, nodes=nodes: self._up_host(hosts[h], project, spec, nodes,
                                                             built, outcome))
                 for h, nodes in by_host.items()})
        outcome.seconds = time.monotonic() - t0
        return outcome

    @staticmethod
    def _check_images(project: Project) -> None:
        problems = []
        for image in sorted({n.image for n in project.nodes}):
            try:
                images.check_image(image)
            except ConfigError as e:
                node = next(n for n in project.nodes if n.image == image)
                where = node.where
                problems.append(Problem(str(e.problems[0].message),
                                        where.file if where else project.source,
                                        where.line if where else None,
                                        f"nodes.{node.group}.image"))
        if problems:
            raise ConfigError.many(problems)

    def _preflight(self, specs: Iterable[HostSpec]) -> dict[str, HostCapacity]:
        """Every host answers (in parallel, with a timeout) before anything is made."""
        specs = list(specs)
        caps: dict[str, HostCapacity] = {}
        errors: dict[str, str] = {}

        def probe(h: HostSpec) -> None:
            try:
                info = self.host(h.name, h.uri).info()
            except ElasticError as e:
                errors[h.name] = str(e)
                return
            except Exception as e:   # libvirt errors
                errors[h.name] = f"{h.uri}: {e}"
                return
            memory = h.usable_memory if h.memory is not None else \
                info.memory_mib - h.reserved_memory
            vcpus = h.usable_vcpus if h.vcpus is not None else info.vcpus - h.reserved_vcpus
            caps[h.name] = HostCapacity(h.name, memory, int(vcpus * h.vcpu_ratio),
                                        domain_type=h.domain_type, groups=h.groups,
                                        attributes=h.attributes)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(specs))) as ex:
            list(ex.map(probe, specs))
        if errors:
            raise PermanentError("hosts that do not answer (nothing was made):\n" + "\n".join(
                f"  {name}: {why}" for name, why in sorted(errors.items())))
        return caps

    def _current_placement(self, store: Store, project: Project) -> dict[str, str]:
        hosts: dict[str, set[str]] = {}
        for node in project.nodes:
            rec = store.get_node(project.name, node.name)
            if rec is not None and rec.host and rec.state != State.DONE:
                hosts.setdefault(node.chunk, set()).add(rec.host)
        return {chunk: next(iter(h)) for chunk, h in hosts.items() if len(h) == 1}

    def _place(self, project: Project, caps: dict[str, HostCapacity],
               current: dict[str, str]) -> Placement:
        placement = place(project, self._with_others(project.name, caps), current)
        if not placement.ok:
            raise ConfigError("\n".join(str(r) for r in placement.rejected), project.source,
                              key="nodes")
        return placement

    def _with_others(self, project: str, caps: dict[str, HostCapacity]
                     ) -> dict[str, HostCapacity]:
        """``caps`` with what other projects' nodes already take on each host (memory,
        vcpus, VMs) counted against it."""
        memory: Counter[str] = Counter()
        vcpus: Counter[str] = Counter()
        vms: Counter[str] = Counter()
        with self.store() as store:
            for rec in store.list_nodes(None):
                if rec.project != project and rec.host and rec.site == "private" \
                        and rec.state not in (State.DONE,):
                    memory[rec.host] += int((rec.data or {}).get("memory", 0))
                    vcpus[rec.host] += int((rec.data or {}).get("vcpus", 0))
                    vms[rec.host] += 1
        return {n: replace(c, used_memory=c.used_memory + memory[n],
                           used_vcpus=c.used_vcpus + vcpus[n], vms=c.vms + vms[n])
                for n, c in caps.items()}

    def _record_project(self, store: Store, spec: Path, project: Project,
                        placement: Placement, lab: bool) -> None:
        now = self.clock.now()
        with store.transaction():
            old = store.get_project(project.name)
            old_data = old.data if old is not None and old.data else {}
            nets = sorted({*old_data.get("networks", []),
                           *(render.network_name(project.name, n.name)
                             for n in project.networks if n.kind == "private")})
            hosts = sorted({*old_data.get("hosts", []), *(d.host for d in placement.decisions)})
            store.put_project(project.name, str(spec.resolve()), spec_hash(spec), now,
                              data={**old_data, "hosts": hosts, "networks": nets, "lab": lab})
            for h in project.hosts:
                store.put_host(h.name, h.uri, now, domain_type=h.domain_type,
                               memory=h.memory or 0, vcpus=h.vcpus or 0, groups=h.groups)
            for node in project.nodes:
                host = placement.host_of(node.chunk)
                data = {"memory": node.memory, "vcpus": node.vcpus, "chunk": node.chunk,
                        "group": node.group}
                rec = store.get_node(project.name, node.name)
                if rec is None or rec.state == State.DONE:
                    store.add_node(project.name, node.name, now, host=host, data=data,
                                   reason=f"in {project.source}; placed on {host}")
                for iface in node.interfaces:
                    if iface.address is not None:
                        store.lease(project.name, iface.network, iface.address, node.name,
                                    iface.name, iface.mac, now)

    def _up_host(self, hspec: HostSpec, project: Project, spec: Path, nodes: list[NodeSpec],
                 built: dict[str, images.ImageFiles], outcome: Outcome) -> None:
        host = self.host(hspec.name, hspec.uri)
        with self.store() as store:
            self.report.step(f"{hspec.name}: storage, images and networks")
            bases = self._bases(host, nodes, built)
            bridges = self._networks_up(host, hspec, project, nodes)
            booting: list[NodeSpec] = []
            for node in nodes:
                try:
                    if self._converge_node(store, host, hspec, project, spec, node, bridges,
                                           bases[node.image], built[node.image]):
                        booting.append(node)
                    else:
                        outcome.running.append(node.name)
                except ElasticError as e:
                    self._fail(store, host, project.name, node, str(e), outcome)
                except Exception as e:  # libvirt's own errors
                    self._fail(store, host, project.name, node, f"{type(e).__name__}: {e}",
                               outcome)
            self._wait_ready(store, host, project.name, booting, outcome)

    def _networks_up(self, host: LibvirtHost, hspec: HostSpec, project: Project,
                     nodes: list[NodeSpec]) -> dict[str, str]:
        """The bridge of every network these nodes use; private ones are made here."""
        bridges: dict[str, str] = {}
        used = {i.network for n in nodes for i in n.interfaces}
        for net in project.networks:
            if net.name not in used:
                continue
            if net.kind == "private":
                bridge = render.bridge_name(project.name, net.name)
                host.ensure_network(render.network_name(project.name, net.name),
                                    render.network_xml(render.network_name(project.name, net.name),
                                                       bridge))
                bridges[net.name] = bridge
            else:
                bridges[net.name] = net.bridge or hspec.uplink or "br0"
        return bridges

    def _converge_node(self, store: Store, host: LibvirtHost, hspec: HostSpec, project: Project,
                       spec: Path, node: NodeSpec, bridges: dict[str, str],
                       base: dict[str, str], files: images.ImageFiles) -> bool:
        """Make the node exist and start; True if it is booting (must be waited for)."""
        name = render.domain_name(node)
        rec = store.get_node(project.name, node.name)
        assert rec is not None
        dom = host.domain(name)
        if rec.state in (State.RUNNING, State.DRAINING) and dom is not None and dom.isActive():
            # (a draining worker still runs its jobs: never make it again)
            self.report.node(node.name, str(rec.state), "already running")
            return False
        if rec.state in (State.RUNNING, State.DRAINING):
            self.move_node(store, project.name, node.name, State.FAILED,
                       "its domain vanished or stopped; making it again")
        if rec.state == State.STOPPED:
            if dom is None:        # stopped and undefined (a resize): define it again
                self._define(host, hspec, project, spec, node, bridges, base, files)
            host.delete_volume(volume_names(node)[2])
            host.start(name)
            self.move_node(store, project.name, node.name, State.BOOT, "elastic up: started")
            return True
        if rec.state in (State.BOOT, State.MIGRATING) and dom is not None and dom.isActive():
            return True     # an earlier run started it: wait for it
        if dom is not None:           # half-made by an earlier run: make it again
            host.undefine(name)
        self.move_node(store, project.name, node.name, State.PROLOG,
                   f"disk overlay and context on {hspec.name}", host=hspec.name)
        self._define(host, hspec, project, spec, node, bridges, base, files)
        host.delete_volume(volume_names(node)[2])   # a fresh log: no READY from an earlier boot
        host.start(name)
        self.move_node(store, project.name, node.name, State.BOOT,
                   f"defined and started on {hspec.name}")
        return True

    def _define(self, host: LibvirtHost, hspec: HostSpec, project: Project, spec: Path,
                node: NodeSpec, bridges: dict[str, str], base: dict[str, str],
                files: images.ImageFiles) -> None:
        """Disk overlay (kept if there), context ISO (made anew) and the domain definition."""
        disk, iso, console = volume_names(node)
        disk_path = host.overlay(disk, base["disk"], node.disk)
        iso_path = self._upload_context(host, project, spec, node)
        boot = render.BootSpec(kernel=base.get("kernel"), initrd=base.get("initrd"),
                               cmdline=files.cmdline) if "kernel" in base else render.BootSpec()
        host.define(render.domain_xml(node, domain_type=hspec.domain_type, disk_path=disk_path,
                                      context_path=iso_path, bridges=bridges,
                                      console_log=f"{POOL_PATH}/{console}", boot=boot,
                                      project_source=project.source))

    @staticmethod
    def _upload_context(host: LibvirtHost, project: Project, spec: Path, node: NodeSpec) -> str:
        iso = volume_names(node)[1]
        with tempfile.TemporaryDirectory(prefix="elastic-ctx-") as tmp:
            local = ctx.build_iso(ctx.context_files(node, project, spec.parent),
                                  Path(tmp) / "context.iso")
            host.delete_volume(iso)
            return host.upload(iso, local)

    def _bases(self, host: LibvirtHost, nodes: Iterable[NodeSpec],
               built: dict[str, images.ImageFiles]) -> dict[str, dict[str, str]]:
        """Upload each image's base files to a host once (content-addressed names)."""
        host.pool()
        bases: dict[str, dict[str, str]] = {}
        for name in sorted({n.image for n in nodes}):
            files = built[name]
            up = {"disk": host.upload_image_file(files.disk, "qcow2")}
            if files.kernel is not None and files.initrd is not None:
                up["kernel"] = host.upload_image_file(files.kernel)
                up["initrd"] = host.upload_image_file(files.initrd)
            bases[name] = up
        return bases

    def _wait_ready(self, store: Store, host: LibvirtHost, project: str,
                    nodes: list[NodeSpec], outcome: Outcome) -> None:
        """BOOT -> RUNNING when the node prints its readiness marker on the console."""
        waiting = {n.name: n for n in nodes}
        deadline = time.monotonic() + self.boot_timeout
        while waiting and time.monotonic() < deadline:
            for name, node in list(waiting.items()):
                log_text = host.read_volume(volume_names(node)[2]).decode(errors="replace")
                ready = [line for line in log_text.splitlines()
                         if line.startswith(f"{READY_MARK} {node.name} ")]
                failed = [line for line in log_text.splitlines() if line.startswith(FAILED_MARK)]
                dom = host.domain(render.domain_name(node))
                if ready:
                    address = ready[-1].split()[-1]
                    self.move_node(store, project, name, State.RUNNING,
                               f"ready: answered on {address}")
                    outcome.running.append(name)
                    del waiting[name]
                elif failed:
                    self._fail(store, host, project, node, f"its boot said: {failed[-1]}",
                               outcome)
                    del waiting[name]
                elif dom is None or not dom.isActive():
                    self._fail(store, host, project, node, "the domain stopped while booting",
                               outcome)
                    del waiting[name]
            if waiting:
                time.sleep(0.3)
        for name, node in waiting.items():
            self._fail(store, host, project, node,
                       f"not ready after {self.boot_timeout:g} s (no {READY_MARK} on its console)",
                       outcome)

    def _fail(self, store: Store, host: LibvirtHost, project: str, node: NodeSpec, reason: str,
              outcome: Outcome) -> None:
        """FAILED with the reason, and no half-made VM left behind."""
        try:
            host.undefine(render.domain_name(node))
            for vol in volume_names(node):
                host.delete_volume(vol)
        except Exception as e:
            reason += f"; cleanup failed too: {e}"
        self.move_node(store, project, node.name, State.FAILED, reason)
        outcome.failed[node.name] = reason

    def _remove_orphans(self, store: Store, project: Project, hosts: dict[str, HostSpec],
                        outcome: Outcome) -> None:
        """Domains of this project that the spec no longer has: removed, with their disks."""
        wanted = {n.name for n in project.nodes}
        for hspec in hosts.values():
            host = self.host(hspec.name, hspec.uri)
            for dom in host.domains():
                if dom.project == project.name and dom.node and dom.node not in wanted:
                    self._remove_domain(store, host, project.name, dom.node, dom.name,
                                        "not in the spec any more")
                    outcome.removed.append(dom.node)
        for rec in store.list_nodes(project.name):
            # cloud workers are not VMs of the spec: the autoscaler's cloud site owns them
            if rec.name not in wanted and rec.state != State.DONE and rec.site == "private":
                self.move_node(store, project.name, rec.name, State.DONE, "not in the spec any more")
                store.release(project.name, rec.name)

    def _remove_domain(self, store: Store, host: LibvirtHost, project: str, node: str,
                       domain: str, reason: str) -> None:
        rec = store.get_node(project, node)
        if rec is not None and rec.state in (State.RUNNING, State.BOOT, State.DRAINING):
            self.move_node(store, project, node, State.SHUTDOWN, reason)
        host.undefine(domain)
        base = f"{project}-{node}"
        for vol in (f"{base}.qcow2", f"{base}-context.iso", f"{base}.console.log"):
            host.delete_volume(vol)
        if rec is not None:
            self.move_node(store, project, node, State.DONE, reason)
            store.release(project, node)

    def room(self, project_with: Callable[[int], Project], limit: int) -> int:
        """The largest k <= limit such that the project with k more workers still places
        (every host asked once)."""
        base = project_with(0)
        caps = self._preflight(base.hosts)
        with self.store() as store:
            current = self._current_placement(store, base)
        caps = self._with_others(base.name, caps)
        best = 0
        for k in range(1, limit + 1):
            if not place(project_with(k), caps, current).ok:
                break
            best = k
        return best

    # ---------------------------------------------------------------------- upgrade
    def upgrade(self, spec: Path, project: Project, *, dry_run: bool = False,
                lab: bool = False) -> tuple[list[Change], Outcome]:
        """Diff the (changed) spec against the running project and apply it: removed nodes
        go, chunks whose host changed are live-migrated (bridges and disks on the target
        first), resized nodes restart with their new size, new nodes are made."""
        self._check_images(project)
        hosts = {h.name: h for h in project.hosts}
        infos = self._preflight(project.hosts)
        with self.store() as store:
            if store.get_project(project.name) is None:
                raise PermanentError(f"project {project.name} is not up (use elastic up)")
            current = self._current_placement(store, project)
            placement = self._place(project, infos, current)
            changes = diff(project, placement, [r for r in store.list_nodes(project.name)
                                                if r.site == "private"])
            if dry_run:
                return changes, Outcome(changes=[str(c) for c in changes])
            migrations: dict[str, float] = {}
            with store.lock(project.name):
                cache = images.cache_dir(self.state_dir)
                built = {name: images.build(name, cache, self.report.step)
                         for name in sorted({n.image for n in project.nodes})}
                known = {h.name: HostSpec(h.name, h.uri, h.domain_type) for h in store.hosts()}
                for change in changes:
                    self.report.step(str(change))
                    if change.kind == "remove":
                        h = hosts.get(change.src or "") or known[change.src or ""]
                        self._remove_domain(store, self.host(h.name, h.uri), project.name,
                                            change.target, f"{change.target}.{project.name}",
                                            change.reason)
                    elif change.kind == "move":
                        migrations[change.target] = self._migrate_chunk(
                            store, project, spec, change, hosts, built)
                    elif change.kind == "resize":
                        self._stop_for_resize(store, hosts, project, change)
        outcome = self.up(spec, project, lab=lab)     # makes the new, restarts the resized
        outcome.migrations = migrations
        outcome.changes = [str(c) for c in changes]
        return changes, outcome

    # ---------------------------------------------------------------------- rebalance
    def capacities(self, project: Project) -> dict[str, HostCapacity]:
        """Every host of ``project`` (each asked, in parallel), with what the other
        projects' nodes take there counted as used."""
        return self._with_others(project.name, self._preflight(project.hosts))

    def migrate(self, spec: Path, project: Project, moves: Iterable[Change],
                on_done: Callable[[Change, float | str], None] | None = None
                ) -> dict[str, float | str]:
        """Live-migrate whole chunks (the rebalancer's moves), one after another: each as
        ``upgrade`` does (bridges, bases, disks and context on the target first, every node
        of the chunk at once, the source's leftovers removed after). Returns chunk ->
        seconds, or why it failed (its nodes then still run on the source)."""
        hosts = {h.name: h for h in project.hosts}
        done: dict[str, float | str] = {}
        with self.store() as store, store.lock(project.name):
            moves = list(moves)
            images_needed = sorted({project.node(n).image for m in moves for n in m.nodes})
            cache = images.cache_dir(self.state_dir)
            built = {name: images.build(name, cache, self.report.step) for name in images_needed}
            for change in moves:
                self.report.step(str(change))
                try:
                    done[change.target] = self._migrate_chunk(store, project, spec, change,
                                                              hosts, built)
                except ElasticError as e:
                    done[change.target] = str(e)
                if on_done is not None:
                    on_done(change, done[change.target])
        return done

    def _stop_for_resize(self, store: Store, hosts: dict[str, HostSpec], project: Project,
                         change: Change) -> None:
        node = project.node(change.target)
        hspec = hosts[change.src or ""]
        host = self.host(hspec.name, hspec.uri)
        name = render.domain_name(node)
        self.move_node(store, project.name, node.name, State.SHUTDOWN, change.reason)
        if not host.shutdown(name, SHUTDOWN_TIMEOUT):
            host.destroy(name)
        host.undefine(name)                     # defined again with the new size by up
        self.move_node(store, project.name, node.name, State.STOPPED, change.reason,
                   data={"memory": node.memory, "vcpus": node.vcpus, "chunk": node.chunk,
                         "group": node.group})

    def _migrate_chunk(self, store: Store, project: Project, spec: Path, change: Change,
                       hosts: dict[str, HostSpec], built: dict[str, images.ImageFiles]) -> float:
        """Live-migrate a whole chunk: its bridges, base files, disk overlays and context on
        the target first, then every node at once (so the private network is split for the
        shortest time), then the source's leftovers removed. When some nodes cannot move,
        those that did are brought back, so the chunk stays whole on its source; only if
        that fails too is it left split, and the error says where each part is."""
        src_spec, dst_spec = hosts[change.src or ""], hosts[change.dst or ""]
        src, dst = self.host(src_spec.name, src_spec.uri), self.host(dst_spec.name, dst_spec.uri)
        nodes = [project.node(n) for n in change.nodes]
        self.report.step(f"chunk {change.target}: bridges, base images and disks on "
                         f"{dst_spec.name} first")
        bases = self._bases(dst, nodes, built)
        self._networks_up(dst, dst_spec, project, nodes)
        for node in nodes:
            dst.overlay(volume_names(node)[0], bases[node.image]["disk"], node.disk)
            self._upload_context(dst, project, spec, node)
        for node in nodes:
            self.move_node(store, project.name, node.name, State.MIGRATING,
                       f"live migration {src_spec.name} -> {dst_spec.name}")
        t0 = time.monotonic()
        errors = self._migrate_all(src, dst, dst_spec, nodes)
        seconds = time.monotonic() - t0
        moved = [n for n in nodes if n.name not in errors]
        back_errors: dict[str, str] = {}
        if errors and moved:
            # a chunk is never left split: the nodes that went come back to the others
            self.report.step(f"chunk {change.target}: {len(errors)} of {len(nodes)} could not "
                             f"move; bringing the other {len(moved)} back to {src_spec.name}")
            back_errors = self._migrate_all(dst, src, src_spec, moved)
        failed = "; ".join(f"{n}: {e}" for n, e in errors.items())
        on_dst = [n for n in moved if n.name in back_errors]
        for node in nodes:
            if node.name in errors:       # it stayed where it was
                self.move_node(store, project.name, node.name, State.RUNNING,
                               f"migration failed, still on {src_spec.name}: {errors[node.name]}")
            elif errors and node.name in back_errors:
                self.move_node(store, project.name, node.name, State.RUNNING,
                               f"migrated to {dst_spec.name}, but the rest of chunk "
                               f"{change.target} could not follow ({failed}), and moving it "
                               f"back failed: {back_errors[node.name]}", host=dst_spec.name)
            elif errors:
                self.move_node(store, project.name, node.name, State.RUNNING,
                               f"moved back to {src_spec.name}: the rest of chunk "
                               f"{change.target} could not follow ({failed})")
            else:
                self.move_node(store, project.name, node.name, State.RUNNING,
                               f"migrated to {dst_spec.name} in {seconds:.1f} s",
                               host=dst_spec.name)
        # each node's disks go from the host it does not run on, and a host's bridges of
        # this chunk go once none of its nodes is left there
        ends_on_dst = {n.name for n in nodes if not errors or n.name in back_errors}
        for node in nodes:
            for vol in volume_names(node):
                (src if node.name in ends_on_dst else dst).delete_volume(vol)
        for host, left in ((src, len(nodes) - len(ends_on_dst)), (dst, len(ends_on_dst))):
            if not left:
                for net in sorted({i.network for n in nodes for i in n.interfaces}):
                    if project.network(net).kind == "private":
                        host.remove_network(render.network_name(project.name, net))
        if on_dst:
            raise PermanentError(
                f"chunk {change.target} is split: {', '.join(n.name for n in on_dst)} on "
                f"{dst_spec.name}, the rest on {src_spec.name} ({failed}; moving back: " +
                "; ".join(f"{n}: {e}" for n, e in back_errors.items()) + ")")
        if errors:
            raise PermanentError(f"chunk {change.target} stays on {src_spec.name}: {failed}")
        return seconds

    @staticmethod
    def _migrate_all(src: LibvirtHost, dst: LibvirtHost, dst_spec: HostSpec,
                     nodes: list[NodeSpec]) -> dict[str, str]:
        """Live-migrate these nodes from ``src`` to ``dst``, all at once; a dropped
        connection (the guest stayed where it was) is tried again. Returns node -> why, for
        those that are still on ``src`` (after a failure, where the guest is is asked)."""
        dest_uri = str(dst_spec.attributes.get("migration_uri") or dst_spec.uri)
        errors: dict[str, str] = {}

        def one(node: NodeSpec) -> None:
            for attempt in (1, 2, 3):
                try:
                    src.migrate(render.domain_name(node), dest_uri)
                    errors.pop(node.name, None)
                    return
                except TransientError as e:      # the guest stayed where it was
                    errors[node.name] = str(e)
                    time.sleep(attempt)
                except Exception as e:
                    name = render.domain_name(node)
                    with contextlib.suppress(Exception):
                        if src.domain(name) is None and dst.domain(name) is not None:
                            errors.pop(node.name, None)   # it went after all
                            return
                    errors[node.name] = str(e)
                    return

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as ex:
            list(ex.map(one, nodes))
        return errors

    # ------------------------------------------------------------------------- down
    def down(self, project: str) -> Outcome:
        """Stop and remove everything the project made: domains, disks, bridges, leases."""
        t0 = time.monotonic()
        outcome = Outcome()
        with self.store() as store:
            rec = store.get_project(project)
            if rec is None:
                raise PermanentError(f"no project named {project} in {self.state_dir}")
            with store.lock(project):
                hosts = self._project_hosts(store, project)
                self._preflight(hosts)
                self._parallel({h.name: (lambda h=h: self._down_host(h, project, outcome))
                                for h in hosts})
                # cloud workers: their instances terminated, the VPN hub taken down
                from elastic.engine.cloud import teardown
                outcome.removed += teardown(store, project, self.state_dir)
                # web tiers: their balancers stopped (gracefully)
                from elastic.engine.web import stop_balancers
                outcome.removed += stop_balancers(self.state_dir, project)
                for node in store.list_nodes(project):
                    if node.state != State.DONE:
                        self.move_node(store, project, node.name, State.DONE, "elastic down")
                store.release_project(project)
                store.delete_project(project, self.clock.now(), "elastic down")
        outcome.seconds = time.monotonic() - t0
        return outcome

    def _project_hosts(self, store: Store, project: str) -> list[HostSpec]:
        known = {h.name: h for h in store.hosts()}
        rec = store.get_project(project)
        names = set((rec.data or {}).get("hosts", [])) if rec else set()
        names |= {n.host for n in store.list_nodes(project) if n.host and n.site == "private"}
        out = []
        for name in sorted(names):
            h = known.get(name)
            if h is None:
                raise PermanentError(f"project {project} used host {name}, which the state "
                                     "database no longer knows")
            out.append(HostSpec(h.name, h.uri, h.domain_type))
        return out

    def _down_host(self, hspec: HostSpec, project: str, outcome: Outcome) -> None:
        host = self.host(hspec.name, hspec.uri)
        with self.store() as store:
            mine = [d for d in host.domains() if d.project == project]
            # stopping a guest waits for its qemu to exit: stop them all at once first
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(mine))) as ex:
                list(ex.map(lambda d: host.destroy(d.name), mine))
            for dom in mine:
                if dom.project == project:
                    self._remove_domain(store, host, project, dom.node or dom.name, dom.name,
                                        "elastic down")
                    outcome.removed.append(dom.node or dom.name)
            # everything named after the project's nodes and networks, exactly (a prefix
            # would also match another project called e.g. "<project>-test")
            for rec in store.list_nodes(project):
                base = f"{project}-{rec.name}"
                for vol in (f"{base}.qcow2", f"{base}-context.iso", f"{base}.console.log"):
                    host.delete_volume(vol)
            prec = store.get_project(project)
            for net in (prec.data or {}).get("networks", []) if prec else []:
                host.remove_network(net)

    # ------------------------------------------------------------------- start/stop
    def stop(self, project: str) -> Outcome:
        outcome = Outcome()
        with self.store() as store, store.lock(project):
            hosts = {h.name: h for h in self._project_hosts(store, project)}
            for rec in store.list_nodes(project, states=[State.RUNNING, State.BOOT]):
                if rec.site != "private":   # cloud workers are the autoscaler's to remove
                    continue
                hspec = hosts[rec.host]
                host = self.host(hspec.name, hspec.uri)
                self.move_node(store, project, rec.name, State.SHUTDOWN, "elastic stop")
                name = f"{rec.name}.{project}"
                if not host.shutdown(name, SHUTDOWN_TIMEOUT):
                    host.destroy(name)
                self.move_node(store, project, rec.name, State.STOPPED, "elastic stop")
                outcome.removed.append(rec.name)
        return outcome

    # --------------------------------------------------------------------- parallel
    def _parallel(self, jobs: dict[str, Callable[[], None]]) -> None:
        """One thread per host; an error on one host does not stop the others."""
        errors: dict[str, BaseException] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as ex:
            futures = {ex.submit(fn): name for name, fn in jobs.items()}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    fut.result()
                except BaseException as e:
                    errors[futures[fut]] = e
        if errors:
            if len(errors) == 1:
                raise next(iter(errors.values()))
            raise PermanentError("\n".join(f"{h}: {e}" for h, e in sorted(errors.items())))
