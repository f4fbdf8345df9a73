"""Steering primitives shared by the guard and every baseline: add α·v, ablate v̂, per-row
routing, token scopes, and the context manager that installs (and always removes) the hooks.

How a hooked forward knows where it is
--------------------------------------
A forward pre-hook on the top-level model reads each call's `input_ids` and KV cache and
updates a per-call `StepState`: with a cache, the cache length says where the current chunk
starts (0 = a new sequence, i.e. the prefill); without a cache (`use_cache=False`, every step
re-runs the whole sequence) a call continues the current sequence exactly when its ids extend
the recorded prompt ids. Nothing is guessed from sequence length, so one-token prompts work,
and the "last prompt token" is the fixed absolute position `prompt_len - 1` (index −1 at
prefill; prompts are left padded, so it is the same position for every row).

Ownership
---------
Hooks live on shared modules, but their state lives in a per-call `HookSession`. A hook acts
only when its session is the active one in the calling context (a `ContextVar`), so two
sessions in two threads never touch each other's forwards, and a plain forward in another
thread passes through untouched. Consequence: run the guarded forward in the thread / context
that entered the session (`asyncio.to_thread` and `contextvars.copy_context().run` carry the
context; a bare `ThreadPoolExecutor.submit` does not). Sessions nested in one context: the
innermost one acts.

Hooks are registered with `prepend=True` so transformers' own output capture
(`output_hidden_states`) sees the steered values, and they return a new output of the same
structure instead of editing tensors in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from babelgate.capture import block_hidden
from babelgate.errors import BabelgateError

Scope = Literal["all", "last_prompt_then_generated", "last_prompt", "generated"]
SCOPES: tuple[str, ...] = ("all", "last_prompt_then_generated", "last_prompt", "generated")

# The only process-wide object: which session owns forwards in the current context.
# The session (and all hook state) is a per-call object; this only dispatches to it.
_ACTIVE: ContextVar[HookSession | None] = ContextVar("babelgate_active_hook_session", default=None)


class Router(Protocol):
    """Per-row routing decision from the unmodified last-prompt-token residual.

    `route(last_hidden [n, d] float32, languages [n]) -> (fired bool [n], scores f32 [n],
    threshold_source list[str] of length n)`.
    """

    def route(
        self, last_hidden: torch.Tensor, languages: Sequence[str | None]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]: ...


@dataclass
class StepState:
    """Where the current forward sits in the sequence being generated (per call).

    `start`/`length`: absolute position of the current forward's first token and its token
    count; `prompt_len`: padded prompt length of the current sequence; `prefill`: the current
    forward contains the prompt; `n_sequences`: prefills seen so far in this session.
    """

    n_forwards: int = 0
    n_sequences: int = 0
    prefill: bool = False
    start: int = 0
    length: int = 0
    prompt_len: int = 0
    batch: int = 0
    prompt_ids: torch.Tensor | None = field(default=None, repr=False)
    prompt_mask: torch.Tensor | None = field(default=None, repr=False)

    def observe(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Update from the arguments of one top-level model call."""
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            raise BabelgateError("a steered forward needs input_ids or inputs_embeds")
        batch, length = int(ref.shape[0]), int(ref.shape[1])
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = _cache_length(cache)
        if past is not None:
            new_sequence = past == 0
            start = past
        else:
            if ids is None:
                raise BabelgateError(
                    "cannot track generation steps without a KV cache from inputs_embeds; "
                    "pass input_ids or use the cache"
                )
            new_sequence = not self._extends_prompt(ids)
            start = 0
        if new_sequence:
            self.n_sequences += 1
            self.prompt_len, self.batch = length, batch
            self.prompt_ids = None if ids is None else ids.detach()
            mask = kwargs.get("attention_mask")
            self.prompt_mask = (
                mask.detach()[:, -length:] if isinstance(mask, torch.Tensor) else None
            )
        elif self.n_sequences == 0:
            raise BabelgateError(
                "the steered forward continues a KV cache this session did not prefill; "
                "start the generation inside the session"
            )
        elif batch != self.batch:
            raise BabelgateError(
                f"batch size changed from {self.batch} to {batch} within one generation"
            )
        self.prefill = new_sequence
        self.start, self.length = start, length
        self.n_forwards += 1

    def _extends_prompt(self, ids: torch.Tensor) -> bool:
        prompt = self.prompt_ids
        if prompt is None or self.n_sequences == 0 or ids.shape[0] != prompt.shape[0]:
            return False
        if ids.shape[1] <= prompt.shape[1]:
            return False
        return bool(torch.equal(ids[:, : prompt.shape[1]].to(prompt.device), prompt))

    def positions(self, device: torch.device) -> torch.Tensor:
        """Absolute positions long [length] of the current forward's tokens."""
        return torch.arange(self.start, self.start + self.length, device=device)

    def scope_mask(self, scope: Scope, device: torch.device) -> torch.Tensor:
        """Which of the current forward's positions the scope covers: bool [length]."""
        if scope == "all":
            return torch.ones(self.length, dtype=torch.bool, device=device)
        pos = self.positions(device)
        last = self.prompt_len - 1
        if scope == "last_prompt_then_generated":
            return pos >= last
        if scope == "last_prompt":
            return pos == last
        if scope == "generated":
            return pos > last
        raise BabelgateError(f"unknown token scope {scope!r}; choose one of {SCOPES}")

    def mask(
        self, scope: Scope, rows: torch.Tensor | None, n: int, device: torch.device
    ) -> torch.Tensor:
        """bool [n, length]: the scope's positions for the rows where `rows` [n] is True."""
        positions = self.scope_mask(scope, device).unsqueeze(0).expand(n, -1)
        if rows is None:
            return positions
        return positions & rows.to(device=device, dtype=torch.bool).unsqueeze(1)


def _cache_length(cache: object) -> int | None:
    """Tokens already in a KV cache, or None when there is no usable cache."""
    if cache is None:
        return None
    get = getattr(cache, "get_seq_length", None)
    if get is None:
        return None
    return int(get())


# --------------------------------------------------------------------------- primitives
def add_direction(
    hidden: torch.Tensor,
    vector: torch.Tensor,
    coeff: float | torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """hidden [n, s, d] + coeff·vector where mask [n, s] is True (new tensor).

    `coeff` is a float or a per-row tensor [n]; `vector` [d] is used as given (not
    normalised). Unmasked entries are returned bit-for-bit unchanged.
    """
    v = vector.to(device=hidden.device, dtype=hidden.dtype)
    if isinstance(coeff, torch.Tensor):
        c = coeff.to(device=hidden.device, dtype=hidden.dtype).reshape(-1, 1, 1)
        delta = c * v
    else:
        delta = (float(coeff) * v).reshape(1, 1, -1)
    return torch.where(mask.unsqueeze(-1), hidden + delta, hidden)


def ablate_direction(
    hidden: torch.Tensor, unit_vector: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """hidden [n, s, d] − (h·v̂)v̂ where mask [n, s] is True (new tensor); v̂ [d] must be unit
    (or zero, which leaves hidden unchanged). The projection is taken in float32."""
    v = unit_vector.to(device=hidden.device, dtype=torch.float32)
    proj = hidden.to(torch.float32) @ v  # [n, s]
    removed = (hidden.to(torch.float32) - proj.unsqueeze(-1) * v).to(hidden.dtype)
    return torch.where(mask.unsqueeze(-1), removed, hidden)


def replace_hidden(output: object, hidden: torch.Tensor) -> object:
    """A block output of the same structure as `output` with the residual replaced."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise BabelgateError(f"unexpected decoder block output type {type(output).__name__}")


def expand_rows(values: Sequence[Any], n: int) -> list[Any]:
    """Per-prompt values for a batch of n rows: n == k·len(values) (beams, several return
    sequences) repeats each value k times in place, as `generate` expands its inputs."""
    if len(values) == n:
        return list(values)
    if values and n % len(values) == 0:
        k = n // len(values)
        return [v for v in values for _ in range(k)]
    raise BabelgateError(f"{len(values)} per-prompt values for a batch of {n} rows")


# --------------------------------------------------------------------------- sessions
EditFn = Callable[[int, torch.Tensor, StepState], torch.Tensor | None]


@dataclass
class HookSession:
    """Per-call hook state: step bookkeeping plus the method's edit function.

    `edit(layer, hidden [n, s, d], state)` returns the new residual or None for no change.
    """

    edit: EditFn
    layers: tuple[int, ...]
    state: StepState = field(default_factory=StepState)

    @property
    def active(self) -> bool:
        return _ACTIVE.get() is self


def _model_pre_hook(session: HookSession) -> Callable[..., None]:
    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if session.active:
            session.state.observe(args, kwargs)

    return hook


def _block_hook(session: HookSession, layer: int) -> Callable[..., object]:
    def hook(_module: nn.Module, _args: tuple[Any, ...], output: object) -> object:
        if not session.active:
            return None
        hidden = block_hidden(output)
        state = session.state
        if (
            state.n_forwards == 0
            or hidden.shape[0] != state.batch
            or hidden.shape[1] != state.length
        ):
            raise BabelgateError(
                "a steered block ran outside a tracked model call (call the model's own "
                "forward or generate, not an inner module)"
            )
        new = session.edit(layer, hidden, state)
        if new is None:
            return None
        return replace_hidden(output, new)

    return hook


@contextmanager
def steering(
    model: nn.Module, blocks: Sequence[nn.Module], layers: Sequence[int], edit: EditFn
) -> Iterator[HookSession]:
    """Install the step tracker on `model` and `edit` on `blocks[layer]` for each layer;
    yields the per-call session. Hooks are removed on exit, exceptions and
    KeyboardInterrupt included."""
    wanted = sorted(set(int(x) for x in layers))
    for layer in wanted:
        if not 0 <= layer < len(blocks):
            raise BabelgateError(
                f"layer {layer} out of range for a model with {len(blocks)} blocks"
            )
    session = HookSession(edit=edit, layers=tuple(wanted))
    handles = []
    token = _ACTIVE.set(session)
    try:
        handles.append(
            model.register_forward_pre_hook(
                _model_pre_hook(session), with_kwargs=True, prepend=True
            )
        )
        for layer in wanted:
            handles.append(
                blocks[layer].register_forward_hook(_block_hook(session, layer), prepend=True)
            )
        yield session
    finally:
        for handle in handles:
            handle.remove()
        _ACTIVE.reset(token)
