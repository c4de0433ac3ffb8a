"""core.arena.evidence: the knowledge/behaviour rule, the cost of a run and an index, and the command that reproduces
an evaluation."""

from __future__ import annotations

import shlex

from core.arena import ArenaConfig, VariantResult
from core.arena.evidence import command_line, grounded, slice_of
from core.data import Example
from core.inference import GenerationConfig

PASSAGE = "Error E22 means the Hub lost its Wi-Fi connection. Re-enter the network password in the app."


def rag_result(*texts: str) -> VariantResult:
    result = VariantResult("rag", "rag")
    result.retrieved = [{"text": text, "source": "hub.md", "score": 0.5} for text in texts]
    return result


def test_a_reference_is_grounded_when_most_of_its_content_words_are_in_the_passages():
    assert grounded("The Hub lost its Wi-Fi connection; re-enter the password.", [PASSAGE])
    assert not grounded("The pump needs descaling with vinegar every month.", [PASSAGE])
    assert not grounded("The Hub lost its Wi-Fi connection.", [])  # nothing retrieved


def test_a_one_word_label_is_never_grounded_even_when_the_passages_contain_it():
    assert not grounded("technical", ["A technical question about the Hub."])
    assert not grounded("Wi-Fi password", [PASSAGE])  # 2 content words: too few to call knowledge


def test_slice_rule():
    in_index = {"hub.md"}.__contains__
    with_source = Example(instruction="What does E22 mean?", output="It lost Wi-Fi.", source="hub.md", uid="a")
    elsewhere = Example(instruction="What does E22 mean?", output="It lost Wi-Fi.", source="gone.md", uid="b")
    grounded_answer = Example(instruction="Summarise.", output="The Hub lost its Wi-Fi connection; re-enter the "
                              "password.", uid="c")
    label = Example(instruction="Classify.", output="technical", uid="d")
    results = [VariantResult("zero_shot", "zero_shot"), rag_result(PASSAGE)]
    assert slice_of(with_source, results, in_index) == "knowledge"
    assert slice_of(elsewhere, [VariantResult("zero_shot", "zero_shot")], in_index) == "behaviour"
    assert slice_of(grounded_answer, results, in_index) == "knowledge"
    assert slice_of(label, results, in_index) == "behaviour"
    # without a knowledge base: the example names a source document or it does not
    assert slice_of(elsewhere, results, None) == "knowledge" and slice_of(grounded_answer, results, None) == "behaviour"


def test_the_reproducing_command_parses_back_to_the_same_settings():
    config = ArenaConfig(variants=["zero_shot", "rag"], adapters=["runs/my run"], index="demo", rag_k=5,
                         generation=GenerationConfig(max_new_tokens=32), seed=7)
    words = shlex.split(command_line("data/my test.jsonl", config))
    assert words[:6] == ["python", "-m", "core", "eval", "--data", "data/my test.jsonl"]
    pairs = dict(zip(words[6::2], words[7::2], strict=False))
    assert pairs["--variants"] == "zero_shot,rag" and pairs["--adapter"] == "runs/my run"
    assert pairs["--k"] == "5" and pairs["--max-new-tokens"] == "32" and pairs["--seed"] == "7"


def test_a_generative_run_and_the_index_are_priced_from_their_own_files(tmp_path):
    """evidence() prices a fine-tuned variant from the run folder its adapter names (result.json as core.runs writes
    it: train wall time, trainable parameters, weights size, peak memory) and a retrieving variant from the knowledge
    base's build time (its manifest); the others get none of these."""
    import json
    from types import SimpleNamespace

    from retrieval_helpers import FakeEmbedder, write
    from run_helpers import make_run

    from core.arena import ArenaContext
    from core.arena.evidence import evidence
    from core.inference.host import AdapterInfo
    from core.runs import Run
    from retrieval import KnowledgeBase, build_index

    run_id = "20250102-090000-lora-aa11"
    run_dir = make_run(tmp_path / "runs", run_id, wall_s=321.5, trainable=2_359_296)
    result = Run(run_dir).result
    write(tmp_path / "corpus" / "hub.md", f"# Hub\n\n{PASSAGE}\n")
    build_index([str(tmp_path / "corpus")], tmp_path / "kb", FakeEmbedder())
    kb = KnowledgeBase.load(tmp_path / "kb", FakeEmbedder())
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text(encoding="utf-8"))

    examples = [Example(instruction=f"What does E22 mean ({n})?", output="The Hub lost its Wi-Fi connection.",
                        task="qa", source="hub.md", uid=f"q{n}") for n in range(3)]

    def answered(variant: str, **extra) -> VariantResult:
        return VariantResult(variant, variant, answer="It lost Wi-Fi.", prompt_tokens=40, new_tokens=5,
                             generate_s=0.5, metrics={"rougeL": 0.5}, **extra)

    table = [[answered("zero_shot"), answered("rag", retrieved=[{"text": PASSAGE, "source": "hub.md", "score": 0.5}]),
              answered("finetuned", adapter=str(run_dir))] for _ in examples]
    rows = [{**answer.to_dict(), "id": example.uid, "task": example.task}
            for example, answers in zip(examples, table, strict=True) for answer in answers]
    host = SimpleNamespace(adapters={run_id: AdapterInfo(run_id, str(run_dir), "lora", True)})
    context = ArenaContext(host=host, knowledge_base=kb, adapter_keys={str(run_dir): run_id})  # type: ignore[arg-type]
    config = ArenaConfig(variants=["zero_shot", "rag", "finetuned"], adapters=[str(run_dir)], index="kb")
    found = evidence(examples, table, rows, config, context)

    cost = found["cost"]
    tuned = cost["finetuned"]
    assert (tuned["train_wall_s"], tuned["trainable_params"], tuned["adapter_bytes"], tuned["peak_mem_bytes"]) == (
        result["wall_s"], result["trainable_params"], result["adapter_bytes"], result["peak_mem_bytes"])
    assert (tuned["train_wall_s"], tuned["trainable_params"]) == (321.5, 2_359_296) and tuned["training"]
    assert tuned["index_build_s"] is None
    assert cost["rag"]["index_build_s"] == kb.build_s == manifest["build_s"] and cost["rag"]["retrieval"]
    assert cost["rag"]["train_wall_s"] is None and cost["rag"]["adapter_bytes"] is None
    assert all(cost["zero_shot"][key] is None for key in ("train_wall_s", "trainable_params", "adapter_bytes",
                                                          "peak_mem_bytes", "index_build_s"))
    assert cost["finetuned"]["prompt_tokens"] == 40.0 and cost["finetuned"]["latency_s"] == 0.5
    provenance = found["provenance"]
    assert provenance["runs"] == {"finetuned": run_id}
    assert provenance["index"]["name"] == "kb" and provenance["index"]["documents"] == 1
