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
# fixed names) run one after another in one xdist group; everything else (unit, contract,
# simulation, the image tests with their own namespaces, WireGuard/OpenVPN between namespaces
# of their own) runs beside them in the other (scripts/test.sh: -n 2 --dist loadgroup).
LAB_MODULES = ("test_lab.py", "test_autoscale_sge.py", "test_burst.py", "test_cloudlab.py",
               "test_sge_capture.py", "test_sge_guests.py", "test_up.py", "test_upgrade.py",
               "test_monitor.py", "test_rebalance.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        uses_lab = item.path.name in LAB_MODULES or "lab" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("lab" if uses_lab else "beside"))
