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


# Every system test (they boot VMs under TCG, or use the machine-wide lab whose namespaces,
# cgroups and local EC2 have fixed names) gets the marker `serial`: scripts/test.sh runs them one
# after another in one pytest process, and the rest (unit, contract, simulation: Python only)
# in a second process beside it, at a lower CPU priority, so that guests boot as fast as alone.
@pytest.hookimpl(tryfirst=True)     # before -m selects on it
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/system/" in item.path.as_posix() or "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)
