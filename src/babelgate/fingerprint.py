"""Model fingerprint: a stable digest of config, tokenizer and weights that artifacts record,
so a gate fitted on one model refuses to load onto another."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
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


def _safetensors_index(directory: Path) -> dict[str, Path]:
    """Tensor name → file, from `model.safetensors.index.json` or every `*.safetensors`."""
    from safetensors import safe_open

    index_file = directory / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    out: dict[str, Path] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({name: file for name in handle.keys()})  # noqa: SIM118
    return out


def directory_weights_digest(directory: Path, config: Any, sample: int = 256) -> str:
    """`weights_digest` of the model saved in `directory`, read from its safetensors files
    without loading the model: parameter names, order and shapes come from the architecture
    built on the meta device, the first `sample` values of each from the files."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from babelgate.errors import ArtifactError

    files = _safetensors_index(directory)
    if not files:
        raise ArtifactError(f"{directory} has no safetensors weights to fingerprint")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        file = files.get(name)
        if file is None:
            raise ArtifactError(
                f"cannot fingerprint {directory} without loading it: parameter {name!r} is not "
                "stored under that name; load the model with babelgate (or pass the fingerprint)"
            )
        with safe_open(str(file), framework="pt") as handle:
            view = handle.get_slice(name)
            shape = tuple(view.get_shape())
            if shape != tuple(param.shape):
                raise ArtifactError(
                    f"{name} has shape {shape} in {file.name}, expected {param.shape}"
                )
            per_row = 1
            for size in shape[1:]:
                per_row *= int(size)
            rows = min(int(shape[0]), -(-sample // max(per_row, 1))) if shape else 1
            values = view[:rows] if shape else handle.get_tensor(name)
        flat = values.reshape(-1)[:sample].to(torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()


def directory_fingerprint(directory: str | Path, weights_sha: str | None = None) -> str:
    """The `model_fingerprint` of the model saved in a Hugging Face directory, computed from
    its config, tokenizer and safetensors files without loading the weights (for back ends
    such as vLLM that load the model themselves). A packaged model's converted copy is
    recognised by its manifest and fingerprinted by the packaged file's sha256, as
    `load_model` does."""
    from transformers import AutoConfig, AutoTokenizer

    from babelgate.packaged import MANIFEST

    path = Path(directory)
    manifest = path / MANIFEST
    if weights_sha is None and manifest.is_file():
        weights_sha = json.loads(manifest.read_text(encoding="utf-8")).get("source_sha256")
    config = AutoConfig.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    parts = [
        config_digest(config),
        tokenizer_digest(tokenizer),
        weights_sha or directory_weights_digest(path, config),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
