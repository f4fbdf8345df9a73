"""The evaluation runner: every method on the same prompts → judged completions → metrics.

`evaluate(handle, prompts, methods, judge, out_dir)` writes into `out_dir`:

* `completions/{method}.jsonl` — one row per prompt: prompt id, language, tier, label, split,
  the completion, the method's per-row decision (fired, score, threshold, threshold_source,
  language_fallback) and the judge's verdict and reason;
* `metrics.json` — per method: refusal metrics per language and tier with bootstrap intervals
  (`babelgate.metrics.refusal_metrics`), gate fire rates, how often each language used the
  source threshold, and the method's own description with its example budget;
* `config.json` — every setting that changes a number (merged with the caller's `config`).

Resumable and safe: generation runs in fixed chunks, and each finished chunk is appended to
`completions/{method}.partial.jsonl` (flushed and synced). A rerun with the same settings skips
methods whose completions file is complete, and continues a partial one after its last whole
row. A completions file made with other settings (method parameters, prompts, model, token
budget) is discarded, never mixed in; a change of judge only re-judges. Final files are written
to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelgate._version import __version__
from babelgate.errors import DataError
from babelgate.generation import SteeringMethod, Unsteered, batch_order
from babelgate.io import sha256_text, write_json_atomic, write_jsonl_atomic
from babelgate.judges.base import Judge
from babelgate.metrics import refusal_metrics
from babelgate.models import ModelHandle
from babelgate.progress import advance, progress_bar
from babelgate.prompts import Prompt, PromptSet

METRICS_FORMAT = "babelgate.metrics"
METRICS_VERSION = 1
COMPLETIONS_DIR = "completions"
GATE_SOURCES = ("calibrated", "source")


def prompt_id(prompt: Prompt) -> str:
    """A stable row id: language, label, split and source id."""
    return f"{prompt.language}:{prompt.label}:{prompt.split}:{prompt.source_id}"


def jsonable(value: Any) -> Any:
    """A JSON-ready copy (tensors and other objects become lists, numbers or strings)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


@dataclass
class MethodOutcome:
    """What the runner did for one method."""

    name: str
    rows: list[dict[str, Any]]
    generated: int
    resumed: int
    reused: bool


@dataclass
class EvaluationResult:
    """The metrics document (as written to metrics.json), the per-method rows, and paths."""

    metrics: dict[str, Any]
    config: dict[str, Any]
    outcomes: dict[str, MethodOutcome]
    paths: dict[str, Path] = field(default_factory=dict)


def _signature(
    handle: ModelHandle,
    method: SteeringMethod,
    ids: list[str],
    digest: str,
    max_new_tokens: int,
    batch_size: int,
) -> str:
    described = json.dumps(jsonable(method.describe()), sort_keys=True, default=str)
    return sha256_text(
        handle.fingerprint,
        str(handle.dtype),
        described,
        digest,
        str(max_new_tokens),
        str(batch_size),
        "\n".join(ids),
        __version__,
    )


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Whole JSON rows of a JSONL file; a truncated or corrupt line ends the read."""
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(row, dict) or "prompt_id" not in row:
                break
            rows.append(row)
    return rows


def _append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _judge_rows(judge: Judge, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = judge.judge(
        [r["prompt"] for r in rows], [r["completion"] for r in rows], [r["language"] for r in rows]
    )
    return [
        {**row, "verdict": bool(v.refusal), "reason": v.reason, "judge_id": v.judge_id}
        for row, v in zip(rows, verdicts, strict=True)
    ]


def run_method(
    handle: ModelHandle,
    name: str,
    method: SteeringMethod,
    prompts: PromptSet,
    judge: Judge,
    out_dir: Path,
    *,
    max_new_tokens: int,
    batch_size: int,
    chunk_batches: int = 4,
    progress: bool = True,
) -> MethodOutcome:
    """Generate (resuming), judge and write `completions/{name}.jsonl` for one method."""
    folder = out_dir / COMPLETIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final, partial, meta = (
        folder / f"{name}.jsonl",
        folder / f"{name}.partial.jsonl",
        folder / f"{name}.meta.json",
    )
    ids = [prompt_id(p) for p in prompts]
    signature = _signature(handle, method, ids, prompts.digest(), max_new_tokens, batch_size)
    previous = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
    if previous.get("signature") != signature:
        final.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        write_json_atomic(meta, {"method": name, "signature": signature, "n": len(ids)})
    wanted = set(ids)
    done = _read_rows(final)
    if done and {r["prompt_id"] for r in done} == wanted and len(done) == len(ids):
        if any(r.get("judge_id") != judge.judge_id for r in done):
            done = _judge_rows(judge, done)
            write_jsonl_atomic(final, done)
        return MethodOutcome(name, done, generated=0, resumed=0, reused=True)

    kept = [r for r in _read_rows(partial) if r["prompt_id"] in wanted]
    by_id = {r["prompt_id"]: r for r in kept}
    write_jsonl_atomic(partial, by_id.values())  # drops a torn last line before appending
    index = {pid: i for i, pid in enumerate(ids)}
    formatted = handle.format(prompts.texts())
    # Fixed chunks of length-sorted rows: a resumed run forms exactly the same batches.
    order = [i for batch in batch_order(handle, formatted, batch_size) for i in batch]
    chunk = batch_size * max(1, chunk_batches)
    todo = [i for i in order if ids[i] not in by_id]
    registry = prompts.registry
    with progress_bar(f"generate {name}", total=len(ids), enabled=progress) as bar:
        advance(bar, len(ids) - len(todo))
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            batch = [prompts[i] for i in rows]
            records = method.generate(
                [p.text for p in batch],
                [p.language for p in batch],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=False,
            )
            new_rows = []
            for p, rec in zip(batch, records, strict=True):
                new_rows.append(
                    {
                        "prompt_id": prompt_id(p),
                        "language": p.language,
                        "tier": registry.tier_of(p.language) if p.language in registry else None,
                        "label": p.label,
                        "split": p.split,
                        "source_id": p.source_id,
                        "category": p.category,
                        "method": name,
                        "prompt": p.text,
                        "completion": rec.completion,
                        "fired": rec.fired,
                        "score": rec.score,
                        "threshold": rec.threshold,
                        "threshold_source": rec.threshold_source,
                        "language_fallback": rec.language_fallback,
                        "n_new_tokens": rec.n_new_tokens,
                    }
                )
            _append_rows(partial, new_rows)
            by_id.update((r["prompt_id"], r) for r in new_rows)
            advance(bar, len(rows))
    ordered = sorted(by_id.values(), key=lambda r: index[r["prompt_id"]])
    judged = _judge_rows(judge, ordered)
    write_jsonl_atomic(final, judged)
    partial.unlink(missing_ok=True)
    return MethodOutcome(name, judged, generated=len(todo), resumed=len(kept), reused=False)


def threshold_usage(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per language: rows scored with a calibrated vs the source threshold, and rows whose
    language was unknown or uncalibrated (`fallback`)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.get("threshold_source") is None:
            continue
        cell = out.setdefault(row["language"], {"calibrated": 0, "source": 0, "fallback": 0})
        cell[row["threshold_source"] if row["threshold_source"] in GATE_SOURCES else "source"] += 1
        cell["fallback"] += bool(row.get("language_fallback"))
    return out


def method_metrics(
    rows: Sequence[dict[str, Any]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Refusal metrics (per language and tier, with intervals) and threshold usage of rows."""
    records = [
        {
            "language": r["language"],
            "label": r["label"],
            "refused": bool(r["verdict"]),
            "gate_fired": r.get("fired"),
            "tier": r.get("tier"),
        }
        for r in rows
    ]
    metrics = refusal_metrics(records, n_boot=n_boot, seed=seed)
    return {
        "n_completions": len(rows),
        "refusal": metrics.to_dict(),
        "threshold_usage": threshold_usage(rows),
        "mean_new_tokens": sum(int(r.get("n_new_tokens") or 0) for r in rows) / max(len(rows), 1),
    }


def evaluate(
    handle: ModelHandle,
    prompts: PromptSet,
    methods: Mapping[str, SteeringMethod | None],
    judge: Judge,
    out_dir: str | Path,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Run each method (None = the unmodified model) on the same prompts; judge; write
    completions, `metrics.json` and `config.json` into `out_dir`. Returns the documents."""
    if not len(prompts):
        raise DataError("no prompts to evaluate")
    if not methods:
        raise DataError("no methods to evaluate")
    ids = [prompt_id(p) for p in prompts]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise DataError(f"duplicate prompts (language, label, split, source id): {dupes}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    resolved: dict[str, SteeringMethod] = {
        name: method if method is not None else Unsteered(handle)
        for name, method in methods.items()
    }
    described = {name: jsonable(method.describe()) for name, method in resolved.items()}
    run_config: dict[str, Any] = {
        "library_version": __version__,
        "model": jsonable(handle.describe()),
        "data": {
            "digest": prompts.digest(),
            "n_prompts": len(prompts),
            "summary": jsonable(prompts.summary()),
        },
        "judge": judge.judge_id,
        "generation": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "decoding": "greedy",
        },
        "metrics": {"n_boot": n_boot, "seed": seed},
        "methods": described,
        **jsonable(dict(config or {})),
    }
    write_json_atomic(root / "config.json", run_config)

    outcomes: dict[str, MethodOutcome] = {}
    per_method: dict[str, Any] = {}
    for name, method in resolved.items():
        outcome = run_method(
            handle,
            name,
            method,
            prompts,
            judge,
            root,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        outcomes[name] = outcome
        per_method[name] = {
            "description": described[name],
            "budget": described[name].get("budget") if isinstance(described[name], dict) else None,
            **method_metrics(outcome.rows, n_boot=n_boot, seed=seed),
            "run": {
                "generated": outcome.generated,
                "resumed": outcome.resumed,
                "reused": outcome.reused,
            },
        }
    registry = prompts.registry
    languages = prompts.languages()
    metrics = {
        "format": METRICS_FORMAT,
        "format_version": METRICS_VERSION,
        "library_version": __version__,
        "model": handle.name,
        "model_fingerprint": handle.fingerprint,
        "judge": judge.judge_id,
        "languages": languages,
        "tiers": {lang: registry.tier_of(lang) if lang in registry else None for lang in languages},
        "methods": per_method,
    }
    write_json_atomic(root / "metrics.json", metrics)
    return EvaluationResult(
        metrics=metrics,
        config=run_config,
        outcomes=outcomes,
        paths={
            "metrics": root / "metrics.json",
            "config": root / "config.json",
            "completions": root / COMPLETIONS_DIR,
        },
    )
