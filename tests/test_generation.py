"""Plain batched generation: order, left padding, continuation-only decoding, config."""

from __future__ import annotations

import pytest
import torch

from babelgate.errors import BabelgateError, DataError
from babelgate.generation import batch_order, generate_rows, generate_texts, generation_config
from babelgate.testing import tiny_model

torch.set_num_threads(2)

PROMPTS = ["Tell me about the weather today, please, in detail.", "hi", "How do I make a cake?"]


@pytest.fixture(scope="module")
def handle():
    return tiny_model("gpt2", n_layers=2, hidden=64, seed=3)


def _alone(handle, prompt, n):
    batch = handle.tokenize(handle.format([prompt]))
    out = handle.model.generate(
        **batch, max_new_tokens=n, do_sample=False, pad_token_id=handle.tokenizer.pad_token_id
    )
    return handle.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generate_texts_matches_each_prompt_alone_in_order(handle):
    texts = generate_texts(handle, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    assert texts == [_alone(handle, p, 6) for p in PROMPTS]
    assert all(isinstance(t, str) for t in texts)
    assert not any("<|im_start|>" in t for t in texts)


def test_new_token_counts_stop_at_eos(handle):
    rows = generate_rows(handle, PROMPTS, max_new_tokens=5, progress=False)
    assert all(1 <= r.n_new_tokens <= 5 for r in rows)
    assert all(r.outcome is None for r in rows)


def test_batch_order_groups_by_length(handle):
    formatted = handle.format(PROMPTS)
    batches = batch_order(handle, formatted, 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2]
    assert batches[0][0] == 0  # the longest prompt first
    with pytest.raises(BabelgateError):
        batch_order(handle, formatted, 0)


def test_generation_config_is_greedy_and_keeps_unknown_kwargs(handle):
    cfg, rest = generation_config(handle, max_new_tokens=7, output_scores=True, foo_bar=1)
    assert cfg.do_sample is False and cfg.max_new_tokens == 7 and cfg.repetition_penalty == 1.0
    assert cfg.pad_token_id == handle.tokenizer.pad_token_id and cfg.output_scores is True
    assert rest == {"foo_bar": 1}
    with pytest.raises(BabelgateError):
        generation_config(handle, max_new_tokens=0)


def test_sampling_is_seeded(handle):
    a = generate_texts(
        handle, PROMPTS[:2], max_new_tokens=5, do_sample=True, progress=False, seed=4
    )
    b = generate_texts(
        handle, PROMPTS[:2], max_new_tokens=5, do_sample=True, progress=False, seed=4
    )
    assert a == b


def test_no_prompts_is_an_error(handle):
    with pytest.raises(DataError):
        generate_texts(handle, [], max_new_tokens=3, progress=False)
