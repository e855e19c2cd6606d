"""A tiny Llama-architecture model and tokenizer made in the test (no hub): 2 layers, hidden
64, a word-level vocabulary, a chat template; saved as Hugging Face writes it, sharded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = [
    "hello",
    "world",
    "the",
    "a",
    "model",
    "serves",
    "tokens",
    "fast",
    "and",
    "well",
    "is",
    "good",
    "yes",
    "no",
]
SPECIAL = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIAL, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(directory: Path, *, shard_size: str = "60KB", seed: int = 0) -> Path:
    """The model and tokenizer saved into `directory` as 3+ safetensors shards."""
    model, tokenizer = tiny_llama(seed), tiny_tokenizer()
    model.save_pretrained(directory, safe_serialization=True, max_shard_size=shard_size)
    tokenizer.save_pretrained(directory)
    return directory
