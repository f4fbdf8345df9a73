"""`babelgate run`: the main job — fit → calibrate → evaluate → utility → diagnosis → report,
offline on the packaged default model and the built-in prompt set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from babelgate.cli.options import ObjectiveOption
from babelgate.errors import DataError
from babelgate.packaged import DEFAULT_MODEL


def split_list(values: list[str] | None) -> list[str] | None:
    """Comma-separated and/or repeated option values as one list (None when not given)."""
    if not values:
        return None
    out = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return out or None


def int_list(values: list[str] | None, name: str) -> list[int] | None:
    parts = split_list(values)
    if parts is None:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise DataError(f"{name} must be integers, got {', '.join(parts)}") from None


def run(
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = Path("babelgate-run"),
    model: Annotated[
        str, typer.Option("--model", "-m", help="packaged alias, model directory, .gguf or hub id")
    ] = DEFAULT_MODEL,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", "-d", help="prompt source (repeatable; default: builtin)"),
    ] = None,
    languages: Annotated[
        list[str] | None, typer.Option("--languages", "-l", help="language codes, comma-separated")
    ] = None,
    eval_languages: Annotated[
        list[str] | None,
        typer.Option(
            "--eval-languages",
            help="languages to generate and judge (default: all); the rest only fit/diagnose",
        ),
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option("--budget", "-b", help="examples per class per target language (repeatable)"),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--methods",
            help="none, gate_b0, gate_b<b>, ablation, addition, cast, adasteer (comma-separated)",
        ),
    ] = None,
    layer: Annotated[
        int | None, typer.Option("--layer", help="gate layer (default: chosen)")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    n_train: Annotated[
        int | None, typer.Option("--n-train", min=1, help="train prompts per class and language")
    ] = None,
    n_test: Annotated[
        int | None, typer.Option("--n-test", min=1, help="test prompts per class and language")
    ] = None,
    mmlu: Annotated[
        Path | None, typer.Option("--mmlu", help="MMLU-style CSV directory or file for utility")
    ] = None,
    n_mcq: Annotated[int | None, typer.Option("--n-mcq", min=1, help="utility questions")] = None,
    judge: Annotated[
        str, typer.Option("--judge", help="keyword, or an OpenAI-compatible URL")
    ] = "keyword",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="generation/capture batch (16)")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="few languages and prompts, short generations (demo/CI)")
    ] = False,
    objective: ObjectiveOption = "balanced_f1",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="hide progress bars")] = False,
) -> None:
    """Fit, calibrate, evaluate and report — the whole method on one model, offline."""
    from babelgate.pipeline import RunOptions, run_pipeline

    console = Console()
    overrides: dict[str, Any] = {
        "out": out,
        "model": model,
        "data": split_list(data) or ["builtin"],
        "languages": split_list(languages),
        "eval_languages": split_list(eval_languages),
        "budgets": int_list(budget, "--budget"),
        "methods": split_list(methods),
        "layer": layer,
        "max_new_tokens": max_new_tokens,
        "n_train": n_train,
        "n_test": n_test,
        "mmlu": None if mmlu is None else str(mmlu),
        "n_mcq": n_mcq,
        "judge": judge,
        "batch_size": batch_size,
        "seed": seed,
        "objective": objective,
        "progress": not no_progress,
    }
    if mmlu is not None and not mmlu.exists():
        raise DataError(f"--mmlu {mmlu} does not exist")
    if quick:
        options = RunOptions.quick_preset(**overrides)
    else:
        options = RunOptions(**{k: v for k, v in overrides.items() if v is not None})
    if options.n_diag_test < options.n_test:
        options.n_diag_test = options.n_test
    result = run_pipeline(options, log=console.print)
    console.print(
        f"[bold green]done[/] in {result.timings['total']:.0f} s — layer {result.layer}; "
        f"report: {result.report_html} (and {result.report_md.name})"
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
