"""Train tab: pick or upload a dataset (previewed and validated), a method and its settings, then Start / Stop /
Resume a run that trains in the engine's background worker while a timer polls its live loss curves.

Layout and wiring only: widget values -> ``engine.training_config`` (preset < form < method settings; the method
settings are typed by their config class) -> ``engine.jobs`` -> a snapshot rendered as a progress bar, a status line
and the loss chart of ``core.charts``.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.charts import loss_curves_svg
from core.data import DataError, demo_path, load_examples
from core.engine import Engine
from core.engine.jobs import JobState
from core.engine.uploads import list_uploads
from core.errors import JobBusyError
from core.methods import METHODS, get_method
from core.text import fmt_duration, one_line
from core.training import OBJECTIVES, SCHEDULERS, TrainingConfig, get_objective, list_presets, load_preset
from core.training.config import DPO_LOSSES, TEACHER_CONTEXTS
from core.training.dpo import read_pairs
from ui.common import field_default, field_help, index_choices, run_choices
from ui.visitors import scoped

HOLD_OUT = "__hold_out__"
NOT_OFFERED = "<span class='ta-error'>✗ not one of the datasets offered here: upload it first</span>"
HOLD_OUT_LABEL = "hold out 10% of the training data"
CHOICES_FOR = {"quant_type": ["nf4", "fp4"], "bits": [4, 8], "encoder_type": ["MLP", "LSTM"],
               "init": ["text", "random"]}
PREVIEW_ROWS = 5
DEFAULT_PRESET = "quick-lora"
VOTES_PRESET = "dpo"  # "Train from votes": the preference-tuning preset, when this checkout ships it
OBJECTIVE_LABELS = {  # the widget labels of the objectives' own fields (their help is the field's, as in the CLI)
    "text_column": "Text column", "label_column": "Label column", "teacher": "Teacher (run or model)",
    "student": "Student model (empty = a shrunk copy of the teacher)",
    "student_layers": "Student layers (0 = use the student model)", "distill_alpha": "KL weight (alpha)",
    "distill_temperature": "Temperature", "teacher_context": "Teacher context",
    "index": "Knowledge base the teacher reads", "teacher_top_k": "Cache the teacher's top-K logits (0 = on the fly)",
    "dpo_beta": "DPO beta (β: how far from the reference)", "dpo_loss": "Preference loss",
    "max_prompt_length": "Most prompt tokens (0 = only max length cuts)",
}


# ---- pure helpers (tested without a server) -------------------------------------------------------------------------


def dataset_choices(engine: Engine) -> list[tuple[str, str]]:
    """(label, path) of the demo splits and every uploaded dataset."""
    demo = [("demo train set (389 rows: QA, summaries, labels)", str(demo_path("train.jsonl"))),
            ("demo validation set", str(demo_path("validation.jsonl")))]
    if demo_path("preferences.jsonl").is_file():  # what the DPO objective trains on
        demo.append(("demo preference pairs (60: prompt, chosen, rejected; for DPO)",
                     str(demo_path("preferences.jsonl"))))
    return demo + [(f"uploaded: {path.name}", str(path)) for path in list_uploads(engine.workspace.uploads, "datasets")]


def describe_dataset(path: str | None) -> tuple[str, pd.DataFrame]:
    """A one-line summary (or the loader's one-line error) and the first rows of a dataset file."""
    empty = pd.DataFrame(columns=["task", "instruction", "input", "output"])
    if not path:
        return "", empty
    try:
        dataset = load_examples(path)
    except (DataError, ValueError, OSError) as err:
        try:  # a preference file (prompt, chosen, rejected) is not instruction data: the DPO objective reads it
            pairs = read_pairs(path)
        except (DataError, ValueError, OSError):
            return f"<span class='ta-error'>✗ {html.escape(one_line(err))}</span>", empty
        rows = [{"task": pair.task or "", "instruction": pair.prompt, "input": "",
                 "output": f"✓ {pair.chosen}  ✗ {pair.rejected}"} for pair in pairs[:PREVIEW_ROWS]]
        return (f"✓ {len(pairs)} preference pairs (prompt, chosen ✓, rejected ✗): train them with the "
                "Preference tuning (dpo) objective", pd.DataFrame(rows, columns=list(empty.columns)))
    tasks = ", ".join(f"{task} {count}" for task, count in sorted(dataset.tasks().items()))
    rows = [{"task": ex.task or "", "instruction": ex.instruction, "input": ex.input, "output": ex.output or ""}
            for ex in dataset.examples[:PREVIEW_ROWS]]
    line = f"✓ {len(dataset)} examples, {dataset.shape} shape ({html.escape(tasks)})"
    return line, pd.DataFrame(rows, columns=list(empty.columns))


def form_values(data: str | None, val_data: str | None, method: str, method_config: dict[str, Any], *,
                base_model: str | None = "", epochs: float | None = None, max_steps: int | None = None,
                learning_rate: float | None = None, batch_size: int | None = None, grad_accum: int | None = None,
                max_length: int | None = None, scheduler: str | None = None, warmup_ratio: float | None = None,
                seed: int | None = None, gradient_checkpointing: bool | None = None, objective: str | None = None,
                objective_values: dict[str, Any] | None = None,
                hybrid_values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The form's widget values as ``TrainingConfig.build`` values (None = not set: the preset's or the default).

    What the widgets mean: the hold-out choice is no validation file, 0 max steps is "by epochs", 0 learning rate is
    "the preset's, else the method's default", an empty base model is the bundled one. ``method_config`` is passed
    as the widgets give it (numbers, text): the method's config class types and checks it. ``objective_values``:
    the chosen objective's own fields (``Objective.fields``; an empty text or a 0 student-layers is "not set");
    ``hybrid_values``: layer-wise learning-rate decay and gradual unfreezing."""
    own = {}
    for name, value in (objective_values or {}).items():
        if isinstance(value, str):
            value = value.strip() or None
        if name == "student_layers" and not value:
            value = None
        own[name] = value
    return {"data": data or None, "val_data": None if not val_data or val_data == HOLD_OUT else val_data,
            "method": method, "method_config": dict(method_config), "base_model": (base_model or "").strip() or None,
            "epochs": epochs or None, "max_steps": max_steps or None, "learning_rate": learning_rate or None,
            "batch_size": batch_size, "grad_accum": grad_accum, "max_length": max_length, "scheduler": scheduler,
            "warmup_ratio": warmup_ratio, "seed": seed, "gradient_checkpointing": gradient_checkpointing,
            "objective": objective or None, **own, **(hybrid_values or {})}


def preset_method(name: str | None) -> str | None:
    """The method a preset trains (None for no preset)."""
    return load_preset(name)["config"].get("method", "lora") if name else None


def reward_line(result: dict[str, Any]) -> str:
    """A DPO run's implicit reward accuracy and margin, and which pairs they were measured on (core.training.dpo:
    the validation pairs, or the training pairs when none were held out); '' for other runs."""
    if result.get("reward_accuracy") is None:
        return ""
    if result.get("reward_measured_on") == "train":
        where = ("on its training pairs, none held out for validation: how well it learnt them, not how "
                 "well it generalises")
    else:
        where = f"on {result.get('val_pairs')} validation pairs"
    margin = result.get("reward_margin")
    return (f"<div class='ta-reward'>Reward accuracy <b>{result['reward_accuracy']:.0%}</b>"
            + (f", margin {margin:+.3f}" if margin is not None else "") + f" ({html.escape(where)})</div>")


def render_progress(state: JobState, now: float | None = None) -> str:
    """The progress bar and status line of a job snapshot (HTML)."""
    if state.state == "idle":
        return "<div class='ta-job'>No training yet. Choose a dataset and a method, then Start.</div>"
    head = f"<b>{html.escape(state.run_id or '')}</b> ({html.escape(state.method or '')}) · "
    if state.state == "queued":  # a shared app: waiting its turn behind other visitors' jobs
        ahead = state.ahead
        turn = f"starts after {ahead} other job{'s' if ahead != 1 else ''}" if ahead else "starts next"
        return (f"<div class='ta-job'>{head}<span class='ta-state ta-queued'>queued</span> · {turn}"
                "<div class='ta-why'>Stop takes it out of the queue.</div></div>")
    if state.state == "cancelled":  # taken out of the queue by Stop: nothing ran, nothing failed
        return f"<div class='ta-job'>{head}<span class='ta-state ta-cancelled'>cancelled before it started</span></div>"
    done = state.step / state.total if state.total else 0.0
    if state.state == "completed":
        done = 1.0
    elapsed = ((state.finished or now or time.time()) - state.started) if state.started else None
    parts = [f"{head}<span class='ta-state ta-{state.state}'>{state.state}</span>"]
    if state.total:
        parts.append(f"step {state.step}/{state.total}")
    if state.loss is not None:
        parts.append(f"loss {state.loss:.4f}")
    if state.val_curve:
        parts.append(f"val loss {state.val_curve[-1][1]:.4f}")
    if state.tokens_per_s:
        parts.append(f"{state.tokens_per_s:.0f} tokens/s")
    if state.active and state.eta_s is not None and state.total:
        parts.append(f"ETA {fmt_duration(state.eta_s)}")
    parts.append(f"elapsed {fmt_duration(elapsed) or '–'}")
    line = " · ".join(parts)
    if state.error:
        line += f"<div class='ta-error'>✗ {html.escape(state.error)}</div>"
    if state.state == "preparing":
        line += "<div class='ta-why'>Loading the model and tokenizing the data…</div>"
    if state.state in ("completed", "stopped") and state.result:
        line += reward_line(state.result)
        line += ("<div class='ta-why'>Saved: it is now in the Arena's and Evaluate's run pickers"
                 + (" (resume it to finish the schedule)" if state.state == "stopped" else "") + ".</div>")
    bar = f"<div class='ta-bar'><div class='ta-fill' style='width:{100 * done:.1f}%'></div></div>"
    return f"<div class='ta-job'>{bar}{line}</div>"


def loss_chart(state: JobState) -> str:
    """The job's train and validation loss curves (core.charts' inline SVG); a note before the first step."""
    return loss_curves_svg(state.train_curve, state.val_curve, state.total)


def resumable_runs(engine: Engine) -> list[tuple[str, str]]:
    """Runs that can continue: stopped, failed, or killed while running (and not the live job), with a checkpoint."""
    live = engine.jobs.snapshot()
    choices = []
    for run in engine.runs.list():
        if run.state == "completed" or run.latest_checkpoint() is None:
            continue
        if live.active and live.run_dir and Path(live.run_dir).resolve() == run.path.resolve():
            continue
        if run.owned_elsewhere() is not None:  # another live process (e.g. the CLI) is training it
            continue
        state = "interrupted" if run.state == "running" else run.state
        step = run.status.get("step", "?")
        choices.append((f"{run.run_id} ({run.config.get('method')}, {state} at step {step})", run.run_id))
    return choices


# ---- the tab ----------------------------------------------------------------------------------------------------


def teacher_choices(engine: Engine) -> list[tuple[str, str]]:
    """(label, value) of what can teach: the bundled base model, then the workspace's runs with weights."""
    return [("the bundled SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")] + run_choices(engine)


def _objective_widget(engine: Engine, name: str, value: Any = None) -> gr.components.Component:
    """One TrainingConfig field of an objective as a widget, with the field's help (the CLI's words)."""
    label, info, elem_id = OBJECTIVE_LABELS.get(name, name), field_help(TrainingConfig, name), f"train-{name}"
    default = field_default(TrainingConfig, name) if value is None else value
    # every widget starts with a value (the API's positional inputs are then all optional): the bundled model
    # teaches by default, and an empty knowledge base is "none"
    if name == "teacher":
        choices = teacher_choices(engine)
        return gr.Dropdown(choices, value=default or choices[0][1], label=label, info=info, allow_custom_value=True,
                           elem_id=elem_id)
    if name == "index":
        return gr.Dropdown([("(none)", "")] + index_choices(engine), value=default or "", label=label, info=info,
                           allow_custom_value=True, elem_id=elem_id)
    if name == "teacher_context":
        return gr.Dropdown(list(TEACHER_CONTEXTS), value=default, label=label, info=info, elem_id=elem_id)
    if name == "dpo_loss":
        return gr.Dropdown(list(DPO_LOSSES), value=default, label=label, info=info, elem_id=elem_id)
    if name == "student_layers" or isinstance(default, int | float):
        whole = not isinstance(default, float)  # student_layers (None: not set) and teacher_top_k count things
        return gr.Number(default or 0, label=label, info=info, precision=0 if whole else None, minimum=0,
                         elem_id=elem_id)
    return gr.Textbox(default or "", label=label, info=info, elem_id=elem_id)


def _setting_widget(method: str, row: dict[str, Any], value: Any = None) -> gr.components.Component:
    name, kind = row["name"], str(row["type"])
    default = row["default"] if value is None else value
    if isinstance(default, list):
        default = ",".join(default)
    info = row["help"] or None
    elem_id = f"train-{method}-{name}"
    if name in CHOICES_FOR:
        return gr.Dropdown(CHOICES_FOR[name], value=default, label=name, info=info, elem_id=elem_id)
    if kind == "bool":
        return gr.Checkbox(value=bool(default), label=name, info=info, elem_id=elem_id)
    if kind in ("int", "float"):
        return gr.Number(value=default, label=name, info=info, precision=0 if kind == "int" else None,
                         elem_id=elem_id)
    return gr.Textbox(value=str(default), label=name, info=info, elem_id=elem_id)


def create_train_tab(engine: Engine) -> dict[str, Any]:
    """The tab over the instance ``engine`` (its lists fill the widgets at build time); every handler works with
    the requesting visitor's engine (``ui.visitors.scoped``). ``refresh`` in the returned parts: (fn, inputs,
    outputs) that fills the dataset, resume and teacher / knowledge-base pickers with the visitor's own."""
    instance = engine
    presets = list_presets()
    initial = load_preset(DEFAULT_PRESET)["config"] if DEFAULT_PRESET in presets else {}
    first_method = initial.get("method", "lora")
    first_settings = initial.get("method_config") or {}
    first_info, first_rows = describe_dataset(str(demo_path("train.jsonl")))
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Group():
                data = gr.Dropdown(dataset_choices(engine), value=str(demo_path("train.jsonl")),
                                   label="Training data", elem_id="train-data")
                upload = gr.File(label="…or upload a dataset (.jsonl, .json, .csv, .tsv)", file_types=[
                    ".jsonl", ".json", ".csv", ".tsv"], elem_id="train-upload", height=120)
                val_data = gr.Dropdown([(HOLD_OUT_LABEL, HOLD_OUT)]
                                       + dataset_choices(engine), value=str(demo_path("validation.jsonl")),
                                       label="Validation data", elem_id="train-val-data")
            data_info = gr.HTML(first_info, elem_id="train-data-info")
            preview = gr.Dataframe(first_rows, label="First rows", interactive=False, wrap=True, max_height=220,
                                   elem_id="train-preview")
            progress = gr.HTML(render_progress(engine.jobs.snapshot()), elem_id="train-progress")
            chart = gr.HTML(loss_chart(engine.jobs.snapshot()), label="Loss", elem_id="train-chart")
        with gr.Column(scale=2):
            preset = gr.Dropdown([("(none)", "")] + [(name, name) for name in presets],
                                 value=DEFAULT_PRESET if initial else "", label="Preset",
                                 info="fills the objective, the method and their settings", elem_id="train-preset")
            first_objective = initial.get("objective", "sft")
            objective = gr.Dropdown([(f"{o.title} ({o.name})", o.name) for o in OBJECTIVES.values()],
                                    value=first_objective, label="Objective", elem_id="train-objective",
                                    info="what the model learns: instruction answers, a label, or a teacher")
            objective_help = gr.Markdown(get_objective(first_objective).description)
            objective_groups: dict[str, gr.Group] = {}
            objective_widgets: dict[str, dict[str, gr.components.Component]] = {}
            for name, registered in OBJECTIVES.items():
                if not registered.fields:
                    continue
                with gr.Group(visible=name == first_objective) as group:
                    objective_widgets[name] = {field_name: _objective_widget(engine, field_name)
                                               for field_name in registered.fields}
                objective_groups[name] = group
            method = gr.Dropdown([(f"{m.title} ({m.name})", m.name) for m in METHODS.values()],
                                 value=first_method, label="Method", elem_id="train-method")
            method_help = gr.Markdown(get_method(first_method).description)
            groups: dict[str, gr.Group] = {}
            widgets: dict[str, dict[str, gr.components.Component]] = {}
            for name, registered in METHODS.items():
                with gr.Group(visible=name == first_method) as group:
                    chosen = first_settings if name == first_method else {}
                    widgets[name] = {row["name"]: _setting_widget(name, row, chosen.get(row["name"]))
                                     for row in registered.settings()}
                    if not widgets[name]:
                        gr.Markdown("No settings: every weight trains.")
                groups[name] = group
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    epochs = gr.Number(initial.get("epochs", field_default(TrainingConfig, "epochs")), label="Epochs",
                                       minimum=0.01, elem_id="train-epochs", info=field_help(TrainingConfig, "epochs"))
                    max_steps = gr.Number(0, label="Max steps (0 = by epochs)", precision=0, minimum=0,
                                          elem_id="train-max-steps", info=field_help(TrainingConfig, "max_steps"))
                    learning_rate = gr.Number(initial.get("learning_rate") or 0, minimum=0, elem_id="train-lr",
                                              label="Learning rate (0 = the preset's, else the method's default)",
                                              info=field_help(TrainingConfig, "learning_rate"))
                with gr.Row():
                    batch_size = gr.Number(initial.get("batch_size", field_default(TrainingConfig, "batch_size")),
                                           label="Batch size", precision=0, minimum=1,
                                           info=field_help(TrainingConfig, "batch_size"))
                    grad_accum = gr.Number(field_default(TrainingConfig, "grad_accum"), label="Gradient accumulation",
                                           precision=0, minimum=1, info=field_help(TrainingConfig, "grad_accum"))
                    max_length = gr.Number(field_default(TrainingConfig, "max_length"), label="Max tokens per example",
                                           precision=0, minimum=16, info=field_help(TrainingConfig, "max_length"))
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULERS), label="Schedule",
                                            value=initial.get("scheduler", field_default(TrainingConfig, "scheduler")),
                                            info=field_help(TrainingConfig, "scheduler"))
                    warmup_ratio = gr.Number(field_default(TrainingConfig, "warmup_ratio"), label="Warmup share",
                                             minimum=0, maximum=0.99, info=field_help(TrainingConfig, "warmup_ratio"))
                    seed = gr.Number(field_default(TrainingConfig, "seed"), label="Seed", precision=0,
                                     info=field_help(TrainingConfig, "seed"))
                gradient_checkpointing = gr.Checkbox(field_default(TrainingConfig, "gradient_checkpointing"),
                                                     label="Gradient checkpointing",
                                                     info=field_help(TrainingConfig, "gradient_checkpointing"))
                with gr.Row():  # hybrid recipes: learning rates by depth, blocks opened one by one
                    hybrids = {"layerwise_lr_decay": gr.Number(
                        field_default(TrainingConfig, "layerwise_lr_decay"), label="Layer-wise learning-rate decay",
                        minimum=0.01, maximum=1, info=field_help(TrainingConfig, "layerwise_lr_decay"),
                        elem_id="train-layerwise-lr-decay"),
                        "gradual_unfreezing": gr.Number(
                        field_default(TrainingConfig, "gradual_unfreezing"), label="Gradual unfreezing (steps)",
                        precision=0, minimum=0, info=field_help(TrainingConfig, "gradual_unfreezing"),
                        elem_id="train-gradual-unfreezing")}
                base_model = gr.Textbox("", label="Base model (empty = the bundled SmolLM2-135M-Instruct)",
                                        info="the Arena compares runs of its own base model")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            from_votes = gr.Button("Train from votes (DPO)", elem_id="train-from-votes", size="sm")
            gr.Markdown("<span class='ta-why'>Exports the Arena's votes as preference pairs (winner vs each other "
                        "answer) and trains a LoRA on them with DPO: the `dpo` preset, Max steps from the "
                        "settings above when set.</span>")
            with gr.Row():
                resume_run = gr.Dropdown(resumable_runs(engine), label="Resume a stopped or interrupted run",
                                         scale=3, elem_id="train-resume-run")
                resume = gr.Button("Resume", scale=1, elem_id="train-resume")
    timer = gr.Timer(1.0)
    seen = gr.State(None)

    flat = [(name, setting, widget) for name, settings in widgets.items() for setting, widget in settings.items()]
    setting_inputs = [widget for _, _, widget in flat]
    objective_flat = [(name, field_name, widget) for name, own in objective_widgets.items()
                      for field_name, widget in own.items()]
    objective_inputs = [widget for _, _, widget in objective_flat]
    form = [data, val_data, method, preset, base_model, epochs, max_steps, learning_rate, batch_size, grad_accum,
            max_length, scheduler, warmup_ratio, seed, gradient_checkpointing, objective, *hybrids.values(),
            *objective_inputs, *setting_inputs]

    lists = [(field_name, widget) for own in objective_widgets.values() for field_name, widget in own.items()
             if field_name in ("teacher", "index")]

    def on_upload(file: str | None, request: gr.Request | None = None):
        if not file:
            return gr.update(), gr.update(), gr.update()
        engine = scoped(instance, request)
        try:
            stored = engine.store_dataset(file, "training")
        except ValueError as err:  # DataError (a bad row), UploadError (type, size), QuotaError: nothing stored
            raise gr.Error(one_line(err), print_exception=False) from None
        choices = dataset_choices(engine)
        return (gr.update(choices=choices, value=str(stored)),
                gr.update(choices=[(HOLD_OUT_LABEL, HOLD_OUT)] + choices), None)

    def on_lists(data_path: str | None, val_path: str | None, run_id: str | None,
                 request: gr.Request | None = None):
        """The visitor's own datasets, resumable runs, teachers and knowledge bases (chosen values kept if valid)."""
        engine = scoped(instance, request)
        choices = dataset_choices(engine)
        paths = {path for _, path in choices}
        runs = resumable_runs(engine)
        if data_path not in paths:
            data_path = str(demo_path("train.jsonl"))
        if val_path != HOLD_OUT and val_path not in paths:
            val_path = str(demo_path("validation.jsonl"))
        if run_id not in {value for _, value in runs}:
            run_id = None
        updates = [gr.update(choices=choices, value=data_path),
                   gr.update(choices=[(HOLD_OUT_LABEL, HOLD_OUT)] + choices, value=val_path),
                   gr.update(choices=runs, value=run_id)]
        for field_name, _ in lists:  # free-text pickers (a model name, a folder): their value stays as typed
            updates.append(gr.update(choices=teacher_choices(engine) if field_name == "teacher"
                                     else [("(none)", "")] + index_choices(engine)))
        return updates

    def on_method(name: str, preset_name: str | None):
        # a preset fills its own method's form: choosing another method leaves the preset behind
        chosen_preset = gr.update(value="") if preset_name and preset_method(preset_name) != name else gr.update()
        return [gr.update(visible=key == name) for key in groups] + [get_method(name).description, chosen_preset]

    def on_objective(name: str):
        return [gr.update(visible=key == name) for key in objective_groups] + [get_objective(name).description]

    def on_preset(name: str):
        keep = [gr.update()] * (len(groups) + 8 + len(objective_flat) + len(flat))
        if not name:
            return keep
        config = load_preset(name)["config"]
        chosen = config.get("method", "lora")
        settings = config.get("method_config") or {}
        updates = [gr.update(value=chosen)]
        updates += [gr.update(visible=key == chosen) for key in groups]
        updates += [gr.update(value=config.get("epochs", 1)), gr.update(value=config.get("max_steps") or 0),
                    gr.update(value=config.get("learning_rate") or 0), gr.update(value=config.get("batch_size", 8)),
                    gr.update(value=config.get("scheduler", "cosine")),
                    gr.update(value=config.get("objective", "sft")), gr.update(value=config.get("base_model") or "")]
        for key, field_name, _ in objective_flat:  # the preset's objective fields; the rest back to their defaults
            value = config.get(field_name) if key == config.get("objective", "sft") else None
            default = field_default(TrainingConfig, field_name)
            updates.append(gr.update(value=value if value is not None else (default if default is not None else
                                                                              (0 if field_name == "student_layers"
                                                                               else ""))))
        for key, setting, _ in flat:
            updates.append(gr.update(value=settings[setting]) if key == chosen and setting in settings
                           else gr.update())
        return updates

    def on_start(request: gr.Request | None, *values):
        engine = scoped(instance, request)
        (data_path, val_path, method_name, preset_name, base, n_epochs, steps, lr, batch, accum, length, schedule,
         warmup, seed_value, checkpointing, objective_name, *rest) = values
        hybrid_values = dict(zip(hybrids, rest[: len(hybrids)], strict=True))
        own_values = rest[len(hybrids) : len(hybrids) + len(objective_flat)]
        settings = rest[len(hybrids) + len(objective_flat) :]
        chosen = {setting: value for (key, setting, _), value in zip(flat, settings, strict=True)
                  if key == method_name}
        own = {field_name: value for (key, field_name, _), value in zip(objective_flat, own_values, strict=True)
               if key == objective_name}
        try:
            values = form_values(data_path, val_path, method_name, chosen, base_model=base, epochs=n_epochs,
                                 max_steps=steps, learning_rate=lr, batch_size=batch, grad_accum=accum,
                                 max_length=length, scheduler=schedule, warmup_ratio=warmup, seed=seed_value,
                                 gradient_checkpointing=checkpointing, objective=objective_name,
                                 objective_values=own, hybrid_values=hybrid_values)
            config = engine.training_config(values, preset=preset_name or None)
            state = engine.jobs.start(config)
        except (ValueError, JobBusyError) as err:  # an answer for the user, not a server error: no traceback logged
            raise gr.Error(one_line(err), print_exception=False) from None
        return render_progress(state), loss_chart(state), gr.Timer(active=True)

    def on_from_votes(steps: float | None, base: str | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        try:
            exported = engine.export_preferences()  # refused in one line while no vote gives a pair
            values = {"data": exported["path"], "objective": "dpo", "max_steps": int(steps) if steps else None,
                      "base_model": (base or "").strip() or None}
            config = engine.training_config(values, preset=VOTES_PRESET if VOTES_PRESET in list_presets() else None)
            state = engine.jobs.start(config)
        except (ValueError, JobBusyError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        gr.Info(f"Training on {exported['pairs']} preference pairs from {exported['votes']} votes.")
        return render_progress(state), loss_chart(state), gr.Timer(active=True)

    def on_stop(request: gr.Request | None = None):
        engine = scoped(instance, request)
        if not engine.jobs.stop():  # a running job checkpoints and ends; a queued one leaves the queue
            gr.Warning("No training is running or queued.")
        return render_progress(engine.jobs.snapshot())

    def on_resume(run_dir: str | None, request: gr.Request | None = None):
        if not run_dir:
            raise gr.Error("Choose a run to resume.")
        engine = scoped(instance, request)
        try:
            state = engine.resume_job(run_dir)  # a run id of this workspace (the engine is confined)
        except (ValueError, JobBusyError) as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        return render_progress(state), loss_chart(state), gr.Timer(active=True)

    def on_tick(last: tuple | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        state = engine.jobs.snapshot()  # active (queued included): rendered on every tick, the place in line moves
        key = (state.run_id, state.state, state.step, len(state.val_curve))
        if key == last and not state.active:
            return gr.skip(), gr.skip(), gr.skip(), last
        runs = gr.update(choices=resumable_runs(engine)) if key[:2] != (last or (None, None))[:2] else gr.skip()
        return render_progress(state), loss_chart(state), runs, key

    def on_data(path: str | None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        if path and path not in {value for _, value in dataset_choices(engine)}:  # only what this visitor is offered
            return NOT_OFFERED, describe_dataset(None)[1]
        return describe_dataset(path)

    upload.upload(on_upload, [upload], [data, val_data, upload], api_name="train_upload")
    data.change(on_data, [data], [data_info, preview], api_name="train_preview")
    method.change(on_method, [method, preset], [*groups.values(), method_help, preset])
    objective.change(on_objective, [objective], [*objective_groups.values(), objective_help])
    preset.change(on_preset, [preset], [method, *groups.values(), epochs, max_steps, learning_rate, batch_size,
                                        scheduler, objective, base_model, *objective_inputs, *setting_inputs])
    start.click(on_start, form, [progress, chart, timer], api_name="train_start", concurrency_limit=1)
    stop.click(on_stop, None, [progress], api_name="train_stop", queue=False)
    from_votes.click(on_from_votes, [max_steps, base_model], [progress, chart, timer], api_name="train_from_votes",
                     concurrency_limit=1)
    resume.click(on_resume, [resume_run], [progress, chart, timer], api_name="train_resume", concurrency_limit=1)
    timer.tick(on_tick, [seen], [progress, chart, resume_run, seen], show_progress="hidden", queue=False,
               api_name="train_status")
    return {"data": data, "val_data": val_data, "preview": preview, "data_info": data_info, "method": method,
            "objective": objective, "objective_widgets": objective_widgets, "hybrids": hybrids,
            "preset": preset, "start": start, "stop": stop, "resume": resume, "resume_run": resume_run,
            "progress": progress, "chart": chart, "timer": timer,
            "refresh": (on_lists, [data, val_data, resume_run],
                        [data, val_data, resume_run, *[widget for _, widget in lists]])}


CSS = """  /* the job line, and core.charts' loss curves (the Train and Runs tabs) themed for the app */
.ta-job {padding: 8px 4px;}
.ta-bar {height: 10px; border-radius: 5px; background: var(--background-fill-secondary); overflow: hidden;
         border: 1px solid var(--border-color-primary); margin-bottom: 6px;}
.ta-fill {height: 100%; background: linear-gradient(90deg, #4f8cff, #37b679); transition: width 0.5s;}
.ta-state {font-weight: 600;}
.ta-completed {color: #2e7d32;} .ta-failed {color: #c62828;} .ta-stopped, .ta-stopping {color: #b26a00;}
.ta-queued {color: #c28a00;} .ta-cancelled {color: var(--body-text-color-subdued);}
.ta-error {color: #c62828;}
.ta-chart {border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px;}
.ta-svg {width: 100%; height: auto;}
.ta-grid {stroke: var(--border-color-primary); stroke-width: 1;}
.ta-tick {font-size: 11px; fill: var(--body-text-color-subdued);}
.ta-train {fill: none; stroke: #4f8cff; stroke-width: 1.6;}
.ta-train-smooth {fill: none; stroke: #4f8cff; stroke-width: 2.2;}
.ta-chart-title {font-size: 0.85em; color: var(--body-text-color-subdued); margin-bottom: 4px;}
.ta-val {fill: none; stroke: #f28c28; stroke-width: 2.2;}
.ta-val-dot {fill: #f28c28;}
.ta-legend {font-size: 0.85em; margin-top: 4px;}
.ta-key {display: inline-block; width: 18px; height: 3px; margin: 0 6px 3px 14px; vertical-align: middle;}
.ta-key-train {background: #4f8cff;} .ta-key-val {background: #f28c28;}
"""
