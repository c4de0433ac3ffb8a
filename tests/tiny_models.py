"""Tiny models built in the tests (no download): a byte-level BPE tokenizer with a ChatML template and a
2-layer Llama."""

from __future__ import annotations

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_CORPUS = [
    "The Orbit 3 garden has twelve pod slots and a 5.5 litre tank.",
    "Summarize the customer's message in one sentence.",
    "What is the capital of France? The capital of France is Paris.",
    "user assistant system instruction input output answer question",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (~400 tokens) trained here, with a ChatML chat template. No download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   unk_token="<unk>")
    fast.chat_template = CHATML
    return fast


def build_tiny_llama(vocab_size: int, seed: int = 0):
    """A 2-layer Llama with hidden size 32, randomly initialised (litgpt-style tiny config)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=2,
        eos_token_id=2, bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()
