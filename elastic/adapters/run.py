"""The one place that runs external commands: locally, inside a network namespace, or over
SSH on another machine. Every call has a timeout; failures become typed errors.

    from elastic.adapters.run import run, SSH
    out = run(["qemu-img", "info", path], timeout=30).stdout
    run(["ip", "link"], netns="elastic-lab-h1", timeout=10)
    head = SSH("10.77.0.20", key=Path("keys/sge"), via_netns="elastic-front")
    head(["qstat", "-xml"], timeout=30).stdout        # the same call, on the head node

``run`` and an ``SSH`` object are both *runners*: callables with the same keywords and the
same ``Result``, so an adapter (the Grid Engine one) takes either and does not care where
its commands run.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elastic.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(PermanentError):
    """A command ran and exited non-zero."""

    def __init__(self, result: Result) -> None:
        self.result = result
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        super().__init__(f"{shlex.join(result.argv)} exited {result.returncode}"
                         + (": " + " | ".join(tail) if tail else ""))


class CommandTimeout(TransientError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{shlex.join(argv)} did not finish in {timeout:g} s")
        self.argv = tuple(argv)


class CommandMissing(PermanentError):
    pass


def wrap(argv: Sequence[str], netns: str | None = None) -> list[str]:
    """The argv that runs ``argv`` inside network namespace ``netns`` (if given)."""
    argv = [str(a) for a in argv]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def run(argv: Sequence[str | Path], *, timeout: float = DEFAULT_TIMEOUT, check: bool = True,
        input: str | bytes | None = None, netns: str | None = None,
        env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
        binary: bool = False) -> Result:
    """Run a command to completion. Raises CommandTimeout (the process is killed),
    CommandMissing, or CommandFailed when ``check`` and it exits non-zero."""
    full = wrap([str(a) for a in argv], netns)
    merged_env = None if env is None else {**os.environ, **env}
    log.debug("run: %s", shlex.join(full))
    try:
        p = subprocess.run(full, capture_output=True, timeout=timeout, input=input,
                           env=merged_env, cwd=cwd, text=not binary)
    except subprocess.TimeoutExpired:
        raise CommandTimeout(full, timeout) from None
    except FileNotFoundError:
        raise CommandMissing(f"{full[0]}: command not found (run scripts/setup.sh)") from None
    out = p.stdout if not binary else p.stdout.decode(errors="replace")
    err = p.stderr if not binary else p.stderr.decode(errors="replace")
    result = Result(tuple(full), p.returncode, out, err)
    if check and p.returncode != 0:
        raise CommandFailed(result)
    return result


def spawn(argv: Sequence[str | Path], *, log_file: Path, netns: str | None = None,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running process (a daemon kept in the foreground) in its own session,
    its output appended to ``log_file``. The caller supervises it."""
    full = wrap([str(a) for a in argv], netns)
    log.debug("spawn: %s", shlex.join(full))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        try:
            return subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=None if env is None else {**os.environ, **env})
        except FileNotFoundError:
            raise CommandMissing(f"{full[0]}: command not found (run scripts/setup.sh)") from None


# ------------------------------------------------------------------------------ over SSH

def _worth_retrying(e: BaseException) -> bool:
    """Connecting again helps after a refused or dropped connection, not after a refused
    key or a changed host key."""
    import paramiko
    if isinstance(e, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
        return False
    return isinstance(e, (OSError, EOFError, paramiko.SSHException))


class SSH:
    """A runner whose commands run on ``host`` over SSH (paramiko), as ``user`` with the
    private key ``key``. ``via_netns``: the TCP connection is made from inside that network
    namespace (the lab's front namespace reaches guests on the lab LAN).

    One connection is kept and made again when it drops; connecting is retried (it is safe
    to); a command is never retried (it might not be idempotent). Host keys are trusted on
    first use and then pinned for the life of this object: a machine that changes its key
    while we talk to it is refused. Environment variables travel as an ``env`` prefix (SSH
    servers refuse most SetEnv requests); ``cwd`` as a ``cd``. A command that outlives its
    timeout has its channel closed (the remote process gets no signal).
    """

    def __init__(self, host: str, *, key: Path, user: str = "root", port: int = 22,
                 via_netns: str | None = None, connect_timeout: float = 10.0,
                 connect_attempts: int = 3) -> None:
        self.host = host
        self.key = Path(key)
        self.user = user
        self.port = int(port)
        self.via_netns = via_netns
        self.connect_timeout = connect_timeout
        self.connect_attempts = connect_attempts
        self._client: Any = None
        self._host_keys: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        via = f" (from {self.via_netns})" if self.via_netns else ""
        return f"{self.user}@{self.host}:{self.port}{via}"

    def __repr__(self) -> str:
        return f"SSH({self.where})"

    # -------------------------------------------------------------- connection
    def _connect(self) -> Any:
        import paramiko
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

        from elastic.adapters import net

        try:
            pkey = paramiko.PKey.from_path(self.key)
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise PermanentError(f"ssh {self.where}: cannot read the key {self.key}: {e}") \
                from None

        @retry(stop=stop_after_attempt(self.connect_attempts),
               wait=wait_exponential(multiplier=0.5, max=4), reraise=True,
               retry=retry_if_exception(_worth_retrying))
        def attempt() -> Any:
            sock = net.connect_in_netns(self.via_netns, self.host, self.port,
                                        timeout=self.connect_timeout)
            client = paramiko.SSHClient()
            for name, hostkey in self._host_keys.items():
                client.get_host_keys().add(name, hostkey.get_name(), hostkey)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(self.host, port=self.port, username=self.user, pkey=pkey,
                               sock=sock, timeout=self.connect_timeout,
                               banner_timeout=self.connect_timeout,
                               auth_timeout=self.connect_timeout, allow_agent=False,
                               look_for_keys=False)
            except paramiko.BadHostKeyException:
                sock.close()
                raise
            except BaseException:
                client.close()
                sock.close()
                raise
            return client

        try:
            client = attempt()
        except paramiko.BadHostKeyException as e:
            raise PermanentError(f"ssh {self.where}: the host key changed ({e}); refusing") \
                from None
        except paramiko.AuthenticationException as e:
            raise PermanentError(f"ssh {self.where}: the key {self.key} is not accepted: {e}") \
                from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise TransientError(f"ssh {self.where}: cannot connect: {e or type(e).__name__}") \
                from None
        remote = client.get_transport().get_remote_server_key()
        self._host_keys.setdefault(f"[{self.host}]:{self.port}" if self.port != 22
                                   else self.host, remote)
        return client

    def _transport(self) -> Any:
        with self._lock:
            t = self._client.get_transport() if self._client is not None else None
            if t is None or not t.is_active():
                self.close()
                self._client = self._connect()
                t = self._client.get_transport()
            return t

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    # ----------------------------------------------------------------- running
    def command_line(self, argv: Sequence[str | Path], env: Mapping[str, str] | None = None,
                     cwd: str | Path | None = None) -> str:
        line = shlex.join(str(a) for a in argv)
        if env:
            line = "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) \
                + " " + line
        if cwd is not None:
            line = f"cd {shlex.quote(str(cwd))} && {line}"
        return line

    def __call__(self, argv: Sequence[str | Path], *, timeout: float = DEFAULT_TIMEOUT,
                 check: bool = True, input: str | bytes | None = None,
                 netns: str | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, binary: bool = False) -> Result:
        import paramiko

        if netns is not None:
            raise ValueError("an SSH runner runs on the remote machine; it takes no netns")
        line = self.command_line(argv, env, cwd)
        shown = ("ssh", self.where, line)
        log.debug("ssh %s: %s", self.where, line)
        deadline = time.monotonic() + timeout
        transport = self._transport()
        out, err = bytearray(), bytearray()
        try:
            chan = transport.open_session(timeout=min(timeout, self.connect_timeout))
            chan.settimeout(0.2)
            chan.exec_command(line)
            if input is not None:
                chan.sendall(input.encode() if isinstance(input, str) else input)
            chan.shutdown_write()
            while True:
                progressed = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    progressed = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    progressed = True
                if chan.exit_status_ready() and chan.eof_received and not (
                        chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise CommandTimeout(shown, timeout)
                if not progressed:
                    time.sleep(0.005)
            code = chan.recv_exit_status()
            chan.close()
        except (OSError, paramiko.SSHException, EOFError) as e:
            self.close()
            raise TransientError(f"ssh {self.where}: {line}: the connection failed: "
                                 f"{e or type(e).__name__}") from None
        if code == -1:   # no exit status: the command was killed by a signal or the link broke
            raise TransientError(f"ssh {self.where}: {line}: no exit status (killed?)")
        if code == 127 and b"not found" in err:
            raise CommandMissing(f"{argv[0]}: command not found on {self.host}")
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        result = Result(shown, code, stdout, stderr)
        if check and code != 0:
            raise CommandFailed(result)
        return result
