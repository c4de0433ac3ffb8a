"""Untrusted artifacts: adapters and indexes load only from safetensors, FAISS and JSON, and a broken folder gives one
line naming the file, through the engine, the UI handlers and the CLI (exit 2, no traceback).

The runs are trained here on the tiny Llama (one step each, about a second); the indexes use the fake embedder. A
pickle planted where a loader might read it writes a marker file when unpickled: the marker must never appear.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from retrieval_helpers import FakeEmbedder, words, write
from training_helpers import ROWS, SMALL_METHOD_CONFIG, tiny_config, write_rows

from core.cli import main
from core.engine import Engine
from core.inference import AdapterError, GenerationConfig
from core.methods.artifacts import check_run_weights
from retrieval import IndexConfig, IndexFolderError, KnowledgeBase, build_index

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "retrieval").rglob("*.py")),
           *sorted((ROOT / "ui").rglob("*.py")), ROOT / "app.py"]


class Planted:
    """Unpickling this creates the file ``marker`` (open(marker, "w")): proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def planted(marker: Path) -> bytes:
    return pickle.dumps({"weight": Planted(marker)})


# ---- no unpickling loader anywhere in the product -------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


def unsafe_loads(source: str) -> list[str]:
    """Deserialisers that can run code: pickle-family imports, torch.load without weights_only=True, numpy loads
    with allow_pickle=True, pandas.read_pickle, yaml.load without a safe loader, trust_remote_code=True,
    use_safetensors=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in UNSAFE_MODULES:
                found.append(f"from {node.module} import ...")
            if root in ("torch", "numpy", "yaml", "pandas") and any(a.name in ("load", "read_pickle")
                                                                      for a in node.names):
                found.append(f"from {node.module} import load")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if owner == "torch" and name == "load" and _keyword(node, "weights_only") is not True:
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            if name in ("load", "loadtxt") and owner in ("np", "numpy") and _keyword(node, "allow_pickle") is not None \
                    and _keyword(node, "allow_pickle") is not False:
                found.append(f"line {node.lineno}: {owner}.load with allow_pickle")
            if name == "read_pickle":
                found.append(f"line {node.lineno}: read_pickle")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load") and _keyword(node, "Loader") is None:
                found.append(f"line {node.lineno}: yaml.{name}")
            if _keyword(node, "trust_remote_code") not in (None, False):
                found.append(f"line {node.lineno}: trust_remote_code")
            if _keyword(node, "use_safetensors") is False:
                found.append(f"line {node.lineno}: use_safetensors=False")
    return found


@pytest.mark.parametrize("snippet", [
    "import pickle", "from joblib import load", "import dill as d", "torch.load(path)",
    "torch.load(path, weights_only=False)", "np.load(path, allow_pickle=True)", "from torch import load",
    "pd.read_pickle(path)", "yaml.load(text)", "AutoModel.from_pretrained(p, trust_remote_code=True)",
    "AutoModel.from_pretrained(p, use_safetensors=False)", "import marshal",
])
def test_the_scanner_finds_each_unsafe_loader(snippet):
    assert unsafe_loads(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "torch.load(path, weights_only=True)", "np.load(path)", "np.load(path, allow_pickle=False)", "json.load(f)",
    "faiss.read_index(p)", "safe_open(p, 'pt')", "yaml.load(text, Loader=yaml.SafeLoader)",
])
def test_the_scanner_passes_safe_loaders(snippet):
    assert unsafe_loads(snippet) == [], snippet


def test_the_product_code_loads_nothing_by_unpickling():
    assert len(SOURCES) > 20
    found = {str(path.relative_to(ROOT)): unsafe_loads(path.read_text(encoding="utf-8")) for path in SOURCES}
    assert {path: hits for path, hits in found.items() if hits} == {}


# ---- trained runs and their broken copies ---------------------------------------------------------------------------

METHODS = ("lora", "ia3", "freeze", "full")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """One completed run per save format (PEFT mixable, PEFT separate, layer-wise, full), one step each."""
    from core import training

    root = tmp_path_factory.mktemp("trained")
    data = write_rows(root / "train.jsonl", ROWS)
    runs = {}
    for method in METHODS:
        config = tiny_config(data, tiny_model_dir, method=method, max_steps=1,
                             method_config=SMALL_METHOD_CONFIG.get(method, {}))
        runs[method] = Path(training.train(config, runs_root=root / "runs").run_dir)
    return runs


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, tiny_tokenizer) -> Path:
    """Another tiny Llama (hidden size 48 instead of 32): adapters trained on it do not fit the first."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("other-llama")
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def cut(path: Path, keep: int | Callable[[int], int]) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data)) if callable(keep) else keep])


def edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def lie_about_a_shape(path: Path) -> None:
    """Grow the first tensor's shape in the header (offsets unchanged): the header no longer adds up."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"][-1] += 1
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def set_method(run: Path, method: str) -> None:
    edit_json(run / "config.json", method=method)


ADAPTER = "adapter/adapter_model.safetensors"
# (case, methods it applies to, change to the run folder, what the one line says)
CASES: list[tuple[str, tuple[str, ...], Callable[[Path], None], str]] = [
    ("truncated-half", ("lora", "ia3"), lambda r: cut(r / ADAPTER, lambda n: n // 2), "truncated"),
    ("truncated-5-bytes", ("lora", "ia3"), lambda r: cut(r / ADAPTER, 5), "truncated: 5 bytes"),
    ("empty", ("lora", "ia3"), lambda r: cut(r / ADAPTER, 0), "truncated: 0 bytes"),
    ("last-byte-missing", ("lora", "ia3"), lambda r: cut(r / ADAPTER, lambda n: n - 1),
     "truncated: the header describes"),
    ("bytes-appended", ("lora",), lambda r: (r / ADAPTER).write_bytes((r / ADAPTER).read_bytes() + b"\0" * 16),
     "16 bytes after the last tensor"),
    ("garbage", ("lora",), lambda r: (r / ADAPTER).write_bytes(b"\xff" * 4096), "not a safetensors file"),
    ("header-lies", ("lora", "ia3"), lambda r: lie_about_a_shape(r / ADAPTER), "bytes for shape"),
    ("adapter-config-garbage", ("lora", "ia3"), lambda r: write(r / "adapter/adapter_config.json", "{not json"),
     "adapter_config.json: not valid JSON"),
    ("adapter-config-list", ("lora",), lambda r: write(r / "adapter/adapter_config.json", "[1, 2]"),
     "adapter_config.json: must hold a JSON object, not list"),
    ("adapter-config-missing", ("lora", "ia3"), lambda r: (r / "adapter/adapter_config.json").unlink(),
     "adapter_config.json: missing"),
    ("peft-type-unknown", ("lora",), lambda r: edit_json(r / "adapter/adapter_config.json", peft_type="NOPE"),
     "peft_type 'NOPE' does not match the run's method lora"),
    ("peft-type-of-another-method", ("ia3",), lambda r: edit_json(r / "adapter/adapter_config.json", peft_type="LORA"),
     "peft_type 'LORA' does not match the run's method ia3"),
    ("weights-missing", ("lora", "ia3"), lambda r: (r / ADAPTER).unlink(), "adapter_model.safetensors: missing"),
    ("adapter-folder-missing", ("lora", "ia3"), lambda r: shutil.rmtree(r / "adapter"), "has no adapter/ folder"),
    ("weights-are-a-link", ("lora",), lambda r: ((r / ADAPTER).rename(r / "elsewhere.safetensors"),
                                                 (r / ADAPTER).symlink_to(r / "elsewhere.safetensors")),
     "not a regular file"),
    ("run-config-garbage", ("lora", "ia3", "freeze", "full"), lambda r: write(r / "config.json", "garbage\x00"),
     "config.json: not valid JSON"),
    ("unknown-method", ("lora",), lambda r: set_method(r, "magic"), "config.json: unknown method 'magic'"),
    ("method-of-another-format", ("lora",), lambda r: set_method(r, "full"), "has no model/ folder"),
    ("model-truncated", ("full",), lambda r: cut(r / "model/model.safetensors", lambda n: n - 100), "truncated"),
    ("model-config-garbage", ("full",), lambda r: write(r / "model/config.json", "{"), "model/config.json: not valid"),
    ("tokenizer-garbage", ("full",), lambda r: write(r / "model/tokenizer.json", "{"), "tokenizer.json: not valid"),
    ("shard-outside", ("full",), lambda r: write(r / "model/model.safetensors.index.json", json.dumps(
        {"weight_map": {"lm_head.weight": "../../elsewhere.safetensors"}})), "names a shard outside the folder"),
    ("layer-weights-truncated", ("freeze",), lambda r: cut(r / "weights/trained.safetensors", 100), "truncated"),
]


def _pickle_instead(run: Path, folder: str, safe: str, pickled: str, marker: Path) -> None:
    (run / folder / safe).unlink()
    (run / folder / pickled).write_bytes(planted(marker))


PICKLE_CASES = [  # (method, folder, safetensors file it replaces, pickle file name)
    ("lora", "adapter", "adapter_model.safetensors", "adapter_model.bin"),
    ("ia3", "adapter", "adapter_model.safetensors", "adapter_model.bin"),
    ("full", "model", "model.safetensors", "pytorch_model.bin"),
    ("freeze", "weights", "trained.safetensors", "trained.pt"),
]


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(tmp_path / "ws", device="cpu", dtype="fp32", confined=True)


def broken_copy(engine: Engine, source: Path, name: str, change: Callable[[Path], None]) -> Path:
    run = engine.workspace.runs / name
    shutil.copytree(source, run)
    change(run)
    return run


def one_line_naming(err: BaseException, *parts: str) -> str:
    message = str(err)
    assert "\n" not in message and message.startswith("adapter: "), message
    for part in parts:
        assert part in message, (part, message)
    return message


@pytest.mark.parametrize(("case", "method"), [(case, method) for case, methods, _, _ in CASES for method in methods])
def test_a_broken_run_folder_is_refused_in_one_line_naming_the_file(trained, engine, case, method):
    _, _, change, needle = next(row for row in CASES if row[0] == case)
    run = broken_copy(engine, trained[method], f"{method}-{case}", change)
    with pytest.raises(AdapterError) as caught:
        engine.checked_run(run.name)
    one_line_naming(caught.value, str(run), needle)
    assert engine.models.loaded() == []


@pytest.mark.parametrize(("method", "folder", "safe", "pickled"), PICKLE_CASES)
def test_a_pickle_in_place_of_weights_is_never_unpickled(trained, engine, tmp_path, method, folder, safe, pickled):
    marker = tmp_path / "unpickled"
    run = broken_copy(engine, trained[method], f"{method}-pickle",
                      lambda r: _pickle_instead(r, folder, safe, pickled, marker))
    with pytest.raises(AdapterError) as caught:
        engine.checked_run(run.name)
    one_line_naming(caught.value, f"{folder}/{pickled}: a pickle file, which is never loaded", safe)
    from core.inference import load_trained_model

    with pytest.raises(AdapterError, match=re.escape(pickled)):
        load_trained_model(run, device="cpu", dtype="fp32")  # the loader the separate adapters go through
    assert not marker.exists()


def test_a_pickle_named_safetensors_is_not_a_safetensors_file(trained, engine, tmp_path):
    marker = tmp_path / "unpickled"
    run = broken_copy(engine, trained["lora"], "lora-pickled", lambda r: (r / ADAPTER).write_bytes(planted(marker)))
    with pytest.raises(AdapterError, match="not a safetensors file"):
        engine.checked_run(run.name)
    assert not marker.exists()


def test_the_shipped_and_the_trained_runs_pass(trained):
    assert check_run_weights(ROOT / "assets" / "demo" / "run-quick-lora").name == "adapter"
    assert [check_run_weights(trained[method]).name for method in METHODS] == ["adapter", "adapter", "weights",
                                                                                 "model"]


def test_broken_adapters_leave_the_host_usable(trained, engine, tiny_model_dir, other_base, tmp_path):
    """Through the engine onto the base model: each refusal is one line, and a good adapter still works after."""
    from core import training

    model = str(tiny_model_dir)
    for method in ("lora", "ia3"):
        for case in ("truncated-half", "adapter-config-garbage", "weights-missing"):
            run = broken_copy(engine, trained[method], f"{method}-{case}", next(r[2] for r in CASES if r[0] == case))
            with pytest.raises(AdapterError) as caught:
                engine.add_adapter(run.name, model=model)
            one_line_naming(caught.value, str(run))
    # a run whose config names another base model
    other = broken_copy(engine, trained["lora"], "lora-other-base",
                        lambda r: edit_json(r / "config.json", base_model=str(other_base)))
    with pytest.raises(AdapterError) as caught:
        engine.add_adapter(other.name, model=model)
    one_line_naming(caught.value, str(other_base), model)
    # weights trained on the other base behind a config that claims this one: the shapes do not fit
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    foreign = Path(training.train(tiny_config(data, other_base, method="lora", max_steps=1),
                                  runs_root=tmp_path / "foreign").run_dir)
    liar = broken_copy(engine, foreign, "lora-foreign", lambda r: edit_json(r / "config.json", base_model=model))
    with pytest.raises(AdapterError) as caught:
        engine.add_adapter(liar.name, model=model)
    one_line_naming(caught.value, str(liar), "cannot be applied to base model")
    # the good runs still load and answer, mixed (LoRA) and separate (IA3)
    good = [broken_copy(engine, trained[method], f"{method}-good", lambda r: None) for method in ("lora", "ia3")]
    keys = [engine.add_adapter(run.name, model=model).key for run in good]
    answers = engine.host(model).generate(["Tank?"] * 3, [None, *keys], GenerationConfig(max_new_tokens=2))
    assert len(answers) == 3 and all(answer.new_tokens <= 2 for answer in answers)


def test_the_host_alone_refuses_a_truncated_adapter_in_one_line(trained, engine, tiny_model_dir):
    run = broken_copy(engine, trained["lora"], "lora-host-truncated", lambda r: cut(r / ADAPTER, lambda n: n // 2))
    with pytest.raises(AdapterError):
        engine.host(str(tiny_model_dir)).add(run)


# ---- the same through the CLI and the UI ----------------------------------------------------------------------------


def cli_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", (code, captured.out[-500:])
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err[-2000:]
    assert captured.err.startswith("error: ")
    return captured.err.strip()


@pytest.mark.parametrize("case", ["truncated-half", "adapter-config-garbage", "run-config-garbage",
                                  "adapter-folder-missing", "pickle"])
def test_the_cli_arena_and_eval_exit_2_with_one_line(trained, tmp_path, monkeypatch, capsys, case):
    monkeypatch.setenv("TUNE_ARENA_WORKSPACE", str(tmp_path / "ws"))
    engine = Engine(tmp_path / "ws")
    marker = tmp_path / "unpickled"
    change = (lambda r: _pickle_instead(r, "adapter", "adapter_model.safetensors", "adapter_model.bin", marker)
              ) if case == "pickle" else next(row[2] for row in CASES if row[0] == case)
    run = broken_copy(engine, trained["lora"], f"lora-{case}", change)
    data = write_rows(tmp_path / "test.jsonl", ROWS[:2])
    for argv in (["arena", "--query", "Tank?", "--variants", "finetuned", "--adapter", run.name, "--json"],
                 ["arena", "--query", "Tank?", "--variants", "finetuned", "--adapter", str(run)],
                 ["eval", "--data", data, "--variants", "finetuned", "--adapter", str(run), "--json"],
                 ["runs", "--merge", run.name, "--out", str(tmp_path / "merged")]):
        line = cli_error(capsys, argv)
        assert str(run) in line, line
    assert not marker.exists() and not (tmp_path / "merged").exists()


def test_the_evaluate_tab_reports_a_broken_adapter_in_one_line(trained, engine):
    import gradio as gr

    from core.data import demo_path
    from ui.evaluate import create_evaluate_tab

    run = broken_copy(engine, trained["lora"], "lora-ui-truncated", lambda r: cut(r / ADAPTER, lambda n: n // 2))
    with gr.Blocks() as demo:
        create_evaluate_tab(engine)
    evaluate = next(fn.fn for fn in demo.fns.values() if fn.api_name == "evaluate")
    with pytest.raises(gr.Error) as caught:
        evaluate(str(demo_path("test.jsonl")), [], 1, ["finetuned"], [str(run)], None, 0, 3, 8)
    one_line_naming(Exception(caught.value.message), ADAPTER, "truncated")
    assert engine.models.loaded() == []


# ---- indexes ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A valid flat and a valid IVF index of 30 documents, built with the fake embedder."""
    root = tmp_path_factory.mktemp("indexes")
    for i in range(30):
        write(root / "docs" / f"d{i}.md", f"# Doc {i}\n\n" + words(60, i * 7))
    return {kind: Path(build_index([root / "docs"], root / kind, FakeEmbedder(),
                                   index_config=IndexConfig(index_type=kind)).index_dir) for kind in ("flat", "ivf")}


def manifest_edit(**changes) -> Callable[[Path], None]:
    return lambda folder: edit_json(folder / "manifest.json", **changes)


def chunk_lines(change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "chunks.jsonl"
        path.write_text("".join(line + "\n" for line in change(path.read_text().splitlines())))
    return apply


def renumber(lines: list[str]) -> list[str]:
    rows = [json.loads(line) for line in lines]
    rows[0]["id"] = 10_000
    return [json.dumps(row) for row in rows]


INDEX_CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("faiss-truncated-half", lambda f: cut(f / "index.faiss", lambda n: n // 2), "index.faiss: not a readable FAISS"),
    ("faiss-truncated-10", lambda f: cut(f / "index.faiss", 10), "index.faiss: not a readable FAISS"),
    ("faiss-empty", lambda f: cut(f / "index.faiss", 0), "index.faiss: not a readable FAISS"),
    ("faiss-garbage", lambda f: (f / "index.faiss").write_bytes(b"IxMp" + b"\x07" * 500), "index.faiss: not a "),
    ("faiss-missing", lambda f: (f / "index.faiss").unlink(), "is not an index folder (missing index.faiss)"),
    ("chunks-garbage", lambda f: write(f / "chunks.jsonl", "garbage\n"), "chunks.jsonl line 1: bad chunk record"),
    ("chunks-cut-mid-line", lambda f: cut(f / "chunks.jsonl", lambda n: n - 40), "chunks.jsonl line "),
    ("chunks-array-line", chunk_lines(lambda lines: ["[1, 2]", *lines[1:]]), "line 1: bad chunk record"),
    ("chunks-wrong-type", chunk_lines(lambda lines: [lines[0].replace('"start": ', '"start": "x", "_": '),
                                                     *lines[1:]]), "line 1: bad chunk record"),
    ("chunks-missing-line", chunk_lines(lambda lines: lines[1:]), "holds 30 vectors but chunks.jsonl has 29 chunks"),
    ("chunks-repeated", chunk_lines(lambda lines: [lines[0], *lines]), "chunk id 0 appears twice"),
    ("chunks-renumbered", chunk_lines(renumber), "the ids in index.faiss and chunks.jsonl differ"),
    ("chunks-binary", lambda f: (f / "chunks.jsonl").write_bytes(b"\xff\xfe\x00garbage\n"), "line 1: bad chunk"),
    ("manifest-garbage", lambda f: write(f / "manifest.json", "{oops"), "manifest.json: not valid JSON"),
    ("manifest-list", lambda f: write(f / "manifest.json", "[]"), "manifest.json: not a JSON object"),
    ("manifest-format", manifest_edit(format=99), "unknown index format 99"),
    ("manifest-no-model", lambda f: write(f / "manifest.json", json.dumps({"format": 1, "dimension": 64})),
     "missing field 'embedding_model'"),
    ("dimension-string", manifest_edit(dimension="64"), "field 'dimension' must be a positive integer"),
    ("dimension-zero", manifest_edit(dimension=0), "field 'dimension' must be a positive integer"),
    ("dimension-other", manifest_edit(dimension=32), "vectors of dimension 64, but manifest.json says 32"),
    ("model-number", manifest_edit(embedding_model=5), "field 'embedding_model' must be a model name"),
    ("index-string", manifest_edit(index="flat"), "field 'index' must be a JSON object"),
    ("index-unknown-setting", manifest_edit(index={"index_type": "flat", "evil": 1}), "manifest.json: bad settings"),
    ("chunking-list", manifest_edit(chunking=[200, 32]), "field 'chunking' must be a JSON object"),
    ("documents-list", manifest_edit(documents=[]), "field 'documents' must be a JSON object"),
    ("document-without-chunks", manifest_edit(documents={"a.md": {"sha256": "x"}}), "document 'a.md': needs"),
    ("counts-string", manifest_edit(counts="30"), "field 'counts' must be a JSON object"),
    ("counts-strings", manifest_edit(counts={"chunks": "30"}), "field 'counts' must be an object of integers"),
    ("counts-disagree", manifest_edit(counts={"documents": 30, "chunks": 999}), "do not match the index"),
    ("trained-on-string", manifest_edit(trained_on="x"), "field 'trained_on' must be a non-negative integer"),
    ("updated-string", manifest_edit(updated="yesterday"), "field 'updated' must be a number"),
    ("type-says-ivf", manifest_edit(index={"index_type": "ivf"}), "not the ivf index that manifest.json describes"),
]


def broken_index(source: Path, folder: Path, change: Callable[[Path], None]) -> Path:
    shutil.copytree(source, folder)
    change(folder)
    return folder


@pytest.mark.parametrize(("case", "kind"), [(case, "flat") for case, _, _ in INDEX_CASES]
                         + [("faiss-truncated-half", "ivf"), ("chunks-renumbered", "ivf"),
                            ("counts-disagree", "ivf")])
def test_a_broken_index_is_refused_in_one_line_naming_the_file(built, tmp_path, case, kind):
    _, change, needle = next(row for row in INDEX_CASES if row[0] == case)
    folder = broken_index(built[kind], tmp_path / "kb", change)
    asked: list[str] = []

    def embedder(name: str) -> FakeEmbedder:
        asked.append(name)
        return FakeEmbedder()

    with pytest.raises(IndexFolderError) as caught:
        KnowledgeBase.load(folder, embedder)
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and needle in message, message
    assert asked == []  # the embedding model is never loaded for a broken index


def test_the_valid_indexes_load_and_answer(built):
    for folder in built.values():
        kb = KnowledgeBase.load(folder, lambda name: FakeEmbedder(name))
        assert len(kb.chunks) == 30 and kb.search("w7 w8 w9", 1)[0].chunk.text


def test_a_pickle_as_index_faiss_is_never_unpickled(built, tmp_path):
    marker = tmp_path / "unpickled"
    folder = broken_index(built["flat"], tmp_path / "kb", lambda f: (f / "index.faiss").write_bytes(planted(marker)))
    with pytest.raises(IndexFolderError, match="index.faiss: not a readable FAISS index"):
        KnowledgeBase.load(folder, FakeEmbedder())
    assert not marker.exists()


@pytest.mark.parametrize("case", ["faiss-truncated-half", "chunks-garbage", "manifest-garbage", "counts-string",
                                  "counts-disagree", "model-number"])
def test_broken_indexes_through_the_engine_and_the_cli(built, tmp_path, monkeypatch, capsys, case):
    _, change, needle = next(row for row in INDEX_CASES if row[0] == case)
    engine = Engine(tmp_path / "ws", confined=True)
    folder = broken_index(built["flat"], engine.workspace.indexes / "broken", change)
    with pytest.raises(IndexFolderError) as caught:
        engine.knowledge_base("broken")
    assert "\n" not in str(caught.value) and needle in str(caught.value)
    assert engine.models.loaded() == []  # no embedding model was loaded for it
    listing = engine.list_indexes()  # the listing survives a broken index and says why
    assert [row["name"] for row in listing] == ["broken"]
    assert ("error" in listing[0]) == (case in ("manifest-garbage", "counts-string", "model-number"))  # manifest
    line = cli_error(capsys, ["search", "--index", str(folder), "--query", "w7", "--json"])
    assert needle in line and str(folder) in line, line
