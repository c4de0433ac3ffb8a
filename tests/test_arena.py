"""Arena on the tiny Llama: prompt builders, batched == one-by-one generation, mixed LoRA adapters in one batch ==
each adapter alone, unmixable adapters in their own batch, base-model mismatch, unavailable variants, eval summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import build_tiny_llama
from training_helpers import ROWS, tiny_config, write_rows

from core.arena import ArenaConfig, ArenaContext, parse_variants, run_examples
from core.data import Example, build_messages
from core.evals import run_eval, summarise
from core.generation import AdapterError, AdapterHost, GenerationConfig, generate_batch
from core.models import load_causal_lm
from core.prompting import (
    Passage,
    PromptTooLongError,
    few_shot_messages,
    fit_passages,
    label_set,
    rag_messages,
    select_shots,
    zero_shot_messages,
)
from core.training import load_trained_model, train

GEN = GenerationConfig(max_new_tokens=10)
PROMPTS = ["What is the capital of France?", "Tank?", "How many pod slots has the Orbit 3 garden and its tank size?"]


# --------------------------------------------------------------------------------------------------------------------
# Prompt builders (pure)
# --------------------------------------------------------------------------------------------------------------------

QUERY = Example(instruction="How big is the tank?", task="qa", uid="q")
POOL = [Example(instruction=f"Question {i}?", output=f"Answer {i}.", task="qa" if i % 2 else "classification",
                uid=f"p{i}") for i in range(6)]


def test_zero_and_few_shot_layouts():
    assert zero_shot_messages(QUERY, "Be brief.") == build_messages(QUERY, "Be brief.")
    messages = few_shot_messages(QUERY, POOL[1:3], "Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "Question 1?" and messages[2]["content"] == "Answer 1."
    assert messages[-1]["content"] == "How big is the tank?"


def test_rag_prompt_numbers_passages_with_their_file_names():
    passages = [Passage("The tank holds 5.5 litres.", "corpus/orbit.md", 0.9), Passage("Other.", "x/y.md", 0.5)]
    content = rag_messages(QUERY, passages)[-1]["content"]
    assert "[1] (source: orbit.md) The tank holds 5.5 litres." in content and "[2] (source: y.md)" in content
    assert content.endswith("Question: How big is the tank?")
    assert rag_messages(QUERY, []) == zero_shot_messages(QUERY)


def test_fit_passages_drops_the_lowest_ranked_first():
    passages = [Passage("a " * 10, "1", 0.9), Passage("b " * 10, "2", 0.8), Passage("c " * 10, "3", 0.7)]
    size = lambda kept: 5 + sum(len(p.text.split()) for p in kept)  # noqa: E731
    assert [p.source for p in fit_passages(size, passages, 26)] == ["1", "2"]
    assert fit_passages(size, passages, 5) == []
    with pytest.raises(PromptTooLongError, match="5 tokens, over the 4"):
        fit_passages(size, passages, 4)


def test_shot_selection_strategies():
    pool = [*POOL, Example(instruction="How big is the tank?", output="x", task="qa", uid="q")]
    fixed = select_shots(pool, QUERY, 2, selection="fixed")
    assert [s.uid for s in fixed] == ["p1", "p3"]  # same task first, never the query itself
    random_a = select_shots(pool, QUERY, 2, selection="random", seed=1)
    assert random_a == select_shots(pool, QUERY, 2, selection="random", seed=1)
    assert {s.uid for s in random_a} <= {"p1", "p3", "p5"}

    def embed(texts):  # question number -> a direction; the query is closest to question 5
        vectors = [[1.0, float(t.split()[1].rstrip("?"))] if t.startswith("Question") else [1.0, 4.6] for t in texts]
        vectors = np.array(vectors, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    similar = select_shots(pool[:6], QUERY, 2, selection="similar", embed=embed)
    assert [s.uid for s in similar] == ["p3", "p5"]  # most similar last, next to the query
    with pytest.raises(ValueError, match="few_shot_selection"):
        select_shots(pool, QUERY, 2, selection="best")


def test_label_set_from_instruction_or_known_labels():
    example = Example(instruction="Classify the message into one category: billing, shipping, technical.")
    assert label_set(example) == ["billing", "shipping", "technical"]
    assert label_set(example, ["a", "b"]) == ["a", "b"]
    assert label_set(Example(instruction="Summarise this.")) is None


def test_parse_variants_and_config_errors():
    specs = parse_variants(["zero_shot", "finetuned", "rag"], ["runs/a", "runs/b"])
    assert [s.name for s in specs] == ["zero_shot", "finetuned@a", "finetuned@b", "rag"]
    assert parse_variants(["finetuned@runs/x"])[0].adapter == "runs/x"
    with pytest.raises(ValueError, match="unknown variant 'best'"):
        parse_variants(["best"])
    with pytest.raises(ValueError, match="listed twice"):
        parse_variants(["rag", "rag"])
    with pytest.raises(ValueError, match="^rag_k:"):
        ArenaConfig(rag_k=0)
    with pytest.raises(ValueError, match="^max_new_tokens:"):
        GenerationConfig(max_new_tokens=0)


# --------------------------------------------------------------------------------------------------------------------
# Generation on the tiny model
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talkative_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny Llama with the embeddings of special and whitespace-only tokens zeroed: a random tied-embedding
    model otherwise repeats the newline that ends the prompt forever, and every answer decodes to ''."""
    import torch

    model = build_tiny_llama(len(tiny_tokenizer))
    silent = [i for i in range(len(tiny_tokenizer)) if i < 3 or not tiny_tokenizer.decode([i]).strip()]
    with torch.no_grad():
        model.model.embed_tokens.weight[silent] = 0.0
    folder = tmp_path_factory.mktemp("talkative-llama")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(talkative_dir):
    return load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32")


def rendered(loaded, questions):
    return [loaded.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True) for q in questions]


def test_batched_generation_equals_one_by_one(tiny):
    prompts = rendered(tiny, PROMPTS)
    batched = generate_batch(tiny.model, tiny.tokenizer, prompts, GEN)
    alone = [generate_batch(tiny.model, tiny.tokenizer, [p], GEN)[0] for p in prompts]
    assert [(b.text, b.new_tokens) for b in batched] == [(a.text, a.new_tokens) for a in alone]
    assert all(b.text for b in batched) and len({b.text for b in batched}) == 3
    assert len({b.prompt_tokens for b in batched}) == 3  # really different lengths: left padding was exercised
    assert all(0 < b.last_token_s <= b.batch_s and b.batch_size == 3 for b in batched)


def test_length_and_stop_strings(tiny):
    prompt = rendered(tiny, PROMPTS[:1])
    plain = generate_batch(tiny.model, tiny.tokenizer, prompt, GEN)[0]
    assert plain.finish == "length" and plain.new_tokens == GEN.max_new_tokens  # this model never ends by itself
    stop = plain.text[2:4]
    cut = generate_batch(tiny.model, tiny.tokenizer, prompt, GenerationConfig(max_new_tokens=10, stop=[stop]))[0]
    assert cut.finish == "stop" and stop not in cut.text and plain.text.startswith(cut.text)


# --------------------------------------------------------------------------------------------------------------------
# Adapters: mixed batches, separate models, base mismatch
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(talkative_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("arena-runs")
    data = write_rows(root / "rows.jsonl", ROWS)
    made = {}
    for name, method, seed in (("lora_a", "lora", 1), ("lora_b", "lora", 2), ("ia3", "ia3", 3)):
        config = tiny_config(data, talkative_dir, method=method, seed=seed, learning_rate=0.05, max_steps=4)
        made[name] = train(config, run_dir=root / name).run_dir
    return made


@pytest.fixture
def host(talkative_dir):
    return AdapterHost(load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32"))


def alone_with(run_dir, prompts):
    loaded = load_trained_model(run_dir, device="cpu", dtype="fp32")
    return [generate_batch(loaded.model, loaded.tokenizer, [p], GEN)[0].text for p in prompts]


def test_mixed_lora_batch_equals_each_adapter_alone(host, tiny, runs):
    prompts = rendered(tiny, PROMPTS)
    a, b = host.add(runs["lora_a"]).key, host.add(runs["lora_b"]).key
    assert host.adapters[a].mixable and host.adapters[b].mixable
    rows = [prompts[0], prompts[1], prompts[2], prompts[0], prompts[2]]
    keys = [None, a, b, a, None]
    mixed = [g.text for g in host.generate(rows, keys, GEN)]
    base = [generate_batch(tiny.model, tiny.tokenizer, [p], GEN)[0].text for p in prompts]
    assert mixed[0] == base[0] and mixed[4] == base[2]  # base rows untouched by the loaded adapters
    assert [mixed[1], mixed[3]] == [alone_with(runs["lora_a"], [prompts[1], prompts[0]])[i] for i in (0, 1)]
    assert mixed[2] == alone_with(runs["lora_b"], [prompts[2]])[0]
    assert mixed[1] != base[1] or mixed[2] != base[2]  # the adapters really change answers
    assert {g.batch_size for g in host.generate(rows, keys, GEN)} == {5}  # one generate call for all five


def test_unmixable_adapter_gets_its_own_batch(host, tiny, runs):
    prompts = rendered(tiny, PROMPTS[:2])
    key = host.add(runs["ia3"]).key
    assert not host.adapters[key].mixable
    out = host.generate([prompts[0], prompts[1], prompts[0]], [key, None, key], GEN)
    assert [g.batch_size for g in out] == [2, 1, 2]
    assert [out[0].text, out[2].text] == [alone_with(runs["ia3"], [prompts[0]])[0]] * 2
    assert out[1].text == generate_batch(tiny.model, tiny.tokenizer, [prompts[1]], GEN)[0].text


def test_adapter_of_another_base_model_is_refused(host, tmp_path, tiny_tokenizer):
    other = tmp_path / "other-base"
    build_tiny_llama(len(tiny_tokenizer), seed=5).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    run = train(tiny_config(data, other, method="lora", max_steps=1), run_dir=tmp_path / "other-run").run_dir
    with pytest.raises(AdapterError, match=f"trained on base model {other}.*base model is {host.base.resolved.name}"):
        host.add(run)
    with pytest.raises(AdapterError, match="not loaded"):
        host.generate(["x"], ["nope"], GEN)


# --------------------------------------------------------------------------------------------------------------------
# Variants over examples
# --------------------------------------------------------------------------------------------------------------------


class FakeKB:
    """search() like retrieval.KnowledgeBase, returning two fixed passages."""

    def search(self, query, k, hybrid=True):
        from retrieval.index import Chunk, SearchHit

        chunks = [Chunk(i, f"d{i}", f"corpus/doc{i}.md", f"Doc {i}", (), 0, 10, f"Passage {i} about tanks.", 4, "h")
                  for i in range(2)]
        return [SearchHit(rank, 0.9 - rank / 10, chunk) for rank, chunk in enumerate(chunks[:k], start=1)]


def test_every_variant_answers_and_missing_parts_are_explained(host, runs):
    key = host.add(runs["lora_a"]).key
    examples = [Example(instruction=q, output="Paris.", task="qa", uid=f"e{i}") for i, q in enumerate(PROMPTS)]
    config = ArenaConfig(adapters=[runs["lora_a"]], few_shot_k=2, few_shot_selection="fixed", rag_k=2,
                         generation=GEN)
    context = ArenaContext(host=host, knowledge_base=FakeKB(), pool=POOL, adapter_keys={runs["lora_a"]: key})
    table = run_examples(examples, config, context)
    assert [r.variant for r in table[0]] == ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]
    assert all(r.available and r.prompt and r.latency_s > 0 for row in table for r in row)
    assert table[0][1].shots == ["p1", "p3"] and len(table[0][2].retrieved) == 2
    assert table[0][0].retrieved == [] and "(source: doc0.md)" in table[0][4].prompt
    alone = [run_examples([example], config, context)[0] for example in examples]
    assert [[r.answer for r in row] for row in table] == [[r.answer for r in row] for row in alone]

    bare = ArenaContext(host=host, index_error="knowledge base unavailable: index folder x does not exist")
    row = run_examples(examples[:1], ArenaConfig(generation=GEN), bare)[0]
    reasons = {r.variant: r.error for r in row if not r.available}
    assert reasons["rag"].endswith("does not exist") and "no fine-tuned run" in reasons["finetuned"]
    assert "no few-shot examples" in reasons["few_shot"] and row[0].available and row[0].answer is not None


# --------------------------------------------------------------------------------------------------------------------
# Evaluation summary and reports
# --------------------------------------------------------------------------------------------------------------------


def test_summary_means_per_variant_and_task():
    rows = [
        {"variant": "a", "task": "qa", "metrics": {"rougeL": 0.2, "accuracy": None}},
        {"variant": "a", "task": "qa", "metrics": {"rougeL": 0.4}},
        {"variant": "a", "task": "cls", "metrics": {"rougeL": 0.9, "accuracy": 1.0}},
        {"variant": "b", "task": "qa", "metrics": {"rougeL": 0.7}, "available": True},
        {"variant": "b", "task": "qa", "metrics": {}, "available": False},
    ]
    summary = summarise(rows, n_resamples=200)
    assert summary["a"]["qa"]["rougeL"]["mean"] == pytest.approx(0.3) and summary["a"]["qa"]["rougeL"]["n"] == 2
    assert summary["a"]["all"]["rougeL"]["mean"] == pytest.approx(0.5) and summary["a"]["all"]["rougeL"]["n"] == 3
    assert "accuracy" not in summary["a"]["qa"] and summary["a"]["cls"]["accuracy"]["mean"] == 1.0
    assert summary["b"]["all"]["rougeL"]["n"] == 1  # the unavailable row is left out
    stats = summary["a"]["all"]["rougeL"]
    assert stats["low"] <= stats["mean"] <= stats["high"] and stats["low"] < stats["high"]


def test_run_eval_writes_every_report(host, tmp_path):
    from core.metrics import Scorer

    examples = [Example(instruction=q, output="Paris is the capital.", task="qa", uid=f"e{i}")
                for i, q in enumerate(PROMPTS)]
    config = ArenaConfig(variants=["zero_shot", "rag"], generation=GEN)
    context = ArenaContext(host=host, scorer=Scorer(), knowledge_base=FakeKB())
    result = run_eval(examples, config, context, tmp_path / "eval", data_path="rows.jsonl")
    files = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert files == ["chart.png", "examples.csv", "report.md", "results.json", "summary.csv"]
    with open(tmp_path / "eval/examples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["variant"] for r in rows} == {"zero_shot", "rag"}
    saved = json.loads((tmp_path / "eval/results.json").read_text())
    assert saved["n"] == 3 and set(saved["summary"]) == {"zero_shot", "rag"}
    assert all(0.0 <= saved["summary"][v]["rougeL"] <= 1.0 for v in ("zero_shot", "rag"))
    assert Path(result.eval_dir, "chart.png").read_bytes().startswith(b"\x89PNG")
    assert "## all" in (tmp_path / "eval/report.md").read_text()


def test_single_query_streams_growing_text_per_variant(host):
    from core.arena import run_query

    seen: dict[int, list[str]] = {}
    config = ArenaConfig(variants=["zero_shot", "rag"], generation=GEN)
    result = run_query("Tank?", config, ArenaContext(host=host, knowledge_base=FakeKB()),
                       on_text=lambda variant, text: seen.setdefault(variant, []).append(text))
    assert set(seen) == {0, 1}
    for variant, texts in seen.items():
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # text only grows
        assert texts[-1].strip() == result.results[variant].answer
    with pytest.raises(ValueError, match="query: is empty"):
        run_query("  ", config, ArenaContext(host=host))


def test_two_runs_with_the_same_folder_name_stay_apart(host, runs, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere" / Path(runs["lora_b"]).name
    shutil.copytree(runs["lora_b"], copy)
    first, second = host.add(runs["lora_b"]).key, host.add(copy).key
    assert first != second and host.add(copy).key == second
    assert host.adapters[second].run_dir == str(copy)
