"""Progress of long operations: one bar per node (PROLOG -> BOOT -> RUNNING), step messages."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from elastic.engine.cluster import Reporter

_STEPS = {"PENDING": 0, "PROLOG": 1, "BOOT": 2, "RUNNING": 3, "STOPPED": 3, "SHUTDOWN": 1,
          "EPILOG": 2, "DONE": 3, "FAILED": 3}


class RichReporter(Reporter):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.fields[node]:<14}"), BarColumn(bar_width=20),
                                 TextColumn("{task.fields[state]:<9}"),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]")

    def node(self, node: str, state: str, detail: str = "") -> None:
        with self._lock:
            if node not in self._tasks:
                self._tasks[node] = self.progress.add_task("", total=3, node=node, state="",
                                                           detail="")
            task = self._tasks[node]
        style = "red" if state == "FAILED" else "green" if state in ("RUNNING", "DONE") else ""
        shown = f"[{style}]{state}[/{style}]" if style else state
        self.progress.update(task, completed=_STEPS.get(state, 0), state=shown,
                             detail=detail[:70])
