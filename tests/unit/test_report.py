"""elastic.engine.report: the pure helpers (intervals, median, p95, node-hours, downsampling,
parse_since), the summary of a state DB filled through the Store API, and the PNG of the
timeline (elastic.adapters.plot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic.engine.report import (
    TimelinePoint,
    Transition,
    clip,
    downsample,
    instance_type_of,
    job_stats,
    median,
    node_hours,
    p95,
    parse_since,
    point_of,
    points_from_samples,
    summary,
    summary_lines,
    timeline,
    up_intervals,
)
from elastic.errors import PermanentError
from elastic.lifecycle import State
from elastic.model import Job
from elastic.state import Store
from elastic.state.store import JobRecord, QueueSampleRecord

T0 = 1_700_000_000.0
H = 3600.0
NOW = T0 + 10 * H
PRICES = {"t3.medium": 0.05, "t3.large": 0.1}


# --- pure helpers -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("2h", 7200.0), ("30m", 1800.0), ("1d", 86400.0), ("90s", 90.0), ("1.5h", 5400.0),
    (" 45m ", 2700.0),
])
def test_parse_since_units(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "h", "2w", "-1h", "0s", "1h30m", "two hours", "2 H"])
def test_parse_since_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"--since|longer than 0"):
        parse_since(text)


def test_parse_since_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="s, m, h, d"):
        parse_since(7200)  # type: ignore[arg-type]


def test_clip() -> None:
    assert clip(0, 10, 2, 8) == 6
    assert clip(0, 10, -5, 20) == 10
    assert clip(0, 10, 10, 20) == 0
    assert clip(0, 10, 11, 20) == 0
    assert clip(5, 15, 0, 10) == 5


def test_median_and_p95() -> None:
    assert median([]) is None and p95([]) is None
    assert median([3.0]) == 3.0 and p95([3.0]) == 3.0
    assert median([5, 1, 3]) == 3.0
    assert median([4, 1, 3, 2]) == 2.5
    values = list(range(1, 21))               # 1..20: nearest rank ceil(0.95 * 20) = 19
    assert p95(values) == 19.0
    assert p95(list(range(1, 101))) == 95.0
    assert p95([10, 1000]) == 1000.0          # ceil(1.9) = 2


def tr(t: float, state: State, reason: str = "", **data) -> Transition:
    return Transition(t, state, reason, data)


def test_up_intervals_from_running_to_done_stopped_or_failed() -> None:
    trs = [tr(0, State.PROLOG), tr(10, State.BOOT), tr(20, State.RUNNING),
           tr(50, State.DRAINING), tr(60, State.RUNNING),      # a cancelled drain: still up
           tr(80, State.SHUTDOWN), tr(90, State.STOPPED),     # stopped closes it
           tr(100, State.BOOT), tr(110, State.RUNNING), tr(130, State.FAILED),
           tr(140, State.RUNNING)]                            # came back: open until now
    assert up_intervals(trs, now=200) == [(20, 90), (110, 130), (140, 200)]
    assert node_hours(trs, since=0, now=200) == pytest.approx((70 + 20 + 60) / H)
    assert node_hours(trs, since=100, now=150) == pytest.approx((20 + 10) / H)


def test_up_intervals_ignore_order_of_input_and_nodes_never_up() -> None:
    assert up_intervals([tr(20, State.DONE), tr(10, State.RUNNING)], now=99) == [(10, 20)]
    assert up_intervals([tr(0, State.PROLOG), tr(5, State.FAILED)], now=99) == []
    assert node_hours([], since=0, now=100) == 0.0


def test_instance_type_from_data_or_the_start_event() -> None:
    started = tr(5, State.BOOT, "instance i-0abc (t3.large) starting on clouds.ec2",
                 provider_id="i-0abc")
    assert instance_type_of([started]) == "t3.large"
    adopted = tr(6, State.BOOT, "adopted instance i-9 (t3.medium) starting on clouds.ec2")
    assert instance_type_of([adopted]) == "t3.medium"
    assert instance_type_of([tr(5, State.BOOT, "x", instance_type="c5.xlarge")]) == "c5.xlarge"
    assert instance_type_of([], {"instance_type": "m5.large"}) == "m5.large"
    assert instance_type_of([tr(5, State.BOOT, "booting")]) is None


def test_job_stats_counts_jobs_that_started_and_ended_in_the_window() -> None:
    def job(i: int, submitted, started, ended) -> JobRecord:
        return JobRecord("p", str(i), "j", "u", 2, submitted, started, ended, None, None)
    jobs = [job(1, 0, 100, 200), job(2, 50, 350, 400), job(3, 0, 10, 20),  # 3: before window
            job(4, 0, None, 300),                    # left without running
            job(5, 0, 300, None),                    # still running
            job(6, None, 310, 320)]                  # no submission time: counted, no wait
    stats = job_stats(jobs, since=100, now=500)
    assert stats == {"jobs_run": 3, "slots_run": 6, "wait_median": 200.0, "wait_p95": 300.0,
                     "waits_known": 2}


def sample(t: float, pending: int, workers: dict[str, int], project: str = "p",
           slots: int | None = None, running: int = 0) -> QueueSampleRecord:
    return QueueSampleRecord(project, t, pending, pending * 2 if slots is None else slots,
                             running, workers)


def test_points_from_samples_private_and_cloud() -> None:
    p = point_of(sample(5, 3, {"private": 2, "ec2": 1, "gce": 2}, running=4))
    assert p == TimelinePoint(5, 3, 6, 4, 2, 3)
    assert point_of(p) is p


def test_points_from_samples_of_several_projects_add_their_latest() -> None:
    pts = points_from_samples([sample(0, 1, {"private": 1}, "a"),
                               sample(10, 5, {"private": 2, "ec2": 1}, "b"),
                               sample(20, 2, {"private": 1}, "a")])
    assert [(p.t, p.pending_jobs, p.workers_private, p.workers_cloud) for p in pts] == [
        (0, 1, 1, 0), (10, 6, 3, 1), (20, 7, 3, 1)]


def test_downsample_max_of_queue_last_of_workers() -> None:
    pts = [TimelinePoint(float(i), i % 4, 10 - i, i, i, 10 - i) for i in range(10)]
    assert downsample(pts, None) == pts
    assert downsample(pts, 10) == pts
    out = downsample(pts, 3)                        # buckets: 0-2, 3-5, 6-9
    assert [p.t for p in out] == [2.0, 5.0, 9.0]
    assert [p.pending_jobs for p in out] == [2, 3, 3]
    assert [p.pending_slots for p in out] == [10, 7, 4]
    assert [p.running_jobs for p in out] == [2, 5, 9]
    assert [(p.workers_private, p.workers_cloud) for p in out] == [(2, 8), (5, 5), (9, 1)]
    assert len(downsample(pts, 1)) == 1 and downsample(pts, 1)[0].pending_jobs == 3
    with pytest.raises(ValueError):
        downsample(pts, 0)


# --- the summary of a state DB ------------------------------------------------------------

def walk(store: Store, node: str, *steps: tuple[State, float] | tuple[State, float, str],
         project: str = "sge") -> None:
    for step in steps:
        state, t = step[0], step[1]
        reason = step[2] if len(step) > 2 else f"to {state}"
        store.transition(project, node, state, reason, t)


def down(store: Store, node: str, t: float) -> None:
    walk(store, node, (State.SHUTDOWN, t - 2), (State.EPILOG, t - 1), (State.DONE, t))


def job(i: int, submitted: float, host: str | None = None) -> Job:
    return Job(str(i), f"job{i}", "alice", "qw" if host is None else "r", slots=2,
               submitted=submitted, host=host)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    with Store.open(d) as s:
        s.put_project("sge", "/specs/sge.yaml", "h1", T0 - 10 * H, data={
            "clouds": {"ec2": {"cluster_id": "c-1", "spec": {"prices": PRICES}}}})
        s.put_project("other", "/specs/other.yaml", "h2", T0 - 10 * H)
        # private: head up since before the window (10 h in it)
        s.add_node("sge", "head", T0 - 3 * H, host="node1", data={"chunk": "c0"})
        walk(s, "head", (State.PROLOG, T0 - 3 * H), (State.BOOT, T0 - 2.5 * H),
             (State.RUNNING, T0 - 2 * H))
        # private: up and down before the window (0 h)
        s.add_node("sge", "old", T0 - 6 * H, host="node1")
        walk(s, "old", (State.PROLOG, T0 - 6 * H), (State.BOOT, T0 - 6 * H),
             (State.RUNNING, T0 - 5 * H))
        down(s, "old", T0 - H)
        # private: w1 up 1 h..4 h (3 h, draining included), then made again, up from 5.5 h
        s.add_node("sge", "w1", T0, host="node2")
        walk(s, "w1", (State.PROLOG, T0), (State.BOOT, T0 + 0.5 * H), (State.RUNNING, T0 + H),
             (State.DRAINING, T0 + 3 * H))
        down(s, "w1", T0 + 4 * H)
        s.add_node("sge", "w1", T0 + 5 * H, host="node2")
        walk(s, "w1", (State.PROLOG, T0 + 5 * H), (State.BOOT, T0 + 5.2 * H),
             (State.RUNNING, T0 + 5.5 * H))
        # cloud: c1, a t3.medium, RUNNING 2 h..6 h (4 h x 0.05 $)
        s.add_node("sge", "c1", T0 + 1.5 * H, site="ec2", data={"cloud": "ec2"})
        walk(s, "c1", (State.PROLOG, T0 + 1.5 * H))
        s.transition("sge", "c1", State.BOOT, "instance i-0c1 (t3.medium) starting on "
                     "clouds.ec2", T0 + 1.8 * H, provider_id="i-0c1", host="i-0c1")
        walk(s, "c1", (State.RUNNING, T0 + 2 * H))
        down(s, "c1", T0 + 6 * H)
        # cloud: c2, a t3.large, RUNNING 7 h..now (3 h x 0.1 $)
        s.add_node("sge", "c2", T0 + 7 * H, site="ec2")
        walk(s, "c2", (State.PROLOG, T0 + 7 * H))
        s.transition("sge", "c2", State.BOOT, "instance i-0c2 (t3.large) starting on "
                     "clouds.ec2", T0 + 7 * H, provider_id="i-0c2", host="i-0c2")
        walk(s, "c2", (State.RUNNING, T0 + 7 * H))
        # cloud: c3, a type without a price, 8 h..now (2 h, cost unknown)
        s.add_node("sge", "c3", T0 + 8 * H, site="ec2", data={"instance_type": "m5.large"})
        walk(s, "c3", (State.PROLOG, T0 + 8 * H), (State.BOOT, T0 + 8 * H),
             (State.RUNNING, T0 + 8 * H))
        # another project's node: only in the all-projects summary (1 h)
        s.add_node("other", "x", T0, host="node3")
        walk(s, "x", (State.PROLOG, T0), (State.BOOT, T0), (State.RUNNING, T0 + 9 * H),
             project="other")
        # jobs: j3 ran before the window; j1 waited 600 s, j2 1000 s; j5 left unrun; j4 runs
        s.observe_jobs("sge", T0 - 2 * H, [job(3, T0 - 2 * H)], [])
        s.observe_jobs("sge", T0 - H, [], [(job(3, T0 - 2 * H, "node1"), "private")])
        s.observe_jobs("sge", T0 - 0.5 * H, [], [])
        s.observe_jobs("sge", T0 + 300, [job(1, T0), job(2, T0 + 200), job(5, T0 + 250)], [])
        s.observe_jobs("sge", T0 + 600, [job(2, T0 + 200), job(5, T0 + 250)],
                       [(job(1, T0, "w1.sge"), "private")])
        s.observe_jobs("sge", T0 + 1200, [job(5, T0 + 250)],
                       [(job(2, T0 + 200, "c1"), "ec2")])
        s.observe_jobs("sge", T0 + 1800, [], [(job(4, T0 + 1700, "head"), "private")])
        # queue samples: one before the window (ignored), peaks 7 jobs / 20 slots, 3+2 workers
        s.add_queue_sample("sge", T0 - 60, pending_jobs=999, pending_slots=999,
                           running_jobs=0, workers={"private": 9})
        for i, (pending, slots, private, cloud) in enumerate(
                [(0, 0, 1, 0), (3, 6, 2, 0), (7, 14, 3, 1), (5, 20, 3, 2), (1, 2, 2, 1)]):
            s.add_queue_sample("sge", T0 + i * 600, pending_jobs=pending, pending_slots=slots,
                               running_jobs=i, workers={"private": private, "ec2": cloud})
        s.add_queue_sample("other", T0 + 150, pending_jobs=4, pending_slots=4,
                           running_jobs=0, workers={"private": 5})
    return d


def test_summary_of_one_project(state_dir: Path) -> None:
    got = summary(state_dir, "sge", since=T0, now=NOW)
    assert got["jobs_run"] == 2
    assert got["slots_run"] == 4
    assert got["wait_median"] == 800.0
    assert got["wait_p95"] == 1000.0
    nh = got["node_hours"]
    assert nh["private"] == pytest.approx(10 + 3 + 4.5)
    assert nh["cloud"] == pytest.approx(4 + 3 + 2)
    assert nh["by_cloud"] == {"ec2": pytest.approx(9)}
    cost = got["cloud_cost"]
    assert cost["total"] == pytest.approx(4 * 0.05 + 3 * 0.1)
    assert cost["complete"] is False
    assert len(cost["unknown"]) == 1
    assert "c3.sge" in cost["unknown"][0] and "m5.large" in cost["unknown"][0]
    ec2 = cost["clouds"]["ec2"]
    assert ec2["unpriced_hours"] == pytest.approx(2)
    assert ec2["by_type"]["t3.medium"]["node_hours"] == pytest.approx(4)
    assert ec2["by_type"]["t3.large"]["cost"] == pytest.approx(0.3)
    assert got["peak_queue"] == {"pending_jobs": 7, "pending_slots": 20, "running_jobs": 4}
    assert got["peak_workers"] == {"ec2": 2, "private": 3}
    assert got["samples"] == 5


def test_summary_of_a_shorter_window_clips_the_intervals(state_dir: Path) -> None:
    got = summary(state_dir, "sge", since=T0 + 3 * H, now=T0 + 6.5 * H)
    # head 3.5 h, w1 3..4 h = 1 h, w1 again 5.5..6.5 = 1 h; c1 3..6 = 3 h
    assert got["node_hours"]["private"] == pytest.approx(3.5 + 1 + 1)
    assert got["node_hours"]["cloud"] == pytest.approx(3)
    assert got["cloud_cost"]["total"] == pytest.approx(0.15)
    assert got["cloud_cost"]["complete"] is True
    assert got["jobs_run"] == 0 and got["wait_median"] is None and got["wait_p95"] is None
    assert got["peak_queue"]["pending_jobs"] == 0 and got["peak_workers"] == {}


def test_summary_of_every_project(state_dir: Path) -> None:
    got = summary(state_dir, None, since=T0, now=NOW)
    assert got["node_hours"]["private"] == pytest.approx(10 + 3 + 4.5 + 1)
    # the projects' latest samples added up: at T0 + 1200, sge's 7 pending and 3 private
    # workers with other's 4 and 5 (sampled at T0 + 150)
    assert got["peak_queue"]["pending_jobs"] == 7 + 4
    assert got["peak_workers"] == {"ec2": 2, "private": 3 + 5}


def test_summary_lines_say_what_is_unknown(state_dir: Path) -> None:
    lines = summary_lines(summary(state_dir, "sge", since=T0, now=NOW))
    assert lines[0] == "jobs run: 2 (4 slots); wait median 13.3 min, p95 16.7 min"
    assert lines[1] == "node-hours: 17.50 private, 9.00 cloud; 9.00 on ec2"
    assert lines[2].startswith("estimated cloud cost: at least 0.50 $")
    assert "m5.large" in lines[3]
    assert lines[-1].startswith("peak queue: 7 jobs (20 slots) pending, 4 running; "
                                "peak workers: 2 ec2, 3 private")


def test_summary_of_an_unknown_project(state_dir: Path) -> None:
    with pytest.raises(PermanentError, match="no project named nope"):
        summary(state_dir, "nope", since=T0, now=NOW)


def test_summary_without_a_db_or_with_a_bad_window(tmp_path: Path) -> None:
    got = summary(tmp_path / "nothing", "sge", since=T0, now=NOW)
    assert got["jobs_run"] == 0 and got["node_hours"]["private"] == 0
    assert got["cloud_cost"] == {"total": 0, "complete": True, "clouds": {}, "unknown": []}
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(ValueError):
        summary(tmp_path, "sge", since=NOW, now=T0)


def test_timeline_reads_and_downsamples(state_dir: Path) -> None:
    pts = timeline(state_dir, "sge", since=T0)
    assert [p.pending_jobs for p in pts] == [0, 3, 7, 5, 1]
    assert [p.workers_cloud for p in pts] == [0, 0, 1, 2, 1]
    two = timeline(state_dir, "sge", since=T0, max_points=2)
    assert [(p.pending_jobs, p.pending_slots, p.workers_private) for p in two] == [
        (3, 6, 2), (7, 20, 2)]
    assert timeline(state_dir.parent / "none", "sge", since=T0) == []


# --- the PNG ------------------------------------------------------------------------------

def read_png(path: Path):
    image = pytest.importorskip("matplotlib.image")
    return image.imread(str(path))


def test_timeline_png_size_and_content(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from elastic.adapters.plot import timeline_png
    pts = [TimelinePoint(T0 + i * 300, (i * 7) % 11, (i * 13) % 23, i, i % 4, i % 3)
           for i in range(40)]
    out = tmp_path / "t.png"
    timeline_png(pts, out, title="sge: $5 <last> 3 h", now=T0 + 40 * 300)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = read_png(out)
    assert img.shape[:2] == (600, 1200)
    rgb = (img[..., :3] * 255).round().astype(int)
    colours = {tuple(c) for c in rgb.reshape(-1, 3)[::7]}
    assert len(colours) > 20
    red = ((abs(rgb[..., 0] - 0xd6) < 25) & (abs(rgb[..., 1] - 0x27) < 25)
           & (abs(rgb[..., 2] - 0x28) < 25)).sum()
    blue = ((abs(rgb[..., 0] - 0x1f) < 25) & (abs(rgb[..., 1] - 0x77) < 25)
            & (abs(rgb[..., 2] - 0xb4) < 25)).sum()
    assert red > 200 and blue > 200


def test_timeline_png_takes_queue_samples_and_one_point(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from elastic.adapters.plot import timeline_png
    out = tmp_path / "one.png"
    timeline_png([sample(T0, 2, {"private": 1, "ec2": 1})], out, title="one", now=T0)
    assert read_png(out).shape[:2] == (600, 1200)


def test_timeline_png_of_nothing_says_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from elastic.adapters.plot import EMPTY_TEXT, timeline_png
    out = tmp_path / "empty.png"
    timeline_png([], out, title="nothing", now=T0)
    img = read_png(out)
    assert img.shape[:2] == (600, 1200)
    rgb = img[..., :3]
    assert rgb.min() < 0.5 < rgb.max()         # text on white: not one flat colour
    assert EMPTY_TEXT == "no samples in this window"
