"""Language-identification accuracy per language.

Default source: the packaged built-in prompt set (every language file present). Optional:
a PolyRefuse-layout directory (`--polyrefuse DIR`) and SIB-200 (`--sib200 DIR`, the
`annotated/` folder; human-translated FLORES sentences, test split) for the registry
languages it covers. `--no-rules` measures the identifier without the letter rules.

    .venv/bin/python benchmarks/langid_accuracy.py [--polyrefuse DIR] [--sib200 DIR]
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from babelgate.langid import UNDETERMINED, detect_language
from babelgate.languages import default_registry
from babelgate.loaders import load_prompts

# SIB-200 (FLORES-200) folder for each registry code.
SIB_CODES = {
    "en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "it": "ita_Latn",
    "nl": "nld_Latn", "pl": "pol_Latn", "ru": "rus_Cyrl", "zh": "zho_Hans", "ja": "jpn_Jpan",
    "ar": "arb_Arab", "ko": "kor_Hang", "th": "tha_Thai", "el": "ell_Grek", "he": "heb_Hebr",
    "hi": "hin_Deva", "fa": "pes_Arab", "sw": "swh_Latn", "am": "amh_Ethi", "my": "mya_Mymr",
    "km": "khm_Khmr", "si": "sin_Sinh", "yo": "yor_Latn", "pt": "por_Latn", "vi": "vie_Latn",
    "tr": "tur_Latn", "cs": "ces_Latn", "id": "ind_Latn", "uk": "ukr_Cyrl", "bn": "ben_Beng",
    "jv": "jav_Latn", "ur": "urd_Arab", "ta": "tam_Taml", "te": "tel_Telu", "mr": "mar_Deva",
    "ne": "npi_Deva", "ha": "hau_Latn", "ig": "ibo_Latn", "zu": "zul_Latn", "so": "som_Latn",
    "yi": "ydd_Hebr",
}  # fmt: skip


def sib200_texts(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for code, folder in SIB_CODES.items():
        file = root / folder / "test.tsv"
        if file.is_file():
            with file.open(encoding="utf-8", newline="") as handle:
                out[code] = [row["text"] for row in csv.DictReader(handle, delimiter="\t")]
    return out


def measure(
    texts_by_lang: dict[str, list[str]], rules: bool
) -> list[tuple[str, int, float, float, str]]:
    """(language, n, accuracy, und rate, top confusions) per language."""
    rows = []
    for code, texts in texts_by_lang.items():
        guesses = Counter(detect_language(text, rules=rules).code for text in texts)
        wrong = ", ".join(f"{guess}:{n}" for guess, n in guesses.most_common() if guess != code)
        rows.append(
            (
                code,
                len(texts),
                guesses[code] / len(texts),
                guesses[UNDETERMINED] / len(texts),
                wrong,
            )
        )
    return rows


def show(console: Console, title: str, rows: list[tuple[str, int, float, float, str]]) -> None:
    registry = default_registry()
    table = Table(title=title)
    for column in ("language", "tier", "n", "accuracy", "und", "errors (guess:count)"):
        table.add_column(
            column, justify="left" if column in {"language", "errors (guess:count)"} else "right"
        )
    for code, n, accuracy, und, wrong in rows:
        tier = registry.tier_of(code) if code in registry else "?"
        table.add_row(code, tier, str(n), f"{accuracy:.3f}", f"{und:.3f}", wrong[:60])
    total = sum(n for _, n, _, _, _ in rows)
    micro = sum(n * acc for _, n, acc, _, _ in rows) / max(total, 1)
    macro = sum(acc for _, _, acc, _, _ in rows) / max(len(rows), 1)
    table.add_row("all", "", str(total), f"{micro:.3f}", "", f"macro {macro:.3f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polyrefuse", type=Path, help="PolyRefuse-layout directory")
    parser.add_argument("--sib200", type=Path, help="SIB-200 annotated/ directory")
    parser.add_argument("--no-builtin", action="store_true", help="skip the built-in set")
    parser.add_argument("--no-rules", action="store_true", help="identifier without letter rules")
    args = parser.parse_args()
    console = Console()
    rules = not args.no_rules
    sources: list[tuple[str, dict[str, list[str]]]] = []
    if not args.no_builtin:
        builtin = load_prompts("builtin")
        sources.append(
            ("built-in set", {c: builtin.filter(language=c).texts() for c in builtin.languages()})
        )
    if args.polyrefuse:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            poly = load_prompts(args.polyrefuse)
        sources.append(
            ("PolyRefuse", {c: poly.filter(language=c).texts() for c in poly.languages()})
        )
    if args.sib200:
        sources.append(("SIB-200 test", sib200_texts(args.sib200)))
    for name, texts in sources:
        start = time.perf_counter()
        rows = measure(texts, rules)
        seconds = time.perf_counter() - start
        n = sum(len(t) for t in texts.values())
        title = (
            f"{name}: langid accuracy (rules {'on' if rules else 'off'}; {n / seconds:.0f} texts/s)"
        )
        show(console, title, rows)


if __name__ == "__main__":
    main()
