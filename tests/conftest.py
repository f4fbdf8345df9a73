"""Shared fixtures: where the public data lives, and tiny random models built in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny test models run fastest on one thread (thread hand-offs dominate their small matmuls,
# badly so on a loaded machine); real-model tests call load_model, which sets its own count.
torch.set_num_threads(1)


def shared_data_dir() -> Path:
    """`$BABELGATE_SHARED_DATA`, else `../shared/data` beside the repository."""
    env = os.environ.get("BABELGATE_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"public data not found at {path}")
    return path


# The user's cache as it was before any test ran: slow tests reuse it (the packaged model's
# converted copy takes ~50 s to build), fast tests get a private empty one.
USER_CACHE = os.environ.get("BABELGATE_CACHE") or str(Path.home() / ".cache" / "babelgate")


@pytest.fixture(autouse=True)
def _isolated_cache(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if request.node.get_closest_marker("slow") is not None:
        monkeypatch.setenv("BABELGATE_CACHE", USER_CACHE)
    else:
        monkeypatch.setenv("BABELGATE_CACHE", str(tmp_path_factory.mktemp("bgcache")))
    monkeypatch.setenv("BABELGATE_PROGRESS", "0")
