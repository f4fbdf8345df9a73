"""`babelgate report RUN_DIR`: rebuild the report from a run directory's JSON files alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def report(
    run_dir: Annotated[Path, typer.Argument(help="run directory (config.json, metrics.json, ...)")],
    title: Annotated[str, typer.Option("--title", help="report title")] = "babelgate report",
) -> None:
    """Write plots/, report.md and report.html into RUN_DIR from its JSON files."""
    from babelgate.report import build_report

    md, html = build_report(run_dir, title=title)
    Console().print(f"report: {html} (and {md.name})")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
