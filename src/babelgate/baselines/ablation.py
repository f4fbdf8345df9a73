"""Unconditional directional ablation (method-reference §6.4; Arditi et al. style).

h ← h − (h·v̂)v̂ at every token and step, on every block of `layers`, for every prompt.
Default `layers="all"`: the direction is taken at one layer (`direction_layer`) and removed
from every block, as in Arditi et al.; `layers=[L]` reproduces the paper's single-layer
variant (later blocks may re-introduce the component).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from babelgate.baselines.base import (
    Prompts,
    RowsSession,
    class_activations,
    new_sequence,
    run_session,
)
from babelgate.capture import resolve_layers
from babelgate.directions import diff_of_means, unit
from babelgate.gate import Gate
from babelgate.generation import MethodSession, RowOutcome, SteeringMethod
from babelgate.hooks import StepState, ablate_direction, expand_rows
from babelgate.models import ModelHandle


class DirectionalAblation(SteeringMethod):
    """Remove v̂ at all tokens of the chosen blocks. `fired` is False for every row."""

    name = "ablation"

    def __init__(
        self,
        handle: ModelHandle,
        direction: torch.Tensor,
        *,
        layers: int | Sequence[int] | str = "all",
        direction_layer: int | None = None,
        budget: dict[str, Any] | None = None,
    ) -> None:
        self.handle = handle
        self.direction = unit(torch.as_tensor(direction).reshape(-1))
        if self.direction.shape[0] != handle.hidden_size:
            raise ValueError(
                f"direction has d={self.direction.shape[0]}, model has {handle.hidden_size}"
            )
        self.layers = tuple(resolve_layers(handle, layers))
        self.direction_layer = direction_layer
        self.budget = budget or {}

    @classmethod
    def fit(
        cls,
        handle: ModelHandle,
        harmful: Prompts,
        harmless: Prompts,
        *,
        direction_layer: int,
        layers: int | Sequence[int] | str = "all",
        batch_size: int = 8,
        cache: bool = True,
        progress: bool = True,
    ) -> DirectionalAblation:
        """v̂ = unit difference of means of last-token activations at `direction_layer`."""
        pos, neg, _ = class_activations(
            handle,
            harmful,
            harmless,
            [direction_layer],
            batch_size=batch_size,
            cache=cache,
            progress=progress,
        )
        direction = diff_of_means(pos[:, 0], neg[:, 0])
        budget = {"harmful": len(harmful), "harmless": len(harmless)}
        return cls(handle, direction, layers=layers, direction_layer=direction_layer, budget=budget)

    @classmethod
    def from_gate(
        cls, handle: ModelHandle, gate: Gate, *, layers: int | Sequence[int] | str = "all"
    ) -> DirectionalAblation:
        """The gate's v̂ (from its layer), ablated on `layers`."""
        budget = {"source_rows": gate.fit_stats.get("n_rows"), "from": "gate"}
        return cls(handle, gate.direction, layers=layers, direction_layer=gate.layer, budget=budget)

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]:
        def make_edit(session: RowsSession):  # type: ignore[no-untyped-def]
            def edit(layer: int, hidden: torch.Tensor, state: StepState) -> torch.Tensor:
                if new_sequence(session, state):
                    n = hidden.shape[0]
                    langs = languages if isinstance(languages, list | tuple) else [languages] * n
                    session.calls.append(
                        [RowOutcome(fired=False) for _ in expand_rows(list(langs), n)]
                    )
                mask = state.mask("all", None, hidden.shape[0], hidden.device)
                return ablate_direction(hidden, self.direction, mask)

            return edit

        return run_session(self.handle, self.layers, languages, make_edit)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "layers": list(self.layers),
            "direction_layer": self.direction_layer,
            "scope": "all",
            "budget": self.budget,
        }
