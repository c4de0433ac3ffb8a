"""core.arena.evidence: the knowledge/behaviour rule and the command that reproduces an evaluation."""

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
