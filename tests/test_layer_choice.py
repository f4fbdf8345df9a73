"""Layer choice on synthetic multi-layer activations whose separability varies by layer."""

from __future__ import annotations

import pytest
import torch

from babelgate.errors import DataError
from babelgate.layer_choice import choose_layer, split_masks

SOURCES = ("en", "de", "fr")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matmuls are dominated by thread wake-ups on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def layered_world(seps: tuple[float, ...], seed: int = 0, d: int = 16, n: int = 40):
    """acts [N, L, d] with planted separation seps[l] at layer slice l; train/test per row."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    acts, labels, langs, splits = [], [], [], []
    for lang in SOURCES:
        for split in ("train", "test"):
            for label in (1, 0):
                noise = torch.randn(n, len(seps), d, generator=gen)
                shift = torch.tensor(seps).reshape(1, -1, 1) * u if label else 0.0
                acts.append(noise + shift)
                labels += [label] * n
                langs += [lang] * n
                splits += [split] * n
    return torch.cat(acts), torch.tensor(labels), langs, splits


def test_best_middle_layer_wins_over_better_late_layer() -> None:
    seps = (0.1, 0.3, 0.5, 2.5, 1.0, 0.5, 0.3, 8.0)
    acts, labels, langs, splits = layered_world(seps)
    choice = choose_layer(acts, labels, langs, splits, SOURCES)
    assert choice.layer == 3
    assert choice.candidates == [1, 2, 3, 4, 5]  # (l + 1) / 8 within 25-75 %
    assert 7 not in choice.scores
    assert choice.scores[3] == max(choice.scores.values())
    assert choice.details[3]["mean_auc"] > 0.9 and choice.details[1]["mean_auc"] < 0.8
    assert set(choice.details[3]["auc"]) == set(SOURCES)
    assert "held-out AUC" in choice.criterion
    assert choice.to_dict()["scores"]["3"] == choice.scores[3]


def test_ties_go_to_the_earlier_layer() -> None:
    acts, labels, langs, splits = layered_world((0.1, 0.2, 9.0, 9.0, 0.2, 0.1))
    acts[:, 3] = acts[:, 2]  # identical slices: identical scores
    choice = choose_layer(
        acts, labels, langs, splits, SOURCES, layers=[10, 11, 12, 13, 14, 15], num_layers=24
    )
    assert choice.scores[12] == choice.scores[13]
    assert choice.layer == 12


def test_window_fallback_warns_and_uses_all_layers() -> None:
    acts, labels, langs, splits = layered_world((0.5, 3.0))
    with pytest.warns(UserWarning, match="considering all captured layers"):
        choice = choose_layer(acts, labels, langs, splits, SOURCES, layers=[0, 1], num_layers=40)
    assert choice.layer == 1 and choice.candidates == [0, 1]


def test_split_masks_and_errors() -> None:
    train, test = split_masks(["train", "test", "val"], 3)
    assert train.tolist() == [True, False, False] and test.tolist() == [False, True, False]
    train2, _ = split_masks({"train": [True, False], "test": [False, True]}, 2)
    assert train2.tolist() == [True, False]
    with pytest.raises(DataError, match="both train and test"):
        split_masks({"train": [True, True], "test": [True, False]}, 2)
    with pytest.raises(DataError, match="entries"):
        split_masks(["train"], 2)
    acts, labels, langs, splits = layered_world((1.0, 2.0))
    only_train = ["train"] * len(splits)
    with pytest.raises(DataError, match="test rows"):
        choose_layer(acts, labels, langs, only_train, SOURCES)
    with pytest.raises(DataError, match="layer ids"):
        choose_layer(acts, labels, langs, splits, SOURCES, layers=[0, 1, 2])
    with pytest.raises(DataError, match="3 dimensions"):
        choose_layer(acts[:, 0], labels, langs, splits, SOURCES)
