"""Decision thresholds for gate scores (method-reference §5.7), with one decision rule.

The paper selected thresholds with `score > t` but fired at inference with `score >= t`.
Here `fires` is the only decision function; `select_threshold` evaluates every candidate
through it, and the gate uses it at inference, so calibration and serving cannot disagree.

Scores are handled in float32, and every candidate threshold is a float32 value, so the
comparison made during selection is bit-for-bit the comparison made later on a float32
score, on any device.

Tie rule: among candidates reaching the best objective value (within 1e-12), the lowest
threshold wins, as in the paper. Lower means more prompts fire, i.e. ties are resolved
toward refusing, which is the conservative side for a safety gate.

`class_means` is not a search: the threshold is the midpoint of the two classes' mean
scores. It uses every example instead of the two nearest the boundary, so with b = 4 it
moves less with one atypical example (benchmarks/threshold_rules.py measures the trade-off:
fewer harmless prompts fire, fewer harmful ones too).

Degenerate choices: a choice is `degenerate` when the selected threshold fires on all or on
none of the calibration rows, i.e. no threshold separates the examples better than "refuse
everything". This happens for a misordered b = 1 pair (harmful scored below harmless: the
paper then drops the threshold below the minimum so the whole language fires), when all
scores are equal, or when every harmful score sits below every harmless one. The selector
only reports it; `Gate.calibrate` decides what to do (by default it keeps the source
threshold and flags the language, see `babelgate.gate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from babelgate.errors import DataError

EPSILON = 1e-6
Objective = Literal["balanced_f1", "f1", "class_means"]
OBJECTIVES: tuple[str, ...] = ("balanced_f1", "f1", "class_means")
_TIE_TOL = 1e-12

ScoreT = TypeVar("ScoreT", torch.Tensor, np.ndarray)


def fires(scores: ScoreT, threshold: float | ScoreT) -> ScoreT:
    """The gate's decision: harmful iff `score >= threshold` (element-wise, bool result).

    Works on torch tensors (any device) and numpy arrays; `threshold` is a scalar or an
    array broadcastable to `scores`. NaN scores never fire.
    """
    return scores >= threshold


def _as_scores(scores: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    tensor = tensor.detach().to("cpu", torch.float32).reshape(-1)
    if tensor.numel() == 0:
        raise DataError("no scores to choose a threshold from")
    if not bool(torch.isfinite(tensor).all()):
        raise DataError("scores contain NaN or infinite values")
    return tensor


def _below(value: np.float32, eps: float) -> np.float32:
    low = np.float32(np.float64(value) - eps)
    return low if low < value else np.nextafter(value, np.float32(-np.inf))


def _above(value: np.float32, eps: float) -> np.float32:
    high = np.float32(np.float64(value) + eps)
    return high if high > value else np.nextafter(value, np.float32(np.inf))


def threshold_candidates(
    scores: torch.Tensor | np.ndarray | Sequence[float], eps: float = EPSILON
) -> torch.Tensor:
    """Candidate thresholds [m] (float32, ascending): min−ε, midpoints of sorted unique scores, max+ε.

    ε is widened to one float32 step where needed so min−ε < min and max+ε > max. A midpoint
    that rounds onto the lower score is replaced by the upper score, which under `>=` splits
    the same pair, so every distinct split of the scores stays a candidate.
    """
    values = np.unique(_as_scores(scores).numpy())  # sorted, float32
    low, high = _below(values[0], eps), _above(values[-1], eps)
    lower, upper = values[:-1], values[1:]
    mids = ((lower.astype(np.float64) + upper.astype(np.float64)) / 2.0).astype(np.float32)
    mids = np.where(mids <= lower, upper, mids)
    cands = np.unique(np.concatenate([[low], mids, [high]]).astype(np.float32))
    return torch.from_numpy(cands)


def objective_values(
    tp: torch.Tensor, fp: torch.Tensor, n_pos: int, n_neg: int, objective: str
) -> torch.Tensor:
    """Objective per candidate from true/false positive counts (float64).

    `balanced_f1` reweights the classes to equal mass: precision = TPR/(TPR+FPR), recall = TPR,
    which simplifies to F1 = 2·TPR / (TPR + FPR + 1). `f1` is the plain F1 of the harmful class.
    """
    tp64, fp64 = tp.double(), fp.double()
    if objective == "balanced_f1":
        tpr, fpr = tp64 / n_pos, fp64 / n_neg
        return 2.0 * tpr / (tpr + fpr + 1.0)
    if objective == "f1":
        fn = n_pos - tp64
        return 2.0 * tp64 / (2.0 * tp64 + fp64 + fn)
    raise DataError(f"unknown threshold objective {objective!r}; choose one of {OBJECTIVES}")


@dataclass(frozen=True)
class ThresholdChoice:
    """A selected threshold and how it was chosen (all rates measured on the given scores)."""

    threshold: float
    objective: str
    objective_value: float
    n_pos: int
    n_neg: int
    n_candidates: int
    n_tied: int
    tpr: float
    fpr: float
    degenerate: bool

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.tpr + (1.0 - self.fpr))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdChoice:
        return cls(
            threshold=float(data["threshold"]),
            objective=str(data["objective"]),
            objective_value=float(data["objective_value"]),
            n_pos=int(data["n_pos"]),
            n_neg=int(data["n_neg"]),
            n_candidates=int(data["n_candidates"]),
            n_tied=int(data["n_tied"]),
            tpr=float(data["tpr"]),
            fpr=float(data["fpr"]),
            degenerate=bool(data["degenerate"]),
        )


def select_threshold(
    scores: torch.Tensor | np.ndarray | Sequence[float],
    labels: torch.Tensor | np.ndarray | Sequence[int],
    objective: str = "balanced_f1",
    eps: float = EPSILON,
) -> ThresholdChoice:
    """Threshold maximising `objective` over `threshold_candidates(scores)`; lowest wins ties.

    scores [n] (any float dtype, evaluated as float32), labels [n] (1 = harmful); both
    classes must be present. Predictions are made with `fires`.
    """
    if objective not in OBJECTIVES:
        raise DataError(f"unknown threshold objective {objective!r}; choose one of {OBJECTIVES}")
    s = _as_scores(scores)
    y = torch.as_tensor(np.asarray(labels)).reshape(-1)
    if y.shape[0] != s.shape[0]:
        raise DataError(f"{s.shape[0]} scores but {y.shape[0]} labels")
    if y.dtype != torch.bool:
        if not set(torch.unique(y).tolist()) <= {0, 1}:
            raise DataError("labels must be 0/1 (1 = harmful)")
        y = y != 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"threshold selection needs both classes; got {n_pos} harmful, {n_neg} harmless"
        )
    if objective == "class_means":
        return _class_means_choice(s, y, n_pos, n_neg)
    cands = threshold_candidates(s, eps)
    # Counting form of `fires` for all candidates at once: #{score >= t} = n - #{score < t}.
    # The chosen threshold is re-checked with `fires` itself below.
    pos_sorted, _ = torch.sort(s[y])
    neg_sorted, _ = torch.sort(s[~y])
    tp = n_pos - torch.searchsorted(pos_sorted, cands, side="left")
    fp = n_neg - torch.searchsorted(neg_sorted, cands, side="left")
    values = objective_values(tp, fp, n_pos, n_neg, objective)
    best = float(values.max())
    tied = torch.nonzero(values >= best - _TIE_TOL).reshape(-1)
    pick = int(tied[0])  # candidates ascend, so the first tie is the lowest threshold
    pred = fires(s, cands[pick])
    if int((pred & y).sum()) != int(tp[pick]) or int((pred & ~y).sum()) != int(fp[pick]):
        raise AssertionError("threshold counting disagrees with fires()")  # internal invariant
    n_fired = int(tp[pick] + fp[pick])
    return ThresholdChoice(
        threshold=float(cands[pick]),
        objective=objective,
        objective_value=float(values[pick]),
        n_pos=n_pos,
        n_neg=n_neg,
        n_candidates=int(cands.shape[0]),
        n_tied=int(tied.shape[0]),
        tpr=float(tp[pick]) / n_pos,
        fpr=float(fp[pick]) / n_neg,
        degenerate=n_fired in (0, n_pos + n_neg),
    )


def _class_means_choice(
    s: torch.Tensor, y: torch.Tensor, n_pos: int, n_neg: int
) -> ThresholdChoice:
    """The midpoint of the harmful and harmless mean scores (float32), evaluated with `fires`."""
    mid = (float(s[y].double().mean()) + float(s[~y].double().mean())) / 2.0
    threshold = np.float32(mid)
    pred = fires(s, torch.tensor(threshold))
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    value = objective_values(torch.tensor([tp]), torch.tensor([fp]), n_pos, n_neg, "balanced_f1")
    return ThresholdChoice(
        threshold=float(threshold),
        objective="class_means",
        objective_value=float(value[0]),
        n_pos=n_pos,
        n_neg=n_neg,
        n_candidates=1,
        n_tied=1,
        tpr=tp / n_pos,
        fpr=fp / n_neg,
        # Harmful examples scoring below harmless ones on average: the midpoint then fires
        # more on harmless than harmful rows, which no gate should do.
        degenerate=(tp + fp) in (0, n_pos + n_neg) or tp / n_pos < fp / n_neg,
    )
