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
