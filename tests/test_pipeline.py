"""The main job end to end: `babelgate run --quick` on a tiny model writes every file, with
every method and language in the metrics; reruns reuse finished work; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from babelgate.cli import main
from babelgate.pipeline import RunOptions

EXPECTED_FILES = (
    "config.json",
    "metrics.json",
    "utility.json",
    "calibration.json",
    "layer_choice.json",
    "timings.json",
    "report.md",
    "report.html",
    "gate/gate.json",
    "gate/gate.safetensors",
    "diagnosis/diagnosis.json",
    "plots/refusal_by_tier.png",
    "plots/selectivity_heatmap.png",
    "plots/representation_vs_action.png",
    "plots/utility.png",
)
TINY_ARGS = [
    "--quick",
    "--model",
    "tiny-qwen2",
    "--languages",
    "en,fr,hi,sw",
    "--n-test",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "quick"
    main(["run", *TINY_ARGS, "--out", str(out)])
    return out


def test_quick_run_writes_every_file(tiny_run: Path) -> None:
    for name in EXPECTED_FILES:
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    methods = ["none", "gate_b0", "gate_b4", "ablation", "addition"]
    assert list(metrics["methods"]) == methods
    for name in methods:
        langs = [m["language"] for m in metrics["methods"][name]["refusal"]["languages"]]
        assert langs == ["en", "fr", "hi", "sw"]
        rows = (tiny_run / "completions" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == 4 * 2 * 2
    utility = json.loads((tiny_run / "utility.json").read_text())
    assert list(utility["methods"]) == methods and utility["n_questions"] == 12
    assert utility["methods"]["gate_b4"]["fire_rate"] is not None
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["source_languages"] == ["en", "fr"]
    assert config["target_languages"] == ["hi", "sw"]
    assert config["budgets"] == {"gate_b0": 0, "gate_b4": 4}
    assert config["generation"]["max_new_tokens"] == 16
    assert config["alpha"]["alpha"] > 0 and config["rank"] == 2
    calibration = json.loads((tiny_run / "calibration.json").read_text())
    assert set(calibration["budgets"]["b4"]) == {"hi", "sw"}
    # Each target language's calibration rows come from its train split, 4 per class.
    assert all(len(d["harmful_rows"]) == 4 for d in calibration["draws"]["b4"].values())
    gate_rows = [
        json.loads(r) for r in (tiny_run / "completions" / "gate_b4.jsonl").read_text().splitlines()
    ]
    assert {r["threshold_source"] for r in gate_rows if r["language"] == "en"} == {"source"}


def test_gate_b4_rows_use_calibrated_thresholds_unless_fallen_back(tiny_run: Path) -> None:
    calibration = json.loads((tiny_run / "calibration.json").read_text())
    rows = [
        json.loads(r) for r in (tiny_run / "completions" / "gate_b4.jsonl").read_text().splitlines()
    ]
    for lang in ("hi", "sw"):
        status = calibration["budgets"]["b4"][lang]["status"]
        expected = "calibrated" if status == "calibrated" else "source"
        assert {r["threshold_source"] for r in rows if r["language"] == lang} == {expected}


def test_rerun_reuses_completions_and_report_rebuilds(tiny_run: Path) -> None:
    before = (tiny_run / "completions" / "gate_b4.jsonl").read_text()
    main(["run", *TINY_ARGS, "--out", str(tiny_run)])
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert all(m["run"]["reused"] for m in metrics["methods"].values())
    assert (tiny_run / "completions" / "gate_b4.jsonl").read_text() == before
    report = (tiny_run / "report.md").read_text()
    (tiny_run / "report.md").unlink()
    main(["report", str(tiny_run)])
    rebuilt = (tiny_run / "report.md").read_text()
    # The wall-time line may differ between the pipeline's and the rebuilt report only there.
    strip = [line for line in report.splitlines() if not line.startswith("Wall time")]
    assert strip == [line for line in rebuilt.splitlines() if not line.startswith("Wall time")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--languages", "en,xx"], "unknown language"),
        (["--budget", "9"], "larger than"),
        (["--methods", "none,magic"], "unknown method"),
        (["--languages", "sw,am"], "no high-resource"),
        (["--mmlu", "/nonexistent/mmlu"], "does not exist"),
        (["--eval-languages", "en,yo"], "not among this run's languages"),
        (["--objective", "accuracy"], "unknown threshold objective"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--quick", "--model", "tiny-qwen2", "--no-progress", "--out", str(out), *args])
    assert exit_info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not out.exists()


def test_eval_languages_limit_generation_not_fitting(tmp_path: Path) -> None:
    """--eval-languages: only those languages are generated and judged; the others still
    fit/calibrate the gate and enter the diagnosis."""
    out = tmp_path / "subset"
    main(["run", *TINY_ARGS, "--eval-languages", "en,sw", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for method in metrics["methods"].values():
        assert [m["language"] for m in method["refusal"]["languages"]] == ["en", "sw"]
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["source_languages"] == ["en", "fr"]
    assert set(calibration["budgets"]["b4"]) == {"hi", "sw"}
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["eval_languages"] == ["en", "sw"]


def test_options() -> None:
    quick = RunOptions.quick_preset(seed=3)
    assert quick.quick and quick.seed == 3 and quick.max_new_tokens == 16
    assert RunOptions().method_names() == ["none", "gate_b0", "gate_b4", "ablation", "addition"]
    assert RunOptions(budgets=[1, 2, 4]).method_names()[:5] == [
        "none",
        "gate_b0",
        "gate_b1",
        "gate_b2",
        "gate_b4",
    ]


@pytest.mark.slow
def test_quick_run_on_the_packaged_model(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    out = tmp_path / "real"
    main(["run", "--quick", "--no-progress", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["none", "gate_b0", "gate_b4", "ablation", "addition"]
    assert metrics["languages"] == ["en", "fr", "zh", "hi", "sw", "am"]
    none = metrics["methods"]["none"]["refusal"]
    assert none["n_records"] == 6 * 2 * 3
    assert (out / "report.html").stat().st_size > 50_000
