"""The command line as a user sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from elastic import __version__
from elastic.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
SGE = ROOT / "examples" / "sge" / "cluster.yaml"
WEBFARM = ROOT / "examples" / "mln" / "webfarm.mln"


def run(*args: str, state: Path | None = None):
    pre = ["--state-dir", str(state)] if state else []
    return CliRunner().invoke(cli, [*pre, *args])


def test_version() -> None:
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_validate_the_example(tmp_path: Path) -> None:
    r = run("validate", str(SGE), state=tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert "valid: project sge, 5 nodes" in r.output
    data = json.loads(run("validate", str(SGE), "--output", "json").output)
    assert data == {"valid": True, "project": "sge", "nodes": 5, "networks": 1, "hosts": 1,
                    "chunks": 1, "classes": 3}


def test_plan_json_has_every_node_with_addresses_and_chunks(tmp_path: Path) -> None:
    r = run("plan", str(SGE), "-o", "json", state=tmp_path / "s")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert list(nodes) == ["head", "worker1", "worker2", "worker3", "worker4"]
    head = nodes["head"]
    assert head["classes"] == ["head", "base"]
    assert head["interfaces"][0]["address"] == "10.20.0.2"
    assert head["interfaces"][0]["mac"] == "02:00:0a:14:00:02"
    assert data["chunks"] == [{"name": "cluster", "nodes": list(nodes), "networks": ["cluster"],
                               "memory": 256 + 4 * 128, "vcpus": 1 + 4 * 2, "host": None}]
    assert not (tmp_path / "s").exists(), "plan must not create a state database"


def test_plan_text_shows_nodes_and_chunks(tmp_path: Path) -> None:
    r = run("plan", str(SGE), state=tmp_path / "s")
    assert r.exit_code == 0, r.output
    for text in ("worker4", "10.20.0.13", "02:00:0a:14:00:0d", "worker > base", "cluster",
                 "768M"):
        assert text in r.output, text


def test_plan_keeps_addresses_leased_before(tmp_path: Path, write) -> None:
    from elastic.state import Store
    spec = write("c.yaml", """
project: keep
networks: {lan: {cidr: 10.0.0.0/24, gateway: 10.0.0.1}}
nodes:
  w: {image: tiny, count: 2, interfaces: {eth0: {network: lan}}}
""")
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_project("keep", str(spec), "0" * 64, 1.0)
        store.add_node("keep", "w2", 1.0)
        store.lease("keep", "lan", "10.0.0.9", "w2", "eth0", "02:00:0a:00:00:09", 1.0)
    data = json.loads(run("plan", str(spec), "-o", "json", state=state).output)
    assert [n["interfaces"][0]["address"] for n in data["nodes"]] == ["10.0.0.2", "10.0.0.9"]


def test_import_mln_prints_yaml_that_resolves_to_the_same_project(tmp_path: Path) -> None:
    r = run("import-mln", str(WEBFARM))
    assert r.exit_code == 0, r.output
    converted = tmp_path / "webfarm.yaml"
    converted.write_text(r.output)
    doc = yaml.safe_load(r.output)
    assert doc["project"] == "webfarm"
    as_yaml = json.loads(run("plan", str(converted), "-o", "json").output)
    as_mln = json.loads(run("plan", str(WEBFARM), "-o", "json").output)
    assert as_yaml["nodes"] == as_mln["nodes"]
    www1 = {n["name"]: n for n in as_mln["nodes"]}["www1"]
    ifaces = {i["name"]: i for i in www1["interfaces"]}
    assert ifaces["eth0"]["address"] == "10.0.0.1" and ifaces["eth0"]["network"] == "lan"
    assert ifaces["eth1"]["address"] == "128.39.73.101"
    assert ifaces["eth1"]["gateway"] == "128.39.73.1"
    assert www1["classes"] == ["webserver", "common"]
    assert (www1["memory"], www1["disk"], www1["image"]) == (128, 2048, "ubuntu-server.ext3")


def test_bad_input_exit_code_and_stderr_from_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("project: demo\nclasses:\n  webserver: {image: tiny}\nnodes:\n"
                   "  web:\n    class: webserverr\n")
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "validate", str(bad)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 2
    assert p.stdout == ""
    assert ("cluster.yaml:6: nodes.web.class: unknown class 'webserverr' "
            "(did you mean 'webserver'?)") in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    r = run("plan", str(tmp_path / "nope.yaml"))
    assert r.exit_code == 2
    assert "file not found" in r.stderr


def test_console_finds_the_node_and_its_host(tmp_path: Path) -> None:
    from elastic.engine.status import console_command
    from elastic.errors import PermanentError
    from elastic.state import Store
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_host("h1", "qemu:///system?socket=/x/sock", 1.0, domain_type="qemu")
        for project in ("a", "b"):
            store.put_project(project, f"{project}.yaml", "0" * 64, 1.0)
            store.add_node(project, "web", 1.0, host="h1")
    assert console_command(state, "web.a") == ["virsh", "-c", "qemu:///system?socket=/x/sock",
                                               "console", "web.a"]
    import pytest
    with pytest.raises(PermanentError, match="several projects"):
        console_command(state, "web")
    with pytest.raises(PermanentError, match="no node nope"):
        console_command(state, "nope")


def test_autoscale_needs_a_scaling_section_and_a_known_batch_system(tmp_path: Path, write) -> None:
    spec = write("c.yaml", "project: p\nnodes:\n  a: {image: tiny}\n")
    r = run("autoscale", "--once", str(spec), state=tmp_path / "s")
    assert r.exit_code == 2 and "no scaling: or frontends: section, nothing to autoscale" in r.stderr
    spec = write("d.yaml", """
project: q
nodes:
  head: {image: tiny}
  worker: {image: tiny, count: 0}
scaling: {group: worker, batch: {system: slurm, master: head}}
""")
    r = run("autoscale", "--once", str(spec), state=tmp_path / "s")
    assert r.exit_code == 2 and "slurm is not supported yet" in r.stderr
    r = run("add-workers", "2", "nosuchproject", state=tmp_path / "s")
    assert r.exit_code == 1 and "no project named nosuchproject" in r.stderr


def test_status_shows_a_host_that_does_not_answer_and_the_nodes(tmp_path: Path) -> None:
    from elastic.lifecycle import State
    from elastic.state import Store
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_host("h9", f"qemu:///system?socket={tmp_path}/none/sock", 1.0,
                       domain_type="qemu", memory=1024)
        store.put_project("p", "p.yaml", "0" * 64, 1.0)
        store.add_node("p", "a", 1.0, host="h9", data={"memory": 128, "vcpus": 1})
        for s in (State.PROLOG, State.BOOT, State.RUNNING):
            store.transition("p", "a", s, "ready: answered on 10.0.0.5", 2.0)
        store.lease("p", "lan", "10.0.0.5", "a", "eth0", "02:00:0a:00:00:05", 2.0)
        store.record_event("p", "decision:launch", 3.0, reason="2 slots wait: launching 1")
    r = run("status", "-o", "json", state=state)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    host = data["hosts"][0]
    assert host["name"] == "h9" and host["answers"] is False and host["error"]
    assert host["memory_assigned"] == 128 and host["projects"] == ["p"]
    node = data["nodes"][0]
    assert (node["name"], node["state"], node["addresses"][0]["address"]) == \
        ("a", "RUNNING", "10.0.0.5")
    assert node["reason"] == "ready: answered on 10.0.0.5" and node["uptime"] > 0
    assert data["decisions"][-1]["reason"] == "2 slots wait: launching 1"
    text = run("status", state=state).output
    assert "a.p" in text and "RUNNING" in text and "launching 1" in text


def test_shell_completion_scripts_complete_commands() -> None:
    r = run("completion", "bash")
    assert r.exit_code == 0 and "_ELASTIC_COMPLETE=bash_complete" in r.output
    # what the script asks for: the commands that start with "sc"
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT,
                       env={"PATH": "/usr/bin:/bin", "COMP_WORDS": "elastic sc",
                            "COMP_CWORD": "1", "_ELASTIC_COMPLETE": "bash_complete"})
    assert "plain,scale" in p.stdout.split(), p.stdout + p.stderr
    assert run("completion", "tcsh").exit_code == 2


def test_json_logs_are_one_object_per_line_with_the_callers_fields() -> None:
    import io
    import logging

    from elastic.cli import logs
    buf = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logs.setup(1, "json", buf)
        logging.getLogger("elastic.engine.web").info("web2 joined", extra={"node": "web2"})
        logging.getLogger("elastic.engine.web").debug("not at -v")
        logging.getLogger("botocore").info("chatty library")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    (line,) = buf.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"], record["node"]) == \
        ("INFO", "elastic.engine.web", "web2 joined", "web2")
    assert record["time"].endswith("+0000")
    assert logs.level_for(0) == logging.WARNING and logs.level_for(5) == logging.DEBUG
