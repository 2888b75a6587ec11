"""The SSH runner against a real SSH server: dropbear, in a network namespace made here,
listening on that namespace's loopback, with root's home replaced (a private mount
namespace) by a temporary one holding elastic's own key. Nothing outside the namespace sees
the server; the machine's /root is not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from elastic.adapters import net
from elastic.adapters.keys import ensure_key
from elastic.adapters.run import SSH, CommandFailed, CommandTimeout
from elastic.errors import PermanentError, TransientError

# alongside: only namespaces and loopback ports of its own, no guests (see tests/conftest.py)
pytestmark = [pytest.mark.system, pytest.mark.alongside]


def _missing() -> list[str]:
    out = [b for b in ("dropbear", "unshare", "ip") if shutil.which(b) is None]
    if os.geteuid() != 0:
        out.append("root (network namespaces)")
    return out


@pytest.fixture()
def server(tmp_path):
    missing = _missing()
    if missing:
        pytest.skip("the SSH runner test needs: " + ", ".join(missing))
    ns = f"elastic-t-ssh-{uuid.uuid4().hex[:6]}"
    net.create_netns(ns)
    net.link_up("lo", ns=ns)
    home = tmp_path / "root"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)
    (home / ".ssh").chmod(0o700)
    key = tmp_path / "keys" / "test"
    (home / ".ssh" / "authorized_keys").write_text(ensure_key(key) + "\n")
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    hostkey = tmp_path / "hostkey"
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(hostkey)], check=True,
                   capture_output=True, timeout=30)
    log = open(tmp_path / "dropbear.log", "wb")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, "unshare", "--mount", "sh", "-c",
         f'mount --bind "{home}" /root && exec dropbear -F -E -s -r "{hostkey}" '
         '-p 127.0.0.1:2222'], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                net.connect_in_netns(ns, "127.0.0.1", 2222, timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "dropbear.log").read_text()
                assert time.monotonic() < deadline, "dropbear did not listen"
                time.sleep(0.1)
        yield ns, key, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        net.delete_netns(ns)


def test_commands_run_on_the_server_with_env_input_cwd_and_exit_codes(server):
    ns, key, tmp = server
    ssh = SSH("127.0.0.1", port=2222, key=key, via_netns=ns)
    try:
        r = ssh(["sh", "-c", 'echo "$GREETING from $(id -u) in $(pwd)"; echo oops >&2'],
                env={"GREETING": "it's me"}, cwd="/tmp", timeout=20)
        assert r.returncode == 0
        assert r.stdout == "it's me from 0 in /tmp\n"
        assert r.stderr == "oops\n"
        assert ssh(["cat"], input="line 1\nline 2\n", timeout=20).stdout == "line 1\nline 2\n"
        big = ssh(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"], timeout=30).stdout
        assert len(big) == 3_000_000
        with pytest.raises(CommandFailed, match="exited 3"):
            ssh(["sh", "-c", "exit 3"], timeout=20)
        assert ssh(["sh", "-c", "exit 3"], check=False, timeout=20).returncode == 3
        with pytest.raises(CommandTimeout):
            ssh(["sleep", "30"], timeout=1)
        # the connection is made again after it dropped
        ssh.close()
        assert ssh(["echo", "again"], timeout=20).stdout == "again\n"
    finally:
        ssh.close()


def test_a_foreign_key_and_a_dead_server_are_clear_errors(server):
    ns, key, tmp = server
    other = tmp / "keys" / "other"
    ensure_key(other)
    with pytest.raises(PermanentError, match="not accepted"):
        SSH("127.0.0.1", port=2222, key=other, via_netns=ns)(["true"], timeout=10)
    with pytest.raises(TransientError, match="cannot connect"):
        SSH("127.0.0.1", port=2223, key=key, via_netns=ns, connect_attempts=1)(
            ["true"], timeout=10)
