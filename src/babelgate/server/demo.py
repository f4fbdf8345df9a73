"""A small gate fitted in seconds on the built-in prompt set, for server tests, the load
benchmark and trying the server without a bundle. Not a substitute for `babelgate run`:
it uses few prompts per class and no held-out evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from babelgate.capture import capture
from babelgate.errors import DataError
from babelgate.gate import Gate
from babelgate.loaders import load_prompts
from babelgate.models import ModelHandle

DEMO_SOURCES = ("en", "de", "fr", "es", "zh")
DEMO_TARGETS = ("sw",)


def fit_demo_gate(
    handle: ModelHandle,
    *,
    layer: int | None = None,
    source_languages: Sequence[str] = DEMO_SOURCES,
    calibrate: Sequence[str] = DEMO_TARGETS,
    per_class: int = 16,
    budget: int = 4,
    rank: int = 5,
    seed: int = 0,
) -> Gate:
    """Fit a source gate on `per_class` train prompts per class and source language, set α
    from the source rows, and calibrate each `calibrate` language with `budget` examples
    per class. `layer` defaults to 60 % of the depth (the paper's Qwen layer 15 of 24)."""
    layer = round(0.6 * (handle.n_layers - 1)) if layer is None else layer
    languages = [*source_languages, *calibrate]
    prompts = load_prompts("builtin", language=languages).filter(split="train")
    texts: list[str] = []
    labels: list[int] = []
    codes: list[str] = []
    for lang in languages:
        take = per_class if lang in source_languages else budget
        for label in ("harmful", "harmless"):
            rows = prompts.filter(language=lang, label=label).rows[:take]
            if len(rows) < take:
                raise DataError(
                    f"the built-in set has only {len(rows)} {label} {lang} train prompts"
                )
            texts += [row.text for row in rows]
            labels += [1 if label == "harmful" else 0] * take
            codes += [lang] * take
    acts = capture(handle, texts, [layer], cache=False, progress=False)[:, 0, :]
    y = torch.tensor(labels)
    src = torch.tensor([c in source_languages for c in codes])
    src_codes = [c for c in codes if c in source_languages]
    gate = Gate.fit(
        acts[src],
        y[src],
        src_codes,
        layer=layer,
        rank=min(rank, len(source_languages)),
        seed=seed,
        model_fingerprint=handle.fingerprint,
    )
    gate = gate.calibrate_alpha(acts[src], y[src], src_codes)
    for lang in calibrate:
        mask = torch.tensor([c == lang for c in codes])
        gate = gate.calibrate(lang, acts[mask & (y == 1)], acts[mask & (y == 0)], seed=seed)
    return gate
