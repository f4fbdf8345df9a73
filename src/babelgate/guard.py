"""The guard: one-pass gated routing at generation time (method-reference §6.1, DESIGN "One pass").

During the prefill forward, the hook on block L (the gate's layer) reads each row's
*unmodified* last-prompt-token residual, scores it with the gate for that row's language, and in
the same hook call steers the row: gate-positive rows get +α·v̂ at the last prompt token and
every generated token; gate-negative rows get v̂ ablated at every position and step. The
decision is kept for the rest of the generation; there is no separate capture pass.

`intervention_layers` (default: L only, as in the paper) may add later blocks, where the same
per-row edit is applied; layers before L are refused, because the gate must read block L's
output before anything upstream is changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from babelgate.capture import capture
from babelgate.errors import ArtifactError, BabelgateError, DataError
from babelgate.formatting import Message
from babelgate.gate import CALIBRATED, SOURCE, Gate
from babelgate.generation import GuardedCompletion, MethodSession, RowOutcome, SteeringMethod
from babelgate.hooks import (
    Router,
    StepState,
    ablate_direction,
    add_direction,
    expand_rows,
    steering,
)
from babelgate.models import ModelHandle

__all__ = ["GateRouter", "Guard", "GuardSession", "GuardedCompletion", "RoutingDecision"]


class GateRouter:
    """A `Router` that scores with the gate's own batch scorer (`Gate.routing_tensors`)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def route(
        self, last_hidden: torch.Tensor, languages: Sequence[str | None]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        rt = self.gate.routing_tensors(last_hidden.device)
        index = rt.index(list(languages), last_hidden.shape[0])
        scores, fired, _thresholds = rt.decide(last_hidden, index)
        sources = [CALIBRATED if k > 0 else SOURCE for k in index.tolist()]
        return fired, scores, sources


@dataclass(frozen=True)
class RoutingDecision:
    """The routing of one generate call (one prefill): per row, in batch order."""

    fired: list[bool]
    scores: list[float]
    thresholds: list[float | None]
    threshold_source: list[str]
    languages: list[str | None]
    language_fallback: list[bool]

    def outcomes(self) -> list[RowOutcome]:
        return [
            RowOutcome(
                fired=f,
                score=s,
                threshold=t,
                threshold_source=src,
                language_fallback=fb,
            )
            for f, s, t, src, fb in zip(
                self.fired,
                self.scores,
                self.thresholds,
                self.threshold_source,
                self.language_fallback,
                strict=True,
            )
        ]


def _unit_or_zero(direction: torch.Tensor, d: int) -> torch.Tensor:
    v = torch.as_tensor(direction).detach().to("cpu", torch.float32).reshape(-1)
    if v.shape[0] != d:
        raise DataError(f"direction has d={v.shape[0]}, the model's hidden size is {d}")
    norm = float(torch.linalg.vector_norm(v.double()))
    if not math.isfinite(norm):
        raise DataError("direction contains NaN or infinite values")
    # A zero direction is a legal no-op (routing only); anything else is normalised.
    return v if norm == 0.0 else (v.double() / norm).float()


class GuardSession(MethodSession):
    """Per-call state of one attached guard: the routing decisions made so far (one per
    generate call inside the session) and the hook's edit function."""

    def __init__(self, guard: Guard, languages: Sequence[str | None] | str | None) -> None:
        self.guard = guard
        self._languages = languages
        self.decisions: list[RoutingDecision] = []
        self._sequence = 0
        self._fired: torch.Tensor | None = None
        self._vectors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def decision(self) -> RoutingDecision:
        """The routing of the latest generate call in this session."""
        if not self.decisions:
            raise BabelgateError("no guarded forward has run in this session yet")
        return self.decisions[-1]

    def outcomes(self) -> list[RowOutcome]:
        return self.decision.outcomes()

    def _row_languages(self, n: int) -> list[str | None]:
        langs = self._languages
        if langs is None or isinstance(langs, str):
            return [langs] * n
        return expand_rows(list(langs), n)

    def _route(self, hidden: torch.Tensor, state: StepState) -> None:
        if not state.prefill:
            raise BabelgateError("the guard must see the prefill forward of each generation")
        n = hidden.shape[0]
        languages = self._row_languages(n)
        last = hidden[:, -1, :].to(torch.float32)
        fired, scores, sources = self.guard.router.route(last, languages)
        fired = fired.to(device=hidden.device, dtype=torch.bool).reshape(-1)
        if fired.shape[0] != n or len(sources) != n:
            raise BabelgateError(f"router returned {fired.shape[0]} decisions for {n} rows")
        self._fired = fired
        self._sequence = state.n_sequences
        self.decisions.append(
            RoutingDecision(
                fired=[bool(x) for x in fired.tolist()],
                scores=[float(x) for x in scores.reshape(-1).tolist()],
                thresholds=[self.guard.threshold_for(lang) for lang in languages],
                threshold_source=list(sources),
                languages=languages,
                language_fallback=[self.guard.is_fallback(lang) for lang in languages],
            )
        )

    def _vector(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in self._vectors:
            self._vectors[key] = self.guard.direction.to(device=hidden.device, dtype=hidden.dtype)
        return self._vectors[key]

    def edit(self, layer: int, hidden: torch.Tensor, state: StepState) -> torch.Tensor | None:
        guard = self.guard
        if self._sequence != state.n_sequences:
            if layer != guard.layer:
                raise BabelgateError(f"block {layer} ran before the gate's block {guard.layer}")
            self._route(hidden, state)  # reads the residual before this hook changes it
        if layer not in guard.intervention_layers:
            return None
        assert self._fired is not None
        n, device = hidden.shape[0], hidden.device
        v = self._vector(hidden)
        if state.start >= state.prompt_len:
            # Decode fast path: every position is a generated token, so fired rows add α·v̂
            # and the others remove their v̂ component; one fused update.
            h32, v32 = hidden.to(torch.float32), v.to(torch.float32)
            proj = h32 @ v32  # [n, s]
            coeff = torch.where(self._fired.unsqueeze(1), torch.full_like(proj, guard.alpha), -proj)
            return (h32 + coeff.unsqueeze(-1) * v32).to(hidden.dtype)
        ablate = state.mask("all", ~self._fired, n, device)
        add = state.mask("last_prompt_then_generated", self._fired, n, device)
        out = ablate_direction(hidden, v, ablate)
        return add_direction(out, v, guard.alpha, add)


class Guard(SteeringMethod):
    """Gated routing for a model: `generate(...)` or `with guard.attached(...)` around the
    model's own `generate`.

    `gate` is a fitted `Gate` (layer, v̂ and α come from it) or any `Router`, in which case
    `layer`, `direction` and `alpha` must be given. α: `alpha` overrides; `lam` rescales the
    gate's calibrated α_base (α = λ·α_base); by default the gate's α. A zero `direction`
    disables steering (routing only).
    """

    name = "guard"

    def __init__(
        self,
        handle: ModelHandle,
        gate: Gate | Router,
        *,
        alpha: float | None = None,
        lam: float | None = None,
        intervention_layers: Sequence[int] | None = None,
        layer: int | None = None,
        direction: torch.Tensor | None = None,
        check_fingerprint: bool = True,
    ) -> None:
        self.handle = handle
        self.gate = gate if isinstance(gate, Gate) else None
        self.router: Router = GateRouter(gate) if isinstance(gate, Gate) else gate
        if self.gate is not None:
            if (
                check_fingerprint
                and self.gate.model_fingerprint
                and self.gate.model_fingerprint != handle.fingerprint
            ):
                raise ArtifactError(
                    f"the gate was fitted for model fingerprint {self.gate.model_fingerprint!r}, "
                    f"not {handle.fingerprint!r} ({handle.name})"
                )
            layer = self.gate.layer if layer is None else layer
            direction = self.gate.direction if direction is None else direction
        if layer is None or direction is None:
            raise BabelgateError("a guard built from a router needs layer= and direction=")
        if not 0 <= layer < handle.n_layers:
            raise BabelgateError(f"gate layer {layer} out of range for {handle.n_layers} blocks")
        self.layer = int(layer)
        self.direction = _unit_or_zero(direction, handle.hidden_size)
        self.alpha, self.alpha_source, self.lam = self._resolve_alpha(alpha, lam)
        layers = (
            [self.layer]
            if intervention_layers is None
            else sorted({int(x) for x in intervention_layers})
        )
        if not layers:
            raise BabelgateError("intervention_layers is empty")
        for x in layers:
            if not self.layer <= x < handle.n_layers:
                raise BabelgateError(
                    f"intervention layer {x} must lie in [{self.layer}, {handle.n_layers - 1}]: "
                    "the gate reads block L's unmodified output, so nothing before it may change"
                )
        self.intervention_layers = tuple(layers)

    def _resolve_alpha(
        self, alpha: float | None, lam: float | None
    ) -> tuple[float, str, float | None]:
        if alpha is not None and lam is not None:
            raise BabelgateError("give either alpha or lam, not both")
        if alpha is not None:
            if not math.isfinite(float(alpha)) or float(alpha) < 0:
                raise BabelgateError(f"alpha must be a finite number >= 0, got {alpha!r}")
            return float(alpha), "explicit", None
        calibration = self.gate.alpha if self.gate is not None else None
        if calibration is None:
            raise BabelgateError(
                "no alpha: the gate has no calibrated alpha (Gate.calibrate_alpha); pass alpha="
            )
        if lam is not None:
            if not math.isfinite(float(lam)) or float(lam) <= 0:
                raise BabelgateError(f"lambda must be a finite number > 0, got {lam!r}")
            return float(lam) * calibration.alpha_base, "lambda*alpha_base", float(lam)
        return float(calibration.alpha), "gate", float(calibration.lam)

    # ----------------------------------------------------------------- per-row facts
    def threshold_for(self, language: str | None) -> float | None:
        return self.gate.threshold_for(language)[0] if self.gate is not None else None

    def is_fallback(self, language: str | None) -> bool:
        """True when the row's language is unknown (None) or has no calibrated threshold
        (and is not a source language): the source-only threshold is used."""
        if language is None:
            return True
        if self.gate is None:
            return False
        return (
            language not in self.gate.calibrated_languages
            and language not in self.gate.source_languages
        )

    # ----------------------------------------------------------------- generation
    @contextmanager
    def attached(
        self, languages: Sequence[str | None] | str | None = None
    ) -> Iterator[GuardSession]:
        """Guard every `handle.model.generate(...)` (or forward) call inside the block.

        `languages`: one code per prompt row, one code for all rows, or None (unknown:
        source-only threshold, flagged). The session's `decisions` holds one
        `RoutingDecision` per generate call.
        """
        session = GuardSession(self, languages)
        layers = sorted({self.layer, *self.intervention_layers})
        with steering(self.handle.model, self.handle.blocks, layers, session.edit):
            yield session

    def session(
        self, languages: Sequence[str | None] | str | None = None
    ) -> AbstractContextManager[MethodSession]:
        return self.attached(languages)

    def decide(
        self,
        prompts: Sequence[str | Sequence[Message]],
        languages: Sequence[str | None] | str | None = None,
        *,
        batch_size: int = 8,
        progress: bool = False,
    ) -> list[RowOutcome]:
        """Gate verdicts only (no generation; the forward stops after block L)."""
        if not prompts:
            raise DataError("no prompts to decide")
        codes: list[str | None]
        if languages is None or isinstance(languages, str):
            codes = [languages] * len(prompts)
        else:
            codes = list(languages)
            if len(codes) != len(prompts):
                raise DataError(f"{len(codes)} languages given for {len(prompts)} prompts")
        acts = capture(
            self.handle,
            prompts,
            [self.layer],
            "last",
            batch_size=batch_size,
            cache=False,
            progress=progress,
        )
        fired, scores, sources = self.router.route(acts[:, 0, :], codes)
        return RoutingDecision(
            fired=[bool(x) for x in fired.tolist()],
            scores=[float(x) for x in scores.reshape(-1).tolist()],
            thresholds=[self.threshold_for(c) for c in codes],
            threshold_source=list(sources),
            languages=codes,
            language_fallback=[self.is_fallback(c) for c in codes],
        ).outcomes()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "method": self.name,
            "layer": self.layer,
            "intervention_layers": list(self.intervention_layers),
            "alpha": self.alpha,
            "alpha_source": self.alpha_source,
            "lambda": self.lam,
            "steering": "add alpha*v at last prompt token + generated (gate-positive); "
            "ablate v at all tokens (gate-negative)",
            "model_fingerprint": self.handle.fingerprint,
        }
        if self.gate is not None:
            info["gate"] = {
                "rank": self.gate.rank,
                "source_languages": list(self.gate.source_languages),
                "calibrated_languages": self.gate.calibrated_languages,
                "budget": {
                    "per_language_per_class": self.gate.budgets,
                    "source_rows": self.gate.fit_stats.get("n_rows"),
                },
                "alpha_calibration": None if self.gate.alpha is None else self.gate.alpha.to_dict(),
            }
        else:
            info["router"] = type(self.router).__name__
        return info
