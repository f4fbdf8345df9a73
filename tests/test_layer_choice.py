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


def test_transfer_languages_steer_the_choice_away_from_a_non_transferring_layer() -> None:
    # Layer 0: sources perfectly separable, but the target's harm signal lives on another axis.
    # Layer 1: sources a little less separable, the target shares their direction.
    gen = torch.Generator().manual_seed(0)
    d, per = 16, 40
    acts, labels, langs, splits = [], [], [], []
    for lang in ("en", "de", "fr", "sw"):
        for split in ("train", "test"):
            for label in (0, 1):
                x = torch.randn(per, 2, d, generator=gen)
                if lang == "sw":
                    x[:, 0, 1] += 3.0 * label  # layer 0: orthogonal to the source direction
                    x[:, 1, 0] += 2.0 * label
                else:
                    x[:, 0, 0] += 6.0 * label
                    x[:, 1, 0] += 2.0 * label
                acts.append(x)
                labels += [label] * per
                langs += [lang] * per
                splits += [split] * per
    x3 = torch.cat(acts)
    y = torch.tensor(labels)
    plain = choose_layer(x3, y, langs, splits, ["en", "de", "fr"], [4, 5], num_layers=10)
    assert plain.layer == 4
    aware = choose_layer(
        x3, y, langs, splits, ["en", "de", "fr"], [4, 5], num_layers=10, transfer_languages=["sw"]
    )
    assert aware.layer == 5
    assert aware.details[4]["transfer_auc"]["sw"] < 0.7 < aware.details[5]["transfer_auc"]["sw"]
    assert "train rows of ['sw']" in aware.criterion
