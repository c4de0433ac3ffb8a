"""The demo corpus indexed with the bundled all-MiniLM-L6-v2: retrieval quality on the demo test questions, the
incremental path on real files, and the CLI commands `index`, `search` and `retrieval-eval`."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from core.cli import main
from core.data import demo_path
from retrieval import KnowledgeBase, build_index, evaluate_retrieval, load_cases

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)


def test_demo_index_covers_every_document(demo_index):
    folder, result = demo_index
    assert result.documents == 30 and result.skipped == []
    assert result.embedded == result.chunks > 30
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["embedding_model"] == "all-MiniLM-L6-v2" and manifest["dimension"] == 384


def test_hit_at_3_on_the_demo_test_questions(demo_index, embedder):
    folder, _ = demo_index
    kb = KnowledgeBase.load(folder, embedder)
    cases = load_cases(demo_path("test.jsonl"))
    hybrid = evaluate_retrieval(kb, cases, k=3)
    dense = evaluate_retrieval(kb, cases, k=3, hybrid=False)
    logger.warning("demo test retrieval (%d questions): hybrid hit@3 %.3f MRR %.3f; dense hit@3 %.3f MRR %.3f",
                   hybrid.n, hybrid.hit_at[3], hybrid.mrr, dense.hit_at[3], dense.mrr)
    assert hybrid.n == 45
    assert hybrid.hit_at[3] >= 0.85
    assert hybrid.hit_at[1] <= hybrid.hit_at[2] <= hybrid.hit_at[3]


def test_editing_one_file_re_embeds_only_its_chunks(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    shutil.copytree(demo_path("corpus"), corpus)
    first = build_index([str(corpus)], tmp_path / "index", embedder)
    again = build_index([str(corpus)], tmp_path / "index", embedder)
    assert again.embedded == 0 and again.unchanged == 30 and not again.rebuilt
    page = corpus / "warranty-policy.md"
    page.write_text(page.read_text() + "\n\n## Extended cover\n\nThe Evergreen plan adds three years of cover.\n")
    (corpus / "company-history.md").unlink()
    update = build_index([str(corpus)], tmp_path / "index", embedder)
    assert (update.changed, update.removed, update.added, update.unchanged) == (1, 1, 0, 28)
    assert 0 < update.embedded <= 3  # the new tail of the page, not the whole corpus
    kb = KnowledgeBase.load(tmp_path / "index", embedder)
    assert kb.search("Evergreen plan three years", k=1)[0].chunk.source.endswith("warranty-policy.md")
    assert not any(chunk.source.endswith("company-history.md") for chunk in kb.chunks.values())
    assert first.chunks - update.chunks >= 1


def test_cli_index_search_and_retrieval_eval(tmp_path, capsys):
    out = tmp_path / "kb"
    assert main(["index", "--docs", str(demo_path("corpus")), "--out", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert {"index_dir", "documents", "chunks", "skipped", "wall_s"} <= set(built)
    assert built["documents"] == 30 and built["index_dir"] == str(out)

    assert main(["search", "--index", str(out), "--query", "What does error code E15 mean?", "--k", "3",
                 "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [hit["rank"] for hit in found["results"]] == [1, 2, 3]
    assert {"rank", "score", "text", "doc_id", "source", "title"} <= set(found["results"][0])
    assert any(hit["source"].endswith("error-codes.md") for hit in found["results"])

    assert main(["retrieval-eval", "--index", str(out), "--data", str(demo_path("test.jsonl")), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 45 and report["k"] == 3 and 0.85 <= report["hit@3"] <= 1.0


def test_cli_refuses_an_empty_folder_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["index", "--docs", str(tmp_path / "empty"), "--out", str(tmp_path / "kb"), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: nothing to index") and "empty folder" in err[-1]
    assert not (tmp_path / "kb").exists()
