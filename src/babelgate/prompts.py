"""PromptSet: labelled, split, multilingual prompts — the input of every later stage."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, overload

from babelgate.errors import DataError
from babelgate.io import sha256_text, write_jsonl_atomic
from babelgate.languages import TIERS, LanguageRegistry, default_registry, normalize_code

Label = Literal["harmful", "harmless"]
Split = Literal["train", "val", "test"]
LABELS: tuple[Label, ...] = ("harmful", "harmless")
SPLITS: tuple[Split, ...] = ("train", "val", "test")

# Accepted spellings of the two labels (case-insensitive). Numeric/boolean forms follow
# the usual classifier convention (1/true = positive = harmful); "unsafe"/"safe" are
# what moderation datasets use. Anything else is an error, never a guess.
_LABEL_ALIASES: dict[str, Label] = {
    "harmful": "harmful",
    "harmless": "harmless",
    "1": "harmful",
    "0": "harmless",
    "true": "harmful",
    "false": "harmless",
    "unsafe": "harmful",
    "safe": "harmless",
}
_SPLIT_ALIASES: dict[str, Split] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


def normalize_label(value: object) -> Label:
    """'harmful'/'harmless' from a label or one of its aliases; ValueError otherwise."""
    if isinstance(value, bool):
        return "harmful" if value else "harmless"
    if isinstance(value, int | float) and value in (0, 1):
        return "harmful" if value == 1 else "harmless"
    if isinstance(value, str) and value.strip().lower() in _LABEL_ALIASES:
        return _LABEL_ALIASES[value.strip().lower()]
    raise ValueError(
        f"label {value!r} is not harmful/harmless (aliases: 1/0, true/false, unsafe/safe)"
    )


def normalize_split(value: object) -> Split:
    """'train'/'val'/'test' from a split name or alias (valid, validation, dev)."""
    if isinstance(value, str) and value.strip().lower() in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[value.strip().lower()]
    raise ValueError(f"split {value!r} is not one of train/val/test")


@dataclass(frozen=True)
class Prompt:
    """One prompt. `source_id` aligns translations of the same item across languages."""

    text: str
    language: str
    label: Label
    split: Split
    source_id: str
    category: str | None = None
    origin: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise DataError(f"prompt {self.source_id!r} ({self.language}) has empty text")
        if self.label not in LABELS:
            raise DataError(f"prompt {self.source_id!r}: label {self.label!r} not in {LABELS}")
        if self.split not in SPLITS:
            raise DataError(f"prompt {self.source_id!r}: split {self.split!r} not in {SPLITS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_set(value: str | Collection[str] | None) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


class PromptSet(Sequence[Prompt]):
    """An immutable, ordered sequence of `Prompt` rows with filters, sampling and summaries.

    `registry` supplies tiers (for `filter(tier=...)` and `summary()`); a fresh default
    registry is used when none is given.
    """

    def __init__(self, rows: Iterable[Prompt] = (), registry: LanguageRegistry | None = None):
        self._rows: tuple[Prompt, ...] = tuple(rows)
        for row in self._rows:
            if not isinstance(row, Prompt):
                raise TypeError(f"PromptSet rows must be Prompt, got {type(row).__name__}")
        self.registry: LanguageRegistry = registry if registry is not None else default_registry()

    # -- sequence protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Prompt: ...
    @overload
    def __getitem__(self, index: slice) -> PromptSet: ...
    def __getitem__(self, index: int | slice) -> Prompt | PromptSet:
        if isinstance(index, slice):
            return PromptSet(self._rows[index], self.registry)
        return self._rows[index]

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self._rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptSet) and self._rows == other._rows

    def __hash__(self) -> int:
        return hash(self._rows)

    def __repr__(self) -> str:
        return f"PromptSet({len(self)} prompts, languages={self.languages()})"

    def __add__(self, other: PromptSet) -> PromptSet:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return self.concat(other)

    @property
    def rows(self) -> tuple[Prompt, ...]:
        return self._rows

    # -- queries -----------------------------------------------------------------------
    def filter(
        self,
        *,
        language: str | Collection[str] | None = None,
        tier: str | Collection[str] | None = None,
        label: str | Collection[str] | None = None,
        split: str | Collection[str] | None = None,
        category: str | Collection[str] | None = None,
    ) -> PromptSet:
        """Rows matching every given criterion; each accepts one value or a collection."""
        languages = _as_set(language)
        if languages is not None:
            languages = {normalize_code(code) for code in languages}
        tiers = _as_set(tier)
        if tiers is not None and not tiers <= set(TIERS):
            raise DataError(f"unknown tier(s) {sorted(tiers - set(TIERS))}; expected {TIERS}")
        labels = _as_set(label)
        if labels is not None:
            labels = {_checked(normalize_label, value) for value in labels}
        splits = _as_set(split)
        if splits is not None:
            splits = {_checked(normalize_split, value) for value in splits}
        categories = _as_set(category)

        tier_cache: dict[str, str | None] = {}

        def tier_ok(code: str) -> bool:
            if code not in tier_cache:
                tier_cache[code] = self.registry.tier_of(code) if code in self.registry else None
            return tier_cache[code] in tiers  # type: ignore[operator]

        return PromptSet(
            (
                row
                for row in self._rows
                if (languages is None or row.language in languages)
                and (labels is None or row.label in labels)
                and (splits is None or row.split in splits)
                and (categories is None or row.category in categories)
                and (tiers is None or tier_ok(row.language))
            ),
            self.registry,
        )

    def languages(self) -> list[str]:
        """Languages present, in registry order (unregistered codes last, sorted)."""
        present = {row.language for row in self._rows}
        ordered = [code for code in self.registry.codes() if code in present]
        return ordered + sorted(present - set(ordered))

    def texts(self) -> list[str]:
        return [row.text for row in self._rows]

    def labels(self) -> list[int]:
        """1 for harmful, 0 for harmless, in row order."""
        return [1 if row.label == "harmful" else 0 for row in self._rows]

    def sample(self, language: str, b: int, seed: int, split: str = "train") -> PromptSet:
        """A seeded balanced sample: b harmful then b harmless rows of one language.

        Draws from the train split (or val, when asked); the test split is refused so that
        calibration examples never leak into evaluation. Uses the reference procedure: one
        CPU `torch.Generator` seeded once, a `randperm` over the harmful rows, then one over
        the harmless rows, each cut to b — so a given seed always gives the same rows.
        """
        chosen_split = _checked(normalize_split, split)
        if chosen_split == "test":
            raise DataError("calibration examples must not come from the test split")
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise DataError(f"budget b must be a non-negative integer, got {b!r}")
        code = normalize_code(language)
        pool = self.filter(language=code, split=chosen_split)
        harmful = [row for row in pool if row.label == "harmful"]
        harmless = [row for row in pool if row.label == "harmless"]
        if b > len(harmful) or b > len(harmless):
            raise DataError(
                f"cannot sample b={b} per class for language {code!r} from the "
                f"{chosen_split} split: it has {len(harmful)} harmful and "
                f"{len(harmless)} harmless prompts"
            )
        if b == 0:
            return PromptSet((), self.registry)
        import torch  # deferred: only sampling needs it

        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        harmful_idx = torch.randperm(len(harmful), generator=generator)[:b].tolist()
        harmless_idx = torch.randperm(len(harmless), generator=generator)[:b].tolist()
        rows = [harmful[i] for i in harmful_idx] + [harmless[i] for i in harmless_idx]
        return PromptSet(rows, self.registry)

    def concat(self, *others: PromptSet) -> PromptSet:
        rows: list[Prompt] = list(self._rows)
        for other in others:
            rows.extend(other)
        return PromptSet(rows, self.registry)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per language: tier, counts per label × split, and the total.

        `{"sw": {"tier": "low", "harmful": {"train": 8, "val": 0, "test": 24},
        "harmless": {...}, "total": 64}, ...}` in `languages()` order.
        """
        out: dict[str, dict[str, Any]] = {}
        for code in self.languages():
            tier = self.registry.tier_of(code) if code in self.registry else "unknown"
            out[code] = {
                "tier": tier,
                **{label: dict.fromkeys(SPLITS, 0) for label in LABELS},
                "total": 0,
            }
        for row in self._rows:
            entry = out[row.language]
            entry[row.label][row.split] += 1
            entry["total"] += 1
        return out

    def digest(self) -> str:
        """SHA-256 over all rows in order (every field), for provenance in artifacts."""
        return sha256_text(
            *(json.dumps(row.to_dict(), ensure_ascii=False, sort_keys=True) for row in self._rows)
        )

    # -- files -------------------------------------------------------------------------
    def save_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per row (atomically: a temporary file renamed into place)."""
        write_jsonl_atomic(path, (row.to_dict() for row in self._rows))

    @classmethod
    def load_jsonl(cls, path: str | Path, registry: LanguageRegistry | None = None) -> PromptSet:
        """Read a JSONL file written by `save_jsonl` (or any long-format JSONL)."""
        from babelgate.loaders import read_long_file  # loaders import this module

        return read_long_file(Path(path), registry=registry or default_registry())


def _checked(normalize: Any, value: object) -> Any:
    try:
        return normalize(value)
    except ValueError as exc:
        raise DataError(str(exc)) from None


__all__ = [
    "LABELS",
    "SPLITS",
    "Label",
    "Prompt",
    "PromptSet",
    "Split",
    "normalize_label",
    "normalize_split",
]
