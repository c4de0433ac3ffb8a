"""The one engine object a process holds: workspace, shared models. The UI and CLI call into it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from core.arena import ArenaConfig, ArenaContext, ArenaResult, run_query
from core.data import Example, demo_path, load_examples
from core.evals import EvalResult, max_eval_rows, new_eval_id, run_eval
from core.generation import AdapterError, AdapterHost, AdapterInfo, GenerationConfig, Reply
from core.jobs import TrainingJobs
from core.models import LoadedModel, ModelManager
from core.runs import RunStore
from core.training import TrainingConfig, TrainResult, resume, train
from core.uploads import store_upload
from core.workspace import Workspace, check_name, child_folder
from retrieval import BuildResult, KnowledgeBase, SentenceTransformerEmbedder, build_index, read_manifest

logger = logging.getLogger(__name__)

DEMO_INDEX = "demo"  # indexes/demo: the demo corpus, built on first use
DEMO_RUN = "demo-quick-lora"  # runs/demo-quick-lora: the shipped demo adapter (assets/demo/run-quick-lora)


class Engine:
    """Owns every piece of mutable state of a process: the workspace and the loaded models.

    Nothing loads in ``__init__``; models load on first use and are shared afterwards.

    Runs, indexes and evaluation folders are named by their folder name in the workspace (``demo``). The CLI and
    Python callers may also give a folder path (anything with a slash); a ``confined`` engine (the app's: its
    callers are remote users) takes only names, or paths that resolve to a folder of its own workspace.
    """

    def __init__(self, workspace: str | Path | None = None, *, device: str | None = None,
                 dtype: str | None = None, confined: bool = False) -> None:
        self.workspace = Workspace.open(workspace)
        self.confined = confined
        self.models = ModelManager(device=device, dtype=dtype)
        self.runs = RunStore(self.workspace.runs)
        self._kb_lock = threading.Lock()
        self._knowledge_bases: dict[str, tuple[int, KnowledgeBase]] = {}
        self._hosts: dict[str, AdapterHost] = {}
        self._pools: dict[str, tuple[list[Example], object]] = {}
        self._scorer = None
        self._lock = threading.Lock()
        self._demo_lock = threading.Lock()
        self.jobs = TrainingJobs(self.train, self.resume, self.workspace.runs)  # the app's one background trainer

    def base_model(self, name: str | None = None) -> LoadedModel:
        """The shared base model (default: ``$TUNE_ARENA_MODEL`` or SmolLM2-135M-Instruct). Generate through
        ``host()``: once a LoRA adapter is loaded its layers sit inside this model."""
        return self.models.base(name)

    def ask(self, prompt: str, *, system: str | None = None, model: str | None = None,
            generation: GenerationConfig | None = None) -> Reply:
        """Answer one prompt with the base model through its chat template."""
        if not prompt or not prompt.strip():
            raise ValueError("prompt: is empty; type a question")
        host = self.host(model)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        rendered = host.render(messages)
        generated = host.generate([rendered], [None], generation)[0]
        return Reply(generated.text, rendered, generated.new_tokens, generated.batch_s)

    def train(self, config: TrainingConfig, **kwargs) -> TrainResult:
        """Train a new run in this workspace (``kwargs``: run_dir, on_step, on_eval, stop_event; see core.training)."""
        return train(config, runs_root=self.workspace.runs, **kwargs)

    def resume(self, run: str | Path, **kwargs) -> TrainResult:
        """Continue a stopped or killed run of this workspace from its latest checkpoint."""
        return resume(self.runs.get(run).path, **kwargs)

    def store_upload(self, source: str | Path, kind: str, *, name: str | None = None) -> Path:
        """Keep a user's file under ``uploads/<kind>/`` (kind: datasets or documents) with a safe name."""
        return store_upload(self.workspace.uploads, source, kind, name=name)

    # ---- retrieval ---------------------------------------------------------------------------------------------

    def embedder(self, name: str | None = None) -> SentenceTransformerEmbedder:
        """The shared embedding model (default: bundled all-MiniLM-L6-v2) as a retrieval Embedder."""
        from core.models import default_embedding_model

        name = name or default_embedding_model()
        return SentenceTransformerEmbedder(self.models.embedder(name), name)

    def index_dir(self, name: str) -> Path:
        """``<workspace>/indexes/<name>`` for a plain index name; ValueError for anything else (``../x``, ``/etc``,
        ``a/b``, ``.hidden``, NUL, empty, over 128 characters): a name never leads out of indexes/."""
        return self.workspace.indexes / check_name(name, "index")

    def resolve_index(self, index: str | Path) -> Path:
        """The folder of ``index``: a plain name is ``indexes/<name>``; a path (with a slash, or ``.``/``..``) is
        taken as given, except by a confined engine, which accepts only folders of its indexes/."""
        text = str(index)
        if self.confined:
            return child_folder(self.workspace.indexes, text, "index")
        if "/" in text or "\\" in text or text in (".", ".."):
            return Path(text).expanduser()
        return self.index_dir(text)

    def document_roots(self) -> list[Path]:
        """Where a confined engine reads documents from: the workspace, the bundled demo corpus and the folders in
        ``$TUNE_ARENA_DOC_ROOTS`` (separated by ``os.pathsep``; what the person running the app chooses to share)."""
        extra = [Path(part).expanduser() for part in os.environ.get("TUNE_ARENA_DOC_ROOTS", "").split(os.pathsep)
                 if part.strip()]
        return [self.workspace.root, demo_path("corpus"), *extra]

    def check_sources(self, paths: Iterable[str | Path]) -> list[Path]:
        """The document paths, each (after symlinks and ``..``) inside ``document_roots`` when the engine is confined:
        a remote user of the app cannot index (and then read back) files elsewhere on the server."""
        paths = [Path(path).expanduser() for path in paths]
        if not self.confined:
            return paths
        roots = [root.resolve() for root in self.document_roots()]
        for path in paths:
            resolved = path.resolve()
            if not any(resolved == root or root in resolved.parents for root in roots):
                raise ValueError(f"documents: {str(path)[:200]} is outside the folders this app may read (its "
                                 "workspace and the demo corpus; more with TUNE_ARENA_DOC_ROOTS): upload the files")
        return paths

    def build_index(self, paths: Iterable[str | Path], out: str | Path, *, embedding_model: str | None = None,
                    **kwargs) -> BuildResult:
        """Build or update an index (``kwargs``: index_config, chunking, text_column, rebuild, on_progress)."""
        folder = self.resolve_index(out)
        paths = self.check_sources(paths)
        # the model loads only when some document could be read: bad uploads fail fast
        result = build_index(paths, folder, lambda: self.embedder(embedding_model), **kwargs)
        with self._kb_lock:
            self._knowledge_bases.pop(str(folder.resolve()), None)
        return result

    def install_demo_run(self) -> Path:
        """The shipped demo adapter as ``runs/demo-quick-lora``, copied there once (copy, then one rename)."""
        import shutil
        import tempfile

        target = self.workspace.runs / DEMO_RUN
        if (target / "config.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{DEMO_RUN}-", dir=self.workspace.runs))
        try:
            shutil.copytree(demo_path("run-quick-lora"), staging / DEMO_RUN)
            os.replace(staging / DEMO_RUN, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process may have installed it meanwhile
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("installed the demo adapter run at %s", target)
        return target

    def ensure_demo_index(self, on_progress=None) -> Path:
        """The demo corpus's index at ``indexes/demo``, built once (about 15 s on 2 cores) if it is not there."""
        folder = self.workspace.indexes / DEMO_INDEX
        with self._demo_lock:
            if not (folder / "manifest.json").is_file():
                self.build_index([str(demo_path("corpus"))], folder, on_progress=on_progress)
        return folder

    def knowledge_base(self, name_or_path: str | Path) -> KnowledgeBase:
        """A loaded index, cached until its manifest changes on disk (an index is never re-read per query). The
        embedding model named in its manifest loads only once the index files have been read and checked."""
        folder = self.resolve_index(name_or_path)
        read_manifest(folder)
        key = str(folder.resolve())
        stamp = (folder / "manifest.json").stat().st_mtime_ns
        with self._kb_lock:
            cached = self._knowledge_bases.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        kb = KnowledgeBase.load(folder, self.embedder)
        with self._kb_lock:
            self._knowledge_bases[key] = (stamp, kb)
        return kb

    def list_indexes(self) -> list[dict]:
        """Stats of every index folder under the workspace's indexes/."""
        rows = []
        for folder in sorted(self.workspace.indexes.iterdir()):
            if folder.name.startswith(".") or folder.is_symlink() or not (folder / "manifest.json").is_file():
                continue  # hidden or temporary folders, and links that may lead out of the workspace
            try:
                manifest = read_manifest(folder)
            except ValueError as err:
                rows.append({"name": folder.name, "folder": str(folder), "error": str(err)})
                continue
            rows.append({"name": folder.name, "folder": str(folder), "embedding_model": manifest["embedding_model"],
                         "index_type": manifest.get("index", {}).get("index_type"), **manifest.get("counts", {}),
                         "updated": manifest.get("updated")})
        return rows

    # ---- arena and evaluation ----------------------------------------------------------------------------------

    def host(self, model: str | None = None) -> AdapterHost:
        """The inference owner of the shared base model ``model`` (all generation on it goes through here)."""
        from core.models import default_base_model

        key = model or default_base_model()
        loaded = self.base_model(model)
        with self._lock:
            if key not in self._hosts:
                self._hosts[key] = AdapterHost(loaded)
            return self._hosts[key]

    def scorer(self):
        """The shared metrics Scorer (evaluate modules load on first use)."""
        from core.metrics import Scorer

        with self._lock:
            if self._scorer is None:
                self._scorer = Scorer()
            return self._scorer

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

    def resolve_run(self, run: str | Path) -> Path:
        """A run folder: a run id of this workspace, or a run folder path (with a slash) unless the engine is
        confined, which accepts only folders of its own runs/."""
        text = str(run)
        if not self.confined and ("/" in text or "\\" in text):
            path = Path(text).expanduser()
            if not (path / "config.json").is_file():
                raise ValueError(f"run: {text} is not a run folder (no config.json)")
            return path
        return self.runs.get(text).path

    def checked_run(self, run: str | Path) -> Path:
        """``resolve_run``, then the run's weights checked on disk (core.artifacts: safetensors whole, JSON valid,
        no pickle): AdapterError with one line naming the file otherwise. Nothing is loaded."""
        from core.artifacts import check_run_weights

        folder = self.resolve_run(run)
        check_run_weights(folder)
        return folder

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
        """Everything the variants of ``config`` need; parts that cannot load carry their reason instead."""
        from core.arena import STRATEGIES

        specs = config.specs()
        if config.index:
            self.resolve_index(config.index)  # a name that is no index name (or, confined, a folder elsewhere) fails
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
        if any(STRATEGIES[spec.strategy].uses_shots for spec in specs) and config.few_shot_k > 0:
            try:
                similar = config.few_shot_selection == "similar"
                context.pool, context.pool_vectors = self.few_shot_pool(config.few_shot_pool, with_vectors=similar)
            except (ValueError, OSError) as err:
                raise ValueError(f"few_shot_pool: {err}") from None
            if similar:
                embedder = self.embedder()
                context.embed = lambda texts: embedder.embed(texts)
        for adapter, folder in checked.items():
            if isinstance(folder, str):
                context.adapter_errors[adapter] = folder
                continue
            try:
                context.adapter_keys[adapter] = self._add_checked(host, folder).key
            except (ValueError, KeyError, OSError) as err:
                if strict_adapters:
                    raise
                context.adapter_errors[adapter] = str(err)
        if similarity:
            context.similarity_embedder = self.models.embedder()
        return context

    def arena(self, query: str, config: ArenaConfig | None = None, *, reference: str | None = None,
              task: str | None = None, input_text: str = "", model: str | None = None,
              on_text=None) -> ArenaResult:
        """One query through every variant of ``config``, side by side and scored against ``reference``."""
        config = config or ArenaConfig()
        if not query or not query.strip():
            raise ValueError("query: is empty; type a question")
        context = self.arena_context(config, model=model)
        return run_query(query, config, context, reference=reference, task=task, input_text=input_text,
                         on_text=on_text)

    def eval_dir(self, out: str | Path) -> Path:
        """Where an evaluation is saved: ``out`` as given (the CLI's ``--out DIR``), or, for a confined engine, a
        plain name (or a folder) of the workspace's evals/ only."""
        if self.confined:
            return child_folder(self.workspace.evals, out, "eval")
        return Path(out).expanduser()

    def list_evals(self) -> list[dict]:
        """Saved evaluations under evals/, newest first: folder, data, n, variants, adapters, summary means."""
        import json

        rows = []
        for folder in sorted(self.workspace.evals.iterdir(), reverse=True):
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
        if limit is not None and limit < 1:
            raise ValueError(f"limit: must be at least 1, got {limit}")
        examples = load_examples(data).examples
        if tasks:
            examples = [example for example in examples if example.task in tasks]
        if limit is not None:
            examples = examples[:limit]
        if not examples:
            raise ValueError(f"data: {data} has no examples to evaluate" + (f" for tasks {tasks}" if tasks else ""))
        most = max_eval_rows()
        if len(examples) > most:  # before any model loads
            raise ValueError(f"data: {Path(data).name} has {len(examples)} examples to evaluate, over the {most} "
                             "one evaluation takes; evaluate the first N (limit, --limit) or raise "
                             "TUNE_ARENA_MAX_EVAL_ROWS")
        context = self.arena_context(config, model=model)
        folder = folder or self.workspace.evals / new_eval_id(data)
        return run_eval(examples, config, context, folder, data_path=str(data), on_progress=on_progress)
