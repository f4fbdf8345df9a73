"""`babelgate diagnose`: representation vs action per language and layer — AUC of the source
direction and of the source-only gate, and gate quality against the calibration budget."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from babelgate.cli.extract import parse_layers
from babelgate.cli.run import int_list, split_list
from babelgate.errors import DataError
from babelgate.packaged import DEFAULT_MODEL


def diagnose(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="prompt source (repeatable)")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m")] = DEFAULT_MODEL,
    layers: Annotated[
        str, typer.Option("--layers", help="'auto' (25-75 % depth), 'all', or e.g. 8,12")
    ] = "auto",
    languages: Annotated[list[str] | None, typer.Option("--languages", "-l")] = None,
    budgets: Annotated[list[str] | None, typer.Option("--budgets", help="e.g. 0,1,2,4,8")] = None,
    draws: Annotated[int, typer.Option("--draws", min=1, help="seeded draws per budget")] = 10,
    n_train: Annotated[int | None, typer.Option("--n-train", min=1)] = None,
    n_test: Annotated[int | None, typer.Option("--n-test", min=1)] = None,
    rank: Annotated[int, typer.Option("--rank", min=1)] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Write diagnosis.json and its plots into OUT."""
    from babelgate.capture import capture, resolve_layers
    from babelgate.diagnosis import DEFAULT_BUDGETS
    from babelgate.diagnosis import diagnose as run_diagnosis
    from babelgate.pipeline import candidate_layers, draw_rows, load_run_prompts, resolve_model

    prompts = load_run_prompts(split_list(data) or ["builtin"], split_list(languages))
    registry = prompts.registry
    sources = [c for c in prompts.languages() if c in registry and registry.tier_of(c) == "high"]
    if not sources:
        raise DataError("no high-resource (source) language in the data")
    budget_list = int_list(budgets, "--budgets") or list(DEFAULT_BUDGETS)
    rows = draw_rows(prompts, "train", n_train or 10**9, seed).concat(
        draw_rows(prompts, "test", n_test or 10**9, seed)
    )
    handle = resolve_model(model, progress=not no_progress)
    wanted = candidate_layers(handle.n_layers) if layers == "auto" else parse_layers(layers)
    layer_list = resolve_layers(handle, wanted)
    acts = capture(
        handle, rows.texts(), layer_list, "last", batch_size=batch_size, progress=not no_progress
    )
    tiers = {c: registry.tier_of(c) for c in prompts.languages() if c in registry}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = run_diagnosis(
            acts,
            torch.tensor(rows.labels(), dtype=torch.bool),
            [p.language for p in rows],
            [p.split for p in rows],
            sources,
            layers=layer_list,
            tiers=tiers,
            budgets=budget_list,
            n_draws=draws,
            num_layers=handle.n_layers,
            rank=min(rank, len(sources)),
            seed=seed,
        )
    paths = result.save(out)
    table = Table(title=f"AUC of x·v̂ at layer {result.budget_layer} and base gate quality")
    for col in ("language", "tier", "AUC (v̂)", "AUC (gate)", "bal. acc. b=0", "bal. acc. b=max"):
        table.add_column(col)
    top = max(result.budgets)
    for lang in result.languages:
        curve = {(r["budget"], r["mode"]): r for r in result.budget_curves if r["language"] == lang}
        b0 = curve.get((0, "refit"), {}).get("balanced_accuracy_mean")
        bm = curve.get((top, "refit"), {}).get("balanced_accuracy_mean")
        pa = result.auc_projection[lang].get(result.budget_layer)
        ga = result.auc_gate[lang].get(result.budget_layer)
        table.add_row(
            lang,
            result.tiers.get(lang, "?"),
            *("–" if v is None else f"{v:.3f}" for v in (pa, ga, b0, bm)),
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {paths['json']} and plots in {out}")


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose)
