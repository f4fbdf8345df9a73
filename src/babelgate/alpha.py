"""Steering strength α from the source projection gap (method-reference §6.3).

α_base = Q_{0.75}(harmful · v̂) − Q_{0.25}(harmless · v̂) over the source training rows,
and α = λ · α_base (λ = 1 by default). Quantiles use linear interpolation (torch.quantile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from babelgate.directions import as_acts, as_labels, unit
from babelgate.errors import BabelgateError, DataError


@dataclass(frozen=True)
class AlphaCalibration:
    """α and the statistics it came from (projections onto the unit direction)."""

    alpha: float
    alpha_base: float
    lam: float
    q_harmful: float
    q_harmless: float
    quantile_harmful: float
    quantile_harmless: float
    median_harmful: float
    median_harmless: float
    n_harmful: int
    n_harmless: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlphaCalibration:
        return cls(
            alpha=float(data["alpha"]),
            alpha_base=float(data["alpha_base"]),
            lam=float(data["lam"]),
            q_harmful=float(data["q_harmful"]),
            q_harmless=float(data["q_harmless"]),
            quantile_harmful=float(data["quantile_harmful"]),
            quantile_harmless=float(data["quantile_harmless"]),
            median_harmful=float(data["median_harmful"]),
            median_harmless=float(data["median_harmless"]),
            n_harmful=int(data["n_harmful"]),
            n_harmless=int(data["n_harmless"]),
        )


def calibrate_alpha(
    acts: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    direction: torch.Tensor | np.ndarray,
    *,
    lam: float = 1.0,
    q_harmful: float = 0.75,
    q_harmless: float = 0.25,
) -> AlphaCalibration:
    """α from source activations acts [n, d], labels [n] (1 = harmful) and a direction [d].

    The direction is re-normalised. Raises BabelgateError if λ is not a finite positive
    number, a quantile level is outside [0, 1], a class is missing, or α_base is not a finite
    positive number (the direction does not put harmful above harmless).
    """
    if not (isinstance(lam, int | float) and math.isfinite(lam) and lam > 0):
        raise BabelgateError(f"lambda must be a finite number > 0, got {lam!r}")
    for name, q in (("q_harmful", q_harmful), ("q_harmless", q_harmless)):
        if not (0.0 <= q <= 1.0):
            raise BabelgateError(f"{name} must lie in [0, 1], got {q!r}")
    x = as_acts(acts)
    y = as_labels(labels, x.shape[0])
    v = torch.as_tensor(direction).detach().to("cpu", torch.float32).reshape(-1)
    if v.shape[0] != x.shape[1]:
        raise DataError(f"direction has d={v.shape[0]} but activations have d={x.shape[1]}")
    v = unit(v)
    proj = (x.double() @ v.double()).reshape(-1)
    pos, neg = proj[y], proj[~y]
    if pos.numel() == 0 or neg.numel() == 0:
        raise DataError(
            f"alpha calibration needs both classes; got {pos.numel()} harmful, {neg.numel()} harmless"
        )
    hi = float(torch.quantile(pos, q_harmful))
    lo = float(torch.quantile(neg, q_harmless))
    base = hi - lo
    if not math.isfinite(base) or base <= 0:
        raise BabelgateError(
            f"alpha_base = Q{q_harmful}(harmful) - Q{q_harmless}(harmless) = {base:.6g} is not "
            "positive: the direction does not separate harmful above harmless at this layer"
        )
    return AlphaCalibration(
        alpha=float(lam * base),
        alpha_base=base,
        lam=float(lam),
        q_harmful=float(q_harmful),
        q_harmless=float(q_harmless),
        quantile_harmful=hi,
        quantile_harmless=lo,
        median_harmful=float(torch.quantile(pos, 0.5)),
        median_harmless=float(torch.quantile(neg, 0.5)),
        n_harmful=int(pos.numel()),
        n_harmless=int(neg.numel()),
    )
