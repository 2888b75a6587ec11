"""Polling for the system tests: wait until something a user would see is true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.3,
             explain: Callable[[], str] | None = None) -> Any:
    """``check()``'s first true value, asked every ``every`` s; after ``timeout`` s an
    AssertionError naming ``what`` (and what ``explain()`` says about the state then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(every)
