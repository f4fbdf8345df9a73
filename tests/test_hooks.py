"""Steering hooks: step tracking (cache on/off, one-token prompts), scopes, primitives, hook
removal, context ownership, and what `output_hidden_states` sees."""

from __future__ import annotations

import threading

import pytest
import torch

from babelgate.errors import BabelgateError
from babelgate.hooks import (
    StepState,
    ablate_direction,
    add_direction,
    expand_rows,
    replace_hidden,
    steering,
)
from babelgate.testing import tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def handle():
    return tiny_model("qwen2", n_layers=4, hidden=64, seed=0)


def _batch(handle, texts):
    return handle.tokenize(handle.format(texts))


def _hooks(handle) -> list[tuple[list, list]]:
    """Hook ids on the model and its blocks (transformers adds its own persistent capture
    hooks the first time output_hidden_states is used, so compare snapshots)."""
    return [
        (list(m._forward_hooks), list(m._forward_pre_hooks)) for m in [handle.model, *handle.blocks]
    ]


def _record(log):
    def edit(layer, hidden, state):
        log.append((layer, state.prefill, state.start, state.length, state.n_sequences))
        return None

    return edit


def test_step_state_with_cache(handle):
    batch = _batch(handle, ["hi", "tell me about the weather"])
    s0 = batch["input_ids"].shape[1]
    log: list = []
    with steering(handle.model, handle.blocks, [1], _record(log)):
        handle.model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert [entry[1:] for entry in log] == [
        (True, 0, s0, 1),
        (False, s0, 1, 1),
        (False, s0 + 1, 1, 1),
    ]


def test_step_state_without_cache(handle):
    batch = _batch(handle, ["hi", "tell me about the weather"])
    s0 = batch["input_ids"].shape[1]
    log: list = []
    with steering(handle.model, handle.blocks, [1], _record(log)):
        handle.model.generate(
            **batch, max_new_tokens=3, do_sample=False, min_new_tokens=3, use_cache=False
        )
    assert [entry[1:] for entry in log] == [
        (True, 0, s0, 1),
        (False, 0, s0 + 1, 1),
        (False, 0, s0 + 2, 1),
    ]


def test_two_generate_calls_in_one_session_are_two_sequences(handle):
    batch = _batch(handle, ["hi"])
    for use_cache in (True, False):
        log: list = []
        with steering(handle.model, handle.blocks, [0], _record(log)):
            handle.model.generate(
                **batch, max_new_tokens=2, min_new_tokens=2, do_sample=False, use_cache=use_cache
            )
            handle.model.generate(
                **batch, max_new_tokens=2, min_new_tokens=2, do_sample=False, use_cache=use_cache
            )
        assert [e[1] for e in log] == [True, False, True, False]
        assert [e[4] for e in log] == [1, 1, 2, 2]


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_token_prompt_scopes(handle, use_cache):
    """Prefill of a single token is detected; last_prompt acts exactly once, all acts always."""
    ids = torch.tensor([[5]])
    masks: dict[str, list[list[bool]]] = {
        "last_prompt": [],
        "last_prompt_then_generated": [],
        "all": [],
    }

    def edit(layer, hidden, state):
        for scope, seen in masks.items():
            seen.append(state.mask(scope, None, hidden.shape[0], hidden.device)[0].tolist())
        return None

    with steering(handle.model, handle.blocks, [2], edit):
        handle.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
            do_sample=False, use_cache=use_cache,
        )  # fmt: skip
    if use_cache:
        assert masks["last_prompt"] == [[True], [False], [False]]
        assert masks["last_prompt_then_generated"] == [[True], [True], [True]]
        assert masks["all"] == [[True], [True], [True]]
    else:  # full recompute: position 0 is always the (only) prompt token
        assert masks["last_prompt"] == [[True], [True, False], [True, False, False]]
        assert masks["last_prompt_then_generated"] == [[True], [True, True], [True, True, True]]
        assert masks["all"] == [[True], [True, True], [True, True, True]]


def test_one_token_prompt_addition_changes_first_token_only_via_prefill(handle):
    """With scope last_prompt, a one-token prompt is steered at prefill (so the first new token
    can change) and never again: the same as adding only at that forward."""
    ids = torch.tensor([[7]])
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    calls: list[bool] = []

    def edit(layer, hidden, state):
        mask = state.mask("last_prompt", None, hidden.shape[0], hidden.device)
        calls.append(bool(mask.any()))
        return add_direction(hidden, v, 30.0, mask)

    kw = {
        "attention_mask": torch.ones_like(ids),
        "max_new_tokens": 4,
        "min_new_tokens": 4,
        "do_sample": False,
    }
    with steering(handle.model, handle.blocks, [1], edit):
        steered = handle.model.generate(input_ids=ids, **kw)
    assert calls == [True, False, False, False]
    plain = handle.model.generate(input_ids=ids, **kw)
    assert not torch.equal(steered, plain)


def test_add_direction_leaves_unmasked_bits_unchanged():
    torch.manual_seed(0)
    h = torch.randn(2, 3, 8)
    v = torch.randn(8)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    out = add_direction(h, v, torch.tensor([2.0, -1.0]), mask)
    assert torch.equal(out[0, 1:], h[0, 1:]) and torch.equal(out[1, :2], h[1, :2])
    assert torch.allclose(out[0, 0], h[0, 0] + 2 * v) and torch.allclose(out[1, 2], h[1, 2] - v)
    assert out is not h and torch.equal(h, h.clone())


def test_ablate_direction_removes_component():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 16)
    v = torch.randn(16)
    v = v / v.norm()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 0] = False
    out = ablate_direction(h, v, mask)
    proj = out @ v
    assert proj[mask].abs().max() < 1e-5
    assert torch.equal(out[1, 0], h[1, 0])
    # the orthogonal part is kept
    assert torch.allclose(out[0, 0] - (h[0, 0] - (h[0, 0] @ v) * v), torch.zeros(16), atol=1e-6)


def test_replace_hidden_keeps_structure():
    h, new, extra = torch.zeros(1), torch.ones(1), torch.full((1,), 3.0)
    assert replace_hidden(h, new) is new
    out = replace_hidden((h, extra), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is extra
    with pytest.raises(BabelgateError):
        replace_hidden({"x": h}, new)


def test_expand_rows():
    assert expand_rows(["a", "b"], 4) == ["a", "a", "b", "b"]
    with pytest.raises(BabelgateError):
        expand_rows(["a", "b"], 3)


def test_hooks_removed_after_exception_and_interrupt(handle):
    batch = _batch(handle, ["hi"])
    before = _hooks(handle)

    def failing(layer, hidden, state):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), steering(handle.model, handle.blocks, [0, 2], failing):
        assert _hooks(handle) != before
        handle.model(**batch)
    assert _hooks(handle) == before
    with pytest.raises(KeyboardInterrupt), steering(handle.model, handle.blocks, [1], _record([])):
        raise KeyboardInterrupt
    assert _hooks(handle) == before
    # out-of-range layer: nothing half-installed
    with pytest.raises(BabelgateError), steering(handle.model, handle.blocks, [0, 99], _record([])):
        pass
    assert _hooks(handle) == before


def test_hidden_states_output_sees_steered_values(handle):
    batch = _batch(handle, ["hi", "tell me about the weather"])
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))

    def edit(layer, hidden, state):
        return add_direction(
            hidden, v, 2.5, state.mask("all", None, hidden.shape[0], hidden.device)
        )

    with torch.no_grad():
        plain = handle.model(**batch, output_hidden_states=True).hidden_states
        with steering(handle.model, handle.blocks, [1], edit):
            steered = handle.model(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(plain[1], steered[1])  # before the hooked block
    diff = steered[2] - plain[2]  # output of block 1
    assert torch.allclose(diff, (2.5 * v).expand_as(diff), atol=1e-4)


def test_session_only_acts_in_its_own_context(handle):
    """Another thread's plain forward is untouched while a session is open here; nested
    sessions: the innermost acts."""
    batch = _batch(handle, ["hi"])
    with torch.no_grad():
        reference = handle.model(**batch).logits
    before = _hooks(handle)
    outer: list = []
    inner: list = []
    other_thread: dict[str, torch.Tensor] = {}

    def shift(log):
        def edit(layer, hidden, state):
            log.append(layer)
            return hidden + 1.0

        return edit

    with steering(handle.model, handle.blocks, [1], shift(outer)):
        worker = threading.Thread(
            target=lambda: other_thread.setdefault("logits", handle.model(**batch).logits)
        )
        worker.start()
        worker.join()
        with steering(handle.model, handle.blocks, [1], shift(inner)):
            handle.model(**batch)
        handle.model(**batch)
    assert torch.allclose(other_thread["logits"], reference)
    assert inner == [1] and outer == [1]
    assert _hooks(handle) == before


def test_scope_mask_rejects_unknown_scope():
    state = StepState(length=3, prompt_len=3, batch=1, n_forwards=1)
    with pytest.raises(BabelgateError):
        state.scope_mask("everything", torch.device("cpu"))  # type: ignore[arg-type]


def test_block_call_outside_model_forward_is_an_error(handle):
    hidden = torch.randn(1, 3, 64)
    with steering(handle.model, handle.blocks, [0], _record([])), pytest.raises(BabelgateError):
        pos = torch.arange(3)[None]
        handle.blocks[0](hidden, position_embeddings=handle.model.model.rotary_emb(hidden, pos))
