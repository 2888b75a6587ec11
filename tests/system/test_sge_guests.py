"""Grid Engine inside tiny guests made by `elastic up` in the lab.

A head VM (image tiny-sge, `elastic-sge master`: a fresh cell, sge_qmaster, all.q, every node
of the project pre-admitted as an admin host) and two worker VMs (`elastic-sge exec --master
head`: each registers itself as an exec host in @allhosts with slots = its vcpus, then starts
sge_execd). There is no ssh into tiny guests, so the head's startup script does the checking
in the guest: it waits until both workers report in `qhost`, submits one job per worker as
the unprivileged `sgeuser`, and prints what `qacct` says on its serial console, which the
test reads from the host's storage pool (`<project>-head.console.log`).

Skipped when the Debian Grid Engine packages (gridengine-master, -exec, -client) are missing;
the image itself is built by `images/tiny-sge/build.sh` on the first `elastic up`.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SGE_LIB = "/usr/lib/gridengine"
NEEDED = [f"{SGE_LIB}/{b}" for b in ("sge_qmaster", "sge_execd", "sge_shepherd", "qconf",
                                      "qstat", "qsub", "qhost", "qacct", "qmod", "qdel",
                                      "spoolinit", "spooldefaults.bin", "libspoolb.so")]
NEEDED += ["/usr/share/gridengine/default-bootstrap",
           "/usr/share/gridengine/default-configuration",
           "/usr/share/gridengine/util/resources/centry"]
WORKERS = 2

# Run on the head (a file of the spec, started in the background by its startup commands).
SELFTEST = r"""#!/bin/sh
# Wait for N workers in qhost, submit N jobs as sgeuser, print what qacct says about them.
want=${1:-2}
. /etc/default/gridengine
export SGE_ROOT SGE_CELL
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "$*" >/dev/console; }
i=0
while :; do
    n=$(qhost 2>/dev/null | awk 'NR > 3 && $2 != "-" {c++} END {print c + 0}')
    [ "$n" -ge "$want" ] && break
    i=$((i + 1)); [ $i -lt 600 ] || { say "SGE-TEST-FAILED workers=$n"; exit 1; }
    sleep 1
done
say "SGE-TEST-WORKERS $n $(up)"
qhost | sed 's/^/SGE-TEST-QHOST /' >/dev/console
ids=""
for k in $(seq 1 "$want"); do
    id=$(su sgeuser -s /bin/sh -c "cd /tmp && qsub -b y -o /dev/null -j y -N probe$k /bin/sleep 3" |
        awk '{print $3}')
    ids="$ids $id"
done
say "SGE-TEST-SUBMITTED$ids $(up)"
seen=""
i=0
while :; do
    for id in $ids; do
        case " $seen " in *" $id "*) continue ;; esac
        q=$(qstat -u '*' -s r | awk -v id="$id" '$1 == id {print $8}')
        [ -n "$q" ] && { seen="$seen $id"; say "SGE-TEST-RUNNING $id $q $(up)"; }
    done
    finished=0
    for id in $ids; do qacct -j "$id" >/dev/null 2>&1 && finished=$((finished + 1)); done
    [ "$finished" -eq "$want" ] && break
    i=$((i + 1)); [ $i -lt 600 ] || { say "SGE-TEST-FAILED jobs"; exit 1; }
    sleep 0.5
done
for id in $ids; do
    qacct -j "$id" | awk -v id="$id" '
        $1 == "hostname" {h = $2} $1 == "owner" {o = $2} $1 == "exit_status" {e = $2}
        $1 == "failed" {f = $2}
        END {printf "SGE-TEST-DONE %s host=%s owner=%s exit=%s failed=%s\n", id, h, o, e, f}' \
        >/dev/console
done
say "SGE-TEST-END $(up)"
"""

SPEC = """
project: sgeguests
networks:
  cluster: {{cidr: 10.42.0.0/24, gateway: 10.42.0.1}}
classes:
  base:
    image: tiny-sge
    memory: 192M          # 128M is too little for the 19.5 MB initramfs (44 MB unpacked)
    vcpus: 1
    host: h1              # a private network lives on one host
    interfaces: {{eth0: {{network: cluster}}}}
    users:
      sgeuser: {{shell: /bin/sh, uid: 1000}}
  head:
    inherit: base
    memory: 256M
    files:
      /root/sge-selftest.sh: {{source: selftest.sh, mode: "0755"}}
    startup:
      - elastic-sge master
      - sh /root/sge-selftest.sh {workers} &
  worker:
    inherit: base
    startup:
      - elastic-sge exec --master head
nodes:
  head: {{class: head, interfaces: {{eth0: {{address: 10.42.0.2}}}}}}
  worker: {{class: worker, count: {workers}, names: "worker{{n}}"}}
"""


def missing_sge() -> list[str]:
    out = [p for p in NEEDED if not os.path.exists(p)]
    try:
        pwd.getpwnam("sgeadmin")
    except KeyError:
        out.append("user sgeadmin (package gridengine-common)")
    return out


def elastic(state: Path, *args: str, timeout: float = 600, check: bool = True):
    p = subprocess.run([sys.executable, "-m", "elastic.cli.main", "--state-dir", str(state),
                        *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"elastic {' '.join(args)} exited {p.returncode}\n{p.stdout}\n"
                             f"{p.stderr}")
    return p


def test_a_job_submitted_on_the_head_runs_on_a_worker(lab, tmp_path):
    missing = missing_sge()
    if missing:
        pytest.skip("Grid Engine in guests needs (gridengine-master, gridengine-exec, "
                    "gridengine-client): " + ", ".join(missing))
    from elastic.adapters.providers.libvirt import LibvirtHost
    h1 = next(h for h in lab.hosts if h.name == "h1")
    state = tmp_path / "state"
    (tmp_path / "selftest.sh").write_text(SELFTEST)
    spec = tmp_path / "cluster.yaml"
    spec.write_text(f"include: [{lab.hosts_file}]\n" + SPEC.format(workers=WORKERS))
    host = LibvirtHost("h1", h1.uri)
    try:
        t0 = time.monotonic()
        result = json.loads(elastic(state, "up", str(spec), "-o", "json").stdout)
        t_up = time.monotonic() - t0
        workers = [f"worker{n}" for n in range(1, WORKERS + 1)]
        assert sorted(result["running"]) == ["head", *workers], result

        def console(node: str) -> str:
            try:
                raw = host.read_volume(f"sgeguests-{node}.console.log")
            except Exception:   # noqa: BLE001 - not there yet
                return ""
            return raw.decode(errors="replace").replace("\r", "")

        # Markers are whole lines but may follow a login prompt ("head login: SGE-...").
        seen: dict[str, float] = {}
        deadline = time.monotonic() + 240
        log = ""
        while time.monotonic() < deadline:
            log = console("head")
            for mark in ("SGE-MASTER-READY", "SGE-TEST-WORKERS", "SGE-TEST-SUBMITTED",
                         "SGE-TEST-RUNNING", "SGE-TEST-END", "SGE-TEST-FAILED"):
                if mark in log and mark not in seen:
                    seen[mark] = time.monotonic() - t0
            if "SGE-TEST-END" in log or "SGE-TEST-FAILED" in log:
                break
            time.sleep(0.5)
        assert "SGE-TEST-END" in log, log[-3000:]

        # every worker joined (its own console) and reports in qhost on the head
        joined = {}
        for w in workers:
            m = re.search(rf"SGE-EXEC-JOINED {w} (\d+) ([\d.]+)", console(w), re.M)
            assert m, console(w)[-2000:]
            joined[w] = float(m.group(2))
            assert re.search(rf"SGE-TEST-QHOST {w}\s+lx-amd64\s+1\s", log, re.M), log[-3000:]
        # one job per worker: each ran there as sgeuser and exited 0
        done = re.findall(r"SGE-TEST-DONE (\d+) host=(\S+) owner=(\S+) exit=(\S+) failed=(\S+)",
                          log, re.M)
        assert len(done) == WORKERS, log[-3000:]
        for _job, where, owner, code, failed in done:
            assert where in workers and owner == "sgeuser" and code == "0" and failed == "0", \
                done
        assert {d[1] for d in done} == set(workers)

        up = {m.group(1): float(m.group(2)) for m in re.finditer(
            r"(SGE-MASTER-READY|SGE-TEST-WORKERS|SGE-TEST-SUBMITTED|SGE-TEST-END)\b.*?([\d.]+)$",
            log, re.M)}
        running = [float(x) for x in re.findall(r"SGE-TEST-RUNNING \S+ \S+ ([\d.]+)$", log,
                                                re.M)]
        print(f"\nelastic up (head + {WORKERS} workers, tiny-sge): {t_up:.1f} s; head uptime: "
              f"qmaster ready {up['SGE-MASTER-READY']:.1f} s, {WORKERS} workers in qhost "
              f"{up['SGE-TEST-WORKERS']:.1f} s; workers' uptime at join: "
              + ", ".join(f"{w} {t:.1f} s" for w, t in joined.items())
              + f"; qsub -> running {max(running) - up['SGE-TEST-SUBMITTED']:.2f} s; "
              f"test clock: workers seen {seen.get('SGE-TEST-WORKERS', -1):.1f} s, "
              f"all done {seen.get('SGE-TEST-END', -1):.1f} s after `up` started")
    finally:
        host.close()
        elastic(state, "down", "sgeguests", check=False)
