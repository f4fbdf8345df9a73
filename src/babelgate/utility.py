"""Utility: MMLU-style multiple choice scored by answer-letter logits (method-reference §8.7).

Each question becomes the zero-shot user turn
``{question}\\n\\nA. …\\nB. …\\nC. …\\nD. …\\n\\nAnswer:`` through the chat template with the
generation prompt. One forward pass per batch, no generation: for each letter the logits of its
single-token spellings ("A", " A", "A.", " A.") are read at the final prompt position and the
maximum is the letter's score; the prediction is the best letter.

A method (the guard or a baseline) takes part through its `session(languages)` context, which
installs its hooks for the forward pass; for the guard this routes every row by the gate exactly
as in generation's prefill step, and the rows on which it fired give the gate's fire rate on
benign questions (a false-positive rate).

Loaders: a packaged set of 40 English questions (`builtin`), MMLU CSV directories or files
(headerless `question,A,B,C,D,answer` as in the original release, or with a
`question,choice0..3,answer` header and 0–3 answers), and the Global-MMLU column layout
(`question, option_a..option_d, answer, subject, …`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import torch

from babelgate.errors import DataError
from babelgate.models import ModelHandle
from babelgate.progress import advance, progress_bar

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
BUILTIN_MCQ = "builtin"
_VARIANTS = ("{L}", " {L}", "{L}.", " {L}.")


@dataclass(frozen=True)
class MCQuestion:
    """One four-way multiple-choice question; `answer` is the index 0–3 of the right choice."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str = ""
    language: str = "en"
    qid: str = ""

    def prompt(self) -> str:
        """The zero-shot user turn of method-reference §8.7."""
        options = "\n".join(
            f"{letter}. {text}" for letter, text in zip(LETTERS, self.choices, strict=True)
        )
        return f"{self.question}\n\n{options}\n\nAnswer:"


# ------------------------------------------------------------------------------- loaders
def _answer_index(value: object, where: str) -> int:
    text = str(value).strip()
    if text.upper() in LETTERS:
        return LETTERS.index(text.upper())
    if text in {"0", "1", "2", "3"}:
        return int(text)
    raise DataError(f"{where}: answer {value!r} is not one of A-D or 0-3")


def _question(
    raw_q: object, choices: Sequence[object], answer: object, where: str, **extra: Any
) -> MCQuestion:
    question = str(raw_q or "").strip()
    if not question:
        raise DataError(f"{where}: empty question")
    texts = [str(c if c is not None else "").strip() for c in choices]
    if len(texts) != 4:
        raise DataError(f"{where}: expected 4 choices, got {len(texts)}")
    return MCQuestion(
        question, (texts[0], texts[1], texts[2], texts[3]), _answer_index(answer, where), **extra
    )


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return [row for row in csv.reader(io.StringIO(text)) if row]


_GLOBAL_COLUMNS = ("question", "option_a", "option_b", "option_c", "option_d", "answer")
_MMLU_HEADER = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def _subject_from_name(path: Path) -> str:
    stem = path.stem
    for suffix in ("_test", "_dev", "_val"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def load_mmlu_csv(path: str | Path, *, language: str = "en") -> list[MCQuestion]:
    """Questions from one CSV: MMLU without header (question, A, B, C, D, letter), MMLU with a
    `question,choice0..3,answer` header (0–3 answers), or the Global-MMLU columns."""
    file = Path(path)
    rows = _read_csv_rows(file)
    if not rows:
        raise DataError(f"{file} has no rows")
    header = [h.strip().lower() for h in rows[0]]
    out: list[MCQuestion] = []
    if all(col in header for col in _GLOBAL_COLUMNS):
        idx = {name: header.index(name) for name in header}
        for n, row in enumerate(rows[1:], start=2):
            where = f"{file}:{n}"
            if len(row) < len(header):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            subject = row[idx["subject"]].strip() if "subject" in idx else _subject_from_name(file)
            qid = row[idx["sample_id"]].strip() if "sample_id" in idx else f"{file.stem}-{n - 1}"
            out.append(
                _question(
                    row[idx["question"]],
                    [row[idx[f"option_{c}"]] for c in "abcd"],
                    row[idx["answer"]],
                    where,
                    subject=subject,
                    language=language,
                    qid=qid,
                )
            )
        return out
    body = rows[1:] if tuple(header[:6]) == _MMLU_HEADER else rows
    subject = _subject_from_name(file)
    for n, row in enumerate(body, start=1):
        where = f"{file}:{n + (len(rows) - len(body))}"
        if len(row) != 6:
            raise DataError(
                f"{where}: expected 6 fields (question, A, B, C, D, answer), got {len(row)}"
            )
        out.append(
            _question(
                row[0],
                row[1:5],
                row[5],
                where,
                subject=subject,
                language=language,
                qid=f"{subject}-{n}",
            )
        )
    return out


def load_builtin_mcq() -> list[MCQuestion]:
    """The packaged 40 English general-knowledge questions (written for this project)."""
    text = resources.files("babelgate.data").joinpath("mcq_en.jsonl").read_text(encoding="utf-8")
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rec = json.loads(line)
        out.append(
            _question(
                rec["question"],
                rec["choices"],
                rec["answer"],
                f"mcq_en.jsonl:{n}",
                subject=rec.get("subject", ""),
                language="en",
                qid=rec.get("id", str(n)),
            )
        )
    return out


def load_mcq(
    spec: str | Path,
    *,
    split: str = "test",
    language: str = "en",
    limit: int | None = None,
    seed: int = 0,
) -> list[MCQuestion]:
    """Questions from `builtin`, a CSV file, or an MMLU directory (`{dev,test}/*.csv`, or a
    directory of CSVs). `limit` draws a seeded sample of that size, spread over subjects."""
    if isinstance(spec, str) and spec.strip().lower() == BUILTIN_MCQ:
        questions = load_builtin_mcq()
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            questions = load_mmlu_csv(path, language=language)
        elif path.is_dir():
            folder = path / split if (path / split).is_dir() else path
            files = sorted(folder.glob("*.csv"))
            if not files:
                raise DataError(f"no .csv files in {folder}")
            questions = [q for f in files for q in load_mmlu_csv(f, language=language)]
        else:
            raise DataError(f"multiple-choice data not found: {path}")
    if not questions:
        raise DataError(f"no questions in {spec}")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        questions = sample_questions(questions, limit, seed)
    return questions


def sample_questions(questions: Sequence[MCQuestion], n: int, seed: int) -> list[MCQuestion]:
    """A seeded sample of n questions, round-robin over subjects (so small samples are broad)."""
    if n >= len(questions):
        return list(questions)
    rng = random.Random(seed)
    by_subject: dict[str, list[MCQuestion]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    pools = [rng.sample(pool, len(pool)) for _, pool in sorted(by_subject.items())]
    rng.shuffle(pools)
    out: list[MCQuestion] = []
    while len(out) < n:
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


# ------------------------------------------------------------------------------- scoring
def letter_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Per letter, the ids of its spellings that are one token; falls back to the last token of
    the bare letter when none is (method-reference §8.7)."""
    out: dict[str, list[int]] = {}
    for letter in LETTERS:
        ids: list[int] = []
        for pattern in _VARIANTS:
            tokens = tokenizer(pattern.format(L=letter), add_special_tokens=False)["input_ids"]
            if len(tokens) == 1 and tokens[0] not in ids:
                ids.append(int(tokens[0]))
        if not ids:
            ids = [int(tokenizer(letter, add_special_tokens=False)["input_ids"][-1])]
        out[letter] = ids
    return out


class _Session(Protocol):
    def outcomes(self) -> list[Any]: ...


class UtilityMethod(Protocol):
    """What utility needs from a method: a context that installs its hooks for a forward."""

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[Any]: ...


@dataclass
class UtilityResult:
    """Accuracy (%), mean margin (correct score − best wrong score), mean entropy of the
    softmax over the four letter scores, and the gate fire rate (%; None for methods without
    a per-row decision), overall and per subject; `rows` has one prediction per question."""

    method: str
    n: int
    accuracy: float
    mean_margin: float
    mean_entropy: float
    fire_rate: float | None
    n_fired: int | None
    per_subject: dict[str, dict[str, float | int]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_rows: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_rows:
            data.pop("rows")
        return data


@torch.no_grad()
def letter_scores(
    handle: ModelHandle,
    questions: Sequence[MCQuestion],
    method: UtilityMethod | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "utility",
) -> tuple[torch.Tensor, list[bool | None]]:
    """Letter scores float32 [n, 4] (max over single-token spellings) and per-row `fired`."""
    if not questions:
        raise DataError("no questions to score")
    ids = letter_token_ids(handle.tokenizer)
    formatted = handle.format([q.prompt() for q in questions])
    lengths = [len(x) for x in handle.tokenizer(formatted, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(questions)), key=lambda i: (-lengths[i], i))
    scores = torch.empty(len(questions), len(LETTERS))
    fired: list[bool | None] = [None] * len(questions)
    with progress_bar(description, total=len(questions), enabled=progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = handle.tokenize([formatted[i] for i in rows])
            languages = [questions[i].language for i in rows]
            context = method.session(languages) if method is not None else nullcontext(None)
            with context as session:
                logits = handle.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            outcomes = session.outcomes() if session is not None else None
            logits = logits.float().cpu()
            per_letter = [logits[:, ids[letter]].max(dim=-1).values for letter in LETTERS]
            scores[rows] = torch.stack(per_letter, dim=-1)
            if outcomes:
                for j, i in enumerate(rows):
                    fired[i] = outcomes[j].fired
            advance(bar, len(rows))
    return scores, fired


def evaluate_utility(
    handle: ModelHandle,
    questions: Sequence[MCQuestion],
    method: UtilityMethod | None = None,
    *,
    name: str = "none",
    batch_size: int = 8,
    progress: bool = True,
) -> UtilityResult:
    """Score every question under `method` (None = the unmodified model)."""
    scores, fired = letter_scores(
        handle,
        questions,
        method,
        batch_size=batch_size,
        progress=progress,
        description=f"utility {name}",
    )
    answers = torch.tensor([q.answer for q in questions])
    pred = scores.argmax(dim=-1)
    correct = pred == answers
    right = scores.gather(1, answers[:, None])[:, 0]
    wrong = scores.clone()
    wrong.scatter_(1, answers[:, None], -math.inf)
    margin = right - wrong.max(dim=-1).values
    probs = torch.softmax(scores.double(), dim=-1)
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(dim=-1)
    decided = [f for f in fired if f is not None]
    rows = [
        {
            "qid": q.qid,
            "subject": q.subject,
            "language": q.language,
            "answer": LETTERS[q.answer],
            "prediction": LETTERS[int(pred[i])],
            "correct": bool(correct[i]),
            "margin": float(margin[i]),
            "fired": fired[i],
        }
        for i, q in enumerate(questions)
    ]
    per_subject: dict[str, dict[str, float | int]] = {}
    for subject in sorted({q.subject for q in questions}):
        sel = torch.tensor([q.subject == subject for q in questions])
        per_subject[subject] = {
            "n": int(sel.sum()),
            "accuracy": 100.0 * float(correct[sel].double().mean()),
        }
    return UtilityResult(
        method=name,
        n=len(questions),
        accuracy=100.0 * float(correct.double().mean()),
        mean_margin=float(margin.mean()),
        mean_entropy=float(entropy.mean()),
        fire_rate=100.0 * sum(decided) / len(decided) if decided else None,
        n_fired=sum(decided) if decided else None,
        per_subject=per_subject,
        rows=rows,
    )
