"""Directions: difference of means, per-language and pooled directions, subspace basis."""

from __future__ import annotations

import pytest
import torch

from babelgate.directions import (
    diff_of_means,
    per_language_directions,
    pooled_direction,
    project,
    subspace_basis,
)
from babelgate.errors import DataError


def _planted(
    seed: int = 0, d: int = 32, n: int = 400
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    harmful = torch.randn(n, d, generator=gen) + 3.0 * u + 5.0
    harmless = torch.randn(n, d, generator=gen) + 5.0
    return harmful, harmless, u


def test_diff_of_means_is_unit_and_recovers_planted_direction() -> None:
    harmful, harmless, u = _planted()
    v = diff_of_means(harmful, harmless)
    assert v.dtype == torch.float32 and v.shape == (32,)
    assert torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-6)
    assert float(v @ u) > 0.95


def test_diff_of_means_exact_on_constructed_means() -> None:
    harmful = torch.tensor([[3.0, 1.0], [5.0, 1.0]])
    harmless = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(diff_of_means(harmful, harmless), torch.tensor([1.0, 0.0]))


def test_coinciding_means_and_nan_are_rejected() -> None:
    same = torch.ones(4, 3)
    with pytest.raises(DataError, match="coincide"):
        diff_of_means(same, same.clone())
    bad = torch.ones(4, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        diff_of_means(bad, torch.zeros(4, 3))
    with pytest.raises(DataError, match="d="):
        diff_of_means(torch.ones(2, 3), torch.zeros(2, 4))


def test_per_language_and_pooled_directions() -> None:
    gen = torch.Generator().manual_seed(1)
    d, rows, labels, langs = 16, [], [], []
    gaps = {}
    for lang in ("en", "de", "fr"):
        gap = torch.randn(d, generator=gen)
        gaps[lang] = gap
        rows += [torch.randn(10, d, generator=gen) + gap, torch.randn(8, d, generator=gen)]
        labels += [1] * 10 + [0] * 8
        langs += [lang] * 18
    acts = torch.cat(rows)
    y = torch.tensor(labels)
    per = per_language_directions(acts, y, langs)
    assert list(per) == ["en", "de", "fr"]
    for lang, v in per.items():
        assert torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-6)
        mask = torch.tensor([code == lang for code in langs])
        expected = acts[mask & (y == 1)].mean(0) - acts[mask & (y == 0)].mean(0)
        assert torch.allclose(v, expected / expected.norm(), atol=1e-5)
    pooled = pooled_direction(acts, y, langs, ["en", "de", "fr"])
    # Equal counts per language: pooled DIM = normalised mean of the unnormalised DIMs.
    raw = sum(
        acts[torch.tensor([c == lang for c in langs]) & (y == 1)].mean(0)
        - acts[torch.tensor([c == lang for c in langs]) & (y == 0)].mean(0)
        for lang in ("en", "de", "fr")
    )
    assert torch.allclose(pooled, raw / raw.norm(), atol=1e-5)
    only_en = pooled_direction(acts, y, langs, ["en"])
    assert torch.allclose(only_en, per["en"], atol=1e-6)


def test_direction_inputs_are_validated() -> None:
    acts = torch.randn(6, 4)
    with pytest.raises(DataError, match="needs harmful and harmless"):
        per_language_directions(acts, torch.tensor([1, 1, 1, 0, 0, 0]), ["en"] * 3 + ["de"] * 3)
    with pytest.raises(DataError, match="without rows"):
        pooled_direction(acts, torch.tensor([1, 0, 1, 0, 1, 0]), ["en"] * 6, ["sw"])
    with pytest.raises(DataError, match="labels"):
        pooled_direction(acts, torch.tensor([2, 0, 1, 0, 1, 0]), ["en"] * 6, ["en"])
    with pytest.raises(DataError, match="entries"):
        pooled_direction(acts, torch.tensor([1, 0, 1, 0, 1, 0]), ["en"] * 5, ["en"])


def test_subspace_basis_orthonormal_spanning_and_signed() -> None:
    gen = torch.Generator().manual_seed(2)
    dirs = torch.randn(5, 40, generator=gen)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    basis = subspace_basis(dirs, 5)
    assert basis.shape == (40, 5) and basis.dtype == torch.float32
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5)
    # Full rank: every direction lies in the span.
    recon = (dirs @ basis) @ basis.T
    assert torch.allclose(recon, dirs, atol=1e-5)
    # Signs are fixed: directions project positively on average on every column.
    assert bool(((dirs @ basis).sum(0) > 0).all())
    top1 = subspace_basis(dirs, 1)
    assert torch.allclose(top1[:, 0], basis[:, 0], atol=1e-6)
    assert torch.equal(subspace_basis(-dirs * 1.0, 3).abs(), subspace_basis(dirs, 3).abs())


def test_subspace_basis_rank_errors() -> None:
    dirs = torch.eye(3, 8)
    with pytest.raises(DataError, match="exceeds the number of directions"):
        subspace_basis(dirs, 4)
    with pytest.raises(DataError, match="positive integer"):
        subspace_basis(dirs, 0)
    repeated = torch.stack([dirs[0], dirs[0], dirs[1]])
    with pytest.raises(DataError, match="span fewer"):
        subspace_basis(repeated, 3)


def test_project() -> None:
    acts = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    assert torch.allclose(project(acts, torch.tensor([0.0, 1.0])), torch.tensor([2.0, -1.0]))
    with pytest.raises(DataError, match="shape"):
        project(acts, torch.ones(3))
