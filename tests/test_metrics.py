"""Refusal metrics and judge agreement against hand-computed numbers."""

from __future__ import annotations

import json
import random

import pytest
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
)

from babelgate.errors import DataError
from babelgate.metrics import EvalRecord, judge_agreement, refusal_metrics


def rows(
    language: str, label: str, refused: list[bool], gate: list[bool | None] | None = None
) -> list[EvalRecord]:
    gates = gate if gate is not None else [None] * len(refused)
    return [EvalRecord(language, label, r, g) for r, g in zip(refused, gates, strict=True)]


T, F = True, False

RECORDS = [
    *rows("sw", "harmful", [T, F, F, T], [T, T, F, None]),  # 50 %, gate 2/3
    *rows("sw", "harmless", [F, F, F, F, T], [F, F, F, F, T]),  # 20 %, gate 1/5
    *rows("am", "harmful", [T, T]),  # 100 %
    *rows("am", "harmless", [F, F]),  # 0 %
    *rows("en", "harmful", [T, T, F]),  # 66.67 %
    *rows("en", "harmless", [T]),  # 100 %
    *rows("de", "harmful", [T]),  # 100 %, no harmless rows
]


def test_per_language_rates_and_selectivity() -> None:
    result = refusal_metrics(RECORDS, n_boot=0)
    sw = result.language("sw")
    assert (sw.n_harmful, sw.n_harmless, sw.harmful_refused, sw.harmless_refused) == (4, 5, 2, 1)
    assert sw.harmful_refusal_pct == pytest.approx(50.0)
    assert sw.harmless_refusal_pct == pytest.approx(20.0)
    assert sw.selectivity == pytest.approx(30.0)
    assert sw.tier == "low"
    assert sw.gate_fire_harmful_pct == pytest.approx(200 / 3)
    assert sw.gate_fire_harmless_pct == pytest.approx(20.0)
    assert (sw.n_gate_harmful, sw.n_gate_harmless) == (3, 5)
    en = result.language("en")
    assert en.harmful_refusal_pct == pytest.approx(200 / 3)
    assert en.selectivity == pytest.approx(200 / 3 - 100)
    de = result.language("de")
    assert de.harmless_refusal_pct is None and de.selectivity is None
    assert de.gate_fire_harmful_pct is None
    assert sw.harmful_ci is None  # n_boot=0: no intervals
    # Registry order, not input order.
    assert [m.language for m in result.languages] == ["en", "de", "sw", "am"]


def test_tier_means_are_means_of_language_values() -> None:
    result = refusal_metrics(RECORDS, n_boot=0)
    low = result.tier("low")
    assert low.languages == ("sw", "am")
    assert low.harmful_refusal_pct == pytest.approx(75.0)
    assert low.harmless_refusal_pct == pytest.approx(10.0)
    assert low.selectivity == pytest.approx(65.0)
    assert low.gate_fire_harmful_pct == pytest.approx(200 / 3)  # only sw has gate data
    high = result.tier("high")
    assert high.harmful_refusal_pct == pytest.approx((200 / 3 + 100) / 2)
    assert high.harmless_refusal_pct == pytest.approx(100.0)
    assert high.selectivity == pytest.approx(200 / 3 - 100)
    overall = result.tier("all")
    assert overall.harmful_refusal_pct == pytest.approx((50 + 100 + 200 / 3 + 100) / 4)
    assert overall.harmless_refusal_pct == pytest.approx(40.0)
    assert overall.selectivity == pytest.approx((30 + 100 + 200 / 3 - 100) / 3)
    assert [t.tier for t in result.tiers] == ["high", "low", "all"]


def test_tiers_from_records_and_mapping() -> None:
    records = [EvalRecord("xx", "harmful", True, tier="mid"), EvalRecord("yy", "harmful", False)]
    result = refusal_metrics(records, n_boot=0, tiers={"yy": "low", "xx": "high"})
    assert result.language("xx").tier == "mid"  # the record's own tier wins
    assert result.language("yy").tier == "low"
    assert (
        refusal_metrics([EvalRecord("zz", "harmful", True)], n_boot=0).language("zz").tier is None
    )
    with pytest.raises(DataError, match="tiers"):
        refusal_metrics(
            [
                EvalRecord("xx", "harmful", True, tier="mid"),
                EvalRecord("xx", "harmless", True, tier="low"),
            ]
        )


def big_records() -> list[EvalRecord]:
    rng = random.Random(7)
    out: list[EvalRecord] = []
    for language, p_harm, p_safe in (("sw", 0.5, 0.1), ("am", 0.3, 0.05), ("en", 0.9, 0.05)):
        out += [EvalRecord(language, "harmful", rng.random() < p_harm) for _ in range(100)]
        out += [EvalRecord(language, "harmless", rng.random() < p_safe) for _ in range(80)]
    return out


def test_bootstrap_is_deterministic_and_contains_the_estimate() -> None:
    records = big_records()
    first = refusal_metrics(records, n_boot=2000, seed=3)
    again = refusal_metrics(records, n_boot=2000, seed=3)
    other = refusal_metrics(records, n_boot=2000, seed=4)
    assert first.to_dict() == again.to_dict()
    assert first.to_dict() != other.to_dict()
    for metrics in [*first.languages, *first.tiers]:
        for value, interval in (
            (metrics.harmful_refusal_pct, metrics.harmful_ci),
            (metrics.harmless_refusal_pct, metrics.harmless_ci),
            (metrics.selectivity, metrics.selectivity_ci),
        ):
            assert value is not None and interval is not None
            assert interval.low < interval.high
            assert interval.contains(value)


def test_bootstrap_width_matches_binomial_theory() -> None:
    # 50 of 100 refused: the 95 % interval of a proportion is about ±1.96·sqrt(.25/100) = ±9.8 pp.
    records = [EvalRecord("sw", "harmful", i < 50) for i in range(100)]
    records += [EvalRecord("sw", "harmless", i < 10) for i in range(100)]
    sw = refusal_metrics(records, n_boot=4000, seed=0).language("sw")
    assert (
        sw.harmful_ci is not None and sw.harmless_ci is not None and sw.selectivity_ci is not None
    )
    assert 16.0 <= sw.harmful_ci.high - sw.harmful_ci.low <= 23.0
    # Selectivity resamples both labels independently, so it is wider than either alone.
    width = sw.selectivity_ci.high - sw.selectivity_ci.low
    assert width > sw.harmful_ci.high - sw.harmful_ci.low
    assert width == pytest.approx(1.96 * 2 * 100 * ((0.25 + 0.09) / 100) ** 0.5, rel=0.15)


def test_adding_a_language_does_not_move_other_intervals() -> None:
    records = big_records()
    alone = refusal_metrics([r for r in records if r.language == "sw"], n_boot=500, seed=1)
    together = refusal_metrics(records, n_boot=500, seed=1)
    assert alone.language("sw") == together.language("sw")


def test_degenerate_cells_have_point_intervals() -> None:
    records = rows("am", "harmful", [T, T, T]) + rows("am", "harmless", [F, F])
    am = refusal_metrics(records, n_boot=200).language("am")
    assert am.harmful_ci is not None and am.harmful_ci.to_list() == [100.0, 100.0]
    assert am.selectivity_ci is not None and am.selectivity_ci.to_list() == [100.0, 100.0]


def test_outputs_are_json_ready_and_tabular() -> None:
    result = refusal_metrics(RECORDS, n_boot=100, seed=0)
    decoded = json.loads(json.dumps(result.to_dict()))
    assert decoded["bootstrap"] == {"n_boot": 100, "confidence": 0.95, "seed": 0}
    assert decoded["n_records"] == len(RECORDS)
    assert decoded["languages"][2]["language"] == "sw"
    assert set(decoded["languages"][2]["harmful_ci"]) == {"low", "high"}
    table = result.to_rows()
    assert len(table) == 4 + 3
    assert [row["scope"] for row in table] == ["language"] * 4 + ["tier"] * 3
    assert {"harmful_ci_low", "harmful_ci_high", "selectivity", "n_harmful"} <= set(table[0])
    assert table[-1]["tier"] == "all" and table[-1]["languages"] == "en de sw am"


def test_records_as_mappings_and_bad_input() -> None:
    result = refusal_metrics(
        [
            {"language": "sw", "label": "harmful", "refusal": 1},
            {"language": "sw", "label": "harmless", "refused": False},
        ],
        n_boot=0,
    )
    assert result.language("sw").selectivity == pytest.approx(100.0)
    with pytest.raises(DataError, match="record 0: label"):
        refusal_metrics([{"language": "sw", "label": "benign", "refused": True}])
    with pytest.raises(DataError, match="record 0: 'refused'"):
        refusal_metrics([{"language": "sw", "label": "harmful", "refused": "yes"}])
    with pytest.raises(DataError, match="missing 'language'"):
        refusal_metrics([{"label": "harmful", "refused": True}])
    with pytest.raises(DataError, match="no records"):
        refusal_metrics([])
    with pytest.raises(DataError, match="confidence"):
        refusal_metrics(RECORDS, confidence=95)


def test_judge_agreement_reproduces_the_paper_validation() -> None:
    # The paper's human validation of its LLM judge (method-reference §8.1):
    # (human refusal, judge refusal) 114, (refusal, not) 13, (not, refusal) 32, (not, not) 441.
    gold = [T] * 114 + [T] * 13 + [F] * 32 + [F] * 441
    pred = [T] * 114 + [F] * 13 + [T] * 32 + [F] * 441
    result = judge_agreement(gold, pred)
    assert (result.n, result.tp, result.fn, result.fp, result.tn) == (600, 114, 13, 32, 441)
    assert result.agreement == pytest.approx(0.925)
    assert result.recall == pytest.approx(114 / 127)  # 89.8 %
    assert result.precision == pytest.approx(114 / 146)  # ≈ 78 %
    assert result.mcc == pytest.approx(0.790, abs=5e-4)
    assert result.f1 == pytest.approx(228 / 273)
    assert result.kappa == pytest.approx((0.925 - 233284 / 360000) / (1 - 233284 / 360000))


def test_judge_agreement_matches_sklearn() -> None:
    rng = random.Random(11)
    gold = [rng.random() < 0.3 for _ in range(300)]
    pred = [g if rng.random() < 0.85 else not g for g in gold]
    result = judge_agreement(gold, pred)
    assert result.kappa == pytest.approx(cohen_kappa_score(gold, pred))
    assert result.mcc == pytest.approx(matthews_corrcoef(gold, pred))
    assert result.precision == pytest.approx(precision_score(gold, pred))
    assert result.recall == pytest.approx(recall_score(gold, pred))
    assert result.f1 == pytest.approx(f1_score(gold, pred))
    assert {row["metric"] for row in result.to_rows()} == set(result.to_dict())


def test_judge_agreement_undefined_parts_and_errors() -> None:
    result = judge_agreement([F, F, F], [F, F, F])
    assert result.agreement == 1.0
    assert result.precision is None and result.recall is None and result.f1 is None
    assert result.kappa is None and result.mcc is None
    small = judge_agreement([T, T, F, F], [T, F, T, F])
    assert (small.agreement, small.precision, small.recall, small.kappa, small.mcc) == (
        0.5,
        0.5,
        0.5,
        0.0,
        0.0,
    )
    with pytest.raises(DataError, match="3 gold labels but 2"):
        judge_agreement([T, F, T], [T, F])
    with pytest.raises(DataError, match="no labels"):
        judge_agreement([], [])
    with pytest.raises(DataError, match="row 1"):
        judge_agreement([T, "yes"], [T, T])  # type: ignore[list-item]
