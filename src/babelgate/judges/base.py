"""The refusal-judge interface: one verdict per (prompt, response) pair."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from babelgate.errors import BabelgateError, DataError


class JudgeError(BabelgateError):
    """A judge could not produce verdicts (endpoint unreachable, bad reply, bad config)."""


@dataclass(frozen=True)
class Verdict:
    """Whether one response refuses its prompt, why, and which judge said so."""

    refusal: bool
    reason: str
    judge_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(abc.ABC):
    """Decides for each (prompt, response) pair whether the response is a refusal.

    `judge_id` names the judge and its version; verdicts and caches carry it so that
    results from different judges are never mixed.
    """

    judge_id: str

    @abc.abstractmethod
    def judge(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        languages: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """One verdict per row; `languages` (prompt language codes) is optional."""

    def judge_one(self, prompt: str, response: str, language: str | None = None) -> Verdict:
        return self.judge([prompt], [response], [language])[0]


def check_batch(
    prompts: Sequence[str],
    responses: Sequence[str],
    languages: Sequence[str | None] | None,
) -> list[str | None]:
    """Validate a judge batch; returns `languages` as a list of the same length."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise DataError("judge: prompts and responses must be sequences of strings, not a string")
    if len(prompts) != len(responses):
        raise DataError(
            f"judge: {len(prompts)} prompts but {len(responses)} responses; they must pair up"
        )
    for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"judge: row {index} has a non-string prompt or response")
    if languages is None:
        return [None] * len(prompts)
    if isinstance(languages, str) or len(languages) != len(prompts):
        raise DataError("judge: languages must be a sequence with one code (or None) per prompt")
    return list(languages)


def get_judge(name_or_url: str, **kwargs: Any) -> Judge:
    """Build a judge from a short spec.

    - ``"keyword"`` (or ``"offline"``): the offline multilingual phrase judge;
    - ``"http://host:port/v1"`` or ``"https://…"``: an LLM judge at that
      OpenAI-compatible base URL (pass ``model=`` in `kwargs`);
    - ``"llm:MODEL@URL"``: an LLM judge for MODEL at URL.

    Remaining `kwargs` go to the judge's constructor.
    """
    spec = name_or_url.strip()
    lowered = spec.lower()
    if lowered in {"keyword", "keywords", "offline"}:
        from babelgate.judges.keyword import KeywordJudge

        return KeywordJudge(**kwargs)
    if lowered.startswith(("http://", "https://")):
        from babelgate.judges.llm import LLMJudge

        if "model" not in kwargs:
            raise JudgeError(
                f"LLM judge at {spec}: no model given; pass model=... or use 'llm:MODEL@{spec}'"
            )
        return LLMJudge(base_url=spec, **kwargs)
    if lowered.startswith("llm:"):
        from babelgate.judges.llm import LLMJudge

        body = spec[4:]
        cut = max(body.rfind("@http://"), body.rfind("@https://"))
        if cut <= 0:
            raise JudgeError(f"bad judge spec {spec!r}: expected 'llm:MODEL@http(s)://host/v1'")
        return LLMJudge(base_url=body[cut + 1 :], model=body[:cut], **kwargs)
    raise JudgeError(
        f"unknown judge {spec!r}: use 'keyword', an http(s) base URL, or 'llm:MODEL@URL'"
    )
