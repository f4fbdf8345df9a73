"""`GuardedLLM`: a `vllm.LLM` with babelgate's guard on every worker, for offline batches.

Each prompt is sent with `SamplingParams.extra_args` carrying its language and a unique key;
the workers route it and the key brings the frozen decision back (`collective_rpc`).
"""

from __future__ import annotations

import hashlib
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
    finish_reason: str | None = None


def engine_kwargs(*, salted_prefix_cache: bool = False, **kwargs: Any) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments with the guard's requirements enforced (a conflicting
    value is an error, not silently overridden). `salted_prefix_cache` turns prefix caching
    on; the caller must then give every request a `routing_salt` (GuardedLLM does)."""
    if kwargs.get("speculative_config"):
        raise VllmCompatibilityError("speculative decoding is not supported by the babelgate guard")
    required = {**REQUIRED_ENGINE_ARGS, "enable_prefix_caching": salted_prefix_cache}
    for key, value in required.items():
        if key in kwargs and kwargs[key] != value:
            hint = " (prefix caching needs salted_prefix_cache=True)" if key.endswith("ing") else ""
            raise VllmCompatibilityError(
                f"the babelgate guard needs {key}={value}, got {kwargs[key]!r}{hint}"
            )
    ext = kwargs.get("worker_extension_cls", EXTENSION)
    if ext != EXTENSION:
        raise VllmCompatibilityError(f"worker_extension_cls must be {EXTENSION!r}, got {ext!r}")
    return {**kwargs, **required, "worker_extension_cls": EXTENSION}


def routing_salt(
    prompt_ids: Sequence[int], language: str | None, guarded: bool, bundle: str
) -> str:
    """A prefix-cache salt under which two requests share cached KV only when the guard must
    route them identically: same prompt tokens, language, guarded flag and gate bundle.

    The KV of prompt tokens above layer L depends on the decision (ablated for gate-negative
    requests), and the decision depends on the whole prompt, so a shared *prefix* is not
    enough; an identical request (a retry, a repeated system + user turn) still hits the cache.
    """
    digest = hashlib.sha256()
    digest.update(f"{bundle}|{language}|{int(guarded)}|".encode())
    digest.update(",".join(map(str, prompt_ids)).encode())
    return digest.hexdigest()


class GuardedLLM:
    """A vLLM engine whose workers run the gate of `bundle`.

    `model`: a local Hugging Face directory vLLM can load; `engine_args`: passed to
    `vllm.LLM` (checked by `engine_kwargs`). `alpha`/`lam` as for the transformers guard;
    `expected_fingerprint`: refuse a bundle fitted on another model; by default it is
    computed from the model directory's config, tokenizer and safetensors files
    (`babelgate.fingerprint.directory_fingerprint`, no weights loaded); pass `""` to skip.
    `salted_prefix_cache`: enable vLLM's prefix cache with a per-request `routing_salt`.
    """

    def __init__(
        self,
        model: str,
        bundle: str,
        *,
        alpha: float | None = None,
        lam: float | None = None,
        expected_fingerprint: str | None = None,
        weights_sha: str | None = None,
        salted_prefix_cache: bool = False,
        **engine_args: Any,
    ) -> None:
        import vllm

        from babelgate.bundle import load_gate
        from babelgate.fingerprint import directory_fingerprint

        check_vllm_version(vllm.__version__)
        if expected_fingerprint is None:
            expected_fingerprint = directory_fingerprint(model, weights_sha)
        # Checked before the engine starts: a mismatched bundle costs no engine start-up.
        load_gate(bundle, expected_fingerprint=expected_fingerprint or None)
        self.bundle = str(bundle)
        self.fingerprint = expected_fingerprint or None
        self.salted_prefix_cache = salted_prefix_cache
        self.llm = vllm.LLM(
            model=model, **engine_kwargs(salted_prefix_cache=salted_prefix_cache, **engine_args)
        )
        self.info = self.llm.collective_rpc(
            "babelgate_load",
            kwargs={
                "bundle": self.bundle,
                "alpha": alpha,
                "lam": lam,
                "expected_fingerprint": self.fingerprint,
                "salted_prefix_cache": salted_prefix_cache,
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
        tokens unless `sampling` (a `vllm.SamplingParams`, or one per prompt) says otherwise."""
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
        if sampling is None:
            sampling = SamplingParams(temperature=0.0, max_tokens=128)
        bases = list(sampling) if isinstance(sampling, list | tuple) else [sampling] * n
        if len(bases) != n:
            raise DataError(f"sampling must be one SamplingParams or one per prompt ({n})")
        keys = [uuid.uuid4().hex for _ in range(n)]
        params = []
        for key, lang, flag, base in zip(keys, langs, flags, bases, strict=True):
            p = base.clone()
            p.extra_args = {
                **(p.extra_args or {}),
                REQUEST_KEY: key,
                LANGUAGE_KEY: lang,
                ENABLED_KEY: flag,
            }
            params.append(p)
        inputs = []
        for ids, lang, flag in zip(prompts, langs, flags, strict=True):
            tokens = list(map(int, ids))
            item = TokensPrompt(prompt_token_ids=tokens)
            if self.salted_prefix_cache:
                item["cache_salt"] = routing_salt(tokens, lang, flag, self.bundle)
            inputs.append(item)
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
                    finish_reason=completion.finish_reason,
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


__all__ = [
    "EXTENSION",
    "BabelgateError",
    "GuardedLLM",
    "VllmCompletion",
    "engine_kwargs",
    "routing_salt",
]
