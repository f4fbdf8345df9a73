"""Threshold candidates, objectives, tie rule, degenerate cases and the single decision rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelgate.errors import DataError
from babelgate.threshold import (
    fires,
    objective_values,
    select_threshold,
    threshold_candidates,
)


def test_fires_is_greater_or_equal_for_torch_and_numpy() -> None:
    scores = torch.tensor([0.5, 1.0, 1.5, float("nan")])
    assert fires(scores, 1.0).tolist() == [False, True, True, False]
    assert fires(scores.numpy(), 1.0).tolist() == [False, True, True, False]
    per_row = torch.tensor([0.5, 2.0, 1.0, 0.0])
    assert fires(scores, per_row).tolist() == [True, False, True, False]


def test_candidates_are_ends_and_midpoints() -> None:
    cands = threshold_candidates([3.0, 1.0, 2.0, 2.0])
    assert cands.dtype == torch.float32
    expected = torch.tensor([1.0 - 1e-6, 1.5, 2.5, 3.0 + 1e-6], dtype=torch.float32)
    assert torch.equal(cands, expected)


def test_candidate_ends_stay_strict_for_large_scores() -> None:
    # 1e-6 is below float32 resolution at 1e4; the ends must still lie outside the scores.
    scores = torch.tensor([1.0e4, 2.0e4])
    cands = threshold_candidates(scores)
    assert float(cands[0]) < 1.0e4 and float(cands[-1]) > 2.0e4
    assert fires(scores, cands[0]).all() and not fires(scores, cands[-1]).any()


def test_adjacent_float32_scores_remain_separable() -> None:
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2.0))
    choice = select_threshold(np.array([b, a], dtype=np.float32), [1, 0])
    assert choice.objective_value == 1.0 and not choice.degenerate
    assert fires(np.array([b, a], dtype=np.float32), np.float32(choice.threshold)).tolist() == [
        True,
        False,
    ]


def test_separable_scores_give_perfect_threshold() -> None:
    scores = torch.tensor([-2.0, -1.0, 0.5, 3.0, 4.0])
    labels = torch.tensor([0, 0, 1, 1, 1])
    choice = select_threshold(scores, labels)
    assert choice.threshold == pytest.approx(-0.25)
    assert choice.objective_value == 1.0
    assert (choice.tpr, choice.fpr, choice.degenerate) == (1.0, 0.0, False)
    assert choice.balanced_accuracy == 1.0
    assert torch.equal(fires(scores, choice.threshold), labels.bool())


def test_ties_resolve_to_lowest_threshold() -> None:
    # Order by score: N P N P P. Thresholds 0.5 and 2.5 both reach balanced F1 = 0.8.
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    labels = torch.tensor([0, 1, 0, 1, 1])
    choice = select_threshold(scores, labels)
    assert choice.n_tied == 2
    assert choice.threshold == pytest.approx(0.5)
    assert choice.objective_value == pytest.approx(0.8)


def test_misordered_b1_pair_is_degenerate_and_fires_everything() -> None:
    choice = select_threshold(torch.tensor([0.2, 0.9]), torch.tensor([1, 0]))
    assert choice.degenerate
    assert choice.threshold < 0.2
    assert (choice.tpr, choice.fpr) == (1.0, 1.0)
    assert choice.objective_value == pytest.approx(2.0 / 3.0)


def test_ordered_b1_pair_takes_midpoint() -> None:
    choice = select_threshold(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))
    assert not choice.degenerate
    assert choice.threshold == pytest.approx(0.55)
    assert choice.n_candidates == 3


def test_all_equal_scores_are_degenerate() -> None:
    choice = select_threshold(torch.full((6,), 1.25), torch.tensor([1, 1, 1, 0, 0, 0]))
    assert choice.degenerate and choice.n_candidates == 2
    assert choice.threshold < 1.25 and choice.tpr == 1.0


def test_f1_and_balanced_f1_differ_under_imbalance() -> None:
    # 2 harmful among 9 harmless: plain F1 punishes the three false positives at 4.0 much more.
    scores = torch.tensor([5.0, 4.0, 4.0, 4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    f1 = select_threshold(scores, labels, "f1")
    bal = select_threshold(scores, labels, "balanced_f1")
    assert f1.threshold == pytest.approx(4.5)
    assert f1.objective_value == pytest.approx(2 / 3)
    assert bal.threshold == pytest.approx(1.5)
    assert bal.objective_value == pytest.approx(2 / (1 + 3 / 9 + 1))


def test_choice_is_the_argmax_recomputed_with_fires() -> None:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(200, generator=gen)
    labels = (torch.randn(200, generator=gen) + scores) > 0
    choice = select_threshold(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    best = -1.0
    for t in threshold_candidates(scores).tolist():
        pred = fires(scores, t)
        value = float(objective_values(
            (pred & labels).sum().reshape(1), (pred & ~labels).sum().reshape(1), n_pos, n_neg, "balanced_f1"
        )[0])  # fmt: skip
        best = max(best, value)
    pred = fires(scores, choice.threshold)
    assert choice.objective_value == pytest.approx(best, abs=1e-12)
    assert choice.tpr == float((pred & labels).sum()) / n_pos
    assert choice.fpr == float((pred & ~labels).sum()) / n_neg


def test_bad_inputs_raise() -> None:
    with pytest.raises(DataError, match="both classes"):
        select_threshold(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))
    with pytest.raises(DataError, match="NaN"):
        select_threshold(torch.tensor([0.1, float("nan")]), torch.tensor([1, 0]))
    with pytest.raises(DataError, match="labels"):
        select_threshold(torch.tensor([0.1, 0.2]), torch.tensor([1, 0, 1]))
    with pytest.raises(DataError, match="objective"):
        select_threshold(torch.tensor([0.1, 0.2]), torch.tensor([1, 0]), "accuracy")
    with pytest.raises(DataError, match="no scores"):
        select_threshold(torch.tensor([]), torch.tensor([]))


def test_class_means_takes_the_midpoint_of_the_class_means() -> None:
    scores = [4.0, 3.0, 2.0, -0.5, 0.5, 1.5, 0.0, -3.0]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    choice = select_threshold(scores, labels, "class_means")
    # harmful mean 2.125, harmless mean -0.25 -> 0.9375; the boundary rule would take 1.75
    assert choice.threshold == pytest.approx(0.9375)
    assert select_threshold(scores, labels, "balanced_f1").threshold == pytest.approx(1.75)
    assert (choice.tpr, choice.fpr) == (0.75, 0.25)
    assert choice.n_candidates == 1 and not choice.degenerate


def test_class_means_with_misordered_classes_is_degenerate() -> None:
    choice = select_threshold([0.0, 1.0, 5.0, 6.0], [1, 1, 0, 0], "class_means")
    assert choice.degenerate and choice.tpr < choice.fpr
