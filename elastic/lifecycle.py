"""Node lifecycle states (OpenNebula's, kept) and the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "PENDING"      # wanted, nothing made yet
    PROLOG = "PROLOG"        # disk clone and context being made
    BOOT = "BOOT"            # defined and started, not yet ready
    RUNNING = "RUNNING"      # ready (answers on its address / joined)
    DRAINING = "DRAINING"    # takes no new work; waits for running work to end
    SHUTDOWN = "SHUTDOWN"    # being stopped
    STOPPED = "STOPPED"      # stopped, disk kept (elastic stop); can be started again
    EPILOG = "EPILOG"        # disk, context and lease being removed
    DONE = "DONE"            # gone; kept in history only
    MIGRATING = "MIGRATING"  # live migration to another host under way
    FAILED = "FAILED"        # something went wrong; the reason is in the event log


# Every edge, with why it exists.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({
        State.PROLOG,    # placement done, start making it
        State.EPILOG,    # removed from the spec before anything was made
        State.FAILED,    # placement impossible
    }),
    State.PROLOG: frozenset({
        State.BOOT,      # disk and context ready, domain defined and started
        State.EPILOG,    # cancelled: undo what PROLOG made
        State.FAILED,    # clone or context failed
    }),
    State.BOOT: frozenset({
        State.RUNNING,   # the node reported ready
        State.SHUTDOWN,  # cancelled while booting
        State.FAILED,    # boot timeout or the domain died
    }),
    State.RUNNING: frozenset({
        State.DRAINING,  # chosen for removal: stop giving it work
        State.SHUTDOWN,  # stop/down of a node that runs no batch work
        State.MIGRATING, # live migration to another host
        State.FAILED,    # the domain or instance vanished
    }),
    State.DRAINING: frozenset({
        State.SHUTDOWN,  # it runs nothing any more
        State.RUNNING,   # drain cancelled (demand came back)
        State.FAILED,    # vanished while draining
    }),
    State.SHUTDOWN: frozenset({
        State.STOPPED,   # stopped and kept (elastic stop)
        State.EPILOG,    # stopped, now clean up (elastic down / scale-down)
        State.FAILED,    # could not be stopped
    }),
    State.STOPPED: frozenset({
        State.BOOT,      # elastic start
        State.EPILOG,    # elastic down of a stopped project
        State.MIGRATING, # offline move to another host
        State.FAILED,
    }),
    State.EPILOG: frozenset({
        State.DONE,      # everything it had is gone
        State.FAILED,    # cleanup failed; retried from FAILED
    }),
    State.MIGRATING: frozenset({
        State.RUNNING,   # arrived (or migration aborted and it stayed where it was)
        State.STOPPED,   # offline move finished
        State.FAILED,
    }),
    State.FAILED: frozenset({
        State.PROLOG,    # retry from the start
        State.SHUTDOWN,  # a failed node being taken down
        State.EPILOG,    # clean up what is left
        State.RUNNING,   # it was only unreachable and came back
    }),
    State.DONE: frozenset(),
}

# States in which a node exists (or may exist) somewhere and must be accounted for.
LIVE_STATES = frozenset(State) - {State.DONE}


class InvalidTransition(ValueError):
    def __init__(self, src: State, dst: State) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[src])) or "none"
        super().__init__(f"a node cannot go from {src} to {dst} (allowed from {src}: {allowed})")
        self.src, self.dst = src, dst


def can_transition(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[src]


def check_transition(src: State | str, dst: State | str) -> None:
    src, dst = State(src), State(dst)
    if not can_transition(src, dst):
        raise InvalidTransition(src, dst)


def path(src: State | str, dst: State | str) -> list[State]:
    """The shortest chain of allowed moves from ``src`` to ``dst`` (excluding ``src``);
    raises InvalidTransition if there is none. Used to walk a node down (e.g. RUNNING ->
    SHUTDOWN -> EPILOG -> DONE) with every step recorded."""
    src, dst = State(src), State(dst)
    if src == dst:
        return []
    seen = {src: None}
    queue = [src]
    for state in queue:
        for nxt in sorted(TRANSITIONS[state]):
            if nxt == State.FAILED and dst != State.FAILED:
                continue   # a planned walk never passes through FAILED
            if nxt not in seen:
                seen[nxt] = state
                if nxt == dst:
                    out = [nxt]
                    while (prev := seen[out[-1]]) is not None and prev != src:
                        out.append(prev)
                    return out[::-1]
                queue.append(nxt)
    raise InvalidTransition(src, dst)
