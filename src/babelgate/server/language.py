"""Which language's threshold a request is gated with: the caller's (`metadata.language` or
the `X-Babelgate-Language` header), else language identification of the text, else none
(the source-only threshold)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from babelgate.langid import UNDETERMINED, detect_language
from babelgate.languages import LanguageRegistry, normalize_code
from babelgate.server.errors import APIError

LANGUAGE_HEADER = "x-babelgate-language"


@dataclass(frozen=True)
class LanguageChoice:
    """`language`: the code reported to the client ("und" when unknown); `source`: "request",
    "detected" or "fallback"; `gate_language`: the code given to the gate (None = source-only)."""

    language: str
    source: str
    gate_language: str | None


class LanguageResolver:
    """Resolves request languages against a registry plus the gate's own languages (a gate
    may be calibrated for a language the user added to their registry)."""

    def __init__(self, registry: LanguageRegistry, extra_codes: Iterable[str] = ()) -> None:
        self.registry = registry
        self.extra = {normalize_code(c) for c in extra_codes}

    def known(self, code: str) -> bool:
        return code in self.registry or normalize_code(code) in self.extra

    def requested(self, code: str, param: str) -> LanguageChoice:
        if not isinstance(code, str) or not code.strip() or len(code) > 32:
            raise APIError(
                400, f"{param} must be a language code such as 'sw'", "invalid_language", param
            )
        normalized = normalize_code(code)
        if not self.known(normalized):
            raise APIError(
                400,
                f"unknown language code {code!r} in {param}; use a registry code (e.g. 'en', 'sw', "
                "'am') or omit it to let the server detect the language",
                "invalid_language",
                param,
            )
        return LanguageChoice(normalized, "request", normalized)

    def detect(self, text: str) -> LanguageChoice:
        detection = detect_language(text, registry=self.registry)
        if detection.code == UNDETERMINED:
            return LanguageChoice(UNDETERMINED, "fallback", None)
        return LanguageChoice(detection.code, "detected", detection.code)

    def resolve(self, requested: str | None, param: str, text: str) -> LanguageChoice:
        if requested is not None:
            return self.requested(requested, param)
        return self.detect(text)
