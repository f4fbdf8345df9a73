"""Per-request routing bookkeeping for the vLLM back end (no vLLM import; pure torch).

vLLM flattens a step's tokens of all scheduled requests into one [num_tokens, d] batch. The
runner knows which rows belong to which request (`query_start_loc`) and the absolute position
of every row (`positions`), so a request's phase comes from runner state: the row whose
position is `prompt_len - 1` is its last prompt token, rows after it are decoded tokens. The
gate decides once per request, at the step whose rows contain that position, and the
decision is frozen in a `RequestRoute` keyed by vLLM's request id: a recompute after
preemption (the request's rows run again from position 0) reuses it and never re-scores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from babelgate.errors import BabelgateError

LANGUAGE_KEY = "babelgate_language"
ENABLED_KEY = "babelgate"
REQUEST_KEY = "babelgate_key"


@dataclass
class RequestRoute:
    """The frozen routing of one request. `fired` is None until its last prompt token ran.

    `chunks_before_decision`: forwards that carried this request's prompt rows before the
    one with its last prompt token (chunked prefill; those rows were not edited at layer L).
    `recomputed`: how often the last prompt token ran again after the decision (preemption
    with recompute); the frozen decision was reused each time.
    """

    req_id: str
    key: str | None
    language: str | None
    guarded: bool
    prompt_len: int
    fired: bool | None = None
    score: float | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    language_fallback: bool = False
    chunks_before_decision: int = 0
    recomputed: int = 0
    error: str | None = None

    @property
    def decided(self) -> bool:
        return self.fired is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flag(value: object) -> bool | None:
    """A boolean from extra_args; HTTP `vllm_xargs` carries only str/int/float, so 0/1 and
    "true"/"false" are accepted too. None when unreadable."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def route_from_extra_args(
    req_id: str, prompt_len: int, extra_args: dict[str, Any] | None
) -> RequestRoute:
    """A new undecided route from a request's `SamplingParams.extra_args` (or None)."""
    # This runs inside the engine's forward: a malformed field from an HTTP client must not
    # crash the server, so it falls back to the safe reading (guarded, unknown language)
    # and the problem is recorded on the route.
    args = extra_args or {}
    problems: list[str] = []
    language = args.get(LANGUAGE_KEY)
    if language is not None and not isinstance(language, str):
        problems.append(f"{LANGUAGE_KEY} must be a string, got {language!r}")
        language = None
    enabled = _flag(args.get(ENABLED_KEY, True))
    if enabled is None:
        problems.append(f"{ENABLED_KEY} must be true or false, got {args.get(ENABLED_KEY)!r}")
        enabled = True
    key = args.get(REQUEST_KEY)
    return RequestRoute(
        req_id=req_id,
        key=None if key is None else str(key),
        language=language or None,
        guarded=enabled,
        prompt_len=int(prompt_len),
        error="; ".join(problems) or None,
    )


@dataclass
class StepPlan:
    """What one forward does at layer L. Row indices are long [k] into the step's rows.

    `decide_rows[i]` is the last-prompt-token row of `decide_routes[i]` (to be scored now);
    `ablate_rows` / `add_rows` are the rows to edit once those decisions are known (filled
    by `finish`); `spans` maps each scheduled request to its [start, end) rows.
    """

    spans: list[tuple[RequestRoute, int, int]]
    decide_routes: list[RequestRoute] = field(default_factory=list)
    decide_rows: list[int] = field(default_factory=list)

    def edit_rows(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ablate rows, add rows) long tensors for decided, guarded requests.

        Gate-negative: every row of the request in this step. Gate-positive: rows at
        position ≥ prompt_len − 1 (the last prompt token and decoded tokens)."""
        ablate: list[torch.Tensor] = []
        add: list[torch.Tensor] = []
        for route, start, end in self.spans:
            if not route.guarded or not route.decided or end <= start:
                continue
            rows = torch.arange(start, end)
            if route.fired:
                keep = positions[start:end] >= route.prompt_len - 1
                add.append(rows[keep])
            else:
                ablate.append(rows)
        empty = torch.empty(0, dtype=torch.long)
        return (torch.cat(ablate) if ablate else empty, torch.cat(add) if add else empty)


def plan_step(
    routes: Sequence[RequestRoute], query_start_loc: Sequence[int], positions: torch.Tensor
) -> StepPlan:
    """Spans and pending decisions for one step.

    `routes[i]` owns rows [query_start_loc[i], query_start_loc[i+1]); `positions` long [n]
    (n ≥ the last offset; extra rows are padding and are never touched)."""
    if len(query_start_loc) != len(routes) + 1:
        raise BabelgateError(
            f"runner state mismatch: {len(routes)} requests but {len(query_start_loc)} query offsets"
        )
    if int(query_start_loc[-1]) > int(positions.shape[0]):
        raise BabelgateError(
            f"runner state mismatch: {query_start_loc[-1]} scheduled tokens but the layer saw "
            f"{positions.shape[0]} rows"
        )
    plan = StepPlan(spans=[])
    for i, route in enumerate(routes):
        start, end = int(query_start_loc[i]), int(query_start_loc[i + 1])
        plan.spans.append((route, start, end))
        if not route.guarded or end <= start:
            continue
        first, last = int(positions[start]), int(positions[end - 1])
        target = route.prompt_len - 1
        if first <= target <= last:
            if route.decided:
                route.recomputed += 1
            else:
                plan.decide_routes.append(route)
                plan.decide_rows.append(start + (target - first))
        elif not route.decided and last < target:
            route.chunks_before_decision += 1
    return plan


class RouteLedger:
    """Live routes by vLLM request id plus finished ones (bounded) for the caller to collect."""

    def __init__(self, max_finished: int = 100_000) -> None:
        self.live: dict[str, RequestRoute] = {}
        self.finished: OrderedDict[str, RequestRoute] = OrderedDict()
        self.max_finished = max_finished
        self.counts: dict[str, dict[str, int]] = {}

    def record_decision(self, route: RequestRoute) -> None:
        lang = route.language or "<unknown>"
        bucket = self.counts.setdefault(lang, {"fired": 0, "not_fired": 0, "fallback": 0})
        bucket["fired" if route.fired else "not_fired"] += 1
        bucket["fallback"] += int(route.language_fallback)

    def finish(self, req_ids: Sequence[str]) -> None:
        for req_id in req_ids:
            route = self.live.pop(req_id, None)
            if route is None:
                continue
            self.finished[route.key or req_id] = route
            while len(self.finished) > self.max_finished:
                self.finished.popitem(last=False)

    def collect(self, keys: Sequence[str] | None, pop: bool) -> list[dict[str, Any]]:
        """Route dicts for `keys` (caller keys or request ids; live or finished), or all."""
        out: list[dict[str, Any]] = []
        wanted = list(self.finished) if keys is None else list(keys)
        live_by_key = {r.key or r.req_id: r for r in self.live.values()}
        for key in wanted:
            route = self.finished.pop(key, None) if pop else self.finished.get(key)
            if route is None:
                route = live_by_key.get(key)
            if route is not None:
                out.append(route.to_dict())
        return out
