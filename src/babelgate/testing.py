"""Tiny randomly initialised chat models built in-process (no download), for tests, demos and CI.

They share the real code paths (chat template, left padding, decoder-block hooks) with the
packaged models; their outputs are meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from babelgate.models import ModelHandle, wrap_model

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "How do I make a cake? Tell me about the weather. Explain quantum physics simply.",
    "Jinsi ya kupika chakula? Habari ya leo. Ninawezaje kujifunza? Msaada tafadhali.",
    "Comment faire un gâteau? Wie geht es dir? ¿Cómo estás? Как дела? 你好，世界。こんにちは。",
    "I cannot help with that. I'm sorry, but I can't assist. Sure! Here is how to do it.",
    "user assistant system You are a helpful assistant. ሰላም ነው မင်္ဂလာပါ សួស្តី ආයුබෝවන් Ẹ káàrọ̀",
]


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS * 4,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=_SPECIAL,
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(arch: str, vocab_size: int, n_layers: int = 4, hidden: int = 64) -> Any:
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma":
        return GemmaConfig(**common, head_dim=hidden // 4)
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=n_layers,
            n_head=4,
            n_positions=512,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    raise ValueError(f"unknown tiny architecture '{arch}'")


def tiny_model(
    arch: str = "qwen2", *, n_layers: int = 4, hidden: int = 64, seed: int = 0
) -> ModelHandle:
    """A randomly initialised causal LM of the given family (llama, qwen2, gemma, gpt2)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_config(arch, len(tokenizer), n_layers=n_layers, hidden=hidden)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init at std 0.02 gives near-constant residuals; a larger scale makes rows distinct.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    return wrap_model(model, tokenizer, name=f"tiny-{arch}-{seed}")


def save_tiny_vllm_model(root: Path, name: str = "tiny-vllm") -> tuple[Path, ModelHandle]:
    """A random Qwen2 with head_dim 32 (vLLM's CPU attention needs it) saved to root/"model"
    as a Hugging Face directory; returns (that directory, the model reloaded from it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = tiny_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    path = root / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, wrap_model(model, AutoTokenizer.from_pretrained(path), name=name)
