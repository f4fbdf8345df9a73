"""float32 vs bfloat16 on CPU: capture throughput, generation tokens/s, and how far activations
and greedy outputs move — the numbers behind the default dtype.

    python benchmarks/dtype_choice.py [--model qwen2.5-coder-0.5b] [--n 32] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from babelgate.capture import capture
from babelgate.loaders import load_prompts
from babelgate.models import load_model


@torch.no_grad()
def greedy(
    handle, prompts: list[str], new_tokens: int, batch: int
) -> tuple[list[list[int]], float]:  # type: ignore[no-untyped-def]
    outputs: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = handle.tokenize(handle.format(prompts[i : i + batch]))
        out = handle.model.generate(
            **enc,
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=handle.tokenizer.pad_token_id,
        )
        outputs.extend(out[:, enc["input_ids"].shape[1] :].tolist())
    return outputs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    prompts = (
        load_prompts("builtin").filter(language=["en", "sw", "zh", "am"], split="test").texts()
    )
    prompts = prompts[:: max(1, len(prompts) // args.n)][: args.n]

    results = {}
    for dtype in ("float32", "bfloat16"):
        handle = load_model(args.model, dtype=dtype, progress=False)
        layers = [handle.n_layers // 2, handle.n_layers - 1]
        start = time.perf_counter()
        acts = capture(handle, prompts, layers, cache=False, progress=False, batch_size=args.batch)
        capture_s = time.perf_counter() - start
        tokens, gen_s = greedy(handle, prompts, args.new_tokens, args.batch)
        n_generated = sum(len(t) for t in tokens)
        results[dtype] = {
            "acts": acts,
            "tokens": tokens,
            "capture_s": capture_s,
            "gen_tps": n_generated / gen_s,
        }
        print(
            f"{dtype:9s} capture {len(prompts) / capture_s:6.2f} prompts/s   "
            f"generation {n_generated / gen_s:6.1f} tokens/s"
        )
        del handle

    f32, b16 = results["float32"], results["bfloat16"]
    for i, layer_name in enumerate(("middle", "last")):
        a, b = f32["acts"][:, i], b16["acts"][:, i]
        rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).mean().item()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
        print(
            f"activations ({layer_name} layer): mean relative L2 error {rel:.4f}, min cosine {cos:.4f}"
        )
    same = sum(x == y for x, y in zip(f32["tokens"], b16["tokens"], strict=True))
    prefix = [
        next((k for k, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        for x, y in zip(f32["tokens"], b16["tokens"], strict=True)
    ]
    print(
        f"greedy outputs identical: {same}/{len(prompts)}; mean shared prefix {sum(prefix) / len(prefix):.1f} tokens"
    )
    print(
        f"speed ratio bf16/fp32: capture {f32['capture_s'] / b16['capture_s']:.2f}x, "
        f"generation {b16['gen_tps'] / f32['gen_tps']:.2f}x"
    )


if __name__ == "__main__":
    main()
