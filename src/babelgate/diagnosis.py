"""Representation vs action diagnosis on activation tensors (method-reference §8.4, §9).

`diagnose` answers, per language and layer: does the pooled source direction still separate
harmful from harmless (test AUC of x·v̂ and of the source-only gate's logits), and does the
source threshold act on that knowledge (balanced accuracy / F1 at b = 0) or does it need
few-shot recalibration (b ∈ budgets, both calibration modes, mean ± sd over seeded draws)?
It also summarises the projection distributions per resource tier. Plots use matplotlib's
Agg canvas directly (no pyplot state) and are written atomically.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from babelgate.directions import as_acts, as_labels, as_languages, pooled_direction
from babelgate.errors import DataError
from babelgate.gate import MODES, Gate, sample_budget
from babelgate.io import atomic_path, stable_seed, write_json_atomic
from babelgate.layer_choice import Splits, choose_layer, layer_ids, safe_auc, split_masks

DEFAULT_BUDGETS: tuple[int, ...] = (0, 1, 2, 4, 8)
TIER_ORDER = ("high", "mid", "low")


@dataclass
class DiagnosisResult:
    """Everything `diagnose` measured. AUC maps are language -> layer -> AUC (None when the
    language's test rows lack a class, or the gate could not be fitted at that layer).

    `budget_curves` rows: language, tier, mode, budget, n_draws, balanced_accuracy_mean/sd,
    f1_mean/sd, n_fallback (draws whose calibration kept the source threshold).
    `projection_histograms`: tier -> "harmful"/"harmless" -> {edges, counts, n, mean, sd,
    median} of the test projections x·v̂ at `budget_layer`.
    """

    layers: list[int]
    languages: list[str]
    source_languages: list[str]
    tiers: dict[str, str]
    auc_projection: dict[str, dict[int, float | None]]
    auc_gate: dict[str, dict[int, float | None]]
    budget_layer: int
    budgets: list[int]
    n_draws: int
    budget_curves: list[dict[str, Any]]
    projection_histograms: dict[str, dict[str, dict[str, Any]]]
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("auc_projection", "auc_gate"):
            data[key] = {
                lang: {str(layer): v for layer, v in row.items()} for lang, row in data[key].items()
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiagnosisResult:
        """Inverse of `to_dict` (layer keys back to ints), e.g. to re-plot a saved diagnosis."""
        fields = dict(data)
        for key in ("auc_projection", "auc_gate"):
            fields[key] = {
                lang: {int(layer): v for layer, v in row.items()} for lang, row in data[key].items()
            }
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write diagnosis.json and the three plots into `directory`; returns their paths."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": root / "diagnosis.json",
            "auc_heatmap": root / "auc_heatmap.png",
            "projection_histograms": root / "projection_histograms.png",
            "budget_curves": root / "budget_curves.png",
        }
        write_json_atomic(paths["json"], self.to_dict())
        plot_auc_heatmap(self, paths["auc_heatmap"])
        plot_projection_histograms(self, paths["projection_histograms"])
        plot_budget_curves(self, paths["budget_curves"])
        return paths


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _metrics(labels: torch.Tensor, fired: torch.Tensor) -> tuple[float, float]:
    """(balanced accuracy, F1 of the harmful class; 0 when nothing is predicted or present)."""
    y, p = labels.numpy().astype(bool), fired.cpu().numpy().astype(bool)
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    tpr = tp / max(tp + fn, 1)
    tnr = tn / max(tn + fp, 1)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return 0.5 * (tpr + tnr), f1


def _histograms(
    proj: torch.Tensor, labels: torch.Tensor, tiers_of_rows: list[str], bins: int = 40
) -> dict[str, dict[str, dict[str, Any]]]:
    values = proj.double().numpy()
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    tier_arr = np.asarray(tiers_of_rows)
    y = labels.numpy().astype(bool)
    present = [t for t in TIER_ORDER if t in set(tiers_of_rows)]
    present += sorted(set(tiers_of_rows) - set(present))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for tier in present:
        out[tier] = {}
        for name, cls in (("harmful", True), ("harmless", False)):
            sel = values[(tier_arr == tier) & (y == cls)]
            if sel.size == 0:
                continue
            counts, _ = np.histogram(sel, bins=edges)
            out[tier][name] = {
                "edges": [float(e) for e in edges],
                "counts": [int(c) for c in counts],
                "n": int(sel.size),
                "mean": float(sel.mean()),
                "sd": float(sel.std()),
                "median": float(np.median(sel)),
            }
    return out


def diagnose(
    acts: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    languages: Sequence[str],
    splits: Splits,
    source_languages: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    tiers: Mapping[str, str] | None = None,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    n_draws: int = 10,
    modes: Sequence[str] = MODES,
    budget_layer: int | None = None,
    num_layers: int | None = None,
    rank: int = 10,
    C: float = 1.0,
    seed: int = 0,
    objective: str = "balanced_f1",
) -> DiagnosisResult:
    """Diagnose acts [n, L, d] (labels [n], languages [n], splits per row or masks).

    Directions and gates are fitted on source-language train rows; everything is scored on
    test rows. Budgeted recalibration draws b harmful + b harmless train rows of the language
    (seed `stable_seed(seed, lang, b, rank, draw, "diagnosis-draw")`) and is evaluated on its
    test rows; it runs at `budget_layer` only (default: `choose_layer`), since one refit per
    language × budget × draw × mode at every layer would be needlessly slow. Budgets larger
    than a language's train pool are skipped with a note. `tiers` maps language -> tier
    (missing -> "unknown").
    """
    x3 = as_acts(acts, ndim=3)
    n = x3.shape[0]
    y = as_labels(labels, n)
    codes = as_languages(languages, n)
    train, test = split_masks(splits, n)
    ids = layer_ids(x3.shape[1], layers)
    sources = list(dict.fromkeys(source_languages))
    if n_draws < 1:
        raise DataError(f"n_draws must be >= 1, got {n_draws}")
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes:
        raise DataError(f"unknown calibration modes {bad_modes}; choose from {MODES}")
    budget_list = sorted({int(b) for b in budgets})
    if not budget_list or budget_list[0] < 0:
        raise DataError(f"budgets must be integers >= 0, got {list(budgets)}")
    tier_map = {lang: (tiers or {}).get(lang, "unknown") for lang in dict.fromkeys(codes)}
    langs = list(dict.fromkeys(codes))
    notes: list[str] = []
    lang_rows = {lang: torch.tensor([c == lang for c in codes], dtype=torch.bool) for lang in langs}
    source_set = set(sources)
    src_train = train & torch.tensor([c in source_set for c in codes], dtype=torch.bool)
    train_codes = [c for c, k in zip(codes, train.tolist(), strict=True) if k]
    src_codes = [c for c, k in zip(codes, src_train.tolist(), strict=True) if k]

    if budget_layer is None:
        budget_layer = choose_layer(
            x3,
            y,
            codes,
            {"train": train, "test": test},
            sources,
            ids,
            num_layers=num_layers,
            transfer_languages=[lang for lang in langs if lang not in source_set],
            rank=rank,
        ).layer
    if budget_layer not in ids:
        raise DataError(f"budget_layer {budget_layer} is not among the captured layers {ids}")

    auc_proj: dict[str, dict[int, float | None]] = {lang: {} for lang in langs}
    auc_gate: dict[str, dict[int, float | None]] = {lang: {} for lang in langs}
    gates: dict[int, Gate] = {}
    projections: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(ids):
        x = x3[:, i, :]
        v = pooled_direction(x[src_train], y[src_train], src_codes, sources)
        projections[layer] = x @ v
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                gates[layer] = Gate.fit(
                    x[train],
                    y[train],
                    train_codes,
                    layer=layer,
                    source_languages=sources,
                    rank=rank,
                    C=C,
                    seed=seed,
                    objective=objective,
                )
            logits = gates[layer].score(x, None)
        except DataError as exc:
            notes.append(f"layer {layer}: source-only gate not fitted ({exc})")
            logits = None
        for lang in langs:
            rows = lang_rows[lang] & test
            auc_proj[lang][layer] = safe_auc(y[rows], projections[layer][rows])
            auc_gate[lang][layer] = None if logits is None else safe_auc(y[rows], logits[rows])

    curves: list[dict[str, Any]] = []
    gate = gates.get(budget_layer)
    if gate is None:
        notes.append(f"no budget curves: the gate could not be fitted at layer {budget_layer}")
    else:
        x = x3[:, ids.index(budget_layer), :]
        for lang in langs:
            curves.extend(
                _budget_rows(
                    gate,
                    x,
                    y,
                    lang,
                    lang_rows[lang],
                    train,
                    test,
                    tier_map[lang],
                    budget_list,
                    modes,
                    n_draws,
                    seed,
                    notes,
                )
            )

    test_rows = test.nonzero().reshape(-1)
    hist = _histograms(
        projections[budget_layer][test_rows],
        y[test_rows],
        [tier_map[codes[int(k)]] for k in test_rows],
    )
    return DiagnosisResult(
        layers=ids,
        languages=langs,
        source_languages=sources,
        tiers=tier_map,
        auc_projection=auc_proj,
        auc_gate=auc_gate,
        budget_layer=int(budget_layer),
        budgets=budget_list,
        n_draws=n_draws,
        budget_curves=curves,
        projection_histograms=hist,
        config={"rank": rank, "C": C, "seed": seed, "objective": objective, "modes": list(modes)},
        notes=notes,
    )


def _budget_rows(
    gate: Gate,
    x: torch.Tensor,
    y: torch.Tensor,
    lang: str,
    rows: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    tier: str,
    budgets: list[int],
    modes: Sequence[str],
    n_draws: int,
    seed: int,
    notes: list[str],
) -> list[dict[str, Any]]:
    te = rows & test
    y_te = y[te]
    if safe_auc(y_te, y_te.float()) is None:
        notes.append(f"{lang}: no budget curve (test rows lack a class)")
        return []
    pool_pos, pool_neg = x[rows & train & y], x[rows & train & ~y]
    out: list[dict[str, Any]] = []
    for b in budgets:
        if b > 0 and (b > pool_pos.shape[0] or b > pool_neg.shape[0]):
            notes.append(
                f"{lang}: budget {b} skipped ({pool_pos.shape[0]} harmful, "
                f"{pool_neg.shape[0]} harmless train rows)"
            )
            continue
        for mode in modes:
            bal, f1s, fallbacks = [], [], 0
            for draw in range(1 if b == 0 else n_draws):
                if b == 0:
                    calibrated = gate
                else:
                    draw_seed = stable_seed(seed, lang, b, gate.rank, draw, "diagnosis-draw")
                    pos, neg, _, _ = sample_budget(pool_pos, pool_neg, b, draw_seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        calibrated = gate.calibrate(lang, pos, neg, mode=mode)
                    fallbacks += calibrated.calibrations[lang].status != "calibrated"
                decision = calibrated.decide(x[te], lang)
                ba, f1 = _metrics(y_te, decision.fired)
                bal.append(ba)
                f1s.append(f1)
            bal_mean, bal_sd = _mean_sd(bal)
            f1_mean, f1_sd = _mean_sd(f1s)
            out.append(
                {
                    "language": lang,
                    "tier": tier,
                    "mode": mode,
                    "budget": b,
                    "n_draws": len(bal),
                    "balanced_accuracy_mean": bal_mean,
                    "balanced_accuracy_sd": bal_sd,
                    "f1_mean": f1_mean,
                    "f1_sd": f1_sd,
                    "n_fallback": fallbacks,
                }
            )
    return out


# --------------------------------------------------------------------------- plots
def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return Path(path)


def _ordered_languages(result: DiagnosisResult) -> list[str]:
    rank = {t: i for i, t in enumerate(TIER_ORDER)}
    order = {lang: i for i, lang in enumerate(result.languages)}
    return sorted(
        result.languages, key=lambda lang: (rank.get(result.tiers[lang], 99), order[lang])
    )


def plot_auc_heatmap(result: DiagnosisResult, path: str | Path) -> Path:
    """Test AUC heatmaps, language × layer: projection on v̂ (left) and source-only gate (right)."""
    langs = _ordered_languages(result)
    fig = Figure(figsize=(3.0 + 1.2 * len(result.layers), 1.4 + 0.32 * len(langs)))
    axes = fig.subplots(1, 2, squeeze=False, sharey=True)[0]
    image = None
    panels = (
        ("auc_projection", "test AUC, projection x·v̂"),
        ("auc_gate", "test AUC, gate (b = 0)"),
    )
    for col, (ax, (key, title)) in enumerate(zip(axes, panels, strict=True)):
        table = getattr(result, key)
        grid = np.array(
            [
                [np.nan if table[lang][k] is None else table[lang][k] for k in result.layers]
                for lang in langs
            ],
            dtype=np.float64,
        )
        image = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(result.layers)), [str(k) for k in result.layers])
        if col == 0:
            ax.set_yticks(range(len(langs)), [f"{lang} ({result.tiers[lang]})" for lang in langs])
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        if grid.size <= 400:
            for (r, c), value in np.ndenumerate(grid):
                if math.isfinite(value):
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w")
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    return _save(fig, path)


def plot_projection_histograms(result: DiagnosisResult, path: str | Path) -> Path:
    """Histograms of test projections x·v̂ per tier, harmful vs harmless, at the budget layer."""
    tiers = list(result.projection_histograms)
    fig = Figure(figsize=(4.0 * max(len(tiers), 1), 3.0))
    axes = fig.subplots(1, max(len(tiers), 1), squeeze=False)[0]
    for ax, tier in zip(axes, tiers, strict=False):
        for name, color in (("harmful", "tab:red"), ("harmless", "tab:blue")):
            hist = result.projection_histograms[tier].get(name)
            if hist is None:
                continue
            edges = np.asarray(hist["edges"])
            counts = np.asarray(hist["counts"], dtype=np.float64)
            density = counts / max(counts.sum(), 1.0)
            ax.stairs(
                density, edges, color=color, fill=True, alpha=0.4, label=f"{name} (n={hist['n']})"
            )
        ax.set_title(f"{tier} tier, layer {result.budget_layer}")
        ax.set_xlabel("projection x·v̂")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_budget_curves(result: DiagnosisResult, path: str | Path) -> Path:
    """Balanced accuracy and F1 vs budget, tier means (error bars: mean sd over draws)."""
    fig = Figure(figsize=(10.0, 3.6))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    tiers = [t for t in TIER_ORDER if t in set(result.tiers.values())]
    tiers += sorted(set(result.tiers.values()) - set(tiers))
    modes = list(dict.fromkeys(row["mode"] for row in result.budget_curves))
    for ax, metric in zip(axes, ("balanced_accuracy", "f1"), strict=True):
        for tier in tiers:
            for mode in modes:
                xs, ys, es = [], [], []
                for b in result.budgets:
                    rows = [
                        r
                        for r in result.budget_curves
                        if r["tier"] == tier and r["mode"] == mode and r["budget"] == b
                    ]
                    if rows:
                        xs.append(b)
                        ys.append(float(np.mean([r[f"{metric}_mean"] for r in rows])))
                        es.append(float(np.mean([r[f"{metric}_sd"] for r in rows])))
                if xs:
                    style = "-" if mode == "refit" else "--"
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        linestyle=style,
                        marker="o",
                        capsize=2,
                        label=f"{tier} / {mode}",
                    )
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(result.budgets, [str(b) for b in result.budgets])
        ax.set_xlabel("examples per class (b)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{metric.replace('_', ' ')} vs budget (layer {result.budget_layer})")
        ax.legend(fontsize=7)
    return _save(fig, path)
