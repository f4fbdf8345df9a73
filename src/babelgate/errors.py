"""Error types. A `BabelgateError` is a user-facing problem: the CLI prints its message
and exits with code 2, the server answers with HTTP 4xx."""

from __future__ import annotations


class BabelgateError(Exception):
    """Bad input or an artifact that cannot be used; the message says what and where."""


class DataError(BabelgateError):
    """A prompt file, data directory or example set is missing or malformed."""


class ModelLoadError(BabelgateError):
    """A model spec cannot be resolved, downloaded, verified or loaded."""


class UnsupportedArchitectureError(BabelgateError):
    """The model's decoder blocks cannot be found."""


class ArtifactError(BabelgateError):
    """A bundle or cache file is tampered, truncated, of another version or another model."""
