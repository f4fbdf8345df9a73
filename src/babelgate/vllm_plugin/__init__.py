"""babelgate's guard as a vLLM plugin (separate environment: scripts/setup_vllm_env.sh).

- `BabelgateWorkerExtension` (worker.py): the worker side, installed with
  `worker_extension_cls=babelgate.vllm_plugin.EXTENSION`; RPCs `babelgate_load`,
  `babelgate_decisions`, `babelgate_stats`, `babelgate_unload`.
- `GuardedLLM` (engine.py): offline engine with per-request languages and decisions.
- Per request, `SamplingParams(extra_args={"babelgate_language": "sw"})` (HTTP: `vllm_xargs`)
  picks the threshold; `"babelgate": false` leaves a request untouched; `"babelgate_key"` names
  it for `babelgate_decisions`.

Importing this package does not import vLLM. `register()` is the `vllm.general_plugins`
entry point (`babelgate = "babelgate.vllm_plugin:register"`): it checks the installed vLLM
version and, when `BABELGATE_VLLM_BUNDLE` is set, loads that bundle on every worker right
after the model is loaded (for `vllm serve`, which has no `collective_rpc` for the caller),
after checking that the bundle was fitted on that model (its fingerprint is computed from
the model directory unless `BABELGATE_VLLM_FINGERPRINT` gives it, or is `skip`).
"""

from __future__ import annotations

import os
from typing import Any

from babelgate.vllm_plugin.compat import SUPPORTED_RANGE, VllmCompatibilityError, check_vllm_version
from babelgate.vllm_plugin.engine import EXTENSION, GuardedLLM, VllmCompletion, engine_kwargs
from babelgate.vllm_plugin.routing import ENABLED_KEY, LANGUAGE_KEY, REQUEST_KEY, RequestRoute

BUNDLE_ENV = "BABELGATE_VLLM_BUNDLE"
ALPHA_ENV = "BABELGATE_VLLM_ALPHA"
FINGERPRINT_ENV = "BABELGATE_VLLM_FINGERPRINT"
# Value of FINGERPRINT_ENV that skips the bundle/model check (unset: computed from the
# model directory, see babelgate.fingerprint.directory_fingerprint).
SKIP_FINGERPRINT = "skip"


def register() -> None:
    """`vllm.general_plugins` hook (runs in every vLLM process): refuse an unsupported vLLM;
    with `BABELGATE_VLLM_BUNDLE` set, make each worker load the guard after its model."""
    import vllm

    check_vllm_version(vllm.__version__)
    bundle = os.environ.get(BUNDLE_ENV)
    if not bundle:
        return
    from vllm.v1.worker import gpu_worker

    original = gpu_worker.Worker.load_model
    if getattr(original, "_babelgate_wrapped", False):
        return

    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        loader = getattr(self, "babelgate_load", None)
        if loader is None:
            raise VllmCompatibilityError(
                f"{BUNDLE_ENV} is set but the worker has no babelgate extension: pass "
                f"--worker-extension-cls {EXTENSION}"
            )
        alpha = os.environ.get(ALPHA_ENV)
        expected = os.environ.get(FINGERPRINT_ENV) or None
        if expected is None:
            from babelgate.fingerprint import directory_fingerprint

            expected = directory_fingerprint(self.vllm_config.model_config.model)
        loader(
            bundle,
            alpha=None if alpha is None else float(alpha),
            expected_fingerprint=None if expected == SKIP_FINGERPRINT else expected,
        )

    load_model._babelgate_wrapped = True  # type: ignore[attr-defined]
    gpu_worker.Worker.load_model = load_model  # type: ignore[method-assign]


__all__ = [
    "ALPHA_ENV",
    "BUNDLE_ENV",
    "ENABLED_KEY",
    "EXTENSION",
    "FINGERPRINT_ENV",
    "LANGUAGE_KEY",
    "REQUEST_KEY",
    "SUPPORTED_RANGE",
    "GuardedLLM",
    "RequestRoute",
    "VllmCompatibilityError",
    "VllmCompletion",
    "check_vllm_version",
    "engine_kwargs",
    "register",
]
