"""Refusal judges behind one interface: an offline multilingual phrase judge and an LLM
judge for any OpenAI-compatible endpoint."""

from babelgate.judges.base import Judge, JudgeError, Verdict, get_judge
from babelgate.judges.keyword import KeywordJudge, normalize_text
from babelgate.judges.llm import LLMJudge, parse_verdict
from babelgate.judges.phrases import LanguagePhrases, default_phrases, register_phrases

__all__ = [
    "Judge",
    "JudgeError",
    "KeywordJudge",
    "LLMJudge",
    "LanguagePhrases",
    "Verdict",
    "default_phrases",
    "get_judge",
    "normalize_text",
    "parse_verdict",
    "register_phrases",
]
