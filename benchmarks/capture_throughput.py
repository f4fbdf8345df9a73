"""Tokens/s of `capture` vs a plain `model(**batch)` forward pass over the same batches, in one run.

    python benchmarks/capture_throughput.py [--model qwen2.5-coder-0.5b] [--n 64] [--batch 8] [--layer 12]

Capture stops the forward pass after the deepest requested block, so it can beat the plain pass;
the plain pass is what a user would otherwise run (full model, logits included).
"""

from __future__ import annotations

import argparse
import time

import torch

from babelgate.capture import _batch_order, forward_batch
from babelgate.loaders import load_prompts
from babelgate.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layer", type=int, default=-1, help="captured block (default: last)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    handle = load_model(args.model, progress=False)
    prompts = load_prompts("builtin").filter(language=["en", "sw", "zh", "am"]).texts()[: args.n]
    texts = handle.format(prompts)
    batches = [[texts[i] for i in rows] for rows in _batch_order(handle, texts, args.batch)]
    n_tokens = sum(int(handle.tokenize(b)["attention_mask"].sum()) for b in batches)
    layer = args.layer % handle.n_layers

    @torch.no_grad()
    def plain() -> None:
        for batch in batches:
            handle.model(**handle.tokenize(batch), use_cache=False)

    def captured() -> None:
        for batch in batches:
            forward_batch(handle, batch, [layer], "last")

    plain()  # warm-up
    timings: dict[str, list[float]] = {"plain": [], "capture": []}
    for _ in range(args.repeats):  # interleaved so machine noise hits both alike
        for name, fn in (("plain", plain), ("capture", captured)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in timings.items()}
    print(
        f"model={args.model} prompts={len(texts)} tokens={n_tokens} batch={args.batch} "
        f"layer={layer}/{handle.n_layers} dtype={handle.dtype} threads={torch.get_num_threads()}"
    )
    for name in ("plain", "capture"):
        print(f"{name:8s} {n_tokens / best[name]:10.1f} tokens/s  ({best[name]:.2f} s)")
    print(f"ratio capture/plain = {best['plain'] / best['capture']:.2f}x")


if __name__ == "__main__":
    main()
