"""The CLI as a client of a running `elastic serve` (--api): the changing commands go to the
daemon, which acts (here: fake actions behind the real app, served by uvicorn on loopback),
and the CLI waits for the operation and prints its result."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from elastic.cli.main import cli
from elastic.cli.remote import API_TOKEN_FILE
from tests.unit.test_server_api import PROJECT, FakeActions, fill_state

uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture
def daemon(tmp_path: Path):
    from elastic.server.app import TOKEN_FILE, create_app, load_or_make_token
    assert TOKEN_FILE == API_TOKEN_FILE           # the CLI looks where the server writes
    state = tmp_path / "state"
    fill_state(state)
    token = load_or_make_token(state)
    actions = FakeActions()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state, token=token, actions=actions),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", state, actions
    finally:
        server.should_exit = True
        thread.join(10)


def run(url: str, state: Path, *args: str, token_file: Path | None = None):
    pre = ["--state-dir", str(state), "--api", url]
    if token_file is not None:
        pre += ["--api-token-file", str(token_file)]
    return CliRunner().invoke(cli, [*pre, *args])


def test_add_workers_goes_to_the_daemon_and_prints_its_result(daemon):
    url, state, actions = daemon
    r = run(url, state, "add-workers", "2", PROJECT, "--class", "big", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"nodes": ["worker5", "worker6"], "failed": {}}
    assert actions.calls == [("add_workers", PROJECT, 2, "big")]
    r = run(url, state, "rebalance", PROJECT, "--dry-run")
    assert r.exit_code == 0 and f"done on {url}" in r.stdout, r.output
    assert actions.calls[-1] == ("rebalance", PROJECT, True)
    r = run(url, state, "scale", "web", "3", PROJECT, "-o", "json")
    assert r.exit_code == 0, r.output
    assert actions.calls[-1] == ("scale", PROJECT, "web", 3)


def test_a_failed_operation_and_a_wrong_token_are_errors(daemon, tmp_path):
    url, state, actions = daemon
    r = run(url, state, "remove-workers", "1", PROJECT)
    assert r.exit_code == 1
    assert "failed: no worker can be drained: the queue is unknown" in r.stderr
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    r = run(url, state, "add-workers", "1", PROJECT, token_file=wrong)
    assert r.exit_code == 1 and "refused the token" in r.stderr
    assert [c[0] for c in actions.calls] == ["remove_workers"]      # nothing else started
    r = run(url, state, "add-workers", "1", "nosuchproject")
    assert r.exit_code == 1 and "HTTP 404" in r.stderr


def test_no_daemon_at_the_address_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "state"
    state.mkdir()
    (state / API_TOKEN_FILE).write_text("t\n")
    r = run(f"http://127.0.0.1:{port}", state, "add-workers", "1", "p")
    assert r.exit_code == 1 and "no answer from elastic serve" in r.stderr, r.output
