"""Language identification: Unicode script rules first, then the packaged `py3langid`
identifier restricted to the registry languages that share the text's script.

Scripts used by exactly one candidate (Ethiopic → am, Myanmar → my, Thai → th, …) are
decided by the script alone. Shared scripts (Latin, Cyrillic, Arabic, Devanagari,
Hebrew) go to the identifier, restricted to the candidates written in that script, with
two small orthographic rules where the identifier lacks a language or confuses a pair:
Yiddish (not in py3langid) by its letters and function words, and Yoruba by its
dotted letters (ẹ ṣ) in text free of Vietnamese-only letters.
"""

from __future__ import annotations

import bisect
import copy
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from babelgate.errors import DataError
from babelgate.languages import LanguageRegistry, default_registry, normalize_code

UNDETERMINED = "und"

# (first code point, last code point, script). Registry script names; "Kana" means
# Japanese syllabaries (the script of text that mixes them with Han is "Japanese").
_RANGES: list[tuple[int, int, str]] = sorted(
    [
        (0x0041, 0x005A, "Latin"),
        (0x0061, 0x007A, "Latin"),
        (0x00C0, 0x00D6, "Latin"),
        (0x00D8, 0x00F6, "Latin"),
        (0x00F8, 0x024F, "Latin"),
        (0x1E00, 0x1EFF, "Latin"),
        (0x0370, 0x03FF, "Greek"),
        (0x1F00, 0x1FFF, "Greek"),
        (0x0400, 0x052F, "Cyrillic"),
        (0x0530, 0x058F, "Armenian"),
        (0x0590, 0x05FF, "Hebrew"),
        (0xFB1D, 0xFB4F, "Hebrew"),
        (0x0600, 0x06FF, "Arabic"),
        (0x0750, 0x077F, "Arabic"),
        (0x08A0, 0x08FF, "Arabic"),
        (0xFB50, 0xFDFF, "Arabic"),
        (0xFE70, 0xFEFF, "Arabic"),
        (0x0900, 0x097F, "Devanagari"),
        (0x0980, 0x09FF, "Bengali"),
        (0x0A00, 0x0A7F, "Gurmukhi"),
        (0x0A80, 0x0AFF, "Gujarati"),
        (0x0B00, 0x0B7F, "Oriya"),
        (0x0B80, 0x0BFF, "Tamil"),
        (0x0C00, 0x0C7F, "Telugu"),
        (0x0C80, 0x0CFF, "Kannada"),
        (0x0D00, 0x0D7F, "Malayalam"),
        (0x0D80, 0x0DFF, "Sinhala"),
        (0x0E00, 0x0E7F, "Thai"),
        (0x0E80, 0x0EFF, "Lao"),
        (0x0F00, 0x0FFF, "Tibetan"),
        (0x1000, 0x109F, "Myanmar"),
        (0xA9E0, 0xA9FF, "Myanmar"),
        (0xAA60, 0xAA7F, "Myanmar"),
        (0x10A0, 0x10FF, "Georgian"),
        (0x1100, 0x11FF, "Hangul"),
        (0x3130, 0x318F, "Hangul"),
        (0xAC00, 0xD7AF, "Hangul"),
        (0x1200, 0x139F, "Ethiopic"),
        (0x2D80, 0x2DDF, "Ethiopic"),
        (0xAB00, 0xAB2F, "Ethiopic"),
        (0x1780, 0x17FF, "Khmer"),
        (0x19E0, 0x19FF, "Khmer"),
        (0x3040, 0x309F, "Kana"),
        (0x30A0, 0x30FF, "Kana"),
        (0x31F0, 0x31FF, "Kana"),
        (0xFF66, 0xFF9F, "Kana"),
        (0x3400, 0x4DBF, "Han"),
        (0x4E00, 0x9FFF, "Han"),
        (0xF900, 0xFAFF, "Han"),
        (0x20000, 0x2FA1F, "Han"),
    ]
)
_STARTS = [start for start, _, _ in _RANGES]

# Latin-script words are common inside other-script prompts (names, code, URLs), so a
# non-Latin script wins once it has this share of the (weighted) characters. A CJK
# character carries about a word, so it weighs as much as a few alphabetic letters.
_NON_LATIN_SHARE = 0.2
_WEIGHT = {"Han": 3.0, "Kana": 2.0, "Japanese": 2.5, "Hangul": 2.0}
# Yiddish: digraph letters װ ױ ײ ײַ, pointed alef אַ אָ and rafe (פֿ) appear in standard
# orthography; unpointed (Hasidic-style) text is told apart by function words that are
# frequent in Yiddish and rare as standalone Hebrew words, against Hebrew ones.
_YIDDISH_MARKS = set("\u05f0\u05f1\u05f2\ufb1f\ufb2e\ufb2f\u05bf")
_YIDDISH_POINTED_ALEF = ("\u05d0\u05b7", "\u05d0\u05b8")
_YIDDISH_WORDS = frozenset(
    [
        "און",
        "איז",
        "די",
        "דער",
        "דאס",
        "פון",
        "מיט",
        "אויף",
        "ניט",
        "נישט",
        "זיך",
        "צו",
        "ער",
        "זי",
        "עס",
        "ווי",
        "וועט",
        "האט",
        "געווען",
        "אויך",
        "ווען",
        "זיי",
        "מען",
        "קען",
        "ווייל",
        "וואס",
    ]
)
_HEBREW_WORDS = frozenset(
    [
        "של",
        "את",
        "על",
        "עם",
        "הוא",
        "היא",
        "זה",
        "לא",
        "כי",
        "אשר",
        "גם",
        "או",
        "אני",
        "הם",
        "יש",
        "אין",
        "כל",
    ]
)
_HEBREW_TOKEN = re.compile(r"[\u05d0-\u05ea\u05f0-\u05f2]+")
_YORUBA_MARKS = set("ẹẸṣṢ")
_VIETNAMESE_ONLY = set("ăâđêôơưĂÂĐÊÔƠƯ")


@dataclass(frozen=True)
class Detection:
    """`code` is a registry code or "und"; `method` says which stage decided."""

    code: str
    confidence: float
    method: str


def script_profile(text: str) -> Counter[str]:
    """Count of characters per script (letters and in-block marks; digits etc. ignored)."""
    counts: Counter[str] = Counter()
    for char in unicodedata.normalize("NFC", text):
        point = ord(char)
        i = bisect.bisect_right(_STARTS, point) - 1
        if i >= 0 and point <= _RANGES[i][1]:
            counts[_RANGES[i][2]] += 1
    return counts


def dominant_script(text: str) -> tuple[str | None, float]:
    """(script, weighted share of its characters) — Han with any kana counts as "Japanese"."""
    raw = script_profile(text)
    if raw["Kana"]:
        raw["Japanese"] = raw.pop("Kana") + raw.pop("Han", 0)
    counts = {script: n * _WEIGHT.get(script, 1.0) for script, n in raw.items() if n}
    total = sum(counts.values())
    if total == 0:
        return None, 0.0
    non_latin = [(n, s) for s, n in counts.items() if s != "Latin"]
    if non_latin:
        n, script = max(non_latin)
        if n / total >= _NON_LATIN_SHARE:
            return script, n / total
    n, script = max((n, s) for s, n in counts.items())
    return script, n / total


def _looks_yiddish(text: str) -> bool:
    if _YIDDISH_MARKS & set(text) or any(mark in text for mark in _YIDDISH_POINTED_ALEF):
        return True
    words = _HEBREW_TOKEN.findall(text)
    yiddish = sum(word in _YIDDISH_WORDS for word in words)
    hebrew = sum(word in _HEBREW_WORDS for word in words)
    return yiddish > hebrew


def _looks_yoruba(text: str) -> bool:
    """ẹ or ṣ in text without Vietnamese-only letters. (ọ alone is not used: Igbo and
    Vietnamese share it, and counting it cost more Igbo/Vietnamese accuracy on short
    SIB-200 texts than it gained for Yoruba.)"""
    letters = set(text)
    return bool(_YORUBA_MARKS & letters) and not _VIETNAMESE_ONLY & letters


@functools.lru_cache(maxsize=1)
def _base_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@functools.lru_cache(maxsize=64)
def _identifier(languages: frozenset[str]) -> Any:
    """A py3langid identifier restricted to `languages` (a copy; the base is never mutated)."""
    restricted = copy.copy(_base_identifier())
    restricted.set_languages(sorted(languages))
    return restricted


def identifier_languages() -> frozenset[str]:
    """Codes the packaged identifier knows."""
    return frozenset(_base_identifier().labels)


def detect_language(
    text: str,
    *,
    candidates: Iterable[str] | None = None,
    registry: LanguageRegistry | None = None,
    min_confidence: float = 0.5,
    rules: bool = True,
) -> Detection:
    """Best guess of `text`'s language among `candidates` (default: every registry code).

    Returns `Detection("und", confidence, method)` when the text has no letters, its
    script belongs to no candidate, or the identifier's probability is below
    `min_confidence`. `rules=False` turns off the Yiddish and Yoruba letter rules (for
    measuring what they add).
    """
    reg = registry if registry is not None else default_registry()
    codes = [reg.get(code).code for code in candidates] if candidates is not None else reg.codes()
    if not codes:
        raise DataError("detect_language needs at least one candidate language")
    script, share = dominant_script(text)
    if script is None:
        return Detection(UNDETERMINED, 0.0, "script")
    same_script = [code for code in codes if reg.get(code).script == script]
    if not same_script:
        return Detection(UNDETERMINED, 0.0, "script")
    if len(same_script) == 1:
        return Detection(same_script[0], share, "script")

    normalized = unicodedata.normalize("NFC", text)
    if rules and script == "Hebrew" and "yi" in same_script and _looks_yiddish(normalized):
        return Detection("yi", share, "rule")
    if rules and "yo" in same_script and _looks_yoruba(normalized):
        return Detection("yo", share, "rule")

    known = identifier_languages()
    usable = frozenset(code for code in same_script if code in known)
    if not usable:
        return Detection(UNDETERMINED, 0.0, "identifier")
    if len(usable) == 1:
        only = next(iter(usable))
        return Detection(only, share, "script")
    code, probability = _identifier(usable).classify(normalized)
    confidence = float(probability) * share
    if confidence < min_confidence:
        return Detection(UNDETERMINED, confidence, "identifier")
    return Detection(normalize_code(code), confidence, "identifier")
