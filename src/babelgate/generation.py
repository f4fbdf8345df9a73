"""Batched generation shared by every method: plain greedy generation (`generate_texts`), the
completion record (`GuardedCompletion`) and the base class whose `generate` every steering
method (guard and baselines) inherits.

Conventions (method-reference §2.3): chat-templated prompts, left padding,
`add_special_tokens=False`, greedy decoding by default, repetition penalty 1.0, and only the
continuation is decoded (`skip_special_tokens=True`). Prompts are batched by token length
(less padding); results come back in prompt order.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from babelgate.errors import BabelgateError, DataError
from babelgate.formatting import Message
from babelgate.models import ModelHandle
from babelgate.progress import advance, progress_bar


@dataclass
class RowOutcome:
    """What a method decided for one row of a batch (None where the method has no notion)."""

    fired: bool | None = None
    score: float | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    language_fallback: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GuardedCompletion:
    """One generated completion with the method's per-row decision.

    `fired`: the row was routed to refusal steering (guard / CAST: the gate or condition
    fired; addition: always; ablation: never). `threshold_source`: "calibrated" or "source"
    for gate methods; `language_fallback`: the row's language was unknown or not calibrated,
    so the source-only threshold was used.
    """

    prompt: str
    completion: str
    language: str | None
    method: str
    fired: bool | None
    score: float | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    language_fallback: bool = False
    n_new_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MethodSession(ABC):
    """A steering context for one batch; after the generate call, `outcomes()` gives one
    `RowOutcome` per row of the batch (in batch order)."""

    @abstractmethod
    def outcomes(self) -> list[RowOutcome]: ...


def generation_config(
    handle: ModelHandle, *, max_new_tokens: int, do_sample: bool = False, **overrides: Any
) -> tuple[Any, dict[str, Any]]:
    """(GenerationConfig, remaining kwargs for `generate`) with the §2.3 defaults.

    Starts from the model's own generation config; greedy unless `do_sample`, repetition
    penalty 1.0, pad token from the tokenizer. Keys of `overrides` that are generation
    config fields are set on the config, the rest are returned for `generate`.
    """
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 1
    ):
        raise BabelgateError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    cfg: Any = copy.deepcopy(handle.model.generation_config)
    cfg.max_new_tokens = max_new_tokens
    cfg.max_length = None
    cfg.do_sample = bool(do_sample)
    cfg.repetition_penalty = 1.0
    if not do_sample:
        cfg.temperature, cfg.top_p, cfg.top_k = None, None, None
    cfg.pad_token_id = handle.tokenizer.pad_token_id
    if cfg.eos_token_id is None:
        cfg.eos_token_id = handle.tokenizer.eos_token_id
    rest = cfg.update(**overrides)
    return cfg, rest


def _stop_ids(cfg: Any, handle: ModelHandle) -> set[int]:
    eos = cfg.eos_token_id
    ids = set(eos if isinstance(eos, list | tuple) else [eos]) if eos is not None else set()
    if handle.tokenizer.pad_token_id is not None:
        ids.add(int(handle.tokenizer.pad_token_id))
    return {int(i) for i in ids}


def _new_token_count(row: torch.Tensor, stop: set[int]) -> int:
    """Generated tokens up to and including the first stop token."""
    for i, tok in enumerate(row.tolist()):
        if tok in stop:
            return i + 1
    return int(row.shape[0])


def batch_order(handle: ModelHandle, formatted: Sequence[str], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches by token length (longest first); deterministic."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BabelgateError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = [
        len(ids) for ids in handle.tokenizer(list(formatted), add_special_tokens=False)["input_ids"]
    ]
    order = sorted(range(len(formatted)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class _Generated:
    text: str
    n_new_tokens: int
    outcome: RowOutcome | None


SessionFactory = Callable[[list[int]], AbstractContextManager[MethodSession | None]]


def generate_rows(
    handle: ModelHandle,
    prompts: Sequence[str | Sequence[Message]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    progress: bool = True,
    session: SessionFactory | None = None,
    description: str = "generate",
    seed: int | None = 0,
    **generate_kwargs: Any,
) -> list[_Generated]:
    """Generate for every prompt; `session(rows)` (prompt indices of the batch) wraps each
    batch's `generate` call in a steering context. Returns one result per prompt, in order."""
    if not prompts:
        raise DataError("no prompts to generate for")
    cfg, rest = generation_config(
        handle, max_new_tokens=max_new_tokens, do_sample=do_sample, **generate_kwargs
    )
    if do_sample and seed is not None:
        torch.manual_seed(int(seed))
    formatted = handle.format(prompts)
    stop = _stop_ids(cfg, handle)
    results: list[_Generated | None] = [None] * len(prompts)
    with progress_bar(description, total=len(prompts), enabled=progress) as bar:
        for rows in batch_order(handle, formatted, batch_size):
            batch = handle.tokenize([formatted[i] for i in rows])
            context = session(rows) if session is not None else nullcontext(None)
            with torch.no_grad(), context as active:
                out = handle.model.generate(**batch, generation_config=cfg, **rest)  # type: ignore[operator]
            outcomes = active.outcomes() if active is not None else None
            new = out[:, batch["input_ids"].shape[1] :]
            texts = handle.tokenizer.batch_decode(new, skip_special_tokens=True)
            for j, i in enumerate(rows):
                results[i] = _Generated(
                    text=texts[j],
                    n_new_tokens=_new_token_count(new[j], stop),
                    outcome=outcomes[j] if outcomes is not None else None,
                )
            advance(bar, len(rows))
    return [r for r in results if r is not None]


def generate_texts(
    handle: ModelHandle,
    prompts: Sequence[str | Sequence[Message]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Plain (unsteered) batched generation: the decoded continuation of each prompt."""
    rows = generate_rows(
        handle,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        do_sample=do_sample,
        progress=progress,
        **generate_kwargs,
    )
    return [r.text for r in rows]


def _languages(languages: Sequence[str | None] | str | None, n: int) -> list[str | None]:
    if languages is None or isinstance(languages, str):
        return [languages] * n
    codes = list(languages)
    if len(codes) != n:
        raise DataError(f"{len(codes)} languages given for {n} prompts")
    return codes


class SteeringMethod(ABC):
    """The interface shared by the guard and the baselines.

    Subclasses provide `name`, `session(languages)` (a context that steers the model's own
    `generate` for one batch) and `describe()` (parameters and example budget).
    """

    name: str = "method"
    handle: ModelHandle

    @abstractmethod
    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def generate(
        self,
        prompts: Sequence[str | Sequence[Message]],
        languages: Sequence[str | None] | str | None = None,
        *,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        do_sample: bool = False,
        progress: bool = True,
        **generate_kwargs: Any,
    ) -> list[GuardedCompletion]:
        """Steered completions, one record per prompt (greedy by default)."""
        codes = _languages(languages, len(prompts))
        rows = generate_rows(
            self.handle,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            do_sample=do_sample,
            progress=progress,
            session=lambda idx: self.session([codes[i] for i in idx]),
            description=self.name,
            **generate_kwargs,
        )
        out = []
        for prompt, code, row in zip(prompts, codes, rows, strict=True):
            outcome = row.outcome or RowOutcome()
            out.append(
                GuardedCompletion(
                    prompt=prompt if isinstance(prompt, str) else str(list(prompt)),
                    completion=row.text,
                    language=code,
                    method=self.name,
                    fired=outcome.fired,
                    score=outcome.score,
                    threshold=outcome.threshold,
                    threshold_source=outcome.threshold_source,
                    language_fallback=outcome.language_fallback,
                    n_new_tokens=row.n_new_tokens,
                    extra=dict(outcome.extra),
                )
            )
        return out


class _NoSession(MethodSession):
    def __init__(self, n: int) -> None:
        self.n = n

    def outcomes(self) -> list[RowOutcome]:
        return [RowOutcome() for _ in range(self.n)]


class Unsteered(SteeringMethod):
    """The "none" method: plain generation behind the common interface (fired is None)."""

    name = "none"

    def __init__(self, handle: ModelHandle) -> None:
        self.handle = handle

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]:
        n = len(languages) if languages is not None and not isinstance(languages, str) else 0
        return nullcontext(_NoSession(n))

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "budget": {"examples": 0}}
