"""The shipped examples: every spec under examples/ loads, and the head node's systemd units
run commands that this CLI accepts (an option renamed would otherwise only show up on a
real head node)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from elastic.cli.main import cli
from elastic.spec import load_project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# specs for the lab: their hosts are the lab's (`elastic up --lab`), given here as a lab
# of two hosts would give them
LAB_HOSTS = """
hosts:
  h1: {uri: "qemu:///system?socket=/tmp/h1.sock", type: qemu, memory: 3G, vcpus: 2}
  h2: {uri: "qemu:///system?socket=/tmp/h2.sock", type: qemu, memory: 3G, vcpus: 2}
"""


@pytest.mark.parametrize("spec", sorted(p.relative_to(EXAMPLES).as_posix() for p in
                                        EXAMPLES.rglob("*.yaml")))
def test_every_example_spec_loads(spec: str, tmp_path: Path) -> None:
    path = EXAMPLES / spec
    text = path.read_text()
    if "hosts:" not in text:
        (tmp_path / "hosts.yaml").write_text(LAB_HOSTS)
        path = tmp_path / path.name
        path.write_text(f"include: [{tmp_path / 'hosts.yaml'}]\n" + text)
    project = load_project(path)
    assert project.nodes or project.scaling or project.frontends


def test_the_head_node_example_has_every_part() -> None:
    project = load_project(EXAMPLES / "head-node" / "cluster.yaml")
    assert [h.name for h in project.hosts] == ["node1", "node2", "node3"]
    assert all(h.uri.startswith("qemu+ssh://") and h.domain_type == "kvm"
               for h in project.hosts)
    assert project.scaling.burst == ["ec2"] and "www" in project.frontends
    assert [n.name for n in project.nodes] == ["head", "web1", "web2"]   # the tier's min


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


@pytest.mark.parametrize("unit", ["elastic-autoscale.service", "elastic-serve.service"])
def test_the_systemd_units_run_commands_the_cli_accepts(unit: str) -> None:
    parser = _unit(EXAMPLES / "head-node" / unit)
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    service = parser["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/elastic/.venv/bin/elastic"
    assert "ELASTIC_STATE_DIR=/var/lib/elastic" in service["Environment"]
    assert service["StateDirectory"] == "elastic"
    # the arguments parse: the command exists and takes these options (--help is eager:
    # it answers after the options were parsed, before the spec file is looked for)
    r = CliRunner().invoke(cli, [*argv[1:], "--help"], prog_name="elastic")
    assert r.exit_code == 0, r.output
    assert f"Usage: elastic {argv[argv.index('-v') + 1] if '-v' in argv else argv[1]}" \
        in r.output
    assert parser["Install"]["WantedBy"] == "multi-user.target"
