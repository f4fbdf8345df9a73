"""Unconditional activation addition: h ← h + α·v̂ at block L, scope last prompt token then
every generated token (method-reference §6.5), for every prompt. α follows the quantile
rule α = λ·(Q0.75(harmful·v̂) − Q0.25(harmless·v̂)) unless given."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from babelgate.alpha import calibrate_alpha
from babelgate.baselines.base import (
    Prompts,
    RowsSession,
    class_activations,
    new_sequence,
    run_session,
)
from babelgate.directions import diff_of_means, unit
from babelgate.errors import BabelgateError
from babelgate.gate import Gate
from babelgate.generation import MethodSession, RowOutcome, SteeringMethod
from babelgate.hooks import Scope, StepState, add_direction, expand_rows
from babelgate.models import ModelHandle


class ActivationAddition(SteeringMethod):
    """Add α·v̂ at `layer` for every row (`fired` is True for every row)."""

    name = "addition"

    def __init__(
        self,
        handle: ModelHandle,
        direction: torch.Tensor,
        alpha: float,
        *,
        layer: int,
        scope: Scope = "last_prompt_then_generated",
        budget: dict[str, Any] | None = None,
        alpha_stats: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= layer < handle.n_layers:
            raise BabelgateError(f"layer {layer} out of range for {handle.n_layers} blocks")
        self.handle = handle
        self.direction = unit(torch.as_tensor(direction).reshape(-1))
        self.alpha = float(alpha)
        self.layer = int(layer)
        self.scope: Scope = scope
        self.budget = budget or {}
        self.alpha_stats = alpha_stats or {}

    @classmethod
    def fit(
        cls,
        handle: ModelHandle,
        harmful: Prompts,
        harmless: Prompts,
        *,
        layer: int,
        lam: float = 1.0,
        batch_size: int = 8,
        cache: bool = True,
        progress: bool = True,
    ) -> ActivationAddition:
        """v̂ = unit difference of means at `layer`; α from the quantile rule on the same rows."""
        pos, neg, _ = class_activations(
            handle,
            harmful,
            harmless,
            [layer],
            batch_size=batch_size,
            cache=cache,
            progress=progress,
        )
        direction = diff_of_means(pos[:, 0], neg[:, 0])
        acts = torch.cat([pos[:, 0], neg[:, 0]])
        labels = torch.cat(
            [torch.ones(len(pos), dtype=torch.bool), torch.zeros(len(neg), dtype=torch.bool)]
        )
        calib = calibrate_alpha(acts, labels, direction, lam=lam)
        budget = {"harmful": len(harmful), "harmless": len(harmless)}
        return cls(
            handle, direction, calib.alpha, layer=layer, budget=budget, alpha_stats=calib.to_dict()
        )

    @classmethod
    def from_gate(
        cls, handle: ModelHandle, gate: Gate, *, alpha: float | None = None
    ) -> ActivationAddition:
        """The gate's v̂, layer and calibrated α (or `alpha`)."""
        if alpha is None:
            if gate.alpha is None:
                raise BabelgateError("the gate has no calibrated alpha; pass alpha=")
            alpha = gate.alpha.alpha
        stats = gate.alpha.to_dict() if gate.alpha is not None else {}
        return cls(
            handle,
            gate.direction,
            alpha,
            layer=gate.layer,
            budget={"from": "gate"},
            alpha_stats=stats,
        )

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]:
        def make_edit(session: RowsSession):  # type: ignore[no-untyped-def]
            def edit(layer: int, hidden: torch.Tensor, state: StepState) -> torch.Tensor:
                n = hidden.shape[0]
                if new_sequence(session, state):
                    langs = languages if isinstance(languages, list | tuple) else [languages] * n
                    session.calls.append(
                        [RowOutcome(fired=True) for _ in expand_rows(list(langs), n)]
                    )
                mask = state.mask(self.scope, None, n, hidden.device)
                return add_direction(hidden, self.direction, self.alpha, mask)

            return edit

        return run_session(self.handle, [self.layer], languages, make_edit)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "layer": self.layer,
            "alpha": self.alpha,
            "scope": self.scope,
            "alpha_calibration": self.alpha_stats,
            "budget": self.budget,
        }
