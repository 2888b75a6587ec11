"""Autoscaling decision: ``decide(snapshot, workers, spec, shape, capacity, memory, now)``
returns a Plan whose every action says why. Pure: no I/O, no clock, no randomness."""

from elastic.policy.decide import decide
from elastic.policy.types import (
    PRIVATE,
    Action,
    Capacity,
    LaunchOutcome,
    Memory,
    Plan,
    WorkerShape,
    WorkerView,
    reset_breaker,
)

__all__ = ["PRIVATE", "Action", "Capacity", "LaunchOutcome", "Memory", "Plan", "WorkerShape",
           "WorkerView", "decide", "reset_breaker"]
