"""The autoscaler with real Grid Engine in real guests on the lab: what an operator sees.

The cluster is `examples/sge/cluster-lab.yaml` as shipped (a head running sge_qmaster, no
workers, min_workers 0), renamed and told to reach the head from the lab's front-end
namespace (`elastic-front`), since these tests keep their own state directory. Jobs are
submitted on the head over SSH as the unprivileged `sgeuser`, with elastic's own key, the
same way the controller talks to the qmaster. `qacct` on the head says how each job ended.

The autoscaler runs as the real command (`elastic autoscale FILE`) in a subprocess, stopped
with SIGTERM (or killed with SIGKILL, in the crash test).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.test_sge_guests import missing_sge
from tests.system.test_up import elastic, host_domains, host_volumes, status
from tests.system.waiting import wait_for as _wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sge" / "cluster-lab.yaml"
FRONT = "elastic-front"


def lab_spec(tmp: Path, lab, project: str, *, head_lan: str, cidr_octet: int,
             extra: str = "", worker_conf: str | None = None) -> Path:
    """The shipped example, as project ``project`` on its own addresses."""
    text = EXAMPLE.read_text()
    text = text.replace("project: sgelab", f"project: {project}")
    text = text.replace("batch: {system: sge, master: head}",
                        f"batch: {{system: sge, master: head, netns: {FRONT}}}")
    text = text.replace("eth1: {address: 10.77.0.20}", f"eth1: {{address: {head_lan}}}")
    text = text.replace("10.20.0.", f"10.{cidr_octet}.0.")
    # quicker than the example's timers: these tests wait for every scale-down
    for old, new in (("idle_timeout: 20s", "idle_timeout: 3s"),
                     ("min_lifetime: 20s", "min_lifetime: 3s"),
                     ("cooldown: 5s", "cooldown: 2s"), ("tick: 2s", "tick: 1s\n  backoff: 3s")):
        assert old in text, old
        text = text.replace(old, new)
    if worker_conf is not None:
        text = text.replace('"SGE_ROLE=exec\\nSGE_MASTER=head\\n"', worker_conf)
    assert f"project: {project}" in text and FRONT in text and head_lan in text
    path = tmp / f"{project}.yaml"
    path.write_text(f"include: [{lab.hosts_file}]\n" + text + extra)
    return path


class Head:
    """Commands on the head node over SSH (elastic's own key, from the front end)."""

    def __init__(self, state: Path, project: str, address: str) -> None:
        from elastic.adapters.run import SSH
        self.ssh = SSH(address, key=state / "keys" / project, via_netns=FRONT)

    def sh(self, script: str, timeout: float = 60) -> str:
        return self.ssh(["sh", "-c", script], timeout=timeout).stdout

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if "all.q@head" in self.sh("qstat -f -u '*'"):   # set up to the end
                    return
            except Exception:                   # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def qsub(self, seconds: float, count: int = 1) -> list[str]:
        """``count`` jobs of ``sleep seconds`` as sgeuser; their ids."""
        out = self.sh(f"cd /home/sgeuser && for i in $(seq {count}); do su sgeuser -c "
                      f"'qsub -terse -w n -b y -o /dev/null -j y sleep {seconds}'; done")
        ids = re.findall(r"^(\d+)$", out, re.M)
        assert len(ids) == count, out
        return ids

    def qacct(self) -> dict[str, dict[str, str]]:
        """Every finished job: id -> {hostname, exit_status, failed, ru_wallclock, ...}."""
        out = self.sh("qacct -j '*' 2>/dev/null || true")
        jobs: dict[str, dict[str, str]] = {}
        for block in re.split(r"^=+\s*$", out, flags=re.M):
            fields = dict(re.findall(r"^(\w+)\s+(.*?)\s*$", block, re.M))
            if "jobnumber" in fields:
                jobs[fields["jobnumber"]] = fields
        return jobs

    def running(self) -> dict[str, str]:
        """Running jobs: id -> host."""
        out = self.sh("qstat -u '*' -s r")
        return {m.group(1): m.group(2) for m in re.finditer(
            r"^\s*(\d+)\s+\S+\s+\S+\s+\S+\s+r\s+\S+\s+\S+\s+\S+@(\S+)", out, re.M)}

    def close(self) -> None:
        self.ssh.close()


@contextlib.contextmanager
def autoscaler(state: Path, spec: Path, log: Path):
    """`elastic autoscale SPEC` in the background; SIGTERM at the end must stop it cleanly."""
    out = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                          "autoscale", str(spec)], stdout=out, stderr=subprocess.STDOUT,
                         cwd=ROOT)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                raise AssertionError(f"the autoscaler ignored SIGTERM\n{log.read_text()[-3000:]}")
        out.close()


def workers(state: Path, project: str) -> dict[str, str]:
    return {n["name"]: n["state"] for n in status(state, project)["nodes"]
            if n["name"].startswith("worker")}


DIAGNOSE: list = []      # (head, state, project) of the test running now: what to show on failure


def diagnosis() -> str:
    out = []
    for head, state, project in DIAGNOSE[-1:]:
        for cmd in ("qstat -f -u '*'", "qhost -q", "qacct -j '*' | grep -E "
                    "'^(jobnumber|hostname|exit_status|failed|start_time|end_time)' | tail -40"):
            try:
                out.append(f"$ {cmd}\n{head.sh(cmd + ' 2>&1 || true')}")
            except Exception as e:   # noqa: BLE001 - a diagnosis must not fail
                out.append(f"$ {cmd}\n({e})")
        try:
            nodes = status(state, project)["nodes"]
            out.append("nodes: " + ", ".join(f"{n['name']} {n['state']} ({n['reason'][:80]})"
                                             for n in nodes))
        except Exception as e:       # noqa: BLE001
            out.append(f"status: {e}")
    return "\n".join(out)


def wait_for(what: str, check, timeout: float, log: Path | None = None, every: float = 1.0):
    """Polling with what Grid Engine and the autoscaler's log say when it times out."""
    def explain() -> str:
        tail = log.read_text()[-6000:] if log and log.exists() else ""
        return f"{diagnosis()}\n--- the autoscaler's log:\n{tail}"
    return _wait_for(what, check, timeout, every=every, explain=explain)


@pytest.fixture(scope="module")
def sge_cluster(lab, tmp_path_factory):
    """The head of `sgeauto` (no workers), up for the module's tests, removed afterwards."""
    missing = missing_sge()
    if missing:
        pytest.skip("Grid Engine in guests needs (gridengine-master, gridengine-exec, "
                    "gridengine-client): " + ", ".join(missing))
    tmp = tmp_path_factory.mktemp("sgeauto")
    state = tmp / "state"
    spec = lab_spec(tmp, lab, "sgeauto", head_lan="10.77.0.24", cidr_octet=21)
    elastic(state, "up", str(spec), timeout=600)
    head = Head(state, "sgeauto", "10.77.0.24")
    DIAGNOSE.append((head, state, "sgeauto"))
    try:
        head.wait_ready()
        yield state, spec, head, tmp
    finally:
        head.close()
        elastic(state, "down", "sgeauto", timeout=300, check=False)


def test_twelve_short_jobs_grow_the_cluster_which_then_shrinks_back(sge_cluster, lab):
    state, spec, head, tmp = sge_cluster
    log = tmp / "autoscale-12.log"
    assert workers(state, "sgeauto") == {}
    t0 = time.monotonic()
    jobs = head.qsub(3, count=12)
    seen_workers: set[str] = set()
    most = 0
    with autoscaler(state, spec, log) as daemon:
        # a second autoscaler on the same project is refused, and changes nothing
        wait_for("the autoscaler's first tick", lambda: "waiting" in log.read_text(), 60, log,
                 every=0.5)
        second = elastic(state, "autoscale", "--once", str(spec), check=False, timeout=120)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"locked by another elastic process (pid {daemon.pid}" in second.stderr

        def all_done():
            now = workers(state, "sgeauto")
            seen_workers.update(now)
            nonlocal most
            most = max(most, len([s for s in now.values() if s != "DONE"]))
            done = head.qacct()
            return done if all(j in done for j in jobs) else None
        done = wait_for("12 jobs to finish", all_done, 300, log, every=2)
        t_done = time.monotonic() - t0
        # every job ran to the end, on a worker the autoscaler added, as sgeuser
        for j in jobs:
            assert done[j]["exit_status"] == "0" and done[j]["failed"] == "0", done[j]
            assert done[j]["owner"] == "sgeuser"
            assert done[j]["hostname"].startswith("worker"), done[j]
        assert 1 <= most <= 4                                   # max_workers 4
        assert {done[j]["hostname"] for j in jobs} <= seen_workers
        # idle now: drained and removed, back to min_workers (0)
        wait_for("the workers to be removed", lambda: not workers(state, "sgeauto"), 240, log,
                 every=2)
        t_empty = time.monotonic() - t0
    report = status(state, "sgeauto")
    kinds = [d["kind"] for d in report["decisions"]]
    assert "decision:remove" in kinds
    with_reason = [d for d in report["decisions"] if d["kind"] == "decision:remove"]
    assert all("runs nothing" in d["reason"] for d in with_reason)
    h1_domains = host_domains(lab, "h1") + host_domains(lab, "h2")
    assert [d for d in h1_domains if d.endswith(".sgeauto")] == ["head.sgeauto"]
    vols = [v for h in ("h1", "h2") for v in host_volumes(lab, h) if v.startswith("sgeauto-")]
    assert all(v.startswith("sgeauto-head") for v in vols), vols
    print(f"\n12 jobs of 3 s on an empty cluster: all done {t_done:.0f} s after qsub, at most "
          f"{most} workers; back to 0 workers at {t_empty:.0f} s")


def test_a_drained_worker_is_kept_until_its_long_job_ends(sge_cluster):
    state, spec, head, tmp = sge_cluster
    log = tmp / "autoscale-long.log"
    assert workers(state, "sgeauto") == {}, "workers left by the test before"
    (job,) = head.qsub(45)
    with autoscaler(state, spec, log):
        where = wait_for("the long job to start", lambda: head.running().get(job), 180, log)
        # the operator asks for one worker less: it is drained, not killed
        out = elastic(state, "remove-workers", "1", "sgeauto", "--no-wait", "-o", "json",
                      timeout=120)
        assert json.loads(out.stdout) == {"drained": [where], "removed": [],
                                          "still_running_jobs": [where]}, out.stdout
        assert workers(state, "sgeauto")[where] == "DRAINING"
        queues = head.sh("qstat -f -u '*'")
        assert re.search(rf"all\.q@{where}\S*\s+\S+\s+\S+\s+\S+\s+\S+\s+d", queues), queues
        # ... and kept while the job runs (the autoscaler's ticks go on meanwhile), for a
        # window that ends well before the job does (each look costs a second or two)
        window = time.monotonic() + 15
        while time.monotonic() < window:
            assert head.running().get(job) == where
            assert workers(state, "sgeauto").get(where) == "DRAINING"
            time.sleep(1)
        # the job ends by itself; then the worker goes
        acct = wait_for("the long job to end", lambda: head.qacct().get(job), 120, log)
        wait_for(f"{where} to be removed", lambda: where not in workers(state, "sgeauto"), 120,
                 log)
    assert acct["exit_status"] == "0" and acct["failed"] == "0", acct
    assert acct["hostname"] == where
    assert float(acct["ru_wallclock"].rstrip("s")) >= 45


def test_a_controller_killed_mid_scale_up_leaves_no_duplicate_or_orphan(sge_cluster, lab):
    state, spec, head, tmp = sge_cluster
    log = tmp / "autoscale-kill.log"
    jobs = head.qsub(2, count=3)
    with autoscaler(state, spec, log) as p:
        # kill it while its first workers boot: VMs made and started, not yet ready
        wait_for("a worker to boot", lambda: "BOOT" in workers(state, "sgeauto").values(),
                 120, log, every=0.1)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    made = workers(state, "sgeauto")
    with autoscaler(state, spec, log):
        done = wait_for("the jobs to finish after the restart",
                        lambda: (d := head.qacct()) and all(j in d for j in jobs) and d,
                        300, log, every=2)
        for j in jobs:
            assert done[j]["exit_status"] == "0", done[j]
        now = {n: s for n, s in workers(state, "sgeauto").items() if s != "DONE"}
        domains = [d for h in ("h1", "h2") for d in host_domains(lab, h)
                   if d.endswith(".sgeauto") and d != "head.sgeauto"]
        # every VM is a worker the DB knows, and only once; never more than max_workers
        assert len(domains) == len(set(domains))
        assert {d.split(".")[0] for d in domains} <= set(now), (domains, now)
        assert len(now) <= 4
        wait_for("the workers to be removed", lambda: not workers(state, "sgeauto"), 240, log,
                 every=2)
    # and when they are gone, nothing of them is left on any host
    assert [d for h in ("h1", "h2") for d in host_domains(lab, h)
            if d.endswith(".sgeauto")] == ["head.sgeauto"]
    assert not [v for h in ("h1", "h2") for v in host_volumes(lab, h)
                if v.startswith("sgeauto-worker")]
    print(f"\nkilled with workers {made}; after the restart every job finished, no orphan")


def test_a_worker_that_never_joins_is_replaced_until_the_breaker_trips(sge_cluster, lab,
                                                                     tmp_path):
    """The module's head, autoscaled with a broken worker class: its workers boot, but their
    Grid Engine never starts. Two are replaced, then the breaker stops launches, until the
    operator closes it (elastic reset-breaker)."""
    state, _spec, head, _tmp = sge_cluster
    spec = lab_spec(tmp_path, lab, "sgeauto", head_lan="10.77.0.24", cidr_octet=21,
                    worker_conf='"SGE_ROLE=none\\n"')
    text = spec.read_text()
    for key, value in (("boot_timeout: 90s", "boot_timeout: 15s"),
                       ("max_launch_per_tick: 4", "max_launch_per_tick: 1\n"
                        "  breaker_failures: 2")):
        assert key in text
        text = text.replace(key, value)
    spec.write_text(text)
    log = tmp_path / "autoscale.log"
    from elastic.state import Store
    with Store.open(state, readonly=True) as store:
        before = len(store.events("sgeauto"))
    (job,) = head.qsub(1)
    try:
        with autoscaler(state, spec, log):
            def tripped():
                return [s for s in status(state, "sgeauto")["scaling"] if s["breakers"]]
            wait_for("the breaker to trip", tripped, 240, log, every=2)
            time.sleep(6)          # a few more ticks: nothing more is launched
            report = status(state, "sgeauto")
            text_status = elastic(state, "status", "sgeauto").stdout
        with Store.open(state, readonly=True) as store:
            events = store.events("sgeauto")[before:]
        launched = [e for e in events if e.kind == "decision:launch"]
        replaced = [e for e in events if e.kind == "decision:replace"]
        assert len(launched) == 2 and len(replaced) == 2, [(e.kind, e.reason) for e in events]
        assert all("has not joined the batch system" in e.reason for e in replaced)
        (sc,) = report["scaling"]
        (why,) = sc["breakers"].values()
        assert "2 consecutive launch failures" in why, why
        assert "BREAKER OPEN" in text_status and "consecutive launch failures" in text_status
        # nothing is left of the failed workers, and nothing new was launched
        assert not [s for s in workers(state, "sgeauto").values() if s != "DONE"]
    finally:
        head.sh(f"qdel {job} || true")
        closed = elastic(state, "reset-breaker", "sgeauto")
    assert "closed the breaker of private" in closed.stdout, closed.stdout
    assert not status(state, "sgeauto")["scaling"][0]["breakers"]
