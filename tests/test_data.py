"""core/data.py: every shape and file type, every listed bad input, splits and chat formatting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import (
    DataError,
    Example,
    encode_for_training,
    format_prompt,
    load_examples,
    split_examples,
)


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes and file types
# ---------------------------------------------------------------------------------------------------------------------


def test_alpaca_jsonl_with_task_and_source(tmp_path):
    path = write(tmp_path, "train.jsonl", jsonl([
        {"instruction": "Summarize.", "input": "A long message.", "output": "Short.", "task": "summarization"},
        {"instruction": "How long is the return window?", "output": "45 days.", "task": "qa",
         "source": "returns-policy.md"},
    ]))
    data = load_examples(path)
    assert data.shape == "alpaca"
    first, second = data.examples
    assert (first.instruction, first.input, first.output, first.task) == ("Summarize.", "A long message.", "Short.",
                                                                          "summarization")
    assert first.user_text == "Summarize.\n\nA long message."
    assert second.input == "" and second.user_text == "How long is the return window?"
    assert second.source == "returns-policy.md"
    assert data.tasks() == {"summarization": 1, "qa": 1}
    assert first.uid == "train.jsonl:1" and second.uid == "train.jsonl:2"


def test_prompt_completion_and_qa_shapes(tmp_path):
    pc = load_examples(write(tmp_path, "pc.jsonl", jsonl([{"prompt": "2+2?", "completion": "4"}])))
    assert pc.shape == "prompt_completion" and pc.examples[0].instruction == "2+2?" and pc.examples[0].output == "4"
    qa = load_examples(write(tmp_path, "qa.jsonl", jsonl([
        {"question": "Who founded it?", "answer": "Ottilie Brask.", "context": "Founded by Ottilie Brask."},
    ])))
    assert qa.shape == "qa"
    assert qa.examples[0].input == "Founded by Ottilie Brask." and qa.examples[0].output == "Ottilie Brask."


def test_chat_shape_with_system_and_history(tmp_path):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Price of the Orbit 3?"},
        {"role": "assistant", "content": "Cr 349."},
    ]}
    example = load_examples(write(tmp_path, "chat.jsonl", jsonl([row]))).examples[0]
    assert example.system == "Be brief."
    assert example.history == (("Hi", "Hello."),)
    assert (example.instruction, example.output) == ("Price of the Orbit 3?", "Cr 349.")


def test_json_array_reports_the_line_of_the_bad_item(tmp_path):
    good = {"instruction": "a", "output": "b"}
    text = "[\n" + json.dumps(good) + ",\n" + json.dumps(good) + ",\n" + json.dumps({"instruction": "c"}) + "\n]"
    path = write(tmp_path, "data.json", text)
    with pytest.raises(DataError, match=r'^data\.json line 4: missing field "output"$'):
        load_examples(path)
    wrapped = write(tmp_path, "wrapped.json", json.dumps({"data": [good, good]}))
    assert len(load_examples(wrapped)) == 2


def test_csv_and_tsv(tmp_path):
    csv_path = write(tmp_path, "d.csv", 'instruction,input,output\n"Say hi, please",,"hi, there"\nQ2,ctx,A2\n')
    data = load_examples(csv_path)
    assert [ex.instruction for ex in data] == ["Say hi, please", "Q2"]
    assert data.examples[0].output == "hi, there" and data.examples[1].input == "ctx"
    tsv = load_examples(write(tmp_path, "d.tsv", "question\tanswer\nWhere?\tTarnfield\n"))
    assert tsv.shape == "qa" and tsv.examples[0].output == "Tarnfield"


def test_named_shape_and_query_sets_without_answers(tmp_path):
    path = write(tmp_path, "queries.jsonl", jsonl([{"question": "Where is the head office?"}]))
    with pytest.raises(DataError, match='line 1: missing field "answer"'):
        load_examples(path)
    data = load_examples(path, require_output=False)
    assert data.examples[0].output is None
    with pytest.raises(DataError, match='line 1: missing field "instruction"'):
        load_examples(path, shape="alpaca", require_output=False)
    with pytest.raises(ValueError, match="shape: unknown value 'yaml'"):
        load_examples(path, shape="yaml")


# ---------------------------------------------------------------------------------------------------------------------
# Every bad input of the issue: file, line and field named
# ---------------------------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    ("empty.jsonl", b"", r"^empty\.jsonl: file is empty$"),
    ("blank.jsonl", b"\n  \n", r"^blank\.jsonl: file is empty$"),
    ("latin1.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n',
     r"^latin1\.jsonl line 2: not valid UTF-8 \(byte 0xe9\)"),
    ("broken.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n',
     r"^broken\.jsonl line 2: invalid JSON"),
    ("shape.jsonl", b'{"text": "a", "label": "b"}\n', r"^shape\.jsonl line 1: unknown shape, keys \['label', 'text'\]"),
    ("missing.jsonl", b'{"instruction": "a", "output": "b"}\n' * 16 + b'{"instruction": "a"}\n',
     r'^missing\.jsonl line 17: missing field "output"$'),
    ("type.jsonl", b'{"instruction": "a", "output": 3}\n',
     r'^type\.jsonl line 1: field "output" must be a string, got int$'),
    ("null.jsonl", b'{"instruction": null, "output": "b"}\n', r'^null\.jsonl line 1: missing field "instruction"$'),
    ("list.jsonl", b'{"instruction": ["a"], "output": "b"}\n',
     r'^list\.jsonl line 1: field "instruction" must be a string, got list$'),
    ("blankfield.jsonl", b'{"instruction": "   ", "output": "b"}\n',
     r'^blankfield\.jsonl line 1: field "instruction" is empty$'),
    ("notobject.jsonl", b'{"instruction": "a", "output": "b"}\n[1, 2]\n',
     r"^notobject\.jsonl line 2: expected a JSON object, got list$"),
    ("scalar.json", b'{"instruction": "a"}', r"^scalar\.json line 1: expected a JSON array of objects"),
    ("badjson.json", b'[{"instruction": "a",\n "output": }]', r"^badjson\.json line 2: invalid JSON"),
    ("empty_array.json", b"[]", r"^empty_array\.json: no rows$"),
    ("semicolon.csv", b"instruction;output\na;b\n", r"^semicolon\.csv line 1: header is semicolon-separated"),
    ("ragged.csv", b"instruction,output\na,b,c\n", r"^ragged\.csv line 2: row has 3 cells, header has 2$"),
    ("short.csv", b"instruction,input,output\na,b\n", r"^short\.csv line 2: row has fewer cells than the header"),
    ("data.parquet", b"PAR1", r"^data\.parquet: unsupported file type \.parquet"),
    ("role.jsonl", b'{"messages": [{"role": "bot", "content": "x"}]}\n',
     r'^role\.jsonl line 1: field "messages\[0\]\.role" must be one of system, user, assistant, got \'bot\'$'),
    ("noanswer.jsonl", b'{"messages": [{"role": "user", "content": "x"}]}\n',
     r"^noanswer\.jsonl line 1: field \"messages\": the last message must be the assistant's answer$"),
    ("content.jsonl", b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}\n',
     r'^content\.jsonl line 1: field "messages\[0\]\.content" must be a string, got int$'),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_file_line_and_field(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=message) as info:
        load_examples(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"^nope\.jsonl: file not found$"):
        load_examples(tmp_path / "nope.jsonl")
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a folder"):
        load_examples(folder)


def test_size_limit(tmp_path):
    path = write(tmp_path, "big.jsonl", jsonl([{"instruction": "x" * 1000, "output": "y"}] * 200))
    with pytest.raises(DataError, match=r"^big\.jsonl: file is 2\d\d KB, over the 100 KB limit$"):
        load_examples(path, max_bytes=100_000)
    assert len(load_examples(path)) == 200


def test_huge_field_is_refused(tmp_path):
    path = write(tmp_path, "huge.jsonl", jsonl([{"instruction": "q", "output": "y" * 300_000}]))
    with pytest.raises(DataError, match=r'^huge\.jsonl line 1: field "output" is 300000 characters, over the'):
        load_examples(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes_never_escape_as_another_error(tmp_path, content, suffix):
    path = write(tmp_path, "fuzz" + suffix, content)
    try:
        data = load_examples(path)
    except DataError as err:
        assert str(err).startswith("fuzz" + suffix)
        assert "\n" not in str(err)
    else:
        assert len(data) > 0 and all(isinstance(ex, Example) for ex in data)


# ---------------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------------


def _examples(n: int, task: str) -> list[Example]:
    return [Example(instruction=f"{task} question {i}", output=f"answer {i}", task=task, uid=f"{task}:{i}")
            for i in range(n)]


def test_split_is_deterministic_disjoint_and_stratified():
    examples = _examples(100, "qa") + _examples(50, "classification")
    a = split_examples(examples, validation=0.1, test=0.2, seed=7)
    b = split_examples(list(reversed(examples)), validation=0.1, test=0.2, seed=7)
    assert [ex.uid for ex in a.train] == [ex.uid for ex in b.train]
    assert [ex.uid for ex in a.test] == [ex.uid for ex in b.test]
    uids = [ex.uid for part in (a.train, a.validation, a.test) for ex in part]
    assert sorted(uids) == sorted(ex.uid for ex in examples)  # disjoint and complete
    assert sum(ex.task == "qa" for ex in a.validation) == 10
    assert sum(ex.task == "classification" for ex in a.test) == 10
    other = split_examples(examples, validation=0.1, test=0.2, seed=8)
    assert {ex.uid for ex in other.test} != {ex.uid for ex in a.test}


def test_adding_rows_does_not_move_existing_ones_between_splits():
    base = _examples(200, "qa")
    before = split_examples(base, validation=0.1, test=0.1, seed=0)
    after = split_examples(base + _examples(210, "qa")[200:], validation=0.1, test=0.1, seed=0)
    moved = {ex.uid for ex in before.test} - {ex.uid for ex in after.test}
    assert len(moved) <= 2  # only rows at the cut boundary can shift


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="validation: fraction"):
        split_examples(_examples(3, "qa"), validation=1.5)
    with pytest.raises(ValueError, match="validation \\+ test"):
        split_examples(_examples(3, "qa"), validation=0.5, test=0.5)


# ---------------------------------------------------------------------------------------------------------------------
# Chat formatting and training encoding
# ---------------------------------------------------------------------------------------------------------------------


def test_format_prompt_uses_the_chat_template(tiny_tokenizer):
    example = Example(instruction="Where?", input="Tarnfield", output="Here.")
    prompt = format_prompt(tiny_tokenizer, example, system="Be brief.")
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere?\n\nTarnfield<|im_end|>\n"
                      "<|im_start|>assistant\n")
    own_system = Example(instruction="Where?", system="Row system.")
    assert "Row system." in format_prompt(tiny_tokenizer, own_system, system="Be brief.")


def test_format_prompt_without_a_template(tiny_tokenizer):
    plain = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    plain.chat_template = None
    prompt = format_prompt(plain, Example(instruction="Where?"))
    assert prompt == "### Instruction:\nWhere?\n\n### Response:\n"


def test_encode_masks_the_prompt_and_ends_with_end_of_turn(tiny_tokenizer):
    example = Example(instruction="What is the capital of France?", output="Paris.")
    encoded = encode_for_training(tiny_tokenizer, example)
    assert len(encoded.input_ids) == len(encoded.labels)
    prompt_len = len(tiny_tokenizer(format_prompt(tiny_tokenizer, example), add_special_tokens=False)["input_ids"])
    assert encoded.labels[:prompt_len] == [-100] * prompt_len
    answer = [t for t in encoded.labels if t != -100]
    assert answer == encoded.input_ids[prompt_len:]
    assert tiny_tokenizer.decode(answer).startswith("Paris.<|im_end|>")
    assert not encoded.truncated


def test_encode_truncates_the_prompt_first(tiny_tokenizer):
    example = Example(instruction="word " * 300, output="Paris.")
    full = encode_for_training(tiny_tokenizer, example)
    short = encode_for_training(tiny_tokenizer, example, max_length=64)
    assert short.truncated and len(short.input_ids) == 64
    assert short.answer_tokens == full.answer_tokens  # the answer survived whole
    assert short.input_ids[-full.answer_tokens:] == full.input_ids[-full.answer_tokens:]


def test_encode_refuses_an_example_without_answer(tiny_tokenizer):
    with pytest.raises(ValueError, match="has no answer"):
        encode_for_training(tiny_tokenizer, Example(instruction="q", uid="x.jsonl:3"))
