"""Generate real completions of a packaged model on built-in prompts, for the judge sample.

Greedy decoding, 64 new tokens, batches of `--batch-size`. Rows are appended to `--out`
(JSONL) one batch at a time, so an interrupted run resumes where it stopped. The output holds
raw completions only; gold refusal labels are added by a human reader afterwards and the
labelled rows live in `tests/fixtures/judge_sample.jsonl`.

Example:
    .venv/bin/python scripts/make_judge_sample.py --model qwen2.5-coder-0.5b \
        --languages en,de,zh --per-label 10 --out build/judge_sample/raw-0.5b.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from babelgate.io import stable_seed
from babelgate.loaders import load_prompts
from babelgate.models import ModelHandle, load_model
from babelgate.prompts import Prompt

LABELS = ("harmful", "harmless")


@dataclass(frozen=True)
class Job:
    """One prompt to complete, with the id it will carry in the sample."""

    row_id: str
    prompt: Prompt


def pick_prompts(languages: list[str], per_label: int, split: str, seed_tag: str) -> list[Job]:
    """`per_label` prompts of each label per language, drawn reproducibly from `split`.

    Each language gets its own draw so the sample covers many different source prompts.
    """
    prompts = load_prompts("builtin", language=languages)
    jobs: list[Job] = []
    for language in languages:
        for label in LABELS:
            pool = [
                p
                for p in prompts
                if p.language == language and p.label == label and p.split == split
            ]
            pool.sort(key=lambda p: p.source_id or "")
            rng = random.Random(stable_seed(seed_tag, language, label))
            for prompt in rng.sample(pool, min(per_label, len(pool))):
                jobs.append(Job(f"{seed_tag}:{language}:{prompt.source_id}", prompt))
    return jobs


def generate(handle: ModelHandle, texts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of `texts` (decoded without the prompt or special tokens)."""
    batch = handle.tokenize(handle.format(texts))
    with torch.inference_mode():
        out = handle.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=handle.tokenizer.pad_token_id,
        )
    # out: [batch, prompt_len + new]; left padding means every prompt ends at the same column.
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [handle.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as fh:
        return {json.loads(line)["id"] for line in fh if line.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--languages", required=True, help="comma-separated language codes")
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    jobs = pick_prompts(languages, args.per_label, args.split, args.model)
    finished = done_ids(args.out)
    todo = [job for job in jobs if job.row_id not in finished]
    print(f"{len(jobs)} prompts, {len(todo)} to generate", flush=True)
    if not todo:
        return
    handle = load_model(args.model, progress=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start : start + args.batch_size]
        began = time.perf_counter()
        completions = generate(handle, [job.prompt.text for job in chunk], args.max_new_tokens)
        with args.out.open("a", encoding="utf-8") as fh:
            for job, completion in zip(chunk, completions, strict=True):
                row = {
                    "id": job.row_id,
                    "model": args.model,
                    "language": job.prompt.language,
                    "label": job.prompt.label,
                    "source_id": job.prompt.source_id,
                    "prompt": job.prompt.text,
                    "completion": completion,
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        elapsed = time.perf_counter() - began
        print(
            f"batch {start // args.batch_size + 1}: {len(chunk)} rows in {elapsed:.1f}s", flush=True
        )


if __name__ == "__main__":
    main()
