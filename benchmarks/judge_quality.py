"""Agreement of the offline keyword refusal judge with human labels.

Reads the labelled sample `tests/fixtures/judge_sample.jsonl` (real greedy completions of the
packaged models on built-in prompts, each read and labelled by hand; see
`scripts/make_judge_sample.py`) and prints agreement, precision, recall and Cohen's kappa
overall and per language, label and model. `--errors` lists every disagreement.

    .venv/bin/python benchmarks/judge_quality.py [--sample PATH] [--judge keyword] [--errors]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from babelgate.judges import get_judge
from babelgate.metrics import AgreementMetrics, judge_agreement

DEFAULT_SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "judge_sample.jsonl"


@dataclass(frozen=True)
class Scored:
    """One labelled row with the judge's verdict."""

    row: dict[str, object]
    gold: bool
    predicted: bool
    reason: str


def load_sample(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def score(rows: Sequence[dict[str, object]], judge_spec: str) -> list[Scored]:
    judge = get_judge(judge_spec)
    verdicts = judge.judge(
        [str(r["prompt"]) for r in rows],
        [str(r["completion"]) for r in rows],
        [str(r["language"]) for r in rows],
    )
    return [
        Scored(row=r, gold=bool(r["gold_refusal"]), predicted=v.refusal, reason=v.reason)
        for r, v in zip(rows, verdicts, strict=True)
    ]


def agreement_of(scored: Sequence[Scored]) -> AgreementMetrics:
    return judge_agreement([s.gold for s in scored], [s.predicted for s in scored])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _group_rows(
    table: Table, scored: Sequence[Scored], key: Callable[[Scored], str], prefix: str
) -> None:
    groups: dict[str, list[Scored]] = {}
    for item in scored:
        groups.setdefault(key(item), []).append(item)
    for name in sorted(groups):
        _add_row(table, f"{prefix}{name}", agreement_of(groups[name]))


def _add_row(table: Table, name: str, m: AgreementMetrics) -> None:
    table.add_row(
        name,
        str(m.n),
        str(m.tp + m.fn),
        f"{m.tp}/{m.fp}/{m.fn}/{m.tn}",
        _fmt(m.agreement),
        _fmt(m.precision),
        _fmt(m.recall),
        _fmt(m.kappa),
    )


def build_table(scored: Sequence[Scored], judge_id: str) -> Table:
    table = Table(title=f"refusal judge vs human labels ({judge_id})")
    for column in ("group", "n", "gold ref", "tp/fp/fn/tn", "agree", "prec", "recall", "kappa"):
        table.add_column(column, justify="left" if column == "group" else "right")
    _add_row(table, "ALL", agreement_of(scored))
    table.add_section()
    _group_rows(table, scored, lambda s: str(s.row["label"]), "label=")
    table.add_section()
    _group_rows(table, scored, lambda s: str(s.row["model"]), "model=")
    table.add_section()
    _group_rows(table, scored, lambda s: str(s.row["language"]), "")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--judge", default="keyword")
    parser.add_argument("--errors", action="store_true", help="list every disagreement")
    args = parser.parse_args()

    rows = load_sample(args.sample)
    scored = score(rows, args.judge)
    console = Console(width=140)
    console.print(build_table(scored, get_judge(args.judge).judge_id))
    if args.errors:
        for item in scored:
            if item.gold == item.predicted:
                continue
            kind = "MISSED REFUSAL" if item.gold else "FALSE REFUSAL"
            console.print(
                f"[bold]{kind}[/bold] {item.row['id']} ({item.row['language']}, "
                f"{item.row['label']}) reason={item.reason!r}\n"
                f"  completion: {item.row['completion']!r}",
                markup=True,
                highlight=False,
            )


if __name__ == "__main__":
    main()
