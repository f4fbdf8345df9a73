"""`babelgate models`: the packaged aliases, whether each is installed and cached, and sizes."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from babelgate.packaged import (
    DEFAULT_MODEL,
    PACKAGED_MODELS,
    cache_dir,
    cached_copy_is_valid,
    installed_size,
    is_installed,
)


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes else "-"


def models() -> None:
    """List the packaged models: installed (parts present), cached (converted copy), sizes."""
    table = Table(title="packaged models")
    for column in (
        "alias",
        "model",
        "installed",
        "parts size",
        "cached",
        "cache size",
        "load RAM",
        "install",
    ):
        table.add_column(column)
    for alias, spec in PACKAGED_MODELS.items():
        directory = cache_dir(spec)
        cached = cached_copy_is_valid(spec)
        cache_bytes = (
            sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) if cached else 0
        )
        table.add_row(
            alias + (" (default)" if alias == DEFAULT_MODEL else ""),
            spec.model_name,
            "yes" if is_installed(spec) else "no",
            _gb(installed_size(spec)),
            "yes" if cached else "no",
            _gb(cache_bytes),
            f"~{spec.approx_load_gb:g} GB",
            f"pip install 'babelgate[{spec.extra}]'",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
