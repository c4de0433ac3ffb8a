"""The training loop: a lean PyTorch loop over any method (core.methods) and objective (core.training.objectives),
with checkpoints, stop and resume.

Why a plain loop: bench/train.py measures it against TRL's SFTTrainer on the same data and settings (results in
bench/results/train.json and the README: about 3x TRL's tokens/s on a 2-core CPU).

The loop: examples are encoded by the objective (SFT: chat template, prompt tokens masked with -100); random
micro-batches (or of similar length: ``group_by_length``), on a CPU run as passes of similar-length rows padded to
the longest in the pass (core.training.batches.split_by_tokens); gradient accumulation with the loss
weighted by the objective's units (answer tokens); AdamW; warmup then cosine/linear/constant; gradient clipping; a
seed fixes init, order and dropout. Trainable weights are fp32; the forward pass runs under autocast when the dtype
policy picks bf16/fp16.

Data parallel (``num_processes`` > 1, launched by ``core.cli.launch``, torchrun or ``accelerate launch``): every process
plans the steps of one process with the global batch (batch_size x num_processes), takes its contiguous share of each
micro-batch, weighs its loss by its share of the global units, and the gradients are summed over the processes
(core.distributed) before clipping and the optimizer step, so each step is the one-process step with the global batch.
Rank 0 alone writes the run (config, status, metrics, validation, checkpoints, weights); a run resumes with another
process count (the global batch is the run's, fixed at its start). With ``fsdp`` (or an accelerate config asking for
FSDP) the model is sharded over the processes (core.training.sharding): the same steps, every process in every
forward pass, checkpoints and weights gathered whole.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import distributed
from core.errors import ConfigError, QuotaError, RunStateError, TrainingOutOfMemoryError
from core.io import folder_bytes, remove_folder, write_atomic, write_json
from core.methods import get_method
from core.models import load_tokenizer, pick_device
from core.runs import FULL_FORMAT, Run, RunStore, render_card
from core.training import sharding
from core.training.batches import PreparedData, epoch_batches, prepare_data, split_by_tokens
from core.training.checkpoint import _adalora_allocator, finalize_adalora, load_checkpoint, save_checkpoint
from core.training.config import TrainingConfig
from core.training.memory import PeakMemory, is_out_of_memory, out_of_memory_message, release_memory
from core.training.objectives import TrainingResources, autocast, get_objective

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float, float, float, float], None]  # step, total, loss, lr, tokens/s, eta_s
EvalCallback = Callable[[int, float], None]  # step, validation loss
DiskCheck = Callable[[int, str], None]  # bytes the run will write, what they are: raises to refuse them


@dataclass
class TrainResult:
    run_dir: str
    run_id: str
    method: str
    state: str
    steps: int
    total_steps: int
    trainable_params: int
    total_params: int
    adapter_bytes: int
    train_loss: list[float]
    final_train_loss: float | None
    first_val_loss: float | None
    final_val_loss: float | None
    tokens_per_s: float
    peak_mem_bytes: int
    wall_s: float
    train_examples: int
    val_examples: int
    data_sha256: str
    device: str
    dtype: str
    base_model: str = ""
    objective: str = "sft"
    extras: dict[str, Any] = field(default_factory=dict)  # the objective's own results (TrainingSession.summary)
    world_size: int = 1  # processes that trained together (data parallel)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def contract(self) -> dict[str, Any]:
        """The CLI `train --json` document (DESIGN.md keys first, then extras)."""
        keys = ("run_dir", "method", "trainable_params", "total_params", "adapter_bytes", "train_loss",
                "final_train_loss", "final_val_loss", "tokens_per_s", "peak_mem_bytes", "wall_s")
        out = {k: getattr(self, k) for k in keys}
        out.update(state=self.state, steps=self.steps, total_steps=self.total_steps,
                   trainable_percent=round(self.trainable_percent, 4), first_val_loss=self.first_val_loss,
                   device=self.device, dtype=self.dtype, objective=self.objective, world_size=self.world_size)
        out.update(self.extras)
        return out


class _Follower(Run):
    """The run as a process other than rank 0 sees it: read, never written (rank 0 writes it)."""

    def set_status(self, state: str, **extra: Any) -> None:
        pass

    def append_metrics(self, row: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> None:
        pass


def _join(config: TrainingConfig) -> distributed.World:
    """This process's place in a data-parallel job (world size 1 alone); CUDA ranks take their own GPU."""
    if sharding.requested(config):  # also an accelerate config asking for FSDP, whatever the run's config says
        sharding.check(config)
    world = distributed.init(pick_device(config.device))
    if sharding.requested(config) and not world.distributed:
        logger.warning("fsdp: one process has nothing to shard with; training unsharded")
    if world.distributed and world.size > config.batch_size * config.num_processes:
        raise ConfigError(f"num_processes: {world.size} processes for a batch of "
                          f"{config.batch_size * config.num_processes} examples; some would have nothing to do")
    return world


def _validate(run: Run, session: Any, step: int, on_eval: EvalCallback | None) -> float | None:
    """One validation pass: its measures go to metrics.jsonl; returns the validation loss (the curve)."""
    measures = session.evaluate(session.data.val)
    run.append_metrics({"step": step, **measures})
    val = measures.get("val_loss")
    if on_eval:
        on_eval(step, val)
    return val


def _plan(config: TrainingConfig, n_train: int) -> tuple[int, int, int, int, int]:
    """(micro-batches per epoch, total optimizer steps, warmup steps, eval every, checkpoint every), for the global
    micro-batch: batch_size x num_processes examples."""
    micro_per_epoch = math.ceil(n_train / (config.batch_size * config.num_processes))
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    warmup = int(total * config.warmup_ratio)
    eval_every = config.eval_every or max(1, math.ceil(total / 5))
    checkpoint_every = config.checkpoint_every or max(1, math.ceil(total / 4))
    return micro_per_epoch, total, warmup, eval_every, checkpoint_every


def _scheduler(optimizer: Any, kind: str, warmup: int, total: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def disk_estimate(trainable: int, keep_checkpoints: int) -> int:
    """Bytes a run with ``trainable`` parameters writes at most: ``keep_checkpoints`` checkpoints of fp32 weights and
    AdamW's two fp32 moments (12 bytes a parameter) and its final fp32 weights (4)."""
    return trainable * (12 * keep_checkpoints + 4)


def train(
    config: TrainingConfig,
    *,
    run_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    stop_event: threading.Event | None = None,
    resources: TrainingResources | None = None,
    step_limit: int | None = None,
    disk_check: DiskCheck | None = None,
) -> TrainResult:
    """Train a new run. ``run_dir`` (a new or empty folder) or a fresh id under ``runs_root`` (default: the
    workspace's runs/). Returns when the run completes, is stopped, or fails (the error is then raised after the
    run's status is recorded). ``resources``: what the objective needs from above (a teacher, a retriever).
    ``step_limit``: the most optimizer steps the run may plan (a shared CPU instance's quota; QuotaError before any
    run folder exists otherwise). ``disk_check(bytes, what)``: called once the model is loaded with what the run
    will write (``disk_estimate``); it raises (a visitor's disk quota) to end the run before it writes any."""
    if run_dir is None and runs_root is None:
        raise ConfigError("out: give the run folder (run_dir) or the runs folder to create it in (runs_root)")
    store = RunStore(runs_root or Path(run_dir).parent)
    data = prepare_data(config, lambda: load_tokenizer(config.base_model))  # bad data or model: before any run folder
    planned = _plan(config, len(data.train))[1]
    if step_limit is not None and planned > step_limit:
        raise QuotaError(f"{'max_steps' if config.max_steps else 'epochs'}: this run would take {planned} optimizer "
                         f"steps, over the {step_limit} a training job may take on this CPU instance; lower "
                         f"{'Max steps' if config.max_steps else 'Epochs or set Max steps'}")
    world = _join(config)
    if world.distributed and run_dir is None:
        raise ConfigError("out: a data-parallel run needs its folder (run_dir) given to every process")
    if world.is_main:
        run = store.create({"format": 1, **config.to_dict()}, run_dir)
    distributed.barrier()  # the folder and its config exist before the other processes read it
    if not world.is_main:
        run = _Follower(Path(run_dir))
    return _run(run, config, None, on_step, on_eval, stop_event, data, resources, disk_check)


def resume(
    run_dir: str | Path,
    *,
    on_step: StepCallback | None = None,
    on_eval: EvalCallback | None = None,
    stop_event: threading.Event | None = None,
    resources: TrainingResources | None = None,
) -> TrainResult:
    """Continue a run from its latest checkpoint (also after the process was killed): same data order, optimizer,
    scheduler and RNG state, so the steps after the checkpoint repeat what an uninterrupted run would do."""
    run = Run(Path(run_dir))
    if distributed.current().is_main:
        run.check_resumable()
    values = {k: v for k, v in run.config.items() if k != "format"}
    config = TrainingConfig.from_dict(values)
    world = _join(config)
    distributed.barrier()  # another process count than the run started with is fine: its global batch is kept
    if not world.is_main:
        run = _Follower(run.path)
    checkpoint = run.latest_checkpoint()
    data = prepare_data(config, lambda: load_tokenizer(config.base_model))
    return _run(run, config, checkpoint, on_step, on_eval, stop_event, data, resources)


def _run(run: Run, config: TrainingConfig, checkpoint: Path | None, on_step: StepCallback | None,
         on_eval: EvalCallback | None, stop_event: threading.Event | None, data: PreparedData,
         resources: TrainingResources | None, disk_check: DiskCheck | None = None) -> TrainResult:
    import torch

    start_wall = time.perf_counter()
    run.set_status("running", step=0)
    try:
        return _loop(run, config, checkpoint, on_step, on_eval, stop_event, start_wall, data, resources, disk_check)
    except BaseException as err:  # record the failure (also KeyboardInterrupt), then let it propagate
        if not is_out_of_memory(err):
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            run.set_status("failed", error=message)
            logger.error("run %s failed: %s", run.run_id, message)
            raise
        done = run.status.get("step", 0)
        message = out_of_memory_message(config, err, done + 1)
        run.set_status("failed", error=message, step=done, reason="out_of_memory")
        logger.error("run %s failed: %s", run.run_id, message)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # out of memory: the except block has ended, so the failed step's frames (model, optimizer, activations) are
    # gone; free them now and raise a fresh error that holds none of them
    release_memory()
    raise TrainingOutOfMemoryError(message)


def _loop(run: Run, config: TrainingConfig, checkpoint: Path | None, on_step: StepCallback | None,
          on_eval: EvalCallback | None, stop_event: threading.Event | None, start_wall: float,
          data: PreparedData, resources: TrainingResources | None, disk_check: DiskCheck | None = None) -> TrainResult:
    import torch

    method = get_method(config.method)
    world = distributed.current()  # joined in train()/resume()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    micro_per_epoch, total, warmup, eval_every, checkpoint_every = _plan(config, len(data.train))
    objective = get_objective(config.objective)
    session = objective.session(objective, config, data, total, resources)
    session.start(run, checkpoint is not None)
    model, device, compute = session.model, session.device, session.compute
    trainable, total_params = session.counts()
    if disk_check is not None and world.is_main:
        disk_check(disk_estimate(trainable, config.keep_checkpoints), "this run's checkpoints and weights")
    sharded = sharding.sharded_run(config)
    if sharded:  # before the optimizer: it holds the shards
        sharding.shard(model)
        session.fast = False  # the answer-only head calls the decoder and the head outside the root unit's forward
    lr = config.learning_rate or method.default_lr
    optimizer = torch.optim.AdamW(session.parameter_groups(lr), lr=lr, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config.scheduler, warmup, total)
    scaler = torch.amp.GradScaler("cuda") if compute == torch.float16 and device.startswith("cuda") else None
    step, tokens_seen, train_s = 0, 0, 0.0
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
        if saved.get("data_sha256") not in (None, data.sha256):
            raise RunStateError(f"resume: the data files of run {run.run_id} changed since it started")
        step, tokens_seen, train_s = saved["step"], saved["tokens_seen"], saved["train_s"]
        run.truncate_metrics(step)
        logger.info("resumed %s at step %d/%d from %s", run.run_id, step, total, checkpoint.name)
    elif run.metrics():
        run.truncate_metrics(0)  # resumed without a checkpoint: start over
    logger.info("%s: %s %s on %d examples (%d validation), %d steps, %s/%s, %d trainable of %d params (%.3f%%)",
                run.run_id, config.objective, config.method, len(data.train), len(data.val), total, device,
                str(compute).removeprefix("torch."), trainable, total_params, 100 * trainable / total_params)
    if data.truncated:
        logger.warning("%d training examples were longer than max_length=%d and were cut", data.truncated,
                       config.max_length)
    lengths = [len(e.input_ids) for e in data.train]
    cache: dict[int, list[list[int]]] = {}

    global_batch = config.batch_size * config.num_processes
    forward_tokens = config.forward_tokens(device)

    def micro_batch(position: int) -> list[int]:
        """The global micro-batch at ``position``."""
        epoch, index = divmod(position, micro_per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = epoch_batches(lengths, global_batch, config.seed, epoch, config.group_by_length)
        return cache[epoch][index]

    def passes(step: int) -> list[tuple[dict[str, Any], bool]]:
        """This process's (batch, counts) forward passes of optimizer step ``step``: its share of each micro-batch
        (all of it for one process), in parts of at most ``max_forward_tokens`` padded tokens. Sharded, every process
        runs every pass whole: an empty share runs the micro-batch's first row, not counted."""
        out = []
        for k in range(config.grad_accum):
            rows = micro_batch(step * config.grad_accum + k)
            share = distributed.shard(rows, world)
            if sharded:  # every process runs the same passes (FSDP's gathers are collective): no split
                out.append((session.collate([data.train[i] for i in share or rows[:1]]), bool(share)))
            elif share:
                out += [(session.collate([data.train[i] for i in part]), True)
                        for part in split_by_tokens(share, lengths, forward_tokens)]
        return out

    allocator = _adalora_allocator(model)
    val_losses = [row["val_loss"] for row in run.metrics() if "val_loss" in row]
    train_losses = [row["loss"] for row in run.metrics() if "loss" in row]
    state = "completed"
    with PeakMemory(device) as memory:
        if checkpoint is None and data.val and (world.is_main or sharded):  # the validation curve's first point
            val = _validate(run, session, 0, on_eval)
            val_losses.append(val)
        while step < total:
            step_start = time.perf_counter()
            session.before_step(step)
            batches = passes(step)
            local_units = sum(session.units(batch) for batch, counts in batches if counts)
            step_tokens = int(distributed.all_sum([local_units])[0]) or 1  # every process's units
            step_loss, step_seen = 0.0, 0
            for batch, counts in batches:
                n = session.units(batch) if counts else 0
                if n == 0 and not sharded:
                    continue
                with autocast(device, compute):
                    if n == 0:  # a sharded pass that counts for nothing: zero gradients, but the gathers happen
                        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        scaled = loss.float().sum() * 0.0
                    else:
                        loss = session.loss(batch)
                        scaled = loss * (n / step_tokens)  # token-weighted mean over the window (and processes)
                (scaler.scale(scaled) if scaler else scaled).backward()
                if n:
                    step_loss += float(loss.detach()) * n / step_tokens
                    step_seen += int(batch["attention_mask"].sum())
            if world.distributed:  # the global batch's gradient on every process, then the same step everywhere
                if not sharded:  # FSDP's reduce-scatter summed them already
                    distributed.all_sum_grads(session.trainable())
                step_loss, step_seen = distributed.all_sum([step_loss, step_seen])
                step_seen = int(step_seen)
            tokens_seen += step_seen
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(sharding.whole(torch.nn.utils.clip_grad_norm_(session.trainable(),
                                                                            config.max_grad_norm or float("inf"))))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if allocator is not None:
                model.base_model.update_and_allocate(step)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_s += time.perf_counter() - step_start
            rate = tokens_seen / train_s if train_s else 0.0
            eta = (total - step) * train_s / step
            current_lr = scheduler.get_last_lr()[0]
            train_losses.append(step_loss)
            run.append_metrics({"step": step, "loss": round(step_loss, 6), "lr": current_lr,
                                "grad_norm": round(grad_norm, 6), "tokens_per_s": round(rate, 2),
                                "elapsed_s": round(train_s, 3)})
            if on_step:
                on_step(step, total, step_loss, current_lr, rate, eta)
            stopping = stop_event is not None and stop_event.is_set()
            if world.distributed:  # one process stopped (Ctrl-C reaches them all, a UI stop only one): all stop
                stopping = distributed.all_sum([float(stopping)])[0] > 0
            # sharded, every process takes part (the gathers), and rank 0 alone records and writes
            if data.val and (world.is_main or sharded) and (step % eval_every == 0 or step == total or stopping):
                val_losses.append(_validate(run, session, step, on_eval))
            if (world.is_main or sharded) and (step % checkpoint_every == 0 or stopping or step == total):
                save_checkpoint(run, model, optimizer, scheduler, step,
                                {"tokens_seen": tokens_seen, "train_s": train_s, "total_steps": total,
                                 "data_sha256": data.sha256},
                                config.keep_checkpoints, scaler, write=world.is_main)
            run.set_status("running", step=step, total_steps=total)
            if stopping and step < total:
                state = "stopped"
                logger.info("stopped at step %d/%d", step, total)
                break
    finalize_adalora(model)
    if sharded:  # the whole weights on rank 0 (an adapter's alone), then saved as one process would
        tensors = sharding.whole_state(model, get_method(config.method).save_format != FULL_FORMAT)
        weights = session.save(run, tensors) if world.is_main else run.path
    else:
        weights = session.save(run) if world.is_main else run.path
    distributed.barrier()  # the weights are on disk before any process returns
    result = TrainResult(
        run_dir=str(run.path), run_id=run.run_id, method=config.method, state=state, steps=step, total_steps=total,
        trainable_params=trainable, total_params=total_params, adapter_bytes=folder_bytes(weights),
        train_loss=[round(x, 6) for x in train_losses],
        final_train_loss=train_losses[-1] if train_losses else None,
        first_val_loss=val_losses[0] if val_losses else None, final_val_loss=val_losses[-1] if val_losses else None,
        tokens_per_s=round(tokens_seen / train_s, 2) if train_s else 0.0, peak_mem_bytes=int(memory.peak),
        wall_s=round(time.perf_counter() - start_wall, 3), train_examples=len(data.train),
        val_examples=len(data.val), data_sha256=data.sha256, device=device,
        dtype=str(compute).removeprefix("torch."), base_model=session.base_model_name, objective=config.objective,
        extras=session.summary(), world_size=world.size,
    )
    if not world.is_main:
        return result
    write_json(run.path / "result.json", asdict(result))
    run.set_status(state, step=step, total_steps=total)
    if state == "completed":  # a completed run cannot resume: its checkpoints (optimizer state) are dead weight
        remove_folder(run.path / "checkpoints")
    write_atomic(run.path / "card.md", render_card(run.config, asdict(result), run.status))
    return result
