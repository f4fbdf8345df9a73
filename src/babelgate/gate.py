"""The gate: rank-r source subspace → standardised logistic readout → per-language threshold.

Method-reference §5. `Gate.fit` builds the source-only gate (b = 0) from source-language
activations; `Gate.calibrate` adapts it to one target language from b harmful + b harmless
examples and returns a new `Gate` (gates are immutable values; nothing is changed in place).

Scoring happens in one place, `RoutingTensors.score`: `Gate.score`, `Gate.decide`, the
threshold selection during fit/calibration and a generation hook (which calls
`gate.routing_tensors(device)` once and then `rt.decide(h, rt.index(languages))`) all run
the same arithmetic. The projection and readout are computed in float64 (float32 on Apple
MPS, which has no float64) from activations of any dtype, then rounded to float32 scores,
so a decision does not depend on the batch the row arrived in or on the capture dtype
beyond the activations themselves. Decisions use `babelgate.threshold.fires` (score >= t).

Regularisation: the readout is scikit-learn `LogisticRegression` (lbfgs, L2,
class_weight="balanced", intercept not penalised). Its objective is
0.5·‖w‖² + C·Σᵢ wᵢ·loss(i). The paper's probe used AdamW with decoupled weight decay 0.01
(lr 0.05, 80 steps), which shrinks weights by only (1 − 0.05·0.01)^80 ≈ 0.96 and also
decays the bias; an explicit mean-loss penalty λ‖w‖² would map to C = 1 / (2·n·λ) (see
`c_from_l2`), i.e. C ≈ 0.011 for λ = 0.01 and n = 4,600. The default C = 1.0 is a weak
penalty (λ ≈ 1/(2n)), close to the paper's effectively unregularised 80-step fit on
standardised r ≤ 10 features; both give nearly the same direction in the r-dim space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import ThreadpoolController

from babelgate.alpha import AlphaCalibration, calibrate_alpha
from babelgate.directions import (
    all_finite,
    as_acts,
    as_labels,
    as_languages,
    per_language_directions,
    pooled_direction,
    subspace_basis,
)
from babelgate.errors import BabelgateError, DataError
from babelgate.io import stable_seed
from babelgate.threshold import OBJECTIVES, ThresholdChoice, fires, select_threshold

CalibrationMode = Literal["refit", "threshold"]
DegeneratePolicy = Literal["keep_source", "follow_paper"]
MODES: tuple[str, ...] = ("refit", "threshold")
STD_FLOOR = 1e-6
SOURCE = "source"
CALIBRATED = "calibrated"
FALLBACK = "fallback_source"


_BLAS = ThreadpoolController()


def c_from_l2(l2: float, n_rows: int) -> float:
    """sklearn C equivalent to a mean-loss objective with penalty l2·‖w‖² on n_rows rows."""
    if l2 <= 0 or n_rows <= 0:
        raise BabelgateError("l2 and n_rows must be positive")
    return 1.0 / (2.0 * n_rows * l2)


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _activation_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the shapes and float32 bytes of the tensors (provenance of fit/calibration data)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(repr(tuple(data.shape)).encode("ascii"))
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class Readout:
    """Standardised logistic readout on r-dim features: logit = ((z − mean) / std) · weight + bias.

    mean, std, weight are float64 [r]; std is the population std clamped at 1e-6, all fitted
    on the readout's own training matrix.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: float
    n_harmful: int
    n_harmless: int
    seed: int
    converged: bool

    def meta(self) -> dict[str, Any]:
        return {
            "bias": self.bias,
            "n_harmful": self.n_harmful,
            "n_harmless": self.n_harmless,
            "seed": self.seed,
            "converged": self.converged,
        }


def fit_readout(features: torch.Tensor, labels: torch.Tensor, *, C: float, seed: int) -> Readout:
    """Fit the readout on features [n, r] and bool labels [n] (both classes required)."""
    z = features.detach().to("cpu", torch.float64).numpy()
    y = labels.detach().to("cpu").numpy().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"readout needs both classes; got {n_pos} harmful, {n_neg} harmless")
    mean = z.mean(axis=0)
    std = np.maximum(z.std(axis=0), STD_FLOOR)
    model = LogisticRegression(
        C=C, class_weight="balanced", solver="lbfgs", max_iter=2000, random_state=seed
    )
    # An r ≤ 10 dimensional problem gains nothing from BLAS threads, and their wake-ups cost
    # milliseconds per L-BFGS step on a busy machine; one thread keeps a refit well under 1 s.
    with _BLAS.limit(limits=1, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit((z - mean) / std, y.astype(np.int64))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return Readout(
        mean=torch.from_numpy(mean.copy()),
        std=torch.from_numpy(std.copy()),
        weight=torch.from_numpy(model.coef_[0].astype(np.float64).copy()),
        bias=float(model.intercept_[0]),
        n_harmful=n_pos,
        n_harmless=n_neg,
        seed=int(seed),
        converged=converged,
    )


@dataclass(frozen=True, eq=False)
class RoutingTensors:
    """Everything a batch scorer needs, on one device. Row k of the stacked readout tensors
    belongs to `languages[k - 1]`; row 0 is the source-only (b = 0) readout and threshold.

    basis [d, r], means/stds/weights [K+1, r], biases [K+1] in the compute dtype (float64,
    float32 on MPS); thresholds [K+1] float32; direction [d] float32; alpha or None.
    """

    languages: tuple[str, ...]
    basis: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor
    biases: torch.Tensor
    thresholds: torch.Tensor
    direction: torch.Tensor
    alpha: float | None

    @property
    def device(self) -> torch.device:
        return self.basis.device

    def index(
        self, languages: Sequence[str | None] | str | None, n: int | None = None
    ) -> torch.Tensor:
        """Readout index per row (long [n] on this device); unknown or None → 0 (source)."""
        codes = _broadcast_languages(languages, n)
        lookup = {lang: k + 1 for k, lang in enumerate(self.languages)}
        idx = [lookup.get(code, 0) if code is not None else 0 for code in codes]
        return torch.tensor(idx, dtype=torch.long, device=self.device)

    def score(self, acts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Gate logits float32 [n] for acts [n, d] (any float dtype) and readout index [n]."""
        x = acts.to(device=self.device, dtype=self.basis.dtype)
        z = x @ self.basis  # [n, r]
        idx = index.to(self.device)
        standardised = (z - self.means[idx]) / self.stds[idx]
        logits = (standardised * self.weights[idx]).sum(dim=-1) + self.biases[idx]
        return logits.to(torch.float32)

    def decide(
        self, acts: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores f32 [n], fired bool [n], thresholds f32 [n]) for acts [n, d]."""
        scores = self.score(acts, index)
        thresholds = self.thresholds[index.to(self.device)]
        return scores, fires(scores, thresholds), thresholds


def _broadcast_languages(
    languages: Sequence[str | None] | str | None, n: int | None
) -> list[str | None]:
    if languages is None or isinstance(languages, str):
        if n is None:
            raise DataError("a single language needs the row count")
        return [languages] * n
    codes = list(languages)
    if n is not None and len(codes) != n:
        raise DataError(f"languages has {len(codes)} entries for {n} rows")
    for code in codes:
        if code is not None and not isinstance(code, str):
            raise DataError(f"language codes must be strings or None, got {code!r}")
    return codes


@dataclass(frozen=True, eq=False)
class LanguageCalibration:
    """The outcome of `Gate.calibrate` for one language.

    status is "calibrated", or "fallback_source" when the calibration examples could not be
    separated (degenerate threshold) and the policy kept the source readout and threshold.
    """

    language: str
    mode: str
    budget: int
    readout: Readout
    threshold: ThresholdChoice
    seed: int
    status: str
    data_digest: str
    created: str

    def meta(self) -> dict[str, Any]:
        return {
            "language": self.language,
            "mode": self.mode,
            "budget": self.budget,
            "seed": self.seed,
            "status": self.status,
            "data_digest": self.data_digest,
            "created": self.created,
            "threshold": self.threshold.to_dict(),
            "readout": self.readout.meta(),
        }


@dataclass(frozen=True, eq=False)
class GateDecision:
    """Per-row gate output: scores f32 [n], fired bool [n], threshold f32 [n] (on the acts'
    device), and for each row whether its threshold was "calibrated" or the "source" one."""

    scores: torch.Tensor
    fired: torch.Tensor
    threshold: torch.Tensor
    threshold_source: list[str]
    languages: list[str | None]


@dataclass(frozen=True, eq=False)
class Gate:
    """A fitted gate. Build with `Gate.fit`; adapt with `calibrate`; persist with `save`/`load`.

    Tensors: direction v̂ [d] float32 (pooled source difference of means, used for steering),
    basis [d, r] float32, source_features [n_src, r] float32 and source_labels [n_src] bool
    (kept so `calibrate(mode="refit")` needs no source activations).
    """

    layer: int
    rank: int
    direction: torch.Tensor
    basis: torch.Tensor
    source_readout: Readout
    source_threshold: ThresholdChoice
    source_languages: tuple[str, ...]
    source_features: torch.Tensor
    source_labels: torch.Tensor
    seed: int
    C: float
    objective: str
    model_fingerprint: str
    data_digest: str
    fit_stats: dict[str, Any]
    created: str
    calibrations: dict[str, LanguageCalibration] = field(default_factory=dict)
    alpha: AlphaCalibration | None = None
    model_spec: str = ""  # what load_model was given (alias, path or hub id), for serve/calibrate
    _routing_cache: dict[str, RoutingTensors] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    # ----------------------------------------------------------------- construction
    @classmethod
    def fit(
        cls,
        acts: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        languages: Sequence[str],
        *,
        layer: int,
        source_languages: Sequence[str] | None = None,
        rank: int = 10,
        C: float = 1.0,
        seed: int = 0,
        objective: str = "balanced_f1",
        model_fingerprint: str = "",
        data_digest: str = "",
        model_spec: str = "",
    ) -> Gate:
        """Source-only gate (b = 0) from acts [n, d], labels [n], languages [n] at `layer`.

        Only rows of `source_languages` (default: every language present; pass the
        high-resource tier for the paper's setting) are used. `rank` is clamped to the number
        of source languages with a warning. The source threshold maximises `objective` on
        the source training logits. `data_digest` defaults to a digest of the rows used.
        """
        if objective not in OBJECTIVES:
            raise DataError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        if not (isinstance(C, int | float) and math.isfinite(C) and C > 0):
            raise DataError(f"C must be a finite number > 0, got {C!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise DataError(f"rank must be a positive integer, got {rank!r}")
        x = as_acts(acts)
        y = as_labels(labels, x.shape[0])
        codes = as_languages(languages, x.shape[0])
        present = list(dict.fromkeys(codes))
        sources = present if source_languages is None else list(dict.fromkeys(source_languages))
        missing = [lang for lang in sources if lang not in present]
        if not sources or missing:
            raise DataError(f"source languages without rows: {missing or 'none given'}")
        source_set = set(sources)
        rows = torch.tensor([code in source_set for code in codes], dtype=torch.bool)
        x_src, y_src = x[rows], y[rows]
        src_codes = [code for code, keep in zip(codes, rows.tolist(), strict=True) if keep]

        rank_used = rank
        if rank > len(sources):
            rank_used = len(sources)
            warnings.warn(
                f"rank {rank} exceeds the {len(sources)} source languages; using rank {rank_used}",
                UserWarning,
                stacklevel=2,
            )
        per_lang = per_language_directions(x_src, y_src, src_codes, sources)
        stack = torch.stack([per_lang[lang] for lang in sources])
        basis = subspace_basis(stack, rank_used)
        direction = pooled_direction(x_src, y_src, src_codes, sources)

        features = (x_src.double() @ basis.double()).to(torch.float32)
        readout = fit_readout(features, y_src, C=C, seed=seed)
        placeholder = ThresholdChoice(0.0, objective, 0.0, 0, 0, 0, 0, 0.0, 0.0, True)
        gate = cls(
            layer=int(layer),
            rank=rank_used,
            direction=direction,
            basis=basis,
            source_readout=readout,
            source_threshold=placeholder,
            source_languages=tuple(sources),
            source_features=features,
            source_labels=y_src.clone(),
            seed=int(seed),
            C=float(C),
            objective=objective,
            model_fingerprint=model_fingerprint,
            data_digest=data_digest or _activation_digest(x_src, y_src.to(torch.float32)),
            fit_stats={},
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            model_spec=model_spec,
        )
        logits = gate.score(x_src, None)
        choice = select_threshold(logits, y_src, objective)
        if choice.degenerate:
            raise DataError(
                f"the source activations at layer {layer} do not separate harmful from harmless: "
                "the best threshold fires on all or none of the source rows"
            )
        pairs = Counter(zip(src_codes, y_src.tolist(), strict=True))
        counts = {
            lang: {"harmful": pairs[(lang, True)], "harmless": pairs[(lang, False)]}
            for lang in sources
        }
        in_span = float(torch.linalg.vector_norm(basis.double().T @ direction.double()))
        stats = {
            "n_rows": int(x_src.shape[0]),
            "n_harmful": int(y_src.sum()),
            "n_harmless": int((~y_src).sum()),
            "rows_per_language": counts,
            "rank_requested": rank,
            "rank_used": rank_used,
            "singular_values": [float(s) for s in torch.linalg.svdvals(stack.double())],
            "direction_in_span": in_span,
            "train_auc": float(roc_auc_score(y_src.numpy(), logits.numpy())),
            "train_balanced_accuracy": choice.balanced_accuracy,
            "readout_converged": readout.converged,
        }
        return dataclasses.replace(gate, source_threshold=choice, fit_stats=stats)

    # ----------------------------------------------------------------- calibration
    def calibrate(
        self,
        lang: str,
        harmful_acts: torch.Tensor | np.ndarray,
        harmless_acts: torch.Tensor | np.ndarray,
        mode: str = "refit",
        seed: int | None = None,
        on_degenerate: str = "keep_source",
    ) -> Gate:
        """A new Gate calibrated for `lang` from b harmful [b, d] and b harmless [b, d] rows.

        mode "refit" (paper): refit the readout on the source features plus the 2b target rows,
        then choose the threshold on the 2b target logits. mode "threshold": keep the source
        readout and only choose a threshold on the 2b target logits. Both classes need the same
        number b ≥ 1 of rows (the budget is per class); otherwise a DataError is raised.

        on_degenerate decides what happens when no threshold separates the target examples
        better than firing on all of them (e.g. a misordered b = 1 pair):
        "keep_source" (default) keeps the source readout and threshold for `lang`, records the
        language as "fallback_source" and warns — calibration evidence that contradicts the
        gate is not allowed to switch a language to refuse-everything silently;
        "follow_paper" accepts the degenerate threshold (below the lowest example score, so
        nearly the whole language fires), as the paper's code does.
        """
        if not isinstance(lang, str) or not lang:
            raise DataError(f"language must be a non-empty string, got {lang!r}")
        if mode not in MODES:
            raise DataError(f"unknown calibration mode {mode!r}; choose one of {MODES}")
        if on_degenerate not in ("keep_source", "follow_paper"):
            raise DataError(
                f"on_degenerate must be 'keep_source' or 'follow_paper', got {on_degenerate!r}"
            )
        pos = as_acts(harmful_acts, "harmful_acts")
        neg = as_acts(harmless_acts, "harmless_acts")
        for name, block in (("harmful_acts", pos), ("harmless_acts", neg)):
            if block.shape[1] != self.d:
                raise DataError(f"{name} has d={block.shape[1]} but the gate has d={self.d}")
        if pos.shape[0] != neg.shape[0]:
            raise DataError(
                f"calibration needs the same number of harmful and harmless examples (budget per "
                f"class); got {pos.shape[0]} harmful and {neg.shape[0]} harmless"
            )
        budget = int(pos.shape[0])
        if seed is None:
            seed = stable_seed(
                self.seed, self.model_fingerprint, lang, budget, self.rank, "probe-fit"
            )
        x_t = torch.cat([pos, neg])
        y_t = torch.cat(
            [torch.ones(budget, dtype=torch.bool), torch.zeros(budget, dtype=torch.bool)]
        )
        if mode == "refit":
            z_t = (x_t.double() @ self.basis.double()).to(torch.float32)
            readout = fit_readout(
                torch.cat([self.source_features, z_t]),
                torch.cat([self.source_labels, y_t]),
                C=self.C,
                seed=seed,
            )
        else:
            readout = self.source_readout
        trial = self._with_readout(lang, readout)
        logits = trial.score(x_t, [lang] * (2 * budget))
        choice = select_threshold(logits, y_t, self.objective)
        status = CALIBRATED
        if choice.degenerate and on_degenerate == "keep_source":
            status = FALLBACK
            warnings.warn(
                f"calibration examples for {lang!r} cannot be separated (best threshold fires on "
                f"{'all' if choice.tpr == 1.0 else 'none'} of them); keeping the source threshold. "
                "Add more or cleaner examples for this language.",
                UserWarning,
                stacklevel=2,
            )
        record = LanguageCalibration(
            language=lang,
            mode=mode,
            budget=budget,
            readout=readout if status == CALIBRATED else self.source_readout,
            threshold=choice,
            seed=int(seed),
            status=status,
            data_digest=_activation_digest(x_t),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return dataclasses.replace(self, calibrations={**self.calibrations, lang: record})

    def _with_readout(self, lang: str, readout: Readout) -> Gate:
        """A copy where `lang` uses `readout` (threshold not yet chosen); for scoring only."""
        threshold = ThresholdChoice(0.0, self.objective, 0.0, 0, 0, 0, 0, 0.0, 0.0, False)
        record = LanguageCalibration(lang, "", 0, readout, threshold, 0, CALIBRATED, "", "")
        return dataclasses.replace(self, calibrations={**self.calibrations, lang: record})

    def with_alpha(self, calibration: AlphaCalibration) -> Gate:
        return dataclasses.replace(self, alpha=calibration)

    def calibrate_alpha(
        self,
        acts: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        languages: Sequence[str],
        *,
        lam: float = 1.0,
        q_harmful: float = 0.75,
        q_harmless: float = 0.25,
    ) -> Gate:
        """A new Gate with α calibrated on the source-language rows of acts [n, d] (§6.3)."""
        x = as_acts(acts)
        y = as_labels(labels, x.shape[0])
        codes = as_languages(languages, x.shape[0])
        source_set = set(self.source_languages)
        rows = torch.tensor([c in source_set for c in codes], dtype=torch.bool)
        if not bool(rows.any()):
            raise DataError(f"no rows of the source languages {list(self.source_languages)}")
        calib = calibrate_alpha(
            x[rows], y[rows], self.direction, lam=lam, q_harmful=q_harmful, q_harmless=q_harmless
        )
        return self.with_alpha(calib)

    # ----------------------------------------------------------------- scoring
    @property
    def d(self) -> int:
        return int(self.basis.shape[0])

    @property
    def calibrated_languages(self) -> list[str]:
        return [lang for lang, rec in self.calibrations.items() if rec.status == CALIBRATED]

    @property
    def budgets(self) -> dict[str, int]:
        return {lang: rec.budget for lang, rec in self.calibrations.items()}

    def threshold_for(self, lang: str | None) -> tuple[float, str]:
        """(threshold, "calibrated" | "source") used for rows of `lang`."""
        rec = self.calibrations.get(lang) if lang is not None else None
        if rec is not None and rec.status == CALIBRATED:
            return rec.threshold.threshold, CALIBRATED
        return self.source_threshold.threshold, SOURCE

    def routing_tensors(self, device: torch.device | str = "cpu") -> RoutingTensors:
        """Stacked readouts and thresholds on `device` for batch scoring (cached per device)."""
        dev = torch.device(device)
        key = str(dev)
        cached = self._routing_cache.get(key)
        if cached is not None:
            return cached
        dtype = _compute_dtype(dev)
        langs = tuple(self.calibrated_languages)
        readouts = [self.source_readout] + [self.calibrations[lang].readout for lang in langs]
        thresholds = [self.source_threshold.threshold] + [
            self.calibrations[lang].threshold.threshold for lang in langs
        ]
        tensors = RoutingTensors(
            languages=langs,
            basis=self.basis.to(dev, dtype),
            means=torch.stack([r.mean for r in readouts]).to(dev, dtype),
            stds=torch.stack([r.std for r in readouts]).to(dev, dtype),
            weights=torch.stack([r.weight for r in readouts]).to(dev, dtype),
            biases=torch.tensor([r.bias for r in readouts], dtype=torch.float64).to(dev, dtype),
            thresholds=torch.tensor(thresholds, dtype=torch.float32, device=dev),
            direction=self.direction.to(dev, torch.float32),
            alpha=None if self.alpha is None else self.alpha.alpha,
        )
        self._routing_cache[key] = tensors
        return tensors

    def _prepare(self, acts: torch.Tensor | np.ndarray, check_finite: bool) -> torch.Tensor:
        x = torch.as_tensor(acts)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise DataError(f"acts must have shape [n, {self.d}], got {tuple(x.shape)}")
        if check_finite and x.is_floating_point() and not all_finite(x):
            raise DataError("acts contain NaN or infinite values")
        return x

    def score(
        self,
        acts: torch.Tensor | np.ndarray,
        languages: Sequence[str | None] | str | None,
        *,
        check_finite: bool = True,
    ) -> torch.Tensor:
        """Gate logits float32 [n] for acts [n, d] on acts' device; languages per row (or one
        code / None for all rows). Unknown or None languages use the source readout."""
        x = self._prepare(acts, check_finite)
        rt = self.routing_tensors(x.device)
        return rt.score(x, rt.index(languages, x.shape[0]))

    def decide(
        self,
        acts: torch.Tensor | np.ndarray,
        languages: Sequence[str | None] | str | None,
        *,
        check_finite: bool = True,
    ) -> GateDecision:
        """Scores, decisions (`fires`) and the threshold used per row for acts [n, d]."""
        x = self._prepare(acts, check_finite)
        rt = self.routing_tensors(x.device)
        codes = _broadcast_languages(languages, x.shape[0])
        idx = rt.index(codes, x.shape[0])
        scores, fired, thresholds = rt.decide(x, idx)
        sources = [CALIBRATED if k > 0 else SOURCE for k in idx.tolist()]
        return GateDecision(scores, fired, thresholds, sources, codes)

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        from babelgate.bundle import save_gate

        return save_gate(self, directory)

    @classmethod
    def load(cls, directory: str | Path, expected_fingerprint: str | None = None) -> Gate:
        from babelgate.bundle import load_gate

        return load_gate(directory, expected_fingerprint=expected_fingerprint)


def sample_budget(
    harmful_pool: torch.Tensor | np.ndarray,
    harmless_pool: torch.Tensor | np.ndarray,
    budget: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `budget` rows per class without replacement (paper §1.4: one CPU generator, a
    permutation of the harmful pool first, then of the harmless pool).

    Returns (harmful [b, d], harmless [b, d], harmful indices [b], harmless indices [b]).
    Raises DataError if the budget is < 1 or larger than either pool.
    """
    pos = as_acts(harmful_pool, "harmful_pool")
    neg = as_acts(harmless_pool, "harmless_pool")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise DataError(f"budget must be an integer >= 1, got {budget!r}")
    if budget > pos.shape[0] or budget > neg.shape[0]:
        raise DataError(
            f"budget {budget} per class is larger than the examples given "
            f"({pos.shape[0]} harmful, {neg.shape[0]} harmless)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    idx_pos = torch.randperm(pos.shape[0], generator=gen)[:budget]
    idx_neg = torch.randperm(neg.shape[0], generator=gen)[:budget]
    return pos[idx_pos], neg[idx_neg], idx_pos, idx_neg
