"""Activation capture: residual stream at chosen decoder blocks, last prompt token or mean over
prompt tokens, batched, with an on-disk safetensors cache that resumes interrupted runs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from babelgate._version import __version__
from babelgate.errors import BabelgateError
from babelgate.formatting import Message
from babelgate.io import atomic_path, cache_root, sha256_text
from babelgate.models import ModelHandle
from babelgate.progress import advance, progress_bar

Position = Literal["last", "mean"]
CAPTURE_FORMAT = 1


class _StopForward(Exception):
    """Raised after the deepest requested block: the rest of the network is not needed."""


def block_hidden(output: object) -> torch.Tensor:
    """The residual-stream tensor [batch, seq, d] of a decoder block's output (Tensor or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise BabelgateError(f"unexpected decoder block output type {type(output).__name__}")


@dataclass
class _CaptureState:
    """Per-call state of the capture hooks (never stored on modules or globals)."""

    position: Position
    attention_mask: torch.Tensor | None = None
    stop_after: int = -1
    rows: dict[int, torch.Tensor] = field(default_factory=dict)


def _pool(hidden: torch.Tensor, state: _CaptureState) -> torch.Tensor:
    if state.position == "last":
        return hidden[:, -1, :].float()
    assert state.attention_mask is not None
    mask = state.attention_mask.to(hidden.dtype).unsqueeze(-1)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).float()


@contextmanager
def capture_hooks(
    blocks: Sequence[nn.Module], layers: Sequence[int], state: _CaptureState
) -> Iterator[None]:
    """Install recording hooks on `blocks[layer]` for each layer; always removed on exit."""
    handles = []

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            state.rows[layer] = _pool(block_hidden(output), state).cpu()
            if layer == state.stop_after:
                raise _StopForward

        return hook

    try:
        for layer in layers:
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def resolve_layers(handle: ModelHandle, layers: int | Sequence[int] | str) -> list[int]:
    """Layer indices (negative counts from the end; 'all' = every block), validated."""
    if isinstance(layers, str):
        if layers != "all":
            raise BabelgateError(f"layers must be an int, a list of ints or 'all', got '{layers}'")
        return list(range(handle.n_layers))
    wanted = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in wanted:
        index = layer + handle.n_layers if layer < 0 else layer
        if not 0 <= index < handle.n_layers:
            raise BabelgateError(
                f"layer {layer} out of range for a model with {handle.n_layers} blocks"
            )
        out.append(index)
    if not out:
        raise BabelgateError("no layers requested")
    return out


@torch.no_grad()
def forward_batch(
    handle: ModelHandle, formatted: Sequence[str], layers: Sequence[int], position: Position
) -> torch.Tensor:
    """Activations [batch, len(layers), d] (float32, CPU) of one batch of formatted texts."""
    batch = handle.tokenize(formatted)
    state = _CaptureState(
        position=position, attention_mask=batch["attention_mask"], stop_after=max(layers)
    )
    with (
        capture_hooks(handle.blocks, sorted(set(layers)), state),
        contextlib.suppress(_StopForward),
    ):
        handle.model(**batch, use_cache=False)
    missing = [layer for layer in layers if layer not in state.rows]
    if missing:
        raise BabelgateError(f"blocks {missing} were not executed by the forward pass")
    acts = torch.stack([state.rows[layer] for layer in layers], dim=1)
    if not torch.isfinite(acts).all():
        raise BabelgateError("non-finite activations (NaN/inf) from the model; try dtype float32")
    return acts


def _cache_key(
    handle: ModelHandle,
    formatted: Sequence[str],
    layers: Sequence[int],
    position: str,
    batch_size: int,
) -> str:
    prompts_digest = sha256_text(*formatted)
    return sha256_text(
        handle.fingerprint,
        str(handle.dtype),
        prompts_digest,
        ",".join(map(str, layers)),
        position,
        str(batch_size),
        __version__,
        str(CAPTURE_FORMAT),
    )[:40]


def _batch_order(handle: ModelHandle, formatted: Sequence[str], batch_size: int) -> list[list[int]]:
    """Batches of row indices grouped by token length (less padding); deterministic."""
    lengths = [
        len(ids) for ids in handle.tokenizer(list(formatted), add_special_tokens=False)["input_ids"]
    ]
    order = sorted(range(len(formatted)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def capture(
    handle: ModelHandle,
    prompts: Sequence[str | Sequence[Message]],
    layers: int | Sequence[int] | str,
    position: Position = "last",
    *,
    batch_size: int = 8,
    cache: bool | str | Path = True,
    formatted: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """Residual-stream activations of `prompts` at the outputs of decoder blocks `layers`.

    Returns float32 `[n_prompts, n_layers, hidden]` in prompt order. `position="last"` takes the
    final prompt token (after the assistant header); `"mean"` averages over non-pad tokens.
    With `cache` (True = `$BABELGATE_CACHE/activations`, or a directory), each finished batch is
    stored; a repeated call reads the result and an interrupted call resumes.
    """
    if position not in ("last", "mean"):
        raise BabelgateError(f"position must be 'last' or 'mean', got '{position}'")
    if not prompts:
        raise BabelgateError("no prompts to capture")
    layer_list = resolve_layers(handle, layers)
    texts = [str(p) for p in prompts] if formatted else handle.format(prompts)
    batches = _batch_order(handle, texts, batch_size)
    cache_dir: Path | None = None
    if cache:
        root = Path(cache) if isinstance(cache, str | Path) else cache_root() / "activations"
        cache_dir = root / _cache_key(handle, texts, layer_list, position, batch_size)
        final = cache_dir / "activations.safetensors"
        if final.is_file():
            try:
                cached = load_file(str(final))["activations"]
                if cached.shape == (len(texts), len(layer_list), handle.hidden_size):
                    return cached
            except Exception:  # a corrupted cache file is rebuilt, never used
                final.unlink(missing_ok=True)
    out = torch.empty(len(texts), len(layer_list), handle.hidden_size)
    with progress_bar("capture", total=len(texts), enabled=progress) as bar:
        for index, rows in enumerate(batches):
            shard = cache_dir / f"batch_{index:05d}.safetensors" if cache_dir else None
            acts = _read_shard(shard, len(rows), len(layer_list), handle.hidden_size)
            if acts is None:
                acts = forward_batch(handle, [texts[i] for i in rows], layer_list, position)
                if shard is not None:
                    with atomic_path(shard) as tmp:
                        save_file({"activations": acts.contiguous()}, str(tmp))
            out[rows] = acts
            advance(bar, len(rows))
    if cache_dir is not None:
        with atomic_path(cache_dir / "activations.safetensors") as tmp:
            save_file({"activations": out.contiguous()}, str(tmp))
        (cache_dir / "meta.json").write_text(
            json.dumps(
                {
                    "fingerprint": handle.fingerprint,
                    "layers": layer_list,
                    "position": position,
                    "n_prompts": len(texts),
                    "batch_size": batch_size,
                    "version": __version__,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        for shard_file in cache_dir.glob("batch_*.safetensors"):
            shard_file.unlink()
    return out


def _read_shard(shard: Path | None, rows: int, n_layers: int, hidden: int) -> torch.Tensor | None:
    if shard is None or not shard.is_file():
        return None
    try:
        acts = load_file(str(shard))["activations"]
    except Exception:
        shard.unlink(missing_ok=True)
        return None
    if acts.shape != (rows, n_layers, hidden) or not torch.isfinite(acts).all():
        shard.unlink(missing_ok=True)
        return None
    return acts
