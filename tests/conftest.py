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
# fixed names) or whose timing matters get the marker `serial`: scripts/test.sh runs them one
# after another in one pytest process, and the rest in a second process beside it at nice 10,
# so that it takes only the CPU the first leaves: unit, contract and simulation tests, and the
# image tests, which boot their own QEMU in namespaces of their own under generous timeouts.
BESIDE_SYSTEM_MODULES = ("test_debian_image.py", "test_tiny_image.py")


@pytest.hookimpl(tryfirst=True)     # before -m selects on it
def pytest_collection_modifyitems(config, items):
    for item in items:
        system = "tests/system/" in item.path.as_posix()
        if (system and item.path.name not in BESIDE_SYSTEM_MODULES) or \
                "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)
