"""Grid Engine: the pure parsers on output captured from a real qmaster (tests/data/sge/, made
by tests/system/test_sge_capture.py) and on small hand-made cases, and the adapter with a
fake runner."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from elastic.adapters.batch.sge import FROM_STDIN, HOSTS_EDIT, SGE, HostBusy
from elastic.adapters.batch.sge_parse import (
    count_tasks,
    parse_memory_mib,
    parse_qhost,
    parse_qstat,
    parse_time,
    running_on,
)
from elastic.adapters.run import CommandFailed, CommandMissing, CommandTimeout, Result
from elastic.model import QueueSnapshot

DATA = Path(__file__).resolve().parents[1] / "data" / "sge"
UTC = timezone.utc


def fixture(name: str) -> str:
    return (DATA / name).read_text()


def qstat(name: str, now: float = 1000.0) -> QueueSnapshot:
    return parse_qstat(fixture(name), now, tz=UTC)


def job_xml(number: str = "1", state: str = "qw", *, tasks: str | None = None,
            extra: str = "", attr: str = "pending", queue: str = "") -> str:
    return f"""
    <job_list state="{attr}">
      <JB_job_number>{number}</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>j{number}</JB_name>
      <JB_owner>alice</JB_owner>
      <state>{state}</state>
      <JB_submission_time>2026-01-02T03:04:05</JB_submission_time>
      <queue_name>{queue}</queue_name>
      <slots>1</slots>
      {f"<tasks>{tasks}</tasks>" if tasks else ""}
      {extra}
    </job_list>"""


def qstat_xml(*jobs: str, running: str = "") -> str:
    return ("<?xml version='1.0'?>\n<job_info xmlns:xsd=\"x\">\n<queue_info>" + running
            + "</queue_info>\n<job_info>" + "".join(jobs) + "</job_info>\n</job_info>\n")


# ----------------------------------------------------------------------------- qstat, real

def test_empty_queue_is_known_and_empty():
    snap = qstat("qstat-empty.xml", now=42.0)
    assert snap == QueueSnapshot(taken_at=42.0, known=True)
    assert snap.pending_slots == 0


def test_pending_workload():
    snap = qstat("qstat-pending.xml")
    jobs = {j.name: j for j in snap.pending}
    assert list(jobs) == ["pesmp", "perange", "plain1", "plain2", "arr", "arrstep", "vmem",
                          "inqueue"]                       # qstat's order: by priority
    assert snap.held == 6                                  # held (1) + heldarr (5 tasks)
    assert snap.errored == 2                               # badout, badwd: Eqw
    assert snap.running == ()
    assert sum(j.tasks for j in snap.pending) == 26
    assert snap.pending_slots == 28
    assert jobs["plain1"].id == "3" and jobs["plain1"].owner == "nobody"
    assert jobs["plain1"].state == "qw" and jobs["plain1"].tasks == 1
    assert jobs["arr"].tasks == 10                         # 1-10:1
    assert jobs["arrstep"].tasks == 10                     # -t 1-20:2, printed 1-19:2
    assert (jobs["pesmp"].pe, jobs["pesmp"].slots, jobs["pesmp"].pending_slots) == ("smp", 2, 2)
    assert (jobs["perange"].pe, jobs["perange"].slots) == ("make", 2)   # -pe make 2-3: min
    assert jobs["vmem"].resources == {"h_vmem": "512M", "h_rt": "3600"}
    assert jobs["inqueue"].queue == "all.q" and jobs["plain1"].queue is None
    assert jobs["pesmp"].priority == 0.75 and jobs["plain1"].priority == 0.25
    stamp = datetime(2026, 11, 22, 3, 9, 24, tzinfo=UTC).timestamp()
    assert all(j.submitted == stamp for j in snap.pending)
    assert all(j.host is None for j in snap.pending)


def test_mixed_running_and_pending():
    snap = qstat("qstat-mixed.xml")
    running = [(j.id, j.name, j.host, j.slots, j.state) for j in snap.running]
    assert running == [("3", "plain1", "node2", 1, "r"), ("4", "plain2", "node1", 1, "r"),
                       ("5", "arr", "node2", 1, "r"), ("9", "pesmp", "node1", 2, "r"),
                       ("10", "perange", "node2", 3, "t")]   # t: being sent to the host
    assert sum(j.slots for j in snap.running) == 8
    assert all(j.submitted is None and j.tasks == 1 for j in snap.running)
    pending = {j.name: j.tasks for j in snap.pending}
    assert pending == {"arr": 9, "arrstep": 10, "vmem": 1, "inqueue": 1}   # arr: 2-10:1
    assert (snap.held, snap.errored) == (6, 2)
    assert sum(pending.values()) + len(snap.running) == 26


def test_running_on_counts_slave_tasks():
    xml = fixture("qstat-tasks.xml")
    assert running_on(xml, "node1") == ["4", "9", "10"]    # 10's master is on node2
    assert running_on(xml, "node2") == ["3", "5.1", "10"]
    assert running_on(xml, "node3") == []


# ----------------------------------------------------------------------------- qstat, edge

@pytest.mark.parametrize(("spec", "count"), [
    ("1", 1), ("1-10:1", 10), ("1-10", 10), ("1-19:2", 10), ("1-100:2", 50),
    ("1-20:2", 10), ("3,5,7-9", 5), ("9,10", 2), ("2-10:1", 9), ("1-5000:1", 5000),
    ("1-100:10,200", 11),
])
def test_count_tasks(spec, count):
    assert count_tasks(spec) == count


@pytest.mark.parametrize("spec", ["", "a", "1-", "5-3", "1-10:0", "1,,2", "1-10:x"])
def test_count_tasks_rejects_garbage(spec):
    with pytest.raises(ValueError, match="task range"):
        count_tasks(spec)


def test_array_task_ranges_and_states():
    xml = qstat_xml(
        job_xml("1", "qw", tasks="1-100:2"),
        job_xml("2", "qw", tasks="3,5,7-9"),
        job_xml("3", "Rq"),                       # rescheduled: pending again, demand
        job_xml("4", "hRwq", tasks="1-4:1"),      # held
        job_xml("5", "hqw"),
        job_xml("6", "Eqw", tasks="1-3:1"),       # error
        job_xml("7", "dqw"),                      # being deleted: neither
    )
    snap = parse_qstat(xml, 0.0, tz=UTC)
    assert [(j.id, j.tasks) for j in snap.pending] == [("1", 50), ("2", 5), ("3", 1)]
    assert (snap.held, snap.errored) == (5, 3)
    assert snap.pending_slots == 56


def test_pe_ranges_take_the_minimum():
    xml = qstat_xml(
        job_xml("1", extra='<requested_pe name="mpi">4-16</requested_pe>'),
        job_xml("2", extra='<requested_pe name="mpi">8-</requested_pe>'),
        job_xml("3", extra='<requested_pe name="smp">6,4</requested_pe>'),
    )
    snap = parse_qstat(xml, 0.0)
    assert [(j.pe, j.slots) for j in snap.pending] == [("mpi", 4), ("mpi", 8), ("smp", 4)]


def test_several_hard_queues_and_running_states():
    running = job_xml("9", "Rr", attr="running", queue="all.q@node7.example.org")
    xml = qstat_xml(job_xml("1", extra="<hard_req_queue>a.q</hard_req_queue>"
                                       "<hard_req_queue>b.q</hard_req_queue>"),
                    running=running)
    snap = parse_qstat(xml, 0.0)
    assert snap.pending[0].queue == "a.q,b.q"
    assert [(j.id, j.state, j.host) for j in snap.running] == [("9", "Rr", "node7.example.org")]


def test_submission_time_zone():
    assert parse_time("2026-01-02T03:04:05", UTC) == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    naive = datetime(2026, 1, 2, 3, 4, 5).timestamp()     # this process's local time
    assert parse_time("2026-01-02T03:04:05") == naive
    with pytest.raises(ValueError, match="timestamp"):
        parse_time("yesterday")


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty output"),
    ("error: commlib error: got select error (Connection refused)\n", "not well-formed"),
    ("<?xml version='1.0'?>\n<job_info><job_info><job_list>", "not well-formed"),
    ("<qhost></qhost>", "root element is <qhost>"),
    (qstat_xml("<job_list state='pending'><state>qw</state></job_list>"), "JB_job_number"),
    (qstat_xml(job_xml("1", tasks="1-x")), "task range"),
    (qstat_xml(job_xml("1").replace("<slots>1</slots>", "<slots>many</slots>")), "slots"),
])
def test_malformed_qstat_is_a_clear_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_qstat(text, 0.0)


# ----------------------------------------------------------------------------- qhost

def test_qhost_real():
    hosts = parse_qhost(fixture("qhost.xml"))
    assert [h.name for h in hosts] == ["node1", "node2"]  # "global" is not a host
    for h in hosts:
        assert (h.slots_total, h.slots_used) == (4, 4)
        assert h.enabled and not h.alarm
        assert h.memory_total_mib == 24064                # 23.5G
        assert 0 < h.memory_used_mib < h.memory_total_mib
        assert h.load is not None and h.load >= 0


def test_qhost_disabled_unknown_and_empty():
    assert all(not h.enabled and h.slots_used == 0 and h.slots_total == 4
               for h in parse_qhost(fixture("qhost-disabled.xml")))
    hosts = {h.name: h for h in parse_qhost(fixture("qhost-unknown.xml"))}
    node2 = hosts["node2"]
    assert node2.alarm and node2.load is None and node2.memory_used_mib is None
    assert node2.memory_total_mib == 24064 and node2.enabled   # unknown is not disabled
    assert not hosts["node1"].alarm
    assert parse_qhost(fixture("qhost-nohosts.xml")) == ()


def qhost_xml(*queues: tuple[str, int, int, str], load: str = "0.50",
              total: str = "1.9G", used: str = "512.0M") -> str:
    qs = "".join(
        f"<queue name='{q}'><queuevalue qname='{q}' name='slots_used'>{u}</queuevalue>"
        f"<queuevalue qname='{q}' name='slots'>{t}</queuevalue>"
        f"<queuevalue qname='{q}' name='state_string'>{s}</queuevalue></queue>"
        for q, u, t, s in queues)
    return (f"<qhost><host name='n1'><hostvalue name='load_avg'>{load}</hostvalue>"
            f"<hostvalue name='mem_total'>{total}</hostvalue>"
            f"<hostvalue name='mem_used'>{used}</hostvalue>{qs}</host></qhost>")


@pytest.mark.parametrize(("queues", "enabled", "alarm", "used", "total"), [
    ((("all.q", 1, 2, ""),), True, False, 1, 2),
    ((("all.q", 0, 2, "d"),), False, False, 0, 2),
    ((("all.q", 0, 2, "au"),), True, True, 0, 2),
    ((("all.q", 0, 2, "u"),), True, True, 0, 2),
    ((("all.q", 0, 2, "E"),), False, False, 0, 2),
    ((("all.q", 0, 2, "a"),), True, False, 0, 2),          # load alarm: busy, not lost
    ((("all.q", 0, 2, "adu"),), False, True, 0, 2),
    ((("all.q", 1, 2, "d"), ("big.q", 3, 8, "")), True, False, 4, 10),
    ((), False, False, 0, 0),                              # no queue instance: cannot run
])
def test_qhost_states_and_sums(queues, enabled, alarm, used, total):
    (h,) = parse_qhost(qhost_xml(*queues))
    assert (h.enabled, h.alarm, h.slots_used, h.slots_total) == (enabled, alarm, used, total)
    assert (h.load, h.memory_total_mib, h.memory_used_mib) == (0.5, 1946, 512)


@pytest.mark.parametrize(("text", "mib"), [
    ("1.9G", 1946), ("512.0M", 512), ("23.5G", 24064), ("-", None), ("", None), (None, None),
    ("0.0", 0), ("2048.0K", 2), ("1.5T", 1572864), ("1048576", 1),
])
def test_memory(text, mib):
    assert parse_memory_mib(text) == mib


def test_qhost_garbage():
    with pytest.raises(ValueError, match="qhost -xml: not well-formed"):
        parse_qhost("error: commlib error")
    with pytest.raises(ValueError, match="bad memory"):
        parse_qhost(qhost_xml(total="lots"))
    with pytest.raises(ValueError, match="root element"):
        parse_qhost(fixture("qstat-empty.xml"))


# ----------------------------------------------------------------------------- the adapter

DOWN = fixture("qstat-master-down.stderr")


class FakeRunner:
    """Stands in for ``run``: answers qstat/qhost with captured output and qconf/qmod with
    nothing, records every call. Knobs: ``down`` (qstat/qhost exit 1 as with the master
    down), ``timeout_on``/``missing`` (a command that hangs or is not installed), ``rules``
    (argv prefix -> exit code, stdout, stderr) for anything else."""

    def __init__(self, qstat: str = "qstat-mixed.xml", qhost: str = "qhost.xml",
                 tasks: str = "qstat-tasks.xml") -> None:
        self.outputs = {"qstat": fixture(qstat), "qhost": fixture(qhost),
                        "tasks": fixture(tasks)}
        self.down = False
        self.timeout_on: str | None = None
        self.missing: str | None = None
        self.rules: list[tuple[tuple[str, ...], int, str, str]] = []
        self.calls: list[tuple[str, ...]] = []
        self.kwargs: list[dict] = []
        self.files: dict[str, str] = {}

    def rule(self, prefix: tuple[str, ...], rc: int, stdout: str = "", stderr: str = ""):
        self.rules.insert(0, (prefix, rc, stdout, stderr))

    def __call__(self, argv, *, timeout, netns=None, check=True, env=None, **kw) -> Result:
        argv = tuple(str(a) for a in argv)
        if argv[:3] == ("sh", "-c", FROM_STDIN):    # CMD ARGS <file with the input>
            argv = argv[4:] + ("<stdin>",)
            self.files[" ".join(argv)] = kw["input"]
        self.calls.append(argv)
        self.kwargs.append({"timeout": timeout, "netns": netns, "env": env, "check": check})
        if self.missing == argv[0]:
            raise CommandMissing(f"{argv[0]}: command not found")
        if self.timeout_on == argv[0]:
            raise CommandTimeout(argv, timeout)
        rc, out, err = 0, "", ""
        if argv[0] in ("qstat", "qhost"):
            if self.down:
                rc, err = 1, DOWN
            else:
                out = self.outputs["tasks" if "-g" in argv else argv[0]]
        for prefix, r, o, e in self.rules:
            if argv[:len(prefix)] == prefix:
                rc, out, err = r, o, e
                break
        result = Result(argv, rc, out, err)
        if check and rc != 0:
            raise CommandFailed(result)
        return result


@pytest.fixture
def fake() -> FakeRunner:
    return FakeRunner()


def make(fake: FakeRunner) -> SGE:
    return SGE(root="/srv/sge", cell="lab", netns="head", runner=fake, timeout=7.0)


def test_snapshot_reads_queue_and_hosts(fake):
    snap = make(fake).snapshot(99.0)
    assert snap.known and snap.taken_at == 99.0 and snap.error is None
    assert len(snap.running) == 5 and snap.held == 6 and snap.errored == 2
    assert [h.name for h in snap.hosts] == ["node1", "node2"]
    # hosts before jobs: a job dispatched in between is seen running, not pending and
    # taking a slot at once (which launched a worker for nothing)
    assert fake.calls == [("qhost", "-xml", "-q"), ("qstat", "-xml", "-u", "*", "-r")]
    for kw in fake.kwargs:                                 # every call: timeout, env, netns
        assert kw == {"timeout": 7.0, "netns": "head", "check": False,
                      "env": {"SGE_ROOT": "/srv/sge", "SGE_CELL": "lab"}}


def test_master_down_is_unknown_not_empty(fake):
    fake.down = True
    snap = make(fake).snapshot(5.0)
    assert snap.known is False and snap.taken_at == 5.0
    assert "commlib error" in snap.error and "exited 1" in snap.error
    assert snap.pending == () and snap.hosts == ()


@pytest.mark.parametrize("command", ["qstat", "qhost"])
def test_timeout_is_unknown(fake, command):
    fake.timeout_on = command
    snap = make(fake).snapshot(5.0)
    assert snap.known is False and "did not finish in 7 s" in snap.error


def test_qhost_failing_alone_is_unknown(fake):
    fake.rule(("qhost",), 1, "", "error: no permission")
    snap = make(fake).snapshot(5.0)
    assert snap.known is False and "no permission" in snap.error


def test_missing_client_and_garbage_are_unknown(fake):
    fake.missing = "qstat"
    assert make(fake).snapshot(1.0).known is False
    fake.missing = None
    fake.rule(("qstat",), 0, "error: something odd\n")   # exit 0 without XML
    snap = make(fake).snapshot(1.0)
    assert snap.known is False and "not well-formed" in snap.error


def test_add_exec_host(fake):
    make(fake).add_exec_host("node7", slots=4)
    assert fake.calls == [
        ("qconf", "-ah", "node7"),
        ("qconf", "-Ae", "<stdin>"),          # the configuration goes on stdin: works over SSH
        ("qconf", "-aattr", "hostgroup", "hostlist", "node7", "@allhosts"),
        ("qconf", "-aattr", "queue", "slots", "[node7=4]", "all.q"),
    ]
    conf = fake.files["qconf -Ae <stdin>"]
    assert "hostname              node7\n" in conf
    assert "complex_values        NONE" in conf
    assert all(kw["timeout"] == 7.0 and kw["netns"] == "head" for kw in fake.kwargs)


def test_add_exec_host_again_is_fine(fake):
    fake.rule(("qconf", "-Ae"), 1, "", 'exechost "node7" already exists')
    fake.rule(("qconf", "-aattr", "hostgroup"), 1,
              'No modification because "node7" already exists in "hostlist" of "hostgroup"')
    make(fake).add_exec_host("node7", slots=2)
    assert fake.calls[-1] == ("qconf", "-aattr", "queue", "slots", "[node7=2]", "all.q")


def test_add_exec_host_other_failure_raises(fake):
    fake.rule(("qconf", "-Ae"), 1, "", "denied: host \"node7\" can't be resolved")
    with pytest.raises(CommandFailed, match="can't be resolved"):
        make(fake).add_exec_host("node7", slots=2)


def test_custom_queue_and_hostgroup(fake):
    sge = SGE(runner=fake, queue="batch.q", hostgroup="@cloud")
    sge.add_exec_host("c1", slots=8)
    assert ("qconf", "-aattr", "hostgroup", "hostlist", "c1", "@cloud") in fake.calls
    assert fake.calls[-1] == ("qconf", "-aattr", "queue", "slots", "[c1=8]", "batch.q")
    assert fake.kwargs[0]["env"] is None       # the machine's own SGE_ROOT and cell
    assert fake.kwargs[0]["netns"] is None


def test_admit_maps_the_name_and_makes_an_admin_host(fake):
    make(fake).admit("worker5", "10.20.0.15")
    assert fake.calls == [("sh", "-c", HOSTS_EDIT, "sh", "/etc/hosts", "worker5", "10.20.0.15"),
                          ("qconf", "-ah", "worker5")]
    fake.rule(("qconf", "-ah"), 1, "", 'adminhost "worker5" already exists')
    make(fake).admit("worker5", "10.20.0.15")           # again: fine
    with pytest.raises(ValueError):
        make(fake).admit("worker5; rm -rf /", "10.20.0.15")
    with pytest.raises(ValueError):
        make(fake).admit("worker5", "not-an-address")


def test_the_hosts_edit_replaces_a_name_and_keeps_the_rest(tmp_path):
    import subprocess
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# worker3 was here\n10.20.0.2 head\n"
                     "10.20.0.9 worker3 w3\n10.20.0.4 worker30\n")
    for name, addr in (("worker3", "10.20.0.13"), ("worker3", "10.20.0.13"),
                       ("head", "10.20.0.2")):
        subprocess.run(["sh", "-c", HOSTS_EDIT, "sh", str(hosts), name, addr], check=True,
                       timeout=10)
    assert hosts.read_text() == ("127.0.0.1 localhost\n# worker3 was here\n10.20.0.2 head\n"
                                 "10.20.0.4 worker30\n10.20.0.13 worker3\n")


def test_disable_enable(fake):
    sge = make(fake)
    sge.disable("node1")
    sge.enable("node1")
    assert fake.calls == [("qmod", "-d", "*@node1"), ("qmod", "-e", "*@node1")]
    fake.rule(("qmod",), 1, "", 'invalid queue "*@node9"')
    with pytest.raises(CommandFailed):
        sge.disable("node9")


def test_running_jobs_on(fake):
    sge = make(fake)
    assert sge.running_jobs_on("node1") == ["4", "9", "10"]
    assert fake.calls == [("qstat", "-xml", "-u", "*", "-s", "rs", "-g", "t")]
    fake.down = True
    with pytest.raises(CommandFailed):                     # unknown is never "idle"
        sge.running_jobs_on("node1")


def test_remove_idle_host(fake):
    make(fake).remove_exec_host("node3")
    assert fake.calls == [
        ("qmod", "-d", "*@node3"),
        ("qstat", "-xml", "-u", "*", "-s", "rs", "-g", "t"),
        ("qconf", "-purge", "queue", "slots", "all.q@node3"),
        ("qconf", "-dattr", "hostgroup", "hostlist", "node3", "@allhosts"),
        ("qconf", "-ke", "node3"),
        ("qconf", "-de", "node3"),
        ("qconf", "-dh", "node3"),
    ]


def test_remove_busy_host_raises_and_leaves_it_disabled(fake):
    with pytest.raises(HostBusy) as caught:
        make(fake).remove_exec_host("node1")
    assert caught.value.jobs == ("4", "9", "10") and caught.value.host == "node1"
    assert "3 job(s): 4, 9, 10" in str(caught.value)
    assert fake.calls[0] == ("qmod", "-d", "*@node1")
    assert not any(c[:2] in {("qconf", "-de"), ("qconf", "-ke")} for c in fake.calls)


def test_remove_host_already_gone_or_dead(fake):
    fake.rule(("qmod", "-d"), 1, "", 'invalid queue "*@node3"')
    fake.rule(("qconf", "-ke"), 1, "", 'no execd known on host node3')
    fake.rule(("qconf", "-de"), 1, "", 'denied: execution host "node3" does not exist')
    fake.rule(("qconf", "-dh"), 1, "", 'denied: administrative host "node3" does not exist')
    make(fake).remove_exec_host("node3")
    assert fake.calls[-1] == ("qconf", "-dh", "node3")


def test_remove_host_still_referenced_raises(fake):
    fake.rule(("qconf", "-de"), 1, "",
              'Host object "node3" is still referenced in cluster queue "all.q".')
    with pytest.raises(CommandFailed, match="still referenced"):
        make(fake).remove_exec_host("node3")


@pytest.mark.parametrize("name", ["", "-de", "a b", "n[1]", "x,y", "*", "node3;rm", "a@b"])
def test_bad_host_names_run_nothing(fake, name):
    sge = make(fake)
    for op in (sge.disable, sge.enable, sge.running_jobs_on, sge.remove_exec_host):
        with pytest.raises(ValueError, match="not a host name"):
            op(name)
    with pytest.raises(ValueError):
        sge.add_exec_host(name, slots=1)
    with pytest.raises(ValueError, match="slots"):
        sge.add_exec_host("ok", slots=0)
    assert fake.calls == []
