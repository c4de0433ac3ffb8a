"""The arena: variants over examples with an ArenaContext built by hand (the tiny Llama behind an AdapterHost, a
fake knowledge base, a small pool), unavailable variants with their reasons, the context window, scoring, variant
parsing and config errors, and `python -m core arena` in-process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from arena_helpers import (
    PROMPTS,
    EchoHost,
    FakeEncoder,
    FakeKB,
    one_torch_thread,
    talkative_model_dir,
    trained_runs,
)

from core.arena import (
    DEFAULT_VARIANTS,
    STRATEGIES,
    ArenaConfig,
    ArenaContext,
    parse_variants,
    run_examples,
    run_query,
)
from core.arena.prompting import RAG_INSTRUCTION
from core.cli import main
from core.data import Example
from core.errors import ConfigError
from core.inference import AdapterHost, GenerationConfig, generate_batch, load_trained_model
from core.models import load_causal_lm

GEN = GenerationConfig(max_new_tokens=8)
VARIANTS = ["zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag"]
# p0 p2 p4: classification; p1 p3 p5: qa
POOL = [Example(instruction=f"Question {i}?", output=f"Answer {i}.", task="qa" if i % 2 else "classification",
                uid=f"p{i}") for i in range(6)]
EXAMPLES = [Example(instruction=q, output="Paris.", task="qa", uid=f"e{i}") for i, q in enumerate(PROMPTS)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def talkative_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return talkative_model_dir(tmp_path_factory, tiny_tokenizer)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, talkative_dir):
    return trained_runs(tmp_path_factory, talkative_dir)


@pytest.fixture(scope="module")
def host(talkative_dir, runs):
    """One host for the module, with the LoRA run loaded (base rows stay clean: test_generation checks that)."""
    host = AdapterHost(load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32"))
    host.add(runs["lora_a"])
    return host


@pytest.fixture(scope="module")
def scorer():
    from core.arena.metrics import Scorer

    return Scorer()


def full_context(host, runs, **extra):
    return ArenaContext(host=host, knowledge_base=FakeKB(), pool=POOL, adapter_keys={runs["lora_a"]: "lora_a"},
                        **extra)


def full_config(runs, **extra):
    values = {"adapters": [runs["lora_a"]], "few_shot_k": 2, "few_shot_selection": "fixed", "rag_k": 2,
              "generation": GEN}
    return ArenaConfig(**{**values, **extra})


# --------------------------------------------------------------------------------------------------------------------
# Every variant on the tiny model
# --------------------------------------------------------------------------------------------------------------------


def test_every_variant_answers_with_its_own_material(host, runs):
    context = full_context(host, runs)
    table = run_examples(EXAMPLES, full_config(runs), context, score=False)
    assert [[r.variant for r in row] for row in table] == [VARIANTS] * 3
    for example, row in zip(EXAMPLES, table, strict=True):
        by = {r.variant: r for r in row}
        assert all(r.available and r.error is None and r.prompt for r in row)
        # the talkative base never answers blank; an adapter trained 2 steps at lr 0.05 may answer only newlines
        assert all(by[name].answer.strip() for name in ("zero_shot", "few_shot", "rag"))
        assert all(r.new_tokens == GEN.max_new_tokens and r.finish == "length" for r in row)
        assert all(0 < r.generate_s <= r.latency_s and r.batch_size >= 1 for r in row)
        for name in ("rag", "finetuned_rag"):
            assert [(p["source"], p["score"], p["title"]) for p in by[name].retrieved] == [
                ("corpus/doc0.md", 0.4, "Doc 1"), ("corpus/doc1.md", 0.3, "Doc 2")]  # dense scores, best first
            assert "[1] (source: doc0.md) Passage 0 about tanks." in by[name].prompt
            assert "[2] (source: doc1.md) Passage 1 about pods." in by[name].prompt
            assert by[name].retrieval_s is not None
        for name in ("zero_shot", "few_shot", "finetuned"):
            assert by[name].retrieved == [] and "Passage 0" not in by[name].prompt
        assert by["few_shot"].shots == ["p1", "p3"]
        assert "Question 1?" in by["few_shot"].prompt and "Answer 3." in by["few_shot"].prompt
        assert all(r.shots == [] for r in row if r.variant != "few_shot")
        assert by["finetuned"].prompt == by["zero_shot"].prompt  # the adapter sees the layout it trained on
        assert by["finetuned_rag"].prompt == by["rag"].prompt
        assert by["finetuned"].adapter == runs["lora_a"] and by["zero_shot"].adapter is None
        assert example.instruction in by["zero_shot"].prompt
    assert context.knowledge_base.calls == [(q, 2, True) for q in PROMPTS]  # one search per example


def test_variants_generate_with_the_right_weights(host, runs):
    table = run_examples(EXAMPLES, full_config(runs), full_context(host, runs), score=False)
    base = load_causal_lm(str(host.base.resolved.location), device="cpu", dtype="fp32")
    tuned = load_trained_model(runs["lora_a"], device="cpu", dtype="fp32")

    def alone(loaded, prompt):
        return generate_batch(loaded.model, loaded.tokenizer, [prompt], GEN)[0].text

    for row in table:
        by = {r.variant: r for r in row}
        for name in ("zero_shot", "few_shot", "rag"):
            assert by[name].answer == alone(base, by[name].prompt)
        for name in ("finetuned", "finetuned_rag"):
            assert by[name].answer == alone(tuned, by[name].prompt)
    assert any(row[0].answer != row[3].answer for row in table)  # the adapter changes at least one answer


def test_two_adapters_of_different_methods_side_by_side(host, runs):
    """A LoRA run (mixed into the base batch) and a prompt-tuning run (a batch of its own) as two variants."""
    lora, prompt = runs["lora_a"], runs["prompt_tuning"]
    keys = {lora: host.add(lora).key, prompt: host.add(prompt).key}
    config = ArenaConfig(variants=["zero_shot", "finetuned"], adapters=[lora, prompt], generation=GEN)
    table = run_examples(EXAMPLES[:2], config, ArenaContext(host=host, adapter_keys=keys), score=False)
    assert [r.variant for r in table[0]] == ["zero_shot", "finetuned@lora_a", "finetuned@prompt_tuning"]
    for row in table:
        assert row[1].prompt == row[2].prompt == row[0].prompt
        for result, run in ((row[1], lora), (row[2], prompt)):
            loaded = load_trained_model(run, device="cpu", dtype="fp32")
            assert result.answer == generate_batch(loaded.model, loaded.tokenizer, [result.prompt], GEN)[0].text
    assert table[0][0].batch_size == 4  # base + LoRA rows of both examples share one batch
    # prompt tuning gets a batch of its own, with both examples' rows whatever their lengths (its virtual tokens go
    # after each row's padding), and each answer equals the row alone (checked above)
    lengths = [len(host.base.tokenizer(row[2].prompt, add_special_tokens=False)["input_ids"]) for row in table]
    assert lengths[0] != lengths[1] and table[0][2].batch_size == table[1][2].batch_size == 2


def test_batched_across_examples_equals_each_example_alone(host, runs):
    config, context = full_config(runs), full_context(host, runs)
    together = run_examples(EXAMPLES, config, context, score=False)
    alone = [run_examples([example], config, context, score=False)[0] for example in EXAMPLES]
    assert [[(r.answer, r.prompt, r.retrieved, r.shots) for r in row] for row in together] == [
        [(r.answer, r.prompt, r.retrieved, r.shots) for r in row] for row in alone]
    assert max(r.batch_size for row in together for r in row) == 8  # 15 rows in batches of at most 8
    assert max(r.batch_size for row in alone for r in row) <= 5


def test_progress_reports_retrieval_and_generation(host, runs):
    seen = []
    run_examples(EXAMPLES, full_config(runs, max_batch_size=4), full_context(host, runs), score=False,
                 on_progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert [s for s in seen if s[0] == "retrieve"] == [("retrieve", 1, 3), ("retrieve", 2, 3), ("retrieve", 3, 3)]
    assert [s for s in seen if s[0] == "generate"] == [("generate", n, 15) for n in range(1, 16)]  # per ended row


def test_single_query_streams_growing_text_per_variant(host):
    seen: dict[int, list[str]] = {}
    config = ArenaConfig(variants=["zero_shot", "rag"], generation=GEN)
    result = run_query("Tank?", config, ArenaContext(host=host, knowledge_base=FakeKB()),
                       on_text=lambda variant, text: seen.setdefault(variant, []).append(text))
    assert set(seen) == {0, 1}
    for variant, texts in seen.items():
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # text only grows
        assert texts[-1].strip() == result.results[variant].answer


# --------------------------------------------------------------------------------------------------------------------
# finetuned_few_shot: a run's weights with worked examples
# --------------------------------------------------------------------------------------------------------------------


def test_finetuned_few_shot_sends_the_runs_adapter_with_the_few_shot_prompt():
    host = EchoHost(lambda prompt, adapter: f"answer of {adapter}")
    config = ArenaConfig(variants=["zero_shot", "few_shot", "finetuned_few_shot"], adapters=["runs/a"], few_shot_k=2,
                         few_shot_selection="fixed")
    row = run_examples(EXAMPLES[:1], config, ArenaContext(host=host, pool=POOL, adapter_keys={"runs/a": "key-a"}),
                       score=False)[0]
    zero, few, both = row
    assert (both.variant, both.strategy, both.adapter) == ("finetuned_few_shot", "finetuned_few_shot", "runs/a")
    assert both.prompt == few.prompt != zero.prompt and both.shots == few.shots == ["p1", "p3"]
    assert "Question 1?" in both.prompt and "Answer 3." in both.prompt
    assert (zero.answer, few.answer, both.answer) == ("answer of None", "answer of None", "answer of key-a")
    [(prompts, adapters)] = host.calls  # one generate: the adapter row beside the base rows (the host batches)
    assert sorted(zip(adapters, prompts, strict=True), key=str) == sorted(
        [(None, zero.prompt), (None, few.prompt), ("key-a", both.prompt)], key=str)


def test_finetuned_few_shot_generates_with_the_run_in_the_base_batch(host, runs):
    config = full_config(runs, variants=["few_shot", "finetuned_few_shot"])
    table = run_examples(EXAMPLES, config, full_context(host, runs), score=False)
    tuned = load_trained_model(runs["lora_a"], device="cpu", dtype="fp32")
    for few, both in table:
        assert both.prompt == few.prompt and both.shots == few.shots == ["p1", "p3"]
        assert both.available and both.new_tokens == GEN.max_new_tokens
        assert both.answer == generate_batch(tuned.model, tuned.tokenizer, [both.prompt], GEN)[0].text
    assert max(r.batch_size for row in table for r in row) > 3  # LoRA rows mix with the base rows


def test_finetuned_few_shot_expands_to_one_variant_per_run(host, runs):
    lora, prompt = runs["lora_a"], runs["prompt_tuning"]
    keys = {lora: host.add(lora).key, prompt: host.add(prompt).key}
    config = ArenaConfig(variants=["few_shot", "finetuned_few_shot"], adapters=[lora, prompt], few_shot_k=1,
                         few_shot_selection="fixed", generation=GEN)
    row = run_examples(EXAMPLES[:1], config, ArenaContext(host=host, pool=POOL, adapter_keys=keys), score=False)[0]
    assert [r.variant for r in row] == ["few_shot", "finetuned_few_shot@lora_a", "finetuned_few_shot@prompt_tuning"]
    assert [r.adapter for r in row] == [None, lora, prompt]
    assert row[1].prompt == row[2].prompt == row[0].prompt
    loaded = load_trained_model(prompt, device="cpu", dtype="fp32")
    assert row[2].answer == generate_batch(loaded.model, loaded.tokenizer, [row[2].prompt], GEN)[0].text
    assert row[2].batch_size == 1  # prompt tuning: a batch of its own


# --------------------------------------------------------------------------------------------------------------------
# nearest_answer: the most similar pool example's answer, no model
# --------------------------------------------------------------------------------------------------------------------

NEAR_POOL = [
    Example(instruction="How big is the water tank?", output="A 5.5 litre tank.", task="qa", uid="tank"),
    Example(instruction="Which light do the pods need?", output="Full-spectrum LED light.", task="qa", uid="light"),
    Example(instruction="Classify the message.", input="My parcel is late.", output="shipping",
            task="classification", uid="parcel"),
]
NEAR_EXAMPLES = [
    Example(instruction="How big is the tank?", output="A 5.5 litre tank.", task="qa", uid="q1"),
    Example(instruction="What light do pods need?", output="LED light.", task="qa", uid="q2"),
    Example(instruction="Classify the message.", input="Where is my order?", output="shipping",
            task="classification", uid="c1"),
]


def test_nearest_answer_copies_the_nearest_pool_answer_and_never_generates(scorer):
    host = EchoHost(lambda prompt, adapter: "generated")
    context = ArenaContext(host=host, pool=NEAR_POOL, scorer=scorer)
    table = run_examples(NEAR_EXAMPLES, ArenaConfig(variants=["zero_shot", "nearest_answer"]), context)
    [(prompts, adapters)] = host.calls
    assert len(prompts) == 3 and adapters == [None] * 3  # the zero_shot rows only
    assert [row[1].answer for row in table] == ["A 5.5 litre tank.", "Full-spectrum LED light.", "shipping"]
    assert [row[1].shots for row in table] == [["tank"], ["light"], ["parcel"]]  # by word overlap, its task first
    for zero, near in table:
        assert zero.answer == "generated" and zero.prompt
        assert near.available and near.error is None and near.variant == near.strategy == "nearest_answer"
        assert (near.prompt, near.prompt_tokens, near.new_tokens, near.batch_size) == ("", 0, 0, 0)
        assert near.generate_s is None and 0 < near.latency_s < 1
        assert len(near.notes) == 1 and near.notes[0].startswith(f"copied the answer of pool example {near.shots[0]} "
                                                                 "(word overlap similarity ")
        assert near.metrics  # scored like every other variant
    assert [row[1].metrics["exact_match"] for row in table] == [1.0, 0.0, 1.0]
    assert table[2][1].metrics["accuracy"] == 1.0

    alone = run_examples(NEAR_EXAMPLES, ArenaConfig(variants=["nearest_answer"]), context)
    assert len(host.calls) == 1  # nothing more went to generate
    assert [row[0].answer for row in alone] == [row[1].answer for row in table]


def test_nearest_answer_uses_the_pool_vectors_when_there_are_some():
    asked: list[list[str]] = []

    def embed(texts):
        asked.append(list(texts))
        return np.array([[1.0, 0.0]] * len(texts))

    vectors = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # "light" points the query's way, "tank" does not
    context = ArenaContext(host=EchoHost(lambda prompt, adapter: "x"), pool=NEAR_POOL, embed=embed,
                           pool_vectors=vectors)
    [[near]] = run_examples(NEAR_EXAMPLES[:1], ArenaConfig(variants=["nearest_answer"]), context, score=False)
    assert near.answer == "Full-spectrum LED light." and near.shots == ["light"]
    assert near.notes == ["copied the answer of pool example light (embedding similarity 1.000)"]
    assert asked == [["How big is the tank?"]]  # the query only: the pool's vectors are cached
    assert context.host.calls == []


def test_nearest_answer_never_copies_the_example_itself_and_streams_its_answer():
    seen: dict[int, list[str]] = {}
    itself = Example(instruction="How big is the water tank?", output="A 5.5 litre tank.", task="qa", uid="tank")
    host = EchoHost(lambda prompt, adapter: "x")
    config = ArenaConfig(variants=["nearest_answer"])
    [[near]] = run_examples([itself], config, ArenaContext(host=host, pool=NEAR_POOL), score=False,
                            on_text=lambda number, variant, text: seen.setdefault(variant, []).append(text))
    assert near.shots == ["light"] and seen == {0: ["Full-spectrum LED light."]}

    [[alone]] = run_examples([itself], config, ArenaContext(host=host, pool=NEAR_POOL[:1]), score=False)
    assert not alone.available and alone.error.startswith("no pool example to copy an answer from")
    assert alone.answer == "" and alone.latency_s is None


def test_nearest_answer_is_unavailable_without_a_pool_while_others_answer():
    host = EchoHost(lambda prompt, adapter: "generated")
    row = run_examples(NEAR_EXAMPLES[:1], ArenaConfig(variants=["zero_shot", "nearest_answer"]),
                       ArenaContext(host=host), score=False)[0]
    assert row[0].available and row[0].answer == "generated"
    assert not row[1].available and row[1].answer == "" and row[1].metrics == {}
    assert row[1].error == "no pool examples to copy an answer from (the few-shot pool file is empty or missing)"


def test_nearest_answer_needs_no_room_for_generation():
    host = EchoHost(lambda prompt, adapter: "x", window=16)
    config = ArenaConfig(variants=["nearest_answer"], generation=GenerationConfig(max_new_tokens=64))
    [[near]] = run_examples(NEAR_EXAMPLES[:1], config, ArenaContext(host=host, pool=NEAR_POOL), score=False)
    assert near.answer == "A 5.5 litre tank."
    with pytest.raises(ValueError, match="^max_new_tokens: "):  # a generating variant still needs the room
        run_examples(NEAR_EXAMPLES[:1], ArenaConfig(variants=["zero_shot", "nearest_answer"],
                                                    generation=GenerationConfig(max_new_tokens=64)),
                     ArenaContext(host=host, pool=NEAR_POOL), score=False)


# --------------------------------------------------------------------------------------------------------------------
# Unavailable variants
# --------------------------------------------------------------------------------------------------------------------


def test_missing_parts_make_variants_unavailable_while_others_answer(host):
    bare = ArenaContext(host=host, index_error="knowledge base unavailable: index folder x does not exist")
    row = run_examples(EXAMPLES[:1], ArenaConfig(generation=GEN), bare, score=False)[0]
    reasons = {r.variant: r.error for r in row if not r.available}
    assert set(reasons) == {"few_shot", "rag", "finetuned", "finetuned_rag"}
    assert reasons["rag"] == "knowledge base unavailable: index folder x does not exist"
    assert reasons["finetuned"].startswith("no fine-tuned run chosen")
    assert reasons["finetuned_rag"].startswith("no fine-tuned run chosen")  # the adapter is the first thing missing
    assert reasons["few_shot"].startswith("no few-shot examples")
    assert row[0].available and row[0].answer and row[0].latency_s > 0
    assert all(r.answer == "" and r.latency_s is None and r.prompt == "" for r in row if not r.available)

    no_index = run_examples(EXAMPLES[:1], ArenaConfig(variants=["rag"], generation=GEN), ArenaContext(host=host))
    assert no_index[0][0].error.startswith("no knowledge base chosen")


def test_an_adapter_that_failed_to_load_is_unavailable_with_its_error(host):
    context = ArenaContext(host=host, adapter_errors={"runs/x": "adapter: run x was trained on base model other"})
    row = run_examples(EXAMPLES[:1], ArenaConfig(variants=["zero_shot", "finetuned"], adapters=["runs/x"],
                                                 generation=GEN), context, score=False)[0]
    assert row[0].available and not row[1].available
    assert row[1].error == "adapter: run x was trained on base model other"


def test_empty_query_is_refused(host):
    for query in ("", "   "):
        with pytest.raises(ValueError, match="^query: is empty"):
            run_query(query, ArenaConfig(generation=GEN), ArenaContext(host=host))


def test_latency_counts_from_the_request_start_and_generate_s_from_the_batch_start():
    class SlowKB(FakeKB):
        def search(self, query, k, hybrid=True):
            time.sleep(0.05)
            return super().search(query, k, hybrid)

    host = EchoHost(lambda prompt, adapter: "ok")  # every row: last token 0.02 s into its batch
    row = run_examples(EXAMPLES[:1], ArenaConfig(variants=["zero_shot", "rag"]),
                       ArenaContext(host=host, knowledge_base=SlowKB()), score=False)[0]
    assert [r.generate_s for r in row] == [0.02, 0.02]
    assert all(r.latency_s >= 0.05 + 0.02 for r in row)  # the retrieval came first, for every variant
    assert row[1].retrieval_s >= 0.05 and row[0].retrieval_s is None


# --------------------------------------------------------------------------------------------------------------------
# The context window (a host that counts words as tokens)
# --------------------------------------------------------------------------------------------------------------------


def test_passages_are_dropped_to_fit_then_the_query_is_refused():
    passages = [" ".join([f"w{i}"] * 30) for i in range(3)]  # 30 words each
    host = EchoHost(lambda prompt, adapter: "ok", window=100)
    config = ArenaConfig(variants=["zero_shot", "rag"], rag_k=3, generation=GenerationConfig(max_new_tokens=20))
    context = ArenaContext(host=host, knowledge_base=FakeKB(passages))
    # budget 100 - 20 = 80 words; rendered: "user:" + instruction + "Passages:" + 33 per passage + "Question:" + query
    overhead = 1 + len(RAG_INSTRUCTION.split()) + 1 + 1 + 2
    assert overhead + 33 <= 80 < overhead + 66
    row = run_examples([Example(instruction="Tank size?")], config, context, score=False)[0]
    assert row[1].available and [p["text"] for p in row[1].retrieved] == [passages[0]]
    assert "w1" not in row[1].prompt and row[1].prompt_tokens == overhead + 33

    long = Example(instruction=" ".join(["word"] * 85))
    row = run_examples([long], config, context, score=False)[0]
    assert not row[0].available and not row[1].available
    assert "86 tokens, over the 80" in row[0].error  # "user:" + 85 words
    assert "over the 80" in row[1].error
    assert len(host.calls) == 1  # nothing was generated for the refused example


# --------------------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------------------


def test_metrics_are_none_without_a_reference_and_floats_with_one(host, runs, scorer):
    context = full_context(host, runs, scorer=scorer, similarity_embedder=FakeEncoder())
    config = full_config(runs, variants=["zero_shot", "rag"])
    query = PROMPTS[0]  # its answer has letters (ROUGE ignores other characters)
    unscored = run_query(query, config, context)
    assert all(r.metrics and all(v is None for v in r.metrics.values()) for r in unscored.results)  # n/a, never 0

    answer = unscored.results[0].answer  # greedy: the same answer again, now used as the reference
    scored = run_query(query, config, context, reference=answer)
    zero, rag = scored.results
    assert zero.answer == answer
    assert zero.metrics["rouge1"] == pytest.approx(1.0) and zero.metrics["exact_match"] == 1.0
    assert zero.metrics["similarity"] == pytest.approx(1.0) and zero.metrics["token_f1"] == pytest.approx(1.0)
    assert "accuracy" not in zero.metrics
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in rag.metrics.values())
    assert {"rouge1", "rouge2", "rougeL", "bleu"} <= set(rag.metrics)

    without_embedder = run_query(query, config, full_context(host, runs, scorer=scorer), reference=answer)
    assert without_embedder.results[0].metrics["similarity"] is None
    assert without_embedder.results[0].metrics["rouge1"] == pytest.approx(1.0)


def test_classification_rows_score_accuracy_on_the_label(scorer):
    instruction = "Classify the message into one category: billing, shipping, technical."
    host = EchoHost(lambda prompt, adapter: "This is about shipping." if "parcel" in prompt else "A billing issue.")
    examples = [Example(instruction=instruction, input="Where is my parcel?", output="shipping",
                        task="classification", uid="c1"),
                Example(instruction=instruction, input="The app crashes.", output="technical",
                        task="classification", uid="c2")]
    table = run_examples(examples, ArenaConfig(variants=["zero_shot"]), ArenaContext(host=host, scorer=scorer))
    assert [row[0].metrics["accuracy"] for row in table] == [1.0, 0.0]


def test_result_dict_follows_the_cli_contract(host, runs):
    result = run_query("Tank?", full_config(runs, variants=["zero_shot", "rag"]), full_context(host, runs),
                       reference="A 5.5 litre tank.")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["query"] == "Tank?" and data["reference"] == "A 5.5 litre tank."
    assert [r["variant"] for r in data["results"]] == ["zero_shot", "rag"]
    for row in data["results"]:
        assert {"variant", "answer", "prompt", "latency_s", "new_tokens", "metrics", "retrieved"} <= set(row)
    assert {"text", "source", "score"} <= set(data["results"][1]["retrieved"][0])


# --------------------------------------------------------------------------------------------------------------------
# Variant names and config
# --------------------------------------------------------------------------------------------------------------------


def test_parse_variants_expands_one_variant_per_adapter():
    specs = parse_variants(["zero_shot", "finetuned", "rag", "finetuned_rag"], ["runs/a", "runs/b/"])
    assert [(s.name, s.strategy, s.adapter) for s in specs] == [
        ("zero_shot", "zero_shot", None), ("finetuned@a", "finetuned", "runs/a"),
        ("finetuned@b", "finetuned", "runs/b/"), ("rag", "rag", None),
        ("finetuned_rag@a", "finetuned_rag", "runs/a"), ("finetuned_rag@b", "finetuned_rag", "runs/b/")]
    one = parse_variants(["finetuned", " rag ", ""], ["runs/a"])
    assert [(s.name, s.adapter) for s in one] == [("finetuned", "runs/a"), ("rag", None)]
    assert parse_variants(["finetuned"])[0].adapter is None  # unavailable later, with its reason


def test_strategy_at_run_names_a_run():
    specs = parse_variants(["finetuned@runs/x", "finetuned"], ["runs/y"])
    assert [(s.name, s.adapter) for s in specs] == [("finetuned@runs/x", "runs/x"), ("finetuned", "runs/y")]
    specs = parse_variants(["finetuned_few_shot@runs/x", "finetuned_few_shot", "nearest_answer"], ["runs/y"])
    assert [(s.name, s.strategy, s.adapter) for s in specs] == [
        ("finetuned_few_shot@runs/x", "finetuned_few_shot", "runs/x"),
        ("finetuned_few_shot", "finetuned_few_shot", "runs/y"), ("nearest_answer", "nearest_answer", None)]
    specs = parse_variants(["finetuned_few_shot", "finetuned_rag"], ["runs/a", "runs/b"])
    assert [s.name for s in specs] == ["finetuned_few_shot@a", "finetuned_few_shot@b", "finetuned_rag@a",
                                       "finetuned_rag@b"]


def test_the_default_variants_are_the_cli_contracts_five_and_every_strategy_can_be_chosen():
    assert DEFAULT_VARIANTS == ("zero_shot", "few_shot", "rag", "finetuned", "finetuned_rag")
    assert ArenaConfig().variants == list(DEFAULT_VARIANTS)
    assert list(STRATEGIES) == [*DEFAULT_VARIANTS, "finetuned_few_shot", "nearest_answer"]
    both, near = STRATEGIES["finetuned_few_shot"], STRATEGIES["nearest_answer"]
    assert both.uses_adapter and both.uses_shots and both.generates and both.build is STRATEGIES["few_shot"].build
    assert not (near.uses_adapter or near.uses_shots or near.uses_retrieval) and near.uses_nearest
    assert not near.generates and all(STRATEGIES[name].generates for name in DEFAULT_VARIANTS)


@pytest.mark.parametrize(("names", "adapters", "message"), [
    (["best"], [], "unknown variant 'best'"),
    (["rag@runs/x"], [], "rag takes no adapter"),
    (["nearest_answer@runs/x"], [], "nearest_answer takes no adapter"),
    (["finetuned_few_shot@a", "finetuned_few_shot"], ["runs/a", "runs/b"], "finetuned_few_shot@a is listed twice"),
    (["rag", "rag"], [], "rag is listed twice"),
    (["finetuned@a", "finetuned"], ["runs/a", "runs/b"], "finetuned@a is listed twice"),
    ([], [], "none chosen"),
    ([" ", ""], [], "none chosen"),
])
def test_parse_variants_rejects(names, adapters, message):
    with pytest.raises(ValueError, match=f"^variants: .*{message}"):
        parse_variants(names, adapters)


@pytest.mark.parametrize(("values", "field"), [
    ({"few_shot_k": -1}, "few_shot_k"), ({"few_shot_k": 17}, "few_shot_k"), ({"few_shot_k": "3"}, "few_shot_k"),
    ({"rag_k": 0}, "rag_k"), ({"rag_k": 21}, "rag_k"), ({"rag_k": True}, "rag_k"),
    ({"max_batch_size": 0}, "max_batch_size"), ({"few_shot_selection": "best"}, "few_shot_selection"),
    ({"variants": ["zero_shot", "nope"]}, "variants"), ({"variants": "zero_shot,zero_shot"}, "variants"),
    ({"generation": {"max_new_tokens": 0}}, "max_new_tokens"), ({"generation": {"top_p": 2}}, "top_p"),
])
def test_arena_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        ArenaConfig(**values)


def test_arena_config_accepts_strings_and_dicts():
    config = ArenaConfig(variants="zero_shot, finetuned", adapters="runs/a", generation={"max_new_tokens": 5})
    assert config.variants == ["zero_shot", "finetuned"] and config.adapters == ["runs/a"]
    assert config.generation == GenerationConfig(max_new_tokens=5)
    assert [s.adapter for s in config.specs()] == [None, "runs/a"]
    assert json.loads(json.dumps(config.to_dict()))["generation"]["max_new_tokens"] == 5


# --------------------------------------------------------------------------------------------------------------------
# `python -m core arena` in-process
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "workspace"))
    return tmp_path / "workspace"


def one_error_line(capsys):
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, captured.err
    return errors[0]


@pytest.fixture
def fake_embedder(monkeypatch):
    """The engine's embedding model (all-MiniLM-L6-v2, loaded for the similarity metric) replaced by a fake."""
    from core.models import ModelManager

    asked: list[str | None] = []

    def embedder(self, name=None):
        asked.append(name)
        return FakeEncoder()

    monkeypatch.setattr(ModelManager, "embedder", embedder)
    return asked


# The tiny model and the fake embedder are passed even where the error should come first: a check that lets the
# arguments through then runs on them instead of on the bundled SmolLM2 + MiniLM.
@pytest.mark.parametrize(("extra", "needle"), [
    (["--query", "Tank?", "--variants", "zero_shot,best"], "unknown variant 'best'"),
    (["--query", "   ", "--variants", "zero_shot"], "query: is empty"),
    (["--query", "Tank?", "--variants", "zero_shot", "--k", "0"], "rag_k:"),
    (["--query", "Tank?", "--variants", "zero_shot", "--shots", "99"], "few_shot_k:"),
    (["--query", "Tank?", "--variants", "zero_shot", "--max-new-tokens", "0"], "max_new_tokens:"),
    (["--query", "Tank?", "--variants", "zero_shot", "--top-p", "0"], "top_p:"),
    (["--query", "Tank?", "--variants", "zero_shot", "--selection", "best"], "invalid choice: 'best'"),
    (["--variants", "zero_shot"], "--query"),
])
def test_arena_cli_bad_arguments_exit_2_with_one_line(workspace, talkative_dir, fake_embedder, capsys, extra,
                                                       needle):
    short = [] if "--max-new-tokens" in extra else ["--max-new-tokens", "1"]
    assert main(["arena", *extra, "--model", str(talkative_dir), *short, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ") and needle in captured.err


def test_arena_cli_unknown_adapter_exits_2(workspace, talkative_dir, capsys):
    code = main(["arena", "--query", "Tank?", "--model", str(talkative_dir), "--variants", "finetuned",
                 "--adapter", "no-such-run", "--json"])
    assert code == 2
    assert "no-such-run is not a run folder" in one_error_line(capsys)


def test_arena_cli_json_shape_with_the_tiny_model(workspace, talkative_dir, tmp_path, capsys, fake_embedder):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}.", "id": f"s{i}"})
                            + "\n" for i in range(4)))
    argv = ["arena", "--query", "How big is the tank?", "--reference", "A 5.5 litre tank.", "--model",
            str(talkative_dir), "--variants", "zero_shot,few_shot,rag,finetuned", "--few-shot", str(pool),
            "--selection", "fixed", "--shots", "2", "--index", str(tmp_path / "missing-index"),
            "--max-new-tokens", "6", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON document
    data = json.loads(out)
    assert data["query"] == "How big is the tank?" and data["reference"] == "A 5.5 litre tank."
    rows = {row["variant"]: row for row in data["results"]}
    assert list(rows) == ["zero_shot", "few_shot", "rag", "finetuned"]
    for name in ("zero_shot", "few_shot"):
        row = rows[name]
        assert row["available"] and row["answer"] and row["new_tokens"] == 6 and row["latency_s"] > 0
        assert {"rouge1", "rouge2", "rougeL", "bleu", "similarity"} <= set(row["metrics"])
        assert all(isinstance(value, float) for value in row["metrics"].values())
        assert row["retrieved"] == []
    assert rows["few_shot"]["shots"] == ["s0", "s1"] and "Question 0?" in rows["few_shot"]["prompt"]
    assert not rows["rag"]["available"] and "does not exist" in rows["rag"]["error"]
    assert not rows["finetuned"]["available"] and "no fine-tuned run" in rows["finetuned"]["error"]
    assert all(row["metrics"] == {} for row in (rows["rag"], rows["finetuned"]))
    assert fake_embedder  # the similarity metric asked for the embedding model


def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"instruction": example.instruction, "input": example.input,
                                        "output": example.output, "task": example.task, "id": example.uid}) + "\n"
                            for example in NEAR_POOL))
    return path


def test_arena_cli_nearest_answer_json(workspace, talkative_dir, tmp_path, capsys, fake_embedder, monkeypatch):
    from core.inference import AdapterHost

    def no_generate(*args, **kwargs):
        raise AssertionError("nearest_answer must not generate")

    monkeypatch.setattr(AdapterHost, "generate", no_generate)
    argv = ["arena", "--query", "How big is the tank?", "--reference", "A 5.5 litre tank.", "--model",
            str(talkative_dir), "--variants", "nearest_answer", "--few-shot", str(pool_file(tmp_path)), "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON document
    [row] = json.loads(out)["results"]
    assert row["variant"] == "nearest_answer" and row["available"] and row["answer"] == "A 5.5 litre tank."
    assert (row["prompt"], row["new_tokens"], row["prompt_tokens"], row["retrieved"]) == ("", 0, 0, [])
    assert row["latency_s"] is not None and row["latency_s"] < 1 and row["shots"] == ["tank"]
    assert row["notes"][0].startswith("copied the answer of pool example tank (embedding similarity ")
    assert row["metrics"]["exact_match"] == 1.0 and row["metrics"]["rougeL"] == pytest.approx(1.0)


def test_eval_cli_runs_the_new_variants(workspace, talkative_dir, runs, tmp_path, capsys, fake_embedder):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"instruction": example.instruction, "input": example.input,
                                        "output": example.output, "task": example.task, "id": example.uid}) + "\n"
                            for example in NEAR_EXAMPLES[:2]))
    argv = ["eval", "--data", str(data), "--model", str(talkative_dir), "--variants",
            "nearest_answer,finetuned_few_shot", "--adapter", runs["lora_a"], "--few-shot", str(pool_file(tmp_path)),
            "--shots", "1", "--out", str(tmp_path / "out"), "--max-new-tokens", "2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["summary"]) == ["nearest_answer", "finetuned_few_shot"] and result["n"] == 2
    assert result["summary"]["nearest_answer"]["exact_match"] == 0.5
    assert result["summary"]["nearest_answer"]["new_tokens"] == 0
    assert result["summary"]["finetuned_few_shot"]["new_tokens"] <= 2


MISSING_INDEX = "index: no knowledge base 'nope' in this workspace"


def test_a_knowledge_base_name_that_does_not_exist_is_refused_before_any_model_loads(workspace, tmp_path):
    """A name (or, confined, a folder of indexes/) the retrieval variants would read, with no such knowledge base:
    one line naming the field, nothing loaded, no evaluation saved (it used to save one with rag unavailable)."""
    from core.engine import Engine

    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"instruction": "Tank?", "output": "Five litres."}) + "\n")
    engine = Engine(workspace)
    confined = Engine(workspace, confined=True)
    for variants in (["rag"], ["zero_shot", "finetuned_rag"]):
        config = ArenaConfig(variants=variants, index="nope")
        with pytest.raises(ConfigError, match=f"^{MISSING_INDEX}$"):
            engine.arena("Tank?", config)
        with pytest.raises(ConfigError, match=f"^{MISSING_INDEX}$"):
            engine.evaluate(data, config)
        with pytest.raises(ConfigError, match=f"^{MISSING_INDEX}$"):
            confined.arena("Tank?", ArenaConfig(variants=variants, index=str(workspace / "indexes" / "nope")))
    assert engine.models.loaded() == confined.models.loaded() == []
    assert engine.list_evals() == [] and not any((workspace / "evals").iterdir())


@pytest.mark.parametrize("command", ["arena", "eval"])
def test_cli_refuses_a_knowledge_base_name_that_does_not_exist(workspace, tmp_path, capsys, command):
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"instruction": "Tank?", "output": "Five litres."}) + "\n")
    what = ["--query", "Tank?"] if command == "arena" else ["--data", str(data)]
    assert main([command, *what, "--index", "nope", "--variants", "zero_shot,rag", "--json"]) == 2
    assert one_error_line(capsys) == f"error: {MISSING_INDEX}"


def test_an_unused_index_name_and_the_demo_index_not_built_yet_are_not_refused(workspace, talkative_dir, capsys,
                                                                               fake_embedder):
    """No retrieval variant: the name is not read. The demo index (built on first use): rag says it is unavailable,
    as before; the other variants answer."""
    base = ["arena", "--query", "Tank?", "--model", str(talkative_dir), "--max-new-tokens", "1", "--json"]
    assert main([*base, "--variants", "zero_shot", "--index", "nope"]) == 0
    assert [row["variant"] for row in json.loads(capsys.readouterr().out)["results"]] == ["zero_shot"]
    assert main([*base, "--variants", "zero_shot,rag", "--index", "demo"]) == 0
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)["results"]}
    assert rows["zero_shot"]["available"] and not rows["rag"]["available"]
    assert rows["rag"]["error"].startswith("knowledge base unavailable: ")


def test_arena_help_lists_every_variant(capsys):
    assert main(["arena", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "zero_shot, few_shot, rag, finetuned, finetuned_rag (the default); also finetuned_few_shot, " \
           "nearest_answer" in text
