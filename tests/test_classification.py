"""The classification objective on tiny models (a 2-layer Llama, a 2-layer BERT): the head trains whatever the
method, the label map is stored, a reloaded run predicts what the trained model did, bad input is one line, and a
classification run answers the arena's ``finetuned`` variant with its label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from arena_helpers import EchoHost, one_torch_thread
from training_helpers import write_rows

from core import training
from core.arena import ArenaConfig, ArenaContext, run_examples
from core.data import Example
from core.errors import DataError
from core.inference import is_classification_run, load_classifier
from core.training import classification
from core.training.classification import LABELS_FILE, class_logits, collate, head_modules, macro_f1

WORDS = {"pos": ["good", "great", "lovely", "fine"], "neg": ["bad", "awful", "broken", "late"]}
# The telling word comes first: the tiny tokenizer adds no [CLS], so a BERT's pooled state is the first token's.
ROWS = [{"text": f"{word}: the garden", "label": label} for label, words in WORDS.items() for word in words] * 2
LR = {"full": 3e-3, "freeze": 1e-2, "lora": 1e-2, "ia3": 3e-2}  # 8 steps; chosen from a sweep of 1e-3..3e-2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer BERT (hidden 32) with the tiny tokenizer, saved as a transformers folder: an encoder base."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tiny_tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path) -> str:
    return write_rows(tmp_path / "labelled.jsonl", ROWS)


def config(data: str, base: Path, method: str = "full", **overrides: Any) -> training.TrainingConfig:
    values: dict[str, Any] = {
        "data": data, "base_model": str(base), "objective": "classification", "method": method, "max_steps": 8,
        "batch_size": 4, "device": "cpu", "dtype": "fp32", "seed": 3, "learning_rate": LR[method],
        "val_fraction": 0.0, "val_data": data, "warmup_ratio": 0.0, "scheduler": "constant",
        "method_config": {"trainable_layers": 1} if method == "freeze" else {},
    }
    values.update(overrides)
    return training.TrainingConfig(**values)


def train_spied(cfg: training.TrainingConfig, runs: Path, monkeypatch) -> tuple[training.TrainResult, dict]:
    """Train, recording the head's weights right after the method's builder and the model the run ends with."""
    seen: dict[str, Any] = {}
    real = classification.make_trainable

    def spy(model, *args, **kwargs):
        model = real(model, *args, **kwargs)
        seen["model"] = model
        seen["head"] = {f"{i}.{n}": p.detach().clone() for i, m in enumerate(head_modules(model))
                        for n, p in m.named_parameters()}
        return model

    monkeypatch.setattr(classification, "make_trainable", spy)
    return training.train(cfg, runs_root=runs), seen


CASES = [("llama", "full"), ("llama", "freeze"), ("llama", "lora"), ("llama", "ia3"), ("bert", "full"),
         ("bert", "freeze"), ("bert", "lora"), ("bert", "ia3")]


@pytest.mark.parametrize(("base", "method"), CASES)
def test_the_head_trains_and_the_run_reports_its_labels(base, method, data, tmp_path, tiny_model_dir, tiny_bert_dir,
                                                        monkeypatch):
    folder = tiny_model_dir if base == "llama" else tiny_bert_dir
    lr = 1e-2 if (base, method) == ("bert", "full") else LR[method]
    result, seen = train_spied(config(data, folder, method, learning_rate=lr), tmp_path / "runs", monkeypatch)

    assert result.final_val_loss < result.first_val_loss  # the loss falls on the (seen) validation rows
    model = seen["model"]
    after = {f"{i}.{n}": p.detach() for i, m in enumerate(head_modules(model)) for n, p in m.named_parameters()}
    changed = [name for name, before in seen["head"].items() if not torch.equal(before, after[name])]
    assert any("weight" in name for name in changed), "the classification head did not train"
    contract = result.contract()
    assert contract["objective"] == "classification" and contract["labels"] == ["neg", "pos"]
    assert 0.0 <= contract["val_accuracy"] <= 1.0 and 0.0 <= contract["val_macro_f1"] <= 1.0
    run = Path(result.run_dir)
    assert json.loads((run / LABELS_FILE).read_text())["labels"] == ["neg", "pos"]
    assert json.loads((run / "result.json").read_text())["extras"]["labels"] == ["neg", "pos"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss", "val_accuracy", "val_macro_f1"} <= set(next(row for row in metrics if "val_loss" in row))
    assert is_classification_run(run) and not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))


def test_a_classification_lora_run_is_refused_a_merge_into_a_language_model(data, tmp_path, tiny_model_dir,
                                                                              monkeypatch):
    from core.inference import merge_and_export, merge_refusal
    from core.runs import Run

    result, _ = train_spied(config(data, tiny_model_dir, "lora"), tmp_path / "runs", monkeypatch)
    assert "classification head" in merge_refusal(Run(Path(result.run_dir)))
    with pytest.raises(ValueError, match="^merge: .* is a classification head"):
        merge_and_export(result.run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("method", ["full", "freeze", "lora", "ia3"])
def test_a_reloaded_run_predicts_what_the_trained_model_did(method, data, tmp_path, tiny_model_dir, monkeypatch):
    result, seen = train_spied(config(data, tiny_model_dir, method), tmp_path / "runs", monkeypatch)
    model = seen["model"].eval()
    classifier = load_classifier(result.run_dir, device="cpu", dtype="fp32")
    texts = [row["text"] for row in ROWS[:8]]

    tokenizer = classifier.tokenizer
    rows = [classification.LabelledText(tokenizer(text)["input_ids"], 0) for text in texts]
    with torch.no_grad():
        expected = class_logits(model, collate(rows, tokenizer.pad_token_id, "cpu"))
    assert torch.allclose(classifier.logits(texts), expected, atol=1e-5)
    predictions = classifier.predict(texts, batch_size=3)
    assert [p.label for p in predictions] == [["neg", "pos"][i] for i in expected.argmax(-1).tolist()]
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-4 and list(p.probabilities)[0] == p.label
               for p in predictions)


def test_a_full_run_is_a_model_folder_transformers_loads(data, tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    result = training.train(config(data, tiny_bert_dir, "full", max_steps=2), runs_root=tmp_path / "runs")
    model = AutoModelForSequenceClassification.from_pretrained(Path(result.run_dir) / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert (Path(result.run_dir) / "model" / "model.safetensors").is_file()


def test_instruction_rows_give_the_prompt_as_text_and_the_answer_as_label(tmp_path, tiny_model_dir):
    labels = ["billing", "shipping"]
    rows = [{"task": "classification", "instruction": "Classify: billing or shipping.", "input": f"message {i}",
             "output": labels[i % 2]} for i in range(10)]
    rows += [{"task": "qa", "instruction": "What is the tank size?", "output": "5.5 litres."}] * 3
    cfg = config(write_rows(tmp_path / "mixed.jsonl", rows), tiny_model_dir, val_data=None, val_fraction=0.2)
    from core.models import load_tokenizer

    prepared = classification.prepare(cfg, lambda: load_tokenizer(str(tiny_model_dir)))
    assert prepared.info["labels"] == labels and prepared.info["text_source"] == "prompt"
    assert len(prepared.train) + len(prepared.val) == 10  # the qa rows are left out
    assert len(prepared.val) == 2 and {row.label for row in prepared.val} == {0, 1}  # stratified by label
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert any(tokenizer.decode(row.input_ids).startswith("Classify: billing or shipping.\n\nmessage")
               for row in prepared.train)


@pytest.mark.parametrize(("rows", "val_rows", "columns", "needle"), [
    ([{"text": "good", "label": "pos"}, {"text": "bad"}], None, {}, 'labelled.jsonl line 2: missing field "label"'),
    ([{"review": "good", "stars": "5"}] * 2, None, {"text_column": "review", "label_column": "sentiment"},
     'labelled.jsonl line 1: missing field "sentiment"'),
    ([{"text": "good", "label": "pos"}, {"text": "fine", "label": "pos"}], None, {},
     "labelled.jsonl: every training row has the label 'pos'"),
    (ROWS, [{"text": "meh", "label": "neutral"}], {}, "val.jsonl line 1: validation label 'neutral' does not occur"),
])
def test_bad_input_is_one_line_naming_the_file(rows, val_rows, columns, needle, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "labelled.jsonl", rows)
    val = write_rows(tmp_path / "val.jsonl", val_rows) if val_rows else None
    cfg = config(data, tiny_model_dir, val_data=val, **columns)
    with pytest.raises(DataError) as caught:
        training.train(cfg, runs_root=tmp_path / "runs")
    message = str(caught.value)
    assert message.startswith(needle) and "\n" not in message
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused before any run


def test_the_cli_trains_a_head_and_reports_the_contract(data, tmp_path, tiny_bert_dir, capsys, monkeypatch):
    from core.cli import main

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    out = tmp_path / "runs" / "head"
    argv = ["train", "--data", data, "--model", str(tiny_bert_dir), "--objective", "classification", "--method",
            "full", "--max-steps", "2", "--batch-size", "4", "--dtype", "fp32", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["objective"] == "classification" and result["labels"] == ["neg", "pos"]
    assert {"val_accuracy", "val_macro_f1", "trainable_params", "adapter_bytes"} <= set(result)
    single = write_rows(tmp_path / "one.jsonl", [{"text": "x", "label": "a"}] * 3)
    assert main(["train", "--data", single, "--model", str(tiny_bert_dir), "--objective", "classification",
                 "--method", "full", "--json"]) == 2
    assert "one.jsonl: every training row has the label 'a'" in capsys.readouterr().err


def test_the_arena_answers_a_classifier_variant_with_its_label(data, tmp_path, tiny_bert_dir):
    from core.arena import Scorer

    result = training.train(config(data, tiny_bert_dir, "full"), runs_root=tmp_path / "runs")
    classifier = load_classifier(result.run_dir, device="cpu", dtype="fp32")
    run = result.run_dir
    host = EchoHost(lambda prompt, adapter: "pos")
    context = ArenaContext(host=host, scorer=Scorer(), classifiers={run: classifier})  # type: ignore[arg-type]
    arena = ArenaConfig(variants=["zero_shot", "finetuned", "finetuned_few_shot", "finetuned_rag"], adapters=[run])
    examples = [Example("Is this good or bad? Answer with the category: pos or neg.", input=row["text"],
                        output=row["label"], task="classification") for row in ROWS[::3]]

    table = run_examples(examples, arena, context)

    expected = [p.label for p in classifier.predict([e.input for e in examples])]
    for example, row, label in zip(examples, table, expected, strict=True):
        zero, tuned, shots, rag = row
        assert zero.available and zero.answer == "pos" and zero.prompt_tokens > 0
        assert tuned.answer == label and list(tuned.probabilities)[0] == label
        assert tuned.prompt_tokens == 0 and tuned.new_tokens == 0 and tuned.latency_s > 0
        assert tuned.metrics["accuracy"] == float(label == example.output)
        assert "probabilities" in tuned.to_dict()
        for other in (shots, rag):
            assert not other.available and "classification run" in other.error
    assert all(run not in adapters for _, adapters in host.calls)  # never sent to generation
    from core.arena.evidence import run_results

    assert run_results(context, table[0])["finetuned"]["trainable_params"] == result.trainable_params  # its cost


def test_the_engine_keeps_classification_runs_off_the_adapter_host(data, tmp_path, tiny_model_dir, tiny_bert_dir):
    from core.engine import Engine

    result = training.train(config(data, tiny_bert_dir, "full", max_steps=1), runs_root=tmp_path / "runs")
    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    arena = ArenaConfig(variants=["finetuned"], adapters=[result.run_dir])
    context = engine.arena_context(arena, model=str(tiny_model_dir), similarity=False)
    assert result.run_dir in context.classifiers and not context.adapter_keys
    assert not engine.host(str(tiny_model_dir)).adapters
    assert engine.classifier(result.run_dir) is context.classifiers[result.run_dir]  # loaded once per engine


def test_macro_f1_matches_the_textbook_definition():
    # class 0: tp 1, fp 0, fn 1 -> f1 2/3; class 1: tp 2, fp 1, fn 1 -> 2/3; class 2: tp 0 -> 0 (sklearn: 0.4444)
    assert macro_f1([0, 0, 1, 1, 1], [0, 1, 1, 1, 2]) == pytest.approx(4 / 9)
    assert macro_f1([1, 0], [1, 0]) == 1.0


def test_a_classifier_answer_shows_its_top_classes_escaped():
    from ui.eval_views import probabilities_html, render_example

    probabilities = {"<b>pos</b>": 0.9, "neg": 0.07, "other": 0.02, "rare": 0.01}
    shown = probabilities_html(probabilities)
    assert "&lt;b&gt;pos&lt;/b&gt;</span> <meter" in shown and "90%" in shown and "rare" not in shown  # top 3
    assert probabilities_html({}) == ""
    row = {"id": "q1", "variant": "finetuned", "answer": "<b>pos</b>", "probabilities": probabilities,
           "generate_s": 0.01, "metrics": {"accuracy": 1.0}, "instruction": "Classify", "reference": "pos"}
    page = render_example([row], "q1")
    assert "90%" in page and "label, 0.0 s" in page
