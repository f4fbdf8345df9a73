"""`babelgate data ...`: inspect prompt sources and the language registry."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from babelgate.languages import LanguageRegistry, default_registry
from babelgate.loaders import load_prompt_sources
from babelgate.prompts import LABELS, SPLITS

data_app = typer.Typer(help="Inspect prompt data and the language registry.", no_args_is_help=True)

ExtraOption = Annotated[
    list[str] | None,
    typer.Option("--extra", "-e", help="Another prompt source to add (repeatable)."),
]
LanguagesOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--languages",
        "-l",
        help="JSON/JSONL/CSV file adding or re-tiering languages (code, name, script, tier).",
    ),
]


def _registry(language_files: list[Path] | None) -> LanguageRegistry:
    registry = default_registry()
    for file in language_files or []:
        registry.load_extra(file)
    return registry


@data_app.command("summary")
def summary(
    spec: Annotated[str, typer.Argument(help="'builtin', a PolyRefuse directory or a file.")],
    extra: ExtraOption = None,
    languages: LanguagesOption = None,
) -> None:
    """Count prompts per language (with tier), label and split."""
    registry = _registry(languages)
    console = Console()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = load_prompt_sources([spec, *(extra or [])], registry=registry)
    for warning in caught:
        console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    table = Table(
        title=f"{len(prompts)} prompts, {len(prompts.languages())} languages",
        caption="+ harmful, - harmless",
    )
    table.add_column("lang", no_wrap=True)
    table.add_column("tier", no_wrap=True)
    for label in LABELS:
        sign = "+" if label == "harmful" else "-"
        for split in SPLITS:
            table.add_column(f"{sign}{split}", justify="right", no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    for code, entry in prompts.summary().items():
        counts = [str(entry[label][split]) for label in LABELS for split in SPLITS]
        table.add_row(code, entry["tier"], *counts, str(entry["total"]))
    console.print(table)
    console.print(f"digest {prompts.digest()}", highlight=False)


@data_app.command("languages")
def list_languages(
    languages: LanguagesOption = None,
    tier: Annotated[str | None, typer.Option(help="Only this tier (high, mid, low).")] = None,
) -> None:
    """List the language registry: code, name, script, tier."""
    registry = _registry(languages)
    codes = registry.codes(tier)
    table = Table(title=f"{len(codes)} languages")
    for column in ("code", "name", "script", "tier"):
        table.add_column(column)
    for code in codes:
        language = registry.get(code)
        table.add_row(language.code, language.name, language.script, language.tier)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
