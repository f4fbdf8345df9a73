"""The gate on synthetic activations with a planted harmfulness direction.

Five source languages share a planted direction u (each tilted slightly, so the source
subspace has rank 5). The target language "sw" sits far along −u, so the source threshold
sees all of its prompts as harmless, while harmful and harmless sw prompts stay separated
along u: the representation is intact and only the threshold is wrong.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from babelgate.errors import DataError
from babelgate.gate import Gate, sample_budget
from babelgate.threshold import fires

SOURCES = ("en", "de", "fr", "es", "zh")
TARGET = "sw"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny matmuls are dominated by thread wake-ups on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_world(seed: int = 0, d: int = 48, n_pos: int = 120, n_neg: int = 100, sep: float = 4.0):
    """Returns (acts [n, d], labels [n], languages, splits, planted unit direction u [d])."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()

    def orth(v: torch.Tensor, scale: float) -> torch.Tensor:
        v = v - (v @ u) * u
        return scale * v / v.norm()

    acts, labels, langs, splits = [], [], [], []
    for lang in (*SOURCES, TARGET):
        lang_dir = u + orth(torch.randn(d, generator=gen), 0.3)
        lang_dir = lang_dir / lang_dir.norm()
        offset = orth(torch.randn(d, generator=gen), 3.0)
        if lang == TARGET:
            offset = offset - 1.5 * sep * u
        for split in ("train", "test"):
            for label, count in ((1, n_pos), (0, n_neg)):
                rows = offset + torch.randn(count, d, generator=gen)
                if label:
                    rows = rows + sep * lang_dir
                acts.append(rows)
                labels += [label] * count
                langs += [lang] * count
                splits += [split] * count
    return torch.cat(acts), torch.tensor(labels), langs, splits, u


def _mask(langs: list[str], splits: list[str], lang: str | None, split: str) -> torch.Tensor:
    return torch.tensor(
        [(lang is None or c == lang) and s == split for c, s in zip(langs, splits, strict=True)]
    )


def _balanced_accuracy(labels: torch.Tensor, fired: torch.Tensor) -> float:
    y = labels.bool()
    return 0.5 * (
        float((fired & y).sum()) / int(y.sum()) + float((~fired & ~y).sum()) / int((~y).sum())
    )


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def gate(world) -> Gate:
    acts, labels, langs, splits, _ = world
    train = _mask(langs, splits, None, "train")
    train_langs = [c for c, k in zip(langs, train.tolist(), strict=True) if k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Gate.fit(
            acts[train], labels[train], train_langs, layer=7, source_languages=SOURCES,
            model_fingerprint="fp-test",
        )  # fmt: skip


def _pools(world, lang: str = TARGET, split: str = "train"):
    acts, labels, langs, splits, _ = world
    rows = _mask(langs, splits, lang, split)
    return acts[rows & (labels == 1)], acts[rows & (labels == 0)]


def test_fit_recovers_planted_direction_and_subspace(world, gate: Gate) -> None:
    u = world[4]
    assert gate.rank == 5 and gate.basis.shape == (48, 5)
    assert float(gate.direction @ u) > 0.9
    assert float((gate.basis.T @ u).norm()) > 0.9  # u lies (almost) in the span
    assert gate.source_languages == SOURCES and gate.layer == 7
    assert gate.fit_stats["n_rows"] == 5 * 220 and gate.fit_stats["rank_used"] == 5
    assert gate.fit_stats["train_auc"] > 0.99
    assert gate.source_features.shape == (1100, 5) and gate.source_labels.dtype == torch.bool
    assert gate.model_fingerprint == "fp-test" and len(gate.data_digest) == 64


def test_rank_larger_than_languages_warns_and_clamps(world) -> None:
    acts, labels, langs, _, _ = world
    with pytest.warns(UserWarning, match="rank 10 exceeds the 5 source languages"):
        small = Gate.fit(acts, labels, langs, layer=0, source_languages=SOURCES, rank=10)
    assert small.rank == 5
    rank2 = Gate.fit(acts, labels, langs, layer=0, source_languages=SOURCES, rank=2)
    assert rank2.basis.shape == (48, 2)


def test_fit_is_deterministic(world) -> None:
    acts, labels, langs, _, _ = world
    a = Gate.fit(acts, labels, langs, layer=1, source_languages=SOURCES, rank=3, seed=4)
    b = Gate.fit(acts, labels, langs, layer=1, source_languages=SOURCES, rank=3, seed=4)
    assert torch.equal(a.basis, b.basis) and torch.equal(
        a.source_readout.weight, b.source_readout.weight
    )
    assert a.source_threshold == b.source_threshold and a.data_digest == b.data_digest


def test_source_only_gate_fails_on_shifted_language_but_not_on_sources(world, gate: Gate) -> None:
    acts, labels, langs, splits, _ = world
    src_test = torch.tensor(
        [c in SOURCES and s == "test" for c, s in zip(langs, splits, strict=True)]
    )
    src_langs = [c for c, k in zip(langs, src_test.tolist(), strict=True) if k]
    assert _balanced_accuracy(labels[src_test], gate.decide(acts[src_test], src_langs).fired) > 0.9
    tgt = _mask(langs, splits, TARGET, "test")
    decision = gate.decide(acts[tgt], TARGET)
    assert decision.threshold_source == ["source"] * int(tgt.sum())
    assert abs(_balanced_accuracy(labels[tgt], decision.fired) - 0.5) < 0.1
    # The representation is intact: the gate's scores still rank sw prompts correctly.
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels[tgt].numpy(), decision.scores.numpy()) > 0.95


@pytest.mark.parametrize("mode", ["refit", "threshold"])
def test_four_examples_per_class_repair_the_target(world, gate: Gate, mode: str) -> None:
    acts, labels, langs, splits, _ = world
    pool_pos, pool_neg = _pools(world)
    tgt = _mask(langs, splits, TARGET, "test")
    scores = []
    for draw in range(5):
        pos, neg, _, _ = sample_budget(pool_pos, pool_neg, 4, seed=draw)
        calibrated = gate.calibrate(TARGET, pos, neg, mode=mode)
        record = calibrated.calibrations[TARGET]
        assert (record.mode, record.budget, record.status) == (mode, 4, "calibrated")
        decision = calibrated.decide(acts[tgt], TARGET)
        assert decision.threshold_source[0] == "calibrated"
        scores.append(_balanced_accuracy(labels[tgt], decision.fired))
    assert min(scores) > 0.85 and sum(scores) / len(scores) > 0.9
    assert TARGET not in gate.calibrations  # calibrate returned a new gate


def test_threshold_mode_keeps_source_readout_and_refit_changes_it(world, gate: Gate) -> None:
    pos, neg, _, _ = sample_budget(*_pools(world), 4, seed=0)
    kept = gate.calibrate(TARGET, pos, neg, mode="threshold")
    refit = gate.calibrate(TARGET, pos, neg, mode="refit")
    assert kept.calibrations[TARGET].readout is gate.source_readout
    assert not torch.equal(refit.calibrations[TARGET].readout.weight, gate.source_readout.weight)
    assert refit.calibrations[TARGET].readout.n_harmful == gate.source_readout.n_harmful + 4
    # Other languages are untouched by a target calibration.
    probe = pos[:2]
    assert torch.equal(refit.score(probe, "en"), gate.score(probe, "en"))


def test_same_decision_at_calibration_and_inference(world, gate: Gate) -> None:
    pos, neg, _, _ = sample_budget(*_pools(world), 8, seed=1)
    calibrated = gate.calibrate(TARGET, pos, neg, mode="refit")
    choice = calibrated.calibrations[TARGET].threshold
    rows = torch.cat([pos, neg])
    batch = calibrated.decide(rows, TARGET)
    assert float(batch.fired[:8].float().mean()) == choice.tpr
    assert float(batch.fired[8:].float().mean()) == choice.fpr
    single = torch.cat([calibrated.decide(rows[i : i + 1], TARGET).fired for i in range(16)])
    assert torch.equal(single, batch.fired)
    assert torch.equal(batch.fired, fires(batch.scores, choice.threshold))


def test_score_equals_routing_tensor_score(world, gate: Gate) -> None:
    acts, _, langs, _, _ = world
    pos, neg, _, _ = sample_budget(*_pools(world), 4, seed=2)
    calibrated = gate.calibrate(TARGET, pos, neg)
    mixed = [
        None if i % 7 == 0 else ("xx" if i % 11 == 0 else lang) for i, lang in enumerate(langs)
    ]
    scores = calibrated.score(acts, mixed)
    rt = calibrated.routing_tensors("cpu")
    assert torch.equal(scores, rt.score(acts, rt.index(mixed)))
    _, fired, thresholds = rt.decide(acts, rt.index(mixed))
    decision = calibrated.decide(acts, mixed)
    assert torch.equal(decision.fired, fired) and torch.equal(decision.threshold, thresholds)
    expected = ["calibrated" if code == TARGET else "source" for code in mixed]
    assert decision.threshold_source == expected
    # Unknown and None languages get exactly the source readout and threshold.
    unknown = [i for i, code in enumerate(mixed) if code in (None, "xx")]
    assert torch.equal(scores[unknown], gate.score(acts[unknown], None))
    assert bool((decision.threshold[unknown] == gate.source_threshold.threshold).all())
    # Lower-precision capture dtypes go through the same path (upcast inside).
    half = acts[:32].to(torch.bfloat16)
    assert torch.equal(calibrated.score(half, mixed[:32]), rt.score(half, rt.index(mixed[:32])))
    assert scores.dtype == torch.float32


def test_misordered_b1_pair_keeps_source_threshold_by_default(world, gate: Gate) -> None:
    pool_pos, pool_neg = _pools(world)
    pos_scores = gate.score(pool_pos, None)
    neg_scores = gate.score(pool_neg, None)
    low_harmful = pool_pos[int(pos_scores.argmin())].unsqueeze(0)
    high_harmless = pool_neg[int(neg_scores.argmax())].unsqueeze(0)
    assert float(pos_scores.min()) < float(neg_scores.max())  # the world has a misordered pair
    with pytest.warns(UserWarning, match="cannot be separated"):
        kept = gate.calibrate(TARGET, low_harmful, high_harmless, mode="threshold")
    record = kept.calibrations[TARGET]
    assert record.status == "fallback_source" and record.threshold.degenerate
    assert kept.calibrated_languages == [] and kept.budgets == {TARGET: 1}
    decision = kept.decide(torch.cat([low_harmful, high_harmless]), TARGET)
    assert decision.threshold_source == ["source", "source"]
    assert kept.threshold_for(TARGET) == (gate.source_threshold.threshold, "source")

    paper = gate.calibrate(
        TARGET, low_harmful, high_harmless, mode="threshold", on_degenerate="follow_paper"
    )
    assert paper.calibrations[TARGET].status == "calibrated"
    threshold = paper.calibrations[TARGET].threshold.threshold
    assert threshold < float(pos_scores.min())
    assert bool(paper.decide(torch.cat([low_harmful, high_harmless]), TARGET).fired.all())


def test_calibration_input_errors(world, gate: Gate) -> None:
    pool_pos, pool_neg = _pools(world)
    with pytest.raises(DataError, match="same number"):
        gate.calibrate(TARGET, pool_pos[:3], pool_neg[:2])
    with pytest.raises(DataError, match="empty"):
        gate.calibrate(TARGET, pool_pos[:0], pool_neg[:0])
    bad = pool_pos[:2].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        gate.calibrate(TARGET, bad, pool_neg[:2])
    with pytest.raises(DataError, match="d="):
        gate.calibrate(TARGET, pool_pos[:2, :10], pool_neg[:2, :10])
    with pytest.raises(DataError, match="mode"):
        gate.calibrate(TARGET, pool_pos[:2], pool_neg[:2], mode="both")
    with pytest.raises(DataError, match="larger than the examples given"):
        sample_budget(pool_pos[:3], pool_neg, 4, seed=0)
    with pytest.raises(DataError, match="budget"):
        sample_budget(pool_pos, pool_neg, 0, seed=0)
    with pytest.raises(DataError, match="NaN"):
        gate.score(bad, TARGET)
    with pytest.raises(DataError, match="shape"):
        gate.score(pool_pos[:, :5], TARGET)


def test_sample_budget_is_seeded_and_without_replacement(world) -> None:
    pool_pos, pool_neg = _pools(world)
    a = sample_budget(pool_pos, pool_neg, 8, seed=5)
    b = sample_budget(pool_pos, pool_neg, 8, seed=5)
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert len(set(a[2].tolist())) == 8 and torch.equal(a[0], pool_pos[a[2]])


def test_fit_input_errors(world) -> None:
    acts, labels, langs, _, _ = world
    with pytest.raises(DataError, match="without rows"):
        Gate.fit(acts, labels, langs, layer=0, source_languages=["en", "am"])
    with pytest.raises(DataError, match="objective"):
        Gate.fit(acts, labels, langs, layer=0, objective="accuracy")
    with pytest.raises(DataError, match="coincide"):
        Gate.fit(torch.ones(8, 4), torch.tensor([1, 0] * 4), ["en"] * 8, layer=0, rank=1)


def test_alpha_from_source_rows(world, gate: Gate) -> None:
    acts, labels, langs, _, _ = world
    with_alpha = gate.calibrate_alpha(acts, labels, langs)
    assert with_alpha.alpha is not None and with_alpha.alpha.alpha > 0
    assert with_alpha.alpha.n_harmful == 5 * 240  # source rows only, both splits given here
    assert with_alpha.routing_tensors().alpha == with_alpha.alpha.alpha
    assert gate.alpha is None


def test_c_from_l2_maps_mean_loss_penalty() -> None:
    from babelgate.gate import c_from_l2

    assert c_from_l2(0.01, 4600) == pytest.approx(1 / 92)
    with pytest.raises(Exception, match="positive"):
        c_from_l2(0.0, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_routing_matches_cpu(world, gate: Gate) -> None:
    acts, _, langs, _, _ = world
    pos, neg, _, _ = sample_budget(*_pools(world), 4, seed=3)
    calibrated = gate.calibrate(TARGET, pos, neg)
    cpu = calibrated.decide(acts, langs)
    rt = calibrated.routing_tensors("cuda")
    for dtype in (torch.float32, torch.bfloat16):
        x = acts.to("cuda", dtype)
        scores, fired, _ = rt.decide(x, rt.index(langs))
        assert scores.device.type == "cuda" and scores.dtype == torch.float32
        reference = calibrated.decide(x.cpu(), langs)  # same capture precision on CPU
        assert torch.allclose(scores.cpu(), reference.scores, atol=1e-4)
        margin = (reference.scores - reference.threshold).abs() > 1e-3
        assert torch.equal(fired.cpu()[margin], reference.fired[margin])
    assert torch.allclose(calibrated.score(acts.cuda(), langs).cpu(), cpu.scores, atol=1e-5)
