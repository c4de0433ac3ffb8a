"""Build assets/demo/benchmark-demo.json: the bundled benchmark tasks, in full, on the base model and the demo LoRA
adapter (assets/demo/run-quick-lora), so the Benchmarks and Runs tabs show the demo adapter's forgetting before
anything runs.

    python assets/demo/build_benchmark_demo.py

Runs in a temporary workspace (about 2 minutes on 2 CPU cores); the result keeps no path of this machine.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from core.engine import DEMO_RUN, Engine  # noqa: E402
from core.engine.benchmarks import DEMO_BENCHMARK, DEMO_BENCHMARK_ID  # noqa: E402
from core.io import write_json  # noqa: E402

TASKS = ["tune_arena_probe", "tune_arena_probe_mc", "tune_arena_knowledge", "tune_arena_tickets"]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = Engine(folder).benchmark(TASKS, adapters=[DEMO_RUN])
    result.update(id=DEMO_BENCHMARK_ID, path=str(DEMO_BENCHMARK.relative_to(HERE.parent.parent)))
    result["models"][DEMO_RUN]["run_dir"] = "assets/demo/run-quick-lora"
    write_json(DEMO_BENCHMARK, result)
    print(f"wrote {DEMO_BENCHMARK} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
