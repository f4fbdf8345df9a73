"""Throughput of guarded generation against plain `generate` and a two-pass design.

Same prompts for all three (built-in English and Swahili prompts, test split), batch 8, a
fixed number of new tokens per row (`min_new_tokens = max_new_tokens`, so every method
produces the same token count), greedy:

* plain     — `generate_texts` (no hooks);
* guarded   — `Guard.generate`: the gate scores the prefill residual inside the block-L hook
              and routes in the same forward (one pass);
* two-pass  — `capture` of block L for the batch (forward stopped after L), `Gate.decide`,
              then a hooked `generate` that applies the precomputed routing.

The gate is fitted here from built-in English and French train prompts at the middle layer
(α from the quantile rule). Each configuration runs `--repeats` times in interleaved order;
the fastest run of each is reported. Ratios > 1 mean faster than the reference.

    .venv/bin/python benchmarks/guard_overhead.py [--model qwen2.5-coder-0.5b | --tiny]
        [--prompts 8] [--new-tokens 64] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch

from babelgate.capture import capture
from babelgate.gate import Gate
from babelgate.generation import batch_order, generate_texts
from babelgate.guard import Guard
from babelgate.loaders import load_prompts
from babelgate.models import ModelHandle, load_model
from babelgate.testing import tiny_model


def _prompts(
    kind: str, split: str, label: str | None, languages: Sequence[str], k: int
) -> list[tuple[str, str, int]]:
    rows = [r for r in load_prompts("builtin", language=list(languages)) if r.split == split]
    if label is not None:
        rows = [r for r in rows if r.label == label]
    out = []
    for lang in languages:
        mine = [r for r in rows if r.language == lang]
        harmful = [r for r in mine if r.label == "harmful"][: k // 2]
        harmless = [r for r in mine if r.label == "harmless"][: k - len(harmful)]
        out += [(r.text, r.language, int(r.label == "harmful")) for r in harmful + harmless]
    return out


def fit_gate(handle: ModelHandle, layer: int, per_class: int) -> Gate:
    rows = _prompts("fit", "train", None, ["en", "fr"], 2 * per_class)
    acts = capture(handle, [r[0] for r in rows], [layer], cache=False, progress=False)[:, 0]
    labels = [r[2] for r in rows]
    langs = [r[1] for r in rows]
    gate = Gate.fit(acts, labels, langs, layer=layer, rank=2, model_fingerprint=handle.fingerprint)
    return gate.calibrate_alpha(acts, labels, langs)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model instead")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    handle = (
        tiny_model("qwen2", n_layers=4, hidden=64)
        if args.tiny
        else load_model(args.model, progress=False)
    )
    layer = handle.n_layers // 2
    gate = fit_gate(handle, layer, per_class=8)
    guard = Guard(handle, gate)
    rows = _prompts("eval", "test", None, ["en", "sw"], args.prompts)[: args.prompts]
    texts, langs = [r[0] for r in rows], [r[1] for r in rows]
    n = args.new_tokens
    gen = {
        "max_new_tokens": n,
        "min_new_tokens": n,
        "batch_size": args.batch_size,
        "progress": False,
    }

    def plain() -> None:
        generate_texts(handle, texts, **gen)

    def guarded() -> None:
        guard.generate(texts, langs, **gen)

    def two_pass() -> None:
        acts = capture(
            handle, texts, [layer], batch_size=args.batch_size, cache=False, progress=False
        )[:, 0]
        decision = gate.decide(acts, langs)
        router = _PrecomputedRouter(decision.fired, decision.scores, texts, handle, args.batch_size)
        second = Guard(handle, router, layer=layer, direction=gate.direction, alpha=guard.alpha)
        second.generate(texts, langs, **gen)

    runs = {"plain": plain, "guarded": guarded, "two_pass": two_pass}
    plain()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    tokens = len(texts) * n
    best = {k: min(v) for k, v in times.items()}
    result = {
        "model": handle.name,
        "device": str(handle.device),
        "dtype": str(handle.dtype),
        "threads": args.threads,
        "prompts": len(texts),
        "batch_size": args.batch_size,
        "new_tokens_per_row": n,
        "gate_layer": layer,
        "alpha": guard.alpha,
        "seconds": times,
        "tokens_per_second": {k: tokens / v for k, v in best.items()},
        "guarded_vs_plain": best["plain"] / best["guarded"],
        "guarded_vs_two_pass": best["two_pass"] / best["guarded"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


class _PrecomputedRouter:
    """The second pass of the two-pass design: hands each batch the decisions computed
    beforehand, in the order `generate_rows` forms its batches (`batch_order`)."""

    def __init__(
        self,
        fired: torch.Tensor,
        scores: torch.Tensor,
        texts: Sequence[str],
        handle: ModelHandle,
        batch_size: int,
    ) -> None:
        self.batches = batch_order(handle, handle.format(texts), batch_size)
        self.fired, self.scores = fired, scores
        self.cursor = 0

    def route(self, last_hidden: torch.Tensor, languages: Sequence[str | None]):
        idx = torch.tensor(self.batches[self.cursor])
        self.cursor += 1
        return self.fired[idx].to(last_hidden.device), self.scores[idx], ["precomputed"] * len(idx)


if __name__ == "__main__":
    main()
