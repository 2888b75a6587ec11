"""Grid Engine (Son of Grid Engine 8.1.9) through its command-line clients.

    sge = SGE()                                   # SGE_ROOT=/var/lib/gridengine, cell default
    snap = sge.snapshot(now)                      # qstat + qhost -> QueueSnapshot
    sge.add_exec_host("node3", slots=4)           # admin + exec host, @allhosts, slots
    sge.disable("node3"); sge.running_jobs_on("node3"); sge.remove_exec_host("node3")

Every command goes through ``runner`` (``elastic.adapters.run.run`` by default) with a
timeout, ``SGE_ROOT``/``SGE_CELL`` in its environment, and inside ``netns`` when given.
Commands run as the calling user: the admin operations need a Grid Engine manager (root is
one). The parsers are pure and live in ``sge_parse``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace

from elastic.adapters.batch import sge_parse
from elastic.adapters.run import CommandFailed, Result, run
from elastic.errors import ElasticError, TransientError
from elastic.model import QueueSnapshot

log = logging.getLogger(__name__)

Runner = Callable[..., Result]

QSTAT = ("qstat", "-xml", "-u", "*", "-r")
QHOST = ("qhost", "-xml", "-q")
QSTAT_TASKS = ("qstat", "-xml", "-u", "*", "-s", "rs", "-g", "t")

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")

# Messages that mean "already so" for the idempotent steps (qconf's exit codes vary: some of
# these come with 0, some with 1).
_ALREADY = ("already exists",)
_ABSENT = ("does not exist", "not found", "is not an execution host", "invalid queue",
           "no execd known")

EXEC_HOST_TEMPLATE = """\
hostname              {name}
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
"""


class HostBusy(TransientError):
    """The host still runs jobs: drain it (it is left disabled) and try again later."""

    def __init__(self, host: str, jobs: Sequence[str]) -> None:
        shown = ", ".join(jobs[:10]) + (f" and {len(jobs) - 10} more" if len(jobs) > 10 else "")
        super().__init__(f"{host} still runs {len(jobs)} job(s): {shown}")
        self.host = host
        self.jobs = tuple(jobs)


class SGE:
    """One Grid Engine cell, reached through its clients.

    ``queue`` is the cluster queue whose per-host ``slots`` :meth:`add_exec_host` sets;
    ``hostgroup`` the host group that queue's ``hostlist`` names. ``timeout`` bounds every
    command (the queries answer in ~0.06 s even with 5,000 pending tasks).
    """

    def __init__(self, root: str = "/var/lib/gridengine", cell: str = "default",
                 netns: str | None = None, runner: Runner = run, *, queue: str = "all.q",
                 hostgroup: str = "@allhosts", timeout: float = 30.0) -> None:
        self.root = str(root)
        self.cell = cell
        self.netns = netns
        self.runner = runner
        self.queue = queue
        self.hostgroup = hostgroup
        self.timeout = timeout

    @property
    def env(self) -> dict[str, str]:
        return {"SGE_ROOT": self.root, "SGE_CELL": self.cell}

    def _run(self, argv: Sequence[str], *, check: bool = True) -> Result:
        return self.runner(list(argv), timeout=self.timeout, netns=self.netns, check=check,
                           env=self.env)

    # ------------------------------------------------------------------ reading

    def snapshot(self, now: float) -> QueueSnapshot:
        """The queue and the exec hosts now. Never raises for the batch system's sake: a
        qmaster that is down, slow, missing or answering garbage gives
        ``QueueSnapshot(known=False, error=...)``: unknown, never an empty queue."""
        try:
            qstat = self._query(QSTAT)
            snap = sge_parse.parse_qstat(qstat, now)
            hosts = sge_parse.parse_qhost(self._query(QHOST))
        except (ElasticError, ValueError, OSError) as e:
            log.warning("sge: queue unknown: %s", e)
            return QueueSnapshot(taken_at=now, known=False, error=str(e))
        return replace(snap, hosts=hosts)

    def _query(self, argv: Sequence[str]) -> str:
        result = self._run(argv, check=False)
        if result.returncode != 0:   # qstat says rc 1 + a commlib error when the master is down
            raise CommandFailed(result)
        return result.stdout

    def running_jobs_on(self, name: str) -> list[str]:
        """Jobs with a master or slave task on ``name`` (``"42"``, ``"7.3"`` for array
        tasks). Raises (CommandFailed, CommandTimeout, ValueError) when SGE cannot say:
        an unknown answer is never "nothing runs there"."""
        _check_name(name)
        return sge_parse.running_on(self._query(QSTAT_TASKS), name)

    # ------------------------------------------------------------------ admin

    def add_exec_host(self, name: str, slots: int) -> None:
        """Make ``name`` an admin and exec host, put it in the host group and give it
        ``slots`` in the queue. Idempotent. The host's ``sge_execd`` can start afterwards
        (and must resolve its own name the way the qmaster does)."""
        _check_name(name)
        if int(slots) < 1:
            raise ValueError(f"slots must be at least 1, not {slots!r}")
        self._tolerant(["qconf", "-ah", name], _ALREADY)
        fd, path = tempfile.mkstemp(prefix=f"elastic-exechost-{name}-", suffix=".conf")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(EXEC_HOST_TEMPLATE.format(name=name))
            os.chmod(path, 0o644)
            self._tolerant(["qconf", "-Ae", path], _ALREADY)
        finally:
            os.unlink(path)
        self._tolerant(["qconf", "-aattr", "hostgroup", "hostlist", name, self.hostgroup],
                       _ALREADY)
        self._run(["qconf", "-aattr", "queue", "slots", f"[{name}={int(slots)}]", self.queue])

    def disable(self, name: str) -> None:
        """No new jobs on ``name`` (``qmod -d '*@name'``); running ones go on."""
        _check_name(name)
        self._run(["qmod", "-d", f"*@{name}"])

    def enable(self, name: str) -> None:
        _check_name(name)
        self._run(["qmod", "-e", f"*@{name}"])

    def remove_exec_host(self, name: str) -> None:
        """Take ``name`` out of the cell: disable it, and if nothing runs there, drop its
        slots entry, take it out of the host group, stop its execd (``qconf -ke``) and
        delete it as exec and admin host. Raises :class:`HostBusy` (leaving it disabled)
        when jobs still run there. Idempotent: a host already gone is fine."""
        _check_name(name)
        self._tolerant(["qmod", "-d", f"*@{name}"], _ABSENT)
        busy = self.running_jobs_on(name)
        if busy:
            raise HostBusy(name, busy)
        self._tolerant(["qconf", "-purge", "queue", "slots", f"{self.queue}@{name}"], _ABSENT)
        self._tolerant(["qconf", "-dattr", "hostgroup", "hostlist", name, self.hostgroup],
                       _ABSENT)
        ke = self._run(["qconf", "-ke", name], check=False)
        if ke.returncode != 0:   # a dead or never-started execd: nothing to stop
            log.info("sge: qconf -ke %s: %s", name, (ke.stderr or ke.stdout).strip())
        self._tolerant(["qconf", "-de", name], _ABSENT)
        self._tolerant(["qconf", "-dh", name], _ABSENT)

    def _tolerant(self, argv: Sequence[str], fine: Sequence[str]) -> Result:
        """Run a qconf/qmod step; exit 1 with one of the ``fine`` messages is success."""
        result = self._run(argv, check=False)
        if result.returncode != 0:
            said = (result.stderr + "\n" + result.stdout).lower()
            if not any(f in said for f in fine):
                raise CommandFailed(result)
        return result


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _HOSTNAME.match(name):
        raise ValueError(f"not a host name: {name!r}")
