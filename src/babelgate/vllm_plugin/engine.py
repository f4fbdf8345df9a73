"""`GuardedLLM`: a `vllm.LLM` with babelgate's guard on every worker, for offline batches.

Each prompt is sent with `SamplingParams.extra_args` carrying its language and a unique key;
the workers route it and the key brings the frozen decision back (`collective_rpc`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from babelgate.errors import BabelgateError, DataError
from babelgate.vllm_plugin.compat import VllmCompatibilityError, check_vllm_version
from babelgate.vllm_plugin.routing import ENABLED_KEY, LANGUAGE_KEY, REQUEST_KEY

EXTENSION = "babelgate.vllm_plugin.worker.BabelgateWorkerExtension"
# Engine arguments the guard needs (see compat.check_engine_settings for why).
REQUIRED_ENGINE_ARGS: dict[str, Any] = {"enforce_eager": True, "enable_prefix_caching": False}


@dataclass
class VllmCompletion:
    """One request's output: generated token ids and text, plus its routing (None fields
    when the request was not guarded)."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    language: str | None
    guarded: bool
    fired: bool | None
    score: float | None
    threshold: float | None
    threshold_source: str | None
    language_fallback: bool
    route: dict[str, Any] = field(default_factory=dict)


def engine_kwargs(**kwargs: Any) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments with the guard's requirements enforced (a conflicting
    value is an error, not silently overridden)."""
    if kwargs.get("speculative_config"):
        raise VllmCompatibilityError("speculative decoding is not supported by the babelgate guard")
    for key, value in REQUIRED_ENGINE_ARGS.items():
        if key in kwargs and kwargs[key] != value:
            raise VllmCompatibilityError(
                f"the babelgate guard needs {key}={value}, got {kwargs[key]!r}"
            )
    ext = kwargs.get("worker_extension_cls", EXTENSION)
    if ext != EXTENSION:
        raise VllmCompatibilityError(f"worker_extension_cls must be {EXTENSION!r}, got {ext!r}")
    return {**kwargs, **REQUIRED_ENGINE_ARGS, "worker_extension_cls": EXTENSION}


class GuardedLLM:
    """A vLLM engine whose workers run the gate of `bundle`.

    `model`: a local Hugging Face directory vLLM can load; `engine_args`: passed to
    `vllm.LLM` (checked by `engine_kwargs`). `alpha`/`lam` as for the transformers guard;
    `expected_fingerprint`: refuse a bundle fitted on another model (`babelgate.models`
    computes it; None skips the check).
    """

    def __init__(
        self,
        model: str,
        bundle: str,
        *,
        alpha: float | None = None,
        lam: float | None = None,
        expected_fingerprint: str | None = None,
        **engine_args: Any,
    ) -> None:
        import vllm

        check_vllm_version(vllm.__version__)
        self.llm = vllm.LLM(model=model, **engine_kwargs(**engine_args))
        self.info = self.llm.collective_rpc(
            "babelgate_load",
            kwargs={
                "bundle": str(bundle),
                "alpha": alpha,
                "lam": lam,
                "expected_fingerprint": expected_fingerprint,
            },
        )[0]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        languages: Sequence[str | None] | str | None = None,
        *,
        sampling: Any = None,
        guarded: Sequence[bool] | bool = True,
        use_tqdm: bool = False,
    ) -> list[VllmCompletion]:
        """Generate for prompts given as token ids (format them with the model's chat template
        first, e.g. `ModelHandle.format` + tokenize without special tokens). Greedy, 128 new
        tokens unless `sampling` (a `vllm.SamplingParams`) says otherwise."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = len(prompts)
        if n == 0:
            raise DataError("no prompts to generate for")
        langs = (
            [languages] * n if languages is None or isinstance(languages, str) else list(languages)
        )
        flags = [guarded] * n if isinstance(guarded, bool) else list(guarded)
        if len(langs) != n or len(flags) != n:
            raise DataError(f"languages/guarded must have one entry per prompt ({n})")
        base = sampling if sampling is not None else SamplingParams(temperature=0.0, max_tokens=128)
        keys = [uuid.uuid4().hex for _ in range(n)]
        params = []
        for key, lang, flag in zip(keys, langs, flags, strict=True):
            p = base.clone()
            p.extra_args = {
                **(p.extra_args or {}),
                REQUEST_KEY: key,
                LANGUAGE_KEY: lang,
                ENABLED_KEY: flag,
            }
            params.append(p)
        inputs = [TokensPrompt(prompt_token_ids=list(map(int, ids))) for ids in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=use_tqdm)
        routes = {r["key"]: r for r in self.decisions(keys)}
        results = []
        for key, lang, flag, out in zip(keys, langs, flags, outputs, strict=True):
            route = routes.get(key)
            if flag and (route is None or route["fired"] is None):
                raise BabelgateError(f"no routing decision came back for a guarded request ({key})")
            completion = out.outputs[0]
            results.append(
                VllmCompletion(
                    prompt_token_ids=list(out.prompt_token_ids or []),
                    token_ids=list(completion.token_ids),
                    text=completion.text,
                    language=lang,
                    guarded=flag,
                    fired=route["fired"] if route else None,
                    score=route["score"] if route else None,
                    threshold=route["threshold"] if route else None,
                    threshold_source=route["threshold_source"] if route else None,
                    language_fallback=bool(route["language_fallback"]) if route else False,
                    route=route or {},
                )
            )
        return results

    def decisions(
        self, keys: Sequence[str] | None = None, pop: bool = True
    ) -> list[dict[str, Any]]:
        """Routes from the first worker (every rank decides identically)."""
        return list(
            self.llm.collective_rpc(
                "babelgate_decisions",
                kwargs={"keys": None if keys is None else list(keys), "pop": pop},
            )[0]
        )

    def stats(self) -> dict[str, Any]:
        return dict(self.llm.collective_rpc("babelgate_stats")[0])

    def unload(self) -> None:
        self.llm.collective_rpc("babelgate_unload")

    def __enter__(self) -> GuardedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the engine down (frees its worker processes)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        del self.llm


__all__ = ["EXTENSION", "BabelgateError", "GuardedLLM", "VllmCompletion", "engine_kwargs"]
