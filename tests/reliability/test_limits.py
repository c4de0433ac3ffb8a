"""Limits: every size a user controls is bounded, and going over it gives one clear line, never a crash.

Covered: running out of memory in training (the run and the job fail with the settings to lower, and the memory is
given back), max_new_tokens (config, CLI, the app), the model's context window (queries, few-shot and RAG prompts,
max_new_tokens that leave no room), upload size (the store and the app's upload route), documents and chunks per
index, rows per evaluation, and the size of a training dataset.
"""

from __future__ import annotations

import html
import json
import weakref
from pathlib import Path

import pytest
import torch
from app_helpers import free_port

from core.engine import Engine
from core.training import TrainingConfig

ROWS = [{"instruction": f"What colour is tank part {i}?", "output": f"Part {i} is green."} for i in range(12)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


# ---- out of memory during training ---------------------------------------------------------------------------------

BALLAST = 64 * 2**20  # float32 elements: 256 MiB that every instance holds, so RSS shows whether it was freed
LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()
CREATED: list[int] = []  # id of every instance built (RSS sampling can miss a short-lived peak)


def _oom_model_classes():
    """A tiny Llama whose training forward needs (batch x seq x seq x 2**34) floats of scratch, as attention-like
    activations do at scale: the real CPU allocator refuses it (RuntimeError "can't allocate memory")."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    class OomLlamaConfig(LlamaConfig):
        model_type = "tiny-oom-llama"

    class OomLlama(LlamaForCausalLM):
        config_class = OomLlamaConfig

        def __init__(self, config):
            super().__init__(config)
            self.ballast = torch.ones(BALLAST, device="cpu")  # (BALLAST,) real pages, not a parameter
            LIVE_MODELS.add(self)
            CREATED.append(id(self))

        def forward(self, input_ids=None, **kwargs):
            if self.training and input_ids is not None:
                batch, seq = input_ids.shape
                torch.empty(batch * seq * seq * 2**34)  # the allocation that does not fit
            return super().forward(input_ids=input_ids, **kwargs)

    try:
        AutoConfig.register(OomLlamaConfig.model_type, OomLlamaConfig)
        AutoModelForCausalLM.register(OomLlamaConfig, OomLlama)
    except ValueError:  # registered by an earlier test of this session
        pass
    return OomLlamaConfig, OomLlama


@pytest.fixture(scope="module")
def oom_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    import importlib

    try:  # imported here, not lazily inside the first training: its import logs a warning whose record (kept by
        importlib.import_module("bitsandbytes")  # pytest's log capture) holds an exception with the caller frames
    except ImportError:
        pass
    config_class, model_class = _oom_model_classes()
    folder = tmp_path_factory.mktemp("oom-llama")
    torch.manual_seed(0)
    config = config_class(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1)
    model = model_class(config)
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    del model
    return folder


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_out_of_memory_fails_the_run_and_the_job_with_advice_and_frees_the_model(tmp_path, oom_model_dir):
    import gc

    engine = Engine(tmp_path / "ws")
    config = TrainingConfig(data=write_jsonl(tmp_path / "train.jsonl", ROWS), base_model=str(oom_model_dir),
                            method="lora", max_steps=4, batch_size=4, max_length=64, device="cpu", dtype="fp32")
    gc.collect()
    baseline = _rss()
    built = len(CREATED)
    state = engine.jobs.start(config)
    state = engine.jobs.wait(60)

    assert state.state == "failed"
    assert state.error.startswith("out of memory in training step 1 (can't allocate memory")
    for setting in ("lower batch_size (now 4; raise grad_accum", "lower max_length (now 64)",
                    "turn on gradient_checkpointing"):
        assert setting in state.error
    status = json.loads((Path(state.run_dir) / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == state.error and status["reason"] == "out_of_memory"
    assert status["step"] == 0
    # the memory is back: no instance of the model is alive (without a gc.collect() here), RSS near the baseline
    assert len(LIVE_MODELS) == 0
    assert len(CREATED) > built  # the model (and its ballast) was really built while the job ran
    assert _rss() - baseline < 0.5 * BALLAST * 4, (baseline, _rss())

    # the next job is not blocked by the failed one, and the advice is tailored to its settings
    retry = TrainingConfig(**{**config.to_dict(), "batch_size": 1, "gradient_checkpointing": True})
    engine.jobs.start(retry)
    again = engine.jobs.wait(60)
    assert again.state == "failed" and "batch_size" not in again.error and "gradient_checkpointing" not in again.error
    assert again.error.endswith("lower max_length (now 64)")
    assert len(LIVE_MODELS) == 0


def test_out_of_memory_on_the_command_line_is_one_line_and_exit_2(tmp_path, oom_model_dir, capsys):
    from core.cli import main

    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    code = main(["train", "--data", data, "--model", str(oom_model_dir), "--method", "lora", "--max-steps", "2",
                 "--batch-size", "2", "--max-length", "48", "--device", "cpu", "--dtype", "fp32", "--json",
                 "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: out of memory in training step 1") and "lower batch_size (now 2" in last
    assert "Traceback" not in captured.err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


# ---- max_new_tokens ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -5, 2049, 100_000, True, "64", 64.0])
def test_max_new_tokens_outside_1_to_2048_is_refused_naming_the_field(value):
    from core.inference import GenerationConfig

    with pytest.raises(ValueError, match=r"^max_new_tokens: must be (between 1 and 2048|an integer)"):
        GenerationConfig(max_new_tokens=value)
    assert GenerationConfig(max_new_tokens=1).max_new_tokens == 1
    assert GenerationConfig(max_new_tokens=2048).max_new_tokens == 2048


@pytest.mark.parametrize("command", ["arena", "eval"])
def test_max_new_tokens_on_the_command_line_is_exit_2_before_any_model_loads(command, tmp_path, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    extra = ["--query", "Tank size?"] if command == "arena" else []
    assert main([command, *extra, "--max-new-tokens", "5000", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "error: max_new_tokens: must be between 1 and 2048, got 5000"
    assert not (tmp_path / "ws").exists()  # refused before an engine (or a model) was made


# ---- the app: the same bounds through its API -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    """The app's Blocks served in this process with app.py's queue and launch settings; no model is loaded."""
    from app import QUEUE_SIZE, build_app, launch_options

    engine = Engine(tmp_path_factory.mktemp("app-ws"))
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=2, max_size=QUEUE_SIZE)
    # _frontend=False: no HEAD request to itself with a 3 s timeout, which a loaded machine can miss
    demo.launch(**{**launch_options(engine), "server_port": free_port(), "prevent_thread_lock": True,
                   "quiet": True, "_frontend": False})
    yield demo.local_url, engine, demo
    demo.close()


def test_the_app_bounds_max_new_tokens_and_uploads(small_app, tmp_path):
    from gradio_client import Client, handle_file

    from core.engine.uploads import MAX_UPLOAD_BYTES

    url, engine, demo = small_app
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    arena = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "on_run" and "arena" in str(
        fn.concurrency_id)]
    assert len(arena) == 2 and {(fn.concurrency_id, fn.concurrency_limit) for fn in arena} == {("arena", 2)}
    for tokens, needle in ((5000, "512"), (0, "8")):  # the Arena's slider spans 8..512
        with pytest.raises(Exception, match=needle):
            client.predict("Tank size?", "", "", "", ["zero_shot"], [], "demo", 0, 1, tokens, 0.0, api_name="/arena")
    assert engine.models.loaded() == []  # refused before any model was needed

    small = tmp_path / "ok.jsonl"
    write_jsonl(small, ROWS)
    stored = client.predict(handle_file(str(small)), api_name="/train_upload")[0]["value"]
    assert Path(stored).read_bytes() == small.read_bytes()
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(Exception, match=r"(?i)(file size|too large|exceed)"):
        client.predict(handle_file(str(big)), api_name="/train_upload")
    assert sorted(path.name for path in (engine.workspace.uploads / "datasets").iterdir()) == ["ok.jsonl"]


def test_store_upload_refuses_a_file_over_the_limit(tmp_path):
    from core.engine.uploads import MAX_UPLOAD_BYTES, UploadError, store_upload

    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(MAX_UPLOAD_BYTES + 1)
    with pytest.raises(UploadError, match=r"^big.jsonl: 50000001 bytes, over the 50000000-byte limit for an upload$"):
        store_upload(tmp_path / "uploads", big, "datasets")
    assert list((tmp_path / "uploads").rglob("*.jsonl")) == []


# ---- the model's context window --------------------------------------------------------------------------------

WINDOW = 256  # the tiny test model's max_position_embeddings
ANSWER = 16
SHORT_DOCS = {  # three short passages on one topic: all three do not fit the tiny window together
    "pump.md": "# Pump\nThe pump of the Orbit 3 garden moves water from the tank to the pods every hour.",
    "tank.md": "# Tank\nThe tank of the Orbit 3 garden holds 5.5 litres; the pump draws water from it.",
    "lights.md": "# Lights\nThe lights of the Orbit 3 garden are full-spectrum LEDs above the pump and the tank.",
}


@pytest.fixture(scope="module")
def window_engine(tmp_path_factory, tiny_model_dir):
    """An engine over the tiny model (256-token window) with two indexes, short passages and long ones, embedded by
    the bundled all-MiniLM-L6-v2."""
    root = tmp_path_factory.mktemp("window")
    engine = Engine(root / "ws")
    short = root / "short"
    short.mkdir()
    for name, text in SHORT_DOCS.items():
        (short / name).write_text(text, encoding="utf-8")
    long = root / "long"
    long.mkdir()
    for name, text in SHORT_DOCS.items():
        (long / name).write_text(text + " It is made of recycled plastic and glass." * 12, encoding="utf-8")
    engine.build_index([str(short)], "short")
    engine.build_index([str(long)], "long")
    pool = write_jsonl(root / "pool.jsonl", [{"instruction": f"What does part {i} of the Orbit 3 garden do?",
                                              "output": f"Part {i} moves water from the tank to the pods."}
                                             for i in range(6)])
    return engine, str(tiny_model_dir), pool


@pytest.mark.integration  # the bundled all-MiniLM-L6-v2 embeds the indexes
def test_a_prompt_over_the_window_is_a_clear_reason_per_variant_never_a_crash(window_engine):
    from core.arena import ArenaConfig
    from core.inference import GenerationConfig

    engine, model, pool = window_engine
    config = ArenaConfig(variants=["zero_shot", "few_shot", "rag"], index="short", few_shot_pool=pool,
                         generation=GenerationConfig(max_new_tokens=ANSWER))
    query = "How does the pump of the Orbit 3 garden work? " * 40
    result = engine.arena(query, config, model=model)
    assert [row.available for row in result.results] == [False, False, False]
    for row in result.results:
        assert not row.answer and row.new_tokens == 0
        assert f"over the {WINDOW - ANSWER}" in row.error and "lower max_new_tokens" in row.error, row.error
        assert "shorten" in row.error
    assert result.results[0].error.startswith("the prompt is ")
    assert f"the model's {WINDOW}-token context window with {ANSWER} tokens for the answer" in result.results[0].error


@pytest.mark.integration  # the bundled all-MiniLM-L6-v2 embeds the indexes
def test_retrieved_passages_and_shots_are_cut_to_fit_with_a_note(window_engine):
    from core.arena import ArenaConfig
    from core.inference import GenerationConfig

    engine, model, pool = window_engine
    config = ArenaConfig(variants=["zero_shot", "few_shot", "rag"], index="short", rag_k=3, few_shot_pool=pool,
                         few_shot_k=6, few_shot_selection="similar", generation=GenerationConfig(max_new_tokens=ANSWER))
    result = engine.arena("What does the pump do?", config, model=model)
    zero, few, rag = result.results
    assert all(row.available for row in result.results), [row.error for row in result.results]
    for row in result.results:
        assert row.prompt_tokens <= WINDOW - ANSWER and row.new_tokens <= ANSWER
        assert row.prompt_tokens + row.new_tokens <= WINDOW
    assert zero.notes == []
    # RAG: the best-ranked passages kept, the rest left out, and the card says so
    ranking = [hit.chunk.source for hit in engine.knowledge_base("short").search("What does the pump do?", 3)]
    assert 1 <= len(rag.retrieved) < 3
    assert [passage["source"] for passage in rag.retrieved] == ranking[: len(rag.retrieved)]
    assert rag.notes == [f"{3 - len(rag.retrieved)} of 3 retrieved passages left out to fit the model's {WINDOW}-token "
                         f"context window with {ANSWER} tokens for the answer"]
    from ui.arena import render_cards

    assert f"<p class='ta-why'>{html.escape(rag.notes[0])}</p>" in render_cards([r.to_dict() for r in result.results])
    # few-shot: the least similar examples go first
    assert 1 <= len(few.shots) < 6 and len(few.notes) == 1
    assert few.notes[0].startswith(f"{6 - len(few.shots)} of 6 worked examples left out")
    assert few.prompt.count("moves water from the tank") == len(few.shots)

    # passages that cannot fit at all: the RAG variant says so instead of answering without them
    result = engine.arena("What does the pump do?", ArenaConfig(**{**config.to_dict(), "index": "long",
                                                                  "variants": ["rag"]}), model=model)
    (rag,) = result.results
    assert not rag.available and rag.error == (
        f"none of the 3 retrieved passages fits the model's {WINDOW}-token context window with {ANSWER} tokens for "
        "the answer; lower max_new_tokens or index with a smaller chunk size")


@pytest.mark.integration  # the bundled all-MiniLM-L6-v2 embeds the indexes
def test_max_new_tokens_that_leave_no_room_for_a_prompt_are_refused(window_engine):
    from core.arena import ArenaConfig
    from core.inference import GenerationConfig

    engine, model, _ = window_engine
    config = ArenaConfig(variants=["zero_shot"], generation=GenerationConfig(max_new_tokens=WINDOW))
    with pytest.raises(ValueError, match=rf"^max_new_tokens: {WINDOW} leaves no room for a prompt in the model's "
                                         rf"{WINDOW}-token context window; use less than {WINDOW}$"):
        engine.arena("Tank?", config, model=model)


# ---- documents and chunks per index --------------------------------------------------------------------------------


def _no_model():
    raise AssertionError("the embedding model was loaded for an index that is over the limit")


def test_documents_per_index_are_bounded_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from core.cli import main
    from retrieval import IndexLimitError, build_index

    rows = tmp_path / "faq.jsonl"
    write_jsonl(rows, [{"title": f"Q{i}", "text": f"Answer number {i} about the tank."} for i in range(5)])
    with pytest.raises(IndexLimitError, match=r"^5 documents \(a .jsonl/.csv row is one\) are over the 4 one index "
                                              r"takes; index fewer files or rows, or raise TUNE_ARENA_MAX_DOCUMENTS$"):
        build_index([str(rows)], tmp_path / "index", _no_model, max_documents=4)
    assert not (tmp_path / "index").exists()

    monkeypatch.setenv("TUNE_ARENA_MAX_DOCUMENTS", "3")  # the same limit from the environment, through the CLI
    assert main(["index", "--docs", str(rows), "--out", str(tmp_path / "index"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines()[-1].startswith("error: 5 documents")
    monkeypatch.setenv("TUNE_ARENA_MAX_DOCUMENTS", "lots")
    with pytest.raises(ValueError, match="TUNE_ARENA_MAX_DOCUMENTS: must be a positive integer, got 'lots'"):
        build_index([str(rows)], tmp_path / "index", _no_model)


@pytest.mark.integration
def test_chunks_per_index_are_bounded_and_the_existing_index_is_kept(tmp_path, monkeypatch):
    from retrieval import IndexLimitError, build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in SHORT_DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    embedder = Engine(tmp_path / "ws").embedder()  # the bundled MiniLM, resolved by the engine
    first = build_index([str(docs)], tmp_path / "index", embedder)
    assert first.chunks == 3
    before = {name: (tmp_path / "index" / name).read_bytes() for name in ("manifest.json", "chunks.jsonl")}
    (docs / "more.md").write_text("# More\n" + "The garden has a tank, a pump and lights. " * 120, encoding="utf-8")
    monkeypatch.setenv("TUNE_ARENA_MAX_CHUNKS", "4")
    with pytest.raises(IndexLimitError, match=r"^the documents make \d+ chunks at chunk_size 200, over the 4 one "
                                              r"index takes; index fewer documents, use a larger chunk_size or raise "
                                              r"TUNE_ARENA_MAX_CHUNKS$"):
        build_index([str(docs)], tmp_path / "index", embedder)
    after = {name: (tmp_path / "index" / name).read_bytes() for name in ("manifest.json", "chunks.jsonl")}
    assert after == before  # the index in place is untouched
    monkeypatch.delenv("TUNE_ARENA_MAX_CHUNKS")
    assert build_index([str(docs)], tmp_path / "index", embedder).chunks > 4


# ---- rows per evaluation, size of a training dataset ------------------------------------------------------------


def test_evaluation_rows_are_bounded_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from core.cli import main
    from core.data import demo_path

    monkeypatch.setenv("TUNE_ARENA_MAX_EVAL_ROWS", "10")
    engine = Engine(tmp_path / "ws")
    test_set = str(demo_path("test.jsonl"))  # 100 rows
    with pytest.raises(ValueError, match=r"^data: test.jsonl has 100 examples to evaluate, over the 10 one "
                                         r"evaluation takes; evaluate the first N \(limit, --limit\) or raise "
                                         r"TUNE_ARENA_MAX_EVAL_ROWS$"):
        engine.evaluate(test_set)
    with pytest.raises(ValueError, match="has 11 examples to evaluate, over the 10"):
        engine.evaluate(test_set, limit=11)
    assert engine.models.loaded() == [] and list(engine.workspace.evals.iterdir()) == []

    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "cli-ws"))
    assert main(["eval", "--data", test_set, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().startswith("error: data: test.jsonl has 100 examples")


def test_a_training_dataset_over_the_size_limit_fails_the_job_before_a_run_exists(tmp_path, tiny_model_dir):
    from core.limits import MAX_FILE_BYTES

    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    engine = Engine(tmp_path / "ws")
    engine.jobs.start(TrainingConfig(data=str(big), base_model=str(tiny_model_dir), max_steps=1, device="cpu",
                                     dtype="fp32"))
    state = engine.jobs.wait(120)
    assert state.state == "failed"
    assert state.error == "big.jsonl: file is 50000001 bytes, over the 50000000-byte limit"
    assert list(engine.workspace.runs.iterdir()) == []  # refused before a run folder was made
