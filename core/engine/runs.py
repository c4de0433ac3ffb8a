"""The engine's runs: training and resuming in this workspace, the shipped demo run, and resolving run references
(a run id, or a folder path for an unconfined engine)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from core.data import demo_path
from core.engine.catalogue import catalogue, run_details
from core.engine.jobs import JobState
from core.errors import ConfigError, NameRuleError, RunStateError
from core.inference import merge_and_export, merge_refusal
from core.io import atomic_folder, read_json, write_json
from core.methods.artifacts import check_run_weights
from core.models import load_tokenizer
from core.runs import Run, RunStore
from core.training import TrainingConfig, TrainingResources, TrainResult, prepare_data, resume, train
from core.training.teachers import TeacherSource, check_teacher, is_run_folder, student_base_config

logger = logging.getLogger(__name__)

CONTEXT_PASSAGES = 3  # passages the teacher of a context-distillation run reads (the arena's rag_k default)


class RunsMixin:
    """Training runs of an Engine (see core.engine.engine.Engine for the state it holds)."""

    def train(self, config: TrainingConfig, **kwargs) -> TrainResult:
        """Train a new run in this workspace (``kwargs``: run_dir, on_step, on_eval, stop_event; see core.training).
        A distillation run gets its teacher and retriever from here (``training_resources``)."""
        config, resources = self._training_inputs(config)
        kwargs.setdefault("resources", resources)
        if self.quota is not None:  # a visitor: the steps one job may take on a CPU instance, and what it may write
            kwargs.setdefault("step_limit", self.quota.step_limit())
            kwargs.setdefault("disk_check", self.quota.check_disk)
        return train(config, runs_root=self.workspace.runs, **kwargs)

    def check_training(self, config: TrainingConfig) -> TrainingConfig:
        """Everything ``train`` refuses before a run folder exists, without training: the sources a visitor may use,
        the objective's resources (a distillation teacher found and fitting the student), the quota, and the data
        files read, split and encoded with the base model's tokenizer (core.training.prepare_data). Returns the
        config as ``train`` runs it (a distillation student's ``base_model`` set). One line (DataError,
        ConfigError, ...) for the first problem. The CLI calls it before it launches a data-parallel job, so a bad
        file is one error before any process starts rather than one per process."""
        checked, _ = self._training_inputs(config)
        prepare_data(checked, lambda: load_tokenizer(checked.base_model))
        return checked

    def check_resume(self, run: str | Path) -> Run:
        """The run ``resume`` would continue, after what it refuses before any process starts (not found, no
        checkpoint, still running, finished): one line for the first problem, as the Train tab's Resume says it."""
        found = self.find_run(run)
        found.check_resumable()
        return found

    def _training_inputs(self, config: TrainingConfig) -> tuple[TrainingConfig, TrainingResources | None]:
        """``training_resources`` after a visitor's checks (their uploads and the demo splits only), then the
        visitor's disk quota: the checks ``train`` and ``check_training`` share."""
        if self.instance is not None:  # a visitor trains on what the app offers them: their uploads, the demo splits
            self.check_sources([path for path in (config.data, config.val_data) if path], "data")
        config, resources = self.training_resources(config)
        if self.quota is not None:  # a visitor: the disk quota
            self.quota.check_training(config)
        return config, resources

    def resume(self, run: str | Path, **kwargs) -> TrainResult:
        """Continue a stopped or killed run from its latest checkpoint (a run id; unconfined: also a run folder).
        A distillation run's teacher is loaded again (its cached logits, if any, are reused)."""
        found = self.find_run(run)
        values = {key: value for key, value in found.config.items() if key != "format"}
        if values.get("objective") == "distillation":
            kwargs.setdefault("resources", self.training_resources(TrainingConfig.from_dict(values))[1])
        return resume(found.path, **kwargs)

    def teacher_source(self, teacher: str) -> TeacherSource:
        """A distillation teacher: a run of this workspace (its id; unconfined: also a run folder), else a model (a
        registry name, hub id or folder)."""
        text = str(teacher).strip()
        if "/" not in text and "\\" not in text and (is_run_folder(self.workspace.runs / text)
                                                   or self.runs.shared_run(text) is not None):
            return TeacherSource(text, self.find_run(text).path)
        if not self.confined and is_run_folder(Path(text).expanduser()):
            return TeacherSource(text, self.find_run(text).path)
        return TeacherSource(text)

    def training_resources(self, config: TrainingConfig) -> tuple[TrainingConfig, TrainingResources | None]:
        """(``config``, what its objective needs from the engine). Distillation: the teacher (a run or a model,
        checked before any run folder exists: found, same tokenizer as the student, more blocks than the student),
        ``base_model`` set to the model the student starts from, and for ``teacher_context`` rag a retriever over
        the ``index`` (a workspace index name or, unconfined, a folder) giving the passages as the arena's RAG
        prompt shows them."""
        if config.objective != "distillation":
            return config, None
        source = self.teacher_source(config.teacher)
        config = student_base_config(config, source)
        check_teacher(config, source)
        retrieve = None
        if config.teacher_context == "rag":
            try:
                knowledge_base = self.knowledge_base(config.index)
            except ValueError as err:
                raise ConfigError(f"index: {str(err).splitlines()[0]}") from None

            def retrieve(question: str) -> list[str]:
                hits = knowledge_base.search(question, CONTEXT_PASSAGES)
                return [f"(source: {hit.chunk.source.rsplit('/', 1)[-1]}) {' '.join(hit.chunk.text.split())}"
                        for hit in hits]

        device = config.device

        def load_teacher():
            return source.load(device, "fp32")

        return config, TrainingResources(load_teacher=load_teacher, retrieve=retrieve)

    def resume_job(self, run: str | Path) -> JobState:
        """Continue a run in the background job (the app's Train tab); refused as ``resume`` refuses it."""
        return self.jobs.resume(self.find_run(run).path)

    def install_demo_run(self) -> Path:
        """The shipped demo adapter as ``runs/demo-quick-lora``, copied there once (core.io.atomic_folder: a copy,
        then one rename; a copy another process finished first is kept)."""
        target = self.workspace.demo_run
        if (target / "config.json").is_file():
            return target
        with atomic_folder(target, replace=lambda folder: not (folder / "config.json").is_file()) as staging:
            shutil.copytree(demo_path("run-quick-lora"), staging, dirs_exist_ok=True)
        logger.info("installed the demo adapter run at %s", target)
        return target

    def install_demo_eval(self) -> Path | None:
        """The shipped demo evaluation (assets/demo/eval-demo, made by the command in its README) as
        ``evals/demo-eval``, copied there once, so the Evaluate tab opens on a verdict before anything runs.
        None when this checkout ships none."""
        source = demo_path("eval-demo")
        target = self.workspace.demo_eval
        if (target / "results.json").is_file() or not (source / "results.json").is_file():
            return target if (target / "results.json").is_file() else None
        with atomic_folder(target, replace=lambda folder: not (folder / "results.json").is_file()) as staging:
            for name in ("report.html", "summary.csv", "examples.csv", "chart.png", "report.md"):
                if (source / name).is_file():
                    shutil.copy2(source / name, staging / name)
            saved = read_json(source / "results.json")
            saved.update(eval_dir=str(target), report=str(target / "report.html"))  # where it now lives
            write_json(staging / "results.json", saved)
            shutil.copystat(source / "results.json", staging / "results.json")  # the date it was made
        logger.info("installed the demo evaluation at %s", target)
        return target

    def resolve_run(self, run: str | Path) -> Path:
        """A run folder: a run id of this workspace, or a run folder path (with a slash) unless the engine is
        confined, which accepts only folders of its own runs/."""
        text = str(run)
        if not self.confined and ("/" in text or "\\" in text):
            path = Path(text).expanduser()
            if not (path / "config.json").is_file():
                raise RunStateError(f"run: {text} is not a run folder (no config.json)")
            return path
        return self.runs.get(text).path

    def checked_run(self, run: str | Path) -> Path:
        """``resolve_run``, then the run's weights checked on disk (core.artifacts: safetensors whole, JSON valid,
        no pickle): AdapterError with one line naming the file otherwise. Nothing is loaded."""
        folder = self.resolve_run(run)
        check_run_weights(folder)
        return folder

    def list_runs(self, runs_root: str | Path | None = None) -> list[dict]:
        """The run catalogue, newest first: one row per run folder (core.engine.catalogue.ROW_KEYS; the CLI's
        ``runs --json`` rows are these), with the scores of the newest evaluation of this workspace that used it and
        the run's ``forgetting`` from the newest benchmark that has it (``forgetting_index``).
        A folder that cannot be read gives a row with state ``unreadable`` and its ``error``. ``runs_root`` lists
        another runs folder: an unconfined engine only (a confined one lists its own runs/ alone)."""
        store = self.runs
        if runs_root is not None:
            root = Path(runs_root).expanduser()
            if self.confined and root.resolve() != self.runs.root.resolve():
                raise NameRuleError(f"runs: {str(runs_root)[:200]!r} is not this workspace's runs/ folder")
            if root.exists() and not root.is_dir():
                raise ConfigError(f"runs: {root} is not a folder")
            store = RunStore(root)
        rows = catalogue(store.list(), self.list_evals())
        forgetting = self.forgetting_index()
        for row in rows:
            row["forgetting"] = forgetting.get(row["run_id"])
        return rows

    def run_details(self, run: str | Path) -> dict:
        """One run in full (``find_run``'s rules): its catalogue ``row``, ``config``, ``card``, ``files``, loss curves,
        why it cannot be merged (``merge_refusal``, None when it can) and its ``export_dir``. See
        core.engine.catalogue.run_details."""
        found = self.find_run(run)
        details = run_details(found, self.list_evals(), self.export_dir(found))
        details["row"]["forgetting"] = self.forgetting(found.run_id)
        return details

    def training_config(self, values: dict, *, preset: str | None = None) -> TrainingConfig:
        """A TrainingConfig from a person's choices (``TrainingConfig.build``: preset < values < method settings)."""
        return TrainingConfig.build(values, preset=preset)

    def find_run(self, run: str | Path) -> Run:
        """A run of this workspace by id; an unconfined engine also takes a run folder path (anywhere, for the
        CLI's ``--runs DIR``). A confined engine takes only the ids of its own runs/."""
        text = str(run).strip()
        if not text:
            raise RunStateError("run: choose a run first")
        if not self.confined and ("/" in text or "\\" in text):
            path = Path(text).expanduser()
            return RunStore(path.parent).get(path)
        if "/" in text or "\\" in text:
            raise NameRuleError(f"run: {text[:200]!r} is not a run id of this workspace (give its folder name under "
                                "runs/)")
        return self.runs.get(text)

    def delete_run(self, run: str | Path) -> str:
        """Delete a run (``RunStore.delete``: a running run is refused). Returns its id."""
        found = self.find_run(run)
        if self.workspace.is_shared(found.path):
            raise RunStateError(f"run: {found.run_id} is shared by every visitor of this app (read-only)")
        if self.jobs.snapshot().active and self.jobs.snapshot().run_dir == str(found.path):
            raise RunStateError(f"run: {found.run_id} is running; stop it before deleting")
        RunStore(found.path.parent).delete(found.path)
        for host in list(self._hosts.values()):
            for key, info in list(host.adapters.items()):
                if Path(info.run_dir).resolve() == found.path.resolve():
                    host.remove(key)
        return found.run_id

    def export_dir(self, run: Run) -> Path:
        """Where a merged run goes by default: ``<workspace>/exports/<run id>-merged``."""
        return self.workspace.exports / f"{run.run_id}-merged"

    def merge_run(self, run: str | Path, out: str | Path | None = None) -> Path:
        """Merge a LoRA-family (or layer-wise) run into its base model and save a standalone model folder at
        ``out`` (default and, for a confined engine, always: ``export_dir``). Refused, with one line, where
        ``core.inference.merge_refusal`` says so and when the folder is not new or empty."""
        found = self.find_run(run)
        refusal = merge_refusal(found)
        if refusal:
            raise RunStateError(refusal)
        target = self.export_dir(found) if out is None or self.confined else Path(out).expanduser()
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"out: {target} already exists; delete it first to export {found.run_id} again")
        if self.quota is not None:  # a merged model is saved in float32: 4 bytes a parameter
            params = (found.result or {}).get("total_params") or 0
            self.quota.check_disk(int(params) * 4, "the merged model")
        return merge_and_export(found.path, target)
