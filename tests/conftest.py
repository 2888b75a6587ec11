from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path):
    """write(name, text) -> path: a spec file in a fresh directory (dedented)."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


# Every system test gets the marker `serial`: scripts/test.sh runs them one after another in
# one pytest process (they boot guests under TCG, or use the machine-wide lab, whose
# namespaces, cgroups and local EC2 have fixed names), and the rest (unit, contract,
# simulation: Python only) in a second process beside it at nice 10. Guests beside the lab's
# were tried (the image tests, niced): they slowed the lab's guests' boots from ~20 s to ~50 s
# and the autoscaler's tests failed. So did building the Debian image beside them (nice 19,
# idle I/O): no time gained, and a local-cloud instance then booted too late for its test.
# The exception is the marker `alongside`: system tests that boot no guest and use only
# namespaces (named with a random tag) and loopback ports of their own (the tunnels, the
# balancer, the SSH runner, the browser); a third process runs them, not niced, since they
# wait on timers more than they compute.
@pytest.hookimpl(tryfirst=True)     # before -m selects on it
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("alongside") is not None:
            continue
        if "tests/system/" in item.path.as_posix() or "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)
