"""Language registry: code, name, script and resource tier, extendable by the user.

Tiers follow the paper: a language's share of CommonCrawl text decides it
(high > 1 %, mid 0.1–1 %, low < 0.1 %).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from babelgate.errors import DataError

Tier = Literal["high", "mid", "low"]
TIERS: tuple[Tier, ...] = ("high", "mid", "low")

_CODE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


@dataclass(frozen=True)
class Language:
    """One language: ISO 639 code, English name, writing script and resource tier."""

    code: str
    name: str
    script: str
    tier: Tier


# The paper's 23 languages keep the paper's tiers (CC-MAIN-2026-12 shares). The added
# languages are tiered by their share in recent CommonCrawl language statistics
# (commoncrawl.github.io/cc-crawl-statistics, 2023–2025 crawls), which is also the basis
# MultiJail used (vi high; bn, jv low). Approximate shares in the comments; borderline
# cases (~1 %) are marked and can be re-tiered with `LanguageRegistry.load_extra`.
_DEFAULTS: tuple[Language, ...] = (
    # high (paper)
    Language("en", "English", "Latin", "high"),
    Language("de", "German", "Latin", "high"),
    Language("fr", "French", "Latin", "high"),
    Language("es", "Spanish", "Latin", "high"),
    Language("it", "Italian", "Latin", "high"),
    Language("nl", "Dutch", "Latin", "high"),
    Language("pl", "Polish", "Latin", "high"),
    Language("ru", "Russian", "Cyrillic", "high"),
    Language("zh", "Chinese", "Han", "high"),
    Language("ja", "Japanese", "Japanese", "high"),
    # mid (paper)
    Language("ar", "Arabic", "Arabic", "mid"),
    Language("ko", "Korean", "Hangul", "mid"),
    Language("th", "Thai", "Thai", "mid"),
    Language("el", "Greek", "Greek", "mid"),
    Language("he", "Hebrew", "Hebrew", "mid"),
    Language("hi", "Hindi", "Devanagari", "mid"),
    Language("fa", "Persian", "Arabic", "mid"),
    # low (paper)
    Language("sw", "Swahili", "Latin", "low"),
    Language("am", "Amharic", "Ethiopic", "low"),
    Language("my", "Burmese", "Myanmar", "low"),
    Language("km", "Khmer", "Khmer", "low"),
    Language("si", "Sinhala", "Sinhala", "low"),
    Language("yo", "Yoruba", "Latin", "low"),
    # added: high (> 1 %)
    Language("pt", "Portuguese", "Latin", "high"),  # ~2 %
    Language("vi", "Vietnamese", "Latin", "high"),  # ~1 % (MultiJail: high)
    Language("tr", "Turkish", "Latin", "high"),  # ~1.1 %, borderline
    Language("cs", "Czech", "Latin", "high"),  # ~1.0 %, borderline
    # added: mid (0.1–1 %)
    Language("id", "Indonesian", "Latin", "mid"),  # ~0.9 %, borderline
    Language("uk", "Ukrainian", "Cyrillic", "mid"),  # ~0.7 %
    # added: low (< 0.1 %)
    Language("bn", "Bengali", "Bengali", "low"),  # ~0.09 % (MultiJail: low)
    Language("jv", "Javanese", "Latin", "low"),  # < 0.01 % (MultiJail: low)
    Language("ur", "Urdu", "Arabic", "low"),  # ~0.03 %
    Language("ta", "Tamil", "Tamil", "low"),  # ~0.04 %
    Language("te", "Telugu", "Telugu", "low"),  # ~0.02 %
    Language("mr", "Marathi", "Devanagari", "low"),  # ~0.03 %
    Language("ne", "Nepali", "Devanagari", "low"),  # ~0.03 %
    Language("ha", "Hausa", "Latin", "low"),  # < 0.01 %
    Language("ig", "Igbo", "Latin", "low"),  # < 0.01 %
    Language("zu", "Zulu", "Latin", "low"),  # < 0.01 %
    Language("so", "Somali", "Latin", "low"),  # < 0.01 %
    Language("yi", "Yiddish", "Hebrew", "low"),  # < 0.01 % (PolyRefuse extra_yi)
)


def normalize_code(code: str) -> str:
    """Lower-case a language code and use '-' as the subtag separator ('pt_BR' → 'pt-br')."""
    return code.strip().lower().replace("_", "-")


class LanguageRegistry:
    """A mutable set of languages, keyed by code. Build one per caller with `default_registry()`."""

    def __init__(self, languages: Iterable[Language] = ()) -> None:
        self._by_code: dict[str, Language] = {}
        for language in languages:
            self.add(language)

    def add(self, language: Language) -> None:
        """Add a language or replace the entry with the same code."""
        code = normalize_code(language.code)
        if not _CODE_RE.match(code):
            raise DataError(
                f"invalid language code {language.code!r} (expected e.g. 'sw', 'pt-br')"
            )
        if language.tier not in TIERS:
            raise DataError(
                f"invalid tier {language.tier!r} for language {code!r} (expected one of {TIERS})"
            )
        self._by_code[code] = replace(language, code=code)

    def get(self, code: str) -> Language:
        """The language for `code`; DataError naming the code and the known ones if absent."""
        language = self._by_code.get(normalize_code(code))
        if language is None:
            known = ", ".join(sorted(self._by_code))
            raise DataError(
                f"unknown language code {code!r}; known codes: {known}. "
                "Add it with a language file (code, name, script, tier)."
            )
        return language

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and normalize_code(code) in self._by_code

    def __iter__(self) -> Iterator[Language]:
        return iter(self._by_code.values())

    def __len__(self) -> int:
        return len(self._by_code)

    def codes(self, tier: str | None = None) -> list[str]:
        """Codes in registry order, optionally only those of one tier."""
        if tier is not None and tier not in TIERS:
            raise DataError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        return [lang.code for lang in self._by_code.values() if tier is None or lang.tier == tier]

    def tier_of(self, code: str) -> Tier:
        return self.get(code).tier

    def copy(self) -> LanguageRegistry:
        return LanguageRegistry(self._by_code.values())

    def load_extra(self, path: str | Path) -> list[str]:
        """Add or re-tier languages from a JSON, JSONL or CSV file; returns the codes touched.

        Each record has `code` and `tier`; `name` and `script` are required for a new code
        and optional when re-tiering a known one. JSON may be a list of records or an
        object mapping code → record.
        """
        file = Path(path)
        touched: list[str] = []
        for line, record in _read_language_records(file):
            where = f"{file}, row {line}"
            raw_code = record.get("code")
            if not isinstance(raw_code, str) or not raw_code.strip():
                raise DataError(f"{where}: missing 'code'")
            code = normalize_code(raw_code)
            tier = str(record.get("tier") or "").strip().lower()
            if tier not in TIERS:
                raise DataError(
                    f"{where}: tier {record.get('tier')!r} for {code!r} is not one of {', '.join(TIERS)}"
                )
            old = self._by_code.get(code)
            name = str(record.get("name") or "").strip() or (old.name if old else "")
            script = str(record.get("script") or "").strip() or (old.script if old else "")
            if not name or not script:
                raise DataError(f"{where}: new language {code!r} needs 'name' and 'script'")
            try:
                self.add(Language(code, name, script, cast(Tier, tier)))
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            touched.append(code)
        if not touched:
            raise DataError(f"{file}: no language records found")
        return touched


def _read_language_records(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line or record number, record) pairs from a JSON/JSONL/CSV language file."""
    if not file.is_file():
        raise DataError(f"language file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    suffix = file.suffix.lower()
    records: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}, row {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{file}, row {number}: expected a JSON object")
            records.append((number, obj))
    elif suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}, row {exc.lineno}: invalid JSON ({exc.msg})") from None
        items: list[Any]
        if isinstance(obj, dict):
            items = [
                {"code": key, **value} if isinstance(value, dict) else value
                for key, value in obj.items()
            ]
        elif isinstance(obj, list):
            items = obj
        else:
            raise DataError(f"{file}: expected a list of records or an object keyed by code")
        for number, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise DataError(f"{file}, record {number}: expected an object")
            records.append((number, item))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "code" not in reader.fieldnames:
            raise DataError(f"{file}, row 1: CSV header must include 'code' and 'tier'")
        for row in reader:
            records.append((reader.line_num, dict(row)))
    else:
        raise DataError(f"{file}: language files must be .json, .jsonl or .csv")
    return records


def default_registry() -> LanguageRegistry:
    """A fresh registry with the built-in languages; callers may mutate their copy freely."""
    return LanguageRegistry(_DEFAULTS)
