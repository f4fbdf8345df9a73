"""The report: built from JSON files alone, with our numbers beside the paper's, budgets
beside every result, figures embedded in the HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelgate.cli import main
from babelgate.errors import ArtifactError
from babelgate.evaluation import method_metrics
from babelgate.io import write_json_atomic
from babelgate.report import PAPER_TIER_REFUSAL, budget_text, build_report


def _rows(
    refusals: dict[tuple[str, str], tuple[int, int]],
    tiers: dict[str, str],
    fired: bool | None = None,
) -> list[dict]:
    rows = []
    for (lang, label), (k, n) in refusals.items():
        for i in range(n):
            rows.append(
                {
                    "language": lang,
                    "label": label,
                    "verdict": i < k,
                    "tier": tiers[lang],
                    "fired": fired,
                    "threshold_source": None if fired is None else "calibrated",
                    "language_fallback": False,
                    "n_new_tokens": 5,
                }
            )
    return rows


def _write_run(root: Path) -> None:
    tiers = {"en": "high", "hi": "mid", "sw": "low"}
    base = {
        ("en", "harmful"): (9, 10),
        ("en", "harmless"): (0, 10),
        ("hi", "harmful"): (7, 10),
        ("hi", "harmless"): (1, 10),
        ("sw", "harmful"): (3, 10),
        ("sw", "harmless"): (1, 10),
    }
    gated = {**base, ("sw", "harmful"): (8, 10)}
    guard_desc = {
        "method": "guard",
        "gate": {"budget": {"per_language_per_class": {"hi": 4, "sw": 4}, "source_rows": 200}},
    }
    methods = {
        "none": {
            "description": {"method": "none", "budget": {"examples": 0}},
            **method_metrics(_rows(base, tiers), n_boot=50),
        },
        "gate_b4": {
            "description": guard_desc,
            **method_metrics(_rows(gated, tiers, True), n_boot=50),
        },
        "addition": {
            "description": {"method": "addition", "budget": {"from": "gate"}},
            **method_metrics(_rows(base, tiers, True), n_boot=50),
        },
    }
    write_json_atomic(
        root / "metrics.json",
        {
            "model": "m",
            "model_fingerprint": "f" * 64,
            "judge": "keyword-v1",
            "languages": list(tiers),
            "tiers": tiers,
            "methods": methods,
        },
    )
    write_json_atomic(
        root / "config.json",
        {
            "layer": 3,
            "rank": 1,
            "source_languages": ["en"],
            "target_languages": ["hi", "sw"],
            "model": {"name": "m"},
            "generation": {"max_new_tokens": 8},
        },
    )
    write_json_atomic(
        root / "utility.json",
        {
            "source": "builtin",
            "n_questions": 40,
            "methods": {
                "none": {
                    "accuracy": 52.5,
                    "mean_margin": 0.4,
                    "mean_entropy": 1.1,
                    "fire_rate": None,
                },
                "gate_b4": {
                    "accuracy": 50.0,
                    "mean_margin": 0.3,
                    "mean_entropy": 1.2,
                    "fire_rate": 7.5,
                },
            },
        },
    )
    diag = {
        "auc_projection": {"en": {"3": 0.99}, "hi": {"3": 0.95}, "sw": {"3": 0.91}},
        "budget_layer": 3,
        "n_draws": 2,
        "config": {"modes": ["refit"]},
        "notes": [],
        "budget_curves": [
            {
                "language": "sw",
                "tier": "low",
                "mode": "refit",
                "budget": b,
                "n_draws": 2,
                "f1_mean": 0.7 + 0.05 * b,
                "f1_sd": 0.01,
                "balanced_accuracy_mean": 0.72,
                "balanced_accuracy_sd": 0.02,
                "n_fallback": 0,
            }
            for b in (0, 1, 4)
        ],
    }
    write_json_atomic(root / "diagnosis" / "diagnosis.json", diag)


def test_report_has_our_numbers_beside_the_papers(tmp_path: Path) -> None:
    _write_run(tmp_path)
    md_path, html_path = build_report(tmp_path)
    md = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    # Paper references and our tier values (base low tier: 30 % harmful, 10 % harmless).
    assert "87.9 / 1.1" in md and "43.9 / 9.8" in md and "54.5" in md and "33.6" in md
    assert "| base refusal, low tier (harmful / harmless %) | 30.0 / 10.0 | 43.9 / 9.8 |" in md
    # Method selectivity on the low tier: gate 80 - 10 = 70, best baseline (addition) 20.
    assert "| mean low-tier selectivity, method (gate_b4) | 70.0 | 54.5 |" in md
    assert "| mean low-tier selectivity, best baseline (addition) | 20.0 | 33.6 |" in md
    # Budgets beside results, utility and fire rate, AUC per language.
    assert "200 source train rows + 4 per class × 2 target languages" in md
    assert "| gate_b4 | 200 source train rows + 4 per class × 2 target languages | 50.0 |" in md
    assert "| sw | low | 0.910 | 30.0 |" in md
    for name in (
        "refusal_by_tier",
        "representation_vs_action",
        "selectivity_heatmap",
        "f1_vs_budget",
        "utility",
    ):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000
    assert html.count("data:image/png;base64,") == 6
    assert "<img" in html and "plots/" not in html  # self-contained


def test_report_cli_rebuilds_identically(tmp_path: Path) -> None:
    _write_run(tmp_path)
    first = build_report(tmp_path)[0].read_text(encoding="utf-8")
    (tmp_path / "report.md").unlink()
    (tmp_path / "report.html").unlink()
    main(["report", str(tmp_path)])
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == first
    assert (tmp_path / "report.html").is_file()


def test_missing_metrics_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"metrics\.json"):
        build_report(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "report.md").exists()


def test_budget_text() -> None:
    assert budget_text({"method": "none", "budget": {"examples": 0}}) == "0 examples"
    assert budget_text({"budget": {"harmful": 32, "harmless": 32}}) == "harmful 32, harmless 32"
    assert budget_text({"budget": {"from": "gate", "source_rows": 80}}).startswith(
        "gate direction (80"
    )
    assert "0 target examples" in budget_text({"gate": {"budget": {"source_rows": 10}}})
    assert set(PAPER_TIER_REFUSAL) == {"high", "mid", "low"}
    json.dumps(PAPER_TIER_REFUSAL)
