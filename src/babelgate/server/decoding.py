"""Per-row bookkeeping of one batched `generate` call: incremental detokenisation, stop
strings, per-row token budgets, cancellation, and text deltas for streaming.

`RowDecoder` is the pure per-row logic. `BatchTracker` is a transformers `StoppingCriteria`
that feeds each row's newest token to its decoder after every decoding step and returns
the rows that are finished, so one batch can mix requests with different `max_tokens` and
`stop` lists and a finished row stops costing decode work (it is padded from then on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"


@dataclass
class RowDecoder:
    """Detokenises one row's generated ids and decides when the row is finished.

    Text is released (via `take_delta`) only when it can no longer change: characters that
    might still turn into a stop string, and trailing U+FFFD of an incomplete multi-byte
    character, are held back until the next token settles them.
    """

    decode: Callable[[list[int]], str]
    max_tokens: int
    stop: Sequence[str] = ()
    eos_ids: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> None:
        """Add the row's next generated token (ignored once the row is finished)."""
        if self.done:
            return
        if token in self.eos_ids:
            self.finish_reason = FINISH_STOP
            return
        self.tokens.append(token)
        previous = len(self.text)
        self.text = self.decode(self.tokens)
        if self.stop:
            # A stop string can only end inside the newly decoded text.
            longest = max(len(s) for s in self.stop)
            start = max(0, min(previous, self.emitted) - longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = FINISH_STOP
                return
        if len(self.tokens) >= self.max_tokens:
            self.finish_reason = FINISH_LENGTH

    def cancel(self) -> None:
        if not self.done:
            self.finish_reason = FINISH_CANCELLED

    def finish(self, reason: str = FINISH_LENGTH) -> None:
        """Mark an unfinished row as finished (e.g. the model's length limit was reached)."""
        if not self.done:
            self.finish_reason = reason

    def take_delta(self) -> str:
        """Text not yet released that can no longer change (all of it once finished)."""
        end = len(self.text)
        if not self.done:
            held = max((len(s) for s in self.stop), default=1) - 1
            end -= held
            while end > self.emitted and self.text[end - 1] == "\ufffd":
                end -= 1
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta


class BatchTracker(StoppingCriteria):
    """Stopping criterion over a batch of `RowDecoder`s.

    After each decoding step it pushes `input_ids[:, -1]` to every unfinished row, asks
    `is_cancelled(row)`, and calls `on_step(step_index)` (where the caller emits deltas).
    Returns bool [batch]: True for finished rows.
    """

    def __init__(
        self,
        rows: Sequence[RowDecoder],
        on_step: Callable[[int], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> None:
        self.rows = list(rows)
        self.on_step = on_step
        self.is_cancelled = is_cancelled
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            if self.is_cancelled is not None and self.is_cancelled(i):
                row.cancel()
                continue
            row.push(int(newest[i]))
        if self.on_step is not None:
            self.on_step(self.steps)
        self.steps += 1
        done = torch.tensor(
            [row.done for row in self.rows], dtype=torch.bool, device=input_ids.device
        )
        return done  # type: ignore[return-value]
