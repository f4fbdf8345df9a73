"""Multiple-choice utility: loaders for the MMLU and Global-MMLU layouts, letter scoring,
and scoring under a method's hooks (gate fire rate on benign questions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babelgate.baselines import ActivationAddition
from babelgate.capture import capture
from babelgate.errors import DataError
from babelgate.gate import Gate
from babelgate.guard import Guard
from babelgate.loaders import load_prompts
from babelgate.testing import tiny_model
from babelgate.utility import (
    LETTERS,
    MCQuestion,
    evaluate_utility,
    letter_scores,
    letter_token_ids,
    load_builtin_mcq,
    load_mcq,
    load_mmlu_csv,
    sample_questions,
)


@pytest.fixture(scope="module")
def handle():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return tiny_model("qwen2")


@pytest.fixture(scope="module")
def gate(handle):  # type: ignore[no-untyped-def]
    prompts = load_prompts("builtin").filter(language=["en", "fr"], split="train")
    rows = [
        p
        for lang in ("en", "fr")
        for lab in ("harmful", "harmless")
        for p in list(prompts.filter(language=lang, label=lab))[:8]
    ]
    acts = capture(handle, [p.text for p in rows], [1], cache=False, progress=False)[:, 0]
    labels = torch.tensor([p.label == "harmful" for p in rows])
    langs = [p.language for p in rows]
    fitted = Gate.fit(acts, labels, langs, layer=1, rank=2, model_fingerprint=handle.fingerprint)
    return fitted.calibrate_alpha(acts, labels, langs)


def test_prompt_format_is_the_zero_shot_template() -> None:
    q = MCQuestion("What is 2+2?", ("3", "4", "5", "6"), 1)
    assert q.prompt() == "What is 2+2?\n\nA. 3\nB. 4\nC. 5\nD. 6\n\nAnswer:"


def test_headerless_mmlu_csv(tmp_path: Path) -> None:
    path = tmp_path / "astronomy_test.csv"
    path.write_text(
        '"Which is a planet?",Sun,Mars,Moon,Sirius,B\nQ2?,a,b,c,d,D\n', encoding="utf-8"
    )
    qs = load_mmlu_csv(path)
    assert [q.answer for q in qs] == [1, 3]
    assert qs[0].choices == ("Sun", "Mars", "Moon", "Sirius")
    assert qs[0].subject == "astronomy"


def test_mmlu_csv_with_index_header(tmp_path: Path) -> None:
    path = tmp_path / "law_dev.csv"
    path.write_text(
        "question,choice0,choice1,choice2,choice3,answer\nQ?,w,x,y,z,2\n", encoding="utf-8"
    )
    (q,) = load_mmlu_csv(path)
    assert q.answer == 2 and q.question == "Q?" and q.subject == "law"


def test_global_mmlu_columns(tmp_path: Path) -> None:
    path = tmp_path / "sw.csv"
    path.write_text(
        "sample_id,subject,subject_category,question,option_a,option_b,option_c,option_d,answer\n"
        "s1,anatomy,STEM,Swali?,moja,mbili,tatu,nne,C\n",
        encoding="utf-8",
    )
    (q,) = load_mmlu_csv(path, language="sw")
    assert (q.answer, q.subject, q.language, q.qid) == (2, "anatomy", "sw", "s1")
    assert q.choices[3] == "nne"


def test_bad_answer_and_missing_file_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "x_test.csv"
    path.write_text("Q?,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(DataError, match="answer"):
        load_mmlu_csv(path)
    with pytest.raises(DataError, match="not found"):
        load_mcq(tmp_path / "nope")


def test_directory_with_split_and_seeded_sample(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    for subject in ("a", "b", "c"):
        lines = "".join(f"{subject}{i}?,w,x,y,z,A\n" for i in range(10))
        (tmp_path / "test" / f"{subject}_test.csv").write_text(lines, encoding="utf-8")
    qs = load_mcq(tmp_path, limit=6, seed=3)
    assert len(qs) == 6
    assert {q.subject for q in qs} == {"a", "b", "c"}  # round-robin over subjects
    assert [q.qid for q in qs] == [q.qid for q in load_mcq(tmp_path, limit=6, seed=3)]
    assert sample_questions(qs, 100, 0) == qs


def test_builtin_set() -> None:
    qs = load_builtin_mcq()
    assert len(qs) == 40
    assert {q.answer for q in qs} == {0, 1, 2, 3}
    assert len({q.qid for q in qs}) == 40


def test_letter_ids_are_single_tokens(handle) -> None:  # type: ignore[no-untyped-def]
    ids = letter_token_ids(handle.tokenizer)
    assert list(ids) == list(LETTERS)
    for letter, toks in ids.items():
        assert toks
        for tok in toks:
            assert handle.tokenizer.decode([tok]).strip().rstrip(".") == letter


def test_accuracy_matches_argmax_of_letter_scores(handle) -> None:  # type: ignore[no-untyped-def]
    qs = load_builtin_mcq()[:12]
    scores, fired = letter_scores(handle, qs, batch_size=4, progress=False)
    assert scores.shape == (12, 4) and fired == [None] * 12
    result = evaluate_utility(handle, qs, batch_size=4, progress=False)
    expected = 100.0 * sum(int(scores[i].argmax()) == q.answer for i, q in enumerate(qs)) / 12
    assert result.accuracy == pytest.approx(expected)
    assert result.fire_rate is None and result.n == 12
    assert 0.0 <= result.mean_entropy <= float(torch.log(torch.tensor(4.0))) + 1e-6


def test_method_hooks_change_scores_and_are_removed(handle, gate) -> None:  # type: ignore[no-untyped-def]
    qs = load_builtin_mcq()[:6]
    base, _ = letter_scores(handle, qs, batch_size=3, progress=False)
    steer = ActivationAddition.from_gate(handle, gate, alpha=50.0)
    steered, fired = letter_scores(handle, qs, steer, batch_size=3, progress=False)
    assert fired == [True] * 6
    assert not torch.allclose(base, steered)
    again, _ = letter_scores(handle, qs, batch_size=3, progress=False)
    assert torch.allclose(base, again)


def test_guard_fire_rate_matches_gate_decisions(handle, gate) -> None:  # type: ignore[no-untyped-def]
    qs = load_builtin_mcq()[:10]
    guard = Guard(handle, gate)
    result = evaluate_utility(handle, qs, guard, name="gate", batch_size=1, progress=False)
    decided = guard.decide([q.prompt() for q in qs], "en", batch_size=1)
    expected = [bool(d.fired) for d in decided]
    assert [row["fired"] for row in result.rows] == expected
    assert result.fire_rate == pytest.approx(100.0 * sum(expected) / len(expected))


def test_shared_mmlu_en(shared_data: Path) -> None:
    qs = load_mcq(shared_data / "mmlu_en", limit=30, seed=0)
    assert len(qs) == 30
    assert len({q.subject for q in qs}) == 30  # 57 subjects: a 30-sample takes one of each
    assert all(0 <= q.answer <= 3 and all(q.choices) for q in qs)
    dev = load_mcq(shared_data / "mmlu_en", split="dev")
    assert len(dev) == 285
