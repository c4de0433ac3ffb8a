"""Shared pieces of the arena tests: a tiny Llama that says something, tiny trained runs (built once per session,
whichever test file asks first), a fake knowledge base and a fake sentence encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from training_helpers import ROWS, SMALL_METHOD_CONFIG, tiny_config, write_rows

PROMPTS = ["What is the capital of France?", "Tank?", "How many pod slots has the Orbit 3 garden and its tank size?"]
RUN_SPECS = {  # name -> (method, seed, extra settings)
    "lora_a": ("lora", 1, {"learning_rate": 0.05}),
    "lora_b": ("lora", 2, {"learning_rate": 0.05}),
    "ia3": ("ia3", 3, {"learning_rate": 0.05}),
    "prompt_tuning": ("prompt_tuning", 4, {"method_config": SMALL_METHOD_CONFIG["prompt_tuning"]}),
}

_CACHE: dict[str, Any] = {}  # one build per test session, shared by every test file


def one_torch_thread():
    """For a module-scoped autouse fixture (``yield from one_torch_thread()``): the tiny models' matmuls are too small
    to gain from threads, and on a busy 2-core machine torch's worker threads stall each other (measured: the same
    arena test 0.1 s with one thread, 12 s with two under load). The previous setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def talkative_model_dir(tmp_path_factory: Any, tokenizer: Any) -> Path:
    """A 2-layer Llama (hidden 32) like tests/tiny_models.py's, but with an output head of its own: the tied one
    mostly repeats the prompt's last token (a newline, so answers decode to ''), which would also hide padding bugs.
    With seed 1 every prompt gets 16+ varied, non-blank tokens and no end-of-sequence; saved with ``tokenizer``."""
    if "talkative" not in _CACHE:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(1)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
            pad_token_id=2, eos_token_id=2, bos_token_id=1,
        )
        folder = tmp_path_factory.mktemp("talkative-llama")
        LlamaForCausalLM(config).eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _CACHE["talkative"] = folder
    return _CACHE["talkative"]


def trained_runs(tmp_path_factory: Any, base_dir: Path) -> dict[str, str]:
    """name -> run folder of a few real training steps on ``base_dir`` for every entry of RUN_SPECS."""
    key = f"runs:{base_dir}"
    if key not in _CACHE:
        from core.training import train

        root = tmp_path_factory.mktemp("arena-runs")
        data = write_rows(root / "rows.jsonl", ROWS)
        made = {}
        for name, (method, seed, extra) in RUN_SPECS.items():
            config = tiny_config(data, base_dir, method=method, seed=seed, max_steps=2, **extra)
            made[name] = str(train(config, run_dir=root / name).run_dir)
        _CACHE[key] = made
    return _CACHE[key]


def rendered(tokenizer: Any, questions: list[str]) -> list[str]:
    """Each question as a one-turn chat prompt."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def hit(rank: int, source: str, text: str, score: float, dense: float | None = None):
    from retrieval.index import Chunk, SearchHit

    chunk = Chunk(id=rank, doc_id=f"d{rank}", source=source, title=f"Doc {rank}", headings=("Tank",), start=0,
                  end=len(text), text=text, n_tokens=len(text.split()), hash=f"h{rank}")
    return SearchHit(rank=rank, score=score, chunk=chunk, dense_score=dense)


class FakeKB:
    """search() like retrieval.KnowledgeBase over fixed passages (best first); records its calls."""

    def __init__(self, texts: list[str] | None = None) -> None:
        self.texts = texts or ["Passage 0 about tanks.", "Passage 1 about pods.", "Passage 2 about light."]
        self.calls: list[tuple[str, int, bool]] = []

    def search(self, query: str, k: int, hybrid: bool = True) -> list:
        self.calls.append((query, k, hybrid))
        return [hit(rank, f"corpus/doc{rank - 1}.md", text, 0.9 - rank / 10, dense=0.5 - rank / 10)
                for rank, text in enumerate(self.texts[:k], start=1)]


class FakeEncoder:
    """A sentence-transformers-like encode(): bag of letters, unit length (similar texts -> similar vectors). Also
    what retrieval's SentenceTransformerEmbedder reads (the engine's ``embedder()`` wraps it)."""

    max_seq_length = 128

    def get_sentence_embedding_dimension(self) -> int:
        return 26

    def encode(self, sentences: list[str], *, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        vectors = np.zeros((len(sentences), 26), dtype=np.float32)
        for row, text in enumerate(sentences):
            for char in text.lower():
                if "a" <= char <= "z":
                    vectors[row, ord(char) - 97] += 1
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)


class EchoHost:
    """An AdapterHost stand-in with known answers: renders messages as "role: content" lines, counts words as
    tokens, and answers ``answer(prompt, adapter_key)``; every row reports ``len(answer.split())`` new tokens and its
    last token at 0.02 s into a batch of 0.05 s."""

    def __init__(self, answer: Any, window: int = 4096) -> None:
        self.answer = answer
        self.window = window
        self.calls: list[tuple[list[str], list[str | None]]] = []

    def render(self, messages: list[dict[str, str]]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def context_window(self) -> int:
        return self.window

    def generate(self, prompts: list[str], adapters: list[str | None], config: Any = None, *, max_batch_size: int = 8,
                 on_text: Any = None, on_batch: Any = None) -> list:
        import time

        from core.inference import Generated

        self.calls.append((list(prompts), list(adapters)))
        start = time.perf_counter()
        out = []
        for row, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
            text = self.answer(prompt, adapter)
            if on_text:
                on_text(row, text)
            out.append(Generated(text, len(text.split()), self.count_tokens(prompt), 0.02, 0.05, len(prompts),
                                 "length", start))
        if on_batch:
            on_batch(len(prompts), len(prompts))
        return out
