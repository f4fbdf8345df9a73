"""`load_model`: one handle (model, tokenizer, chat formatting, architecture facts) for a
packaged alias, a local Hugging Face directory, a local .gguf file or a hub id."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from babelgate.errors import ModelLoadError
from babelgate.fingerprint import model_fingerprint
from babelgate.formatting import Message, format_chat, prepare_tokenizer, tokenize_formatted
from babelgate.layers import find_decoder_blocks
from babelgate.packaged import DEFAULT_MODEL, PACKAGED_MODELS, ensure_cached

# Chosen from benchmarks/dtype_choice.py on the 0.5B model (2-core avx512_bf16 CPU): bfloat16
# captured 1.99x and generated 2.20x faster than float32, activations moved 1 % (relative L2,
# min cosine 0.9999) and 16/16 greedy outputs were identical. Pass dtype="float32" to opt out.
DEFAULT_CPU_DTYPE = torch.bfloat16


@dataclass
class ModelHandle:
    """A loaded chat model with the facts every pipeline stage needs."""

    model: nn.Module
    tokenizer: Any
    name: str
    fingerprint: str
    blocks_path: str
    blocks: list[nn.Module] = field(repr=False)
    system_prompt: str | None = None
    source: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        config: Any = self.model.config
        text: Any = getattr(config, "text_config", None) or config
        return int(getattr(text, "hidden_size", None) or text.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def format(self, prompts: Sequence[str | Sequence[Message]]) -> list[str]:
        """Chat-templated texts (generation prompt included) for user texts or message lists."""
        return [format_chat(self.tokenizer, p, self.system_prompt) for p in prompts]

    def tokenize(self, formatted: Sequence[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch on the model's device, no extra special tokens."""
        return tokenize_formatted(self.tokenizer, formatted, self.device)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "architecture": type(self.model).__name__,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "blocks_path": self.blocks_path,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "system_prompt": self.system_prompt
            if self.system_prompt is not None
            else "<template default>",
            **{f"source_{k}": v for k, v in self.source.items()},
        }


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    name: str = "in-memory",
    layers_path: str | None = None,
    system_prompt: str | None = None,
    weights_sha: str | None = None,
    source: dict[str, str] | None = None,
) -> ModelHandle:
    """Build a handle around an already loaded transformers model and tokenizer."""
    prepare_tokenizer(tokenizer)
    model.eval()
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    blocks_path, blocks = find_decoder_blocks(model, layers_path)
    return ModelHandle(
        model=model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=model_fingerprint(model, tokenizer, weights_sha),
        blocks_path=blocks_path,
        blocks=blocks,
        system_prompt=system_prompt,
        source=source or {},
    )


def configure_threads() -> int:
    """Use every core for intra-op work (2 on the reference machine) and one inter-op thread;
    `BABELGATE_THREADS` overrides."""
    wanted = int(os.environ.get("BABELGATE_THREADS", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(wanted)
    return wanted


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return DEFAULT_CPU_DTYPE if device == "cpu" else torch.bfloat16
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use one of {', '.join(table)}")
    return table[dtype]


@dataclass(frozen=True)
class ModelLocation:
    """Where a model spec's files are: `path` (directory or hub id), its kind (packaged,
    hf_dir, gguf, hub), the packaged file's sha256 and the GGUF file name when relevant."""

    path: str
    kind: str
    weights_sha: str | None = None
    gguf_file: str | None = None


def locate_model(spec: str, *, progress: bool = True) -> ModelLocation:
    """Resolve a model spec without loading it (a packaged alias is converted once)."""
    if spec in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[spec]
        directory = ensure_cached(packaged, progress=progress)
        return ModelLocation(str(directory), "packaged", packaged.sha256)
    local = Path(spec).expanduser()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise ModelLoadError(f"GGUF file not found: {local}")
        return ModelLocation(str(local.parent), "gguf", gguf_file=local.name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a Hugging Face model directory (no config.json)")
        return ModelLocation(str(local), "hf_dir")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ModelLocation(spec, "hub")
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise ModelLoadError(
        f"'{spec}' is neither a packaged alias ({known}), a model directory, a .gguf "
        "file nor a hub id (owner/name)"
    )


def load_model(
    spec: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    layers_path: str | None = None,
    system_prompt: str | None = None,
    progress: bool = True,
) -> ModelHandle:
    """Load a chat model.

    `spec` is a packaged alias (`qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`), a local Hugging Face
    directory, a local `.gguf` file, or a hub id (needs network). `dtype` defaults to bfloat16
    (measured fastest on CPU with unchanged greedy outputs; see DEFAULT_CPU_DTYPE).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    configure_threads()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    spec_str = str(spec)
    location = locate_model(spec_str, progress=progress)
    path, kind, weights_sha = location.path, location.kind, location.weights_sha
    kwargs: dict[str, Any] = {}
    if location.gguf_file is not None:
        kwargs["gguf_file"] = location.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except OSError as exc:
        if kind == "hub":
            raise ModelLoadError(
                f"cannot load hub model '{spec_str}': it is not cached locally and the hub could "
                f"not be reached ({type(exc).__name__}); download it first or give a local path"
            ) from exc
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    except ValueError as exc:
        raise ModelLoadError(f"cannot load model '{spec_str}': {exc}") from exc
    model = model.to(device=device, dtype=torch_dtype)  # type: ignore[call-arg]
    return wrap_model(
        model,
        tokenizer,
        name=spec_str,
        layers_path=layers_path,
        system_prompt=system_prompt,
        weights_sha=weights_sha,
        source={"kind": kind, "path": path},
    )
