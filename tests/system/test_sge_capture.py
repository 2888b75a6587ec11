"""Real Grid Engine: a throwaway cell in network namespaces, a known workload, and the
parsers and the adapter checked against what the qmaster says.

The cell is private (its own SGE_ROOT in a temporary directory, its own BerkeleyDB spool):
/var/lib/gridengine and /var/spool/gridengine are not touched. The qmaster runs in its own
network namespace with its own hosts file (/etc/netns/<ns>/hosts), fake exec hosts run
``sge_execd`` in their own network and UTS namespaces (``hostname nodeN``), all joined by a
bridge inside the head namespace: private addresses never leave namespaces made here.
Jobs are submitted as ``nobody`` (Grid Engine refuses root's jobs).

    ELASTIC_SGE_CAPTURE=1 .venv/bin/pytest tests/system/test_sge_capture.py

also writes the captured output into tests/data/sge/ (the unit tests' fixtures); without
it the files go to a temporary directory and the checks run all the same.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from elastic.adapters.batch.sge import QHOST, QSTAT, QSTAT_TASKS, SGE, HostBusy
from elastic.adapters.batch.sge_parse import parse_qhost, parse_qstat, running_on
from elastic.adapters.run import run

pytestmark = [pytest.mark.system, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[1] / "data" / "sge"
SGE_BINARIES = ("qstat", "qhost", "qconf", "qsub", "qmod", "qdel", "sge_qmaster", "sge_execd")
SGE_HELPERS = ("/usr/lib/gridengine/spoolinit", "/usr/lib/gridengine/spooldefaults",
               "/usr/share/gridengine/default-bootstrap",
               "/usr/share/gridengine/default-configuration",
               "/usr/share/gridengine/util/resources/centry",
               "/usr/share/gridengine/util/resources/usersets",
               "/var/lib/gridengine/bin")
OTHER = ("ip", "unshare", "setpriv")
SUBNET = "10.213.7"          # only inside the namespaces made here
NODES = {"node1": 11, "node2": 12, "node3": 13}


def missing_parts() -> list[str]:
    out = [b for b in SGE_BINARIES + OTHER
           if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    out += [p for p in SGE_HELPERS if not os.path.exists(p)]
    try:
        pwd.getpwnam("sgeadmin")
    except KeyError:
        out.append("user sgeadmin (package gridengine-common)")
    if os.geteuid() != 0:
        out.append("root (network namespaces)")
    return out


from tests.system.waiting import wait_for  # noqa: E402  (shared polling)


class MiniCell:
    """A private Grid Engine cell: qmaster in netns ``<tag>-head``, execds in ``<tag>-nodeN``."""

    def __init__(self, base: Path, tag: str) -> None:
        self.base = base
        self.root = base / "root"
        self.spool = base / "spool"
        self.jobs = base / "jobs"
        self.head = f"{tag}-head"
        self.master_host = socket.gethostname()
        self.netns: list[str] = []
        self.etc_dirs: list[Path] = []
        self.made_etc_netns = False
        self.env = {"SGE_ROOT": str(self.root), "SGE_CELL": "default"}
        self.tag = tag
        nobody = pwd.getpwnam("nobody")
        self.uid, self.gid = nobody.pw_uid, nobody.pw_gid

    def ns(self, node: str) -> str:
        return f"{self.tag}-{node}"

    # -------------------------------------------------------------- running things
    def head_run(self, argv: Sequence[str], check: bool = True, timeout: float = 30):
        return run(argv, netns=self.head, env=self.env, check=check, timeout=timeout)

    def qconf(self, *args: str) -> str:
        return self.head_run(["qconf", *args]).stdout

    def submit(self, *args: str) -> str:
        """qsub as nobody; returns the job id."""
        out = self.head_run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                             "--clear-groups", "env", f"HOME={self.jobs}", "USER=nobody",
                             "LOGNAME=nobody", "qsub", "-b", "y", *args]).stdout
        # 'Your job 3 ("x") has been submitted' / 'Your job-array 5.1-10:1 ("arr") ...'
        return out.split()[2].split(".")[0]

    # -------------------------------------------------------------- bring-up
    def make_cell(self) -> None:
        common = self.root / "default" / "common"
        common.mkdir(parents=True)
        for d in ("bin", "lib", "util", "utilbin"):
            (self.root / d).symlink_to(f"/var/lib/gridengine/{d}")
        for d in ("qmaster", "db", "execd"):
            (self.spool / d).mkdir(parents=True)
        self.jobs.mkdir()
        self.jobs.chmod(0o1777)
        boot = Path("/usr/share/gridengine/default-bootstrap").read_text().splitlines()
        boot = [f"spooling_params         {self.spool / 'db'}" if ln.startswith("spooling_params")
                else f"qmaster_spool_dir       {self.spool / 'qmaster'}"
                if ln.startswith("qmaster_spool_dir") else ln for ln in boot]
        (common / "bootstrap").write_text("\n".join(boot) + "\n")
        (common / "act_qmaster").write_text(self.master_host + "\n")
        conf = Path("/usr/share/gridengine/default-configuration").read_text().splitlines()
        settings = {"execd_spool_dir": str(self.spool / "execd"),
                    "load_report_time": "00:00:05", "max_unheard": "00:00:20",
                    "reschedule_unknown": "00:00:00"}
        conf = [f"{ln.split()[0]:<22} {settings[ln.split()[0]]}"
                if ln.split() and ln.split()[0] in settings else ln for ln in conf]
        (self.base / "conf").mkdir()
        (self.base / "conf" / "global").write_text("\n".join(conf) + "\n")
        admin = pwd.getpwnam("sgeadmin")
        for path in [self.root / "default", *(self.root / "default").rglob("*"),
                     self.spool, *self.spool.rglob("*")]:
            os.chown(path, admin.pw_uid, admin.pw_gid, follow_symlinks=False)
        as_admin = ["setpriv", f"--reuid={admin.pw_uid}", f"--regid={admin.pw_gid}",
                    "--clear-groups"]
        res = "/usr/share/gridengine/util/resources"
        for argv in (["/usr/lib/gridengine/spoolinit", "berkeleydb", "libspoolb",
                      str(self.spool / "db"), "init"],
                     ["/usr/lib/gridengine/spooldefaults", "configuration",
                      str(self.base / "conf" / "global")],
                     ["/usr/lib/gridengine/spooldefaults", "complexes", f"{res}/centry"],
                     ["/usr/lib/gridengine/spooldefaults", "usersets", f"{res}/usersets"],
                     ["/usr/lib/gridengine/spooldefaults", "managers", "sgeadmin"]):
            run([*as_admin, *argv], env=self.env, timeout=60)

    def make_network(self) -> None:
        lines = ["127.0.0.1 localhost", f"{SUBNET}.1 {self.master_host}"]
        lines += [f"{SUBNET}.{octet} {name}" for name, octet in NODES.items()]
        etc = Path("/etc/netns")
        if not etc.exists():
            etc.mkdir()
            self.made_etc_netns = True
        for ns in [self.head, *(self.ns(n) for n in NODES)]:
            run(["ip", "netns", "add", ns], timeout=10)
            self.netns.append(ns)
            d = etc / ns
            d.mkdir()
            self.etc_dirs.append(d)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            run(["ip", "-n", ns, "link", "set", "lo", "up"], timeout=10)
        h = ["ip", "-n", self.head]
        run([*h, "link", "add", "br0", "type", "bridge"], timeout=10)
        run([*h, "link", "set", "br0", "up"], timeout=10)
        run([*h, "addr", "add", f"{SUBNET}.1/24", "dev", "br0"], timeout=10)
        for name, octet in NODES.items():
            ns, port = self.ns(name), f"v{name}"
            run([*h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns],
                timeout=10)
            run([*h, "link", "set", port, "master", "br0", "up"], timeout=10)
            run(["ip", "-n", ns, "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0"],
                timeout=10)
            run(["ip", "-n", ns, "link", "set", "eth0", "up"], timeout=10)

    def start_master(self) -> None:
        self.head_run(["/usr/sbin/sge_qmaster"])
        wait_for("the qmaster to answer",
                 lambda: self.head_run(["qstat"], check=False).returncode == 0, 20)

    def configure(self) -> None:
        conf = self.base / "conf"
        self.qconf("-as", self.master_host)                       # qsub from the head
        sched = self.qconf("-ssconf")
        fast = {"schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1"}
        lines = [f"{ln.split()[0]:<33} {fast[ln.split()[0]]}"
                 if ln.split() and ln.split()[0] in fast else ln for ln in sched.splitlines()]
        (conf / "sconf").write_text("\n".join(lines) + "\n")
        self.qconf("-Msconf", str(conf / "sconf"))
        (conf / "allhosts").write_text("group_name @allhosts\nhostlist NONE\n")
        self.qconf("-Ahgrp", str(conf / "allhosts"))
        for name, rule, slaves in (("smp", "$pe_slots", "FALSE"),
                                   ("make", "$round_robin", "TRUE")):
            (conf / f"pe_{name}").write_text(
                f"pe_name {name}\nslots 999\nuser_lists NONE\nxuser_lists NONE\n"
                f"start_proc_args NONE\nstop_proc_args NONE\nallocation_rule {rule}\n"
                f"control_slaves {slaves}\njob_is_first_task TRUE\nurgency_slots min\n"
                "accounting_summary FALSE\nqsort_args NONE\n")
            self.qconf("-Ap", str(conf / f"pe_{name}"))
        queue = {"qname": "all.q", "hostlist": "@allhosts", "load_thresholds": "NONE",
                 "pe_list": "make smp", "slots": "1", "rerun": "TRUE"}
        lines = [f"{ln.split()[0]:<21} {queue[ln.split()[0]]}"
                 if ln.split() and ln.split()[0] in queue else ln
                 for ln in self.qconf("-sq").splitlines()]
        (conf / "allq").write_text("\n".join(lines) + "\n")
        self.qconf("-Aq", str(conf / "allq"))

    def start_execd(self, node: str) -> None:
        run(["unshare", "--uts", "sh", "-c", f"hostname {node} && exec /usr/sbin/sge_execd"],
            netns=self.ns(node), env=self.env, timeout=30)

    def kill_master(self) -> None:
        pid = int((self.spool / "qmaster" / "qmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_for("the qmaster to die", lambda: not Path(f"/proc/{pid}").exists(), 10, 0.1)

    # -------------------------------------------------------------- teardown
    def pids(self, ns: str) -> list[int]:
        out = run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout
        return [int(p) for p in out.split()]

    def destroy(self) -> None:
        """Kill every process in the namespaces made here (qmaster, execds, shepherds,
        jobs: all started by this test), delete the namespaces and their /etc/netns entries
        and the temporary directory."""
        for _ in range(50):
            alive = [p for ns in self.netns for p in self.pids(ns)]
            if not alive:
                break
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for ns in reversed(self.netns):
            run(["ip", "netns", "del", ns], check=False, timeout=10)
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self.made_etc_netns:
            try:
                Path("/etc/netns").rmdir()      # only if nobody else put anything there
            except OSError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def cell() -> Iterator[MiniCell]:
    missing = missing_parts()
    if missing:
        pytest.skip("the Grid Engine system test needs: " + ", ".join(missing))
    base = Path(tempfile.mkdtemp(prefix="elastic-sge-"))
    base.chmod(0o755)                     # sgeadmin and nobody read the cell
    c = MiniCell(base, f"esge{os.getpid() % 100000}")
    try:
        c.make_cell()
        c.make_network()
        c.start_master()
        c.configure()
        yield c
    finally:
        c.destroy()
        leftovers = [ns for ns in c.netns
                     if ns in run(["ip", "netns", "list"], timeout=10).stdout.split()]
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    if os.environ.get("ELASTIC_SGE_CAPTURE") == "1":
        DATA.mkdir(parents=True, exist_ok=True)
        return DATA
    return tmp_path


def test_capture_and_parse_real_sge(cell: MiniCell, out_dir: Path) -> None:
    sge = SGE(root=str(cell.root), cell="default", netns=cell.head, timeout=20)

    def capture(argv: Sequence[str], name: str) -> str:
        text = cell.head_run(argv).stdout
        (out_dir / name).write_text(text)
        return text

    # ---- an empty cell
    empty = parse_qstat(capture(QSTAT, "qstat-empty.xml"), 0.0)
    assert empty.known and not empty.pending and not empty.running
    assert parse_qhost(capture(QHOST, "qhost-nohosts.xml")) == ()

    # ---- two exec hosts through the adapter, 4 slots each
    for node in ("node1", "node2"):
        sge.add_exec_host(node, slots=4)
        sge.add_exec_host(node, slots=4)          # idempotent
        cell.start_execd(node)
    wait_for("node1 and node2 to report", lambda: {
        h.name for h in sge.snapshot(time.time()).hosts if h.load is not None
    } >= {"node1", "node2"})

    # ---- two jobs in error (Eqw): a missing output directory, a missing working directory
    missing = cell.base / "missing"
    cell.submit("-N", "badout", "-o", f"{missing}/out", "-j", "y", "/bin/true")
    cell.submit("-N", "badwd", "-wd", str(missing), "-o", "/dev/null", "-j", "y", "/bin/true")
    wait_for("two Eqw jobs", lambda: sge.snapshot(time.time()).errored == 2)

    # ---- the workload, submitted while both hosts are disabled: everything pending
    sge.disable("node1")
    sge.disable("node2")
    job = ["-wd", str(cell.jobs), "-o", "/dev/null", "-j", "y"]
    cell.submit(*job, "-N", "plain1", "sleep", "600")
    cell.submit(*job, "-N", "plain2", "sleep", "600")
    cell.submit(*job, "-N", "arr", "-t", "1-10", "sleep", "600")
    cell.submit(*job, "-N", "arrstep", "-t", "1-20:2", "sleep", "600")
    cell.submit(*job, "-N", "held", "-h", "sleep", "600")
    cell.submit(*job, "-N", "heldarr", "-h", "-t", "1-5", "sleep", "600")
    cell.submit(*job, "-N", "pesmp", "-pe", "smp", "2", "sleep", "600")
    cell.submit(*job, "-N", "perange", "-pe", "make", "2-3", "sleep", "600")
    cell.submit(*job, "-N", "vmem", "-l", "h_vmem=512M,h_rt=01:00:00", "sleep", "600")
    cell.submit(*job, "-N", "inqueue", "-q", "all.q", "-p", "-10", "sleep", "600")
    time.sleep(1.5)                               # a scheduling run, to fill in priorities

    snap = parse_qstat(capture(QSTAT, "qstat-pending.xml"), time.time())
    by_name = {j.name: j for j in snap.pending}
    assert set(by_name) == {"plain1", "plain2", "arr", "arrstep", "pesmp", "perange", "vmem",
                            "inqueue"}
    assert snap.held == 6 and snap.errored == 2 and snap.running == ()
    assert by_name["arr"].tasks == 10 and by_name["arrstep"].tasks == 10
    assert (by_name["pesmp"].pe, by_name["pesmp"].slots) == ("smp", 2)
    assert (by_name["perange"].pe, by_name["perange"].slots) == ("make", 2)
    assert by_name["vmem"].resources == {"h_vmem": "512M", "h_rt": "3600"}
    assert by_name["inqueue"].queue == "all.q"
    assert all(j.owner == "nobody" and abs(j.submitted - time.time()) < 300
               for j in snap.pending)
    assert sum(j.tasks for j in snap.pending) == 26 and snap.pending_slots == 28
    hosts = {h.name: h for h in parse_qhost(capture(QHOST, "qhost-disabled.xml"))}
    assert set(hosts) == {"node1", "node2"}
    assert all(not h.enabled and h.slots_total == 4 and h.slots_used == 0
               for h in hosts.values())

    # ---- enable: 8 slots fill up, the rest stays pending
    sge.enable("node1")
    sge.enable("node2")
    wait_for("8 busy slots", lambda: sum(
        h.slots_used for h in sge.snapshot(time.time()).hosts) == 8)
    time.sleep(1.0)
    snap = parse_qstat(capture(QSTAT, "qstat-mixed.xml"), time.time())
    hosts = {h.name: h for h in parse_qhost(capture(QHOST, "qhost.xml"))}
    tasks_xml = capture(QSTAT_TASKS, "qstat-tasks.xml")
    assert sum(j.slots for j in snap.running) == 8
    assert {j.host for j in snap.running} <= {"node1", "node2"}
    assert sum(j.tasks for j in snap.pending) + len(snap.running) == 26
    assert snap.held == 6 and snap.errored == 2
    assert all(h.enabled and h.slots_used == h.slots_total == 4 for h in hosts.values())
    on1, on2 = running_on(tasks_xml, "node1"), running_on(tasks_xml, "node2")
    assert on1 and on2 and sge.running_jobs_on("node1") == on1

    # ---- a third host: added at run time, gets work, refuses removal until drained
    sge.add_exec_host("node3", slots=2)
    cell.start_execd("node3")
    busy = wait_for("a job on node3", lambda: sge.running_jobs_on("node3"))
    with pytest.raises(HostBusy) as caught:
        sge.remove_exec_host("node3")
    assert set(caught.value.jobs) >= set(busy)
    assert not {h.name: h for h in sge.snapshot(time.time()).hosts}["node3"].enabled
    for jid in caught.value.jobs:
        cell.head_run(["qdel", "-f", jid])
    wait_for("node3 to be empty", lambda: not sge.running_jobs_on("node3"))
    sge.remove_exec_host("node3")
    sge.remove_exec_host("node3")                 # idempotent
    assert "node3" not in cell.qconf("-sel").split()
    assert "node3" not in cell.qconf("-sh").split()
    assert "node3" not in cell.qconf("-shgrp", "@allhosts")
    assert "node3" not in cell.qconf("-sq", "all.q")
    assert "node3" not in {h.name for h in sge.snapshot(time.time()).hosts}

    # ---- an exec host whose execd stopped: unknown (u)
    cell.qconf("-ke", "node2")
    wait_for("node2 unknown", lambda: {
        h.name: h for h in parse_qhost(cell.head_run(QHOST).stdout)}["node2"].alarm)
    hosts = {h.name: h for h in parse_qhost(capture(QHOST, "qhost-unknown.xml"))}
    assert hosts["node2"].alarm and hosts["node2"].load is None
    assert not hosts["node1"].alarm

    # ---- the master down: qstat exits 1 with no XML -> unknown, never an empty queue
    cell.kill_master()
    down = cell.head_run(QSTAT, check=False)
    assert down.returncode != 0 and "<" not in down.stdout
    (out_dir / "qstat-master-down.stderr").write_text(down.stderr)
    snap = sge.snapshot(123.0)
    assert snap.known is False and snap.taken_at == 123.0 and snap.error
    assert snap.pending == () and snap.hosts == ()
