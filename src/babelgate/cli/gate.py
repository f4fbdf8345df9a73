"""`babelgate fit` (capture → layer → gate → α → bundle) and `babelgate calibrate` (add or
replace one language's threshold from a few examples; the rest of the bundle is untouched)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from babelgate.cli.options import ObjectiveOption
from babelgate.cli.run import split_list
from babelgate.errors import DataError
from babelgate.packaged import DEFAULT_MODEL


def fit(
    out: Annotated[Path, typer.Option("--out", "-o", help="bundle directory to write")],
    data: Annotated[
        list[str] | None, typer.Option("--data", "-d", help="prompt source (repeatable)")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m")] = DEFAULT_MODEL,
    layer: Annotated[str, typer.Option("--layer", help="'auto' or a block index")] = "auto",
    rank: Annotated[int, typer.Option("--rank", min=1)] = 10,
    objective: ObjectiveOption = "balanced_f1",
    languages: Annotated[list[str] | None, typer.Option("--languages", "-l")] = None,
    sources: Annotated[
        list[str] | None,
        typer.Option("--source-languages", help="default: the high-resource languages present"),
    ] = None,
    budget: Annotated[
        int,
        typer.Option(
            "--budget", min=0, help="also calibrate every other language with b per class"
        ),
    ] = 0,
    n_train: Annotated[
        int | None, typer.Option("--n-train", min=1, help="train prompts per class and language")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Fit the source-only gate (b = 0) and α on high-resource train prompts; save a bundle."""
    from babelgate.capture import capture
    from babelgate.gate import Gate, sample_budget
    from babelgate.io import stable_seed
    from babelgate.layer_choice import choose_layer
    from babelgate.pipeline import candidate_layers, draw_rows, load_run_prompts, resolve_model

    prompts = load_run_prompts(split_list(data) or ["builtin"], split_list(languages))
    registry = prompts.registry
    if sources:
        src = split_list(sources) or []
        missing = [c for c in src if c not in prompts.languages()]
        if missing:
            raise DataError(f"source language(s) {missing} have no prompts")
    else:
        src = [c for c in prompts.languages() if c in registry and registry.tier_of(c) == "high"]
    if not src:
        raise DataError("no source (high-resource) language in the data; pass --source-languages")
    fixed: int | None = None
    if layer != "auto":
        try:
            fixed = int(layer)
        except ValueError:
            raise DataError(f"--layer must be 'auto' or an integer, got {layer!r}") from None
    n = n_train or 10**9
    train = draw_rows(prompts, "train", n, seed)
    test = draw_rows(prompts.filter(language=src), "test", n, seed) if fixed is None else None
    for lang in src:
        for label in ("harmful", "harmless"):
            if not len(train.filter(language=lang, label=label)):
                raise DataError(f"source language {lang!r} has no {label} train prompts")
    targets = [c for c in prompts.languages() if c not in src]
    if budget:
        for lang in targets:
            for label in ("harmful", "harmless"):
                have = len(train.filter(language=lang, label=label))
                if have < budget:
                    raise DataError(
                        f"--budget {budget} is larger than the {have} {label} train examples of {lang!r}"
                    )
    handle = resolve_model(model, progress=not no_progress)
    if fixed is not None and not 0 <= fixed < handle.n_layers:
        raise DataError(f"--layer {fixed} out of range (0..{handle.n_layers - 1})")
    layers = [fixed] if fixed is not None else candidate_layers(handle.n_layers)
    rows = train if test is None else train.concat(test)
    acts = capture(
        handle, rows.texts(), layers, "last", batch_size=batch_size, progress=not no_progress
    )
    labels = torch.tensor(rows.labels(), dtype=torch.bool)
    codes = [p.language for p in rows]
    if fixed is None:
        choice = choose_layer(
            acts, labels, codes, [p.split for p in rows], src, layers, num_layers=handle.n_layers
        )
        chosen = choice.layer
    else:
        chosen = fixed
    is_train = torch.tensor([p.split == "train" for p in rows])
    x = acts[:, layers.index(chosen), :]
    tr_codes = [c for c, k in zip(codes, is_train.tolist(), strict=True) if k]
    gate = Gate.fit(
        x[is_train],
        labels[is_train],
        tr_codes,
        layer=chosen,
        source_languages=src,
        rank=min(rank, len(src)),
        seed=seed,
        objective=objective,
        model_fingerprint=handle.fingerprint,
        data_digest=train.digest(),
        model_spec=handle.name,
    )
    gate = gate.calibrate_alpha(x[is_train], labels[is_train], tr_codes)
    if budget:
        for lang in targets:
            sel = is_train & torch.tensor([c == lang for c in codes])
            draw = stable_seed(
                seed, handle.fingerprint, lang, budget, gate.rank, "calibration-draw"
            )
            pos, neg, _, _ = sample_budget(x[sel & labels], x[sel & ~labels], budget, draw)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                gate = gate.calibrate(lang, pos, neg, mode="refit")
    gate.save(out)
    alpha = gate.alpha.alpha if gate.alpha is not None else float("nan")
    Console().print(
        f"gate bundle {out}: layer {chosen}, rank {gate.rank}, α {alpha:.3f}, sources "
        f"{', '.join(src)}; calibrated: {', '.join(gate.calibrated_languages) or 'none'}"
    )


def calibrate(
    bundle: Annotated[Path, typer.Argument(help="gate bundle directory (updated in place)")],
    lang: Annotated[str, typer.Option("--lang", help="language code to calibrate")],
    examples: Annotated[
        Path, typer.Option("--examples", help="labelled prompts (.jsonl/.csv with text,label)")
    ],
    budget: Annotated[
        int | None, typer.Option("--budget", "-b", min=1, help="examples per class (default: all)")
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="refit or threshold")] = "refit",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="default: the model recorded in the bundle")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Calibrate one language from b harmful + b harmless examples (only its entry changes).

    The bundle is verified against the model's fingerprint and replaced atomically."""
    from babelgate.capture import capture
    from babelgate.gate import MODES, Gate
    from babelgate.io import stable_seed
    from babelgate.languages import default_registry, normalize_code
    from babelgate.loaders import load_prompts
    from babelgate.pipeline import resolve_model

    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    registry = default_registry()
    code = normalize_code(lang)
    if code not in registry:
        raise DataError(f"unknown language {lang!r}; see `babelgate data languages`")
    gate = Gate.load(bundle)  # verifies format and checksums before anything is computed
    model = model or gate.model_spec or DEFAULT_MODEL
    if not examples.is_file():
        raise DataError(f"examples file not found: {examples}")
    rows = load_prompts(examples, language=code)
    harmful = [p.text for p in rows if p.label == "harmful"]
    harmless = [p.text for p in rows if p.label == "harmless"]
    if not harmful or not harmless:
        raise DataError(
            f"{examples} has {len(harmful)} harmful and {len(harmless)} harmless {code!r} "
            "examples; calibration needs both"
        )
    b = budget if budget is not None else min(len(harmful), len(harmless))
    if b > len(harmful) or b > len(harmless):
        raise DataError(
            f"--budget {b} is larger than the examples given ({len(harmful)} harmful, "
            f"{len(harmless)} harmless for {code!r})"
        )
    gen = torch.Generator().manual_seed(stable_seed(seed, code, b, "cli-calibrate"))
    pick_h = [harmful[i] for i in torch.randperm(len(harmful), generator=gen)[:b].tolist()]
    pick_n = [harmless[i] for i in torch.randperm(len(harmless), generator=gen)[:b].tolist()]
    handle = resolve_model(model, progress=not no_progress)
    gate = Gate.load(bundle, expected_fingerprint=handle.fingerprint)
    acts = capture(
        handle, [*pick_h, *pick_n], [gate.layer], "last", cache=False, progress=not no_progress
    )[:, 0, :]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        updated = gate.calibrate(code, acts[:b], acts[b:], mode=mode)
    updated.save(bundle)
    record = updated.calibrations[code]
    console = Console()
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}")
    console.print(
        f"{bundle}: {code} {record.status} ({mode}, b = {b}); threshold "
        f"{updated.threshold_for(code)[0]:.4f} ({updated.threshold_for(code)[1]})"
    )


def register(app: typer.Typer) -> None:
    app.command("fit")(fit)
    app.command("calibrate")(calibrate)
