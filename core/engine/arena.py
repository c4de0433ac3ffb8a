"""The engine's arena and evaluation: the adapter host of each base model, the shared scorer and few-shot pools,
everything a set of variants needs (ArenaContext), one query side by side, a test set saved under evals/ and its
report.html."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.arena import (
    STRATEGIES,
    ArenaConfig,
    ArenaContext,
    ArenaResult,
    EvalResult,
    Scorer,
    load_eval,
    new_eval_id,
    run_eval,
    run_query,
)
from core.arena.report import render_html
from core.data import Example, demo_path, load_examples
from core.errors import AdapterError, ConfigError
from core.inference import AdapterHost, AdapterInfo, Classifier, is_classification_run, load_classifier
from core.io import write_atomic
from core.limits import child_folder, max_eval_rows, writable_folder
from core.models import default_base_model
from core.runs import Run
from core.text import one_line
from retrieval.evaluation import source_matches

logger = logging.getLogger(__name__)

REPORT = "report.html"  # an evaluation's self-contained report, beside its results.json


class ArenaMixin:
    """Arena and evaluation of an Engine (see core.engine.engine.Engine for the state it holds)."""

    def host(self, model: str | None = None) -> AdapterHost:
        """The inference owner of the shared base model ``model`` (all generation on it goes through here)."""
        key = model or default_base_model()
        loaded = self.base_model(model)
        with self._lock:
            if key not in self._hosts:
                self._hosts[key] = AdapterHost(loaded)
            return self._hosts[key]

    def scorer(self):
        """The shared metrics Scorer (evaluate modules load on first use)."""
        with self._lock:
            if "scorer" not in self._loaded:
                self._loaded["scorer"] = Scorer()
            return self._loaded["scorer"]

    def few_shot_pool(self, path: str | Path | None = None, *, with_vectors: bool = True,
                      ) -> tuple[list[Example], object]:
        """Examples with answers from ``path`` (default: the demo train set) and, when ``with_vectors``, their unit
        embedding vectors (n, d) for similarity selection. Cached per file."""
        path = str(path or demo_path("train.jsonl"))
        with self._lock:
            cached = self._pools.get(path)
        if cached is None:
            cached = ([example for example in load_examples(path).examples if example.output], None)
        if with_vectors and cached[1] is None:
            cached = (cached[0], self.embedder().embed([example.user_text for example in cached[0]]))
        with self._lock:
            self._pools[path] = cached
        return cached

    def classifier(self, run: str | Path) -> Classifier:
        """A classification run loaded to predict (after ``checked_run``), kept for the next call; a run whose
        weights were saved again since (a stopped run resumed) is loaded again. Never on an AdapterHost: its base
        (e.g. the MiniLM encoder) is a model of its own."""
        return self._classifier_at(self.checked_run(run))

    def _classifier_at(self, folder: Path) -> Classifier:
        key = str(folder.resolve())
        stamp = (Run(folder).weights_dir or folder).stat().st_mtime_ns
        with self._lock:
            cached = self._classifiers.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            loaded = load_classifier(folder, device=self.models.device, dtype=self.models.dtype)
        except (RuntimeError, KeyError, TypeError, OSError) as err:  # e.g. weights of another base model
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise AdapterError(f"adapter: {folder}: cannot be loaded as a classifier ({reason})") from None
        with self._lock:
            self._classifiers[key] = (stamp, loaded)
        return loaded

    def add_adapter(self, run: str | Path, *, model: str | None = None) -> AdapterInfo:
        """A run's weights ready on the shared base model ``model``, after ``checked_run``. Weights that do not fit
        the base model (another architecture or size) give an AdapterError naming the run folder."""
        folder = self.checked_run(run)
        return self._add_checked(self.host(model), folder)

    @staticmethod
    def _add_checked(host: AdapterHost, folder: Path) -> AdapterInfo:
        try:
            return host.add(folder)
        except AdapterError:
            raise
        except (RuntimeError, KeyError, TypeError, ValueError, OSError) as err:  # e.g. tensor shapes that differ
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise AdapterError(f"adapter: {folder}: cannot be applied to base model {host.base.resolved.name} "
                               f"({reason})") from None

    def arena_context(self, config: ArenaConfig, *, model: str | None = None, strict_adapters: bool = True,
                      similarity: bool = True) -> ArenaContext:
        """Everything the variants of ``config`` need; parts that cannot load carry their reason instead. A knowledge
        base the variants would read that does not exist is refused first, before any model loads
        (``_check_index_exists``)."""
        specs = config.specs()
        if config.index:
            folder = self.resolve_index(config.index)  # no index name (or, confined, a folder elsewhere) fails here
            if any(STRATEGIES[spec.strategy].uses_retrieval for spec in specs):
                self._check_index_exists(config.index, folder)
        if config.few_shot_pool and self.instance is not None:  # a visitor: their own files and the demo splits
            self.check_sources([config.few_shot_pool], "few_shot_pool")
        checked: dict[str, Path | str] = {}  # adapter -> its checked run folder, or why it cannot be used
        for spec in specs:  # files first: a bad run fails before the base model loads
            if spec.adapter and spec.adapter not in checked:
                try:
                    checked[spec.adapter] = self.checked_run(spec.adapter)
                except (ValueError, OSError) as err:
                    if strict_adapters:
                        raise
                    checked[spec.adapter] = str(err)
        host = self.host(model)
        context = ArenaContext(host=host, scorer=self.scorer())
        if any(STRATEGIES[spec.strategy].uses_retrieval for spec in specs):
            if not config.index:
                context.index_error = "no knowledge base chosen (build one, or pass --index DIR)"
            else:
                try:
                    context.knowledge_base = self.knowledge_base(config.index)
                except (ValueError, OSError) as err:
                    context.index_error = f"knowledge base unavailable: {err}"
        shots = any(STRATEGIES[spec.strategy].uses_shots for spec in specs) and config.few_shot_k > 0
        nearest = any(STRATEGIES[spec.strategy].uses_nearest for spec in specs)
        if shots or nearest:
            similar = shots and config.few_shot_selection == "similar"  # the embedding model is required
            try:
                context.pool, context.pool_vectors = self.few_shot_pool(config.few_shot_pool, with_vectors=similar)
            except (ValueError, OSError) as err:
                raise ConfigError(f"few_shot_pool: {err}") from None
            if nearest and not similar and context.pool:  # nearest_answer: embeddings when they load, else words
                try:
                    context.pool, context.pool_vectors = self.few_shot_pool(config.few_shot_pool)
                    similar = True
                except (ValueError, OSError) as err:
                    logger.warning("nearest_answer: no embedding model (%s); the pool is matched by word overlap",
                                   err)
            if similar:
                embedder = self.embedder()
                context.embed = lambda texts: embedder.embed(texts)
        for adapter, folder in checked.items():
            if isinstance(folder, str):
                context.adapter_errors[adapter] = folder
                continue
            try:
                if is_classification_run(folder):  # its own model, answering with labels: never on the host
                    context.classifiers[adapter] = self._classifier_at(folder)
                else:
                    context.adapter_keys[adapter] = self._add_checked(host, folder).key
            except (ValueError, KeyError, OSError) as err:
                if strict_adapters:
                    raise
                context.adapter_errors[adapter] = str(err)
        if similarity:
            context.similarity_embedder = self.models.embedder()
        return context

    def _check_index_exists(self, index: str | Path, folder: Path) -> None:
        """ConfigError ``"index: no knowledge base 'X' in this workspace"`` when ``index``, a knowledge base of this
        workspace (a plain name; for a confined engine also a folder of its indexes/) or the shared demo, has no
        folder (``folder``: ``resolve_index(index)``). Not refused: the demo index before it is built (built on first
        use; until then rag says it is unavailable), and, unconfined, a folder path (``--index DIR``), whose rag is
        unavailable with the reason, as the CLI has always done."""
        text = str(index)
        if folder.exists() or folder.resolve() == self.workspace.demo_index.resolve():
            return
        if not self.confined and ("/" in text or "\\" in text or text in (".", "..")):
            return
        raise ConfigError(f"index: no knowledge base {Path(text).name[:200]!r} in this workspace")

    def arena(self, query: str, config: ArenaConfig | None = None, *, reference: str | None = None,
              task: str | None = None, input_text: str = "", model: str | None = None,
              on_text=None) -> ArenaResult:
        """One query through every variant of ``config``, side by side and scored against ``reference``."""
        config = config or ArenaConfig()
        if not query or not query.strip():
            raise ConfigError("query: is empty; type a question")
        context = self.arena_context(config, model=model)
        return run_query(query, config, context, reference=reference, task=task, input_text=input_text,
                         on_text=on_text)

    def eval_dir(self, out: str | Path) -> Path:
        """Where an evaluation is saved: ``out`` as given (the CLI's ``--out DIR``), or, for a confined engine, a
        plain name (or a folder) of the workspace's evals/ only."""
        if self.confined:
            return child_folder(self.workspace.evals, out, "eval")
        return Path(out).expanduser()

    def eval_report(self, eval_ref: str | Path, saved: dict[str, Any] | None = None) -> Path | None:
        """``<evaluation>/report.html`` (core.arena.report), rendered there from results.json (``saved``, or read)
        when an older evaluation lacks it; an existing one is left as it is. ``eval_ref``: a folder (``eval_dir``'s
        rule; the shared demo evaluation too). None when it cannot be written (a read-only folder) or there is no
        results.json to render it from: the rest of the evaluation still shows."""
        folder = self._eval_folder(eval_ref)
        path = folder / REPORT
        if path.is_file():
            return path
        try:
            saved = saved if saved is not None else load_eval(folder)
            write_atomic(path, render_html({**saved, "eval_dir": str(folder)}))
        except (OSError, ValueError) as err:
            logger.warning("could not write %s: %s", path, one_line(err))
            return None
        return path

    def _eval_folder(self, eval_ref: str | Path) -> Path:
        """A saved evaluation's folder: ``eval_dir``'s rule, or the (shared) demo evaluation."""
        if Path(eval_ref).resolve() == self.workspace.demo_eval.resolve():
            return self.workspace.demo_eval
        return self.eval_dir(eval_ref)

    def list_evals(self) -> list[dict]:
        """Saved evaluations under evals/, newest first: folder, data, n, variants, adapters, summary means."""
        rows = []
        folders = sorted(self.workspace.evals.iterdir(), reverse=True)
        if self.workspace.shared is not None and self.workspace.demo_eval.is_dir():  # a visitor: the shared demo too
            folders.append(self.workspace.demo_eval)
        for folder in folders:
            path = folder / "results.json"
            if folder.name.startswith(".") or folder.is_symlink() or not path.is_file():
                continue  # hidden or temporary folders, and links that may lead out of the workspace
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                rows.append({"name": folder.name, "folder": str(folder), "error": f"unreadable results.json: {err}"})
                continue
            config = saved.get("config") or {}
            rows.append({"name": folder.name, "folder": str(folder), "data": saved.get("data"), "n": saved.get("n"),
                         "variants": list(saved.get("summary") or {}), "adapters": config.get("adapters") or [],
                         "summary": saved.get("summary") or {}, "by_task": saved.get("by_task") or {},
                         "wall_s": saved.get("wall_s")})
        return rows

    def evaluate(self, data: str | Path, config: ArenaConfig | None = None, *, out: str | Path | None = None,
                 limit: int | None = None, tasks: list[str] | None = None, model: str | None = None,
                 on_progress=None) -> EvalResult:
        """Run ``config``'s variants over a test file; saved under ``out`` (default: a new folder in evals/; see
        ``eval_dir``)."""
        config = config or ArenaConfig()
        folder = self.eval_dir(out) if out else None
        if self.instance is not None:  # a visitor evaluates what the app offers them: their uploads, the demo splits
            self.check_sources([data], "data")
        if limit is not None and limit < 1:
            raise ConfigError(f"limit: must be at least 1, got {limit}")
        examples = load_examples(data).examples
        if tasks:
            examples = [example for example in examples if example.task in tasks]
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            raise ConfigError(f"data: {data} has no examples to evaluate" + (f" for tasks {tasks}" if tasks else ""))
        most = max_eval_rows()
        if len(examples) > most:  # before any model loads
            raise ConfigError(f"data: {Path(data).name} has {len(examples)} examples to evaluate, over the {most} "
                             "one evaluation takes; evaluate the first N (limit, --limit) or raise "
                             "TUNE_ARENA_MAX_EVAL_ROWS")
        folder = folder or self.workspace.evals / new_eval_id(data)
        if self.quota is not None:
            self.quota.check_disk()
        writable_folder(folder.parent)  # a place that cannot take the results is refused before any model loads
        context = self.arena_context(config, model=model)
        kb = context.knowledge_base
        in_index = None if kb is None else (  # the slice rule: is a row's source document in the knowledge base?
            lambda source: any(source_matches(document, source) for document in kb.documents))
        return run_eval(examples, config, context, folder, data_path=str(data), on_progress=on_progress,
                        source_in_index=in_index)
