"""Gate bundles: exact round trip and refusal of tampered, truncated, foreign or stale files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from babelgate._version import __version__
from babelgate.bundle import FORMAT_VERSION, _canonical_digest, load_gate, save_gate
from babelgate.errors import ArtifactError
from babelgate.gate import Gate, sample_budget


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matmuls are dominated by thread wake-ups on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _world(seed: int = 0, d: int = 24):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    acts, labels, langs = [], [], []
    for k, lang in enumerate(("en", "de", "fr", "sw")):
        tilt = torch.randn(d, generator=gen) * 0.1
        shift = -6.0 * u if lang == "sw" else torch.zeros(d)
        for label, count in ((1, 60), (0, 50)):
            rows = torch.randn(count, d, generator=gen) + shift + k * 0.5
            if label:
                rows = rows + 4.0 * (u + tilt)
            acts.append(rows)
            labels += [label] * count
            langs += [lang] * count
    return torch.cat(acts), torch.tensor(labels), langs


@pytest.fixture(scope="module")
def bundle_gate() -> tuple[Gate, torch.Tensor, list[str]]:
    acts, labels, langs = _world()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gate = Gate.fit(
            acts,
            labels,
            langs,
            layer=5,
            source_languages=["en", "de", "fr"],
            model_fingerprint="model-A",
        )
    sw = torch.tensor([c == "sw" for c in langs])
    pos, neg, _, _ = sample_budget(acts[sw & (labels == 1)], acts[sw & (labels == 0)], 4, seed=0)
    gate = gate.calibrate("sw", pos, neg, mode="refit")
    gate = gate.calibrate("de", acts[60:62], acts[60 + 60 + 50 : 60 + 60 + 52], mode="threshold")
    gate = gate.calibrate_alpha(acts, labels, langs)
    return gate, acts, langs


def test_round_trip_is_bit_identical(tmp_path: Path, bundle_gate) -> None:
    gate, acts, langs = bundle_gate
    path = gate.save(tmp_path / "gate")
    assert sorted(p.name for p in path.iterdir()) == ["gate.json", "gate.safetensors"]
    loaded = Gate.load(path, expected_fingerprint="model-A")
    mixed = [None if i % 5 == 0 else lang for i, lang in enumerate(langs)]
    assert torch.equal(loaded.score(acts, mixed), gate.score(acts, mixed))
    a, b = loaded.decide(acts, mixed), gate.decide(acts, mixed)
    assert torch.equal(a.fired, b.fired) and torch.equal(a.threshold, b.threshold)
    assert a.threshold_source == b.threshold_source
    assert loaded.alpha == gate.alpha and loaded.budgets == {"sw": 4, "de": 2}
    assert {k: v.mode for k, v in loaded.calibrations.items()} == {"sw": "refit", "de": "threshold"}
    assert loaded.source_threshold == gate.source_threshold
    assert loaded.calibrations["sw"].threshold == gate.calibrations["sw"].threshold
    assert (loaded.layer, loaded.rank, loaded.seed, loaded.C) == (
        gate.layer,
        gate.rank,
        gate.seed,
        gate.C,
    )
    assert loaded.source_languages == gate.source_languages and loaded.fit_stats == gate.fit_stats
    assert torch.equal(loaded.source_features, gate.source_features)
    assert torch.equal(loaded.source_labels, gate.source_labels)
    # Refit after loading needs no source activations and gives the same gate.
    pos, neg = acts[:3], acts[60:63]
    assert torch.equal(
        loaded.calibrate("fr", pos, neg).score(acts, "fr"),
        gate.calibrate("fr", pos, neg).score(acts, "fr"),
    )


def test_json_records_provenance(tmp_path: Path, bundle_gate) -> None:
    gate, _, _ = bundle_gate
    meta = json.loads((save_gate(gate, tmp_path / "g") / "gate.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["library_version"] == __version__
    assert meta["model_fingerprint"] == "model-A" and meta["layer"] == 5
    assert meta["alpha"]["alpha"] == gate.alpha.alpha
    assert meta["thresholds"]["sw"] == gate.calibrations["sw"].threshold.threshold
    assert meta["budgets"] == {"sw": 4, "de": 2} and meta["modes"] == {
        "sw": "refit",
        "de": "threshold",
    }
    assert len(meta["tensors_sha256"]) == 64 and meta["content_sha256"] == _canonical_digest(meta)
    assert meta["data_digest"] == gate.data_digest


def test_saving_twice_replaces_atomically(tmp_path: Path, bundle_gate) -> None:
    gate, _, _ = bundle_gate
    save_gate(gate, tmp_path / "g")
    save_gate(gate, tmp_path / "g")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    load_gate(tmp_path / "g")


def _saved(tmp_path: Path, gate: Gate) -> Path:
    return save_gate(gate, tmp_path / "bundle")


def test_tampered_tensor_file(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    data = bytearray((path / "gate.safetensors").read_bytes())
    data[-5] ^= 0x01
    (path / "gate.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tampered or truncated"):
        load_gate(path)


def test_truncated_tensor_file(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    data = (path / "gate.safetensors").read_bytes()
    (path / "gate.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="tampered or truncated"):
        load_gate(path)


def test_tampered_json(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    meta = json.loads((path / "gate.json").read_text())
    meta["source_threshold"]["threshold"] -= 1.0
    (path / "gate.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="modified after it was written"):
        load_gate(path)


def test_truncated_json(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    text = (path / "gate.json").read_text()
    (path / "gate.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_gate(path)


def test_wrong_format_version(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    meta = json.loads((path / "gate.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    meta["content_sha256"] = _canonical_digest(meta)  # a consistent file from a newer release
    (path / "gate.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format version 2"):
        load_gate(path)


def test_wrong_fingerprint(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    with pytest.raises(ArtifactError, match="model fingerprint 'model-A', not 'model-B'"):
        load_gate(path, expected_fingerprint="model-B")
    assert load_gate(path, expected_fingerprint="model-A").model_fingerprint == "model-A"


def test_missing_pieces(tmp_path: Path, bundle_gate) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_gate(tmp_path / "nowhere")
    path = _saved(tmp_path, bundle_gate[0])
    (path / "gate.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"gate\.safetensors is missing"):
        load_gate(path)


def test_not_a_bundle(tmp_path: Path, bundle_gate) -> None:
    path = _saved(tmp_path, bundle_gate[0])
    (path / "gate.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ArtifactError, match="not a babelgate gate bundle"):
        load_gate(path)


def test_model_spec_round_trips(tmp_path: Path, bundle_gate) -> None:
    import dataclasses

    named = dataclasses.replace(bundle_gate[0], model_spec="qwen2.5-coder-0.5b")
    named.save(tmp_path / "b")
    assert Gate.load(tmp_path / "b").model_spec == "qwen2.5-coder-0.5b"
    meta = json.loads((tmp_path / "b" / "gate.json").read_text())
    assert meta["model_spec"] == "qwen2.5-coder-0.5b"
