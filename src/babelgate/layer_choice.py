"""Data-driven choice of the gate / intervention layer.

The paper hard-coded one layer per model (Qwen2.5-7B 15 of 28, Gemma-2-9B 20 of 42,
Llama-3.1-8B 10 of 32; method-reference §4.4) and ships no selection code; its evidence was
an ablation sweep that needs generation and a judge. `choose_layer` replaces that with a
criterion that only needs activations and is cheap enough to run on every new model:

1. Candidate layers are those in the middle of the network: depth (layer + 1) / num_layers
   within `depth_window` (default 25–75 %). Early blocks mostly encode surface form and
   language, late blocks are committed to the output and steering there has little room to
   act; all three paper layers (34 %, 50 %, 57 % depth counted this way) lie inside.
2. At each candidate the pooled source direction v̂ is estimated on the source *train* rows
   and scored by the mean over source languages of the held-out (*test*) ROC AUC of the
   projection x·v̂ — the separability the gate and the steering both rely on.
3. The best layer wins; layers within `tol` of the best count as tied and the earliest tied
   layer is chosen, because held-out AUC saturates near 1 over many middle layers and an
   earlier layer leaves more of the network downstream of the intervention.

4. With `transfer_languages` (the pipeline passes every non-source language), the score is the
   mean of step 2's source AUC and the *transfer* AUC: a source-only gate fitted at that layer
   on the source train rows, scored on the transfer languages' **train** rows (the pool that
   calibration examples are drawn from; test rows are never read). Measured on
   Qwen2.5-Coder-0.5B with the built-in set, source separability alone picks layer 14 of 24,
   where the gate's AUC on am/km/si/sw/yo collapses to 0.38–0.68, while at layer 8 it is
   0.70–0.86 — high-resource separability does not imply cross-lingual transfer.

The per-layer record also carries held-out balanced accuracy (threshold chosen on the train
projections) and d′ (standardised mean gap) for inspection.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from babelgate.directions import as_acts, as_labels, as_languages, pooled_direction
from babelgate.errors import DataError
from babelgate.threshold import fires, select_threshold

Splits = Sequence[str] | Mapping[str, torch.Tensor | np.ndarray | Sequence[bool]]


def split_masks(splits: Splits, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train [n] bool, test [n] bool) from a per-row list of split names ("train", "test";
    others such as "val" are ignored) or from a mapping {"train": mask, "test": mask}."""
    if isinstance(splits, Mapping):
        masks = []
        for name in ("train", "test"):
            if name not in splits:
                raise DataError(f"splits mapping needs a {name!r} mask")
            mask = torch.as_tensor(np.asarray(splits[name])).reshape(-1)
            if mask.shape[0] != n:
                raise DataError(f"{name} mask has {mask.shape[0]} entries for {n} rows")
            masks.append(mask.to(torch.bool))
        train, test = masks
    else:
        if isinstance(splits, str):
            raise DataError("splits must give one split name per row, not a single string")
        names = list(splits)
        if len(names) != n:
            raise DataError(f"splits has {len(names)} entries for {n} rows")
        train = torch.tensor([s == "train" for s in names], dtype=torch.bool)
        test = torch.tensor([s == "test" for s in names], dtype=torch.bool)
    if bool((train & test).any()):
        raise DataError("some rows are marked both train and test")
    return train, test


def layer_ids(num_axis: int, layers: Sequence[int] | None) -> list[int]:
    """Model layer id of each slice along acts' layer axis (default 0..L-1)."""
    ids = list(range(num_axis)) if layers is None else [int(x) for x in layers]
    if len(ids) != num_axis:
        raise DataError(f"{len(ids)} layer ids for {num_axis} layers of activations")
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate layer ids {ids}")
    return ids


def safe_auc(labels: torch.Tensor, scores: torch.Tensor) -> float | None:
    """ROC AUC (harmful positive), or None when a class is missing."""
    y = labels.numpy().astype(bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, scores.numpy()))


def d_prime(labels: torch.Tensor, scores: torch.Tensor) -> float | None:
    """(mean harmful − mean harmless) / pooled sd of the scores, or None when undefined."""
    pos, neg = scores[labels].double(), scores[~labels].double()
    if pos.numel() < 2 or neg.numel() < 2:
        return None
    pooled = math.sqrt(0.5 * (float(pos.var()) + float(neg.var())))
    return None if pooled == 0 else (float(pos.mean()) - float(neg.mean())) / pooled


@dataclass(frozen=True)
class LayerChoice:
    """The chosen layer, the criterion score of every candidate layer and per-layer details."""

    layer: int
    scores: dict[int, float]
    criterion: str
    candidates: list[int]
    details: dict[int, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = {str(k): v for k, v in self.scores.items()}
        data["details"] = {str(k): v for k, v in self.details.items()}
        return data


def _layer_record(
    x: torch.Tensor,
    y: torch.Tensor,
    codes: list[str],
    train: torch.Tensor,
    test: torch.Tensor,
    sources: list[str],
) -> dict[str, Any]:
    source_set = set(sources)
    src = torch.tensor([c in source_set for c in codes], dtype=torch.bool)
    tr, te = src & train, src & test
    tr_codes = [c for c, k in zip(codes, tr.tolist(), strict=True) if k]
    v = pooled_direction(x[tr], y[tr], tr_codes, sources)
    proj = x @ v
    threshold = select_threshold(proj[tr], y[tr]).threshold
    aucs: dict[str, float | None] = {}
    bal: dict[str, float | None] = {}
    dps: dict[str, float | None] = {}
    for lang in sources:
        rows = te & torch.tensor([c == lang for c in codes], dtype=torch.bool)
        yl, pl = y[rows], proj[rows]
        aucs[lang] = safe_auc(yl, pl)
        dps[lang] = d_prime(yl, pl)
        if aucs[lang] is None:
            bal[lang] = None
        else:
            fired = fires(pl, threshold)
            tpr = float((fired & yl).sum()) / int(yl.sum())
            tnr = float((~fired & ~yl).sum()) / int((~yl).sum())
            bal[lang] = 0.5 * (tpr + tnr)

    def mean(values: dict[str, float | None]) -> float | None:
        kept = [v for v in values.values() if v is not None]
        return float(np.mean(kept)) if kept else None

    return {
        "mean_auc": mean(aucs),
        "mean_balanced_accuracy": mean(bal),
        "mean_d_prime": mean(dps),
        "auc": aucs,
        "balanced_accuracy": bal,
        "d_prime": dps,
    }


def _transfer_record(
    x: torch.Tensor,
    y: torch.Tensor,
    codes: list[str],
    train: torch.Tensor,
    sources: list[str],
    transfer: list[str],
    rank: int,
) -> dict[str, Any]:
    """AUC of a source-only gate (fit on source train rows) on each transfer language's train rows."""
    from babelgate.gate import Gate  # gate imports nothing from here; deferred to keep import light

    source_set = set(sources)
    src = train & torch.tensor([c in source_set for c in codes], dtype=torch.bool)
    src_codes = [c for c, k in zip(codes, src.tolist(), strict=True) if k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gate = Gate.fit(
            x[src],
            y[src],
            src_codes,
            layer=0,
            source_languages=sources,
            rank=min(rank, len(sources)),
        )
    aucs: dict[str, float | None] = {}
    for lang in transfer:
        rows = train & torch.tensor([c == lang for c in codes], dtype=torch.bool)
        aucs[lang] = safe_auc(y[rows], gate.score(x[rows], None)) if bool(rows.any()) else None
    kept = [v for v in aucs.values() if v is not None]
    return {"transfer_auc": aucs, "mean_transfer_auc": float(np.mean(kept)) if kept else None}


def choose_layer(
    acts: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    languages: Sequence[str],
    splits: Splits,
    source_languages: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    num_layers: int | None = None,
    depth_window: tuple[float, float] = (0.25, 0.75),
    tol: float = 1e-3,
    transfer_languages: Sequence[str] = (),
    rank: int = 10,
) -> LayerChoice:
    """Choose the layer for acts [n, L, d] (see the module docstring for the criterion).

    `layers` are the model layer ids of the L slices (default 0..L-1); `num_layers` is the
    model's block count (default max(layers) + 1). Source languages need harmful and harmless
    rows in both splits. If no slice lies inside the depth window, all slices are candidates
    and a warning says so.
    """
    x3 = as_acts(acts, ndim=3)
    n = x3.shape[0]
    y = as_labels(labels, n)
    codes = as_languages(languages, n)
    train, test = split_masks(splits, n)
    ids = layer_ids(x3.shape[1], layers)
    sources = list(dict.fromkeys(source_languages))
    if not sources:
        raise DataError("no source languages given")
    for lang in sources:
        rows = torch.tensor([c == lang for c in codes], dtype=torch.bool)
        for name, mask in (("train", train), ("test", test)):
            sel = rows & mask
            if int((sel & y).sum()) == 0 or int((sel & ~y).sum()) == 0:
                raise DataError(f"source language {lang!r} needs harmful and harmless {name} rows")
    total = num_layers if num_layers is not None else max(ids) + 1
    low, high = depth_window
    inside = [i for i, layer in enumerate(ids) if low <= (layer + 1) / total <= high]
    if not inside:
        warnings.warn(
            f"no captured layer lies within {low:.0%}–{high:.0%} depth of {total} layers; "
            "considering all captured layers",
            UserWarning,
            stacklevel=2,
        )
        inside = list(range(len(ids)))
    details: dict[int, dict[str, Any]] = {}
    scores: dict[int, float] = {}
    transfer = [t for t in dict.fromkeys(transfer_languages) if t not in set(sources)]
    for i in inside:
        record = _layer_record(x3[:, i, :], y, codes, train, test, sources)
        score = float(record["mean_auc"]) if record["mean_auc"] is not None else float("nan")
        if transfer:
            record.update(_transfer_record(x3[:, i, :], y, codes, train, sources, transfer, rank))
            if record["mean_transfer_auc"] is not None:
                score = 0.5 * (score + float(record["mean_transfer_auc"]))
        details[ids[i]] = record
        scores[ids[i]] = score
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not finite:
        raise DataError("no candidate layer has a defined held-out AUC")
    best = max(finite.values())
    chosen = min(k for k, v in finite.items() if v >= best - tol)
    criterion = (
        f"mean held-out AUC of the pooled source direction over source languages "
        f"{sources}, layers at {low:.0%}-{high:.0%} depth of {total}; ties within {tol} -> earliest"
    )
    if transfer:
        criterion += f"; averaged with the source-only gate's AUC on the train rows of {transfer}"
    return LayerChoice(
        layer=chosen,
        scores=scores,
        criterion=criterion,
        candidates=[ids[i] for i in inside],
        details=details,
    )
