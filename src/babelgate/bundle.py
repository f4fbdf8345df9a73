"""Gate bundles: a directory with `gate.safetensors` (tensors) and `gate.json` (metadata).

The JSON records the format version, library version, model fingerprint, layer, rank, α,
per-language thresholds, budgets, modes and seeds, data digests, the sha256 of the tensor
file and a sha256 of its own canonical content (`content_sha256`, computed over the JSON
object without that key, keys sorted, compact separators). Bundles are written atomically
and verified on load; any mismatch raises ArtifactError. No pickle is involved.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from babelgate._version import __version__
from babelgate.alpha import AlphaCalibration
from babelgate.errors import ArtifactError
from babelgate.io import atomic_dir, sha256_file, write_json_atomic
from babelgate.threshold import ThresholdChoice

if TYPE_CHECKING:
    from babelgate.gate import Gate, LanguageCalibration, Readout

FORMAT = "babelgate.gate"
FORMAT_VERSION = 1
TENSOR_FILE = "gate.safetensors"
JSON_FILE = "gate.json"


def _canonical_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "content_sha256"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _readout_tensors(prefix: str, readout: Readout) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.mean": readout.mean.to(torch.float64).clone().contiguous(),
        f"{prefix}.std": readout.std.to(torch.float64).clone().contiguous(),
        f"{prefix}.weight": readout.weight.to(torch.float64).clone().contiguous(),
    }


def save_gate(gate: Gate, directory: str | Path) -> Path:
    """Write `gate` to `directory` (replaced atomically if it exists); returns the path."""
    target = Path(directory)
    tensors: dict[str, torch.Tensor] = {
        "direction": gate.direction.to(torch.float32).contiguous(),
        "basis": gate.basis.to(torch.float32).contiguous(),
        "source_features": gate.source_features.to(torch.float32).contiguous(),
        "source_labels": gate.source_labels.to(torch.uint8).contiguous(),
        **_readout_tensors("readout.source", gate.source_readout),
    }
    calibrations = []
    for i, (lang, rec) in enumerate(gate.calibrations.items()):
        key = f"readout.lang{i}"
        tensors.update(_readout_tensors(key, rec.readout))
        calibrations.append({**rec.meta(), "language": lang, "tensor_key": key})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created": gate.created,
        "saved": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_fingerprint": gate.model_fingerprint,
        "model_spec": gate.model_spec,
        "layer": gate.layer,
        "rank": gate.rank,
        "d": gate.d,
        "seed": gate.seed,
        "C": gate.C,
        "objective": gate.objective,
        "source_languages": list(gate.source_languages),
        "data_digest": gate.data_digest,
        "source_readout": gate.source_readout.meta(),
        "source_threshold": gate.source_threshold.to_dict(),
        "fit_stats": gate.fit_stats,
        "alpha": None if gate.alpha is None else gate.alpha.to_dict(),
        "calibrations": calibrations,
        # Human-readable summaries; the calibration records above are authoritative.
        "thresholds": {lang: gate.threshold_for(lang)[0] for lang in gate.calibrations},
        "budgets": gate.budgets,
        "modes": {lang: rec.mode for lang, rec in gate.calibrations.items()},
        "tensor_shapes": {name: list(t.shape) for name, t in tensors.items()},
    }
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / TENSOR_FILE), metadata={"format": FORMAT})
        meta["tensors_sha256"] = sha256_file(tmp / TENSOR_FILE)
        meta["content_sha256"] = _canonical_digest(meta)
        write_json_atomic(tmp / JSON_FILE, meta)
    return target


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable, truncated or not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a babelgate gate bundle")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has bundle format version {version!r}; this babelgate ({__version__}) reads "
            f"version {FORMAT_VERSION}. Refit or convert the gate."
        )
    if meta.get("content_sha256") != _canonical_digest(meta):
        raise ArtifactError(f"{path} was modified after it was written (content checksum mismatch)")
    return meta


def load_gate(directory: str | Path, expected_fingerprint: str | None = None) -> Gate:
    """Load and verify a bundle; raise ArtifactError if it is tampered, truncated, of another
    format version, or (when `expected_fingerprint` is given) made for another model."""
    from babelgate.gate import Gate

    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"gate bundle {root} does not exist or is not a directory")
    json_path, tensor_path = root / JSON_FILE, root / TENSOR_FILE
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise ArtifactError(f"gate bundle {root} is incomplete: {path.name} is missing")
    meta = _read_meta(json_path)
    if expected_fingerprint is not None and meta.get("model_fingerprint") != expected_fingerprint:
        raise ArtifactError(
            f"gate bundle {root} was fitted for model fingerprint "
            f"{meta.get('model_fingerprint')!r}, not {expected_fingerprint!r}"
        )
    if sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise ArtifactError(f"{tensor_path} is tampered or truncated (sha256 mismatch)")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ArtifactError(f"{tensor_path} cannot be read as safetensors ({exc})") from exc
    shapes = meta.get("tensor_shapes", {})
    if set(shapes) != set(tensors):
        raise ArtifactError(
            f"{tensor_path} holds tensors {sorted(tensors)}, expected {sorted(shapes)}"
        )
    for name, tensor in tensors.items():
        if list(tensor.shape) != list(shapes[name]):
            raise ArtifactError(
                f"tensor {name} has shape {list(tensor.shape)}, expected {shapes[name]}"
            )
    try:
        gate = _build(Gate, meta, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"gate bundle {root} is malformed ({exc!r})") from exc
    d, r = gate.basis.shape
    if gate.direction.shape != (d,) or gate.source_features.shape[1] != r or meta["d"] != d:
        raise ArtifactError(f"gate bundle {root} has inconsistent tensor shapes")
    return gate


def _readout(meta: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> Readout:
    from babelgate.gate import Readout

    return Readout(
        mean=tensors[f"{prefix}.mean"],
        std=tensors[f"{prefix}.std"],
        weight=tensors[f"{prefix}.weight"],
        bias=float(meta["bias"]),
        n_harmful=int(meta["n_harmful"]),
        n_harmless=int(meta["n_harmless"]),
        seed=int(meta["seed"]),
        converged=bool(meta["converged"]),
    )


def _calibration(entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LanguageCalibration:
    from babelgate.gate import LanguageCalibration

    return LanguageCalibration(
        language=str(entry["language"]),
        mode=str(entry["mode"]),
        budget=int(entry["budget"]),
        readout=_readout(entry["readout"], tensors, str(entry["tensor_key"])),
        threshold=ThresholdChoice.from_dict(entry["threshold"]),
        seed=int(entry["seed"]),
        status=str(entry["status"]),
        data_digest=str(entry["data_digest"]),
        created=str(entry["created"]),
    )


def _build(gate_cls: type[Gate], meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Gate:
    calibrations = {str(e["language"]): _calibration(e, tensors) for e in meta["calibrations"]}
    alpha = meta.get("alpha")
    return gate_cls(
        layer=int(meta["layer"]),
        rank=int(meta["rank"]),
        direction=tensors["direction"],
        basis=tensors["basis"],
        source_readout=_readout(meta["source_readout"], tensors, "readout.source"),
        source_threshold=ThresholdChoice.from_dict(meta["source_threshold"]),
        source_languages=tuple(str(x) for x in meta["source_languages"]),
        source_features=tensors["source_features"],
        source_labels=tensors["source_labels"].to(torch.bool),
        seed=int(meta["seed"]),
        C=float(meta["C"]),
        objective=str(meta["objective"]),
        model_fingerprint=str(meta["model_fingerprint"]),
        data_digest=str(meta["data_digest"]),
        fit_stats=dict(meta["fit_stats"]),
        created=str(meta["created"]),
        calibrations=calibrations,
        alpha=None if alpha is None else AlphaCalibration.from_dict(alpha),
        model_spec=str(meta.get("model_spec", "")),
    )
