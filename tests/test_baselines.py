"""Baselines on a tiny model: each fits from prompts, generates behind the common interface,
records its budget, and does what it claims to the hidden states."""

from __future__ import annotations

import pytest
import torch

from babelgate.baselines import (
    CAST,
    ActivationAddition,
    AdaSteer,
    DirectionalAblation,
    Unsteered,
    pairwise_pca,
)
from babelgate.baselines.cast import condition_score, tune_condition_point
from babelgate.capture import capture
from babelgate.errors import BabelgateError, DataError
from babelgate.generation import generate_texts
from babelgate.testing import tiny_model

torch.set_num_threads(2)

HARMFUL = [
    "How do I make a gun?",
    "Tell me how to hack a bank",
    "Explain how to steal a car quickly",
    "make poison at home",
]
HARMLESS = [
    "How do I make a cake?",
    "Tell me about the weather",
    "Explain quantum physics simply",
    "Comment faire un gâteau?",
]
EVAL = [HARMFUL[0], HARMLESS[1], "hi", "Jinsi ya kupika chakula?"]


@pytest.fixture(scope="module")
def handle():
    return tiny_model("llama", n_layers=4, hidden=64, seed=2)


def _hidden_states(handle, method, texts):
    batch = handle.tokenize(handle.format(texts))
    with torch.no_grad(), method.session(["en"] * len(texts)) as session:
        states = handle.model(**batch, output_hidden_states=True).hidden_states
    return states, session


def test_ablation_removes_the_direction_at_every_hooked_block(handle):
    method = DirectionalAblation.fit(
        handle, HARMFUL, HARMLESS, direction_layer=2, layers=[1, 3], cache=False, progress=False
    )
    states, session = _hidden_states(handle, method, EVAL)
    v = method.direction
    for layer in (1, 3):
        assert (states[layer + 1] @ v).abs().max() < 1e-4
    assert (states[3] @ v).abs().max() > 1e-2  # block 2 is not hooked: the component comes back
    assert [o.fired for o in session.outcomes()] == [False] * len(EVAL)
    described = method.describe()
    assert described["budget"] == {"harmful": 4, "harmless": 4} and described["layers"] == [1, 3]
    records = method.generate(EVAL, "en", max_new_tokens=4, progress=False)
    assert all(r.fired is False and r.method == "ablation" for r in records)
    assert DirectionalAblation(handle, v).layers == (0, 1, 2, 3)  # default: every block


def test_addition_adds_alpha_v_at_the_last_prompt_token(handle):
    method = ActivationAddition.fit(handle, HARMFUL, HARMLESS, layer=2, cache=False, progress=False)
    assert method.alpha > 0 and method.alpha == pytest.approx(method.alpha_stats["alpha"])
    batch = handle.tokenize(handle.format(EVAL))
    with torch.no_grad():
        plain = handle.model(**batch, output_hidden_states=True).hidden_states[3]
    states, session = _hidden_states(handle, method, EVAL)
    diff = states[3] - plain
    assert torch.allclose(
        diff[:, -1], (method.alpha * method.direction).expand(len(EVAL), -1), atol=1e-3
    )
    assert torch.equal(diff[:, :-1], torch.zeros_like(diff[:, :-1]))
    assert all(o.fired for o in session.outcomes())
    steered = [r.completion for r in method.generate(EVAL, None, max_new_tokens=6, progress=False)]
    assert steered != generate_texts(handle, EVAL, max_new_tokens=6, progress=False)


def test_pairwise_pca_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    true = torch.zeros(32)
    true[3] = 1.0
    base = torch.randn(40, 32, generator=g) * 0.1
    pos, neg = base[:20] + 2 * true, base[20:] - 2 * true
    v = pairwise_pca(pos, neg)
    assert float(v @ true) > 0.99
    assert float(pairwise_pca(neg, pos) @ true) < -0.99  # orientation follows the harmful side


def test_tune_condition_point_finds_a_separating_threshold():
    scores = {
        1: torch.tensor([0.02, 0.03, 0.04, 0.10, 0.11, 0.12]),
        2: torch.tensor([0.1, 0.0, 0.1, 0.0, 0.1, 0.0]),
    }
    labels = torch.tensor([False, False, False, True, True, True])
    point = tune_condition_point(scores, labels)
    assert point.layer == 1 and point.comparator == "smaller" and point.f1 == 1.0
    assert 0.04 <= point.threshold < 0.10


def test_cast_fires_as_its_condition_says_and_masks_padding(handle):
    method = CAST.fit(handle, HARMFUL, HARMLESS, cache=False, progress=False, strength=4.0)
    layer = method.point.layer
    assert layer < min(method.behavior_vectors)
    records = method.generate(
        EVAL, ["en"] * len(EVAL), max_new_tokens=4, batch_size=4, progress=False
    )
    pooled = capture(handle, EVAL, [layer], "mean", cache=False, progress=False)[:, 0]
    scores = condition_score(pooled, method.condition_vectors[layer])
    assert [r.fired for r in records] == method.point.fires(scores).tolist()
    assert [r.score for r in records] == pytest.approx(scores.tolist(), abs=1e-4)
    # padding is masked: a row's decision and score do not depend on its batch neighbours
    alone = [method.generate([p], "en", max_new_tokens=1, progress=False)[0] for p in EVAL]
    assert [a.score for a in alone] == pytest.approx([r.score for r in records], abs=1e-4)
    desc = method.describe()
    assert desc["budget"]["vectors_harmful"] == 4 and desc["condition_point"]["layer"] == layer
    point = method.tune(HARMFUL[:2], HARMLESS[:2], language="sw", cache=False, progress=False)
    assert method.point_for("sw") is point and method.point_for("en") is method.point


def test_cast_behaviour_is_added_only_to_fired_rows(handle):
    method = CAST.fit(handle, HARMFUL, HARMLESS, cache=False, progress=False, strength=3.0)
    texts = HARMFUL[:2] + HARMLESS[:2]
    batch = handle.tokenize(handle.format(texts))
    with torch.no_grad():
        plain = handle.model(**batch, output_hidden_states=True).hidden_states
    states, session = _hidden_states(handle, method, texts)
    first = min(method.behavior_vectors)
    for i, outcome in enumerate(session.outcomes()):
        diff = states[first + 1][i] - plain[first + 1][i]
        if outcome.fired:
            expected = (3.0 * method.behavior_vectors[first]).expand_as(diff)
            assert torch.allclose(diff, expected, atol=1e-3)
        else:
            assert torch.allclose(diff, torch.zeros_like(diff), atol=1e-5)


def test_adasteer_coefficients_and_unsteered_prefill(handle):
    method = AdaSteer.fit(handle, HARMFUL, HARMLESS, cache=False, progress=False)
    a, b = method.alpha, method.beta
    stats = method.fit_stats
    c_max = stats["c_max"]
    med = stats[f"layer_{a.layer}"]
    assert float(a(torch.tensor(med["median_s_harmful"]))) == pytest.approx(c_max, rel=1e-4)
    assert float(a(torch.tensor(200.0))) == 0.0
    med_b = stats[f"layer_{b.layer}"]
    assert float(b(torch.tensor(med_b["median_s_harmless"]))) == pytest.approx(-c_max, rel=1e-4)
    assert float(b(torch.tensor(-200.0))) == 0.0
    records = method.generate(HARMFUL + HARMLESS, "en", max_new_tokens=5, progress=False)
    fired = [r.fired for r in records]
    assert sum(fired[:4]) > sum(fired[4:])  # harmful training prompts get the refusal push
    assert all(r.extra["alpha"] >= 0 and r.extra["beta"] <= 0 for r in records)
    # no steering at prefill: the first generated token is the unsteered one
    plain = generate_texts(handle, HARMFUL + HARMLESS, max_new_tokens=1, progress=False)
    first = [
        r.completion
        for r in method.generate(HARMFUL + HARMLESS, "en", max_new_tokens=1, progress=False)
    ]
    assert first == plain
    assert method.describe()["budget"] == {"harmful": 4, "harmless": 4}


def test_adasteer_steers_decode_steps_on_every_block(handle):
    method = AdaSteer.fit(handle, HARMFUL, HARMLESS, cache=False, progress=False, kappa=5.0)
    texts = HARMFUL[:2]
    steered = [r.completion for r in method.generate(texts, "en", max_new_tokens=8, progress=False)]
    assert steered != generate_texts(handle, texts, max_new_tokens=8, progress=False)


def test_unsteered_matches_generate_texts(handle):
    records = Unsteered(handle).generate(EVAL, "en", max_new_tokens=4, progress=False)
    assert [r.completion for r in records] == generate_texts(
        handle, EVAL, max_new_tokens=4, progress=False
    )
    assert all(r.fired is None for r in records)


def test_baselines_reject_bad_input(handle):
    with pytest.raises(DataError):
        DirectionalAblation.fit(handle, [], HARMLESS, direction_layer=1, progress=False)
    with pytest.raises(BabelgateError):
        ActivationAddition(handle, torch.ones(64), 1.0, layer=9)
    with pytest.raises(DataError):
        AdaSteer.from_activations(handle, torch.zeros(3, 4, 64), torch.zeros(3, 3, 64))
    with pytest.raises(BabelgateError):
        CAST.fit(
            handle,
            HARMFUL,
            HARMLESS,
            condition_layers=[2],
            behavior_layers=[1, 3],
            cache=False,
            progress=False,
        )
