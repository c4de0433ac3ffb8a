"""Knowledge base tab: build or update an index (FAISS, or Qdrant: in memory or, single-user only, on a server) from
uploads, folders or the demo corpus; browse; search.

Layout and wiring only: widget values -> IndexConfig / ChunkingConfig -> ``engine.build_index`` (progress through
its ``on_progress``) -> counts and a table of skipped files; picker -> ``engine.knowledge_base(...).stats()``;
query -> ``KnowledgeBase.search`` -> a results table and the escaped full text of each hit.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.data import demo_path
from core.engine import Engine
from core.engine.uploads import list_uploads
from core.limits import check_name
from core.text import fmt_bytes, one_line
from retrieval import BACKENDS, ChunkingConfig, IndexConfig, is_index_folder, read_manifest
from retrieval.index import INDEX_TYPES
from ui.common import DEMO_INDEX, field_help, index_choices
from ui.visitors import scoped

logger = logging.getLogger(__name__)

ROW_SUFFIX = re.compile(r"#\d+$")  # "table.csv#3": row 3 of a table file
UPLOAD_TYPES = ".md .txt .html .pdf .jsonl .csv .tsv"
SKIPPED_HEADERS = ["File", "Reason"]
INDEX_HEADERS = ["Name", "Embedding model", "Index type", "Documents", "Chunks", "Updated"]
DOCUMENT_HEADERS = ["File", "Title", "Chunks"]
RESULT_HEADERS = ["Rank", "Score", "Cosine", "File", "Title / section", "Snippet"]
STAGES = {  # build_index stage -> (share of the bar before it, share it fills, label)
    "load": (0.00, 0.05, "Reading documents"),
    "chunk": (0.05, 0.15, "Chunking"),
    "embed": (0.20, 0.70, "Embedding chunks"),
    "index": (0.90, 0.05, "Updating the vector store"),
    "save": (0.95, 0.05, "Saving"),
}
SNIPPET_CHARS = 160


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers (tested without a server)
# --------------------------------------------------------------------------------------------------------------------


def check_index_name(name: str | None) -> str:
    """The stripped name if it is a plain folder name (``core.limits.check_name``: the one name rule for runs,
    indexes and evaluations); ValueError with one line starting ``index:`` otherwise, as the CLI says it."""
    return check_name((name or "").strip(), "index")


def typed_paths(text: str | None) -> list[str]:
    """Paths typed by the user, one per line (blank lines ignored)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def kept_sources(previous: Iterable[str], given: Sequence[str]) -> list[str]:
    """Files of an index's previous documents to index again so an update keeps them: table rows
    (``file.csv#3``) collapse to their file, files no longer on disk drop out, files already ``given`` (or under a
    given folder) are not repeated."""
    given_set = {str(path) for path in given}
    folders = [str(path).rstrip("/") + "/" for path in given]
    kept: list[str] = []
    for source in previous:
        file = ROW_SUFFIX.sub("", source)
        if file in given_set or file in kept or any(file.startswith(folder) for folder in folders):
            continue
        if Path(file).expanduser().is_file():
            kept.append(file)
    return kept


def file_label(source: str) -> str:
    """The file name of a document source (``/a/b/table.csv#3`` -> ``table.csv#3``)."""
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or source


def short_path(path: str, uploads: str | Path | None = None) -> str:
    """An upload's stored path as its file name; any other path as given."""
    if uploads is not None:
        prefix = str(uploads).rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix):].split("/", 1)[-1]  # drop the "documents/" folder too
    return path


def skipped_rows(skipped: Iterable[Any], uploads: str | Path | None = None) -> list[list[str]]:
    """[file, reason] rows from ``Skipped`` objects, ``{"path", "reason"}`` dicts or (path, reason) pairs."""
    rows = []
    for item in skipped:
        if isinstance(item, dict):
            path, reason = item["path"], item["reason"]
        elif isinstance(item, tuple | list):
            path, reason = item
        else:
            path, reason = item.path, item.reason
        rows.append([short_path(str(path), uploads), str(reason)])
    return rows


def format_time(stamp: float | None) -> str:
    """Seconds since the epoch -> ``YYYY-MM-DD HH:MM`` local time; '' for none."""
    if not stamp:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(stamp)))


def index_rows(listing: Iterable[dict]) -> list[list[Any]]:
    """Rows of ``INDEX_HEADERS`` from ``Engine.list_indexes()``; an unreadable index shows its error."""
    rows = []
    for row in listing:
        if "error" in row:
            rows.append([row["name"], f"unreadable: {row['error']}", "", "", "", ""])
            continue
        kind = row.get("index_type") or ""
        if row.get("backend", "faiss") != "faiss":
            kind = f"{kind} · {row['backend']}"
        rows.append([row["name"], row.get("embedding_model") or "", kind,
                     row.get("documents", ""), row.get("chunks", ""), format_time(row.get("updated"))])
    return rows


def build_summary(name: str, result: dict[str, Any], *, existed: bool, refused: int = 0) -> str:
    """Markdown for a ``BuildResult.contract()``: what was built, the update counts, time, warnings."""
    verb = "Built" if not existed else ("Rebuilt" if result.get("rebuilt") else "Updated")
    lines = [f"**{verb} `{name}`**: {result['documents']} documents, {result['chunks']} chunks "
             f"in {result['wall_s']:.1f} s",
             f"- chunks embedded: {result.get('embedded', 0)} · reused (unchanged text): {result.get('reused', 0)}",
             f"- documents added: {result.get('added', 0)} · changed: {result.get('changed', 0)} · "
             f"removed: {result.get('removed', 0)} · unchanged: {result.get('unchanged', 0)}"]
    skipped = len(result.get("skipped") or []) + refused
    if skipped:
        lines.append(f"- {skipped} file{'s' if skipped != 1 else ''} skipped: see the table below")
    lines += [f"- ⚠ {html.escape(warning)}" for warning in result.get("warnings") or []]
    return "\n".join(lines)


def store_label(stats: dict[str, Any]) -> str:
    """Where the vectors are, for a stats line: ``FAISS``, ``Qdrant (in memory)`` or ``Qdrant collection C at URL``."""
    if stats.get("backend", "faiss") == "faiss":
        return "FAISS"
    if stats.get("mode") == "server":
        return f"Qdrant collection {stats.get('collection')} at {stats.get('qdrant_url')}"
    return "Qdrant (in memory)"


def stats_markdown(stats: dict[str, Any]) -> str:
    """Markdown for ``KnowledgeBase.stats()``."""
    name = file_label(stats.get("folder") or "") or "knowledge base"
    return (f"**{html.escape(name)}**: {stats['documents']} documents, {stats['chunks']} chunks "
            f"(mean {stats.get('mean_chunk_tokens', 0)} tokens) · {stats.get('index_type')} index · "
            f"{html.escape(store_label(stats))} · "
            f"{html.escape(str(stats.get('embedding_model')))} ({stats.get('dimension')} dims) · "
            f"chunk size {stats.get('chunk_size')}, overlap {stats.get('overlap')} · "
            f"{fmt_bytes(stats.get('index_bytes')) or '?'} on disk · updated {format_time(stats.get('updated'))}")


def document_rows(documents: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """[file, title, chunks] rows from a knowledge base's ``documents`` (source -> record)."""
    return [[file_label(source), record.get("title", ""), len(record.get("chunk_ids") or [])]
            for source, record in sorted(documents.items())]


def section(hit: dict[str, Any]) -> str:
    """Title and heading path of a hit: ``Title › Heading › Subheading``."""
    title = hit.get("title") or ""
    return " › ".join([title, *[h for h in hit.get("headings") or [] if h != title]]).strip(" ›")


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def result_rows(hits: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """Rows of ``RESULT_HEADERS`` from ``SearchHit.to_dict()`` dicts (cosine = dense_score when hybrid)."""
    rows = []
    for hit in hits:
        cosine = hit.get("dense_score", hit["score"])
        rows.append([hit["rank"], round(float(hit["score"]), 4), round(float(cosine), 3), file_label(hit["source"]),
                     section(hit), snippet(hit["text"])])
    return rows


def hits_html(hits: Sequence[dict[str, Any]]) -> str:
    """Each hit as an expandable block with its full text; everything from the documents is HTML-escaped."""
    if not hits:
        return ""
    blocks = []
    for hit in hits:
        cosine = hit.get("dense_score", hit["score"])
        head = (f"<b>#{hit['rank']}</b> {html.escape(file_label(hit['source']))} · {html.escape(section(hit))} "
                f"<small>(score {float(hit['score']):.4f}, cosine {float(cosine):.3f})</small>")
        blocks.append(f"<details><summary>{head}</summary>"
                      f"<div><small>{html.escape(hit['source'])} · characters {hit.get('start')}–{hit.get('end')}"
                      f"</small></div>"
                      f"<pre style='white-space: pre-wrap; max-height: 360px; overflow: auto'>"
                      f"{html.escape(hit['text'])}</pre></details>")
    return f"<div class='kb-hits'>{''.join(blocks)}</div>"


def overall_progress(stage: str, done: int, total: int) -> tuple[float, str]:
    """(fraction of the whole build 0..1, label) for one ``on_progress(stage, done, total)`` report."""
    start, share, label = STAGES.get(stage, (0.0, 0.0, stage))
    part = min(1.0, done / total) if total else 1.0
    counted = stage in ("chunk", "embed") and total
    return round(start + share * part, 4), (f"{label} {done}/{total}" if counted else label)


def table(rows: list[list[Any]], headers: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def progress_reporter(progress: gr.Progress):
    """An ``on_progress(stage, done, total)`` callback that moves one Gradio progress bar over the whole build."""

    def report(stage: str, done: int, total: int) -> None:
        fraction, label = overall_progress(stage, done, total)
        progress(fraction, desc=label)

    return report


# --------------------------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------------------------


def create_knowledge_tab(engine: Engine, tab: gr.Tab | None = None) -> dict[str, Any]:
    """Build, browse and search knowledge bases. The instance ``engine`` fills the widgets at build time; every
    handler works with the requesting visitor's engine (``ui.visitors.scoped``). ``refresh`` in the returned
    parts: (fn, inputs, outputs) of the index listing and picker."""
    instance = engine
    defaults_index, defaults_chunking = IndexConfig(), ChunkingConfig()

    def listing(engine: Engine) -> pd.DataFrame:
        return table(index_rows(engine.list_indexes()), INDEX_HEADERS)

    with gr.Row():
        with gr.Column(scale=1):
            gr.Markdown("### Build or update a knowledge base")
            files = gr.File(label=f"Upload documents ({UPLOAD_TYPES})", file_count="multiple", type="filepath",
                            elem_id="kb-files")
            folders = gr.Textbox(label="…and/or folders or files on the server (one path per line; inside the "
                                       "workspace or a folder shared with TUNE_ARENA_DOC_ROOTS)", lines=1,
                                 placeholder="e.g. workspace/docs", elem_id="kb-folders")
            use_demo = gr.Checkbox(label="Include the demo corpus (30 product and policy documents)", value=False,
                                   elem_id="kb-demo")
            with gr.Row():
                name = gr.Textbox(label="Index name", value="my-docs", elem_id="kb-name",
                                  info="letters, digits, _ . - ; saved as indexes/<name>")
                keep = gr.Checkbox(label="Keep documents already in this index", value=True, elem_id="kb-keep",
                                   info="untick to make it hold only the sources above")
            with gr.Accordion("Chunking and index settings", open=False):
                with gr.Row():
                    chunk_size = gr.Slider(32, 1024, value=defaults_chunking.chunk_size, step=8,
                                           label="Chunk size (tokens)", info=field_help(ChunkingConfig, "chunk_size"),
                                           elem_id="kb-chunk-size")
                    overlap = gr.Slider(0, 256, value=defaults_chunking.overlap, step=4, label="Overlap (tokens)",
                                        info=field_help(ChunkingConfig, "overlap"), elem_id="kb-overlap")
                with gr.Row():
                    index_type = gr.Radio(list(INDEX_TYPES), value=defaults_index.index_type, label="Index type",
                                          info=field_help(IndexConfig, "index_type"),
                                          elem_id="kb-index-type")
                    contextual = gr.Checkbox(value=defaults_index.contextual, elem_id="kb-contextual",
                                             label="Contextual prefix", info=field_help(IndexConfig, "contextual"))
                    rebuild = gr.Checkbox(value=False, label="Rebuild from scratch", elem_id="kb-rebuild",
                                          info="otherwise only new and changed documents are embedded")
                with gr.Row():
                    backend = gr.Radio(list(BACKENDS), value=defaults_index.backend, label="Vector store",
                                       info=field_help(IndexConfig, "backend"), elem_id="kb-backend")
                    # a shared Space offers no server URL: visitors must not make the server reach arbitrary hosts
                    qdrant_url = (gr.Textbox(label="Qdrant server URL (optional)", elem_id="kb-qdrant-url",
                                             placeholder="e.g. https://xyz.cloud.qdrant.io:6333",
                                             info=field_help(IndexConfig, "qdrant_url"))
                                  if engine.visitors is None else None)
            build = gr.Button("Build / update", variant="primary", elem_id="kb-build")
            build_status = gr.Markdown(elem_id="kb-build-status")
            skipped = gr.Dataframe(table([], SKIPPED_HEADERS), label="Skipped files", interactive=False, wrap=True,
                                   elem_id="kb-skipped")
        with gr.Column(scale=1):
            gr.Markdown("### Knowledge bases")
            indexes = gr.Dataframe(listing(engine), label="In this workspace (click a row to pick it)",
                                   interactive=False, wrap=True,
                                   column_widths=["18%", "24%", "13%", "15%", "12%", "18%"], elem_id="kb-indexes")
            with gr.Row():
                picker = gr.Dropdown(index_choices(engine), value=None, label="Knowledge base", scale=4,
                                     allow_custom_value=True, elem_id="kb-picker")
                refresh = gr.Button("Refresh", size="sm", scale=1, elem_id="kb-refresh")
            stats = gr.Markdown(elem_id="kb-stats")
            with gr.Accordion("Documents in this knowledge base", open=False):
                documents = gr.Dataframe(table([], DOCUMENT_HEADERS), interactive=False, wrap=True,
                                         elem_id="kb-documents")
    gr.Markdown("### Search the picked knowledge base")
    with gr.Row():
        query = gr.Textbox(label="Query", scale=4, placeholder="e.g. What does error code E22 mean?",
                           elem_id="kb-query")
        k = gr.Slider(1, 20, value=5, step=1, label="Results (k)", scale=1, elem_id="kb-k")
    with gr.Row():
        hybrid = gr.Checkbox(value=True, label="Hybrid: fuse dense and BM25 keyword rankings (untick: dense only)",
                             elem_id="kb-hybrid")
        use_mmr = gr.Checkbox(value=False, label="MMR: diversify the results", elem_id="kb-mmr")
        mmr_lambda = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="MMR λ (1 = relevance only)",
                               elem_id="kb-mmr-lambda")
        search = gr.Button("Search", variant="primary", elem_id="kb-search")
    search_status = gr.Markdown(elem_id="kb-search-status")
    results = gr.Dataframe(table([], RESULT_HEADERS), label="Results", interactive=False, wrap=True,
                           column_widths=["6%", "8%", "8%", "16%", "22%", "40%"], elem_id="kb-results")
    full_text = gr.HTML(elem_id="kb-full-text")

    def show(engine: Engine, choice: str | None) -> tuple[str, pd.DataFrame]:
        empty = table([], DOCUMENT_HEADERS)
        if not choice:
            return "", empty
        if choice == DEMO_INDEX and not is_index_folder(engine.index_dir(DEMO_INDEX)):
            return "The demo corpus is indexed on its first search (about 15 s).", empty
        try:
            kb = engine.knowledge_base(choice)
        except (ValueError, OSError) as err:
            raise gr.Error(one_line(err)) from None
        return stats_markdown(kb.stats()), table(document_rows(kb.documents), DOCUMENT_HEADERS)

    def describe(choice: str | None, request: gr.Request | None = None) -> tuple[str, pd.DataFrame]:
        return show(scoped(instance, request), choice)

    def on_build(uploaded, folder_text, demo, index_name, keep_old, size, over, kind, prefix, scratch,
                 progress=gr.Progress(),  # noqa: B008 (Gradio finds the bar by this default)
                 request: gr.Request | None = None, store: str = "faiss", url: str | None = None):
        engine = scoped(instance, request)
        uploads_root = engine.workspace.uploads
        try:
            index_name = check_index_name(index_name)
            index_config = IndexConfig(index_type=str(kind), contextual=bool(prefix), backend=str(store or "faiss"),
                                       qdrant_url=(url or "").strip() or None)
            engine.check_store(index_config)
            chunking = ChunkingConfig(chunk_size=int(size), overlap=int(over))
        except ValueError as err:
            raise gr.Error(one_line(err)) from None
        folder = engine.index_dir(index_name)
        refused: list[tuple[str, str]] = []
        paths: list[str] = []
        before = set(list_uploads(uploads_root, "documents"))
        added: list[Path] = []  # uploads this build stored under a new name: dropped again if they are not indexed

        def discard(drop: Iterable[Path]) -> None:
            for path in drop:
                path.unlink(missing_ok=True)

        for upload in uploaded or []:
            original = Path(str(upload)).name
            try:
                stored = engine.store_upload(upload, "documents", name=original)
            except (ValueError, OSError) as err:  # UploadError: wrong type or too big; the rest go on
                refused.append((original, one_line(err).removeprefix(f"{original}: ")))
                continue
            paths.append(str(stored))
            if stored not in before:
                added.append(stored)
        paths += typed_paths(folder_text)
        if demo:
            paths.append(str(demo_path("corpus")))
        existed = is_index_folder(folder)
        if keep_old and existed and not scratch:
            try:
                paths += kept_sources(read_manifest(folder).get("documents") or {}, paths)
            except ValueError as err:
                discard(added)
                raise gr.Error(one_line(err)) from None
        if not paths:
            reasons = "; ".join(f"{file}: {reason}" for file, reason in refused)
            raise gr.Error("Nothing to index: " + (f"every upload was refused ({reasons})" if refused else
                           "upload documents, type a folder path or tick the demo corpus"))
        progress(0.0, desc="Loading the embedding model")
        try:
            result = engine.build_index(paths, index_name, index_config=index_config, chunking=chunking,
                                        rebuild=bool(scratch), on_progress=progress_reporter(progress))
        except (ValueError, OSError) as err:  # NothingToIndexError, IndexFolderError, unreadable folder
            discard(added)
            raise gr.Error(one_line(err)) from None
        except Exception as err:  # never a traceback in the UI; the log keeps it
            discard(added)
            logger.exception("building index %s failed", index_name)
            raise gr.Error(f"Building the index failed: {one_line(err)}") from None
        unread = {item.path for item in result.skipped}
        discard(path for path in added if str(path) in unread)  # an upload that could not be read is not kept
        contract = result.contract()
        for warning in contract["warnings"]:
            gr.Warning(warning)
        if refused:
            gr.Warning(f"{len(refused)} upload{'s' if len(refused) != 1 else ''} refused: see Skipped files")
        rows = [[file, reason] for file, reason in refused] + skipped_rows(result.skipped, uploads_root)
        choice = str(folder)
        stats_text, documents_table = show(engine, choice)
        return (build_summary(index_name, contract, existed=existed, refused=len(refused)),
                table(rows, SKIPPED_HEADERS), listing(engine), gr.update(choices=index_choices(engine), value=choice),
                stats_text, documents_table)

    def on_search(choice, text, count, fused, diverse, lam, progress=gr.Progress(),  # noqa: B008
                  request: gr.Request | None = None):
        if not choice:
            raise gr.Error("Pick a knowledge base first (or build one).")
        if not text or not text.strip():
            raise gr.Error("Type a query first.")
        engine = scoped(instance, request)
        try:
            if choice == DEMO_INDEX and not is_index_folder(engine.index_dir(DEMO_INDEX)):
                progress(0.0, desc="Indexing the demo corpus (once)")
                engine.ensure_demo_index(on_progress=progress_reporter(progress))
            kb = engine.knowledge_base(choice)
            hits = kb.search(text, int(count), mmr_lambda=float(lam) if diverse else None, hybrid=bool(fused))
        except (ValueError, OSError) as err:
            raise gr.Error(one_line(err)) from None
        except Exception as err:
            logger.exception("search failed")
            raise gr.Error(f"Search failed: {one_line(err)}") from None
        rows = [hit.to_dict() for hit in hits]
        mode = ("hybrid (dense + BM25)" if fused else "dense only") + (" + MMR" if diverse else "")
        status = (f"{len(rows)} result{'s' if len(rows) != 1 else ''} from {len(kb.chunks)} chunks · {mode}"
                  if rows else "No results.")
        return status, table(result_rows(rows), RESULT_HEADERS), hits_html(rows)

    def on_refresh(choice: str | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        choices = index_choices(engine)
        values = {value for _, value in choices}
        return listing(engine), gr.update(choices=choices, value=choice if choice in values else None)

    def on_row(evt: gr.SelectData, request: gr.Request | None = None):
        row = evt.row_value or []
        if not row or not row[0]:
            return gr.update()
        if str(row[0]) == DEMO_INDEX:  # the picker's own value for it (on a shared app: the instance's folder)
            return DEMO_INDEX
        return str(scoped(instance, request).index_dir(str(row[0])))

    build_inputs = [files, folders, use_demo, name, keep, chunk_size, overlap, index_type, contextual, rebuild,
                    backend, *([qdrant_url] if qdrant_url is not None else [])]
    build.click(on_build, build_inputs, [build_status, skipped, indexes, picker, stats, documents],
                api_name="build_index", concurrency_limit=1, concurrency_id="kb-build")
    search_inputs = [picker, query, k, hybrid, use_mmr, mmr_lambda]
    search.click(on_search, search_inputs, [search_status, results, full_text], api_name="search_index")
    query.submit(on_search, search_inputs, [search_status, results, full_text])
    picker.change(describe, [picker], [stats, documents])
    refresh.click(on_refresh, [picker], [indexes, picker], queue=False)
    if tab is not None:  # the gr.Tab this tab is built in (app.py): the list is fresh whenever it is opened
        tab.select(on_refresh, [picker], [indexes, picker], queue=False, api_visibility="private")
    indexes.select(on_row, None, [picker])
    return {"files": files, "folders": folders, "use_demo": use_demo, "name": name, "keep": keep,
            "chunk_size": chunk_size, "overlap": overlap, "index_type": index_type, "contextual": contextual,
            "rebuild": rebuild, "backend": backend, "qdrant_url": qdrant_url, "build": build,
            "build_status": build_status, "skipped": skipped,
            "indexes": indexes, "picker": picker, "stats": stats, "documents": documents, "query": query, "k": k,
            "hybrid": hybrid, "mmr": use_mmr, "mmr_lambda": mmr_lambda, "search": search,
            "search_status": search_status, "results": results, "full_text": full_text,
            "refresh": (on_refresh, [picker], [indexes, picker])}
