"""PromptSet: filters, balanced seeded sampling, summaries, digests, JSONL round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from babelgate.errors import DataError
from babelgate.prompts import Prompt, PromptSet, normalize_label


def _rows() -> list[Prompt]:
    rows = []
    for lang in ("en", "sw"):
        for label in ("harmful", "harmless"):
            for split, n in (("train", 6), ("val", 2), ("test", 5)):
                for i in range(n):
                    rows.append(
                        Prompt(f"{lang} {label} {split} {i}", lang, label, split, f"{split}{i}")
                    )  # type: ignore[arg-type]
    return rows


@pytest.fixture
def prompts() -> PromptSet:
    return PromptSet(_rows())


def test_filter_by_value_and_collection(prompts: PromptSet) -> None:
    assert len(prompts.filter(language="sw")) == 26
    assert len(prompts.filter(language=["sw", "en"], split=["val", "test"])) == 28
    assert set(prompts.filter(tier="low").languages()) == {"sw"}
    harmful_test = prompts.filter(label="harmful", split="test")
    assert len(harmful_test) == 10 and all(row.label == "harmful" for row in harmful_test)


def test_filter_rejects_bad_values(prompts: PromptSet) -> None:
    with pytest.raises(DataError, match="not harmful/harmless"):
        prompts.filter(label="bad")
    with pytest.raises(DataError, match="unknown tier"):
        prompts.filter(tier="medium")


def test_texts_labels_languages(prompts: PromptSet) -> None:
    subset = prompts.filter(language="en", split="val")
    assert subset.labels() == [1, 1, 0, 0]
    assert subset.texts()[0] == "en harmful val 0"
    assert prompts.languages() == ["en", "sw"]


def test_sample_is_balanced_deterministic_and_train_only(prompts: PromptSet) -> None:
    first = prompts.sample("sw", 4, seed=7)
    assert first == prompts.sample("sw", 4, seed=7)
    assert first.labels() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert {row.split for row in first} == {"train"} and {row.language for row in first} == {"sw"}
    assert len({row.source_id for row in first.filter(label="harmful")}) == 4
    seeds = {tuple(prompts.sample("sw", 2, seed=s).texts()) for s in range(10)}
    assert len(seeds) > 1  # the seed matters


def test_sample_never_draws_test_rows(prompts: PromptSet) -> None:
    for seed in range(20):
        assert all(row.split == "train" for row in prompts.sample("en", 6, seed=seed))
    with pytest.raises(DataError, match="test split"):
        prompts.sample("en", 1, seed=0, split="test")


def test_sample_too_large_names_both_counts(prompts: PromptSet) -> None:
    with pytest.raises(DataError, match=r"b=7 .*'sw'.*6 harmful and 6 harmless"):
        prompts.sample("sw", 7, seed=0)
    with pytest.raises(DataError, match="0 harmful and 0 harmless"):
        prompts.sample("am", 1, seed=0)


def test_sample_zero_is_empty(prompts: PromptSet) -> None:
    assert len(prompts.sample("sw", 0, seed=0)) == 0


def test_concat_and_add(prompts: PromptSet) -> None:
    en, sw = prompts.filter(language="en"), prompts.filter(language="sw")
    assert (en + sw) == en.concat(sw)
    assert len(en + sw) == len(prompts)
    assert isinstance(prompts[1:3], PromptSet) and len(prompts[1:3]) == 2


def test_summary_counts_and_tier(prompts: PromptSet) -> None:
    summary = prompts.summary()
    assert summary["sw"]["tier"] == "low" and summary["en"]["tier"] == "high"
    assert summary["sw"]["harmful"] == {"train": 6, "val": 2, "test": 5}
    assert summary["en"]["total"] == 26


def test_digest_changes_with_any_field(prompts: PromptSet) -> None:
    rows = list(prompts)
    changed = PromptSet([*rows[:-1], Prompt(rows[-1].text, "sw", "harmless", "test", "other")])
    assert prompts.digest() == PromptSet(rows).digest()
    assert prompts.digest() != changed.digest()
    assert len(prompts.digest()) == 64


def test_jsonl_round_trip(prompts: PromptSet, tmp_path: Path) -> None:
    rows = [
        *prompts,
        Prompt("text", "en", "harmful", "train", "x", category="cyber", origin="mine"),
    ]
    original = PromptSet(rows)
    path = tmp_path / "out" / "prompts.jsonl"
    original.save_jsonl(path)
    assert PromptSet.load_jsonl(path) == original
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_prompt_validates_fields() -> None:
    with pytest.raises(DataError, match="empty text"):
        Prompt("  ", "en", "harmful", "train", "1")
    with pytest.raises(DataError, match="label"):
        Prompt("x", "en", "bad", "train", "1")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="split"):
        Prompt("x", "en", "harmful", "dev", "1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Harmful", "harmful"), ("unsafe", "harmful"), (1, "harmful"), ("true", "harmful"),
     ("safe", "harmless"), ("0", "harmless"), (False, "harmless")],
)  # fmt: skip
def test_label_aliases(value: object, expected: str) -> None:
    assert normalize_label(value) == expected
