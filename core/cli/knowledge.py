"""Commands about knowledge bases: ``index``, ``search`` and ``retrieval-eval``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from core.cli.common import Command, EngineFactory, Result, StageProgress
from core.cli.options import Option, add_options, field_names, option_values
from core.limits import to_name
from retrieval import BACKENDS, ChunkingConfig, IndexConfig
from retrieval.index import INDEX_TYPES

logger = logging.getLogger(__name__)

INDEX_OPTIONS = (
    Option("index_type", choices=INDEX_TYPES),
    Option("contextual", "--no-context", invert=True, note="embed the chunk text alone"),
    Option("backend", choices=BACKENDS),
    Option("qdrant_url", metavar="URL"),
    Option("collection", metavar="NAME"),
)


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", nargs="+", required=True, metavar="PATH",
                        help="files or folders (walked recursively): .md .txt .html .pdf .jsonl .csv")
    parser.add_argument("--out", help="the index folder (default: the workspace's indexes/<name of the first PATH>);"
                                      " an existing index there is updated: only new, changed and deleted files")
    add_options(parser, ChunkingConfig)
    add_options(parser, IndexConfig, options=INDEX_OPTIONS)
    parser.add_argument("--embedding-model", help="sentence-transformers name, hub id or folder "
                                                  "(default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--text-column", help="for .jsonl/.csv: the column holding the text (default: detected)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild from scratch instead of updating")


def _as_path(text: str) -> str:
    """A folder given on the command line, always taken as a path (a bare ``kb`` is ``./kb``, as it always was)."""
    return text if "/" in text or "\\" in text else os.path.join(".", text)


def _index_ref(text: str) -> str:
    """An index as the engine takes it: a bare name that is an index folder in the current directory stays that
    folder (as before the engine); otherwise a bare name is an index of the workspace, and a path is a path."""
    if "/" not in text and "\\" not in text and (Path(text) / "manifest.json").is_file():
        return os.path.join(".", text)
    return text


def cmd_index(args: argparse.Namespace, engine: EngineFactory) -> Result:
    chunking = ChunkingConfig(**option_values(args, field_names(ChunkingConfig)))
    index_config = IndexConfig(**option_values(args, field_names(IndexConfig)))
    out = _as_path(args.out) if args.out else to_name(Path(args.docs[0]).stem, "index")  # a name: indexes/<name>
    result = engine().build_index(args.docs, out, embedding_model=args.embedding_model, index_config=index_config,
                                  chunking=chunking, text_column=args.text_column, rebuild=args.rebuild,
                                  on_progress=StageProgress())
    for item in result.skipped:
        logger.warning("skipped %s: %s", item.path, item.reason)
    for warning in result.warnings:
        logger.warning("%s", warning)
    return result.contract()


def _search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mmr", type=float, metavar="LAMBDA",
                        help="diversify results with maximal marginal relevance (1 = relevance only, 0 = diversity)")
    parser.add_argument("--dense", action="store_true",
                        help="embedding similarity only (default: hybrid, fused with BM25 keyword ranking)")


def _search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="DIR",
                        help="an index folder made by `index`, or the name of one in the workspace")
    parser.add_argument("--query", required=True, help="the text to search for")
    parser.add_argument("--k", type=int, default=5, help="results to return (default 5)")
    _search_options(parser)


def cmd_search(args: argparse.Namespace, engine: EngineFactory) -> Result:
    hits = engine().search(_index_ref(args.index), args.query, args.k, mmr_lambda=args.mmr, hybrid=not args.dense)
    return {"index_dir": args.index, "query": args.query, "hybrid": not args.dense, "mmr": args.mmr,
            "results": [hit.to_dict() for hit in hits]}


def _human_search(result: Result) -> None:
    for hit in result["results"]:
        where = " > ".join(hit["headings"]) or hit["title"]
        cosine = f" (cosine {hit['dense_score']:.3f})" if "dense_score" in hit else ""
        print(f"{hit['rank']}. {hit['score']:.4f}{cosine}  {hit['source']}  [{where}]")
        print("   " + " ".join(hit["text"].split())[:300])


def _retrieval_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="DIR",
                        help="an index folder made by `index`, or the name of one in the workspace")
    parser.add_argument("--data", required=True, help="JSONL rows with a question (question/query/instruction) and "
                                                      "a source document; rows without a source are left out")
    parser.add_argument("--k", type=int, default=3, help="hit@1..k and MRR@k (default 3)")
    parser.add_argument("--per-question", action="store_true", help="include each question's rank")
    _search_options(parser)


def cmd_retrieval_eval(args: argparse.Namespace, engine: EngineFactory) -> Result:
    report = engine().evaluate_retrieval(_index_ref(args.index), args.data, k=args.k, mmr_lambda=args.mmr,
                                         hybrid=not args.dense)
    return {"index_dir": args.index, "data": args.data, **report.to_dict(per_question=args.per_question)}


COMMANDS = (
    Command("index", "build or update a knowledge base (FAISS, or Qdrant with --backend qdrant) from documents",
            _index_arguments, cmd_index),
    Command("search", "top-k chunks of a knowledge base for a query", _search_arguments, cmd_search, _human_search),
    Command("retrieval-eval", "hit@k and MRR of a knowledge base over questions with known source documents",
            _retrieval_eval_arguments, cmd_retrieval_eval),
)
