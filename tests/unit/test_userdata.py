"""A cloud node's user-data (elastic/adapters/userdata.py): what it carries, that it fits
EC2's limit, and that running it lays down exactly the context and scripts it was given."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

from elastic.adapters.userdata import (
    BOOT_DIR, MAX_USER_DATA, boot_scripts, cloud_context, render_user_data, strip_comments,
)
from elastic.errors import ConfigError
from elastic.spec import load_project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sge" / "cluster-lab-burst.yaml"
SCRIPTS = [ROOT / "contextualization" / n for n in ("lib.sh", "elastic-context.sh",
                                                    "elastic-vpn.sh")] \
    + [ROOT / "images" / "tiny" / "payloads" / "sge" / "elastic-sge"]
VPN = {"VPN_TYPE": "wireguard", "VPN_ADDRESS": "10.250.0.5/24",
       "VPN_PRIVATE_KEY": "cHJpdmF0ZS1rZXktb2YtdGhlLW5vZGUtMzItYnl0ZXM=",
       "VPN_HUB_PUBLIC_KEY": "aHViLXB1YmxpYy1rZXktLS0tLS0tLS0tLS0tLS0tLS0=",
       "VPN_HUB_ENDPOINT": "172.31.255.254:51820", "VPN_ROUTES": "10.77.0.0/24"}


@pytest.fixture(scope="module")
def worker():
    project = load_project(EXAMPLE, counts={"worker": 3})
    node = next(n for n in project.nodes if n.name == "worker3")
    return project, node


def tree_of(project, node):
    return cloud_context(node, project, EXAMPLE.parent,
                         hosts=[("10.250.0.5", "worker3"), ("10.77.0.23", "head")],
                         extra={**VPN, "SGE_MASTER_IP": "10.77.0.23", "SGE_SLOTS": "1"},
                         batch="sge")


def context_sh(tree) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)='((?:[^']|'\\'')*)'$",
                           tree["context.sh"].decode(), re.M))


def test_the_context_is_the_nodes_own_with_eth0_left_to_the_cloud(worker):
    project, node = worker
    tree = tree_of(project, node)
    v = context_sh(tree)
    assert v["HOSTNAME"] == "worker3" and v["ETH0_METHOD"] == "skip"
    assert not [k for k in v if k.startswith("ETH0_") and k != "ETH0_METHOD"]
    # the node's own name and the master, on addresses it can reach: not the private ones
    assert v["HOSTS"] == "10.250.0.5 worker3\n10.77.0.23 head"
    assert v["USER0_NAME"] == "sgeuser" and "USER0_UID" not in v    # names, not numbers
    assert v["VPN_ADDRESS"] == "10.250.0.5/24" and v["SGE_MASTER_IP"] == "10.77.0.23"
    assert tree["files/etc/elastic/sge.conf"] == b"SGE_ROLE=exec\nSGE_MASTER=head\n"
    assert tree["files/etc/elastic/boot.d/30-vpn"].startswith(b"#!/bin/sh")
    assert b"elastic-sge exec" in tree["files/etc/elastic/boot.d/50-sge"]


def test_the_user_data_fits_ec2_and_lays_down_what_it_carries(worker, tmp_path):
    project, node = worker
    tree, scripts = tree_of(project, node), boot_scripts("sge")
    data = render_user_data(tree, scripts, node.fullname)
    assert len(data) <= MAX_USER_DATA
    text = gzip.decompress(data).decode()
    assert text.startswith("#!/bin/sh\n")
    # run it with its directory moved into tmp and the boot itself left out
    here = tmp_path / "boot"
    runnable = text.replace(BOOT_DIR, str(here))
    runnable = runnable.replace(f"exec sh {here}/scripts/elastic-context.sh", "true")
    assert "elastic-context.sh" not in runnable.split("ELASTIC_CONTEXT_DIR=")[1]
    r = subprocess.run(["sh", "-c", runnable], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for name, body in scripts.items():
        assert (here / "scripts" / name).read_bytes() == body
    for name, body in tree.items():   # (the hooks name the scripts' directory: moved too)
        assert (here / "context" / name).read_bytes() == \
            body.replace(BOOT_DIR.encode(), str(here).encode())
    assert oct((here / "context" / "context.sh").stat().st_mode & 0o777) == "0o600"
    assert (here / "context" / "files/etc/elastic/boot.d/30-vpn").stat().st_mode & 0o100
    assert oct(here.stat().st_mode & 0o777) == "0o700"      # it holds the VPN key


def test_binary_files_and_ones_without_a_final_newline_survive(worker, tmp_path):
    tree = {"context.sh": b"A='1'\n", "files/etc/blob": bytes(range(256)),
            "files/etc/nonl": b"no newline at the end"}
    text = render_user_data(tree, {"s.sh": b"#!/bin/sh\necho hi\n"}, "n.p",
                            compress=False).decode()
    here = tmp_path / "boot"
    runnable = text.replace(BOOT_DIR, str(here)).replace(
        f"exec sh {here}/scripts/elastic-context.sh", "true")
    subprocess.run(["sh", "-c", runnable], check=True, capture_output=True, timeout=30)
    for name, body in tree.items():
        assert (here / "context" / name).read_bytes() == body


def test_too_much_for_ec2_is_a_clear_error(worker):
    import os
    project, node = worker
    tree = {**tree_of(project, node), "files/big": os.urandom(20000)}
    with pytest.raises(ConfigError, match="more than EC2 takes"):
        render_user_data(tree, boot_scripts("sge"), node.fullname)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_stripped_scripts_are_still_valid_and_keep_every_command(script, tmp_path):
    """Whole-line comments go (the size limit); no such line may sit inside a quoted string
    of elastic's scripts, or stripping would change the program."""
    original = script.read_bytes()
    stripped = strip_comments(original)
    out = tmp_path / script.name
    out.write_bytes(stripped)
    assert subprocess.run(["sh", "-n", str(out)]).returncode == 0
    kept = [ln for ln in original.decode().splitlines()
            if ln.strip() and not (ln.lstrip().startswith("#") and not ln.startswith("#!"))]
    assert stripped.decode().splitlines() == kept
