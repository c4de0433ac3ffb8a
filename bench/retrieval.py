"""Retrieval speed: MiniLM embedding throughput, the demo index build, and flat vs HNSW (vs IVF) FAISS indexes at
1k, 10k and 100k chunks: build time, single-query search latency p50/p99 and recall@10 against the exact flat index.

    python -m bench.retrieval [--smoke] [--sizes 1000,10000,100000] [--queries 200] [--data clustered,uniform]

The scale part uses synthetic unit vectors of the embedding dimension (384), not embedded text: embedding 100k real
chunks would take far too long on 2 cores. Two kinds: ``clustered`` (overlapping Gaussians in a low-dimensional
subspace, tuned to the demo corpus's MiniLM neighbour statistics; see ``synthetic``) and ``uniform`` on the sphere
(the worst case for approximate search); queries come from the same distribution and are not in the index.
Indexes are built with the product's own code
(``retrieval.stores.new_faiss_index`` with an ``IndexConfig``, then ``add_with_ids`` as ``KnowledgeBase.sync`` does),
so their settings (HNSW M=32, efConstruction=80, efSearch=64; IVF nlist=4*sqrt(n), nprobe=8) are the product's.
Writes bench/results/retrieval.json (smoke: bench/results/smoke/retrieval.json).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import print_table, write_result

DIMENSION = 384
K = 10
SYNTHETIC = ("random unit vectors, not embedded text. clustered: a mixture of n/100 overlapping Gaussians in a random "
             "64-dimensional subspace (cluster spread = centre spread), plus a direction shared by all vectors and "
             "isotropic noise, tuned to the demo corpus's MiniLM neighbour statistics (see neighbour_stats); "
             "uniform: uniform on the sphere, the worst case for approximate search.")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


# --------------------------------------------------------------------------------------------------------------------
# Real text: the demo corpus through MiniLM and the product's index build
# --------------------------------------------------------------------------------------------------------------------


def demo_corpus(smoke: bool, batch_sizes: list[int], queries: int) -> dict[str, Any]:
    from core.data import demo_path, load_examples
    from core.models import default_embedding_model, load_embedding_model
    from retrieval import (
        ChunkingConfig,
        KnowledgeBase,
        SentenceTransformerEmbedder,
        build_index,
        chunk_document,
        load_documents,
    )
    from retrieval.index import embed_text

    began = time.perf_counter()
    embedder = SentenceTransformerEmbedder(load_embedding_model(), default_embedding_model())  # bundled MiniLM
    embedder_load_s = time.perf_counter() - began
    corpus = demo_path("corpus")
    documents = load_documents([str(corpus)]).documents
    chunking = ChunkingConfig()
    began = time.perf_counter()
    texts = [embed_text(span, True) for document in documents for span in chunk_document(document, embedder, chunking)]
    chunk_s = time.perf_counter() - began
    if smoke:
        texts = texts[:32]
    embedder.embed(texts[:8])  # warm-up
    embedding = []
    for batch_size in batch_sizes:
        began = time.perf_counter()
        embedder.embed(texts, batch_size=batch_size)
        seconds = time.perf_counter() - began
        embedding.append({"batch_size": batch_size, "chunks": len(texts), "seconds": round(seconds, 2),
                          "chunks_per_s": round(len(texts) / seconds, 1)})
    result: dict[str, Any] = {"documents": len(documents), "chunks": len(texts), "chunking": chunking.to_dict(),
                              "chunking_s": round(chunk_s, 2), "embedder_load_s": round(embedder_load_s, 2),
                              "embedding": embedding}
    folder = Path(tempfile.mkdtemp(prefix="bench-retrieval-")) / "demo"
    try:
        build = build_index([str(corpus)], folder, embedder)
        again = build_index([str(corpus)], folder, embedder)
        result["index_build"] = {"full_s": round(build.wall_s, 2), "full_embedded": build.embedded,
                                 "chunks": build.chunks, "reindex_no_change_s": round(again.wall_s, 3),
                                 "reindex_embedded": again.embedded, "reindex_reused": again.reused}
        # the product's whole search (embed the query, FAISS, BM25 fusion) on the demo index, one query at a time
        kb = KnowledgeBase.load(folder, embedder)
        questions = [example.user_text for example in load_examples(demo_path("test.jsonl")).examples][:queries]
        kb.search(questions[0], 3)  # builds the BM25 index once
        times: dict[bool, list[float]] = {True: [], False: []}
        for question in questions:  # interleaved, so load changes hit both alike
            for hybrid in (True, False):
                began = time.perf_counter()
                kb.search(question, 3, hybrid=hybrid)
                times[hybrid].append(time.perf_counter() - began)
        began = time.perf_counter()
        question_vectors = embedder.embed(questions, batch_size=1)
        embed_query_ms = (time.perf_counter() - began) * 1000 / len(questions)
        result["neighbour_stats"] = neighbour_stats(kb.vectors(sorted(kb.chunks)), question_vectors)
        for hybrid, label in ((True, "hybrid"), (False, "dense")):
            result[f"kb_search_{label}"] = {"queries": len(questions), "k": 3, **_percentiles(times[hybrid])}
        result["query_embedding_mean_ms"] = round(embed_query_ms, 2)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Synthetic scale: flat vs HNSW vs IVF
# --------------------------------------------------------------------------------------------------------------------


def synthetic(n: int, queries: int, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 384) and (queries, 384) float32 unit vectors, ``clustered`` or ``uniform`` (on the sphere).

    ``clustered``: a mixture of n/100 overlapping Gaussians in a random 64-dimensional subspace, plus a direction
    shared by all vectors and a little isotropic noise. Text embeddings lie near a low-dimensional set and share a
    mean direction; the parameters give about the demo corpus's MiniLM statistics (mean pairwise cosine ~0.2,
    nearest-neighbour cosine ~0.65-0.7; measured 0.23 and 0.70 on its 263 chunks). Well separated clusters would make
    every index look perfect; uniform vectors are the worst case for approximate search.
    """
    from retrieval.embeddings import normalise

    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return (normalise(rng.standard_normal((n, DIMENSION), dtype=np.float32)),
                normalise(rng.standard_normal((queries, DIMENSION), dtype=np.float32)))
    rank, spread, noise, shared = 64, 1.0, 0.5, 0.75
    basis = np.linalg.qr(rng.standard_normal((DIMENSION, rank)))[0].T.astype(np.float32)  # (rank, 384) orthonormal
    mean = normalise(rng.standard_normal((1, DIMENSION), dtype=np.float32))  # (1, 384)
    centres = rng.standard_normal((max(10, n // 100), rank), dtype=np.float32)  # (clusters, rank)

    def draw(count: int) -> np.ndarray:
        z = centres[rng.integers(0, len(centres), count)] + spread * rng.standard_normal((count, rank),
                                                                                         dtype=np.float32)
        isotropic = noise / np.sqrt(DIMENSION) * rng.standard_normal((count, DIMENSION), dtype=np.float32)
        return normalise(shared * mean + (z / np.sqrt(rank)) @ basis + isotropic)  # (count, 384)

    return draw(n), draw(queries)


def neighbour_stats(vectors: np.ndarray, queries: np.ndarray, sample: int = 200) -> dict[str, float]:
    """Mean pairwise cosine and mean cosine of the 1st and 10th nearest neighbour (a sample of rows and queries)."""
    sims = vectors[:sample] @ vectors.T  # (sample, n)
    top = np.sort(sims, axis=1)[:, ::-1]  # column 0 is the row itself
    query_top = np.sort(queries[:sample] @ vectors.T, axis=1)[:, ::-1]
    return {"pairwise_mean": round(float(sims.mean()), 3), "nn1": round(float(top[:, 1].mean()), 3),
            "nn10": round(float(top[:, min(10, top.shape[1] - 1)].mean()), 3),
            "query_nn1": round(float(query_top[:, 0].mean()), 3),
            "query_nn10": round(float(query_top[:, min(9, query_top.shape[1] - 1)].mean()), 3)}


def measure_index(index_type: str, vectors: np.ndarray, queries: np.ndarray,
                  exact: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
    """Build as the product does, search one query at a time (k=10); recall@10 against ``exact`` ids."""
    import faiss

    from retrieval.index import IndexConfig
    from retrieval.stores import new_faiss_index

    config = IndexConfig(index_type=index_type)
    ids = np.arange(len(vectors), dtype=np.int64)
    began = time.perf_counter()
    index = new_faiss_index(config, DIMENSION, vectors)  # IVF trains here
    trained = time.perf_counter() - began
    index.add_with_ids(vectors, ids)
    build_s = time.perf_counter() - began
    index.search(queries[:1], K)  # warm-up
    found = np.zeros((len(queries), K), dtype=np.int64)
    latency: dict[str, float] = {}
    default_threads = faiss.omp_get_max_threads()
    for threads, suffix in ((default_threads, ""), (1, "_1t")):  # faiss's OpenMP default, then one thread
        faiss.omp_set_num_threads(threads)
        try:
            times = []
            for row in range(len(queries)):
                began = time.perf_counter()
                _, hit = index.search(queries[row:row + 1], K)  # (1, K)
                times.append(time.perf_counter() - began)
                found[row] = hit[0]
        finally:
            faiss.omp_set_num_threads(default_threads)
        latency.update({f"{key}{suffix}": value for key, value in _percentiles(times).items()})
    began = time.perf_counter()
    index.search(queries, K)
    batch_s = time.perf_counter() - began
    result: dict[str, Any] = {"index": index_type, "build_s": round(build_s, 3), "train_s": round(trained, 3),
                              **latency, "batch_qps": round(len(queries) / batch_s, 1),
                              "bytes": int(faiss.serialize_index(index).size)}
    if index_type == "hnsw":
        result["params"] = f"M={config.hnsw_m} efC={config.hnsw_ef_construction} efS={config.hnsw_ef_search}"
    elif index_type == "ivf":
        result["params"] = f"nlist={index.nlist} nprobe={index.nprobe}"
    else:
        result["params"] = "exact"
    if exact is not None:
        recall = np.mean([len(set(found[row]) & set(exact[row])) / K for row in range(len(queries))])
        result["recall_at_10"] = round(float(recall), 4)
    else:
        result["recall_at_10"] = 1.0
    return result, found


def scale(sizes: list[int], queries: int, kinds: list[str], index_types: list[str]
          ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    rows, stats = [], {}
    for kind in kinds:
        for n in sizes:
            vectors, query_vectors = synthetic(n, queries, kind)
            stats[f"{kind}-{n}"] = neighbour_stats(vectors, query_vectors)
            flat, exact = measure_index("flat", vectors, query_vectors, None)
            rows.append({"data": kind, "chunks": n, **flat})
            for index_type in index_types:
                if index_type == "flat":
                    continue
                result, _ = measure_index(index_type, vectors, query_vectors, exact)
                rows.append({"data": kind, "chunks": n, **result})
            for row in rows[-len(index_types):]:
                row["search_speedup_vs_flat"] = (round(flat["p50_ms_1t"] / row["p50_ms_1t"], 2) if row["p50_ms_1t"]
                                                 else None)
            print(f"  {kind} {n} chunks done", flush=True)
    return rows, stats


_SCALE_COLUMNS = ["data", "chunks", "index", "params", "build_s", "p50_ms", "p99_ms", "p50_ms_1t", "p99_ms_1t",
                  "batch_qps", "recall_at_10", "search_speedup_vs_flat"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1k synthetic chunks, 20 queries, a corpus slice")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", default="clustered,uniform", help="clustered and/or uniform synthetic vectors")
    parser.add_argument("--indexes", default="flat,hnsw,ivf")
    parser.add_argument("--batch-sizes", default="16,64", help="embedding batch sizes to time (64: the product's)")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.queries, args.batch_sizes, args.data = "1000", 20, "64", "clustered"
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = [int(size) for size in args.sizes.split(",")]
    index_types = [name.strip() for name in args.indexes.split(",") if name.strip()]
    if "flat" not in index_types:
        index_types.insert(0, "flat")
    load_before = os.getloadavg()
    began = time.perf_counter()
    corpus = demo_corpus(args.smoke, [int(b) for b in args.batch_sizes.split(",")], args.queries if not args.smoke
                         else 5)
    print_table(corpus["embedding"])
    print()
    print_table([{"documents": corpus["documents"], **corpus["index_build"],
                  "kb_search_hybrid_p50_ms": corpus["kb_search_hybrid"]["p50_ms"],
                  "kb_search_dense_p50_ms": corpus["kb_search_dense"]["p50_ms"]}])
    print()
    kinds = [kind.strip() for kind in args.data.split(",") if kind.strip()]
    if not set(kinds) <= {"clustered", "uniform"}:
        parser.error(f"--data: clustered and/or uniform, got {args.data!r}")
    rows, stats = scale(sizes, args.queries, kinds, index_types)
    print()
    print_table(rows, _SCALE_COLUMNS)
    import faiss

    hnsw = {f"{row['data']}-{row['chunks']}": row["recall_at_10"] for row in rows if row["index"] == "hnsw"}
    payload = {"demo_corpus": corpus,
               "scale": {"data": kinds, "dimension": DIMENSION, "queries": args.queries, "k": K,
                         "synthetic": SYNTHETIC,
                         "neighbour_stats": stats,
                         "latency": "one query per index.search call (as KnowledgeBase.search does), with faiss's "
                                    "default OpenMP threads (p50_ms, p99_ms) and with one thread (_1t); batch_qps: "
                                    "all queries in one call; search_speedup_vs_flat: p50 one thread",
                         "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "rows": rows},
               "hnsw_recall_at_10": hnsw,
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()],
               "bench_wall_s": round(time.perf_counter() - began, 1)}
    path = write_result("retrieval", payload, smoke=args.smoke)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
