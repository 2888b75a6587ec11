"""System tier: real libvirtd hosts in the lab (namespaces), real guests under QEMU TCG."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

NEEDS = ("libvirtd", "qemu-system-x86_64", "ip", "genisoimage", "virsh")


def missing_parts() -> list[str]:
    out = [b for b in NEEDS if shutil.which(b) is None]
    if os.geteuid() != 0:
        out.append("root (network namespaces)")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        out.append("libvirt-python")
    return out


@pytest.fixture(scope="session", autouse=True)
def shared_image_cache(tmp_path_factory):
    """One image cache for every state dir of the session (each test has its own state
    dir; the images are the same): $ELASTIC_IMAGE_CACHE, unless the caller set it."""
    if os.environ.get("ELASTIC_IMAGE_CACHE"):
        yield os.environ["ELASTIC_IMAGE_CACHE"]
        return
    os.environ["ELASTIC_IMAGE_CACHE"] = str(tmp_path_factory.mktemp("images"))
    try:
        yield os.environ["ELASTIC_IMAGE_CACHE"]
    finally:
        del os.environ["ELASTIC_IMAGE_CACHE"]


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """Two lab hosts for the whole session (made once: ~seconds), removed at the end."""
    missing = missing_parts()
    if missing:
        pytest.skip("system tests need: " + ", ".join(missing))
    from elastic.adapters.lab import Lab
    root = Path(os.environ.get("ELASTIC_TEST_LAB", tmp_path_factory.mktemp("state") / "lab"))
    lab = Lab(root)
    info = lab.up(2, memory_mib=3072)
    try:
        yield info
    finally:
        lab.down()


def pytest_collection_modifyitems(session, config, items):
    """test_lab.py makes and removes a lab of its own, and lab namespace names are
    machine-wide: it runs first, before the session's shared `lab` fixture exists (else it
    would have to skip)."""
    own = [i for i in items if i.nodeid.startswith("tests/system/test_lab.py")]
    if own:
        rest = [i for i in items if i not in own]
        first_system = next((n for n, i in enumerate(rest)
                             if i.nodeid.startswith("tests/system/")), len(rest))
        items[:] = rest[:first_system] + own + rest[first_system:]
