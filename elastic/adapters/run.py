"""The one place that runs external commands: locally, inside a network namespace, or (later)
over SSH. Every call has a timeout; failures become typed errors.

    from elastic.adapters.run import run
    out = run(["qemu-img", "info", path], timeout=30).stdout
    run(["ip", "link"], netns="elastic-lab-h1", timeout=10)
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
