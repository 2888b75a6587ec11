"""Grid Engine (Son of Grid Engine 8.1.9) through its command-line clients.

    sge = SGE()                                   # this machine's SGE_ROOT and cell
    sge = SGE(runner=SSH("10.77.0.20", key=k))    # ... or the head node's, over SSH
    snap = sge.snapshot(now)                      # qstat + qhost -> QueueSnapshot
    sge.admit("node3", "10.20.0.13")              # the master knows node3: it may join
    sge.add_exec_host("node3", slots=4)           # admin + exec host, @allhosts, slots
    sge.disable("node3"); sge.running_jobs_on("node3"); sge.remove_exec_host("node3")

Every command goes through ``runner`` (``elastic.adapters.run.run`` by default, or an
``elastic.adapters.run.SSH``: the same code either way) with a timeout, with
``SGE_ROOT``/``SGE_CELL`` in its environment when given (else the machine's own settings),
and inside ``netns`` when given. Commands run as the runner's user: the admin operations
need a Grid Engine manager (root on an admin host is one). No command reads a local file:
configuration goes to ``qconf`` on its standard input, so it works the same over SSH. The
parsers are pure and live in ``sge_parse``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
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


# `sh -c FROM_STDIN sh CMD ARGS...`: CMD ARGS... FILE, FILE holding the standard input (qconf
# -A* reads files, not pipes), removed afterwards; the exit status is CMD's.
FROM_STDIN = ('f=$(mktemp) || exit 1; cat >"$f"; chmod 0644 "$f"; "$@" "$f"; rc=$?; '
              'rm -f "$f"; exit $rc')

# `sh -c HOSTS_EDIT sh FILE NAME ADDRESS`: FILE maps NAME to ADDRESS and to nothing else;
# rewritten in place (the file may be a bind mount), only when it changes.
HOSTS_EDIT = r"""f=$1 n=$2 a=$3
new=$(awk -v n="$n" -v a="$a" '
    $1 ~ /^#/ { print; next }
    { named = 0; for (i = 2; i <= NF; i++) if ($i == n) named = 1 }
    !named { print; next }
    $1 == a && NF == 2 && !seen { print; seen = 1 }
    END { if (!seen) print a " " n }' "$f") || exit 1
[ "$new" = "$(cat "$f")" ] || printf '%s
' "$new" >"$f"
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

    def __init__(self, root: str | None = None, cell: str | None = None,
                 netns: str | None = None, runner: Runner = run, *, queue: str = "all.q",
                 hostgroup: str = "@allhosts", timeout: float = 30.0,
                 hosts_file: str = "/etc/hosts") -> None:
        self.root = None if root is None else str(root)
        self.cell = cell
        self.hosts_file = hosts_file
        self.netns = netns
        self.runner = runner
        self.queue = queue
        self.hostgroup = hostgroup
        self.timeout = timeout

    @property
    def env(self) -> dict[str, str]:
        env = {}
        if self.root is not None:
            env["SGE_ROOT"] = self.root
            env["SGE_CELL"] = self.cell or "default"
        elif self.cell is not None:
            env["SGE_CELL"] = self.cell
        return env

    def _run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None) \
            -> Result:
        return self.runner(list(argv), timeout=self.timeout, netns=self.netns, check=check,
                           env=self.env or None, input=input)

    # ------------------------------------------------------------------ reading

    def snapshot(self, now: float) -> QueueSnapshot:
        """The queue and the exec hosts now. Never raises for the batch system's sake: a
        qmaster that is down, slow, missing or answering garbage gives
        ``QueueSnapshot(known=False, error=...)``: unknown, never an empty queue."""
        try:
            # hosts first, then jobs: a job dispatched between the two reads is then seen
            # running (on a host that looked free a moment ago: a tick launches too little),
            # never both pending and taking a slot (a worker launched for nothing)
            hosts = sge_parse.parse_qhost(self._query(QHOST))
            snap = sge_parse.parse_qstat(self._query(QSTAT), now)
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

    def admit(self, name: str, address: str) -> None:
        """Let ``name`` (at ``address``) join the cell: the master machine's hosts file maps
        it (the qmaster resolves every peer by name, both ways), and it becomes an admin
        host, so that the node's own join (elastic-sge exec) registers it as an execution
        host. Idempotent; an old line for the name (another address) is replaced."""
        _check_name(name)
        ipaddress.ip_address(address)
        self._run(["sh", "-c", HOSTS_EDIT, "sh", self.hosts_file, name, address])
        self._tolerant(["qconf", "-ah", name], _ALREADY)

    def route(self, destination: str, via: str) -> None:
        """On the master machine: reach ``destination`` (a CIDR) through ``via`` (the VPN
        hub's address on the master's network), so that the qmaster answers cloud nodes.
        Idempotent (``ip route replace``)."""
        ipaddress.ip_network(destination)
        ipaddress.ip_address(via)
        self._run(["ip", "route", "replace", destination, "via", via])

    def add_exec_host(self, name: str, slots: int) -> None:
        """Make ``name`` an admin and exec host, put it in the host group and give it
        ``slots`` in the queue. Idempotent. The host's ``sge_execd`` can start afterwards
        (and must resolve its own name the way the qmaster does)."""
        _check_name(name)
        if int(slots) < 1:
            raise ValueError(f"slots must be at least 1, not {slots!r}")
        self._tolerant(["qconf", "-ah", name], _ALREADY)
        self._tolerant(["sh", "-c", FROM_STDIN, "sh", "qconf", "-Ae"], _ALREADY,
                       input=EXEC_HOST_TEMPLATE.format(name=name))
        self._tolerant(["qconf", "-aattr", "hostgroup", "hostlist", name, self.hostgroup],
                       _ALREADY)
        self._run(["qconf", "-aattr", "queue", "slots", f"[{name}={int(slots)}]", self.queue])

    def disable(self, name: str) -> None:
        """No new jobs on ``name`` (``qmod -d '*@name'``); running ones go on."""
        _check_name(name)
        self._run(["qmod", "-d", f"*@{name}"])

    def reschedule(self, name: str) -> None:
        """Requeue the jobs of ``name``, whose machine is gone (``qmod -f -rq '*@name'``:
        forced, as its execd does not answer). Only for a host known to be lost: rerunnable
        jobs start again elsewhere. A host already gone is fine."""
        _check_name(name)
        # disabled first: else the scheduler hands the requeued jobs straight back to the
        # lost host (an unknown queue instance still takes jobs), seen with SGE 8.1.9
        self._tolerant(["qmod", "-f", "-d", f"*@{name}"], _ABSENT)
        self._tolerant(["qmod", "-f", "-rq", f"*@{name}"], _ABSENT)

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

    def _tolerant(self, argv: Sequence[str], fine: Sequence[str], *,
                  input: str | None = None) -> Result:
        """Run a qconf/qmod step; exit 1 with one of the ``fine`` messages is success."""
        result = self._run(argv, check=False, input=input)
        if result.returncode != 0:
            said = (result.stderr + "\n" + result.stdout).lower()
            if not any(f in said for f in fine):
                raise CommandFailed(result)
        return result


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _HOSTNAME.match(name):
        raise ValueError(f"not a host name: {name!r}")
