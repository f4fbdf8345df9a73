"""Shared pieces of the baselines: class activations from prompts, the unconditional session,
and a per-call session with per-row outcomes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from babelgate.capture import Position, capture, resolve_layers
from babelgate.errors import DataError
from babelgate.formatting import Message
from babelgate.generation import MethodSession, RowOutcome
from babelgate.hooks import EditFn, StepState, steering
from babelgate.models import ModelHandle

Prompts = Sequence[str | Sequence[Message]]


def class_activations(
    handle: ModelHandle,
    harmful: Prompts,
    harmless: Prompts,
    layers: int | Sequence[int] | str,
    position: Position = "last",
    *,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(harmful [n, L, d], harmless [m, L, d], layer list) float32, chat-formatted exactly as
    at generation time (same template, generation prompt included)."""
    if not harmful or not harmless:
        raise DataError(
            f"need harmful and harmless examples, got {len(harmful)} and {len(harmless)}"
        )
    layer_list = resolve_layers(handle, layers)
    both = capture(
        handle,
        [*harmful, *harmless],
        layer_list,
        position,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
    )
    return both[: len(harmful)], both[len(harmful) :], layer_list


def check_class_acts(harmful: torch.Tensor, harmless: torch.Tensor, n_layers: int, d: int) -> None:
    for name, acts in (("harmful", harmful), ("harmless", harmless)):
        if acts.ndim != 3 or acts.shape[1] != n_layers or acts.shape[2] != d or acts.shape[0] == 0:
            raise DataError(
                f"{name} activations must be [n, {n_layers}, {d}], got {tuple(acts.shape)}"
            )
        if not bool(torch.isfinite(acts).all()):
            raise DataError(f"{name} activations contain NaN or infinite values")


class RowsSession(MethodSession):
    """Per-call session of a baseline: its edit function closes over this object, which
    collects per-row outcomes as the method decides them (one list per generate call)."""

    def __init__(self, languages: Sequence[str | None] | str | None) -> None:
        self.languages = languages
        self.calls: list[list[RowOutcome]] = []
        self.sequence = 0
        self.data: dict[str, Any] = {}

    def outcomes(self) -> list[RowOutcome]:
        if not self.calls:
            return []
        return self.calls[-1]


@contextmanager
def run_session(
    handle: ModelHandle,
    layers: Sequence[int],
    languages: Sequence[str | None] | str | None,
    make_edit: Callable[[RowsSession], EditFn],
) -> Iterator[RowsSession]:
    """Install `make_edit(session)` on `layers` for the duration of the block."""
    session = RowsSession(languages)
    with steering(handle.model, handle.blocks, layers, make_edit(session)):
        yield session


def new_sequence(session: RowsSession, state: StepState) -> bool:
    """True once per generate call (at its prefill), for per-call bookkeeping."""
    if session.sequence != state.n_sequences:
        session.sequence = state.n_sequences
        return True
    return False
