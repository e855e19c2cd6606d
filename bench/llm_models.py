"""Random-weight Hugging Face models made on the spot (no hub): a Llama-architecture causal LM
with a byte-level BPE tokenizer trained here and a chat template, and a BERT-like encoder.
Saved with `save_pretrained(safe_serialization=True)`, sharded when asked. Used by
`bench/llm.py` and the LLM tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a model registry keeps numbered versions of every model",
    "serving a language model streams tokens to many clients at once",
    "continuous batching lets a new request join the running batch",
    "hello world, how are you today? I am fine, thank you.",
    "user assistant system: 0 1 2 3 4 5 6 7 8 9",
]


def make_tokenizer(vocab_size: int = 512, *, encoder: bool = False) -> Any:
    """A byte-level BPE trained on a few sentences, as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if encoder:
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )  # fmt: skip
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>",
    )  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_llama(
    directory: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    vocab_size: int = 512,
    context: int = 256,
    shard_size: str | None = "150KB",
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """A random Llama and its tokenizer saved in `directory` (sharded by `shard_size`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # livelier random outputs than 0.02's near-uniform logits
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if shard_size:
        kwargs["max_shard_size"] = shard_size
    model.save_pretrained(directory, **kwargs)
    tokenizer.save_pretrained(directory)
    return directory


def make_bert(directory: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random BERT-like encoder and its tokenizer, for `hf_embedding`."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = make_tokenizer(256, encoder=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).eval().save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
