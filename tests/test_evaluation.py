"""The evaluation runner: same prompts for every method, judged completions, metrics and
config written, safe resumption of partial runs, and reuse of finished ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from babelgate.baselines import ActivationAddition
from babelgate.errors import DataError
from babelgate.evaluation import evaluate, prompt_id, threshold_usage
from babelgate.judges import get_judge
from babelgate.pipeline import draw_rows, load_run_prompts
from babelgate.prompts import PromptSet
from babelgate.testing import tiny_model


@pytest.fixture(scope="module")
def handle():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return tiny_model("qwen2")


@pytest.fixture(scope="module")
def prompts() -> PromptSet:
    return draw_rows(load_run_prompts(["builtin"], ["en", "sw"]), "test", 3, 0)


def _methods(handle):  # type: ignore[no-untyped-def]
    direction = torch.zeros(handle.hidden_size)
    direction[0] = 1.0
    return {"none": None, "addition": ActivationAddition(handle, direction, 8.0, layer=1)}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_writes_completions_metrics_and_config(handle, prompts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    judge = get_judge("keyword")
    result = evaluate(
        handle,
        prompts,
        _methods(handle),
        judge,
        tmp_path,
        max_new_tokens=6,
        batch_size=4,
        progress=False,
        n_boot=50,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(metrics["methods"]) == {"none", "addition"}
    assert metrics["languages"] == ["en", "sw"]
    for name in ("none", "addition"):
        rows = _rows(tmp_path / "completions" / f"{name}.jsonl")
        assert [r["prompt_id"] for r in rows] == [prompt_id(p) for p in prompts]
        assert all(isinstance(r["verdict"], bool) and r["judge_id"] == judge.judge_id for r in rows)
        langs = {m["language"] for m in metrics["methods"][name]["refusal"]["languages"]}
        assert langs == {"en", "sw"}
        refused = sum(
            r["verdict"] for r in rows if r["label"] == "harmful" and r["language"] == "en"
        )
        en = next(
            m for m in metrics["methods"][name]["refusal"]["languages"] if m["language"] == "en"
        )
        assert en["harmful_refused"] == refused and en["n_harmful"] == 3
        assert not (tmp_path / "completions" / f"{name}.partial.jsonl").exists()
    assert all(r["fired"] is True for r in _rows(tmp_path / "completions" / "addition.jsonl"))
    assert all(r["fired"] is None for r in _rows(tmp_path / "completions" / "none.jsonl"))
    assert config["generation"]["max_new_tokens"] == 6
    assert config["model"]["fingerprint"] == handle.fingerprint
    assert config["data"]["digest"] == prompts.digest()
    assert config["judge"] == judge.judge_id
    assert config["methods"]["addition"]["alpha"] == 8.0
    assert result.outcomes["none"].generated == len(prompts)


def test_resume_after_interruption_gives_the_same_rows(handle, prompts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    judge = get_judge("keyword")
    kw = {"max_new_tokens": 6, "batch_size": 2, "progress": False, "n_boot": 0}
    first = evaluate(handle, prompts, {"none": None}, judge, tmp_path / "a", **kw)
    reference = _rows(tmp_path / "a" / "completions" / "none.jsonl")
    # Simulate a crash: the final file is missing, the partial file holds 5 rows and a torn line.
    run_b = tmp_path / "b"
    evaluate(handle, prompts, {"none": None}, judge, run_b, **kw)
    final = run_b / "completions" / "none.jsonl"
    partial = run_b / "completions" / "none.partial.jsonl"
    rows = _rows(final)
    final.unlink()
    partial.write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:5]) + '{"prompt_id": "en:ha', encoding="utf-8"
    )
    resumed = evaluate(handle, prompts, {"none": None}, judge, run_b, **kw)
    assert resumed.outcomes["none"].resumed == 5
    assert resumed.outcomes["none"].generated == len(prompts) - 5
    again = _rows(final)
    assert [(r["prompt_id"], r["completion"]) for r in again] == [
        (r["prompt_id"], r["completion"]) for r in reference
    ]
    assert (
        first.metrics["methods"]["none"]["refusal"] == resumed.metrics["methods"]["none"]["refusal"]
    )


def test_finished_methods_are_reused_and_changed_settings_regenerate(
    handle, prompts, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    judge = get_judge("keyword")
    kw = {"batch_size": 4, "progress": False, "n_boot": 0}
    evaluate(handle, prompts, {"none": None}, judge, tmp_path, max_new_tokens=4, **kw)
    second = evaluate(handle, prompts, {"none": None}, judge, tmp_path, max_new_tokens=4, **kw)
    assert second.outcomes["none"].reused and second.outcomes["none"].generated == 0
    third = evaluate(handle, prompts, {"none": None}, judge, tmp_path, max_new_tokens=5, **kw)
    assert not third.outcomes["none"].reused
    assert third.outcomes["none"].generated == len(prompts)


def test_duplicate_prompts_and_empty_inputs_are_rejected(handle, prompts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    judge = get_judge("keyword")
    doubled = prompts.concat(prompts[:1])
    with pytest.raises(DataError, match="duplicate"):
        evaluate(handle, doubled, {"none": None}, judge, tmp_path, progress=False)
    with pytest.raises(DataError, match="no methods"):
        evaluate(handle, prompts, {}, judge, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_threshold_usage_counts() -> None:
    rows = [
        {"language": "sw", "threshold_source": "calibrated", "language_fallback": False},
        {"language": "sw", "threshold_source": "source", "language_fallback": True},
        {"language": "en", "threshold_source": "source", "language_fallback": False},
        {"language": "en", "threshold_source": None},
    ]
    assert threshold_usage(rows) == {
        "sw": {"calibrated": 1, "source": 1, "fallback": 1},
        "en": {"calibrated": 0, "source": 1, "fallback": 0},
    }
