"""Read prompts from the formats people actually have, into one `PromptSet`.

`load_prompts(spec)` dispatches on the spec:

* ``"builtin"`` — the packaged set, ``babelgate/data/builtin/{lang}.jsonl``.
* a directory in the PolyRefuse layout — ``{subset}_{split}_translated_{lang}.json``
  (subset ``harmful``/``harmless``; any other subset, e.g. ``jailbreakbench``, needs
  ``label=``), plus ``english_source_splits/`` for the English train/val originals.
* a wide ``.csv``/``.tsv`` with one column per language code (MultiJail-style).
* a long ``.csv``/``.tsv``/``.jsonl``/``.json`` with ``text``, ``language``, ``label`` and
  optional ``split`` (default ``test``), ``id``, ``category``.
* a ``.txt`` file with one prompt per line (needs ``language=`` and ``label=``).

Labels are ``harmful``/``harmless``; the aliases 1/0, true/false and unsafe/safe are
accepted (case-insensitive), anything else is an error. A missing id becomes the 0-based
row index as a string, as in PolyRefuse. Every problem in a file raises one `DataError`
naming the file, the 1-based line (or record) and what is wrong.

The ``language=`` and ``label=`` arguments fill in a field the source does not carry
(.txt files, long files without that column, wide files without a label column); where the
source carries it they restrict the rows returned.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from babelgate.errors import DataError
from babelgate.languages import LanguageRegistry, default_registry, normalize_code
from babelgate.prompts import SPLITS, Label, Prompt, PromptSet, Split, normalize_label
from babelgate.prompts import normalize_split as _normalize_split

BUILTIN = "builtin"
_TRANSLATED_RE = re.compile(
    r"^(?P<subset>[a-z0-9]+(?:_[a-z0-9]+)*?)_(?P<split>train|val|test)_translated_"
    r"(?P<lang>[a-z]{2,3}(?:-[a-z0-9]+)*)\.json$"
)
# English originals of PolyRefuse train/val (the translated test files already have `_en`).
# `harmless_test_500_sampled.json` is deliberately absent: it is not the English source of
# the translated harmless test files (only 31 of its 500 prompts appear there).
_ENGLISH_SOURCE_FILES: dict[tuple[str, str], str] = {
    ("harmful", "train"): "harmful_train.json",
    ("harmful", "val"): "harmful_val.json",
    ("harmful", "test"): "harmful_test.json",
    ("harmless", "train"): "harmless_train_200_sampled.json",
    ("harmless", "val"): "harmless_val_200_sampled.json",
}
_WIDE_RESERVED = {"id", "source_id", "label", "harmful", "split", "category"}
_TEXT_KEYS = ("text", "prompt", "instruction")
_ID_KEYS = ("id", "source_id")

LanguageArg = str | Collection[str] | None
LabelArg = str | Collection[str] | None


# ---------------------------------------------------------------------------------------
# entry points


def load_prompts(
    spec: str | Path,
    *,
    language: LanguageArg = None,
    label: LabelArg = None,
    registry: LanguageRegistry | None = None,
) -> PromptSet:
    """Load prompts from `spec` (see module docstring) as a validated `PromptSet`."""
    reg = registry if registry is not None else default_registry()
    wanted = _Wanted.make(language, label, reg)
    if isinstance(spec, str) and spec.strip().lower() == BUILTIN:
        return load_builtin(wanted=wanted, registry=reg)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_translated_dir(path, wanted=wanted, registry=reg)
    if not path.exists():
        raise DataError(
            f"prompt source not found: {path} (expected a file, a directory or 'builtin')"
        )
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _load_txt(path, wanted, reg)
    if suffix in {".csv", ".tsv"}:
        text = _decode(str(path), path.read_bytes())
        header = _csv_header(str(path), text, suffix)
        if any(key in header for key in _TEXT_KEYS):
            return read_long_file(path, registry=reg, wanted=wanted, text=text)
        return _load_wide_csv(path, text, header, wanted, reg)
    if suffix in {".jsonl", ".json"}:
        return read_long_file(path, registry=reg, wanted=wanted)
    raise DataError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json, .csv, .tsv "
        "or .txt, a PolyRefuse-layout directory, or 'builtin'"
    )


def load_prompt_sources(
    specs: Sequence[str | Path], *, registry: LanguageRegistry | None = None
) -> PromptSet:
    """Concatenate several sources in order (e.g. 'builtin' plus a user's extra JSONL)."""
    if not specs:
        raise DataError("no prompt sources given")
    reg = registry if registry is not None else default_registry()
    sets = [load_prompts(spec, registry=reg) for spec in specs]
    return sets[0].concat(*sets[1:])


def builtin_languages() -> list[str]:
    """Language codes that have a file in the packaged built-in set."""
    return sorted(name[: -len(".jsonl")] for name, _ in _builtin_files())


# ---------------------------------------------------------------------------------------
# requested language / label


@dataclass(frozen=True)
class _Wanted:
    languages: frozenset[str] | None
    labels: frozenset[Label] | None

    @staticmethod
    def make(language: LanguageArg, label: LabelArg, registry: LanguageRegistry) -> _Wanted:
        languages = None
        if language is not None:
            codes = [language] if isinstance(language, str) else list(language)
            languages = frozenset(registry.get(code).code for code in codes)
        labels = None
        if label is not None:
            values = [label] if isinstance(label, str) else list(label)
            try:
                labels = frozenset(normalize_label(value) for value in values)
            except ValueError as exc:
                raise DataError(f"label argument: {exc}") from None
        return _Wanted(languages, labels)

    def keep(self, row: Prompt) -> bool:
        return (self.languages is None or row.language in self.languages) and (
            self.labels is None or row.label in self.labels
        )

    def single_language(self, where: str) -> str:
        if self.languages is None or len(self.languages) != 1:
            raise DataError(f"{where}: has no language field; pass exactly one language=")
        return next(iter(self.languages))

    def single_label(self, where: str) -> Label:
        if self.labels is None or len(self.labels) != 1:
            raise DataError(f"{where}: has no label field; pass label='harmful' or 'harmless'")
        return next(iter(self.labels))


_ALL = _Wanted(None, None)


# ---------------------------------------------------------------------------------------
# decoding helpers


def _decode(name: str, data: bytes) -> str:
    if not data.strip():
        raise DataError(f"{name}: file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None


def _csv_header(name: str, text: str, suffix: str) -> list[str]:
    reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise DataError(f"{name}, line 1: cannot read a CSV header ({exc})") from None
    return [column.strip().lower() for column in header]


def _language_of(value: object, registry: LanguageRegistry, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing language")
    code = normalize_code(value)
    if code not in registry:
        known = ", ".join(registry.codes())
        raise DataError(
            f"{where}: unknown language code {value!r} (known: {known}); "
            "add it with a language file (code, name, script, tier)"
        )
    return code


def _label_of(value: object, where: str) -> Label:
    try:
        return normalize_label(value)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None


def _split_of(value: object, where: str) -> Split:
    try:
        return _normalize_split(value)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None


def _text_of(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: empty or missing prompt text")
    return value


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


class _DuplicateCheck:
    """One (language, label, split, id) per file: ids align translations, so they must be unique."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str, str], str] = {}

    def add(self, row: Prompt, where: str) -> None:
        key = (row.language, row.label, row.split, row.source_id)
        if key in self._seen:
            raise DataError(
                f"{where}: duplicate id {row.source_id!r} for {row.language}/{row.label}/"
                f"{row.split} (first at {self._seen[key]})"
            )
        self._seen[key] = where


# ---------------------------------------------------------------------------------------
# long format (JSONL / JSON / CSV / TSV)


def read_long_file(
    path: Path,
    *,
    registry: LanguageRegistry,
    wanted: _Wanted = _ALL,
    text: str | None = None,
    origin: str | None = None,
    name: str | None = None,
) -> PromptSet:
    """Parse a long-format file: one prompt per record with text, language and label."""
    display = name or str(path)
    if text is None:
        if not path.is_file():
            raise DataError(f"prompt file not found: {path}")
        text = _decode(display, path.read_bytes())
    suffix = path.suffix.lower()
    records = _long_records(display, text, suffix)
    if not records:
        raise DataError(f"{display}: no prompts found")
    row_origin = origin if origin is not None else path.name
    duplicates = _DuplicateCheck()
    rows: list[Prompt] = []
    for index, (where, record) in enumerate(records):
        prompt_text = _text_of(next((record[k] for k in _TEXT_KEYS if k in record), None), where)
        if record.get("language") not in (None, ""):
            lang = _language_of(record["language"], registry, where)
        else:
            lang = wanted.single_language(where)
        if record.get("label") not in (None, ""):
            lab = _label_of(record["label"], where)
        else:
            lab = wanted.single_label(where)
        split_value = record.get("split")
        split = _split_of(split_value, where) if split_value not in (None, "") else "test"
        raw_id = next((record[k] for k in _ID_KEYS if record.get(k) not in (None, "")), None)
        source_id = str(raw_id) if raw_id is not None else str(index)
        category = _optional_str(record.get("category"))
        # an explicit origin (even "") round-trips; otherwise the file names the origin
        given_origin = record.get("origin")
        row_origin_here = str(given_origin) if given_origin is not None else row_origin
        prompt = Prompt(prompt_text, lang, lab, split, source_id, category, row_origin_here)
        duplicates.add(prompt, where)
        if wanted.keep(prompt):
            rows.append(prompt)
    return PromptSet(rows, registry)


def _long_records(display: str, text: str, suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; `where` names the file and 1-based line or record."""
    out: list[tuple[str, dict[str, Any]]] = []
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{display}, line {number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            out.append((where, obj))
        return out
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{display}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, list):
            raise DataError(f"{display}: expected a JSON list of prompt records")
        for number, item in enumerate(obj, start=1):
            where = f"{display}, record {number}"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected an object, got {type(item).__name__}")
            out.append((where, item))
        return out
    if suffix in {".csv", ".tsv"}:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        fields = [name.strip().lower() for name in reader.fieldnames or []]
        if not any(key in fields for key in _TEXT_KEYS):
            raise DataError(f"{display}, line 1: missing column 'text' (columns: {fields})")
        try:
            for raw in reader:
                where = f"{display}, line {reader.line_num}"
                if None in raw:
                    raise DataError(f"{where}: more fields than the header has")
                record = {key.strip().lower(): value for key, value in raw.items() if key}
                if all(value in (None, "") for value in record.values()):
                    continue
                out.append((where, record))
        except csv.Error as exc:
            raise DataError(f"{display}, line {reader.line_num}: malformed CSV ({exc})") from None
        return out
    raise DataError(f"{display}: unsupported long-format file type {suffix!r}")


# ---------------------------------------------------------------------------------------
# plain text


def _load_txt(path: Path, wanted: _Wanted, registry: LanguageRegistry) -> PromptSet:
    text = _decode(str(path), path.read_bytes())
    lang = wanted.single_language(str(path))
    lab = wanted.single_label(str(path))
    rows = [
        Prompt(line.strip(), lang, lab, "test", str(index), None, path.name)
        for index, line in enumerate(line for line in text.splitlines() if line.strip())
    ]
    if not rows:
        raise DataError(f"{path}: no prompts found")
    return PromptSet(rows, registry)


# ---------------------------------------------------------------------------------------
# wide CSV (one column per language)


def _load_wide_csv(
    path: Path, text: str, header: list[str], wanted: _Wanted, registry: LanguageRegistry
) -> PromptSet:
    lang_columns = [c for c in header if c not in _WIDE_RESERVED and normalize_code(c) in registry]
    if not lang_columns:
        raise DataError(
            f"{path}, line 1: no 'text' column and no language-code columns "
            f"(columns: {header}); a long file needs text/language/label, a wide file one "
            "column per language code"
        )
    label_column = "label" if "label" in header else "harmful" if "harmful" in header else None
    fixed_label = None if label_column else wanted.single_label(str(path))
    reader = csv.DictReader(
        io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ","
    )
    reader.fieldnames = header
    next(reader)  # header row, already normalised above
    rows: list[Prompt] = []
    skipped = 0
    duplicates = _DuplicateCheck()
    try:
        for index, raw in enumerate(reader):
            where = f"{path}, line {reader.line_num}"
            if None in raw:
                raise DataError(f"{where}: more fields than the header has")
            lab = _label_of(raw[label_column], where) if label_column else fixed_label
            assert lab is not None
            split_value = raw.get("split")
            split = _split_of(split_value, where) if split_value else "test"
            source_id = (raw.get("id") or raw.get("source_id") or "").strip() or str(index)
            category = _optional_str(raw.get("category"))
            for column in lang_columns:
                value = raw.get(column)
                if value is None or not value.strip():
                    skipped += 1
                    continue
                code = normalize_code(column)
                prompt = Prompt(value, code, lab, split, source_id, category, path.name)
                duplicates.add(prompt, where)
                if wanted.keep(prompt):
                    rows.append(prompt)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    if skipped:
        warnings.warn(f"{path}: {skipped} empty language cells skipped", stacklevel=3)
    if not rows and not wanted.languages:
        raise DataError(f"{path}: no prompts found")
    return PromptSet(rows, registry)


# ---------------------------------------------------------------------------------------
# PolyRefuse layout


def load_translated_dir(
    directory: Path, *, wanted: _Wanted = _ALL, registry: LanguageRegistry | None = None
) -> PromptSet:
    """Read a PolyRefuse-layout directory; a missing language/split file is a warning."""
    reg = registry if registry is not None else default_registry()
    found: dict[tuple[str, str, str], Path] = {}
    for file in sorted(directory.iterdir()):
        match = _TRANSLATED_RE.match(file.name)
        if match and file.is_file():
            found[(match["subset"], match["split"], match["lang"])] = file
    if not found:
        raise DataError(
            f"{directory}: no files named {{harmful,harmless}}_{{train,val,test}}_translated_"
            "{lang}.json (PolyRefuse layout)"
        )
    english_dir = directory / "english_source_splits"
    langs = {lang for _, _, lang in found}
    if english_dir.is_dir():
        langs.add("en")
    subsets = sorted({subset for subset, _, _ in found})
    codes = [_language_of(lang, reg, f"{directory}: file language") for lang in sorted(langs)]
    reg_order = {code: i for i, code in enumerate(reg.codes())}
    codes.sort(key=lambda code: reg_order.get(code, len(reg_order)))
    rows: list[Prompt] = []
    missing: list[str] = []
    for subset in subsets:
        label = _subset_label(subset, wanted, directory)
        if wanted.labels is not None and label not in wanted.labels:
            continue
        for code in codes:
            if wanted.languages is not None and code not in wanted.languages:
                continue
            for split in SPLITS:
                source = found.get((subset, split, code))
                if source is None and code == "en" and subset in {"harmful", "harmless"}:
                    english = _ENGLISH_SOURCE_FILES.get((subset, split))
                    if english and (english_dir / english).is_file():
                        source = english_dir / english
                if source is None:
                    if _expected(found, subset, split):
                        missing.append(f"{subset}_{split}_translated_{code}.json")
                    continue
                rows.extend(_read_translated_file(source, subset, label, split, code, reg))
    if missing:
        warnings.warn(
            f"{directory}: missing {len(missing)} file(s): {', '.join(missing)}", stacklevel=3
        )
    return PromptSet(rows, reg)


def _expected(found: dict[tuple[str, str, str], Path], subset: str, split: str) -> bool:
    """A subset/split is expected for every language if any language has it."""
    return any(s == subset and sp == split for s, sp, _ in found)


def _subset_label(subset: str, wanted: _Wanted, directory: Path) -> Label:
    if subset in {"harmful", "harmless"}:
        return subset  # type: ignore[return-value]
    return wanted.single_label(f"{directory} (files '{subset}_*_translated_*.json')")


def _read_translated_file(
    file: Path, subset: str, label: Label, split: str, code: str, registry: LanguageRegistry
) -> list[Prompt]:
    text = _decode(str(file), file.read_bytes())
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of records")
    origin = f"polyrefuse:{subset}" if subset not in {"harmful", "harmless"} else "polyrefuse"
    rows: list[Prompt] = []
    for index, record in enumerate(records):
        where = f"{file}, record {index + 1}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object")
        # Raw upstream test files keep English in `instruction` and the translation in
        # `instruction_translated`; the normalised layout has only `instruction`.
        value = record.get("instruction_translated") or record.get("instruction")
        prompt_text = _text_of(value, where)
        raw_id = record.get("source_id")
        source_id = str(raw_id) if raw_id not in (None, "") else str(index)
        category = _optional_str(record.get("category"))
        rows.append(
            Prompt(prompt_text, code, label, split, source_id, category, origin)  # type: ignore[arg-type]
        )
    return rows


# ---------------------------------------------------------------------------------------
# built-in set


def _builtin_files() -> list[tuple[str, bytes]]:
    root = resources.files("babelgate.data").joinpath("builtin")
    if not root.is_dir():
        return []
    return sorted(
        (entry.name, entry.read_bytes())
        for entry in root.iterdir()
        if entry.is_file() and entry.name.endswith(".jsonl") and not entry.name.startswith(".")
    )


def load_builtin(*, wanted: _Wanted = _ALL, registry: LanguageRegistry | None = None) -> PromptSet:
    """The packaged prompt set, every language file that exists."""
    reg = registry if registry is not None else default_registry()
    files = _builtin_files()
    if not files:
        raise DataError("the built-in prompt set is missing from this installation")
    sets: list[PromptSet] = []
    for name, data in files:
        code = name[: -len(".jsonl")]
        if wanted.languages is not None and code not in wanted.languages:
            continue
        display = f"builtin/{name}"
        text = _decode(display, data)
        part = read_long_file(
            Path(name), registry=reg, wanted=wanted, text=text, origin=BUILTIN, name=display
        )
        stray = {row.language for row in part} - {code}
        if stray:
            raise DataError(f"{display}: rows in language(s) {sorted(stray)}, expected {code!r}")
        sets.append(part)
    if not sets:
        return PromptSet((), reg)
    return sets[0].concat(*sets[1:])
