"""Where each chunk goes. Pure: a function of the project and the hosts' free capacity.

For now: a fixed ``host:`` wins, chunks already placed stay, the rest go first-fit on memory
(largest chunk first). Every choice and every rejection carries its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from elastic.model import Chunk, Project


@dataclass(frozen=True)
class HostCapacity:
    """What a host has for guests (MiB, vcpus); ``used`` is what others already take there."""

    name: str
    memory: int
    vcpus: int
    used_memory: int = 0
    used_vcpus: int = 0
    domain_type: str = "kvm"

    @property
    def free_memory(self) -> int:
        return self.memory - self.used_memory


@dataclass(frozen=True)
class Decision:
    chunk: str
    host: str
    reason: str


@dataclass(frozen=True)
class Rejection:
    chunk: str
    memory: int
    why: dict[str, str]          # host -> why it was rejected

    def __str__(self) -> str:
        lines = [f"chunk {self.chunk} ({self.memory} MiB) fits no host:"]
        lines += [f"  {host}: {why}" for host, why in self.why.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Placement:
    decisions: tuple[Decision, ...]
    rejected: tuple[Rejection, ...]

    def host_of(self, chunk: str) -> str:
        for d in self.decisions:
            if d.chunk == chunk:
                return d.host
        raise KeyError(chunk)

    @property
    def ok(self) -> bool:
        return not self.rejected


def place(project: Project, hosts: Mapping[str, HostCapacity],
          current: Mapping[str, str] | None = None) -> Placement:
    """Place every chunk of ``project``. ``current``: chunk -> host where it already runs."""
    current = current or {}
    free = {h.name: h.free_memory for h in hosts.values()}
    decisions: list[Decision] = []
    rejected: list[Rejection] = []

    def take(chunk: Chunk, host: str, reason: str) -> None:
        free[host] -= chunk.memory
        decisions.append(Decision(chunk.name, host, reason))

    def stay(chunk: Chunk, host: str, reason: str) -> None:
        """A chunk bound to its host (fixed, or running there) stays there if it still fits:
        one that grew past the host's room (more workers) is rejected, never split."""
        if host in free and free[host] < chunk.memory:
            rejected.append(Rejection(chunk.name, chunk.memory, {host: (
                f"{reason}, but {free[host]} MiB are free of {hosts[host].memory} and the "
                f"chunk needs {chunk.memory} MiB")}))
            return
        take(chunk, host, reason)

    pending: list[Chunk] = []
    for chunk in project.chunks:
        if chunk.host is not None:
            stay(chunk, chunk.host, f"fixed by host: {chunk.host} in the spec")
        elif current.get(chunk.name) in hosts:
            stay(chunk, current[chunk.name], "already runs there")
        else:
            pending.append(chunk)
    hypervisor = {n.name: n.hypervisor for n in project.nodes}
    for chunk in sorted(pending, key=lambda c: (-c.memory, c.name)):
        wanted = {hypervisor[n] for n in chunk.nodes if hypervisor[n]}
        why: dict[str, str] = {}
        chosen = None
        for name in sorted(hosts):
            host = hosts[name]
            if wanted and host.domain_type not in wanted:
                why[name] = f"runs {host.domain_type}, the chunk needs {', '.join(sorted(wanted))}"
            elif free[name] < chunk.memory:
                why[name] = (f"{free[name]} MiB free of {host.memory}, the chunk needs "
                             f"{chunk.memory} MiB")
            else:
                chosen = name
                break
        if chosen is None:
            rejected.append(Rejection(chunk.name, chunk.memory, why))
        else:
            take(chunk, chosen, f"first host with room ({free[chosen]} MiB free)")
    return Placement(tuple(decisions), tuple(rejected))
