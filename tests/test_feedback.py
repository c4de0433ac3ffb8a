"""Votes on arena answers: the record, the votes file under concurrency and torn lines, preference pairs, and the
``feedback export`` / ``leaderboard`` commands."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from pathlib import Path

import pytest
from arena_helpers import EchoHost
from run_helpers import LORA, make_run

from core.arena import ArenaConfig, ArenaContext, run_query
from core.arena.feedback import append_vote, preference_pairs, read_votes
from core.cli import main
from core.engine import Engine
from core.errors import ConfigError, NameRuleError
from core.io import write_json
from core.models import default_base_model

DPO_RUN = "20250102-090000-lora-dpo1"


class OverlapScorer:
    """score_batch like core.arena.metrics.Scorer: ``rougeL`` = share of the reference's words in the answer, and
    ``bleu`` = 1.0 for every answer (so it never has a single best)."""

    def score_batch(self, answers, references, tasks, *, label_sets=None, embedder=None):
        rows = []
        for answer, reference in zip(answers, references, strict=True):
            if not reference:
                rows.append({"rougeL": None, "bleu": None})
                continue
            words = set(reference.lower().split())
            rows.append({"rougeL": len(words & set(answer.lower().split())) / len(words), "bleu": 1.0})
        return rows


ANSWERS = {None: "The tank holds four litres.", "lora": "Four litres of water fit in the tank.",
           "dpo": "I do not know."}


@pytest.fixture
def engine(tmp_path) -> Engine:
    engine = Engine(tmp_path / "ws")
    make_run(engine.workspace.runs, LORA)
    dpo = make_run(engine.workspace.runs, DPO_RUN)
    config = json.loads((dpo / "config.json").read_text())
    write_json(dpo / "config.json", {**config, "objective": "dpo", "base_model": "tiny-base"})
    return engine


def arena_result(query: str = "How much water does the tank hold?", *, reference: str | None = "four litres",
                 task: str | None = "qa") -> dict:
    """A real ``ArenaResult.to_dict()``: zero_shot, rag (unavailable: no index) and two fine-tuned runs answered by
    a fake host, scored by OverlapScorer."""
    runs = {LORA: "lora", DPO_RUN: "dpo"}
    host = EchoHost(lambda prompt, adapter: ANSWERS[adapter])
    config = ArenaConfig(variants=["zero_shot", "rag", "finetuned"], adapters=[LORA, DPO_RUN])
    context = ArenaContext(host=host, scorer=OverlapScorer(), adapter_keys=runs)
    return run_query(query, config, context, reference=reference, task=task).to_dict()


SHOWN = [f"finetuned@{DPO_RUN}", "zero_shot", f"finetuned@{LORA}"]  # the order the cards were shown in


def test_a_vote_is_saved_with_every_answer_in_the_shown_order(engine):
    arena = arena_result()
    assert [row["variant"] for row in arena["results"]] == ["zero_shot", "rag", f"finetuned@{LORA}",
                                                          f"finetuned@{DPO_RUN}"]
    generation = {"max_new_tokens": 64, "temperature": 0.0}
    vote = engine.record_vote(arena, f"finetuned@{LORA}", shown=SHOWN, input_text="Orbit 3", generation=generation)
    assert vote["id"].startswith("v-") and len(vote["id"]) == 14
    assert vote["time"].endswith("Z") and len(vote["time"]) == 20
    assert (vote["query"], vote["input"], vote["task"], vote["reference"], vote["blind"]) == (
        "How much water does the tank hold?", "Orbit 3", "qa", "four litres", True)
    assert (vote["winner"], vote["winner_variant"]) == ("C", f"finetuned@{LORA}")
    assert vote["generation"] == generation
    dpo, zero, lora = vote["answers"]
    assert [a["label"] for a in vote["answers"]] == ["A", "B", "C"]
    assert (dpo["variant"], dpo["strategy"], dpo["run_id"], dpo["method"], dpo["objective"], dpo["base_model"]) == (
        f"finetuned@{DPO_RUN}", "finetuned", DPO_RUN, "lora", "dpo", "tiny-base")
    assert (lora["run_id"], lora["method"], lora["objective"], lora["base_model"]) == (
        LORA, "lora", "sft", default_base_model())
    assert (zero["run_id"], zero["method"], zero["objective"], zero["base_model"]) == (
        None, None, None, default_base_model())
    assert [a["answer"] for a in vote["answers"]] == [ANSWERS["dpo"], ANSWERS[None], ANSWERS["lora"]]
    assert zero["prompt"] == next(r["prompt"] for r in arena["results"] if r["variant"] == "zero_shot")
    assert lora["metrics"]["rougeL"] == 1.0 and dpo["metrics"]["rougeL"] == 0.0
    assert engine.list_votes() == [vote]
    assert (engine.workspace.root / "feedback" / "votes.jsonl").read_text().count("\n") == 1


def test_a_winner_may_be_given_by_its_label_and_ties_name_no_variant(engine):
    arena = arena_result()
    by_label = engine.record_vote(arena, "B", shown=SHOWN, blind=False)
    tie = engine.record_vote(arena, "tie", shown=SHOWN)
    assert (by_label["winner"], by_label["winner_variant"], by_label["blind"]) == ("B", "zero_shot", False)
    assert (tie["winner"], tie["winner_variant"]) == ("tie", None)
    assert [vote["id"] for vote in engine.list_votes()] == [by_label["id"], tie["id"]]  # oldest first


@pytest.mark.parametrize(("change", "needle"), [
    ({"winner": "rag"}, "winner: 'rag' is not a shown variant"),
    ({"winner": "D"}, "winner: 'D'"),
    ({"shown": []}, "answers: none shown"),
    ({"shown": ["zero_shot", "rag"]}, "shown: rag was unavailable"),
    ({"shown": ["zero_shot", "few_shot"]}, "shown: 'few_shot' is not a variant"),
    ({"shown": ["zero_shot", "zero_shot"]}, "shown: zero_shot is listed twice"),
    ({"query": "  "}, "query: is empty"),
])
def test_a_bad_vote_is_one_line_naming_the_field_and_saves_nothing(engine, change, needle):
    arena = arena_result()
    if "query" in change:
        arena["query"] = change["query"]
    with pytest.raises(ConfigError) as caught:
        engine.record_vote(arena, change.get("winner", "zero_shot"), shown=change.get("shown", SHOWN))
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert engine.list_votes() == []


def test_an_answer_of_a_deleted_run_is_recorded_with_an_unknown_method(engine):
    arena = arena_result()
    engine.delete_run(DPO_RUN)
    vote = engine.record_vote(arena, "A", shown=SHOWN, generation={"base_model": "arena-model"})
    assert (vote["answers"][0]["run_id"], vote["answers"][0]["method"]) == (DPO_RUN, None)
    assert vote["answers"][0]["base_model"] == "arena-model"  # the model the Arena ran it on


def test_a_vote_names_the_base_model_the_arena_answered_with(engine):
    """Prompting answers are the Arena's base model's (the app passes it in ``generation``, the API may name it);
    a fine-tuned answer is its run's base model's, whatever the Arena ran."""
    arena = arena_result()
    vote = engine.record_vote(arena, "B", shown=SHOWN, generation={"temperature": 0.0, "base_model": "other-base"})
    dpo, zero, lora = vote["answers"]
    assert zero["base_model"] == "other-base" and vote["generation"]["base_model"] == "other-base"
    assert (dpo["base_model"], lora["base_model"]) == ("tiny-base", default_base_model())
    named = engine.record_vote(arena, "B", shown=SHOWN, base_model="named-base", generation={"base_model": None})
    assert named["answers"][1]["base_model"] == "named-base"
    unnamed = engine.record_vote(arena, "B", shown=SHOWN, generation={"base_model": None})
    assert unnamed["answers"][1]["base_model"] == default_base_model() != "other-base"
    assert [vote["answers"][1]["base_model"] for vote in engine.list_votes()] == [
        "other-base", "named-base", default_base_model()]
    with pytest.raises(ConfigError, match="^base_model: expected a model name, got int"):
        engine.record_vote(arena, "B", shown=SHOWN, generation={"base_model": 3})


def test_the_vote_api_records_the_base_model_the_arena_call_named(engine):
    """The app's /vote endpoint (an API caller votes on an /arena result it asked with a base model): the model goes
    into the vote; left out, the default base model."""
    import gradio as gr

    from ui.arena import create_arena_tab

    with gr.Blocks() as blocks:
        create_arena_tab(engine)
    vote_api = next(fn.fn for fn in blocks.fns.values() if fn.api_name == "vote")
    arena = arena_result()
    named = vote_api(arena, "B", SHOWN, "", True, " api-base ")
    plain = vote_api(arena, "B", SHOWN)
    assert named["answers"][1]["base_model"] == "api-base" and named["answers"][0]["base_model"] == "tiny-base"
    assert plain["answers"][1]["base_model"] == default_base_model() != "api-base"
    assert [vote["id"] for vote in engine.list_votes()] == [named["id"], plain["id"]]
    with pytest.raises(gr.Error, match="winner: 'rag' is not a shown variant"):
        vote_api(arena, "rag", SHOWN, base_model="api-base")


# ---- the file under concurrency ------------------------------------------------------------------------------------


def test_twenty_threads_voting_at_once_lose_no_line(engine, caplog):
    arena = arena_result()
    errors: list[BaseException] = []
    start = threading.Barrier(21)
    seen: list[int] = []

    def reader() -> None:  # reads while the votes go in: never half a line
        start.wait()
        while len(seen) < 2 or seen[-1] < 100:
            seen.append(len(engine.list_votes()))

    def voter(number: int) -> None:
        try:
            start.wait()
            for _ in range(5):
                engine.record_vote(arena, SHOWN[number % 3], shown=SHOWN, input_text=f"voter {number}")
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=voter, args=(number,)) for number in range(20)]
    threads.append(threading.Thread(target=reader, daemon=True))
    with caplog.at_level(logging.WARNING, logger="core.arena.feedback"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert not errors and not caplog.records
    assert seen == sorted(seen) and seen[-1] == 100
    lines = engine.votes_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 100
    votes = [json.loads(line) for line in lines]  # every line whole
    assert len({vote["id"] for vote in votes}) == 100
    assert sorted(vote["input"] for vote in votes) == sorted(f"voter {n}" for n in range(20) for _ in range(5))
    assert len(engine.list_votes()) == 100


def _append_from_a_process(path: str, number: int) -> None:
    big = "x" * 20_000  # lines far over PIPE_BUF: whole only because of the lock and the single write
    for count in range(25):
        append_vote(path, {"id": f"v-{number}-{count}", "query": "q", "answers": [
            {"label": "A", "variant": "zero_shot", "answer": big}], "winner": "A"}, threading.Lock())


def test_processes_appending_at_once_keep_every_line_whole(tmp_path):
    path = tmp_path / "votes.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_from_a_process, args=(str(path), n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    votes = read_votes(path)
    assert len(votes) == 100 and len(path.read_text().splitlines()) == 100
    assert {vote["id"] for vote in votes} == {f"v-{n}-{c}" for n in range(4) for c in range(25)}


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_vote_starts_a_line(engine, caplog):
    arena = arena_result()
    first = engine.record_vote(arena, "A", shown=SHOWN)
    with open(engine.votes_path, "ab") as handle:  # a writer killed mid-line
        handle.write(b'{"id": "v-torn", "query": "How much wa')
    with caplog.at_level(logging.WARNING, logger="core.arena.feedback"):
        assert engine.list_votes() == [first]
    assert "votes.jsonl line 2: skipped a torn last line" in caplog.text
    second = engine.record_vote(arena, "tie", shown=SHOWN)
    lines = engine.votes_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[1].startswith('{"id": "v-torn"') and json.loads(lines[2]) == second
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="core.arena.feedback"):
        assert [vote["id"] for vote in engine.list_votes()] == [first["id"], second["id"]]
    assert "line 2: skipped (not valid JSON)" in caplog.text


def test_lines_that_are_no_votes_are_skipped(tmp_path, caplog):
    path = tmp_path / "votes.jsonl"
    good = {"id": "v-1", "query": "q", "answers": [{"label": "A", "variant": "rag", "answer": "x"}], "winner": "A"}
    path.write_text("\n".join(json.dumps(row) for row in (
        [1, 2], {**good, "winner": "Z"}, {**good, "answers": []}, good)) + "\n\n")
    with caplog.at_level(logging.WARNING):
        assert read_votes(path) == [good]
    assert "line 2: skipped (winner 'Z'" in caplog.text and "line 3: skipped (no answers)" in caplog.text
    assert read_votes(tmp_path / "none.jsonl") == []


def test_each_visitor_votes_in_their_own_workspace(engine, tmp_path):
    one = engine.scoped(tmp_path / "visitor-1", owner="one")
    two = engine.scoped(tmp_path / "visitor-2", owner="two")
    arena = arena_result()
    vote = one.record_vote(arena, "zero_shot", shown=["zero_shot", f"finetuned@{LORA}"])
    assert one.list_votes() == [vote] and two.list_votes() == [] and engine.list_votes() == []
    assert one.votes_path == tmp_path / "visitor-1" / "feedback" / "votes.jsonl"
    assert one._votes_lock() is two._votes_lock() is engine._votes_lock()  # one lock in the process


# ---- preference pairs ----------------------------------------------------------------------------------------------


def test_pairs_are_the_winner_against_each_different_non_empty_answer():
    answers = [{"label": "A", "variant": "zero_shot", "answer": "Paris."},
               {"label": "B", "variant": "rag", "answer": "Lyon."},
               {"label": "C", "variant": "few_shot", "answer": " Paris. "},  # the winner's text again
               {"label": "D", "variant": "finetuned", "answer": ""}]
    votes = [{"id": "v-1", "query": "Capital?", "input": "of France", "task": "qa", "answers": answers,
              "winner": "A"},
             {"id": "v-2", "query": "Capital?", "input": "", "task": None, "answers": answers, "winner": "B"},
             {"id": "v-3", "query": "Capital?", "answers": answers, "winner": "tie"},
             {"id": "v-4", "query": "Capital?", "answers": answers, "winner": "all_bad"},
             {"id": "v-5", "query": "Capital?", "answers": answers, "winner": "D"}]  # an empty answer chosen
    pairs, skipped = preference_pairs(votes)
    assert skipped == 3
    assert [(p["vote_id"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("v-1", "Paris.", "Lyon."), ("v-2", "Lyon.", "Paris."), ("v-2", "Lyon.", "Paris.")]
    assert pairs[0]["prompt"] == "Capital?\n\nof France" and pairs[1]["prompt"] == "Capital?"
    assert pairs[0]["source"] == "vote" and (pairs[0]["task"], pairs[1]["task"]) == ("qa", None)
    assert (pairs[0]["chosen_variant"], pairs[0]["rejected_variant"]) == ("zero_shot", "rag")


def test_export_writes_the_pairs_atomically_to_the_workspace(engine):
    arena = arena_result()
    engine.record_vote(arena, f"finetuned@{LORA}", shown=SHOWN, input_text="Orbit 3")
    engine.record_vote(arena, "tie", shown=SHOWN)
    result = engine.export_preferences()
    path = engine.workspace.feedback / "preferences.jsonl"
    assert result == {"path": str(path), "pairs": 2, "votes": 2, "skipped_votes": 1}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(row["chosen"], row["rejected"]) for row in rows] == [(ANSWERS["lora"], ANSWERS["dpo"]),
                                                                  (ANSWERS["lora"], ANSWERS[None])]
    assert rows[0]["prompt"] == "How much water does the tank hold?\n\nOrbit 3"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_the_leaderboard_of_no_votes_is_empty_and_of_votes_rates_them(engine):
    assert engine.leaderboard()["items"] == [] and engine.leaderboard()["votes"] == 0
    with pytest.raises(ConfigError, match="by: must be one of"):
        engine.leaderboard(by="runs")
    arena = arena_result()
    for _ in range(3):
        engine.record_vote(arena, "zero_shot", shown=SHOWN)
    board = engine.leaderboard(by="method", samples=100)
    assert [item["name"] for item in board["items"]][0] == "prompting (zero_shot)"
    assert board["items"][0]["low"] > board["items"][-1]["high"]


def test_export_refuses_no_votes_only_ties_and_a_file_that_is_not_jsonl(engine, tmp_path):
    with pytest.raises(ConfigError, match="votes: none yet"):
        engine.export_preferences()
    engine.record_vote(arena_result(), "all_bad", shown=SHOWN)
    with pytest.raises(ConfigError, match="none of the 1 votes gives a preference pair"):
        engine.export_preferences()
    with pytest.raises(ConfigError, match="must be a .jsonl file"):
        engine.export_preferences(tmp_path / "prefs.csv")
    assert not (engine.workspace.feedback / "preferences.jsonl").exists()


def test_a_confined_engine_exports_only_into_its_feedback_folder(engine, tmp_path):
    engine.record_vote(arena_result(), "zero_shot", shown=SHOWN)
    confined = Engine(engine.workspace.root, confined=True)
    assert confined.export_preferences("mine.jsonl")["path"] == str(engine.workspace.feedback / "mine.jsonl")
    with pytest.raises(NameRuleError):
        confined.export_preferences(str(tmp_path / "elsewhere.jsonl"))
    assert not (tmp_path / "elsewhere.jsonl").exists()


# ---- the CLI -------------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_engine(engine, monkeypatch) -> Engine:
    """The CLI's Engine opens this workspace."""
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(engine.workspace.root))
    return engine


def _one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err


def test_cli_without_votes_is_one_line_and_exit_2(cli_engine, capsys):
    _one_line_exit_2(capsys, ["feedback", "export", "--json"], "votes: none yet")
    _one_line_exit_2(capsys, ["leaderboard", "--json"], "votes: none yet")
    _one_line_exit_2(capsys, ["leaderboard", "--by", "runs"], "invalid choice")
    _one_line_exit_2(capsys, ["leaderboard", "--samples", "-1"], "samples: must be an integer from 0")
    _one_line_exit_2(capsys, ["feedback", "import"], "invalid choice")


def test_cli_feedback_export_json(cli_engine, tmp_path, capsys):
    cli_engine.record_vote(arena_result(), "zero_shot", shown=SHOWN)
    out = tmp_path / "prefs" / "votes-prefs.jsonl"
    assert main(["feedback", "export", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert json.loads(printed) == {"path": str(out), "pairs": 2, "votes": 1, "skipped_votes": 0}
    assert len(out.read_text().splitlines()) == 2
    assert main(["feedback", "export"]) == 0
    assert "2 preference pairs from 1 votes" in capsys.readouterr().out


def test_cli_leaderboard_json_and_table(cli_engine, capsys):
    for task in ("qa", "summarization"):
        arena = arena_result(task=task)
        for _ in range(3):
            cli_engine.record_vote(arena, f"finetuned@{LORA}", shown=SHOWN)
        cli_engine.record_vote(arena, "tie", shown=SHOWN)
    assert main(["leaderboard", "--json", "--samples", "200"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert {"by", "votes", "items", "by_task", "agreement"} <= set(board)
    assert (board["by"], board["votes"], board["ties"]) == ("variant", 8, 2)
    best = board["items"][0]
    assert best["name"] == f"finetuned@{LORA}" and (best["votes"], best["wins"]) == (8, 6)
    assert best["low"] <= best["rating"] <= best["high"]
    assert set(best["by_task"]) == set(board["by_task"]) == {"qa", "summarization"}
    assert board["agreement"]["rougeL"] == {"agree": 6, "n": 6, "share": 1.0, "no_pick": 0}
    assert board["agreement"]["bleu"]["n"] == 0 and board["agreement"]["bleu"]["no_pick"] == 6
    assert main(["leaderboard", "--by", "method", "--json"]) == 0
    names = [item["name"] for item in json.loads(capsys.readouterr().out)["items"]]
    assert names[0] == "lora" and set(names) == {"lora", "lora (dpo)", "prompting (zero_shot)"}
    assert main(["leaderboard"]) == 0
    table = capsys.readouterr().out
    assert "leaderboard by variant: 8 votes (2 ties, 0 all bad)" in table
    assert f" 1  finetuned@{LORA}" in table and "task summarization (4 votes)" in table
    assert "rougeL" in table and "100%" in table


def test_the_new_commands_are_in_the_readme_cli_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "| `feedback export [--out PATH]`" in readme and "| `leaderboard [--by variant\\|method]" in readme


def test_the_app_names_runs_by_folder_and_the_vote_still_knows_their_method(tmp_path):
    """The app's run pickers give run folders: a confined engine (a visitor's too) reads the method from them."""
    engine = Engine(tmp_path / "ws", confined=True)
    folder = engine.install_demo_run()
    arena = {"query": "Tank size?", "reference": None, "task": "qa",
             "results": [{"variant": "zero_shot", "strategy": "zero_shot", "adapter": None, "available": True,
                          "answer": "Five.", "prompt": "p", "metrics": {}},
                         {"variant": "finetuned", "strategy": "finetuned", "adapter": str(folder), "available": True,
                          "answer": "5.5 litres.", "prompt": "q", "metrics": {}}]}
    vote = engine.record_vote(arena, "finetuned", shown=["zero_shot", "finetuned"])
    tuned = next(answer for answer in vote["answers"] if answer["variant"] == "finetuned")
    assert (tuned["run_id"], tuned["method"], tuned["objective"]) == ("demo-quick-lora", "lora", "sft")
