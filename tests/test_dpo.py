"""The dpo objective on the tiny Llama: the implicit reward margin grows and the chosen answers win on a memorisable
pair set, the base stays untouched under LoRA, the reference log-probs are the starting model's, are kept in the run
folder and read back on resume, the two losses follow their formulas, and bad preference files are one line and
exit 2 through the CLI."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from arena_helpers import one_torch_thread
from training_helpers import PREFERENCE_PAIRS, base_name, fresh_base, train_captured, train_rows, write_rows

from core import training
from core.data import Example, encode_for_training
from core.errors import ConfigError, DataError
from core.training import dpo
from core.training.dpo import REFERENCE_FILE, collate_pairs, encode_pair, read_pairs, read_reference, sequence_logps

PAIRS = PREFERENCE_PAIRS
LR = {"lora": 1e-2, "full": 3e-3}  # 12 steps of 3 pairs: steady growth in a sweep of 1e-3..5e-2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture
def pairs(tmp_path) -> str:
    return write_rows(tmp_path / "prefs.jsonl", PAIRS)


def dpo_config(data: str, base: Path, method: str = "lora", **overrides: Any) -> training.TrainingConfig:
    """A few fp32 CPU steps; the pairs validate on themselves (a memorisable set)."""
    values: dict[str, Any] = {
        "data": data, "val_data": data, "base_model": str(base), "objective": "dpo", "method": method,
        "max_steps": 12, "batch_size": 3, "device": "cpu", "dtype": "fp32", "seed": 5, "learning_rate": LR.get(method),
        "warmup_ratio": 0.0, "scheduler": "constant", "eval_every": 6,
        "method_config": {"r": 8, "dropout": 0.0} if method == "lora" else {},
    }
    values.update(overrides)
    return training.TrainingConfig(**values)


def validation_rows(run_dir: str) -> list[dict[str, Any]]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if "reward_margin" in row]


def base_logps(model_dir: Path, tokenizer: Any, pair: dict[str, str]) -> tuple[float, float]:
    """(chosen, rejected) log-probs of a pair under the saved base, computed here: full logits, a plain sum."""
    model = fresh_base(model_dir)
    row = encode_pair(tokenizer, dpo.PreferencePair(**pair))
    out = []
    for encoded in (row.chosen, row.rejected):
        ids = torch.tensor([encoded.input_ids])
        with torch.no_grad():
            logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)  # (L-1, V)
        out.append(sum(float(logprobs[i, label]) for i, label in enumerate(encoded.labels[1:]) if label != -100))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def test_lora_learns_the_preferences_and_leaves_the_base_untouched(pairs, tmp_path, tiny_model_dir, tiny_tokenizer):
    captured = train_captured(dpo_config(pairs, tiny_model_dir), tmp_path / "runs")
    result = captured.result
    measures = validation_rows(result.run_dir)
    assert [row["step"] for row in measures] == [0, 6, 12]
    # step 0: the policy is the reference, so every implicit reward is 0 (a tie is no win)
    assert measures[0]["reward_margin"] == 0 and measures[0]["reward_accuracy"] == 0
    margins = [row["reward_margin"] for row in measures]
    assert margins[0] < margins[1] < margins[2] and margins[2] > 0.2, margins
    assert measures[-1]["reward_accuracy"] > 0.5 and measures[-1]["val_loss"] < math.log(2) - 0.1
    losses = [row["loss"] for row in train_rows(result.run_dir)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # h = 0 at the start: -log sigmoid(0)
    extras = result.contract()
    assert extras["objective"] == "dpo" and extras["reward_accuracy"] == measures[-1]["reward_accuracy"]
    assert extras["reward_measured_on"] == "validation"
    assert extras["reward_margin"] == measures[-1]["reward_margin"] and extras["pairs"] == len(PAIRS)
    # the base weights never moved: only the adapter trained
    base = dict(fresh_base(tiny_model_dir).named_parameters())
    for name, param in captured.model.named_parameters():
        if "lora_" in name:
            continue
        plain = base_name(name.removeprefix("base_model.model."))
        assert torch.equal(param.detach(), base[plain].detach()), name
    assert any(not torch.equal(p.detach(), captured.initial[n]) for n, p in captured.model.named_parameters()
               if "lora_B" in n)
    # the reference is the base model (the adapter at its zero start): same log-probs as computed here
    saved = read_reference(Path(result.run_dir) / REFERENCE_FILE)
    first = encode_pair(tiny_tokenizer, dpo.PreferencePair(**PAIRS[0]))
    assert saved[first.key] == pytest.approx(base_logps(tiny_model_dir, tiny_tokenizer, PAIRS[0]), abs=1e-4)
    assert len(saved) == len(PAIRS)


OTHER_ADAPTERS = {  # method, its settings, learning rate: 6 steps of 3 pairs
    "ia3": ("ia3", {}, 5e-2),
    "adalora": ("adalora", {"init_r": 4, "target_r": 2, "dropout": 0.0, "prune_every": 1}, 1e-2),
    "dora": ("lora", {"r": 8, "dropout": 0.0, "use_dora": True}, 1e-2),
}


@pytest.mark.parametrize("name", list(OTHER_ADAPTERS))
def test_other_lora_family_adapters_train_against_the_base_as_reference(name, pairs, tmp_path, tiny_model_dir,
                                                                        tiny_tokenizer):
    """IA3 (scales 1), AdaLoRA (E = 0) and DoRA (B = 0, magnitude = the weight norm) start as the identity: the
    reference log-probs are the base model's, the adapter disabled gives them back after training, and the run
    trains and saves its adapter."""
    method, settings, lr = OTHER_ADAPTERS[name]
    config = dpo_config(pairs, tiny_model_dir, method, max_steps=6, eval_every=6, learning_rate=lr,
                        method_config=settings)
    captured = train_captured(config, tmp_path / "runs")
    result = captured.result
    assert (result.state, result.steps) == ("completed", 6)
    adapter = Path(result.run_dir) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == (
        "LORA" if name == "dora" else name.upper())
    assert result.extras["reward_measured_on"] == "validation"
    assert result.extras["reward_accuracy"] > 0.5 and result.extras["reward_margin"] > 0, result.extras
    saved = read_reference(Path(result.run_dir) / REFERENCE_FILE)
    rows = [encode_pair(tiny_tokenizer, dpo.PreferencePair(**pair)) for pair in PAIRS]
    expected = base_logps(tiny_model_dir, tiny_tokenizer, PAIRS[0])
    assert saved[rows[0].key] == pytest.approx(expected, abs=1e-4)
    batch = collate_pairs(rows, tiny_tokenizer.pad_token_id, "cpu")
    model = captured.model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            disabled = sequence_logps(model, batch, False)  # (12,): 6 chosen, then 6 rejected
        enabled = sequence_logps(model, batch, False)
    reference = [saved[row.key][0] for row in rows] + [saved[row.key][1] for row in rows]
    assert disabled.tolist() == pytest.approx(reference, abs=1e-4)
    assert not torch.allclose(enabled, disabled, atol=1e-3)  # the adapter trained


def test_a_resumed_full_run_reads_its_reference_back(pairs, tmp_path, tiny_model_dir, monkeypatch):
    config = dpo_config(pairs, tiny_model_dir, "full", max_steps=4, eval_every=2)
    uninterrupted = training.train(config, runs_root=tmp_path / "a")
    stop = threading.Event()
    stopped = training.train(config, runs_root=tmp_path / "b", stop_event=stop,
                             on_step=lambda step, *rest: stop.set() if step == 2 else None)
    assert (stopped.state, stopped.steps) == ("stopped", 2)
    reference = Path(stopped.run_dir) / REFERENCE_FILE
    written, content = reference.stat().st_mtime_ns, reference.read_bytes()
    computed: list[int] = []
    real = dpo.PreferenceSession.logps
    monkeypatch.setattr(dpo.PreferenceSession, "logps", lambda self, rows: computed.append(len(rows)) or real(self,
                                                                                                             rows))
    monkeypatch.setattr(dpo, "write_reference", lambda *args: pytest.fail("the reference was written again"))
    resumed = training.resume(stopped.run_dir)
    assert (resumed.state, resumed.steps) == ("completed", 4)
    assert reference.stat().st_mtime_ns == written and reference.read_bytes() == content
    assert computed == [len(PAIRS)]  # the one validation pass at the end; no reference pass
    assert resumed.train_loss == pytest.approx(uninterrupted.train_loss, abs=1e-5)
    assert resumed.extras["reward_margin"] == pytest.approx(uninterrupted.extras["reward_margin"], abs=1e-5)
    assert "reference_s" not in resumed.extras and "reference_s" in uninterrupted.extras


def test_the_ipo_loss_starts_at_its_target_and_falls(pairs, tmp_path, tiny_model_dir):
    result = training.train(dpo_config(pairs, tiny_model_dir, dpo_loss="ipo", dpo_beta=0.5, max_steps=6),
                            runs_root=tmp_path)
    assert result.train_loss[0] == pytest.approx((0 - 1 / (2 * 0.5)) ** 2, abs=1e-3)  # h = 0: (0 - 1/(2 beta))^2
    assert result.train_loss[-1] < result.train_loss[0] and result.extras["dpo_loss"] == "ipo"
    assert result.extras["reward_margin"] > 0


def vote_on(engine: Any, pair: dict[str, str], number: int, winner: str = "chosen") -> dict[str, Any]:
    """One vote through the engine's vote API on a two-answer arena result: the pair's chosen answer from
    zero_shot, its rejected one from few_shot, shown in an order that alternates (the winner is A or B)."""
    arena = {"query": pair["prompt"], "reference": None, "task": "qa", "results": [
        {"variant": "zero_shot", "strategy": "zero_shot", "adapter": None, "available": True,
         "answer": pair["chosen"], "prompt": pair["prompt"], "metrics": {}},
        {"variant": "few_shot", "strategy": "few_shot", "adapter": None, "available": True,
         "answer": pair["rejected"], "prompt": pair["prompt"], "metrics": {}}]}
    shown = ["zero_shot", "few_shot"][:: 1 if number % 2 else -1]
    choice = {"chosen": "ABAB"[shown.index("zero_shot")], "tie": "tie", "all_bad": "all_bad"}[winner]
    return engine.record_vote(arena, choice, shown=shown, generation={"temperature": 0.0})


def test_votes_exported_and_trained_through_the_cli_make_the_chosen_answers_win(tmp_path, tiny_model_dir,
                                                                                 tiny_tokenizer, capsys,
                                                                                 monkeypatch):
    """The loop a new user runs: votes in the Arena (the engine's vote API, as the app calls it), ``feedback
    export``, ``train --objective dpo`` on the exported pairs. 8 votes give 6 pairs (a tie and an all-bad vote give
    none): too few to hold any out, so the rewards are measured on the training pairs and the JSON says so."""
    from peft import PeftModel

    from core.cli import main
    from core.engine import Engine

    engine = Engine(tmp_path / "ws")
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(engine.workspace.root))
    for number, pair in enumerate(PAIRS):
        vote_on(engine, pair, number)
    vote_on(engine, PAIRS[0], 6, "tie")
    vote_on(engine, PAIRS[1], 7, "all_bad")
    assert main(["feedback", "export", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert (exported["pairs"], exported["votes"], exported["skipped_votes"]) == (6, 8, 2)
    assert [(p.prompt, p.chosen, p.rejected) for p in read_pairs(exported["path"])] == [
        (p["prompt"], p["chosen"], p["rejected"]) for p in PAIRS]
    out = tmp_path / "runs" / "from-votes"
    assert main(["train", "--data", exported["path"], "--model", str(tiny_model_dir), "--objective", "dpo",
                 "--max-steps", "12", "--batch-size", "3", "--lr", "1e-2", "--scheduler", "constant",
                 "--warmup-ratio", "0", "--seed", "5", "--device", "cpu", "--dtype", "fp32", "--set", "r=8",
                 "--set", "dropout=0", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["objective"], result["pairs"], result["val_pairs"]) == ("dpo", 6, 0)
    assert result["reward_measured_on"] == "train"
    assert result["reward_accuracy"] > 0.5 and result["reward_margin"] > 0, result
    # the reference is the base with the adapter disabled, and training left it as it was
    saved = read_reference(out / REFERENCE_FILE)
    tuned = PeftModel.from_pretrained(fresh_base(tiny_model_dir), str(out / "adapter")).eval()
    rows = [encode_pair(tiny_tokenizer, dpo.PreferencePair(**pair)) for pair in PAIRS]
    batch = collate_pairs(rows, tiny_tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        with tuned.disable_adapter():
            disabled = sequence_logps(tuned, batch, False)  # (12,): 6 chosen, then 6 rejected
        enabled = sequence_logps(tuned, batch, False)
    reference = torch.tensor([saved[row.key][0] for row in rows] + [saved[row.key][1] for row in rows])
    assert disabled.tolist() == pytest.approx(reference.tolist(), abs=1e-4)
    assert (float(disabled[0]), float(disabled[6])) == pytest.approx(
        base_logps(tiny_model_dir, tiny_tokenizer, PAIRS[0]), abs=1e-4)
    margins = dpo.log_ratio_difference(enabled, reference)  # (6,): how much more the chosen answers gained
    assert float(margins.mean()) > 0 and not torch.allclose(enabled, disabled)


def test_a_dpo_run_answers_in_the_arena_and_a_vote_names_its_objective(pairs, tmp_path, tiny_model_dir):
    """The run is a ``finetuned`` variant like any other: the engine's arena answers with its adapter, and a vote
    on that answer records the run and names its approach with the objective (the leaderboard's ``lora (dpo)``)."""
    from core.arena import ArenaConfig
    from core.arena.leaderboard import method_name
    from core.engine import Engine
    from core.runs import Run

    engine = Engine(tmp_path / "ws", device="cpu", dtype="fp32")
    result = training.train(dpo_config(pairs, tiny_model_dir, max_steps=2, eval_every=2),
                            runs_root=engine.workspace.runs)
    config = ArenaConfig(variants=["zero_shot", "finetuned"], adapters=[result.run_dir],
                         generation={"max_new_tokens": 4})
    arena = engine.arena(PAIRS[0]["prompt"], config, model=str(tiny_model_dir)).to_dict()
    tuned = next(row for row in arena["results"] if row["variant"] == "finetuned")
    assert tuned["available"] and tuned["adapter"] == result.run_dir and tuned["new_tokens"] > 0, tuned
    vote = engine.record_vote(arena, "finetuned", shown=["finetuned", "zero_shot"])
    answer = next(answer for answer in vote["answers"] if answer["variant"] == "finetuned")
    run = Run(Path(result.run_dir))
    assert (vote["winner"], answer["run_id"], answer["answer"]) == ("A", run.run_id, tuned["answer"])
    assert (answer["method"], answer["objective"]) == (run.config["method"], dpo.DPO)
    assert method_name(answer) == f"{run.config['method']} ({dpo.DPO})"


# --------------------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------------------


def test_the_losses_follow_their_formulas():
    h = torch.tensor([-2.0, 0.0, 3.0])
    assert dpo.pair_losses(h, 0.1, "sigmoid").tolist() == pytest.approx(
        [-math.log(1 / (1 + math.exp(-0.1 * x))) for x in h.tolist()])
    assert dpo.pair_losses(h, 0.1, "ipo").tolist() == pytest.approx([(x - 5.0) ** 2 for x in h.tolist()])
    policy, reference = torch.tensor([-3.0, -5.0, -4.0, -2.0]), torch.tensor([-4.0, -4.0, -4.0, -4.0])
    assert dpo.log_ratio_difference(policy, reference).tolist() == [1.0 - 0.0, -1.0 - 2.0]


def test_sequence_logps_sum_answer_tokens_only_and_both_heads_agree(tiny_model_dir, tiny_tokenizer):
    model = fresh_base(tiny_model_dir)
    rows = [encode_pair(tiny_tokenizer, dpo.PreferencePair(**pair)) for pair in PAIRS[:3]]
    batch = collate_pairs(rows, tiny_tokenizer.pad_token_id, "cpu")
    assert batch["input_ids"].shape[0] == 6  # 3 chosen, then 3 rejected
    with torch.no_grad():
        fast, slow = sequence_logps(model, batch, True), sequence_logps(model, batch, False)
    assert fast.tolist() == pytest.approx(slow.tolist(), abs=1e-4)
    expected = base_logps(tiny_model_dir, tiny_tokenizer, PAIRS[1])
    assert (float(slow[1]), float(slow[4])) == pytest.approx(expected, abs=1e-4)


def test_csv_json_and_exported_votes_read_alike(tmp_path):
    exported = [{**pair, "source": "vote", "vote_id": f"v-{i:012x}", "task": "qa"} for i, pair in enumerate(PAIRS)]
    jsonl = read_pairs(write_rows(tmp_path / "votes.jsonl", exported))
    (tmp_path / "p.json").write_text(json.dumps(PAIRS), encoding="utf-8")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("prompt\tchosen\trejected\n" + "".join(f"{p['prompt']}\t{p['chosen']}\t{p['rejected']}\n"
                                                          for p in PAIRS[:4]), encoding="utf-8")
    with (tmp_path / "p.csv").open("w", encoding="utf-8", newline="") as handle:  # quoted: commas and a newline
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(PAIRS)
    assert [(p.prompt, p.chosen, p.rejected) for p in jsonl] == [tuple(p.values()) for p in PAIRS]
    assert {p.task for p in jsonl} == {"qa"} and [p.line for p in jsonl] == list(range(1, 7))
    assert [p.chosen for p in read_pairs(tmp_path / "p.json")] == [p["chosen"] for p in PAIRS]
    assert [p.rejected for p in read_pairs(tsv)] == [p["rejected"] for p in PAIRS[:4]]
    assert [(p.prompt, p.chosen, p.rejected) for p in read_pairs(tmp_path / "p.csv")] == [
        (p.prompt, p.chosen, p.rejected) for p in jsonl]


def test_max_prompt_length_cuts_the_prompt_from_the_left_and_the_answers_keep_their_tokens(pairs, tiny_model_dir,
                                                                                           tiny_tokenizer):
    pair = dpo.PreferencePair("word " * 200 + PAIRS[2]["prompt"], PAIRS[2]["chosen"], PAIRS[2]["rejected"])
    whole = encode_pair(tiny_tokenizer, pair, max_length=4096)
    cut = encode_pair(tiny_tokenizer, pair, max_length=4096, max_prompt_length=16)
    for full, short in ((whole.chosen, cut.chosen), (whole.rejected, cut.rejected)):
        prompt = len(full.labels) - full.answer_tokens
        assert prompt > 200 and not full.truncated and short.truncated
        assert short.input_ids == full.input_ids[prompt - 16 :]  # the prompt's last 16 tokens, then every answer one
        assert short.labels == [-100] * 16 + full.labels[prompt:]
    # then the sequence is cut to max_length as before; unset (0), the prompt is only cut by max_length, as before
    both = encode_pair(tiny_tokenizer, pair, max_length=18, max_prompt_length=16)
    assert len(both.chosen.input_ids) == 18
    assert both.chosen == encode_for_training(tiny_tokenizer, Example(pair.prompt, output=pair.chosen), None, 18)
    assert encode_pair(tiny_tokenizer, pair, max_length=64) == encode_pair(tiny_tokenizer, pair, max_length=64,
                                                                            max_prompt_length=0)
    assert encode_pair(tiny_tokenizer, pair, max_length=64).chosen == encode_for_training(
        tiny_tokenizer, Example(pair.prompt, output=pair.chosen), None, 64)
    # the setting reaches the run's pairs
    prepared = dpo.prepare(dpo_config(pairs, tiny_model_dir, max_prompt_length=4), lambda: tiny_tokenizer)
    assert all(len(side.labels) - side.answer_tokens == 4 for row in prepared.train for side in (row.chosen,
                                                                                                 row.rejected))


def test_settings_are_checked_by_name(pairs, tiny_model_dir):
    with pytest.raises(ConfigError, match="^dpo_beta: must be > 0"):
        dpo_config(pairs, tiny_model_dir, dpo_beta=0.0)
    with pytest.raises(ConfigError, match="^dpo_loss: must be one of sigmoid, ipo"):
        dpo_config(pairs, tiny_model_dir, dpo_loss="hinge")
    with pytest.raises(ConfigError, match="^max_prompt_length: must be an integer >= 0"):
        dpo_config(pairs, tiny_model_dir, max_prompt_length=-1)
    with pytest.raises(ConfigError, match="^method: the dpo objective trains with full, freeze, lora, qlora"):
        dpo_config(pairs, tiny_model_dir, "prompt_tuning")


# --------------------------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------------------------


def test_the_cli_trains_pairs_and_reports_the_rewards(pairs, tmp_path, tiny_model_dir, capsys, monkeypatch):
    from core.cli import main

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    out = tmp_path / "runs" / "prefs"
    assert main(["train", "--data", pairs, "--val-data", pairs, "--model", str(tiny_model_dir), "--objective", "dpo",
                 "--dpo-beta", "0.2", "--max-prompt-length", "64", "--max-steps", "2", "--batch-size", "3",
                 "--dtype", "fp32", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["objective"] == "dpo" and result["method"] == "lora" and result["dpo_beta"] == 0.2
    assert {"reward_accuracy", "reward_margin", "final_val_loss", "tokens_per_s"} <= set(result)
    assert (out / REFERENCE_FILE).is_file() and (out / "adapter").is_dir()
    assert json.loads((out / "config.json").read_text())["max_prompt_length"] == 64


BAD_FILES = [
    ([PAIRS[0], {"prompt": "Why?", "rejected": "No."}], {}, 'prefs.jsonl line 2: missing field "chosen"'),
    ([{"prompt": "Why?", "chosen": "Because."}, PAIRS[0]], {}, 'prefs.jsonl line 1: missing field "rejected"'),
    ([PAIRS[0], {"prompt": "Why?", "chosen": "Same.", "rejected": "Same."}], {},
     'prefs.jsonl line 2: fields "chosen" and "rejected" are the same text'),
    ([PAIRS[0], PAIRS[1], {"prompt": "  ", "chosen": "A.", "rejected": "B."}], {},
     'prefs.jsonl line 3: field "prompt" is empty'),
    ([PAIRS[0]], {}, "prefs.jsonl: 1 training pair; DPO needs at least 2"),
    (PAIRS + PAIRS[:4], {"--val-fraction": "0.9"},
     "prefs.jsonl: 1 training pair after 9 were held out for validation; DPO needs at least 2"),
]


@pytest.mark.parametrize(("rows", "flags", "needle"), BAD_FILES)
def test_bad_preference_files_exit_2_in_one_line(rows, flags, needle, tmp_path, tiny_model_dir, capsys, monkeypatch):
    from core.cli import main

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    data = write_rows(tmp_path / "prefs.jsonl", rows)
    argv = ["train", "--data", data, "--model", str(tiny_model_dir), "--objective", "dpo", "--max-steps", "1",
            "--out", str(tmp_path / "runs" / "r"), *[item for pair in flags.items() for item in pair]]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and err[0].startswith(f"error: {needle}"), err
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def test_bad_input_is_a_data_error_before_the_model_loads(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "prefs.jsonl", [PAIRS[0], ["not", "an", "object"]])
    with pytest.raises(DataError, match="^prefs.jsonl line 2: expected a JSON object"):
        training.train(dpo_config(data, tiny_model_dir, val_data=None), runs_root=tmp_path / "runs")
