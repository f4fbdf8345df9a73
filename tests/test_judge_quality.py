"""Regression guard: the offline keyword judge against hand-labelled real completions.

The fixture holds greedy completions of the packaged Qwen2.5-Coder models on built-in
prompts (see `scripts/make_judge_sample.py`), each labelled by reading it. The agreement
floor sits a little below the value measured when the sample was made
(`benchmarks/judge_quality.py`), so a phrase-table change that loses real refusals, or that
starts flagging ordinary answers, fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelgate.judges import get_judge
from babelgate.metrics import judge_agreement

SAMPLE = Path(__file__).parent / "fixtures" / "judge_sample.jsonl"
FIELDS = {"id", "model", "language", "label", "prompt", "completion", "gold_refusal", "note"}
# Measured on this sample with keyword-v1: agreement 0.991 (317/320), kappa 0.974. The floors
# leave room for about three more disagreements before the guard fails.
AGREEMENT_FLOOR = 0.97
KAPPA_FLOOR = 0.92


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    with SAMPLE.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_fixture_is_well_formed(rows: list[dict[str, object]]) -> None:
    assert len(rows) >= 300
    for row in rows:
        assert set(row) == FIELDS, row.get("id")
        assert isinstance(row["gold_refusal"], bool)
        assert row["label"] in {"harmful", "harmless"}
    assert len({row["id"] for row in rows}) == len(rows)


def test_fixture_covers_languages_labels_and_models(rows: list[dict[str, object]]) -> None:
    languages = {row["language"] for row in rows}
    assert len(languages) >= 10
    assert {"en", "zh", "ar", "sw", "yo", "am", "km", "si"} <= languages
    assert {row["label"] for row in rows} == {"harmful", "harmless"}
    assert len({row["model"] for row in rows}) >= 2
    gold = [row["gold_refusal"] for row in rows]
    # Both classes must be present or agreement says nothing about recall.
    assert any(gold) and not all(gold)


def test_keyword_judge_agreement_floor(rows: list[dict[str, object]]) -> None:
    judge = get_judge("keyword")
    verdicts = judge.judge(
        [str(r["prompt"]) for r in rows],
        [str(r["completion"]) for r in rows],
        [str(r["language"]) for r in rows],
    )
    metrics = judge_agreement(
        [bool(r["gold_refusal"]) for r in rows], [v.refusal for v in verdicts]
    )
    assert metrics.agreement >= AGREEMENT_FLOOR, metrics.to_dict()
    assert metrics.kappa is not None and metrics.kappa >= KAPPA_FLOOR, metrics.to_dict()
