"""What decide() reads and returns. Frozen; built by the engine from the state DB, the
providers and the batch system.

Times are epoch seconds (float), given by the caller; sizes are MiB.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from elastic.lifecycle import State

if TYPE_CHECKING:
    from elastic.model import NodeSpec

PRIVATE = "private"   # the site name of the private hosts; any other site is a cloud


@dataclass(frozen=True)
class WorkerShape:
    """What one new worker of the group brings: batch slots (= vcpus) and memory (MiB)."""

    slots: int
    memory: int = 0            # 0: unknown, jobs' memory requests are ignored

    @classmethod
    def of(cls, node: NodeSpec) -> WorkerShape:
        return cls(slots=node.vcpus, memory=node.memory)


@dataclass(frozen=True)
class WorkerView:
    """One worker of the group as the engine sees it this tick.

    ``running_jobs``/``slots_used`` come from the batch system (qstat/qhost), ``joined`` is
    True once the worker is an execution host of the batch system, ``idle_since`` is when it
    last ran its last job (None while it runs something). A launched worker is in the state
    DB (PENDING) from the tick after its launch: that is how booting workers are counted.
    """

    name: str
    site: str                  # 'private' or a cloud name
    state: State
    created: float             # when it was launched
    state_since: float
    slots: int
    running_jobs: int = 0
    slots_used: int = 0
    idle_since: float | None = None
    joined: bool = False
    host: str | None = None    # the hypervisor host (private) or instance id (cloud)

    @property
    def is_cloud(self) -> bool:
        return self.site != PRIVATE

    @property
    def busy(self) -> bool:
        return self.running_jobs > 0 or self.slots_used > 0


@dataclass(frozen=True)
class Capacity:
    """How many more workers of the group's shape fit now, per site. The engine computes
    ``private`` from placement (free memory on the hosts) and each cloud's entry from its
    limits (max_nodes, budget). A cloud named in ``scaling.burst`` but missing here is not
    connected."""

    private: int = 0
    clouds: Mapping[str, int] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)   # site -> what limits its room

    def at(self, site: str) -> int | None:
        """Room at one site; None for a cloud that is not connected."""
        if site == PRIVATE:
            return self.private
        return self.clouds.get(site)


@dataclass(frozen=True)
class LaunchOutcome:
    """What became of one earlier launch, told by the engine: ``ok`` when the worker joined
    the batch system, not ok when the provider refused or failed it. Boot timeouts are found
    by decide() itself (it sees the worker) and must not be reported again."""

    site: str
    ok: bool
    node: str | None = None
    detail: str = ""
    fatal: bool = False        # will not go away by itself (credentials refused): breaker now


@dataclass(frozen=True)
class Memory:
    """What the policy carries from one tick to the next (kept in the state DB)."""

    last_change_at: float | None = None        # last launch or drain (cooldown)
    consecutive_failures: int = 0              # launch failures in a row, all sites
    site_failures: Mapping[str, int] = field(default_factory=dict)    # in a row, per site
    backoff_until: Mapping[str, float] = field(default_factory=dict)  # no launch there before
    breakers: Mapping[str, str] = field(default_factory=dict)  # site -> why its breaker is open
    timed_out: frozenset[str] = frozenset()    # workers whose boot timeout is already counted

    @property
    def breaker_open(self) -> bool:
        return bool(self.breakers)

    def to_dict(self) -> dict[str, Any]:
        return {"last_change_at": self.last_change_at,
                "consecutive_failures": self.consecutive_failures,
                "site_failures": dict(self.site_failures),
                "backoff_until": dict(self.backoff_until), "breakers": dict(self.breakers),
                "timed_out": sorted(self.timed_out)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Memory:
        return cls(last_change_at=d.get("last_change_at"),
                   consecutive_failures=int(d.get("consecutive_failures", 0)),
                   site_failures=dict(d.get("site_failures", {})),
                   backoff_until=dict(d.get("backoff_until", {})),
                   breakers=dict(d.get("breakers", {})),
                   timed_out=frozenset(d.get("timed_out", ())))


def reset_breaker(memory: Memory, site: str | None = None) -> Memory:
    """The operator fixed the cause: close the breaker of ``site`` (of every site if None)
    and forget its failures and backoff."""
    def keep(s: str) -> bool:
        return site is not None and s != site
    return replace(memory,
                   consecutive_failures=0 if site is None else memory.consecutive_failures,
                   site_failures={s: n for s, n in memory.site_failures.items() if keep(s)},
                   backoff_until={s: t for s, t in memory.backoff_until.items() if keep(s)},
                   breakers={s: r for s, r in memory.breakers.items() if keep(s)})


ActionKind = Literal["launch", "drain", "undrain", "remove", "replace", "reschedule"]


@dataclass(frozen=True)
class Action:
    """One thing to do, with the sentence that says why.

    - launch  (site, count): make ``count`` new workers at ``site``.
    - drain   (node): stop giving it work (qmod -d); it is removed once it runs nothing.
    - undrain (node): demand came back: give it work again instead of launching.
    - remove  (node): drained and empty: remove it from the batch system, then destroy the VM.
    - replace (node): it never joined (boot timeout) or FAILED before joining: destroy it;
      its place is free for a launch in the same plan when demand still needs one.
    - reschedule (node): it FAILED after joining (its machine is gone: a spot
      interruption): its jobs are requeued elsewhere (the batch system would only after its
      own timeouts, if at all); it is removed once it shows none.
    """

    kind: ActionKind
    reason: str
    site: str | None = None
    count: int = 0
    node: str | None = None

    def __str__(self) -> str:
        what = f"{self.kind} {self.count} on {self.site}" if self.kind == "launch" \
            else f"{self.kind} {self.node}"
        return f"{what}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """What to do this tick, in order (replace and remove before launch, so max_workers
    holds at every moment), why, and the memory for the next tick."""

    actions: tuple[Action, ...]
    notes: tuple[str, ...]
    memory: Memory

    def of_kind(self, kind: str) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == kind)

    @property
    def launched(self) -> int:
        return sum(a.count for a in self.actions if a.kind == "launch")

    def __str__(self) -> str:
        lines = [str(a) for a in self.actions] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines) or "nothing to do"
