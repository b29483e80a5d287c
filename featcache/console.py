"""Terminal output with rich: progress bars and tables (a leaf utility)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

def _width(stream) -> int | None:
    """None (follow the terminal) on a terminal; elsewhere (pipes, CI logs) wide enough that tables never
    wrap names, whatever COLUMNS a parent shell exported."""
    return None if stream.isatty() else max(160, int(os.environ.get("COLUMNS") or 0))


class _OnFirstUse:
    """A rich Console made when first printed to, not at import: its width follows the streams then."""

    def __init__(self, stderr: bool):
        self._stderr, self._console = stderr, None

    def get(self) -> Console:
        """The Console itself (for rich's Progress and Live)."""
        if self._console is None:
            stream = sys.stderr if self._stderr else sys.stdout
            self._console = Console(stderr=self._stderr, highlight=False, width=_width(stream))
        return self._console

    def __getattr__(self, name):
        return getattr(self.get(), name)


console = _OnFirstUse(stderr=True)
stdout = _OnFirstUse(stderr=False)


class _Rate(ProgressColumn):
    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "-- img/s", style="cyan")


class ProgressBar:
    """A rich progress bar with images/s and ETA; silent when disabled or not a terminal."""

    def __init__(self, total: int, description: str, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self.total = total
        self.description = description

    def __enter__(self):
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console.get(),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def key_value_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(str(k), Text(str(v)))
    return table


def table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(Text(str(v)) for v in r))
    return t
