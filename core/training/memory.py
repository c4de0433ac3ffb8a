"""Peak memory of a training run, and what happens when it runs out: one line that names the settings to lower."""

from __future__ import annotations

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
    """Collect unreachable objects (models in reference cycles) and hand cached GPU memory back to the driver."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
