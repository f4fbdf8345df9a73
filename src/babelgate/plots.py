"""Report figures, drawn from the run directory's JSON documents only.

Matplotlib's object API on an Agg canvas (no pyplot global state, safe in threads); each
function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from babelgate.io import atomic_path

TIER_LABELS = {"high": "High", "mid": "Medium", "low": "Low"}
_HARMFUL, _HARMLESS = "#c0392b", "#2e86c1"


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return target


def plot_tier_refusal(
    tiers: Sequence[Mapping[str, Any]],
    reference: Mapping[str, tuple[float, float]],
    path: str | Path,
    title: str,
) -> Path:
    """Harmful vs harmless refusal % per tier (bars, with 95 % intervals when present), the
    paper's values as markers. `tiers`: TierMetrics dicts (without the "all" row)."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    names = [t["tier"] for t in tiers]
    x = np.arange(len(names))
    width = 0.38
    for offset, key, color, label in (
        (-width / 2, "harmful", _HARMFUL, "harmful (ours)"),
        (width / 2, "harmless", _HARMLESS, "harmless (ours)"),
    ):
        values = [t.get(f"{key}_refusal_pct") or 0.0 for t in tiers]
        errs = []
        for t, v in zip(tiers, values, strict=True):
            ci = t.get(f"{key}_ci")
            errs.append((v - ci["low"], ci["high"] - v) if ci else (0.0, 0.0))
        yerr = np.array(errs).T if errs else None
        ax.bar(x + offset, values, width, color=color, label=label, yerr=yerr, capsize=3)
        ref = [reference.get(n, (np.nan, np.nan))[0 if key == "harmful" else 1] for n in names]
        ax.scatter(
            x + offset,
            ref,
            marker="D",
            color="black",
            zorder=3,
            s=22,
            label="paper" if key == "harmful" else None,
        )
    ax.set_xticks(x, [TIER_LABELS.get(n, n) for n in names])
    ax.set_ylabel("refusal %")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_representation_vs_action(
    points: Sequence[Mapping[str, Any]], path: str | Path, layer: int
) -> Path:
    """Per language: AUC of the v̂ projection (x) vs the base model's harmful refusal % (y)."""
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    colors = {"high": "#1e8449", "mid": "#d68910", "low": "#c0392b"}
    for tier in ("high", "mid", "low", None):
        sel = [p for p in points if p.get("tier") == tier and p.get("auc") is not None]
        if not sel:
            continue
        ax.scatter(
            [p["auc"] for p in sel],
            [p["harmful_refusal_pct"] for p in sel],
            color=colors.get(tier or "", "grey"),
            label=TIER_LABELS.get(tier or "", "other"),
            s=30,
        )
        for p in sel:
            ax.annotate(
                p["language"],
                (p["auc"], p["harmful_refusal_pct"]),
                fontsize=7,
                xytext=(3, 2),
                textcoords="offset points",
            )
    ax.set_xlabel(f"AUC of x·v̂ at layer {layer} (representation)")
    ax.set_ylabel("base harmful refusal % (action)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(min([0.5, *[p["auc"] for p in points if p.get("auc") is not None]]) - 0.02, 1.01)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Representation vs action per language", fontsize=10)
    return _save(fig, path)


def plot_heatmap(
    matrix: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    title: str,
    *,
    vmin: float = -100.0,
    vmax: float = 100.0,
    cmap: str = "RdYlGn",
) -> Path:
    """A rows × cols heatmap with the value written in each cell (blank where None)."""
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig = Figure(figsize=(1.0 + 0.9 * len(cols), 0.9 + 0.32 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_budget_curves(
    curves: Mapping[str, Mapping[int, tuple[float, float]]],
    path: str | Path,
    metric: str,
) -> Path:
    """Mean ± sd of `metric` against the per-class budget, one line per series."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for name, points in curves.items():
        budgets = sorted(points)
        means = [points[b][0] for b in budgets]
        sds = [points[b][1] for b in budgets]
        ax.errorbar(budgets, means, yerr=sds, marker="o", capsize=3, label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("examples per class (b)")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} vs budget (test split)", fontsize=10)
    return _save(fig, path)


def plot_bars(
    values: Mapping[str, float | None],
    path: str | Path,
    ylabel: str,
    title: str,
    *,
    ymax: float | None = 100.0,
) -> Path:
    """One bar per key (missing values are skipped)."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    names = [k for k, v in values.items() if v is not None]
    heights = [float(values[k]) for k in names]  # type: ignore[arg-type]
    bars = ax.bar(range(len(names)), heights, color="#5d6d7e")
    for bar, height in zip(bars, heights, strict=True):
        ax.annotate(
            f"{height:.1f}",
            (bar.get_x() + bar.get_width() / 2, height),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if ymax is not None:
        ax.set_ylim(0, ymax * 1.08)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
