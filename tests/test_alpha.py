"""α calibration from the source projection gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babelgate.alpha import AlphaCalibration, calibrate_alpha
from babelgate.errors import BabelgateError, DataError


def _acts_with_projections(harmful: list[float], harmless: list[float], d: int = 6):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=gen)
    v = v / v.norm()
    other = torch.randn(len(harmful) + len(harmless), d, generator=gen)
    other = other - (other @ v).unsqueeze(1) * v  # orthogonal to v: projection is exact
    proj = torch.tensor(harmful + harmless)
    acts = other + proj.unsqueeze(1) * v
    labels = torch.tensor([1] * len(harmful) + [0] * len(harmless))
    return acts, labels, v


def test_alpha_matches_linear_quantiles() -> None:
    harmful = [10.0, 12.0, 20.0, 30.0, 31.0]
    harmless = [-1.0, 0.0, 2.0, 3.0]
    acts, labels, v = _acts_with_projections(harmful, harmless)
    calib = calibrate_alpha(acts, labels, 3.0 * v)  # direction is re-normalised
    expected_hi = float(np.quantile(harmful, 0.75))
    expected_lo = float(np.quantile(harmless, 0.25))
    assert calib.quantile_harmful == pytest.approx(expected_hi, abs=1e-4)
    assert calib.quantile_harmless == pytest.approx(expected_lo, abs=1e-4)
    assert calib.alpha_base == pytest.approx(expected_hi - expected_lo, abs=1e-4)
    assert calib.alpha == pytest.approx(calib.alpha_base)
    assert calib.median_harmful == pytest.approx(20.0, abs=1e-4)
    assert calib.median_harmless == pytest.approx(1.0, abs=1e-4)
    assert (calib.n_harmful, calib.n_harmless) == (5, 4)
    scaled = calibrate_alpha(acts, labels, v, lam=1.5, q_harmful=0.5, q_harmless=0.5)
    assert scaled.alpha == pytest.approx(1.5 * (20.0 - 1.0), abs=1e-4)
    assert AlphaCalibration.from_dict(scaled.to_dict()) == scaled


def test_non_positive_gap_is_an_error() -> None:
    acts, labels, v = _acts_with_projections([0.0, 1.0, 2.0], [5.0, 6.0, 7.0])
    with pytest.raises(BabelgateError, match="not positive"):
        calibrate_alpha(acts, labels, v)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_lambda_is_an_error(lam: float) -> None:
    acts, labels, v = _acts_with_projections([5.0, 6.0], [0.0, 1.0])
    with pytest.raises(BabelgateError, match="lambda"):
        calibrate_alpha(acts, labels, v, lam=lam)


def test_missing_class_and_bad_shapes() -> None:
    acts, labels, v = _acts_with_projections([5.0, 6.0], [0.0, 1.0])
    with pytest.raises(DataError, match="both classes"):
        calibrate_alpha(acts, torch.ones(4, dtype=torch.int64), v)
    with pytest.raises(DataError, match="d="):
        calibrate_alpha(acts, labels, torch.ones(3))
    with pytest.raises(BabelgateError, match="q_harmful"):
        calibrate_alpha(acts, labels, v, q_harmful=1.5)
