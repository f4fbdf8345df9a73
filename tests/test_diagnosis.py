"""Diagnosis: representation intact (high AUC) but action wrong (b = 0) and repaired (b > 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from babelgate.diagnosis import DiagnosisResult, diagnose
from babelgate.errors import DataError

SOURCES = ("en", "de", "fr")
TIERS = {"en": "high", "de": "high", "fr": "high", "th": "mid", "sw": "low"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matmuls are dominated by thread wake-ups on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def world(seed: int = 0, d: int = 24, n: int = 40, seps: tuple[float, ...] = (0.3, 3.0, 6.0)):
    """acts [N, L, d]; "sw" is shifted far along −u at every layer, "th" mildly."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    sep = torch.tensor(seps).reshape(1, -1, 1)
    acts, labels, langs, splits = [], [], [], []
    for lang, shift in (("en", 0.0), ("de", 0.0), ("fr", 0.0), ("th", -1.0), ("sw", -6.0)):
        offset = torch.randn(d, generator=gen) * 0.5
        for split in ("train", "test"):
            for label in (1, 0):
                rows = torch.randn(n, len(seps), d, generator=gen) + offset + shift * sep * u
                if label:
                    rows = rows + sep * u
                acts.append(rows)
                labels += [label] * n
                langs += [lang] * n
                splits += [split] * n
    return torch.cat(acts), torch.tensor(labels), langs, splits


@pytest.fixture(scope="module")
def result():
    acts, labels, langs, splits = world()
    return diagnose(
        acts, labels, langs, splits, SOURCES, tiers=TIERS, budgets=(0, 1, 4, 64), num_layers=4
    )


def _row(result, lang: str, mode: str, budget: int) -> dict:
    (row,) = [
        r
        for r in result.budget_curves
        if r["language"] == lang and r["mode"] == mode and r["budget"] == budget
    ]
    return row


def test_representation_vs_action(result) -> None:
    assert result.layers == [0, 1, 2] and result.budget_layer == 2  # most separable layer
    # The shifted language is still separable by the source direction...
    assert result.auc_projection["sw"][2] > 0.95 and result.auc_gate["sw"][2] > 0.95
    assert result.auc_projection["sw"][0] < result.auc_projection["sw"][2]
    # ...but the source threshold does not act on it, and 4 examples per class fix that.
    for mode in ("refit", "threshold"):
        b0 = _row(result, "sw", mode, 0)
        assert b0["n_draws"] == 1 and b0["balanced_accuracy_sd"] == 0.0
        assert abs(b0["balanced_accuracy_mean"] - 0.5) < 0.1
        b4 = _row(result, "sw", mode, 4)
        assert b4["n_draws"] == 10 and b4["balanced_accuracy_mean"] > 0.9
        assert b4["balanced_accuracy_sd"] >= 0.0 and 0.0 <= b4["f1_mean"] <= 1.0
    assert _row(result, "en", "refit", 0)["balanced_accuracy_mean"] > 0.9


def test_budget_beyond_pool_is_skipped_with_note(result) -> None:
    assert not [r for r in result.budget_curves if r["budget"] == 64]
    assert any("budget 64 skipped" in note for note in result.notes)


def test_projection_histograms_per_tier(result) -> None:
    assert list(result.projection_histograms) == ["high", "mid", "low"]
    high, low = result.projection_histograms["high"], result.projection_histograms["low"]
    assert high["harmful"]["n"] == 3 * 40 and low["harmless"]["n"] == 40
    assert sum(high["harmful"]["counts"]) == 120 and len(high["harmful"]["edges"]) == 41
    # Low-resource harmful prompts sit far below high-resource harmful ones on v̂.
    assert low["harmful"]["median"] < high["harmless"]["median"] < high["harmful"]["median"]


def test_json_and_plots(tmp_path: Path, result) -> None:
    data = json.loads(result.to_json())
    assert data["auc_projection"]["sw"]["2"] == result.auc_projection["sw"][2]
    assert data["tiers"]["sw"] == "low" and data["n_draws"] == 10
    paths = result.save(tmp_path / "diag")
    for key in ("auc_heatmap", "projection_histograms", "budget_curves"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["budget_layer"] == 2
    again = DiagnosisResult.from_dict(json.loads(paths["json"].read_text()))
    assert again.auc_gate == result.auc_gate and again.budget_curves == result.budget_curves
    assert not [p for p in (tmp_path / "diag").iterdir() if p.name.startswith(".")]


def test_seeded_draws_are_reproducible() -> None:
    acts, labels, langs, splits = world(seed=1, n=20)
    kwargs = dict(tiers=TIERS, budgets=(0, 2), n_draws=3, modes=("threshold",), budget_layer=2)
    a = diagnose(acts, labels, langs, splits, SOURCES, **kwargs)
    b = diagnose(acts, labels, langs, splits, SOURCES, **kwargs)
    assert a.budget_curves == b.budget_curves and a.auc_gate == b.auc_gate
    assert {r["mode"] for r in a.budget_curves} == {"threshold"}


def test_bad_arguments() -> None:
    acts, labels, langs, splits = world(n=10)
    with pytest.raises(DataError, match="modes"):
        diagnose(acts, labels, langs, splits, SOURCES, modes=("both",), budget_layer=1)
    with pytest.raises(DataError, match="budget_layer"):
        diagnose(acts, labels, langs, splits, SOURCES, budget_layer=9)
    with pytest.raises(DataError, match="n_draws"):
        diagnose(acts, labels, langs, splits, SOURCES, n_draws=0, budget_layer=1)
