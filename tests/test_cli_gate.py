"""`babelgate fit`, `calibrate`, `extract`, `diagnose` and `evaluate` on a tiny model, and
their error paths (exit code 2, nothing half-written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from babelgate.cli import main
from babelgate.gate import Gate
from babelgate.io import sha256_file

FIT_ARGS = [
    "--model",
    "tiny-qwen2",
    "--languages",
    "en,fr,sw,hi",
    "--layer",
    "1",
    "--n-train",
    "6",
    "--no-progress",
]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "gate"
    main(["fit", *FIT_ARGS, "--budget", "2", "--out", str(out)])
    return out


def _examples(path: Path, lang: str, n: int) -> Path:
    from babelgate.loaders import load_prompts

    rows = load_prompts("builtin").filter(language=lang, split="train")
    lines = [
        json.dumps({"text": p.text, "language": lang, "label": p.label})
        for label in ("harmful", "harmless")
        for p in list(rows.filter(label=label))[:n]
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())}


def test_fit_writes_a_loadable_bundle(bundle: Path) -> None:
    gate = Gate.load(bundle)
    assert gate.layer == 1 and gate.rank == 2
    assert gate.source_languages == ("en", "fr")
    assert set(gate.calibrations) == {"hi", "sw"} and set(gate.budgets.values()) == {2}
    assert gate.alpha is not None and gate.alpha.alpha > 0


def test_calibrate_changes_only_that_language(bundle: Path, tmp_path: Path) -> None:
    work = tmp_path / "gate"
    work.mkdir()
    for f in bundle.iterdir():
        (work / f.name).write_bytes(f.read_bytes())
    before = Gate.load(work)
    meta_before = json.loads((work / "gate.json").read_text())
    examples = _examples(tmp_path / "sw.jsonl", "sw", 5)
    main(
        [
            "calibrate",
            str(work),
            "--lang",
            "sw",
            "--examples",
            str(examples),
            "--budget",
            "3",
            "--model",
            "tiny-qwen2",
            "--mode",
            "threshold",
            "--no-progress",
        ]
    )
    after = Gate.load(work)
    assert after.calibrations["sw"].budget == 3 and after.calibrations["sw"].mode == "threshold"
    assert after.calibrations["hi"].meta() == before.calibrations["hi"].meta()
    assert torch.equal(
        after.calibrations["hi"].readout.weight, before.calibrations["hi"].readout.weight
    )
    assert torch.equal(after.basis, before.basis) and torch.equal(after.direction, before.direction)
    meta_after = json.loads((work / "gate.json").read_text())
    volatile = {
        "saved",
        "calibrations",
        "thresholds",
        "budgets",
        "modes",
        "content_sha256",
        "tensors_sha256",
        "tensor_shapes",
    }
    assert {k: v for k, v in meta_before.items() if k not in volatile} == {
        k: v for k, v in meta_after.items() if k not in volatile
    }
    assert meta_after["thresholds"]["hi"] == meta_before["thresholds"]["hi"]


def test_calibrate_error_paths_leave_the_bundle_untouched(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = _snapshot(bundle)
    examples = _examples(tmp_path / "sw.jsonl", "sw", 2)
    base = ["calibrate", str(bundle), "--model", "tiny-qwen2", "--no-progress"]
    cases = [
        ([*base, "--lang", "zz", "--examples", str(examples)], "unknown language"),
        ([*base, "--lang", "sw", "--examples", str(examples), "--budget", "5"], "larger than"),
        ([*base, "--lang", "sw", "--examples", str(tmp_path / "none.jsonl")], "not found"),
        ([*base, "--lang", "am", "--examples", str(examples)], "examples"),
        ([*base, "--lang", "sw", "--examples", str(examples), "--mode", "magic"], "--mode"),
        (
            [
                "calibrate",
                str(tmp_path / "missing"),
                "--lang",
                "sw",
                "--examples",
                str(examples),
                "--model",
                "tiny-qwen2",
            ],
            "does not exist",
        ),
        (
            [
                "calibrate",
                str(bundle),
                "--lang",
                "sw",
                "--examples",
                str(examples),
                "--model",
                "tiny-llama",
                "--no-progress",
            ],
            "fingerprint",
        ),
    ]
    for argv, message in cases:
        assert _exit_code(argv) == 2, argv
        assert message in " ".join(capsys.readouterr().err.split()), argv
        assert _snapshot(bundle) == snapshot


def test_tampered_bundle_is_refused(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "gate"
    work.mkdir()
    for f in bundle.iterdir():
        (work / f.name).write_bytes(f.read_bytes())
    meta = json.loads((work / "gate.json").read_text())
    meta["layer"] = 2
    (work / "gate.json").write_text(json.dumps(meta))
    examples = _examples(tmp_path / "sw.jsonl", "sw", 2)
    code = _exit_code(
        [
            "calibrate",
            str(work),
            "--lang",
            "sw",
            "--examples",
            str(examples),
            "--model",
            "tiny-qwen2",
        ]
    )
    assert code == 2 and "modified" in " ".join(capsys.readouterr().err.split())


def test_fit_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert _exit_code(["fit", *FIT_ARGS, "--budget", "9", "--out", str(out)]) == 2
    assert "larger than" in " ".join(capsys.readouterr().err.split())
    assert _exit_code(["fit", "--model", "tiny-qwen2", "--layer", "x", "--out", str(out)]) == 2
    assert not out.exists()


def test_extract_writes_tensor_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "acts.safetensors"
    main(
        [
            "extract",
            "--model",
            "tiny-qwen2",
            "--data",
            "builtin",
            "--languages",
            "en,sw",
            "--split",
            "test",
            "--layers",
            "1,3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    acts = load_file(str(out))["activations"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert acts.shape == (200, 2, 64)
    assert meta["layers"] == [1, 3] and len(meta["rows"]) == 200
    assert {r["language"] for r in meta["rows"]} == {"en", "sw"}
    assert {r["split"] for r in meta["rows"]} == {"test"}
    assert (
        _exit_code(
            [
                "extract",
                "--model",
                "tiny-qwen2",
                "--data",
                "builtin",
                "--layers",
                "1",
                "--out",
                str(tmp_path / "x.npy"),
            ]
        )
        == 2
    )


def test_diagnose_and_evaluate_commands(bundle: Path, tmp_path: Path) -> None:
    diag = tmp_path / "diag"
    main(
        [
            "diagnose",
            "--model",
            "tiny-qwen2",
            "--languages",
            "en,fr,sw",
            "--layers",
            "1,2",
            "--n-train",
            "6",
            "--n-test",
            "4",
            "--budgets",
            "0,2",
            "--draws",
            "2",
            "--out",
            str(diag),
            "--no-progress",
        ]
    )
    result = json.loads((diag / "diagnosis.json").read_text())
    assert result["layers"] == [1, 2] and set(result["auc_projection"]) == {"en", "fr", "sw"}
    run = tmp_path / "eval"
    main(
        [
            "evaluate",
            str(bundle),
            "--model",
            "tiny-qwen2",
            "--languages",
            "en,sw",
            "--methods",
            "none,gate,gate_b0",
            "--n-test",
            "1",
            "--max-new-tokens",
            "4",
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["none", "gate", "gate_b0"]
    rows = [json.loads(r) for r in (run / "completions" / "gate.jsonl").read_text().splitlines()]
    assert {r["threshold_source"] for r in rows if r["language"] == "sw"} <= {
        "calibrated",
        "source",
    }
    assert (run / "report.html").is_file()
    assert (
        _exit_code(
            [
                "evaluate",
                str(bundle),
                "--model",
                "tiny-llama",
                "--languages",
                "en",
                "--out",
                str(tmp_path / "x"),
                "--no-progress",
            ]
        )
        == 2
    )
