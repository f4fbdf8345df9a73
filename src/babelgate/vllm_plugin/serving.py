"""`VllmEngine`: the server's model side on vLLM (`babelgate serve --backend vllm`).

It offers what `babelgate.server.engine.Engine` offers to the HTTP app (chat templating,
token counting, `run_chat`, `run_moderation`), so both back ends serve the same endpoints,
limits, auth and metrics. Routing happens in the vLLM workers (`GuardedLLM`); each request's
frozen decision comes back with its output.

Differences from the transformers back end: every request of a batch keeps its own sampling
settings (vLLM samples per request), and a streamed completion arrives as one chunk when its
generation ends (the offline `LLM` engine returns whole outputs).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from babelgate.errors import BabelgateError
from babelgate.gate import Gate
from babelgate.server.decoding import FINISH_LENGTH
from babelgate.server.engine import (
    ChatJob,
    Delta,
    Failed,
    Finished,
    ModerationJob,
    PromptEncoder,
    Started,
    Verdict,
    answer_moderation,
)
from babelgate.server.metrics import ServerMetrics
from babelgate.vllm_plugin.engine import GuardedLLM, VllmCompletion


def verdict_of(completion: VllmCompletion) -> Verdict:
    """The gate's routing of one vLLM request as the server reports it."""
    if completion.fired is None or completion.score is None:
        raise BabelgateError("the vLLM guard made no decision for a request")
    return Verdict(
        fired=bool(completion.fired),
        score=float(completion.score),
        threshold=float("nan") if completion.threshold is None else float(completion.threshold),
        threshold_source=str(completion.threshold_source or "source"),
    )


class VllmEngine(PromptEncoder):
    """A guarded vLLM engine behind the babelgate HTTP app.

    `model_dir`: a Hugging Face directory vLLM can load; `gate`: the bundle's gate (already
    checked against the model); `engine_args`: passed to `GuardedLLM` / `vllm.LLM`.
    """

    def __init__(
        self,
        model_dir: str,
        bundle: str,
        gate: Gate,
        *,
        name: str,
        fingerprint: str,
        alpha: float | None = None,
        lam: float | None = None,
        system_prompt: str | None = None,
        **engine_args: Any,
    ) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        super().__init__(tokenizer, system_prompt)
        self.output_tokenizer = tokenizer  # worker thread only
        self.gate = gate
        self.name = name
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.llm = GuardedLLM(
            model_dir,
            bundle,
            alpha=alpha,
            lam=lam,
            expected_fingerprint=fingerprint,
            **engine_args,
        )

    def _decode(self, ids: list[int]) -> str:
        return str(self.output_tokenizer.decode(ids, skip_special_tokens=True))

    def _sampling(self, job: ChatJob) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            temperature=job.temperature,
            top_p=job.top_p,
            max_tokens=job.max_tokens,
            stop=list(job.stop) or None,
            seed=job.seed,
        )

    def run_chat(self, jobs: Sequence[ChatJob], metrics: ServerMetrics | None = None) -> None:
        """Generate for a batch of jobs in one vLLM call (each with its own sampling)."""
        if metrics is not None:
            metrics.batch_size.observe(len(jobs), kind="chat")
        try:
            with self.lock:
                outs = self.llm.generate(
                    [job.input_ids for job in jobs],
                    [job.language for job in jobs],
                    sampling=[self._sampling(job) for job in jobs],
                )
        except Exception as exc:
            for job in jobs:
                job.emit(Failed(exc))
            return
        for job, out in zip(jobs, outs, strict=True):
            try:
                verdict = verdict_of(out)
            except BabelgateError as exc:
                job.emit(Failed(exc))
                continue
            # Without stop strings the text is decoded here, as the transformers back end does
            # (vLLM's detokenizer holds back a trailing partial UTF-8 character); with them,
            # vLLM's text is the one truncated at the stop string.
            text = out.text if job.stop else self._decode(out.token_ids)
            job.emit(Started(verdict))
            if text:
                job.emit(Delta(text))
            job.emit(Finished(out.finish_reason or FINISH_LENGTH, len(out.token_ids), text))
            if metrics is not None:
                metrics.tokens.inc(len(out.token_ids))

    def run_moderation(
        self, jobs: Sequence[ModerationJob], metrics: ServerMetrics | None = None
    ) -> None:
        """Score every text: a prefill with one generated token, whose routing is the verdict."""
        from vllm import SamplingParams

        def score(texts: list[str], languages: list[str | None]) -> list[Verdict]:
            with self.lock:
                outs = self.llm.generate(
                    self.moderation_ids(texts),
                    languages,
                    sampling=SamplingParams(temperature=0.0, max_tokens=1),
                )
            return [verdict_of(o) for o in outs]

        n_texts = answer_moderation(jobs, score)
        if metrics is not None and n_texts:
            metrics.batch_size.observe(n_texts, kind="moderation")

    def close(self) -> None:
        self.llm.close()


__all__ = ["VllmEngine", "verdict_of"]
