"""Threshold rules for b-shot calibration: how often the gate fires on held-out harmful and
harmless prompts of each target language, per rule, averaged over seeded b-example draws.

    python benchmarks/threshold_rules.py --model qwen2.5-coder-1.5b --layer 15 \
        --languages en,de,fr,zh,sw,am,yo,bn,jv,th --n-train 16 --n-test 40

Same data draw and activation cache as `babelgate run` with the same --languages, --n-train,
--n-test and seed, so a finished run makes this cheap. For each target language and draw,
the gate (fitted on the high-resource train rows) is recalibrated from b harmful + b harmless
train rows with each objective of `babelgate.threshold`, then scored on that language's test
rows. Reported: gate TPR (harmful fire rate), FPR (harmless fire rate) and TPR − FPR.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from babelgate.capture import capture
from babelgate.gate import Gate, sample_budget
from babelgate.io import stable_seed
from babelgate.pipeline import (
    candidate_layers,
    draw_rows,
    load_run_prompts,
    resolve_model,
    split_languages,
)
from babelgate.threshold import OBJECTIVES, fires


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--data", action="append", default=None)
    parser.add_argument("--languages", required=True)
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=40)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)

    handle = resolve_model(args.model, progress=False)
    prompts = load_run_prompts(args.data or ["builtin"], args.languages.split(","))
    sources, targets = split_languages(prompts)
    train = draw_rows(prompts, "train", args.n_train, args.seed)
    test = draw_rows(prompts, "test", args.n_test, args.seed)
    rows = train.concat(test)
    layers = candidate_layers(handle.n_layers, args.layer)
    acts = capture(handle, rows.texts(), layers, "last", batch_size=16, progress=False)
    x = acts[:, layers.index(args.layer), :]
    y = torch.tensor(rows.labels(), dtype=torch.bool)
    codes = [p.language for p in rows]
    is_train = torch.tensor([p.split == "train" for p in rows])
    tr_codes = [c for c, k in zip(codes, is_train.tolist(), strict=True) if k]

    print(f"model {args.model}, layer {args.layer}, b = {args.budget}, {args.draws} draws")
    print(f"sources {sources}; test rows per class per language <= {args.n_test}")
    header = f"{'lang':6}" + "".join(f"{o:>24}" for o in OBJECTIVES)
    print(header + "\n" + " " * 6 + "".join(f"{'TPR  FPR  TPR-FPR':>24}" for _ in OBJECTIVES))
    means: dict[str, list[np.ndarray]] = {o: [] for o in OBJECTIVES}
    gates = {
        o: Gate.fit(
            x[is_train],
            y[is_train],
            tr_codes,
            layer=args.layer,
            source_languages=sources,
            rank=min(args.rank, len(sources)),
            seed=args.seed,
            objective=o,
            model_fingerprint=handle.fingerprint,
        )
        for o in OBJECTIVES
    }
    for lang in targets:
        in_lang = torch.tensor([c == lang for c in codes])
        x_test, y_test = x[in_lang & ~is_train], y[in_lang & ~is_train]
        pool_pos, pool_neg = x[in_lang & is_train & y], x[in_lang & is_train & ~y]
        line = f"{lang:6}"
        for objective, gate in gates.items():
            rates = []
            for draw in range(args.draws):
                seed = stable_seed(args.seed, lang, args.budget, draw, "threshold-rules")
                pos, neg, _, _ = sample_budget(pool_pos, pool_neg, args.budget, seed)
                calibrated = gate.calibrate(lang, pos, neg)
                threshold, _ = calibrated.threshold_for(lang)
                fired = fires(calibrated.score(x_test, [lang] * len(x_test)), threshold)
                tpr = float(fired[y_test].float().mean())
                fpr = float(fired[~y_test].float().mean())
                rates.append((tpr, fpr, tpr - fpr))
            mean = np.mean(rates, axis=0)
            means[objective].append(mean)
            line += f"{mean[0]:>10.2f}{mean[1]:>5.2f}{mean[2]:>9.2f}"
        print(line)
    line = f"{'mean':6}"
    for objective in OBJECTIVES:
        mean = np.mean(means[objective], axis=0)
        line += f"{mean[0]:>10.2f}{mean[1]:>5.2f}{mean[2]:>9.2f}"
    print(line)


if __name__ == "__main__":
    main()
