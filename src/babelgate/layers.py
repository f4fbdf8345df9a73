"""Find the decoder blocks of a causal LM (the modules whose outputs are the residual stream)."""

from __future__ import annotations

from torch import nn

from babelgate.errors import UnsupportedArchitectureError

# Dotted paths tried in order. Covers Llama, Qwen2/3, Mistral, Phi-3, Gemma 2/3 (text and
# multimodal wrappers), GPT-2-style, GPT-NeoX and OPT layouts.
KNOWN_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)


def _resolve(root: nn.Module, dotted: str) -> object | None:
    node: object = root
    for part in dotted.split("."):
        if not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node


def find_decoder_blocks(model: nn.Module, path: str | None = None) -> tuple[str, list[nn.Module]]:
    """Return (dotted path, list of decoder blocks) for `model`.

    `path` overrides discovery with a dotted attribute path (e.g. "model.layers").
    Raises UnsupportedArchitectureError naming the model class when nothing matches.
    """
    candidates = (path,) if path else KNOWN_BLOCK_PATHS
    for dotted in candidates:
        node = _resolve(model, dotted)
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return dotted, list(node)
    cls = type(model).__name__
    if path:
        raise UnsupportedArchitectureError(
            f"{cls} has no non-empty nn.ModuleList at '{path}'; give the dotted path of its "
            "decoder blocks (e.g. 'model.layers')"
        )
    raise UnsupportedArchitectureError(
        f"cannot find the decoder blocks of {cls}: tried {', '.join(KNOWN_BLOCK_PATHS)}; "
        "pass layers_path='<dotted path>' (CLI: --layers-path) to name them"
    )
