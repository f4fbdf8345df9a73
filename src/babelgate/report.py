"""The run report (Markdown + self-contained HTML), rebuilt from the run directory's JSON alone.

Reads `config.json`, `metrics.json` and, when present, `utility.json`, `calibration.json`,
`layer_choice.json`, `timings.json` and `diagnosis/diagnosis.json`; writes the figures to
`plots/`, then `report.md` (figures linked) and `report.html` (figures embedded as base64 PNG).
Every result table carries the example budget of the method it shows, and the paper's
reference numbers stand beside ours.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelgate import plots
from babelgate.errors import ArtifactError
from babelgate.io import write_text_atomic

# The paper's numbers (method-reference §9): base refusal % by tier (harmful, harmless),
# averaged over three 7–9B models, and mean low-resource selectivity.
PAPER_TIER_REFUSAL: dict[str, tuple[float, float]] = {
    "high": (87.9, 1.1),
    "mid": (78.9, 1.7),
    "low": (43.9, 9.8),
}
PAPER_LRL_SELECTIVITY = {"best_adapted_baseline": 33.6, "method": 54.5}
BASELINES = ("ablation", "addition", "cast", "adasteer")
TIERS = ("high", "mid", "low")


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)


def _read(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise ArtifactError(f"{path} is missing; is this a babelgate run directory?")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable or not JSON ({exc})") from exc


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(cell: Mapping[str, Any] | None) -> str:
    return "" if not cell else f" [{cell['low']:.0f}, {cell['high']:.0f}]"


def budget_text(description: Mapping[str, Any] | None) -> str:
    """A one-line summary of a method's example budget from its `describe()`."""
    if not description:
        return "0 examples"
    gate = description.get("gate")
    if isinstance(gate, Mapping):
        budget = gate.get("budget", {})
        per_lang = budget.get("per_language_per_class") or {}
        values = sorted(set(per_lang.values()))
        target = (
            f"{'/'.join(map(str, values))} per class × {len(per_lang)} target languages"
            if per_lang
            else "0 target examples"
        )
        return f"{budget.get('source_rows', '?')} source train rows + {target}"
    budget = description.get("budget")
    if not budget or budget == {"examples": 0}:
        return "0 examples"
    if isinstance(budget, Mapping):
        if budget.get("from") == "gate":
            rows = budget.get("source_rows")
            return f"gate direction ({rows} source train rows)" if rows else "gate direction/α"
        parts = [f"{k} {v}" for k, v in budget.items() if not isinstance(v, Mapping | list)]
        return ", ".join(parts) if parts else json.dumps(budget)
    return str(budget)


def _tier_rows(method: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {t["tier"]: t for t in method["refusal"]["tiers"]}


def _lang_rows(method: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {m["language"]: m for m in method["refusal"]["languages"]}


def _best_gate(names: Sequence[str]) -> str | None:
    gates = [n for n in names if n.startswith("gate_b") and n[6:].isdigit()]
    return max(gates, key=lambda n: int(n[6:])) if gates else None


def _diag_layer_auc(diag: Mapping[str, Any] | None, layer: int) -> dict[str, float | None]:
    if not diag:
        return {}
    return {lang: row.get(str(layer)) for lang, row in diag.get("auc_projection", {}).items()}


def build_sections(run_dir: Path, plot_dir: Path) -> list[Section]:
    config = _read(run_dir / "config.json")
    metrics = _read(run_dir / "metrics.json")
    utility = _read(run_dir / "utility.json", required=False)
    calibration = _read(run_dir / "calibration.json", required=False)
    timings = _read(run_dir / "timings.json", required=False)
    diag = _read(run_dir / "diagnosis" / "diagnosis.json", required=False)
    methods: dict[str, Any] = metrics.get("methods", {})
    if not methods:
        raise ArtifactError(f"{run_dir / 'metrics.json'} has no methods")
    names = list(methods)
    languages: list[str] = metrics.get("languages", [])
    tiers: dict[str, str | None] = metrics.get("tiers", {})
    layer = config.get("layer")
    sections: list[Section] = []

    # ------------------------------------------------------------------ overview
    model = config.get("model", {})
    overview = Section("Run")
    alpha = (config.get("alpha") or {}).get("alpha")
    overview.tables.append(
        (
            ["setting", "value"],
            [
                [
                    "model",
                    f"{model.get('name', metrics.get('model'))} ({model.get('architecture', '?')}, "
                    f"{model.get('n_layers', '?')} blocks)",
                ],
                ["model fingerprint", str(metrics.get("model_fingerprint", "?"))[:16]],
                ["layer", f"{layer} ({config.get('layer_source', '?')})"],
                ["rank", str(config.get("rank", "?"))],
                ["α", _fmt(alpha, 3)],
                ["source languages", ", ".join(config.get("source_languages", []))],
                ["target languages", ", ".join(config.get("target_languages", []))],
                ["judge", str(metrics.get("judge"))],
                ["max new tokens", str(config.get("generation", {}).get("max_new_tokens"))],
                [
                    "evaluation prompts",
                    f"{config.get('data', {}).get('n_prompts')} (test split; digest "
                    f"{str(config.get('data', {}).get('digest', ''))[:12]})",
                ],
                ["seed", str(config.get("seed", config.get("metrics", {}).get("seed")))],
                ["library version", str(config.get("library_version"))],
            ],
        )
    )
    if timings:
        secs = timings.get("seconds", {})
        overview.paragraphs.append(
            "Wall time per step (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in secs.items() if isinstance(v, int | float))
        )
    sections.append(overview)

    # ------------------------------------------------------------------ headline
    head = Section("Headline: ours beside the paper")
    base = methods.get("none")
    rows: list[list[str]] = []
    if base is not None:
        base_tiers = _tier_rows(base)
        for tier in TIERS:
            if tier in base_tiers:
                t = base_tiers[tier]
                ref = PAPER_TIER_REFUSAL[tier]
                rows.append(
                    [
                        f"base refusal, {tier} tier (harmful / harmless %)",
                        f"{_fmt(t['harmful_refusal_pct'])} / {_fmt(t['harmless_refusal_pct'])}",
                        f"{ref[0]} / {ref[1]}",
                    ]
                )
    low_sel = {n: _tier_rows(m).get("low", {}).get("selectivity") for n, m in methods.items()}
    baseline_sel = {n: v for n, v in low_sel.items() if n in BASELINES and v is not None}
    best_gate = _best_gate(names)
    if baseline_sel:
        best = max(baseline_sel, key=lambda n: baseline_sel[n] or 0.0)
        rows.append(
            [
                f"mean low-tier selectivity, best baseline ({best})",
                _fmt(baseline_sel[best]),
                str(PAPER_LRL_SELECTIVITY["best_adapted_baseline"]),
            ]
        )
    if best_gate and low_sel.get(best_gate) is not None:
        rows.append(
            [
                f"mean low-tier selectivity, method ({best_gate})",
                _fmt(low_sel[best_gate]),
                str(PAPER_LRL_SELECTIVITY["method"]),
            ]
        )
    if "none" in low_sel and low_sel["none"] is not None:
        rows.append(["mean low-tier selectivity, base model", _fmt(low_sel["none"]), "≈34.1"])
    head.tables.append((["quantity", "this run", "paper"], rows))
    head.paragraphs.append(
        "Paper: three 7–9B chat models, 23 languages, 572 harmful + 500 harmless test prompts per "
        "language, GPT-4o-mini judge. This run: the model, languages, prompt counts and judge "
        "listed above; the low tier is every low-resource language in this run's data. "
        "Selectivity = harmful refusal % − harmless refusal % (percentage points)."
    )
    sections.append(head)

    # ------------------------------------------------------------------ motivating figure
    if base is not None:
        sec = Section("Refusal by resource tier, base model")
        tier_list = [t for t in base["refusal"]["tiers"] if t["tier"] in TIERS]
        sec.images.append(
            (
                "refusal by tier",
                plots.plot_tier_refusal(
                    tier_list,
                    PAPER_TIER_REFUSAL,
                    plot_dir / "refusal_by_tier.png",
                    "Base model refusal by tier (bars: this run, ◆: paper)",
                ),
            )
        )
        sec.tables.append(
            (
                [
                    "tier",
                    "languages",
                    "harmful refusal % [95% CI]",
                    "harmless refusal % [95% CI]",
                    "selectivity",
                    "paper harmful / harmless",
                ],
                [
                    [
                        t["tier"],
                        " ".join(t["languages"]),
                        _fmt(t["harmful_refusal_pct"]) + _ci(t.get("harmful_ci")),
                        _fmt(t["harmless_refusal_pct"]) + _ci(t.get("harmless_ci")),
                        _fmt(t["selectivity"]),
                        "{} / {}".format(*PAPER_TIER_REFUSAL[t["tier"]])
                        if t["tier"] in PAPER_TIER_REFUSAL
                        else "–",
                    ]
                    for t in base["refusal"]["tiers"]
                ],
            )
        )
        sections.append(sec)

        # -------------------------------------------------------------- representation vs action
        aucs = _diag_layer_auc(diag, layer) if layer is not None else {}
        if aucs:
            sec = Section("Representation vs action per language")
            base_langs = _lang_rows(base)
            points = [
                {
                    "language": lang,
                    "tier": tiers.get(lang),
                    "auc": aucs.get(lang),
                    "harmful_refusal_pct": base_langs[lang]["harmful_refusal_pct"],
                }
                for lang in languages
                if lang in base_langs
            ]
            sec.images.append(
                (
                    "representation vs action",
                    plots.plot_representation_vs_action(
                        points, plot_dir / "representation_vs_action.png", layer
                    ),
                )
            )
            sec.paragraphs.append(
                "x: test ROC AUC of the pooled source direction's projection (does the model "
                "know the prompt is harmful?); y: the base model's harmful refusal % (does it "
                "act on it?). High AUC with low refusal is the paper's finding: an action "
                "failure, not a representation failure."
            )
            sec.tables.append(
                (
                    ["language", "tier", "AUC (x·v̂)", "base harmful refusal %"],
                    [
                        [
                            p["language"],
                            str(p["tier"]),
                            _fmt(p["auc"], 3),
                            _fmt(p["harmful_refusal_pct"]),
                        ]
                        for p in points
                    ],
                )
            )
            sections.append(sec)

    # ------------------------------------------------------------------ per method
    sec = Section("Refusal and selectivity per method")
    table_rows = []
    for name, m in methods.items():
        t = _tier_rows(m)
        cells = [name, budget_text(m.get("description"))]
        for tier in (*TIERS, "all"):
            row = t.get(tier)
            cells.append(
                "–"
                if row is None
                else f"{_fmt(row['harmful_refusal_pct'])} / {_fmt(row['harmless_refusal_pct'])} "
                f"/ {_fmt(row['selectivity'])}"
            )
        table_rows.append(cells)
    sec.tables.append(
        (
            ["method", "budget", "high (harmful / harmless / sel.)", "mid", "low", "all languages"],
            table_rows,
        )
    )
    matrix = [
        [_lang_rows(methods[n]).get(lang, {}).get("selectivity") for n in names]
        for lang in languages
    ]
    sec.images.append(
        (
            "selectivity heatmap",
            plots.plot_heatmap(
                matrix,
                [f"{lang} ({tiers.get(lang) or '?'})" for lang in languages],
                names,
                plot_dir / "selectivity_heatmap.png",
                "Refusal selectivity (harmful % − harmless %)",
            ),
        )
    )
    lang_rows = []
    for lang in languages:
        cells = [lang, str(tiers.get(lang))]
        for n in names:
            row = _lang_rows(methods[n]).get(lang)
            cells.append(
                "–"
                if row is None
                else f"{_fmt(row['harmful_refusal_pct'], 0)} / {_fmt(row['harmless_refusal_pct'], 0)}"
            )
        lang_rows.append(cells)
    n_per = (
        base["refusal"]["languages"][0]
        if base
        else next(iter(methods.values()))["refusal"]["languages"][0]
    )
    sec.paragraphs.append(
        f"Per-language harmful / harmless refusal % ({n_per['n_harmful']} harmful and "
        f"{n_per['n_harmless']} harmless test prompts per language; small samples: read the "
        "intervals in metrics.json)."
    )
    sec.tables.append((["language", "tier", *names], lang_rows))
    sections.append(sec)

    # ------------------------------------------------------------------ budget curves
    if diag and diag.get("budget_curves"):
        sec = Section("Gate F1 and balanced accuracy vs budget (diagnosis)")
        targets = set(config.get("target_languages", []))
        for metric in ("f1", "balanced_accuracy"):
            series: dict[str, dict[int, tuple[float, float]]] = {}
            for tier in TIERS:
                for mode in diag.get("config", {}).get("modes", ["refit"]):
                    sel = [
                        r
                        for r in diag["budget_curves"]
                        if r["tier"] == tier
                        and r["mode"] == mode
                        and r[f"{metric}_mean"] is not None
                    ]
                    if not sel:
                        continue
                    key = f"{tier} tier, {mode}"
                    for b in sorted({r["budget"] for r in sel}):
                        vals = [r[f"{metric}_mean"] for r in sel if r["budget"] == b]
                        sds = [r[f"{metric}_sd"] or 0.0 for r in sel if r["budget"] == b]
                        series.setdefault(key, {})[b] = (sum(vals) / len(vals), sum(sds) / len(sds))
            if series:
                sec.images.append(
                    (
                        f"{metric} vs budget",
                        plots.plot_budget_curves(
                            series, plot_dir / f"{metric}_vs_budget.png", metric
                        ),
                    )
                )
        rows = []
        for r in diag["budget_curves"]:
            if r["language"] in targets and r["mode"] == "refit":
                rows.append(
                    [
                        r["language"],
                        r["tier"],
                        str(r["budget"]),
                        str(r["n_draws"]),
                        _fmt(r["f1_mean"], 3),
                        _fmt(r["balanced_accuracy_mean"], 3),
                        str(r["n_fallback"]),
                    ]
                )
        sec.paragraphs.append(
            f"Gate at layer {diag.get('budget_layer')}, recalibrated (refit) from b harmful + b "
            f"harmless train examples of each language, {diag.get('n_draws')} seeded draws; "
            "scored on the language's test prompts. Paper (Qwen2.5-7B, macro LRL F1): "
            "b=0 0.80, b=1 0.75, b=2 0.81, b=4 0.81."
        )
        sec.tables.append(
            (["language", "tier", "b per class", "draws", "F1", "balanced acc.", "fallbacks"], rows)
        )
        sections.append(sec)

    # ------------------------------------------------------------------ utility
    if utility and utility.get("methods"):
        sec = Section("Utility: multiple-choice accuracy per method")
        um = utility["methods"]
        sec.images.append(
            (
                "utility",
                plots.plot_bars(
                    {n: um[n]["accuracy"] for n in um},
                    plot_dir / "utility.png",
                    "accuracy %",
                    f"Accuracy on {utility.get('n_questions')} questions ({utility.get('source')})",
                ),
            )
        )
        sec.tables.append(
            (
                [
                    "method",
                    "budget",
                    "accuracy %",
                    "mean margin",
                    "mean entropy",
                    "fire rate % (benign)",
                ],
                [
                    [
                        n,
                        budget_text(methods.get(n, {}).get("description")),
                        _fmt(u["accuracy"]),
                        _fmt(u["mean_margin"], 2),
                        _fmt(u["mean_entropy"], 3),
                        _fmt(u["fire_rate"]),
                    ]
                    for n, u in um.items()
                ],
            )
        )
        sec.paragraphs.append(
            "Zero-shot prompt through the chat template; the answer is the letter with the "
            "highest logit at the final prompt position (max over single-token spellings). "
            "For gate methods the fire rate is the share of these benign questions the gate "
            "routed to refusal steering (a false-positive rate); addition steers every row "
            "(100 %), ablation none (0 %). Paper: MMLU utility preserved."
        )
        sections.append(sec)

    # ------------------------------------------------------------------ gate fire rates
    gate_names = [n for n in names if n.startswith("gate_b") or n in ("cast", "adasteer")]
    if gate_names:
        sec = Section("Gate fire rates and threshold fallback")
        rows = []
        for n in gate_names:
            t = _tier_rows(methods[n])
            usage = methods[n].get("threshold_usage", {})
            source_rows = sum(
                u["source"]
                for lang, u in usage.items()
                if lang not in set(config.get("source_languages", []))
            )
            target_rows = sum(
                u["calibrated"] + u["source"]
                for lang, u in usage.items()
                if lang not in set(config.get("source_languages", []))
            )
            fallback = sum(u["fallback"] for u in usage.values())
            cells = [n, budget_text(methods[n].get("description"))]
            for tier in (*TIERS, "all"):
                row = t.get(tier)
                cells.append(
                    "–"
                    if row is None
                    else f"{_fmt(row.get('gate_fire_harmful_pct'))} / {_fmt(row.get('gate_fire_harmless_pct'))}"
                )
            cells.append(f"{source_rows}/{target_rows}" if usage else "–")
            cells.append(str(fallback) if usage else "–")
            rows.append(cells)
        sec.tables.append(
            (
                [
                    "method",
                    "budget",
                    "high fire % (harmful / harmless)",
                    "mid",
                    "low",
                    "all",
                    "non-source rows on source threshold",
                    "language fallbacks",
                ],
                rows,
            )
        )
        sec.paragraphs.append(
            "Fire % = share of test prompts routed to refusal steering. 'On source threshold': "
            "rows of non-source languages scored with the source-only (b = 0) threshold, because "
            "their language had no calibrated threshold or its calibration fell back (degenerate "
            "examples). 'Language fallbacks': rows whose language was unknown or uncalibrated."
        )
        if calibration:
            fell = {
                b: [lang for lang, meta in langs.items() if meta.get("status") != "calibrated"]
                for b, langs in calibration.get("budgets", {}).items()
            }
            for b, langs in fell.items():
                if langs:
                    sec.paragraphs.append(
                        f"Calibration {b}: kept the source threshold for {', '.join(langs)}."
                    )
        sections.append(sec)

    # ------------------------------------------------------------------ notes
    notes = Section("Files")
    notes.paragraphs.append(
        "config.json (every setting), metrics.json (all numbers with bootstrap intervals), "
        "completions/*.jsonl (every completion with its gate decision and verdict), "
        "utility.json, calibration.json, layer_choice.json, gate/ (the recalibrated gate bundle), "
        "diagnosis/ (per-language × layer AUC, budget curves, plots). `babelgate report RUN_DIR` "
        "rebuilds this report from those files."
    )
    if diag and diag.get("notes"):
        notes.paragraphs.append("Diagnosis notes: " + "; ".join(diag["notes"][:10]))
    sections.append(notes)
    return sections


# ------------------------------------------------------------------------------ rendering
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [list(header), *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def render_markdown(sections: Sequence[Section], run_dir: Path, title: str) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for caption, path in sec.images:
            out += [f"![{caption}]({path.relative_to(run_dir).as_posix()})", ""]
        for para in sec.paragraphs:
            out += [para, ""]
        for header, rows in sec.tables:
            out += [_md_table(header, rows), ""]
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.88em}"
    "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}"
    "img{max-width:100%;display:block;margin:0.5em 0}h2{border-bottom:1px solid #ddd;"
    "padding-bottom:0.2em;margin-top:1.6em}"
)


def render_html(sections: Sequence[Section], title: str) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for sec in sections:
        out.append(f"<h2>{esc(sec.title)}</h2>")
        for caption, path in sec.images:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f"<img alt='{esc(caption)}' src='data:image/png;base64,{data}'>")
        for para in sec.paragraphs:
            out.append(f"<p>{esc(para)}</p>")
        for header, rows in sec.tables:
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path, title: str = "babelgate report") -> tuple[Path, Path]:
    """Write plots/, report.md and report.html into `run_dir` from its JSON files."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ArtifactError(f"run directory {root} does not exist")
    plot_dir = root / "plots"
    plot_dir.mkdir(exist_ok=True)
    sections = build_sections(root, plot_dir)
    md_path, html_path = root / "report.md", root / "report.html"
    write_text_atomic(md_path, render_markdown(sections, root, title))
    write_text_atomic(html_path, render_html(sections, title))
    return md_path, html_path
