"""Model loading, layer discovery, chat formatting and fingerprints (tiny models, no download)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from babelgate.errors import ModelLoadError, UnsupportedArchitectureError
from babelgate.layers import find_decoder_blocks
from babelgate.models import load_model, wrap_model
from babelgate.testing import tiny_model


@pytest.mark.parametrize(
    ("arch", "path"),
    [
        ("llama", "model.layers"),
        ("qwen2", "model.layers"),
        ("gemma", "model.layers"),
        ("gpt2", "transformer.h"),
    ],
)
def test_layer_discovery(arch: str, path: str) -> None:
    handle = tiny_model(arch)
    assert handle.blocks_path == path
    assert handle.n_layers == 4
    assert handle.hidden_size == 64


def test_layer_override_and_unsupported_architecture() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Module()
            self.trunk.stack = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    odd = Odd()
    with pytest.raises(UnsupportedArchitectureError, match="Odd"):
        find_decoder_blocks(odd)
    path, blocks = find_decoder_blocks(odd, "trunk.stack")
    assert path == "trunk.stack" and len(blocks) == 2
    with pytest.raises(UnsupportedArchitectureError, match=r"trunk\.missing"):
        find_decoder_blocks(odd, "trunk.missing")


def test_chat_formatting_single_tokenization_path() -> None:
    handle = tiny_model("qwen2")
    (text,) = handle.format(["hello"])
    assert text.endswith("<|im_start|>assistant\n")
    batch = handle.tokenize(handle.format(["hello", "a much longer prompt than the first one"]))
    assert batch["attention_mask"][0, 0] == 0  # left padding
    assert batch["attention_mask"][:, -1].all()
    assert handle.tokenizer.padding_side == "left"
    with_system = wrap_model(handle.model, handle.tokenizer, system_prompt="Be brief.")
    assert with_system.format(["hi"])[0].startswith("<|im_start|>system\nBe brief.")


def test_local_directory_roundtrip_and_fingerprint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    handle = tiny_model("llama", seed=1)
    handle.model.save_pretrained(tmp_path)
    handle.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), progress=False)
    assert loaded.fingerprint == handle.fingerprint
    assert loaded.source["kind"] == "hf_dir"
    bf16 = load_model(str(tmp_path), dtype="bfloat16", progress=False)
    assert bf16.dtype == torch.bfloat16
    assert bf16.fingerprint == handle.fingerprint  # same weights, other dtype
    other = tiny_model("llama", seed=2)
    assert other.fingerprint != handle.fingerprint


def test_load_errors_are_clear(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match="neither a packaged alias"):
        load_model("no-such-model-alias", progress=False)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"), progress=False)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path), progress=False)
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(str(tmp_path), dtype="float8", progress=False)


def test_hub_id_offline_names_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="babelgate-test/does-not-exist"):
        load_model("babelgate-test/does-not-exist", progress=False)
