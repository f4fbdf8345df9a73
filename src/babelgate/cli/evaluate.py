"""`babelgate evaluate BUNDLE`: every chosen method on the same test prompts, judged, with
metrics, completions and a report in the run directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from babelgate.cli.run import split_list
from babelgate.errors import ArtifactError, DataError
from babelgate.packaged import DEFAULT_MODEL

EVAL_METHODS = ("none", "gate", "gate_b0", "ablation", "addition", "cast", "adasteer")
DEFAULT_EVAL_METHODS = ("none", "gate_b0", "gate", "ablation", "addition")


def evaluate(
    bundle: Annotated[Path, typer.Argument(help="gate bundle directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory")],
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="prompt source (repeatable)")
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help=f"comma-separated from {', '.join(EVAL_METHODS)}"),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m")] = DEFAULT_MODEL,
    languages: Annotated[list[str] | None, typer.Option("--languages", "-l")] = None,
    n_test: Annotated[
        int, typer.Option("--n-test", min=1, help="test prompts per class and language")
    ] = 8,
    n_train: Annotated[
        int, typer.Option("--n-train", min=1, help="train prompts per class for CAST/AdaSteer")
    ] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
    judge: Annotated[str, typer.Option("--judge")] = "keyword",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Evaluate a gate bundle against the base model and baselines on the test split."""
    from babelgate.evaluation import evaluate as run_evaluation
    from babelgate.gate import Gate
    from babelgate.judges import get_judge
    from babelgate.pipeline import build_methods, draw_rows, load_run_prompts, resolve_model
    from babelgate.report import build_report

    names = split_list(methods) or list(DEFAULT_EVAL_METHODS)
    unknown = [n for n in names if n not in EVAL_METHODS]
    if unknown:
        raise DataError(f"unknown method(s) {unknown}; choose from {', '.join(EVAL_METHODS)}")
    gate = Gate.load(bundle)  # format and checksums first, before loading a model
    prompts = load_run_prompts(split_list(data) or ["builtin"], split_list(languages))
    test = draw_rows(prompts, "test", n_test, seed)
    if not len(test):
        raise DataError("no test-split prompts in the data to evaluate")
    judge_obj = get_judge(judge)
    handle = resolve_model(model, progress=not no_progress)
    if gate.model_fingerprint and gate.model_fingerprint != handle.fingerprint:
        raise ArtifactError(
            f"{bundle} was fitted for model fingerprint {gate.model_fingerprint[:16]}…, not "
            f"{handle.fingerprint[:16]}… ({model})"
        )
    gates = {0: dataclasses.replace(gate, calibrations={}), 1: gate}
    sources = set(gate.source_languages)
    train = draw_rows(prompts, "train", n_train, seed)
    target_train = train.filter(language=[c for c in prompts.languages() if c not in sources])
    renamed = ["gate_b1" if n == "gate" else n for n in names]
    built = build_methods(
        handle,
        renamed,
        gates,
        target_train if len(target_train) else train,
        batch_size=batch_size,
        progress=not no_progress,
    )
    chosen = {n: built["gate_b1" if n == "gate" else n] for n in names}
    config = {
        "bundle": str(bundle),
        "layer": gate.layer,
        "rank": gate.rank,
        "objective": gate.objective,
        "seed": seed,
        "alpha": None if gate.alpha is None else gate.alpha.to_dict(),
        "source_languages": list(gate.source_languages),
        "target_languages": [c for c in prompts.languages() if c not in sources],
        "budgets": {"gate_b0": 0, "gate": gate.budgets},
        "layer_source": "bundle",
    }
    run_evaluation(
        handle,
        test,
        chosen,
        judge_obj,
        out,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=not no_progress,
        seed=seed,
        config=config,
    )
    _md, html = build_report(out)
    Console().print(f"metrics: {out / 'metrics.json'}; report: {html}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
