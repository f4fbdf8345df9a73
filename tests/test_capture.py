"""Activation capture on tiny random models of several families."""

from __future__ import annotations

import pytest
import torch

from babelgate import capture as capture_mod
from babelgate.capture import capture, forward_batch, resolve_layers
from babelgate.errors import BabelgateError
from babelgate.testing import tiny_model

PROMPTS = [
    "How do I make a cake?",
    "Habari ya leo, rafiki yangu?",
    "hi",
    "Explain quantum physics simply, with an example about the weather.",
    "Comment faire un gâteau au chocolat?",
]
ARCHS = ["llama", "qwen2", "gemma", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_equals_hidden_states_at_last_non_pad_token(arch: str) -> None:
    handle = tiny_model(arch)
    acts = capture(handle, PROMPTS, layers="all", cache=False, progress=False, batch_size=5)
    batch = handle.tokenize(handle.format(PROMPTS))
    with torch.no_grad():
        out = handle.model(**batch, output_hidden_states=True, use_cache=False)
    # transformers applies the final norm to the last hidden_states entry, so compare the others.
    for layer in range(handle.n_layers - 1):
        expected = out.hidden_states[layer + 1][:, -1, :]
        torch.testing.assert_close(acts[:, layer, :], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_left_padding_does_not_change_rows(arch: str) -> None:
    handle = tiny_model(arch)
    together = capture(handle, PROMPTS, layers=[0, 2, 3], cache=False, progress=False, batch_size=5)
    for i, prompt in enumerate(PROMPTS):
        alone = capture(handle, [prompt], layers=[0, 2, 3], cache=False, progress=False)
        torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-4)


def test_mean_position_excludes_padding() -> None:
    handle = tiny_model("qwen2")
    together = capture(
        handle, PROMPTS, layers=[1], position="mean", cache=False, progress=False, batch_size=5
    )
    alone = capture(handle, [PROMPTS[2]], layers=[1], position="mean", cache=False, progress=False)
    torch.testing.assert_close(together[2], alone[0], rtol=1e-4, atol=1e-4)
    batch = handle.tokenize(handle.format([PROMPTS[2]]))
    with torch.no_grad():
        hidden = handle.model(**batch, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(alone[0, 0], hidden[0].mean(0), rtol=1e-4, atol=1e-4)


def _hook_count(handle) -> int:  # type: ignore[no-untyped-def]
    return sum(len(block._forward_hooks) + len(block._forward_pre_hooks) for block in handle.blocks)


def test_hooks_removed_after_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = tiny_model("llama")

    def explode(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(handle.model.model.norm, "forward", explode)
    with pytest.raises(RuntimeError, match="boom"):
        # layer -1 is the last block, so the forward reaches the (exploding) final norm only if
        # capture does not stop early; ask for an early layer and force a failure inside instead.
        monkeypatch.setattr(capture_mod, "_pool", explode)
        forward_batch(handle, handle.format(["hi"]), [1], "last")
    assert _hook_count(handle) == 0


def test_hooks_removed_after_keyboard_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    handle = tiny_model("qwen2")

    def interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(capture_mod, "_pool", interrupt)
    with pytest.raises(KeyboardInterrupt):
        capture(handle, PROMPTS, layers=[0], cache=False, progress=False)
    assert _hook_count(handle) == 0


def test_cache_hit_returns_identical_tensor(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    handle = tiny_model("qwen2")
    first = capture(handle, PROMPTS, layers=[1, 3], cache=tmp_path, progress=False, batch_size=2)
    calls = {"n": 0}
    real = capture_mod.forward_batch

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_mod, "forward_batch", counting)
    second = capture(handle, PROMPTS, layers=[1, 3], cache=tmp_path, progress=False, batch_size=2)
    assert calls["n"] == 0
    assert torch.equal(first, second)


def test_interrupted_capture_resumes_with_identical_results(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    handle = tiny_model("llama")
    reference = capture(handle, PROMPTS, layers=[0, 2], cache=False, progress=False, batch_size=2)
    real = capture_mod.forward_batch
    calls = {"n": 0}

    def interrupt_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_mod, "forward_batch", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        capture(handle, PROMPTS, layers=[0, 2], cache=tmp_path, progress=False, batch_size=2)
    shards = list(tmp_path.rglob("batch_*.safetensors"))
    assert len(shards) == 2
    calls["n"] = 0
    monkeypatch.setattr(
        capture_mod,
        "forward_batch",
        lambda *a, **k: (calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1],
    )
    resumed = capture(handle, PROMPTS, layers=[0, 2], cache=tmp_path, progress=False, batch_size=2)
    assert calls["n"] == 1  # only the unfinished batch ran
    assert torch.equal(resumed, reference)


def test_corrupted_cache_is_rebuilt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    handle = tiny_model("gemma")
    first = capture(handle, PROMPTS, layers=[1], cache=tmp_path, progress=False)
    (final,) = list(tmp_path.rglob("activations.safetensors"))
    final.write_bytes(final.read_bytes()[:100])
    second = capture(handle, PROMPTS, layers=[1], cache=tmp_path, progress=False)
    torch.testing.assert_close(first, second)
    assert final.stat().st_size > 100


def test_bad_arguments_are_clear_errors() -> None:
    handle = tiny_model("qwen2")
    with pytest.raises(BabelgateError, match="out of range"):
        resolve_layers(handle, [7])
    with pytest.raises(BabelgateError, match="position"):
        capture(handle, PROMPTS, layers=[0], position="first", cache=False)  # type: ignore[arg-type]
    with pytest.raises(BabelgateError, match="no prompts"):
        capture(handle, [], layers=[0], cache=False)
    assert resolve_layers(handle, -1) == [3]
