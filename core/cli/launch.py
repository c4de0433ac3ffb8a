"""``--num-processes N``: the same command in N processes on this machine, as one data-parallel job.

The launcher gives each process the environment torchrun gives (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT`` on a free local port, ``OMP_NUM_THREADS`` = cores / N unless set), waits for them,
and ends them all as soon as one fails, so no process is left waiting on a peer. Rank 0 prints the result and the
error line; the others print nothing but warnings. On several GPUs or machines use ``accelerate launch`` or
``torchrun`` instead (README "Scaling"): the processes read the same environment.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

GRACE_S = 10.0  # how long the others get to end after one process failed, before they are killed


def inside_launch() -> bool:
    """Whether this process is one of a launched job (torchrun, accelerate launch or this launcher)."""
    return int(os.environ.get("WORLD_SIZE") or 1) > 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(argv: Sequence[str], processes: int) -> int:
    """Run ``python -m core <argv>`` as ``processes`` ranks; returns rank 0's exit code (another rank's when rank 0
    succeeded and it did not)."""
    port = free_port()
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // processes))
    root = str(Path(__file__).resolve().parents[2])  # where `core` is importable from, whatever the working folder
    path = os.pathsep.join(part for part in (root, os.environ.get("PYTHONPATH", "")) if part)
    base = {**os.environ, "PYTHONPATH": path, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": threads}
    logger.info("launching %d processes (%s threads each)", processes, threads)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the ranks; they stop and save
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="tune-arena-ranks-") as logs:
        try:
            for rank in range(processes):
                env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
                # rank 0 speaks for the job; another rank's stderr is shown only when it failed on its own
                err = None if rank == 0 else open(Path(logs) / f"rank-{rank}.txt", "wb")  # noqa: SIM115
                children.append(subprocess.Popen([sys.executable, "-m", "core", *argv], env=env,
                                                 stdout=None if rank == 0 else subprocess.DEVNULL, stderr=err,
                                                 preexec_fn=_restore_sigint))
                if err is not None:
                    err.close()
            codes = _wait(children)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            signal.signal(signal.SIGINT, previous)
        if codes[0] in (0, -signal.SIGTERM, -signal.SIGKILL):  # rank 0 did not say what went wrong: the rank that did
            for rank in sorted(rank for rank, code in codes.items() if rank and code not in (0, -signal.SIGTERM)):
                tail = (Path(logs) / f"rank-{rank}.txt").read_text(errors="replace").splitlines()[-20:]
                print("\n".join(f"rank {rank}: {line}" for line in tail), file=sys.stderr)
                break
    first_failure = next((codes[rank] for rank in sorted(codes) if codes[rank] != 0), 0)
    return codes[0] if codes[0] not in (0, -signal.SIGTERM) else first_failure


def _restore_sigint() -> None:  # in the child: Ctrl-C stops training (the CLI's handler), as for one process
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait(children: list[subprocess.Popen]) -> dict[int, int]:
    """Every rank's exit code; as soon as one fails the others are asked to end (and killed after GRACE_S)."""
    codes: dict[int, int] = {}
    failed_at: float | None = None
    while len(codes) < len(children):
        for rank, child in enumerate(children):
            if rank not in codes and child.poll() is not None:
                codes[rank] = child.returncode
                if child.returncode != 0 and failed_at is None:
                    failed_at = time.monotonic()
                    for other in children:  # a peer would wait for it forever
                        if other.poll() is None:
                            other.terminate()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.05)
    return codes
