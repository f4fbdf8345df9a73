"""The model side of the server: guarded batched chat generation and batched moderation.

Everything here runs on the batcher's single worker thread: forward hooks live on shared
modules (the capture hooks of moderation are not session-scoped), so model calls are never
concurrent. Results go back to the caller through each job's `emit` callback.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import StoppingCriteriaList

from babelgate.errors import BabelgateError
from babelgate.formatting import Message, format_chat, prepare_tokenizer
from babelgate.gate import Gate
from babelgate.generation import RowOutcome, generation_config
from babelgate.guard import Guard
from babelgate.models import ModelHandle
from babelgate.server.decoding import FINISH_LENGTH, BatchTracker, RowDecoder
from babelgate.server.metrics import ServerMetrics


@dataclass
class Verdict:
    """The gate's routing of one row (from the prefill of its own generate call)."""

    fired: bool
    score: float
    threshold: float
    threshold_source: str

    @classmethod
    def from_outcome(cls, outcome: RowOutcome) -> Verdict:
        if outcome.fired is None or outcome.score is None:
            raise BabelgateError("the guard made no decision for a row")
        return cls(
            fired=bool(outcome.fired),
            score=float(outcome.score),
            threshold=float(outcome.threshold) if outcome.threshold is not None else float("nan"),
            threshold_source=str(outcome.threshold_source or "source"),
        )

    @property
    def decision(self) -> str:
        return "refuse_steer" if self.fired else "ablate"


# Events a chat job receives, in order: Started, Delta*, Finished — or Failed at any point.
@dataclass
class Started:
    verdict: Verdict


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str
    completion_tokens: int
    text: str


@dataclass
class Failed:
    error: BaseException


Event = Started | Delta | Finished | Failed


@dataclass
class ChatJob:
    """One chat request: prompt ids [seq] (chat-templated, no special tokens added)."""

    input_ids: list[int]
    language: str | None
    max_tokens: int
    emit: Callable[[Event], None]
    stop: Sequence[str] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one `generate` call. A seeded sampled job is never
        batched: its random stream must not depend on its neighbours."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", id(self))
        return ("sample", self.temperature, self.top_p)


@dataclass
class ModerationJob:
    """Texts to score (each formatted as one user turn) with one gate language per text."""

    texts: list[str]
    languages: list[str | None]
    emit: Callable[[list[Verdict] | BaseException], None]


class ServingEngine(Protocol):
    """What the HTTP app needs from a back end (`Engine` here, `VllmEngine` on vLLM)."""

    name: str
    gate: Gate
    fingerprint: str

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def run_chat(self, jobs: Sequence[ChatJob], metrics: ServerMetrics | None = None) -> None: ...

    def run_moderation(
        self, jobs: Sequence[ModerationJob], metrics: ServerMetrics | None = None
    ) -> None: ...


class PromptEncoder:
    """Chat templating and token counting on the event loop's own tokenizer copy (a fast
    tokenizer's padding state is shared mutable state, so the worker thread and the event
    loop must not share one). Shared by every serving back end."""

    def __init__(self, tokenizer: Any, system_prompt: str | None) -> None:
        self.request_tokenizer = prepare_tokenizer(copy.deepcopy(tokenizer))
        self.system_prompt = system_prompt

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Chat-templated token ids of a conversation."""
        text = format_chat(self.request_tokenizer, list(messages), self.system_prompt)
        ids = self.request_tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of moderation inputs as they will be scored (one user turn each)."""
        return [len(ids) for ids in self.moderation_ids(texts)]

    def moderation_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text formatted as one user turn."""
        formatted = [format_chat(self.request_tokenizer, t, self.system_prompt) for t in texts]
        encoded = self.request_tokenizer(formatted, add_special_tokens=False)["input_ids"]
        return [[int(i) for i in ids] for ids in encoded]


class Engine(PromptEncoder):
    """A guarded model ready to serve. `name` is the model name clients must send."""

    def __init__(
        self,
        handle: ModelHandle,
        gate: Gate,
        *,
        name: str | None = None,
        alpha: float | None = None,
        lam: float | None = None,
        moderation_batch_size: int = 16,
    ) -> None:
        self.handle = handle
        self.gate = gate
        self.guard = Guard(handle, gate, alpha=alpha, lam=lam)
        self.name = name or handle.name
        self.moderation_batch_size = moderation_batch_size
        super().__init__(handle.tokenizer, handle.system_prompt)
        eos: Any = getattr(handle.model, "generation_config", None)
        eos = getattr(eos, "eos_token_id", None)
        eos_list = eos if isinstance(eos, list | tuple) else [eos]
        ids = {int(i) for i in eos_list if i is not None}
        if handle.tokenizer.eos_token_id is not None:
            ids.add(int(handle.tokenizer.eos_token_id))
        self.eos_ids = frozenset(ids)
        pad = handle.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos_ids)))
        self.fingerprint = handle.fingerprint
        # Held around every model call: several apps (each with its own worker) may share
        # one engine, and capture hooks must never see another call's forward.
        self.lock = threading.Lock()

    # ----------------------------------------------------------------- worker side
    def _decode(self, ids: list[int]) -> str:
        return str(self.handle.tokenizer.decode(ids, skip_special_tokens=True))

    def _pad(self, rows: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-padded input_ids / attention_mask [batch, seq] on the model's device."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        device = self.handle.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def run_chat(self, jobs: Sequence[ChatJob], metrics: ServerMetrics | None = None) -> None:
        """Generate for a batch of compatible jobs in one guarded `generate` call."""
        first = jobs[0]
        if any(job.batch_key() != first.batch_key() for job in jobs):
            raise BabelgateError("incompatible sampling settings in one batch")
        rows = [
            RowDecoder(self._decode, job.max_tokens, tuple(job.stop), self.eos_ids) for job in jobs
        ]
        started = [False] * len(jobs)

        def on_step(_step: int) -> None:
            if not all(started):
                outcomes = session.outcomes()
                for i, job in enumerate(jobs):
                    if not started[i]:
                        started[i] = True
                        job.emit(Started(Verdict.from_outcome(outcomes[i])))
            for job, row in zip(jobs, rows, strict=True):
                delta = row.take_delta()
                if delta:
                    job.emit(Delta(delta))

        tracker = BatchTracker(rows, on_step, lambda i: jobs[i].cancelled.is_set())
        overrides: dict[str, Any] = {}
        if not first.greedy:
            overrides = {"temperature": first.temperature, "top_p": first.top_p, "top_k": 0}
        cfg, rest = generation_config(
            self.handle,
            max_new_tokens=max(job.max_tokens for job in jobs),
            do_sample=not first.greedy,
            **overrides,
        )
        batch = self._pad([job.input_ids for job in jobs])
        if metrics is not None:
            metrics.batch_size.observe(len(jobs), kind="chat")
        try:
            with (
                self.lock,
                torch.no_grad(),
                self.guard.attached([job.language for job in jobs]) as session,
            ):
                if first.seed is not None and not first.greedy:
                    torch.manual_seed(first.seed)
                self.handle.model.generate(  # type: ignore[operator]
                    **batch,
                    generation_config=cfg,
                    stopping_criteria=StoppingCriteriaList([tracker]),
                    **rest,
                )
        except Exception as exc:
            for job in jobs:
                job.emit(Failed(exc))
            return
        for job, row, was_started in zip(jobs, rows, started, strict=True):
            if not was_started:  # generate made no step at all (should not happen)
                job.emit(Failed(BabelgateError("generation produced no tokens")))
                continue
            row.finish(FINISH_LENGTH)
            delta = row.take_delta()
            if delta:
                job.emit(Delta(delta))
            job.emit(Finished(row.finish_reason or FINISH_LENGTH, len(row.tokens), row.text))
            if metrics is not None:
                metrics.tokens.inc(len(row.tokens))

    def run_moderation(
        self, jobs: Sequence[ModerationJob], metrics: ServerMetrics | None = None
    ) -> None:
        """Score every text of every job: forward to block L only, batched by length."""

        def score(texts: list[str], languages: list[str | None]) -> list[Verdict]:
            with self.lock:
                outcomes = self.guard.decide(
                    texts, languages, batch_size=self.moderation_batch_size, progress=False
                )
            return [Verdict.from_outcome(o) for o in outcomes]

        n_texts = answer_moderation(jobs, score)
        if metrics is not None:
            for start in range(0, n_texts, self.moderation_batch_size):
                size = min(self.moderation_batch_size, n_texts - start)
                metrics.batch_size.observe(size, kind="moderation")


def answer_moderation(
    jobs: Sequence[ModerationJob],
    score: Callable[[list[str], list[str | None]], list[Verdict]],
) -> int:
    """Score the texts of all jobs in one call and hand each job its slice of the verdicts
    (or the error, to every job). Returns the number of texts scored (0 after an error)."""
    texts = [t for job in jobs for t in job.texts]
    languages = [lang for job in jobs for lang in job.languages]
    try:
        verdicts = score(texts, languages)
    except Exception as exc:
        for job in jobs:
            job.emit(exc)
        return 0
    offset = 0
    for job in jobs:
        job.emit(verdicts[offset : offset + len(job.texts)])
        offset += len(job.texts)
    return len(texts)
