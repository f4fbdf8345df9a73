"""Model fingerprint: a stable digest of config, tokenizer and weights that artifacts record,
so a gate fitted on one model refuses to load onto another."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

# Config fields that describe how a model was saved or loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_commit_hash",
    "_attn_implementation_autoset",
    "use_cache",
    "architectures",
    "_attn_implementation",
}


def config_digest(config: Any) -> str:
    data = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return digest.hexdigest()


@torch.no_grad()
def weights_digest(model: torch.nn.Module, sample: int = 256) -> str:
    """Digest of every parameter's name, shape and first `sample` values rounded to bfloat16
    (so the same weights give the same digest whether loaded in float32 or bfloat16)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)[:sample].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(
    model: torch.nn.Module, tokenizer: Any, weights_sha: str | None = None
) -> str:
    """`weights_sha` (the packaged file's sha256) replaces the sampled weights digest when known."""
    parts = [
        config_digest(model.config),  # type: ignore[attr-defined]
        tokenizer_digest(tokenizer),
        weights_sha or weights_digest(model),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
