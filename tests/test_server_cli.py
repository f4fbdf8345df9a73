"""`babelgate serve BUNDLE` as a real subprocess: bundle checks (exit 2 with one clear message),
and a full serve → request → SIGINT cycle on a tiny model saved as a model directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from babelgate.server.demo import fit_demo_gate
from babelgate.server.loopback import free_port, wait_until_healthy
from babelgate.testing import tiny_model

CLI = [sys.executable, "-c", "from babelgate.cli import main; main()"]


@pytest.fixture(scope="module")
def models_and_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir the gate was fitted on, another model dir, gate bundle)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve_cli")
    dirs = []
    for seed in (0, 1):
        handle = tiny_model(seed=seed)
        target = root / f"tiny{seed}"
        handle.model.save_pretrained(target)
        handle.tokenizer.save_pretrained(target)
        dirs.append(target)
        if seed == 0:
            gate = fit_demo_gate(handle, per_class=8, budget=2)
    bundle = gate.save(root / "bundle")
    torch.set_num_threads(threads)
    return dirs[0], dirs[1], bundle


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=False)


def test_serve_refuses_a_bundle_from_another_model(
    models_and_bundle: tuple[Path, Path, Path],
) -> None:
    _, other, bundle = models_and_bundle
    result = run_cli("serve", str(bundle), "--model", str(other), "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert "fingerprint" in result.stderr and "--model" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_tampered_bundle(
    models_and_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model_dir, _, bundle = models_and_bundle
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("gate.json", "gate.safetensors"):
        (broken / name).write_bytes((bundle / name).read_bytes())
    (broken / "gate.json").write_text(
        (bundle / "gate.json").read_text().replace('"layer": ', '"layer": 1')
    )
    result = run_cli("serve", str(broken), "--model", str(model_dir))
    assert result.returncode == 2 and "checksum" in result.stderr


def test_serve_answers_requests_and_stops_on_sigint(
    models_and_bundle: tuple[Path, Path, Path],
) -> None:
    model_dir, _, bundle = models_and_bundle
    port = free_port()
    env = {**os.environ, "BABELGATE_API_KEY": "cli-key", "BABELGATE_THREADS": "1"}
    args = [
        "serve",
        str(bundle),
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
    ]
    proc = subprocess.Popen(
        [*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, timeout=180)
        auth = {"Authorization": "Bearer cli-key"}
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Habari ya leo?"}],
            "max_tokens": 4,
        }
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 401
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["babelgate"]["language"] == "sw"
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "serving 'tiny'" in stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "tgi"], "unknown --backend"),
        (["--vllm-args", "{}"], "--vllm-args needs --backend vllm"),
        (["--backend", "vllm", "--vllm-args", "[1, 2]"], "JSON object"),
        (["--backend", "vllm", "--vllm-args", "{not json"], "not valid JSON"),
    ],
)
def test_serve_backend_options_are_checked(
    models_and_bundle: tuple[Path, Path, Path], extra: list[str], message: str
) -> None:
    model_dir, _, bundle = models_and_bundle
    result = run_cli("serve", str(bundle), "--model", str(model_dir), *extra)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_serve_vllm_backend_without_vllm_says_how_to_get_it(
    models_and_bundle: tuple[Path, Path, Path],
) -> None:
    pytest.importorskip("fastapi")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here; tests/test_vllm_plugin.py covers the back end")
    model_dir, _, bundle = models_and_bundle
    result = run_cli("serve", str(bundle), "--model", str(model_dir), "--backend", "vllm")
    assert result.returncode == 2, result.stderr
    assert "setup_vllm_env.sh" in result.stderr and "Traceback" not in result.stderr
