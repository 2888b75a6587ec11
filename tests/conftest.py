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


# The system tests that use the machine-wide lab (its namespaces, cgroups and local EC2 have
# fixed names) get the marker `lab`: scripts/test.sh runs them one after another in one pytest
# process, and everything else (unit, contract, simulation, the image tests with namespaces of
# their own, WireGuard/OpenVPN between namespaces of their own) in a second one beside it.
LAB_MODULES = ("test_lab.py", "test_autoscale_sge.py", "test_burst.py", "test_cloudlab.py",
               "test_sge_capture.py", "test_sge_guests.py", "test_up.py", "test_upgrade.py",
               "test_monitor.py", "test_rebalance_lab.py")


@pytest.hookimpl(tryfirst=True)     # before -m selects on it
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in LAB_MODULES or "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)
