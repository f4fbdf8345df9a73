"""Time `Gate.fit` (~5,000 rows × d = 896) and `Gate.calibrate` (both modes) on synthetic data.

Usage: .venv/bin/python benchmarks/gate_timing.py [--rows 5000] [--d 896] [--repeats 5]
Prints one line per measurement (median and min over repeats), once per torch thread count.
On a busy machine one thread is usually faster: the problems are small and thread wake-ups
dominate.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from babelgate.gate import Gate, sample_budget

SOURCES = ("en", "de", "fr", "es", "it", "nl", "pl", "ru", "zh", "ja")


def synthetic(rows: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Half harmful, half harmless rows spread over the ten source languages plus "sw"."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    langs = (*SOURCES, "sw")
    per_class = max(rows // (2 * len(SOURCES)), 8)
    acts, labels, codes = [], [], []
    for lang in langs:
        tilt = 0.3 * torch.randn(d, generator=gen) / d**0.5
        offset = 2.0 * torch.randn(d, generator=gen) / d**0.5 - (6.0 * u if lang == "sw" else 0.0)
        for label in (1, 0):
            block = torch.randn(per_class, d, generator=gen) + offset
            if label:
                block = block + 4.0 * (u + tilt)
            acts.append(block)
            labels += [label] * per_class
            codes += [lang] * per_class
    return torch.cat(acts), torch.tensor(labels), codes


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000, help="source rows (both classes)")
    parser.add_argument("--d", type=int, default=896, help="activation width (Qwen2.5-0.5B: 896)")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    args = parser.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        run(args, threads)


def run(args: argparse.Namespace, threads: int) -> None:

    acts, labels, langs = synthetic(args.rows, args.d)
    src = torch.tensor([c in SOURCES for c in langs])
    src_langs = [c for c in langs if c in SOURCES]
    sw = ~src
    print(f"rows={int(src.sum())} source + {int(sw.sum())} target, d={args.d}, rank={args.rank}, "
          f"threads={threads}, repeats={args.repeats}")  # fmt: skip

    def fit() -> Gate:
        return Gate.fit(
            acts[src], labels[src], src_langs, layer=0, source_languages=SOURCES, rank=args.rank
        )

    gate = fit()
    med, low = timed(fit, args.repeats)
    print(f"Gate.fit                      median {med:.3f} s  min {low:.3f} s")
    pos, neg, _, _ = sample_budget(
        acts[sw & (labels == 1)], acts[sw & (labels == 0)], args.budget, seed=0
    )
    for mode in ("refit", "threshold"):
        gate.calibrate("sw", pos, neg, mode=mode)
        med, low = timed(lambda mode=mode: gate.calibrate("sw", pos, neg, mode=mode), args.repeats)
        print(f"calibrate(b={args.budget}, {mode:9s})     median {med:.4f} s  min {low:.4f} s")
    calibrated = gate.calibrate("sw", pos, neg)
    rt = calibrated.routing_tensors("cpu")
    batch = acts[:8]
    index = rt.index(["sw"] * 8)
    med, low = timed(lambda: rt.decide(batch, index), max(args.repeats, 50))
    print(f"routing decide (batch 8)      median {med * 1e6:.1f} us  min {low * 1e6:.1f} us")


if __name__ == "__main__":
    main()
