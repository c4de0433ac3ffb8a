"""Concurrency: a burst of Arena requests at a live app while a real training job runs in the same process.

One app (``python app.py`` on a free port, a temporary workspace) serves every step: a solo training run gives the
reference loss log; then the same training starts again and, while it runs, 20 Arena requests arrive at once through
gradio_client and a second training start is attempted. Every request must be answered, with the answers a quiet
app gives; the training must end exactly like the solo run; the second start must be refused without touching it.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from pathlib import Path

import pytest
from app_helpers import served_app

pytestmark = pytest.mark.integration

BURST = 20
TRAIN_STEPS = 120  # ~45 s alone: long enough to still run while the burst is answered
ROWS = [{"instruction": f"What colour is tank part {i}?", "output": f"Part {i} is {('green', 'blue')[i % 2]}."}
        for i in range(40)]
QUERIES = [  # (query, reference, temperature): each asked BURST / len(QUERIES) times in the burst
    ("What does error code E15 mean?", "E15 means the pump motor is jammed.", 0.0),
    ("How often should I clean the tank?", "Clean the tank every four weeks.", 0.0),
    ("Which lights does the Orbit 3 use?", "Full-spectrum LED lights.", 0.0),
    # sampled (seed 0): the same answers every time only if sampling draws from no RNG that training also uses
    ("Summarise: my seeds never sprouted after two weeks.", "The customer's seeds did not sprout.", 0.9),
]
VARIANTS = ["zero_shot", "rag", "finetuned"]  # the base model, retrieval, and a LoRA row in the same batch
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def served(bundled_home, tmp_path_factory):
    """(url, workspace, log) of a real ``python app.py`` on a free port; its log is shown if it fails to start."""
    workspace = tmp_path_factory.mktemp("busy-workspace")
    log_path = tmp_path_factory.mktemp("busy-app") / "app.log"
    with served_app(bundled_home, workspace, log_path, timeout_s=300) as url:  # generous: the CPU may be shared
        yield url, workspace, log_path


def _ask(client, workspace: Path, query: str, reference: str, temperature: float):
    """Submit one Arena request (VARIANTS with the demo adapter and index); returns the gradio_client Job."""
    adapter = str(workspace / "runs" / "demo-quick-lora")
    return client.submit(query, reference, "", "", VARIANTS, [adapter], "demo", 1, 1, MAX_NEW_TOKENS, temperature,
                         api_name="/arena")


def _answers(cards: str) -> dict[str, str]:
    """variant -> answer text of the rendered cards."""
    found = re.findall(r"<div class='ta-card'><h3>(.*?)</h3><div class='ta-answer'>(.*?)</div>", cards, re.S)
    return dict(found)


class Progress:
    """The Train tab's progress line through ``/train_status`` on a session of its own (the tab skips unchanged
    lines of an ended job per session, so every watcher needs its own)."""

    def __init__(self, url: str) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        self.text = ""

    def poll(self) -> str:
        value = self.client.predict(api_name="/train_status")[0]
        if isinstance(value, str) and value:
            self.text = value
        return self.text

    def step(self) -> int:
        match = re.search(r"step (\d+)/", self.text)
        return int(match.group(1)) if match else 0

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self.poll()):
                return self.text
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout} s; last progress: {self.text}")


def _ended(run_id: str):
    return lambda text: run_id in text and ("ta-completed" in text or "ta-failed" in text)


def _run_id(progress_html: str) -> str:
    return progress_html.split("<b>")[1].split("</b>")[0]


def _loss_log(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) and (step, val_loss) rows of a run's metrics.jsonl, in file order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return ([(row["step"], row["loss"]) for row in rows if "loss" in row],
            [(row["step"], row["val_loss"]) for row in rows if "val_loss" in row])


@pytest.mark.timeout(1800)  # ~4 minutes on an idle 2-core machine; far more when other jobs share it
def test_arena_burst_while_training(served, tmp_path):
    from gradio_client import Client, handle_file

    url, workspace, log_path = served
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
    data = tmp_path / "parts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    stored = client.predict(handle_file(str(data)), api_name="/train_upload")[0]["value"]
    form = {"param_0": stored, "param_1": "__hold_out__", "param_6": TRAIN_STEPS, "param_8": 1, "param_10": 48}

    # a quiet app: what every query answers (this also loads the models and builds the demo index)
    quiet: dict[str, dict[str, str]] = {}
    for query, reference, temperature in QUERIES:
        # the first request waits for the app's warm-up
        status, cards = _ask(client, workspace, query, reference, temperature).result(timeout=900)
        assert status.startswith(f"{len(VARIANTS)} of {len(VARIANTS)} variants answered"), status
        quiet[query] = _answers(cards)
        assert set(quiet[query]) == set(VARIANTS) and all(quiet[query].values()), quiet[query]

    # the reference: the same training with nothing else running
    began = time.perf_counter()
    reference_id = _run_id(client.predict(**form, api_name="/train_start")[0])
    Progress(url).wait_for(_ended(reference_id), 400)
    solo_s = time.perf_counter() - began
    reference_loss, reference_val = _loss_log(workspace / "runs" / reference_id)
    assert len(reference_loss) == TRAIN_STEPS

    # the same training again; once it is running, a second start and the burst
    watcher = Progress(url)  # connected first: a slow connection must not miss the start
    run_id = _run_id(client.predict(**form, api_name="/train_start")[0])
    assert "ta-running" in watcher.wait_for(lambda text: run_id in text and "ta-running" in text, 120)
    runs_before = sorted(path.name for path in (workspace / "runs").iterdir())
    with pytest.raises(Exception, match=f"training: run {run_id} is still running; stop it or wait"):
        client.predict(**form, api_name="/train_start")
    assert sorted(path.name for path in (workspace / "runs").iterdir()) == runs_before  # nothing new started

    timeline: list[tuple[float, bool, int]] = []  # (time, job active, step) while the burst is in flight
    stop_watching = threading.Event()

    def watch() -> None:
        while not stop_watching.is_set():
            text = watcher.poll()
            timeline.append((time.perf_counter(), "ta-running" in text, watcher.step()))
            stop_watching.wait(0.5)

    watching = threading.Thread(target=watch, daemon=True)
    watching.start()
    sent: list[float] = []
    done: list[float] = [0.0] * BURST
    jobs = []
    burst_start = time.perf_counter()
    for number in range(BURST):
        query, reference, temperature = QUERIES[number % len(QUERIES)]
        sent.append(time.perf_counter())
        job = _ask(client, workspace, query, reference, temperature)
        job.future.add_done_callback(lambda _, number=number: done.__setitem__(number, time.perf_counter()))
        jobs.append(job)
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=600))
        except Exception as err:  # collected, so every failure is reported at once
            outcomes.append(err)
    burst_s = time.perf_counter() - burst_start
    stop_watching.set()
    watching.join()

    failed = [(number, outcome) for number, outcome in enumerate(outcomes) if isinstance(outcome, Exception)]
    assert not failed, f"{len(failed)} of {BURST} requests failed: {failed[:3]}"
    for number, (status, cards) in enumerate(outcomes):
        query = QUERIES[number % len(QUERIES)][0]
        assert status.startswith(f"{len(VARIANTS)} of {len(VARIANTS)} variants answered"), (number, status)
        assert _answers(cards) == quiet[query], (number, query)  # the same greedy answers as on a quiet app

    # the requests were answered while the training ran, and the training moved on meanwhile
    active = [(t, step) for t, running, step in timeline if running]
    assert active, "the training was not running during the burst"
    answered_meanwhile = sum(1 for t in done if t <= active[-1][0])
    steps_meanwhile = active[-1][1] - active[0][1]
    assert answered_meanwhile >= 1 and steps_meanwhile >= 1, (answered_meanwhile, steps_meanwhile)

    # then the training ended exactly like the solo run
    final = Progress(url).wait_for(_ended(run_id), 600)
    assert "ta-completed" in final and f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in final, final
    run = workspace / "runs" / run_id
    status_json = json.loads((run / "status.json").read_text())
    assert status_json["state"] == "completed" and status_json["step"] == TRAIN_STEPS
    losses, vals = _loss_log(run)
    assert [step for step, _ in losses] == list(range(1, TRAIN_STEPS + 1))  # every step logged once, in order
    assert [step for step, _ in vals] == [step for step, _ in reference_val]
    # the burst did not perturb the training: the same losses as the solo run (bit for bit on CPU)
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in reference_loss], rel=1e-6)
    assert [loss for _, loss in vals] == pytest.approx([loss for _, loss in reference_val], rel=1e-6)
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and not (run / "checkpoints").exists()
    assert "Traceback" not in log_path.read_text()

    def p95(values: list[float]) -> float:
        return sorted(values)[min(len(values) - 1, round(0.95 * (len(values) - 1)))]

    latencies = sorted(end - start for start, end in zip(sent, done, strict=True))  # queueing included
    compute = [float(re.search(r"answered in ([\d.]+) s", status).group(1)) for status, _ in outcomes]
    report = {"requests": BURST, "variants_per_request": len(VARIANTS), "max_new_tokens": MAX_NEW_TOKENS,
              "burst_s": round(burst_s, 1), "throughput_req_per_s": round(BURST / burst_s, 3),
              "latency_p50_s": round(statistics.median(latencies), 1), "latency_p95_s": round(p95(latencies), 1),
              "latency_max_s": round(latencies[-1], 1), "compute_p50_s": round(statistics.median(compute), 1),
              "compute_p95_s": round(p95(compute), 1), "answered_while_training": answered_meanwhile,
              "train_steps_during_burst": steps_meanwhile, "train_steps": TRAIN_STEPS,
              "solo_training_s": round(solo_s, 1)}
    print("\nconcurrency:", json.dumps(report))
