"""Pure parsers for Grid Engine's XML (Son of Grid Engine 8.1.9, as Debian ships it).

No I/O: text in, ``elastic.model`` objects out. Tested on output captured from a real
qmaster (``tests/data/sge/``, made by ``tests/system/test_sge_capture.py``).

- :func:`parse_qstat` reads ``qstat -xml -u '*' -r``: pending demand, held/errored counts,
  running jobs and where they run.
- :func:`parse_qhost` reads ``qhost -xml -q``: exec hosts, their slots, load, memory, and
  their queue instances' state letters.
- :func:`running_on` reads ``qstat -xml -u '*' -s rs -g t`` (one entry per master and slave
  task): the jobs that still occupy a host.

Anything that is not the XML these commands print raises ``ValueError`` with a message that
says which command's output was wrong and why. The caller turns that into an *unknown*
snapshot; an unreadable answer is never an empty queue.
"""

from __future__ import annotations

import gc
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo

from elastic.model import ExecHost, Job, QueueSnapshot

__all__ = ["count_tasks", "parse_memory_mib", "parse_qhost", "parse_qstat", "parse_time",
           "running_on"]

_UNITS = {"": 1 / (1024 * 1024), "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2,
          "P": 1024.0 ** 3}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGTP]?)\s*$", re.I)


# ----------------------------------------------------------------------------- pieces

def count_tasks(spec: str) -> int:
    """How many array tasks a task-range string names.

    ``"1-10:1"`` -> 10, ``"1-19:2"`` -> 10, ``"3,5,7-9"`` -> 5, ``"9,10"`` -> 2, ``"4"`` -> 1.
    SGE prints ranges as ``first-last:step`` with ``last`` already on the step (``-t 1-20:2``
    is shown as ``1-19:2``); a ``last`` off the step is counted the way SGE would expand it.
    """
    total = 0
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"bad task range {spec!r}: empty part")
        try:
            if "-" in part:
                first_s, _, rest = part.partition("-")
                last_s, _, step_s = rest.partition(":")
                first, last = int(first_s), int(last_s)
                step = int(step_s) if step_s else 1
                if step < 1 or last < first:
                    raise ValueError
                total += (last - first) // step + 1
            else:
                int(part)
                total += 1
        except ValueError:
            raise ValueError(f"bad task range {spec!r}: cannot read {part!r}") from None
    return total


def parse_time(text: str, tz: tzinfo | None = None) -> float:
    """SGE's list timestamp (``2026-11-22T03:04:33``, no zone) -> epoch seconds.

    ``qstat -xml`` prints the *local time of the qstat process* without saying which zone
    that is. We assume it is the zone of the process that parses (the adapter runs qstat on
    the same machine, with the same ``TZ``): ``tz=None`` reads it as this process's local
    time. Pass ``tz`` (e.g. ``datetime.timezone.utc``) when the output came from elsewhere.
    """
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"bad SGE timestamp {text!r}") from None
    if stamp.tzinfo is None and tz is not None:
        stamp = stamp.replace(tzinfo=tz)
    return stamp.timestamp()


def parse_memory_mib(text: str | None) -> int | None:
    """qhost's memory figures -> MiB: ``23.5G`` -> 24064, ``512.0M`` -> 512, ``-`` -> None.

    A bare number is bytes (qhost prints ``0.0`` for no swap)."""
    if text is None:
        return None
    text = text.strip()
    if text in ("", "-", "NA", "N/A"):
        return None
    m = _MEMORY.match(text)
    if not m:
        raise ValueError(f"bad memory figure {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _pe_min(text: str) -> int:
    """The smallest slot count of a requested PE range (``2``, ``2,3``, ``2-8``, ``4-``)."""
    best: int | None = None
    for part in text.split(","):
        head = part.strip().split("-", 1)[0].split(":", 1)[0].strip()
        if not head:
            continue
        n = int(head)
        best = n if best is None else min(best, n)
    if best is None:
        raise ValueError(f"bad PE range {text!r}")
    return best


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Building a tree of ~100,000 elements sets off the cyclic garbage collector over and
    over (it halves the time of a 5,000-job parse to keep it off). Nothing made here forms
    cycles; reference counting frees it all. Restores the collector only if it was on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _xml(text: str, what: str, root_tag: str) -> ET.Element:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: empty output, expected XML")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        first = text.strip().splitlines()[0][:120]
        raise ValueError(f"{what}: not well-formed XML ({e}); output began {first!r}") from None
    if root.tag != root_tag:
        raise ValueError(f"{what}: root element is <{root.tag}>, expected <{root_tag}>")
    return root


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


# ----------------------------------------------------------------------------- qstat

def parse_qstat(xml: str, now: float, *, tz: tzinfo | None = None) -> QueueSnapshot:
    """``qstat -xml -u '*' -r`` -> a known :class:`QueueSnapshot` (``hosts`` left empty).

    Pending jobs (``job_list state="pending"``):

    - a state with ``E`` (``Eqw``) is counted in ``errored``, one with ``h`` (``hqw``,
      ``hRq``, ...) in ``held``; neither is demand. Both count *tasks* (a held 5-task
      array adds 5). A pending job being deleted (``d``) is skipped.
    - everything else (``qw``, ``Rq``, ...) is a :class:`Job` with ``tasks`` = the number of
      pending array tasks (``<tasks>`` expanded), ``slots`` per task = the minimum of the
      requested PE range (``-pe make 2-3`` -> 2; SGE's ``<slots>`` shows the same),
      ``pe``, ``resources`` = hard ``-l`` requests, ``queue`` = hard ``-q`` request(s),
      ``submitted`` = the submission time in epoch seconds (see :func:`parse_time` for the
      zone; ``tz`` is passed through), ``priority`` = SGE's normalised ``JAT_prio``.

    Running jobs (everything with a queue instance): one :class:`Job` per running task,
    ``host`` taken from the master queue instance (``all.q@node3`` -> ``node3``), ``slots``
    the granted slots (a PE job's slave slots on other hosts are only in ``qhost``), and
    ``submitted`` None (this listing gives the start time instead).
    """
    with _no_cyclic_gc():
        return _parse_qstat(xml, now, tz)


def _parse_qstat(xml: str, now: float, tz: tzinfo | None) -> QueueSnapshot:
    root = _xml(xml, "qstat -xml", "job_info")
    pending: list[Job] = []
    running: list[Job] = []
    held = errored = 0
    times: dict[str, float] = {}   # thousands of jobs share a few submission seconds
    for el in root.iter("job_list"):
        # one pass over the children (5,000 jobs x ~12 children: find() per field is slower)
        f: dict[str, str] = {}
        pe = pe_text = None
        resources: dict[str, str] = {}
        queues: list[str] = []
        for child in el:
            tag, text = child.tag, (child.text or "").strip()
            if tag == "hard_request":
                resources[child.get("name", "")] = text
            elif tag == "hard_req_queue":
                if text:
                    queues.append(text)
            elif tag == "requested_pe":
                pe, pe_text = child.get("name"), text
            else:
                f[tag] = text
        number = f.get("JB_job_number")
        if not number:
            raise ValueError("qstat -xml: a job_list without JB_job_number")
        state = f.get("state", "")
        queue_instance = f.get("queue_name", "")
        name = f.get("JB_name", "")
        owner = f.get("JB_owner", "")
        try:
            slots = int(f.get("slots") or "1")
            prio = float(f.get("JAT_prio") or "0")
        except ValueError:
            raise ValueError(f"qstat -xml: job {number}: bad slots or priority") from None
        queue = ",".join(queues) or None
        tasks_text = f.get("tasks")

        if queue_instance or el.get("state", "pending") != "pending":
            host = queue_instance.rpartition("@")[2] or None
            running.append(Job(id=number, name=name, owner=owner, state=state, slots=slots,
                               tasks=1, pe=pe, queue=queue, resources=resources,
                               submitted=None, priority=prio, host=host))
            continue

        tasks = count_tasks(tasks_text) if tasks_text else 1
        if "E" in state:
            errored += tasks
            continue
        if "h" in state:
            held += tasks
            continue
        if "d" in state:
            continue
        if pe_text:
            try:
                slots = _pe_min(pe_text)
            except ValueError:
                raise ValueError(f"qstat -xml: job {number}: bad PE range "
                                 f"{pe_text!r}") from None
        stamp = f.get("JB_submission_time")
        submitted = None
        if stamp:
            submitted = times.get(stamp)
            if submitted is None:
                submitted = times[stamp] = parse_time(stamp, tz)
        pending.append(Job(id=number, name=name, owner=owner, state=state, slots=slots,
                           tasks=tasks, pe=pe, queue=queue, resources=resources,
                           submitted=submitted, priority=prio))
    return QueueSnapshot(taken_at=now, known=True, pending=tuple(pending),
                         running=tuple(running), held=held, errored=errored)


def running_on(xml: str, host: str) -> list[str]:
    """The jobs that occupy ``host``, from ``qstat -xml -u '*' -s rs -g t``.

    ``-g t`` lists every master and slave task with its queue instance, so a parallel job
    whose master runs elsewhere still counts. Ids are SGE's: ``"42"``, or ``"42.3"`` for
    task 3 of an array job (what ``qdel``/``qmod -rj`` accept). Sorted, no duplicates."""
    with _no_cyclic_gc():
        root = _xml(xml, "qstat -xml -g t", "job_info")
    found: set[tuple[int, int]] = set()
    for el in root.iter("job_list"):
        queue_instance = _text(el, "queue_name") or ""
        if queue_instance.rpartition("@")[2] != host:
            continue
        number = _text(el, "JB_job_number")
        if not number or not number.isdigit():
            raise ValueError("qstat -xml -g t: a job_list without a job number")
        task = _text(el, "tasks")
        found.add((int(number), int(task) if task and task.isdigit() else 0))
    return [f"{j}.{t}" if t else str(j) for j, t in sorted(found)]


# ----------------------------------------------------------------------------- qhost

def parse_qhost(xml: str) -> tuple[ExecHost, ...]:
    """``qhost -xml -q`` -> one :class:`ExecHost` per exec host (``global`` is skipped).

    - ``slots_total``/``slots_used``: the sums over the host's queue instances.
    - ``load``: ``load_avg`` (None when ``-``: the host does not report).
    - ``memory_*_mib``: ``mem_total``/``mem_used`` in MiB (``1.9G``, ``512.0M``; ``-`` -> None).
    - ``enabled``: at least one queue instance is neither disabled (``d``, ``D``) nor in
      error (``E``). A host with no queue instance at all cannot run anything: False.
    - ``alarm``: a queue instance is unknown (``u``, ``au``): the execd is not heard from.
      A bare load alarm (``a``) is a host that answers but is busy, not an alarm here.
    """
    root = _xml(xml, "qhost -xml", "qhost")
    hosts: list[ExecHost] = []
    for h in root.findall("host"):
        name = h.get("name")
        if not name:
            raise ValueError("qhost -xml: a host without a name")
        if name == "global":
            continue
        values = {v.get("name"): (v.text or "").strip() for v in h.findall("hostvalue")}
        total = used = 0
        states: list[str] = []
        for q in h.findall("queue"):
            qv = {v.get("name"): (v.text or "").strip() for v in q.findall("queuevalue")}
            try:
                total += int(qv.get("slots") or 0)
                used += int(qv.get("slots_used") or 0)
            except ValueError:
                raise ValueError(f"qhost -xml: host {name}: bad slot counts {qv}") from None
            states.append(qv.get("state_string") or "")
        load_text = values.get("load_avg", "-")
        try:
            load = None if load_text in ("", "-") else float(load_text)
            mem_total = parse_memory_mib(values.get("mem_total"))
            mem_used = parse_memory_mib(values.get("mem_used"))
        except ValueError as e:
            raise ValueError(f"qhost -xml: host {name}: {e}") from None
        enabled = any(not (set(s) & {"d", "D", "E"}) for s in states)
        alarm = any("u" in s for s in states)
        hosts.append(ExecHost(name=name, slots_total=total, slots_used=used, load=load,
                              memory_total_mib=mem_total, memory_used_mib=mem_used,
                              enabled=enabled, alarm=alarm))
    return tuple(hosts)
