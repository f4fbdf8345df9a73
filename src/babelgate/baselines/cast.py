"""CAST, conditional activation steering (method-reference §7.3, after IBM's activation-steering
idea; written from the description, no code taken).

* Condition vector c_l per condition layer: pairwise PCA (below) on **mean-pooled** prompt
  activations (padding masked out), harmful vs harmless.
* Condition score of a prompt state h: cos(h, tanh(proj_c h)), proj_c h = (h·c / c·c) c.
* Condition point: per condition layer, a threshold on a grid and a comparator ("larger":
  fires when score < t; "smaller": fires when score > t) chosen by F1 (harmful = positive);
  the best layer wins (a later layer must be strictly better). The grid is the paper's
  0 … 0.06 in steps of 1e-4 plus the midpoints of the observed tuning scores, because the
  paper's range was set for 7B models and may miss a small model's scores entirely.
* Behaviour vector b_l per behaviour layer: pairwise PCA on last-token activations (the
  "adapted" variant: a harmful-vs-harmless prompt contrast).
* Inference: at the prefill, on the row's condition layer, the score of the mean over the
  row's non-pad prompt positions decides; rows whose condition holds get
  `strength`·unit(b_l) added on every behaviour layer at all prefill positions and every
  decoded token.

Prompts are formatted identically at tuning and inference (chat template with the generation
prompt, `ModelHandle.format`), and pad positions are excluded from every mean — the two
weak points of the released code.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from babelgate.baselines.base import (
    Prompts,
    RowsSession,
    check_class_acts,
    class_activations,
    new_sequence,
    run_session,
)
from babelgate.capture import resolve_layers
from babelgate.errors import BabelgateError, DataError
from babelgate.generation import MethodSession, RowOutcome, SteeringMethod
from babelgate.hooks import StepState, add_direction, expand_rows
from babelgate.models import ModelHandle

Comparator = Literal["larger", "smaller"]
PAPER_GRID = np.round(np.arange(0, 601) * 1e-4, 6)
POWER_ITERATIONS = 80


def default_layers(n_layers: int) -> tuple[list[int], list[int]]:
    """Condition and behaviour layers scaled from the paper's 1…13 and 15…23 of 28 blocks."""
    top_condition = max(1, int(n_layers * 13 / 28))
    behaviour_start = max(top_condition + 1, int(n_layers * 15 / 28))
    behaviour_end = max(behaviour_start, min(n_layers - 1, int(n_layers * 23 / 28)))
    condition = list(range(1 if n_layers > 2 else 0, top_condition + 1))
    return condition, list(range(behaviour_start, behaviour_end + 1))


def pairwise_pca(
    pos: torch.Tensor, neg: torch.Tensor, iterations: int = POWER_ITERATIONS
) -> torch.Tensor:
    """Unit direction [d] from paired rows pos [n, d], neg [m, d] (§7.3 "pca_pairwise").

    Pairs row i with row i (truncated to min(n, m)), centres each pair at its midpoint, takes
    the top principal direction of the centred rows by power iteration from mean(pos) −
    mean(neg), and orients it so that most pairs project higher on the harmful side.
    """
    k = min(pos.shape[0], neg.shape[0])
    if k == 0:
        raise DataError("pairwise PCA needs at least one example per class")
    p, q = pos[:k].double(), neg[:k].double()
    centre = (p + q) / 2
    rows = torch.stack([p - centre, q - centre], dim=1).reshape(2 * k, -1)
    v = p.mean(0) - q.mean(0)
    if float(v.norm()) == 0.0:
        raise DataError("harmful and harmless means coincide: no direction to find")
    v = v / v.norm()
    for _ in range(iterations):
        w = rows.T @ (rows @ v)
        norm = float(w.norm())
        if norm == 0.0:
            break
        v = w / norm
    if int(((p @ v) < (q @ v)).sum()) > k / 2:
        v = -v
    return (v / v.norm()).float()


def condition_score(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """cos(h, tanh(proj_c h)) float32 [n] for states h [n, d] and condition vector c [d]."""
    x = h.float()
    cv = c.to(x.device, torch.float32)
    proj = (x @ cv / (cv @ cv)).unsqueeze(-1) * cv
    return torch.nn.functional.cosine_similarity(x, torch.tanh(proj), dim=-1)


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    fp = float((pred & ~y).sum())
    fn = float((~pred & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _fires(scores: np.ndarray | torch.Tensor, threshold: float, comparator: str) -> Any:
    return scores < threshold if comparator == "larger" else scores > threshold


@dataclass(frozen=True)
class ConditionPoint:
    """The tuned condition: layer, threshold, comparator and the tuning F1 (n per class)."""

    layer: int
    threshold: float
    comparator: Comparator
    f1: float
    n_harmful: int
    n_harmless: int

    def fires(self, scores: torch.Tensor) -> torch.Tensor:
        return _fires(scores, self.threshold, self.comparator)


def tune_condition_point(scores: dict[int, torch.Tensor], labels: torch.Tensor) -> ConditionPoint:
    """Best (layer, threshold, comparator) by F1 over `scores` {layer: [n]} and bool labels [n]."""
    y = labels.numpy().astype(bool)
    best: ConditionPoint | None = None
    for layer in sorted(scores):
        s = scores[layer].double().numpy()
        ordered = np.unique(s)
        grid = np.unique(np.concatenate([PAPER_GRID, (ordered[1:] + ordered[:-1]) / 2]))
        for comparator in ("larger", "smaller"):
            for t in grid:
                f1 = _f1(_fires(s, float(t), comparator), y)
                if best is None or f1 > best.f1:
                    best = ConditionPoint(
                        layer, float(t), comparator, f1, int(y.sum()), int((~y).sum())
                    )  # type: ignore[arg-type]
    assert best is not None
    return best


class CAST(SteeringMethod):
    """Conditional activation steering. Build with `CAST.fit` (prompts) or
    `CAST.from_activations`; add a per-language condition point with `tune(..., language=)`."""

    name = "cast"

    def __init__(
        self,
        handle: ModelHandle,
        condition_vectors: dict[int, torch.Tensor],
        behavior_vectors: dict[int, torch.Tensor],
        point: ConditionPoint,
        *,
        strength: float = 1.5,
        budget: dict[str, Any] | None = None,
    ) -> None:
        self.handle = handle
        self.condition_vectors = {int(k): v.float() for k, v in condition_vectors.items()}
        self.behavior_vectors = {
            int(k): (v / v.norm()).float() for k, v in behavior_vectors.items()
        }
        if max(self.condition_vectors) >= min(self.behavior_vectors):
            raise BabelgateError("every condition layer must come before every behaviour layer")
        self.point = point
        self.points: dict[str, ConditionPoint] = {}
        self.strength = float(strength)
        self.budget = budget or {}

    @classmethod
    def from_activations(
        cls,
        handle: ModelHandle,
        *,
        condition_layers: Sequence[int],
        behavior_layers: Sequence[int],
        cond_harmful: torch.Tensor,
        cond_harmless: torch.Tensor,
        behavior_harmful: torch.Tensor,
        behavior_harmless: torch.Tensor,
        tune_harmful: torch.Tensor | None = None,
        tune_harmless: torch.Tensor | None = None,
        strength: float = 1.5,
    ) -> CAST:
        """cond_* [n, len(condition_layers), d] mean-pooled; behavior_* [n, len(behavior_layers), d]
        last token; tune_* (mean-pooled, condition layers) default to cond_*."""
        d = handle.hidden_size
        check_class_acts(cond_harmful, cond_harmless, len(condition_layers), d)
        check_class_acts(behavior_harmful, behavior_harmless, len(behavior_layers), d)
        cvecs = {
            layer: pairwise_pca(cond_harmful[:, i], cond_harmless[:, i])
            for i, layer in enumerate(condition_layers)
        }
        bvecs = {
            layer: pairwise_pca(behavior_harmful[:, i], behavior_harmless[:, i])
            for i, layer in enumerate(behavior_layers)
        }
        th = cond_harmful if tune_harmful is None else tune_harmful
        tl = cond_harmless if tune_harmless is None else tune_harmless
        check_class_acts(th, tl, len(condition_layers), d)
        point = _tune(cvecs, list(condition_layers), th, tl)
        budget = {
            "vectors_harmful": int(cond_harmful.shape[0]),
            "vectors_harmless": int(cond_harmless.shape[0]),
            "tuning_harmful": int(th.shape[0]),
            "tuning_harmless": int(tl.shape[0]),
            "tuning_is_vector_data": tune_harmful is None,
        }
        return cls(handle, cvecs, bvecs, point, strength=strength, budget=budget)

    @classmethod
    def fit(
        cls,
        handle: ModelHandle,
        harmful: Prompts,
        harmless: Prompts,
        *,
        tune_harmful: Prompts | None = None,
        tune_harmless: Prompts | None = None,
        condition_layers: Sequence[int] | None = None,
        behavior_layers: Sequence[int] | None = None,
        strength: float = 1.5,
        batch_size: int = 8,
        cache: bool = True,
        progress: bool = True,
    ) -> CAST:
        """Vectors from `harmful`/`harmless`; condition point tuned on `tune_*` (default: the
        same prompts)."""
        dc, db = default_layers(handle.n_layers)
        cl = resolve_layers(handle, list(condition_layers) if condition_layers is not None else dc)
        bl = resolve_layers(handle, list(behavior_layers) if behavior_layers is not None else db)
        kw: dict[str, Any] = {"batch_size": batch_size, "cache": cache, "progress": progress}
        ch, cn, _ = class_activations(handle, harmful, harmless, cl, "mean", **kw)
        bh, bn, _ = class_activations(handle, harmful, harmless, bl, "last", **kw)
        th = tn = None
        if tune_harmful is not None or tune_harmless is not None:
            if tune_harmful is None or tune_harmless is None:
                raise DataError("give both tune_harmful and tune_harmless")
            th, tn, _ = class_activations(handle, tune_harmful, tune_harmless, cl, "mean", **kw)
        return cls.from_activations(
            handle,
            condition_layers=cl,
            behavior_layers=bl,
            cond_harmful=ch,
            cond_harmless=cn,
            behavior_harmful=bh,
            behavior_harmless=bn,
            tune_harmful=th,
            tune_harmless=tn,
            strength=strength,
        )

    def tune(
        self,
        harmful: Prompts,
        harmless: Prompts,
        *,
        language: str | None = None,
        batch_size: int = 8,
        cache: bool = True,
        progress: bool = True,
    ) -> ConditionPoint:
        """Re-tune the condition point on these prompts: for `language` only (a per-language
        point, as in the adapted variant) or globally when None."""
        layers = sorted(self.condition_vectors)
        th, tn, _ = class_activations(
            self.handle,
            harmful,
            harmless,
            layers,
            "mean",
            batch_size=batch_size,
            cache=cache,
            progress=progress,
        )
        point = _tune(self.condition_vectors, layers, th, tn)
        if language is None:
            self.point = point
        else:
            self.points[language] = point
        return point

    def point_for(self, language: str | None) -> ConditionPoint:
        return self.points.get(language, self.point) if language is not None else self.point

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]:
        layers = sorted(
            {*(p.layer for p in [self.point, *self.points.values()]), *self.behavior_vectors}
        )

        def make_edit(session: RowsSession):  # type: ignore[no-untyped-def]
            def edit(layer: int, hidden: torch.Tensor, state: StepState) -> torch.Tensor | None:
                n = hidden.shape[0]
                if new_sequence(session, state):
                    langs = languages if isinstance(languages, list | tuple) else [languages] * n
                    session.data["points"] = [
                        self.point_for(x) for x in expand_rows(list(langs), n)
                    ]
                    session.data["fired"] = torch.zeros(n, dtype=torch.bool, device=hidden.device)
                    session.calls.append([RowOutcome(fired=False) for _ in range(n)])
                points: list[ConditionPoint] = session.data["points"]
                if state.prefill and any(p.layer == layer for p in points):
                    self._condition(layer, hidden, state, points, session)
                if layer not in self.behavior_vectors:
                    return None
                mask = state.mask("all", session.data["fired"], n, hidden.device)
                return add_direction(hidden, self.behavior_vectors[layer], self.strength, mask)

            return edit

        return run_session(self.handle, layers, languages, make_edit)

    def _condition(
        self,
        layer: int,
        hidden: torch.Tensor,
        state: StepState,
        points: list[ConditionPoint],
        session: RowsSession,
    ) -> None:
        mask = state.prompt_mask
        if mask is None:
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        m = mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
        pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
        scores = condition_score(pooled, self.condition_vectors[layer])
        for i, p in enumerate(points):
            if p.layer == layer:
                fired = bool(p.fires(scores[i]))
                session.data["fired"][i] = fired
                session.calls[-1][i] = RowOutcome(
                    fired=fired,
                    score=float(scores[i]),
                    threshold=p.threshold,
                    threshold_source="language" if p is not self.point else "global",
                    extra={"condition_layer": layer, "comparator": p.comparator},
                )

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "condition_layers": sorted(self.condition_vectors),
            "behavior_layers": sorted(self.behavior_vectors),
            "strength": self.strength,
            "condition_point": asdict(self.point),
            "language_points": {k: asdict(v) for k, v in self.points.items()},
            "condition_pooling": "mean over non-pad prompt tokens",
            "behavior_pooling": "last prompt token",
            "grid": "0..0.06 step 1e-4 plus midpoints of observed tuning scores",
            "budget": self.budget,
        }


def _tune(
    cvecs: dict[int, torch.Tensor], layers: list[int], harmful: torch.Tensor, harmless: torch.Tensor
) -> ConditionPoint:
    acts = torch.cat([harmful, harmless])
    labels = torch.cat(
        [torch.ones(len(harmful), dtype=torch.bool), torch.zeros(len(harmless), dtype=torch.bool)]
    )
    scores = {layer: condition_score(acts[:, i], cvecs[layer]) for i, layer in enumerate(layers)}
    return tune_condition_point(scores, labels)
