"""The vLLM worker extension: loads a gate bundle on every worker and routes each request.

Pass `worker_extension_cls="babelgate.vllm_plugin.worker.BabelgateWorkerExtension"` to
`vllm.LLM` (or `--worker-extension-cls` to `vllm serve`); vLLM mixes the class into its
worker, and `llm.collective_rpc("babelgate_load", args=(bundle_dir,))` installs the guard on
every worker (each tensor-parallel rank holds the full residual after its all-reduce, so each
rank decides identically).

Residual layout. vLLM's Llama/Qwen/Mistral decoder layers fuse the residual add into the next
layer's RMSNorm: a layer returns `(hidden, residual)` and the residual stream that
transformers calls "the output of block L" is `hidden + residual`. The hook reads that sum
(unmodified) for the gate, and for every row it edits it writes the edited stream into
`hidden` and zero into `residual`, so the next layer's fused add gives exactly the edited
stream; rows it does not edit keep both tensors bit for bit. Layers that return one tensor
(GPT-2 style) are edited directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from babelgate.errors import BabelgateError
from babelgate.gate import Gate
from babelgate.guard import GateRouter, _unit_or_zero
from babelgate.hooks import ablate_direction, add_direction
from babelgate.layers import find_decoder_blocks
from babelgate.vllm_plugin.compat import (
    VllmCompatibilityError,
    check_engine_settings,
    check_runner,
    check_vllm_version,
)
from babelgate.vllm_plugin.routing import (
    RequestRoute,
    RouteLedger,
    plan_step,
    route_from_extra_args,
)


def resolve_alpha(gate: Gate, alpha: float | None, lam: float | None) -> tuple[float, str]:
    """α as the transformers guard resolves it: explicit, λ·α_base, or the gate's own α."""
    if alpha is not None and lam is not None:
        raise BabelgateError("give either alpha or lam, not both")
    if alpha is not None:
        if not math.isfinite(float(alpha)) or float(alpha) < 0:
            raise BabelgateError(f"alpha must be a finite number >= 0, got {alpha!r}")
        return float(alpha), "explicit"
    if gate.alpha is None:
        raise BabelgateError(
            "no alpha: the gate has no calibrated alpha (Gate.calibrate_alpha); pass alpha="
        )
    if lam is not None:
        if not math.isfinite(float(lam)) or float(lam) <= 0:
            raise BabelgateError(f"lambda must be a finite number > 0, got {lam!r}")
        return float(lam) * gate.alpha.alpha_base, "lambda*alpha_base"
    return float(gate.alpha.alpha), "gate"


def split_output(output: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden [n, d], residual [n, d] or None) of a vLLM decoder layer's output."""
    if isinstance(output, torch.Tensor):
        return output, None
    if (
        isinstance(output, tuple)
        and len(output) == 2
        and all(isinstance(t, torch.Tensor) for t in output)
    ):
        return output[0], output[1]
    raise VllmCompatibilityError(
        f"unexpected vLLM decoder layer output {type(output).__name__}: expected a tensor or "
        "(hidden, residual)"
    )


@dataclass
class _GuardState:
    """Everything one worker's guard holds (one per worker, replaced on reload)."""

    gate: Gate
    router: GateRouter
    runner: Any
    layer: int
    direction: torch.Tensor  # [d] float32, unit or zero
    alpha: float
    ledger: RouteLedger = field(default_factory=RouteLedger)
    in_step: bool = False
    handles: list[Any] = field(default_factory=list)
    original_execute: Any = None
    steps: int = 0

    def route_for(self, req_id: str) -> RequestRoute:
        route = self.ledger.live.get(req_id)
        if route is None:
            state = self.runner.requests[req_id]
            params = getattr(state, "sampling_params", None)
            extra = getattr(params, "extra_args", None) if params is not None else None
            route = route_from_extra_args(req_id, int(state.num_prompt_tokens), extra)
            self.ledger.live[req_id] = route
        return route

    def decide(
        self,
        routes: list[RequestRoute],
        rows: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> None:
        stream = hidden.index_select(0, rows)
        if residual is not None:
            stream = stream + residual.index_select(0, rows)
        languages = [r.language for r in routes]
        fired, scores, sources = self.router.route(stream.to(torch.float32), languages)
        gate = self.gate
        for route, hit, score, source in zip(
            routes, fired.tolist(), scores.tolist(), sources, strict=True
        ):
            route.fired = bool(hit)
            route.score = float(score)
            route.threshold = gate.threshold_for(route.language)[0]
            route.threshold_source = source
            lang = route.language
            route.language_fallback = lang is None or (
                lang not in gate.calibrated_languages and lang not in gate.source_languages
            )
            self.ledger.record_decision(route)

    def edit(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        ablate: torch.Tensor,
        add: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = hidden.device
        rows = torch.cat([ablate, add]).to(device)
        stream = hidden.index_select(0, rows)
        if residual is not None:
            stream = stream + residual.index_select(0, rows)
        k = int(rows.shape[0])
        ablate_mask = torch.zeros(1, k, dtype=torch.bool, device=device)
        ablate_mask[0, : int(ablate.shape[0])] = True
        v = self.direction.to(device=device, dtype=hidden.dtype)
        # The same primitives, in the same order, as the transformers guard's hook.
        out = ablate_direction(stream.unsqueeze(0), v, ablate_mask)
        out = add_direction(out, v, self.alpha, ~ablate_mask)[0]
        new_hidden = hidden.clone()
        new_hidden.index_copy_(0, rows, out)
        if residual is None:
            return new_hidden, None
        new_residual = residual.clone()
        new_residual.index_fill_(0, rows, 0.0)
        return new_hidden, new_residual


def _layer_hook(state: _GuardState) -> Any:
    def hook(
        _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object
    ) -> object:
        if not state.in_step:  # profiling / warm-up dummy runs carry no requests
            return None
        positions = kwargs.get("positions", args[0] if args else None)
        if not isinstance(positions, torch.Tensor) or positions.ndim != 1:
            raise VllmCompatibilityError("the decoder layer was not called with 1-D positions")
        hidden, residual = split_output(output)
        runner = state.runner
        n_reqs = int(runner.input_batch.num_reqs)
        req_ids = list(runner.input_batch.req_ids[:n_reqs])
        offsets = [int(x) for x in runner.query_start_loc.cpu[: n_reqs + 1].tolist()]
        routes = [state.route_for(rid) for rid in req_ids]
        pos = positions.to("cpu", torch.long)
        plan = plan_step(routes, offsets, pos)
        if plan.decide_routes:
            rows = torch.tensor(plan.decide_rows, dtype=torch.long, device=hidden.device)
            state.decide(plan.decide_routes, rows, hidden, residual)
        ablate, add = plan.edit_rows(pos)
        if ablate.numel() == 0 and add.numel() == 0:
            return None
        new_hidden, new_residual = state.edit(hidden, residual, ablate, add)
        return new_hidden if new_residual is None else (new_hidden, new_residual)

    return hook


class BabelgateWorkerExtension:
    """Mixed into vLLM's worker; every public method is a `collective_rpc` target."""

    _babelgate_state: _GuardState | None = None

    def babelgate_load(
        self,
        bundle: str,
        alpha: float | None = None,
        lam: float | None = None,
        expected_fingerprint: str | None = None,
        layers_path: str | None = None,
        salted_prefix_cache: bool = False,
    ) -> dict[str, Any]:
        """Load the gate bundle and install the guard on this worker (replacing any previous
        one). Returns what was installed. `salted_prefix_cache`: the caller promises a
        `routing_salt` on every request (GuardedLLM), so prefix caching is allowed."""
        import vllm

        check_vllm_version(vllm.__version__)
        worker: Any = self
        check_engine_settings(worker.vllm_config, salted_prefix_cache=salted_prefix_cache)
        runner = worker.model_runner
        check_runner(runner)
        gate = Gate.load(bundle, expected_fingerprint=expected_fingerprint)
        model = runner.get_model()
        _path, blocks = find_decoder_blocks(model, layers_path)
        hidden_size = int(worker.vllm_config.model_config.get_hidden_size())
        if gate.d != hidden_size:
            raise BabelgateError(
                f"the gate has d={gate.d} but the model's hidden size is {hidden_size}"
            )
        if not 0 <= gate.layer < len(blocks):
            raise BabelgateError(f"gate layer {gate.layer} out of range for {len(blocks)} blocks")
        block = blocks[gate.layer]
        if type(block).__name__ == "PPMissingLayer":
            raise VllmCompatibilityError(f"layer {gate.layer} does not live on this worker")
        self.babelgate_unload()
        value, source = resolve_alpha(gate, alpha, lam)
        state = _GuardState(
            gate=gate,
            router=GateRouter(gate),
            runner=runner,
            layer=gate.layer,
            direction=_unit_or_zero(gate.direction, hidden_size),
            alpha=value,
        )
        state.handles.append(
            block.register_forward_hook(_layer_hook(state), with_kwargs=True, prepend=True)
        )
        original = runner.execute_model

        def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            state.ledger.finish(list(getattr(scheduler_output, "finished_req_ids", ()) or ()))
            state.in_step = True
            state.steps += 1
            try:
                return original(scheduler_output, *args, **kwargs)
            finally:
                state.in_step = False

        # An instance attribute shadows the class method for this runner only; unload
        # deletes it again.
        runner.execute_model = execute_model
        state.original_execute = original
        self._babelgate_state = state
        return {
            "layer": gate.layer,
            "alpha": value,
            "alpha_source": source,
            "calibrated_languages": gate.calibrated_languages,
            "source_languages": list(gate.source_languages),
            "model_fingerprint": gate.model_fingerprint,
            "hidden_size": hidden_size,
            "layer_module": type(block).__name__,
        }

    def babelgate_unload(self) -> bool:
        """Remove the guard from this worker; True if one was installed."""
        state = self._babelgate_state
        if state is None:
            return False
        for handle in state.handles:
            handle.remove()
        if "execute_model" in vars(state.runner):
            del state.runner.execute_model
        self._babelgate_state = None
        return True

    def babelgate_decisions(
        self, keys: list[str] | None = None, pop: bool = True
    ) -> list[dict[str, Any]]:
        """Routes for `keys` (each a request's `babelgate_key` extra arg, or vLLM's request id);
        None: every finished request not yet collected. `pop` removes finished ones returned."""
        state = self._require()
        return state.ledger.collect(keys, pop)

    def babelgate_stats(self) -> dict[str, Any]:
        """Decision counts per language, live/finished request counts and steps seen."""
        state = self._require()
        return {
            "counts": {k: dict(v) for k, v in state.ledger.counts.items()},
            "live": len(state.ledger.live),
            "finished_uncollected": len(state.ledger.finished),
            "steps": state.steps,
            "layer": state.layer,
            "alpha": state.alpha,
        }

    def _require(self) -> _GuardState:
        if self._babelgate_state is None:
            raise BabelgateError(
                "no babelgate guard is loaded on this worker (call babelgate_load)"
            )
        return self._babelgate_state


__all__ = ["BabelgateWorkerExtension", "resolve_alpha", "split_output"]
