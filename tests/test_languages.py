"""Language registry: defaults, lookup errors, user extension."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from babelgate.errors import DataError
from babelgate.languages import Language, LanguageRegistry, default_registry

FIXTURES = Path(__file__).parent / "fixtures" / "data"

PAPER_TIERS = {
    "high": ["en", "de", "fr", "es", "it", "nl", "pl", "ru", "zh", "ja"],
    "mid": ["ar", "ko", "th", "el", "he", "hi", "fa"],
    "low": ["sw", "am", "my", "km", "si", "yo"],
}


def test_paper_languages_keep_paper_tiers() -> None:
    registry = default_registry()
    for tier, codes in PAPER_TIERS.items():
        for code in codes:
            assert registry.tier_of(code) == tier
        assert registry.codes(tier)[: len(codes)] == codes


def test_added_languages_present_with_scripts() -> None:
    registry = default_registry()
    for code in [
        "bn",
        "jv",
        "vi",
        "id",
        "ur",
        "ta",
        "te",
        "ha",
        "ig",
        "zu",
        "so",
        "ne",
        "pt",
        "tr",
        "uk",
        "cs",
    ]:
        assert code in registry
    assert registry.get("bn").script == "Bengali"
    assert registry.get("am").script == "Ethiopic"
    assert registry.get("ja").script == "Japanese"
    assert registry.get("uk").script == "Cyrillic"
    assert registry.tier_of("jv") == "low"
    assert registry.tier_of("pt") == "high"


def test_get_unknown_code_names_it_and_lists_known() -> None:
    with pytest.raises(DataError, match=r"unknown language code 'xx'.*known codes: .*sw"):
        default_registry().get("xx")


def test_lookup_is_case_insensitive() -> None:
    assert default_registry().get("SW").code == "sw"


def test_default_registry_is_a_fresh_copy() -> None:
    first = default_registry()
    first.add(Language("tl", "Tagalog", "Latin", "low"))
    first.add(Language("sw", "Swahili", "Latin", "mid"))
    second = default_registry()
    assert "tl" not in second
    assert second.tier_of("sw") == "low"


def test_codes_rejects_unknown_tier() -> None:
    with pytest.raises(DataError, match="unknown tier"):
        default_registry().codes("medium")


def test_load_extra_jsonl_adds_language() -> None:
    registry = default_registry()
    assert registry.load_extra(FIXTURES / "tagalog_language.jsonl") == ["tl"]
    assert registry.get("tl") == Language("tl", "Tagalog", "Latin", "low")


def test_load_extra_csv_adds_and_retiers() -> None:
    registry = default_registry()
    registry.load_extra(FIXTURES / "languages.csv")
    assert registry.tier_of("tl") == "low"
    assert registry.tier_of("id") == "high"
    assert registry.get("id").name == "Indonesian"  # kept when only re-tiering


def test_load_extra_json_mapping(tmp_path: Path) -> None:
    file = tmp_path / "langs.json"
    file.write_text(json.dumps({"qu": {"name": "Quechua", "script": "Latin", "tier": "low"}}))
    registry = default_registry()
    registry.load_extra(file)
    assert registry.get("qu").name == "Quechua"


def test_load_extra_bad_tier_names_file_and_row() -> None:
    file = FIXTURES / "bad_language_file.jsonl"
    with pytest.raises(DataError, match=r"bad_language_file\.jsonl, row 1: tier 'tiny'"):
        default_registry().load_extra(file)


def test_load_extra_new_language_needs_name_and_script(tmp_path: Path) -> None:
    file = tmp_path / "langs.jsonl"
    file.write_text('{"code": "qu", "tier": "low"}\n')
    with pytest.raises(DataError, match="needs 'name' and 'script'"):
        default_registry().load_extra(file)


def test_registry_rejects_invalid_code() -> None:
    with pytest.raises(DataError, match="invalid language code"):
        LanguageRegistry([Language("not a code", "X", "Latin", "low")])
