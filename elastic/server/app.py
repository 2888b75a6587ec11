"""elastic's HTTP API: what the state DB knows (read-only, open to anyone who can reach the
address) and the operations that change a project (a Bearer token), a status page and
Prometheus metrics.

    from elastic.server.app import create_app, load_or_make_token, serve
    app = create_app(state_dir, token=load_or_make_token(state_dir))
    serve(app, "127.0.0.1", 8765)
    # curl -s localhost:8765/api/v1/nodes?project=sgelab
    # curl -s -X POST -H "Authorization: Bearer $(cat $STATE/api-token)" \\
    #      -d '{"add": 2}' localhost:8765/api/v1/projects/sgelab/workers
    #   -> 202 {"operation": "3f2a...", "state": "running"}
    # curl -s localhost:8765/api/v1/operations/3f2a...   -> running / done / failed

Routes (all JSON but ``/`` and ``/metrics``; the OpenAPI document is
``/api/v1/openapi.json``):

- ``GET /api/v1/projects``, ``/projects/{name}``, ``/nodes``, ``/hosts``, ``/queue``,
  ``/events``, ``/plans``, ``/timeline``, ``/health``, ``/operations``,
  ``/operations/{id}``: no token;
- ``POST /api/v1/projects/{name}/workers`` (``{"add": N, "class": C}`` or
  ``{"remove": N}``), ``/projects/{name}/rebalance`` (``{"dry_run": B}``),
  ``/projects/{name}/tiers/{tier}/scale`` (``{"size": N}``): ``Authorization: Bearer
  <token>``. They answer 202 at once; the work runs in a thread through ``Actions``, its
  progress in ``/operations/{id}`` (kept in memory) and as ``api:<verb>`` events in the
  state DB when it starts and ends;
- ``GET /``: the status page (``elastic.server.page``); ``GET /metrics``: Prometheus.

Each request opens the state DB on its own (read-only, except the events an operation
records), so the server never holds it open between requests and sees what the CLI and the
autoscaler write.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from elastic import __version__
from elastic.clock import Clock, SystemClock
from elastic.errors import ElasticError, TransientError
from elastic.lifecycle import State
from elastic.monitoring import load
from elastic.state import SCHEMA_VERSION, NotFound, Store
from elastic.state.store import EventRecord, NodeRecord, ProjectRecord

log = logging.getLogger(__name__)

API = "/api/v1"
TOKEN_FILE = "api-token"
LOAD_WINDOW = 60.0             # seconds of stored host samples a host's load is averaged over
TIMELINE_SPAN = 6 * 3600.0     # default of /timeline?since= and of the status page
PAGE_EVENTS = 50
KEEP_OPERATIONS = 1000         # finished operations kept in memory (the oldest go first)
MAX_COUNT = 1000
MAX_ID = 2**63 - 1             # SQLite's integers
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"   # what every Prometheus reads

Verb = Literal["add-workers", "remove-workers", "rebalance", "scale"]


# ------------------------------------------------------------------------------ actions

class Actions(Protocol):
    """What the changing routes hand their work to. Each call runs in a thread of its own,
    returns something JSON-able (the operation's result) or raises ``ElasticError``."""

    def add_workers(self, project: str, count: int, cls: str | None) -> Any: ...

    def remove_workers(self, project: str, count: int) -> Any: ...

    def rebalance(self, project: str, dry_run: bool) -> Any: ...

    def scale(self, project: str, tier: str, size: int) -> Any: ...


class EngineActions:
    """``Actions`` done by the engine, the way the CLI does them (add-workers,
    remove-workers, rebalance, scale), on the spec file each project was brought up from.

    ``lock_wait``: seconds to wait for another elastic process working on the project;
    ``drain_wait``: seconds remove-workers waits for drained workers to finish their jobs
    (the rest stay DRAINING; the autoscaler removes them once idle)."""

    LOCK_WAIT = 600.0

    def __init__(self, state_dir: Path, *, lock_wait: float = LOCK_WAIT,
                 drain_wait: float = 600.0, poll: float = 5.0) -> None:
        self.state_dir = Path(state_dir)
        self.lock_wait = lock_wait
        self.drain_wait = drain_wait
        self.poll = poll

    def _spec(self, project: str) -> tuple[Path, bool, Any]:
        from elastic.engine.projects import recorded_spec, resolve_with_state
        spec, lab = recorded_spec(self.state_dir, project)
        return spec, lab, resolve_with_state(spec, self.state_dir, lab=lab)

    @contextlib.contextmanager
    def _cluster(self) -> Iterator[Any]:
        from elastic.engine.cluster import Cluster
        cluster = Cluster(self.state_dir, lock_wait=self.lock_wait)
        try:
            yield cluster
        finally:
            cluster.close()

    @contextlib.contextmanager
    def _autoscaler(self, project: str) -> Iterator[Any]:
        from elastic.engine.controllers import autoscaler
        spec, lab, _resolved = self._spec(project)
        with self._cluster() as cluster, autoscaler(self.state_dir, spec, cluster,
                                                    lab=lab) as scaler:
            yield scaler

    def add_workers(self, project: str, count: int, cls: str | None) -> dict[str, Any]:
        with self._autoscaler(project) as scaler:
            result = scaler.add_workers(count, cls)
        return {"nodes": sorted(result), "failed": {n: why for n, why in result.items() if why}}

    def remove_workers(self, project: str, count: int) -> dict[str, Any]:
        import time
        with self._autoscaler(project) as scaler:
            drained = scaler.drain_workers(count)
            removed, busy = scaler.remove_drained()
            deadline = time.monotonic() + self.drain_wait
            while busy and time.monotonic() < deadline:
                time.sleep(self.poll)
                more, busy = scaler.remove_drained()
                removed += more
        return {"drained": drained, "removed": removed, "still_running_jobs": busy}

    def rebalance(self, project: str, dry_run: bool) -> dict[str, Any]:
        from elastic.engine.rebalance import Rebalancer
        spec, _lab, resolved = self._spec(project)
        with self._cluster() as cluster:
            outcome = Rebalancer(cluster, self.state_dir).run(spec, resolved, dry_run=dry_run)
        plan = outcome.plan
        return {"dry_run": dry_run,
                "overloaded": dict(plan.overloaded),
                "migrations": [dict(m.__dict__) for m in plan.migrations],
                "unplaced": {u: dict(w) for u, w in plan.unplaced.items()},
                "notes": list(outcome.notes),
                "migrated": {u: round(t, 2) for u, t in outcome.migrated.items()},
                "failed": dict(outcome.failed)}

    def scale(self, project: str, tier: str, size: int) -> dict[str, Any]:
        from elastic.engine.web import WebTier
        spec, lab, resolved = self._spec(project)
        with self._cluster() as cluster:
            web = WebTier.build(resolved, tier, cluster, spec, self.state_dir, lab=lab,
                                say=lambda msg: log.info("scale %s/%s: %s", project, tier, msg))
            done = web.scale(size)
            serving = web.record().get("serving", [])
        return {"tier": tier, "size": size, "serving": serving, "done": done}


# ------------------------------------------------------------------------------- models

class Problem(BaseModel):
    detail: str


class ProjectOut(BaseModel):
    name: str
    source: str = Field(description="The spec file it was brought up from.")
    spec_hash: str
    created: float
    updated: float
    lab: bool = False
    nodes: int = Field(description="Nodes that are not DONE.")


class QueueOut(BaseModel):
    """The autoscaler's last look at the batch queue."""

    known: bool | None = None
    at: float | None = Field(None, description="When it was read (epoch seconds).")
    age_seconds: float | None = None
    pending_jobs: int | None = None
    pending_slots: int | None = None
    running_jobs: int | None = None
    held: int | None = None
    errored: int | None = None
    group: str | None = None
    error: str | None = None


class TierOut(BaseModel):
    tier: str
    group: str | None = None
    size: int = Field(description="Front-ends of its group that are not DONE.")
    serving: list[str] = []
    generation: str | None = None
    last_change: float | None = None
    cooldown: float | None = None
    last: dict[str, Any] | None = Field(None, description="The tier's last tick.")
    history: list[dict[str, Any]] = []


class ProjectDetail(ProjectOut):
    nodes_by_state: dict[str, int] = {}
    members: dict[str, list[int]] = Field({}, description="Scaling group -> member indices.")
    tiers: list[TierOut] = []
    queue: QueueOut | None = None
    breakers: dict[str, Any] = {}


class NodeOut(BaseModel):
    project: str
    name: str
    full_name: str
    state: State
    host: str | None
    site: str
    provider_id: str | None
    state_since: float
    created: float
    group: str | None = None
    index: int | None = None
    memory: int | None = Field(None, description="MiB.")
    vcpus: int | None = None


class HostLoadOut(BaseModel):
    """Averaged over the stored samples of the last 60 s (fractions of all the host's CPUs)."""

    t: float
    window: float
    samples: int
    ncpus: int
    cpu: float
    cpu_guests: float
    cpu_own: float
    memory_total_mib: int
    memory_free_mib: int
    memory_assigned_mib: int


class HostOut(BaseModel):
    name: str
    uri: str
    domain_type: str
    memory: int = Field(description="MiB.")
    vcpus: int
    groups: list[str]
    updated: float
    load: HostLoadOut | None = None


class ProjectQueue(BaseModel):
    project: str
    queue: QueueOut | None


class EventOut(BaseModel):
    id: int
    time: float
    project: str | None
    node: str | None
    kind: str
    from_state: State | None
    to_state: State | None
    reason: str
    data: dict[str, Any]


class PlanOut(BaseModel):
    id: int
    project: str
    time: float
    plan: dict[str, Any]


class QueueSampleOut(BaseModel):
    project: str
    t: float
    pending_jobs: int
    pending_slots: int
    running_jobs: int
    workers: dict[str, int] = Field(description="Site -> workers there.")


class HealthOut(BaseModel):
    ok: bool
    version: str
    database: Literal["ok", "absent", "unreadable"]
    schema_version: int | None
    error: str | None = None


class OperationOut(BaseModel):
    id: str
    project: str
    verb: Verb
    args: dict[str, Any]
    state: Literal["running", "done", "failed"]
    started: float
    ended: float | None = None
    result: Any = None
    error: str | None = None


class Accepted(BaseModel):
    operation: str
    state: Literal["running"] = "running"


def _whole(value: Any) -> Any:
    """JSON's integers: 2 and 2.0 (JSON Schema's "integer" takes both), never "2" or true."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a whole number")
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Field before the validator: the other way round, the OpenAPI document would say "ge"/"le"
# instead of "minimum"/"maximum"
_Count = Annotated[int, Field(ge=1, le=MAX_COUNT), BeforeValidator(_whole)]
_Size = Annotated[int, Field(ge=0, le=MAX_COUNT), BeforeValidator(_whole)]


class _Request(BaseModel):
    """A request body: no unknown keys, and no coercion (0 is not false, "2" is not 2), so
    what is accepted is exactly what the OpenAPI document says."""

    model_config = ConfigDict(extra="forbid", strict=True)


class AddWorkers(_Request):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    add: _Count = Field(description="How many workers to add.")
    cls: str | None = Field(None, alias="class", min_length=1, max_length=200,
                            description="Make them of this class of the spec.")


class RemoveWorkers(_Request):
    remove: _Count = Field(description="How many workers to drain and remove.")


class RebalanceIn(_Request):
    dry_run: bool = False


class ScaleIn(_Request):
    size: _Size = Field(description="Front-ends wanted.")


# --------------------------------------------------------------------------- operations

class Operations:
    """The operations of this server, in memory; each one's start and end is also an event
    (``api:<verb>``) in the state DB."""

    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: dict[str, dict[str, Any]] = {}

    def get(self, op_id: str) -> dict[str, Any] | None:
        with self._lock:
            op = self._ops.get(op_id)
            return dict(op) if op else None

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(op) for op in self._ops.values()]

    def start(self, project: str, verb: Verb, args: dict[str, Any], what: str,
              work: Callable[[], Any]) -> str:
        op_id = secrets.token_hex(8)
        op = {"id": op_id, "project": project, "verb": verb, "args": args, "state": "running",
              "started": self.clock.now(), "ended": None, "result": None, "error": None}
        with self._lock:
            self._ops[op_id] = op
            self._forget_old()
        self._event(project, verb, f"operation {op_id} started: {what}",
                    {"operation": op_id, "state": "running", **args})
        threading.Thread(target=self._run, args=(op_id, project, verb, work), daemon=True,
                         name=f"elastic-op-{op_id}").start()
        return op_id

    def _run(self, op_id: str, project: str, verb: Verb, work: Callable[[], Any]) -> None:
        state, result, error = "done", None, None
        try:
            result = _finite(jsonable_encoder(work()))    # NaN and infinities: null
        except ElasticError as e:
            state, error = "failed", str(e) or type(e).__name__
        except Exception as e:    # a bug in an action must not vanish with its thread
            log.exception("operation %s (%s %s) failed", op_id, verb, project)
            state, error = "failed", f"{type(e).__name__}: {e}"
        summary = error if error is not None else _short(result)
        # the event first: whoever sees the operation ended finds its event in the log
        self._event(project, verb, f"operation {op_id} {state}: {summary}",
                    {"operation": op_id, "state": state})
        with self._lock:
            self._ops[op_id].update(state=state, result=result, error=error,
                                    ended=self.clock.now())

    def _event(self, project: str, verb: str, reason: str, data: dict[str, Any]) -> None:
        try:
            with Store.open(self.state_dir) as store:
                store.record_event(project, f"api:{verb}", self.clock.now(), reason=reason,
                                   data=data)
        except ElasticError as e:     # the operation itself goes on; its record is in memory
            log.warning("could not record api:%s of %s: %s", verb, project, e)

    def _forget_old(self) -> None:
        done = [k for k, op in self._ops.items() if op["state"] != "running"]
        for k in done[:max(0, len(self._ops) - KEEP_OPERATIONS)]:
            del self._ops[k]


def _short(result: Any, limit: int = 300) -> str:
    text = json.dumps(result, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------ helpers

class _SafeJSON(JSONResponse):
    """JSON that stays JSON: a float that is not finite (NaN, infinity in some record)
    becomes null instead of a failed response."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _of(x: Any, kind: type) -> Any:
    """``x`` if it is of ``kind`` (a bool is not a number here), else None."""
    if isinstance(x, bool) and kind is not bool:
        return None
    if kind is float:
        return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None
    return x if isinstance(x, kind) else None


def _queue_out(queue: Any, now: float) -> QueueOut | None:
    q = _dict(queue)
    if not q:
        return None
    at = _of(q.get("at"), float)
    return QueueOut(known=_of(q.get("known"), bool), at=at,
                    age_seconds=max(0.0, now - at) if at is not None else None,
                    **{k: _of(q.get(k), int) for k in ("pending_jobs", "pending_slots",
                                                       "running_jobs", "held", "errored")},
                    group=_of(q.get("group"), str), error=_of(q.get("error"), str))


def _tiers_out(p: ProjectRecord, nodes: list[NodeRecord]) -> list[TierOut]:
    out = []
    for name, rec in sorted(_dict(_dict(p.data).get("tiers")).items()):
        rec = _dict(rec)
        group = _of(rec.get("group"), str)
        serving = rec.get("serving")
        history = rec.get("history")
        out.append(TierOut(
            tier=name, group=group,
            size=sum(1 for n in nodes if _dict(n.data).get("group") == group) if group else 0,
            serving=[s for s in serving if isinstance(s, str)] if isinstance(serving, list)
            else [],
            generation=_of(rec.get("generation"), str),
            last_change=_of(rec.get("last_change"), float),
            cooldown=_of(rec.get("cooldown"), float),
            last=_of(rec.get("last"), dict),
            history=[h for h in history if isinstance(h, dict)] if isinstance(history, list)
            else []))
    return out


def _project_out(p: ProjectRecord, nodes: list[NodeRecord]) -> dict[str, Any]:
    return {"name": p.name, "source": p.source, "spec_hash": p.spec_hash, "created": p.created,
            "updated": p.updated, "lab": bool(_dict(p.data).get("lab")), "nodes": len(nodes)}


def _node_out(n: NodeRecord) -> NodeOut:
    data = _dict(n.data)
    return NodeOut(project=n.project, name=n.name, full_name=n.full_name, state=n.state,
                   host=n.host, site=n.site, provider_id=n.provider_id,
                   state_since=n.state_since, created=n.created, group=_of(data.get("group"), str),
                   index=_of(data.get("index"), int), memory=_of(data.get("memory"), int),
                   vcpus=_of(data.get("vcpus"), int))


def _event_out(e: EventRecord) -> EventOut:
    return EventOut(id=e.id, time=e.time, project=e.project, node=e.node, kind=e.kind,
                    from_state=e.from_state, to_state=e.to_state, reason=e.reason,
                    data=_dict(e.data))


_bearer = HTTPBearer(auto_error=False, scheme_name="token",
                     description=f"The API token: the file {TOKEN_FILE} in the state directory.")

Name = Annotated[str, PathParam(description="The project's name.", examples=["sgelab"])]
ProjectQ = Annotated[str | None, Query(description="Only this project.")]
Since = Annotated[float | None, Query(description="Epoch seconds.", allow_inf_nan=False,
                                      ge=-1e12, le=1e12)]


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, what)


# ------------------------------------------------------------------------------ the app

def create_app(state_dir: Path, *, token: str, actions: Actions | None = None,
               clock: Clock | None = None,
               metrics_registry: CollectorRegistry | None = None) -> FastAPI:
    """The API of ``state_dir`` (see the module's docstring). ``token``: what the changing
    routes want after ``Bearer``; ``actions``: who does their work (``EngineActions`` by
    default); ``clock``: the time (``SystemClock`` by default); ``metrics_registry``: what
    ``/metrics`` exports (default: ``elastic.server.metrics.make_registry(state_dir)``)."""
    from elastic.server.metrics import make_registry

    if not token:
        raise ValueError("the API needs a token for its changing routes")
    state_dir = Path(state_dir)
    clock = clock or SystemClock()
    actions = actions if actions is not None else EngineActions(state_dir)
    operations = Operations(state_dir, clock)
    registry = (metrics_registry if metrics_registry is not None
                else make_registry(state_dir, now=clock.now))
    expected = token.encode()

    app = FastAPI(title="elastic", version=__version__,
                  description="A hybrid-cloud elastic cluster manager: its state, and the "
                              "operations that change a project.",
                  openapi_url=f"{API}/openapi.json", docs_url=None, redoc_url=None,
                  default_response_class=_SafeJSON)
    app.state.operations = operations
    app.state.actions = actions

    @app.exception_handler(ElasticError)
    def _elastic_error(_request: Request, e: ElasticError) -> Response:
        if isinstance(e, NotFound):
            return _SafeJSON({"detail": str(e)}, status_code=404)
        headers = {}
        if isinstance(e, TransientError) and e.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(e.retry_after)))
        return _SafeJSON({"detail": str(e)}, status_code=503, headers=headers)

    @contextlib.contextmanager
    def reading() -> Iterator[Store | None]:
        """The state DB, read-only; None when there is none yet."""
        if not Store.exists(state_dir):
            yield None
            return
        with Store.open(state_dir, readonly=True) as store:
            yield store

    def project_or_404(store: Store | None, name: str) -> ProjectRecord:
        rec = store.get_project(name) if store is not None else None
        if rec is None:
            raise _not_found(f"no project named {name!r}")
        return rec

    def authorized(creds: Annotated[HTTPAuthorizationCredentials | None,
                                    Depends(_bearer)]) -> None:
        given = creds.credentials.encode("utf-8", "surrogateescape") if creds else b""
        if not creds or not hmac.compare_digest(given, expected):
            raise HTTPException(401, "a valid API token is needed: Authorization: Bearer "
                                     "<token>", headers={"WWW-Authenticate": "Bearer"})

    errors: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 503: {"model": Problem}}
    changing: dict[int | str, dict[str, Any]] = {
        **errors, 401: {"model": Problem},
        400: {"model": Problem, "description": "The body is not JSON"}}
    auth = [Depends(authorized)]

    # ---------------------------------------------------------------------- reading
    @app.get(f"{API}/projects", response_model=list[ProjectOut], responses=errors,
             tags=["state"])
    def projects() -> list[dict[str, Any]]:
        """Every project of the state DB."""
        with reading() as store:
            if store is None:
                return []
            live = [n for n in store.list_nodes(None) if n.state != State.DONE]
            return [_project_out(p, [n for n in live if n.project == p.name])
                    for p in store.list_projects()]

    @app.get(f"{API}/projects/{{name}}", response_model=ProjectDetail, responses=errors,
             tags=["state"])
    def project(name: Name) -> ProjectDetail:
        """One project: its record, nodes by state, scaling members, tiers, queue."""
        now = clock.now()
        with reading() as store:
            rec = project_or_404(store, name)
            live = [n for n in store.list_nodes(name) if n.state != State.DONE]
        by_state: dict[str, int] = {}
        for n in live:
            by_state[str(n.state)] = by_state.get(str(n.state), 0) + 1
        data = _dict(rec.data)
        members = {g: [i for i in v if isinstance(i, int) and not isinstance(i, bool)]
                   for g, v in _dict(data.get("members")).items() if isinstance(v, list)}
        return ProjectDetail(**_project_out(rec, live), nodes_by_state=by_state,
                             members=members, tiers=_tiers_out(rec, live),
                             queue=_queue_out(data.get("queue"), now),
                             breakers=_dict(_dict(data.get("autoscale")).get("breakers")))

    @app.get(f"{API}/nodes", response_model=list[NodeOut], responses=errors, tags=["state"])
    def nodes(project: ProjectQ = None,
              state: Annotated[list[State] | None, Query(
                  description="Only nodes in these states (repeat it); default: all but "
                              "DONE.")] = None,
              site: Annotated[str | None, Query(description="private, or a cloud's "
                                                            "name.")] = None) -> list[NodeOut]:
        """Nodes, by project and name."""
        with reading() as store:
            if project is not None:
                project_or_404(store, project)
            if store is None:
                return []
            records = store.list_nodes(project, states=state if state else None)
        if not state:
            records = [n for n in records if n.state != State.DONE]
        return [_node_out(n) for n in records if site is None or n.site == site]

    @app.get(f"{API}/hosts", response_model=list[HostOut], responses=errors, tags=["state"])
    def hosts() -> list[HostOut]:
        """The hosts, each with its load from the stored samples (if there are any)."""
        out: list[HostOut] = []
        with reading() as store:
            if store is None:
                return out
            for h in store.hosts():
                got = load(store.samples(h.name, 0.0), LOAD_WINDOW)
                out.append(HostOut(
                    name=h.name, uri=h.uri, domain_type=h.domain_type, memory=h.memory,
                    vcpus=h.vcpus, groups=list(h.groups), updated=h.updated,
                    load=None if got is None else HostLoadOut(
                        t=got.t, window=got.window, samples=got.samples, ncpus=got.ncpus,
                        cpu=got.cpu, cpu_guests=got.cpu_guests, cpu_own=got.cpu_own,
                        memory_total_mib=got.memory_total_mib,
                        memory_free_mib=got.memory_free_mib,
                        memory_assigned_mib=got.memory_assigned_mib)))
        return out

    @app.get(f"{API}/queue", response_model=list[ProjectQueue], responses=errors,
             tags=["state"])
    def queue(project: ProjectQ = None) -> list[ProjectQueue]:
        """The autoscaler's last look at each project's queue."""
        now = clock.now()
        with reading() as store:
            if project is not None:
                recs = [project_or_404(store, project)]
            else:
                recs = store.list_projects() if store is not None else []
        return [ProjectQueue(project=p.name, queue=_queue_out(_dict(p.data).get("queue"), now))
                for p in recs]

    @app.get(f"{API}/events", response_model=list[EventOut], responses=errors,
             tags=["state"])
    def events(project: ProjectQ = None, since: Since = None,
               after: Annotated[int | None, Query(ge=0, le=MAX_ID,
                                                  description="Only events with a larger "
                                                              "id.")] = None,
               limit: Annotated[int, Query(ge=1, le=1000, description="The newest this "
                                                                      "many.")] = 100,
               node: Annotated[str | None, Query(description="Only this node's.")] = None,
               ) -> list[EventOut]:
        """The event log, oldest first (the newest ``limit`` of what matches)."""
        with reading() as store:
            if store is None:
                if project is not None:
                    raise _not_found(f"no project named {project!r}")
                return []
            if project is not None and store.get_project(project) is None \
                    and not store.events(project, limit=1):
                raise _not_found(f"no project named {project!r}")
            got = store.events(project, since, limit, node, after=after)
        return [_event_out(e) for e in got]

    @app.get(f"{API}/plans", response_model=list[PlanOut], responses=errors, tags=["state"])
    def plans(project: ProjectQ = None,
              limit: Annotated[int, Query(ge=1, le=1000, description="The newest this many "
                                                                     "per project.")] = 20,
              ) -> list[PlanOut]:
        """Saved plans, by project, oldest first."""
        with reading() as store:
            if project is not None:
                names = [project_or_404(store, project).name]
            else:
                names = [p.name for p in store.list_projects()] if store is not None else []
            return [PlanOut(id=r.id, project=r.project, time=r.time, plan=_dict(r.plan))
                    for name in names for r in store.plans(name, limit)]

    @app.get(f"{API}/timeline", response_model=list[QueueSampleOut], responses=errors,
             tags=["state"])
    def timeline(project: ProjectQ = None, since: Since = None) -> list[QueueSampleOut]:
        """The queue samples the autoscaler stored (default: of the last 6 hours)."""
        start = since if since is not None else clock.now() - TIMELINE_SPAN
        with reading() as store:
            if project is not None:
                project_or_404(store, project)
            if store is None:
                return []
            samples = store.queue_samples(project, start)
        return [QueueSampleOut(project=s.project, t=s.t, pending_jobs=s.pending_jobs,
                               pending_slots=s.pending_slots, running_jobs=s.running_jobs,
                               workers={k: v for k, v in _dict(s.workers).items()
                                        if isinstance(v, int) and not isinstance(v, bool)})
                for s in samples]

    @app.get(f"{API}/health", response_model=HealthOut,
             responses={503: {"model": HealthOut}}, tags=["state"])
    def health() -> Response:
        """Whether the state DB can be read, and its schema version."""
        if not Store.exists(state_dir):
            body = HealthOut(ok=True, version=__version__, database="absent",
                             schema_version=None)
        else:
            try:
                with Store.open(state_dir, readonly=True) as store:
                    store.list_projects()
                body = HealthOut(ok=True, version=__version__, database="ok",
                                 schema_version=SCHEMA_VERSION)
            except ElasticError as e:
                body = HealthOut(ok=False, version=__version__, database="unreadable",
                                 schema_version=None, error=str(e))
        return _SafeJSON(body.model_dump(), status_code=200 if body.ok else 503)

    @app.get(f"{API}/operations", response_model=list[OperationOut], tags=["operations"])
    def operations_list() -> list[dict[str, Any]]:
        """This server's operations (in memory), oldest first."""
        return operations.all()

    @app.get(f"{API}/operations/{{op_id}}", response_model=OperationOut,
             responses={404: {"model": Problem}}, tags=["operations"])
    def operation(op_id: str) -> dict[str, Any]:
        """One operation: running, done (with its result) or failed (with the error)."""
        op = operations.get(op_id)
        if op is None:
            raise _not_found(f"no operation {op_id!r} (operations are kept in memory: a "
                             "restarted server has forgotten its earlier ones; see the "
                             "api:* events)")
        return op

    # --------------------------------------------------------------------- changing
    def known(name: str, tier: str | None = None) -> None:
        with reading() as store:
            rec = project_or_404(store, name)
        if tier is not None and tier not in _dict(_dict(rec.data).get("tiers")):
            raise _not_found(f"project {name} has no tier {tier!r}")

    def accepted(op_id: str) -> Response:
        return _SafeJSON({"operation": op_id, "state": "running"}, status_code=202,
                         headers={"Location": f"{API}/operations/{op_id}"})

    @app.post(f"{API}/projects/{{name}}/workers", status_code=202, response_model=Accepted,
              responses=changing, dependencies=auth, tags=["operations"])
    def workers(name: Name, body: Annotated[AddWorkers | RemoveWorkers, Body(
            openapi_examples={"add": {"value": {"add": 2}},
                              "remove": {"value": {"remove": 1}}})]) -> Response:
        """Add workers (``add``, optionally of ``class``) or drain and remove them
        (``remove``: cloud first, then the newest; a running job is never killed)."""
        known(name)
        if isinstance(body, AddWorkers):
            args: dict[str, Any] = {"add": body.add, "class": body.cls}
            what = f"add {body.add} workers" + (f" of class {body.cls}" if body.cls else "")
            op = operations.start(name, "add-workers", args, what,
                                  lambda: actions.add_workers(name, body.add, body.cls))
        else:
            op = operations.start(name, "remove-workers", {"remove": body.remove},
                                  f"remove {body.remove} workers",
                                  lambda: actions.remove_workers(name, body.remove))
        return accepted(op)

    @app.post(f"{API}/projects/{{name}}/rebalance", status_code=202, response_model=Accepted,
              responses=changing, dependencies=auth, tags=["operations"])
    def rebalance(name: Name, body: RebalanceIn) -> Response:
        """Measure the hosts and live-migrate chunks off overloaded ones (``dry_run``: plan
        only)."""
        known(name)
        op = operations.start(name, "rebalance", {"dry_run": body.dry_run},
                              "rebalance" + (" (dry run)" if body.dry_run else ""),
                              lambda: actions.rebalance(name, body.dry_run))
        return accepted(op)

    @app.post(f"{API}/projects/{{name}}/tiers/{{tier}}/scale", status_code=202,
              response_model=Accepted, responses=changing, dependencies=auth,
              tags=["operations"])
    def scale(name: Name, tier: Annotated[str, PathParam(description="The web tier.")],
              body: ScaleIn) -> Response:
        """Set a web tier to ``size`` front-ends (within its min and max)."""
        known(name, tier)
        op = operations.start(name, "scale", {"tier": tier, "size": body.size},
                              f"scale tier {tier} to {body.size}",
                              lambda: actions.scale(name, tier, body.size))
        return accepted(op)

    # ------------------------------------------------------------ page and metrics
    as_json = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}}

    @app.get("/", response_class=HTMLResponse, tags=["page"],
             responses={404: {**as_json, "description": "No such project"},
                        503: {**as_json, "description": "The page cannot be made now"}})
    def page(project: ProjectQ = None) -> HTMLResponse:
        """The status page."""
        try:
            from elastic.server.page import render_page
        except ImportError as e:
            raise HTTPException(503, f"the status page is not available: {e}") from None
        from elastic.engine.status import collect
        now = clock.now()
        with reading() as store:
            if project is not None:
                project_or_404(store, project)
            timeline_ = store.queue_samples(project, now - TIMELINE_SPAN) if store else []
            recent = store.events(project, limit=PAGE_EVENTS) if store else []
        kwargs = {"probe": False} if "probe" in inspect.signature(collect).parameters else {}
        status = collect(state_dir, project, **kwargs)
        events_ = [{"time": e.time, "project": e.project, "node": e.node, "kind": e.kind,
                    "reason": e.reason} for e in recent]
        return HTMLResponse(render_page(status, timeline_, events_, now, project=project))

    @app.get("/metrics", response_class=Response, tags=["page"],
             responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Prometheus metrics (text format)."""
        from prometheus_client import generate_latest
        return Response(generate_latest(registry), media_type=METRICS_TYPE)

    return app


# ------------------------------------------------------------------ token and serving

def load_or_make_token(state_dir: Path) -> str:
    """The API token in ``<state_dir>/api-token`` (mode 0600), made on first use."""
    import time
    state_dir = Path(state_dir)
    path = state_dir / TOKEN_FILE
    for _ in range(40):
        try:
            text: str | None = path.read_text().strip()
        except FileNotFoundError:
            text = None
        if text:
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)      # a token others can read is no secret
            return text
        if text is None:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue                   # another process made it first: read theirs
            token = secrets.token_urlsafe(32)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            return token
        time.sleep(0.05)                   # empty: another process may be writing it
    # still empty: left so by someone; a new token replaces it whole
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def serve(app: FastAPI, address: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``app`` with uvicorn until interrupted (SIGINT/SIGTERM)."""
    import uvicorn
    uvicorn.run(app, host=address, port=port, log_level="warning", timeout_keep_alive=5,
                timeout_graceful_shutdown=10)


__all__ = ["API", "Actions", "EngineActions", "Operations", "create_app",
           "load_or_make_token", "serve"]
