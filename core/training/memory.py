"""Peak memory of a training run, and what happens when it runs out: one line that names the settings to lower."""

from __future__ import annotations

import ctypes
import functools
import gc
import threading
from typing import Any

from core.errors import TrainingOutOfMemoryError

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's OutOfMemoryError, Python's MemoryError and an allocator's RuntimeError (CPU: "can't allocate
    memory", CUDA/MPS: "out of memory")."""
    import torch

    if isinstance(err, MemoryError | torch.OutOfMemoryError | TrainingOutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(marker in str(err).lower() for marker in _OOM_MARKERS)


def release_memory() -> None:
    """Collect unreachable objects (models in reference cycles), hand cached GPU memory back to the driver, and
    return the freed heap to the operating system. glibc keeps freed pages below the heap's top in the process:
    after a LoRA run on the bundled model a long-lived process (the app) held 2.3 GiB instead of 1.2 GiB until
    ``malloc_trim`` (measured 2026-12-07, AMD EPYC). Elsewhere (macOS, musl) that call does not exist and is skipped."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class PeakMemory:
    """Peak resident memory (CPU: RSS sampled every 50 ms) or max allocated (CUDA) while training runs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, process.memory_info().rss)
                    self._stop.wait(0.05)

            self._thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.startswith("cuda"):
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()


def out_of_memory_message(config: Any, err: BaseException, step: int) -> str:
    """One line: where memory ran out, the allocator's words, and the settings that lower the peak."""
    detail = " ".join(str(err).split())
    cut = detail.find("can't allocate memory")  # the CPU allocator's message starts with C++ source positions
    detail = detail[cut:] if cut > 0 else detail
    detail = detail[:140] or type(err).__name__
    tips = []
    if config.batch_size > 1:
        tips.append(f"lower batch_size (now {config.batch_size}; raise grad_accum to keep the effective batch)")
    tips.append(f"lower max_length (now {config.max_length})")
    if not config.gradient_checkpointing:
        tips.append("turn on gradient_checkpointing")
    advice = tips[0] if len(tips) == 1 else ", ".join(tips[:-1]) + f" or {tips[-1]}"
    return f"out of memory in training step {step} ({detail}): {advice}"


SPARSE_DROP_P = 0.25
"""LeanDropout draws the dropped positions instead of one number per element up to this rate, on a CPU."""


@functools.cache
def _lean_dropout_class() -> type:
    """LeanDropout, built on first use (torch is imported lazily across core)."""
    import math

    import torch

    def drop_at(t: torch.Tensor, dropped: torch.Tensor, scale: float) -> torch.Tensor:
        """``t * scale`` in a fresh contiguous tensor of ``t``'s dtype, zero at the flat positions ``dropped``."""
        out = torch.mul(t, scale, out=torch.empty(t.shape, dtype=t.dtype, device=t.device))
        return out.view(-1).index_fill_(0, dropped, 0).view(t.shape)

    class KeepMask(torch.autograd.Function):
        """Inverted dropout whose backward keeps far less than ``nn.Dropout``'s, drawn far faster on a CPU.

        ``torch.nn.functional.dropout`` on the CPU multiplies by a noise tensor of the input's dtype (the kept
        elements hold 1/(1-p)) and autograd saves it: 2-4 bytes per element of every LoRA input. Its draw, one
        ``bernoulli_`` number per element, was a quarter of a LoRA training step on a 2-core CPU (a profiled
        8 x 128-token pass: README, "Every lever, measured"). Two ways to draw, the same distribution (each element
        dropped independently with probability p):

        - sparse (p <= SPARSE_DROP_P, CPU): Poissonisation. Draw K ~ Poisson(n * lam) with lam = -ln(1 - p), then
          K positions uniformly with replacement; an element's number of hits is then Poisson(lam), independent
          of every other's, so it is dropped (hit at least once) with probability 1 - e^-lam = p. For p = 0.05:
          0.051 draws per element instead of 1; only the positions (8 bytes each, 0.4 bytes per element) are saved.
        - dense (larger p, or a GPU, whose ``bernoulli_`` is fast): ``bernoulli_`` on a tensor like the input,
          the same draws as ``nn.Dropout``, bit for bit its output in fp32; a one-byte mask is saved.

        The scale is applied as a float scalar: in bf16 one rounding instead of dropout's two, whose noise holds
        1/(1-p) rounded to bf16.
        """

        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
            ctx.scale = 1.0 / (1 - p)
            ctx.sparse = p <= SPARSE_DROP_P and x.device.type == "cpu" and x.numel() > 0
            if ctx.sparse:
                hits = int(torch.poisson(torch.tensor([x.numel() * -math.log1p(-p)], dtype=torch.float64)))
                dropped = torch.randint(0, x.numel(), (hits,), device=x.device)
                ctx.save_for_backward(dropped)
                return drop_at(x, dropped, ctx.scale)
            keep = torch.empty_like(x).bernoulli_(1 - p)
            ctx.save_for_backward(keep.bool())
            return (x * keep).mul_(ctx.scale)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
            if ctx.sparse:
                (dropped,) = ctx.saved_tensors
                return drop_at(grad, dropped, ctx.scale), None
            (keep,) = ctx.saved_tensors
            return (grad * keep).mul_(ctx.scale), None

    class LeanDropout(torch.nn.Dropout):
        """``nn.Dropout`` that draws and keeps less for backward (KeepMask) when it trains with gradients."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and self.p > 0 and torch.is_grad_enabled() and x.requires_grad:
                return KeepMask.apply(x, self.p)
            return super().forward(x)

    return LeanDropout


def lean_lora_dropout(model: Any) -> int:
    """Swap every LoRA layer's ``nn.Dropout`` for LeanDropout (the same dropout, drawn faster on a CPU, a smaller
    saved mask); returns how many were swapped. Other modules' dropout is left alone."""
    import torch

    lean = _lean_dropout_class()
    swapped = 0
    for module in model.modules():
        layers = getattr(module, "lora_dropout", None)
        if not isinstance(layers, torch.nn.ModuleDict):
            continue
        for name, layer in list(layers.items()):
            if type(layer) is torch.nn.Dropout and layer.p > 0:
                layers[name] = lean(layer.p)
                swapped += 1
    return swapped
