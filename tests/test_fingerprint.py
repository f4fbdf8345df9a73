"""Model fingerprints: stable across dtypes, and computable from a saved model directory
without loading it (what the vLLM back end checks bundles with)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babelgate.errors import ArtifactError
from babelgate.fingerprint import directory_fingerprint
from babelgate.models import load_model
from babelgate.testing import tiny_model


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt2"])
def test_directory_fingerprint_equals_loaded_model_fingerprint(arch: str, tmp_path: Path) -> None:
    handle = tiny_model(arch)
    handle.model.save_pretrained(tmp_path)
    handle.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16", progress=False)
    assert directory_fingerprint(tmp_path) == loaded.fingerprint == handle.fingerprint


def test_directory_fingerprint_sees_a_changed_weight(tmp_path: Path) -> None:
    handle = tiny_model("qwen2")
    handle.model.save_pretrained(tmp_path / "a")
    handle.tokenizer.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        handle.model.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0  # type: ignore[union-attr, index]
    handle.model.save_pretrained(tmp_path / "b")
    handle.tokenizer.save_pretrained(tmp_path / "b")
    assert directory_fingerprint(tmp_path / "a") != directory_fingerprint(tmp_path / "b")


def test_directory_without_safetensors_is_an_artifact_error(tmp_path: Path) -> None:
    handle = tiny_model("llama")
    handle.model.config.save_pretrained(tmp_path)
    handle.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match="no safetensors"):
        directory_fingerprint(tmp_path)
