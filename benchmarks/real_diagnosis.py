"""Representation vs action on real data: per-language AUC of the pooled high-resource direction
and of the gate, and balanced accuracy at b = 0, 1, 2, 4 (mean ± sd over seeded draws).

    python benchmarks/real_diagnosis.py --data builtin --out runs/diagnosis-builtin
    python benchmarks/real_diagnosis.py --data ../shared/data/polyrefuse --per-class 60 \
        --test-per-class 60 --out runs/diagnosis-polyrefuse

Sources are the high-resource languages present; every other language is a target. With
`--per-class N` each language contributes at most N train rows per class (and
`--test-per-class` test rows), drawn with a fixed seed, to bound CPU time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from babelgate.capture import capture
from babelgate.diagnosis import diagnose
from babelgate.languages import default_registry
from babelgate.loaders import load_prompts
from babelgate.models import load_model
from babelgate.prompts import PromptSet


def subsample(prompts: PromptSet, per_class: int, test_per_class: int, seed: int) -> PromptSet:
    rng = random.Random(seed)
    rows = []
    for lang in prompts.languages():
        for label in ("harmful", "harmless"):
            for split, cap in (("train", per_class), ("test", test_per_class)):
                pool = list(prompts.filter(language=lang, label=label, split=split))
                rng.shuffle(pool)
                rows.extend(pool[:cap] if cap > 0 else pool)
    return PromptSet(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--data", default="builtin")
    parser.add_argument("--languages", default="", help="comma-separated subset (default: all)")
    parser.add_argument(
        "--layers", default="", help="comma-separated (default: every 2nd, 1/6 to 5/6 depth)"
    )
    parser.add_argument(
        "--per-class", type=int, default=0, help="max train rows per class and language"
    )
    parser.add_argument("--test-per-class", type=int, default=0)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-layer", type=int, default=None, help="default: choose_layer")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--out", default="runs/diagnosis")
    args = parser.parse_args()

    registry = default_registry()
    prompts = load_prompts(args.data).filter(split=["train", "test"])
    if args.languages:
        prompts = prompts.filter(language=args.languages.split(","))
    if args.per_class or args.test_per_class:
        prompts = subsample(prompts, args.per_class, args.test_per_class, args.seed)
    handle = load_model(args.model, progress=False)
    n = handle.n_layers
    layers = (
        [int(x) for x in args.layers.split(",")]
        if args.layers
        else list(range(max(1, n // 6), n - n // 6 + 1, 2))
    )
    tiers = {lang: registry.tier_of(lang) for lang in prompts.languages()}
    sources = [lang for lang, tier in tiers.items() if tier == "high"]
    print(f"{len(prompts)} prompts, {len(tiers)} languages, sources={sources}, layers={layers}")

    start = time.perf_counter()
    acts = capture(handle, prompts.texts(), layers, batch_size=args.batch)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    result = diagnose(
        acts,
        torch.tensor(prompts.labels()),
        [p.language for p in prompts],
        [p.split for p in prompts],
        sources,
        layers=layers,
        tiers=tiers,
        budgets=(0, 1, 2, 4, 8),
        n_draws=args.draws,
        num_layers=n,
        seed=args.seed,
        budget_layer=args.budget_layer,
        rank=min(args.rank, len(sources)),
    )
    diagnose_s = time.perf_counter() - start
    out = Path(args.out)
    result.config.update(
        {
            "model": args.model,
            "fingerprint": handle.fingerprint,
            "data": args.data,
            "data_digest": prompts.digest(),
            "n_prompts": len(prompts),
            "capture_seconds": round(capture_s, 1),
            "diagnose_seconds": round(diagnose_s, 1),
        }
    )
    result.save(out)

    layer = result.budget_layer
    print(f"\ncapture {capture_s:.0f} s, diagnosis {diagnose_s:.1f} s; budget layer {layer}")
    curves = {(r["language"], r["mode"], r["budget"]): r for r in result.budget_curves}
    header = "| lang | tier | AUC v̂ | AUC gate | b=0 | b=1 | b=2 | b=4 | b=8 |"
    print(header + "\n|" + "---|" * 9)
    for lang in sorted(tiers, key=lambda c: (("high", "mid", "low").index(tiers[c]), c)):
        cells = []
        for b in (0, 1, 2, 4, 8):
            row = curves.get((lang, "refit", b)) or curves.get((lang, "threshold", b))
            if row is None or row.get("balanced_accuracy_mean") is None:
                cells.append("–")
            else:
                sd = row.get("balanced_accuracy_sd") or 0.0
                cells.append(
                    f"{row['balanced_accuracy_mean']:.2f}±{sd:.2f}"
                    if b
                    else f"{row['balanced_accuracy_mean']:.2f}"
                )
        auc_v = result.auc_projection[lang].get(layer)
        auc_g = result.auc_gate[lang].get(layer)
        fmt = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
        print(
            f"| {lang} | {tiers[lang]} | {fmt(auc_v)} | {fmt(auc_g)} | " + " | ".join(cells) + " |"
        )
    (out / "table.json").write_text(
        json.dumps({"budget_layer": layer, "rows": result.budget_curves}, indent=1),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
