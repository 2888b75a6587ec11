"""The queue's timeline as a PNG (for `elastic report --png`), drawn with matplotlib.

    timeline_png(points, Path("sge.png"), title="sge, last 6 h", now=clock.now())

No display is needed: the figure is drawn on matplotlib's Agg canvas directly (the
object-oriented API: ``Figure`` + ``FigureCanvasAgg``, never ``pyplot``, so no global
figure state and safe in threads); the Agg backend is also selected at import, before
anything could import pyplot. ``points``: the report's Timeline points (``t``, ``pending_jobs``,
``pending_slots``, ``workers_private``, ``workers_cloud``) or queue sample records
(``workers``: site -> count, 'private' or a cloud), read by name.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")   # if anything here ever reaches pyplot: no display (set before it)

from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 1200, 600, 100
COLOURS = {"queue": "#d62728", "private": "#1f77b4", "cloud": "#ff7f0e"}
EMPTY_TEXT = "no samples in this window"


class _Point(NamedTuple):
    t: float
    pending_jobs: int
    pending_slots: int
    workers_private: int
    workers_cloud: int


def _field(item: Any, name: str, default: Any = 0) -> Any:
    value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
    return default if value is None else value


def _points(items: Iterable[Any]) -> list[_Point]:
    out = []
    for item in items or ():
        workers = _field(item, "workers", None)
        if isinstance(workers, Mapping):
            private = int(workers.get("private", 0) or 0)
            cloud = sum(int(n or 0) for site, n in workers.items() if site != "private")
        else:
            private = int(_field(item, "workers_private"))
            cloud = int(_field(item, "workers_cloud"))
        out.append(_Point(float(_field(item, "t")), int(_field(item, "pending_jobs")),
                          int(_field(item, "pending_slots")), private, cloud))
    return sorted(out, key=lambda p: p.t)


def timeline_png(points: Iterable[Any], path: Path, *, title: str, now: float) -> None:
    """Draw the queue (jobs pending, solid; slots pending, dashed; left axis) against the
    workers on the private hosts and in the clouds (step lines, right axis) from the first
    point to ``now``, with local HH:MM times, ``title`` and a legend; write it to ``path``
    as a 1200x600 PNG. No points: a plot that says so."""
    pts = _points(points)
    tz = datetime.datetime.fromtimestamp(now).astimezone().tzinfo
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, parse_math=False)
    if not pts:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, EMPTY_TEXT, transform=ax.transAxes, ha="center", va="center",
                fontsize=16, color="#555555", parse_math=False)
        fig.savefig(Path(path), format="png", dpi=DPI)
        return

    def when(t: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(t, tz)

    xs = [when(p.t) for p in pts]
    end = max(now, pts[-1].t)
    start = pts[0].t if pts[0].t < end else end - 60
    # every line ends at `now`: the last value is held until then
    xs_full = [*xs, when(end)]

    def values(attr: str) -> list[int]:
        v = [getattr(p, attr) for p in pts]
        return [*v, v[-1]]

    q = ax.plot(xs_full, values("pending_jobs"), color=COLOURS["queue"], linewidth=2,
                drawstyle="steps-post", label="jobs pending")
    s = ax.plot(xs_full, values("pending_slots"), color=COLOURS["queue"], linewidth=1.5,
                linestyle="--", drawstyle="steps-post", label="slots pending")
    ax.set_ylabel("pending (jobs, slots)", color=COLOURS["queue"])
    ax.set_ylim(bottom=0, top=max(1, max(p.pending_slots for p in pts),
                                  max(p.pending_jobs for p in pts)) * 1.1)
    ax2 = ax.twinx()
    w1 = ax2.plot(xs_full, values("workers_private"), color=COLOURS["private"], linewidth=2,
                  drawstyle="steps-post", label="workers, private hosts")
    w2 = ax2.plot(xs_full, values("workers_cloud"), color=COLOURS["cloud"], linewidth=2,
                  drawstyle="steps-post", label="workers, cloud")
    ax2.set_ylabel("workers")
    ax2.set_ylim(bottom=0, top=max(1, max(max(p.workers_private, p.workers_cloud)
                                          for p in pts)) * 1.15)
    ax2.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(when(start), when(end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=10))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    ax.set_xlabel("local time")
    ax.grid(True, color="#e5e5e5")
    lines = q + s + w1 + w2
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper center",
              bbox_to_anchor=(0.5, -0.1), ncol=len(lines), frameon=False)
    fig.tight_layout()
    fig.savefig(Path(path), format="png", dpi=DPI)


__all__ = ["EMPTY_TEXT", "timeline_png"]
