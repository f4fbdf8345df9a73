"""Progress bars for long steps (rich), silenced with progress=False or BABELGATE_PROGRESS=0."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("BABELGATE_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Progress | None]:
    """Yields (progress, task id) helper; `advance()` through `bar.advance(task)`."""
    if not progress_enabled(enabled):
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    with bar:
        bar.add_task(description, total=total)
        yield bar


def advance(bar: Progress | None, steps: int = 1) -> None:
    if bar is not None:
        bar.advance(bar.task_ids[0], steps)
