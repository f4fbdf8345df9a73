"""Generation throughput of babelgate's vLLM plugin: guarded vs unguarded vLLM (same engine,
same run, alternating) and vs the transformers back end (babelgate.guard), greedy.

    .venv-vllm/bin/python benchmarks/vllm_throughput.py [--model tiny|qwen2.5-coder-0.5b]
        [--n 32] [--new-tokens 32] [--repeats 2] [--hf-batch 8] [--out result.json]

Needs the vLLM environment (scripts/setup_vllm_env.sh). For a packaged model the gate is fitted
on the fly on built-in train prompts (en/fr/de/es source, sw calibrated with b = 4) at the
middle layer; `--bundle DIR` uses an existing gate instead. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from babelgate.capture import capture
from babelgate.gate import Gate
from babelgate.guard import Guard
from babelgate.models import ModelHandle, load_model

SOURCES = ("en", "fr", "de", "es")
TARGETS = ("en", "sw", "fr", "bn", "th", "de")


def tiny_model(root: Path) -> tuple[str, ModelHandle]:
    """The vLLM-compatible tiny random Qwen2 the plugin tests use, saved under root."""
    from babelgate.testing import save_tiny_vllm_model

    path, handle = save_tiny_vllm_model(root, name="tiny")
    return str(path), handle


def packaged_model(alias: str) -> tuple[str, ModelHandle]:
    from babelgate.io import cache_root

    handle = load_model(alias, progress=False)
    directory = Path(cache_root()) / "models" / alias
    if not (directory / "config.json").exists():
        raise SystemExit(f"no converted safetensors copy of {alias} at {directory}")
    return str(directory), handle


def fit_gate(handle: ModelHandle, out: Path, n_per_cell: int) -> Path:
    from babelgate.loaders import load_prompts

    prompts = [p for p in load_prompts("builtin") if p.split == "train"]
    rows = []
    for lang in (*SOURCES, "sw"):
        for label in ("harmful", "harmless"):
            rows += [p for p in prompts if p.language == lang and p.label == label][:n_per_cell]
    layer = handle.n_layers // 2
    acts = capture(
        handle, [p.text for p in rows], [layer], "last", batch_size=8, cache=False, progress=False
    )[:, 0, :]
    labels = [int(p.label == "harmful") for p in rows]
    langs = [p.language for p in rows]
    gate = Gate.fit(
        acts,
        labels,
        langs,
        layer=layer,
        source_languages=list(SOURCES),
        rank=4,
        model_fingerprint=handle.fingerprint,
    )
    sw = [i for i, code in enumerate(langs) if code == "sw"]
    pos = [i for i in sw if labels[i]][:4]
    neg = [i for i in sw if not labels[i]][:4]
    gate = gate.calibrate("sw", acts[pos], acts[neg]).calibrate_alpha(acts, labels, langs)
    gate.save(out)
    return out


def eval_prompts(handle: ModelHandle, n: int, tiny: bool) -> tuple[list[list[int]], list[str]]:
    if tiny:
        rng = random.Random(0)
        words = [
            "How",
            "do",
            "I",
            "make",
            "a",
            "cake",
            "weather",
            "explain",
            "quantum",
            "physics",
            "Jinsi",
            "ya",
            "kupika",
            "Habari",
            "leo",
        ]
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n)]
    else:
        from babelgate.loaders import load_prompts

        pool = [p for p in load_prompts("builtin") if p.split == "test" and p.language in TARGETS]
        texts = [p.text for p in random.Random(0).sample(pool, n)]
    langs = [TARGETS[i % len(TARGETS)] for i in range(n)]
    ids = [handle.tokenizer(t, add_special_tokens=False)["input_ids"] for t in handle.format(texts)]
    return ids, langs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument(
        "--fit-n",
        type=int,
        default=12,
        help="prompts per language and class for the on-the-fly gate",
    )
    parser.add_argument("--kv-mib", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from vllm import SamplingParams

    from babelgate.vllm_plugin import GuardedLLM

    work = Path(tempfile.mkdtemp(prefix="bg_vllm_bench_"))
    tiny = args.model == "tiny"
    model_dir, handle = tiny_model(work) if tiny else packaged_model(args.model)
    bundle = (
        Path(args.bundle)
        if args.bundle
        else fit_gate(handle, work / "bundle", args.fit_n if not tiny else 6)
    )
    ids, langs = eval_prompts(handle, args.n, tiny)
    m = args.new_tokens
    sampling = SamplingParams(temperature=0.0, max_tokens=m, min_tokens=m)
    n_tokens = m * len(ids)
    result: dict[str, Any] = {
        "model": args.model,
        "n_prompts": len(ids),
        "new_tokens": m,
        "prompt_tokens": sum(len(x) for x in ids),
        "threads": torch.get_num_threads(),
    }

    llm = GuardedLLM(
        model_dir,
        str(bundle),
        dtype="float32",
        kv_cache_memory_bytes=args.kv_mib << 20,
        max_model_len=512,
        max_num_seqs=max(8, len(ids)),
    )
    llm.generate(
        ids[:2], langs[:2], sampling=SamplingParams(temperature=0.0, max_tokens=2)
    )  # warm-up
    guarded_s, plain_s, fired = [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        outs = llm.generate(ids, langs, sampling=sampling)
        guarded_s.append(time.perf_counter() - t0)
        fired = sum(bool(o.fired) for o in outs)
        t0 = time.perf_counter()
        llm.generate(
            ids, langs, sampling=sampling, guarded=False
        )  # same engine, hook passes rows through
        plain_s.append(time.perf_counter() - t0)
    llm.unload()
    t0 = time.perf_counter()
    llm.llm.generate([{"prompt_token_ids": x} for x in ids], sampling, use_tqdm=False)
    unhooked_s = time.perf_counter() - t0
    llm.close()
    result["vllm_guarded_tok_s"] = n_tokens / min(guarded_s)
    result["vllm_optout_tok_s"] = n_tokens / min(plain_s)
    result["vllm_unhooked_tok_s"] = n_tokens / unhooked_s
    result["guarded_over_optout"] = min(plain_s) / min(guarded_s)
    result["guarded_over_unhooked"] = unhooked_s / min(guarded_s)
    result["fired"] = fired

    gate = Gate.load(bundle)
    guard = Guard(handle, gate)
    from babelgate.generation import generation_config

    # Same token ids as vLLM got, left padded in length-sorted batches (as generate_rows does).

    cfg, _ = generation_config(handle, max_new_tokens=m)
    cfg.min_new_tokens = m
    t0 = time.perf_counter()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    pad = handle.tokenizer.pad_token_id
    for start in range(0, len(order), args.hf_batch):
        rows = order[start : start + args.hf_batch]
        width = max(len(ids[i]) for i in rows)
        batch = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in rows])
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in rows])
        with guard.attached([langs[i] for i in rows]), torch.no_grad():
            handle.model.generate(input_ids=batch, attention_mask=mask, generation_config=cfg)  # type: ignore[operator]
    hf_s = time.perf_counter() - t0
    result["hf_guarded_tok_s"] = n_tokens / hf_s
    result["vllm_over_hf_guarded"] = hf_s / min(guarded_s)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
