"""Arena tab: one query through the chosen variants, answers streamed side by side as cards, scored; under them the
verdict of the latest saved evaluation for the query's task (ui.verdict), when there is one.

Layout and wiring only: widget values -> ArenaConfig -> ``engine.arena`` (run in a worker thread so answers can be
streamed), result -> HTML cards.
"""

from __future__ import annotations

import html
import queue
import random
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from core.arena import DEFAULT_VARIANTS, STRATEGIES, ArenaConfig, ArenaResult
from core.arena.feedback import answer_label
from core.arena.metrics import METRIC_LABELS
from core.data import demo_path, load_examples
from core.engine import DEMO_RUN, Engine
from core.inference import GenerationConfig
from core.text import one_line
from ui.common import DEMO_INDEX, field_default, field_help, index_choices, run_choices
from ui.eval_views import probabilities_html
from ui.verdict import arena_verdict
from ui.visitors import scoped

CLEAR_REFERENCE = "() => ['', null]"  # the reference answer and the demo question picked: both cleared
CHIPS = ("rougeL", "bleu", "token_f1", "similarity", "accuracy")  # the scores a card shows, named by METRIC_LABELS


def _examples() -> list[tuple[str, int]]:
    rows = load_examples(demo_path("test.jsonl")).examples
    return [(f"{row.task}: {row.instruction[:70]}" + (f" / {row.input[:40]}…" if row.input else ""), number)
            for number, row in enumerate(rows)]


def _card(result: dict[str, Any], best: dict[str, float], streaming: str | None = None, label: str | None = None,
          blind: bool = False) -> str:
    """One variant's card. ``label`` (A, B, …) heads it; ``blind`` shows the answer alone, nothing that could tell
    the variant (its name, scores, latency, passages, prompt)."""
    title = html.escape(label if blind else (f"{label} · {result['variant']}" if label else result["variant"]))
    if not result.get("available", True):
        return (f"<div class='ta-card ta-off'><h3>{title}</h3><p class='ta-why'>Unavailable: "
                f"{html.escape(result.get('error') or '')}</p></div>")
    answer = streaming if streaming is not None else result.get("answer", "")
    if blind:
        return (f"<div class='ta-card ta-blind'><h3>{title}</h3>"
                f"<div class='ta-answer'>{html.escape(answer) or '<i>…</i>'}</div></div>")
    chips = []
    if result.get("latency_s") is not None:
        chips.append(f"<span class='ta-chip'>{result['latency_s']:.1f} s</span>")
        chips.append("<span class='ta-chip'>label</span>" if result.get("probabilities") else
                     f"<span class='ta-chip'>{result.get('new_tokens', 0)} tokens</span>")
    for key in CHIPS:
        value = (result.get("metrics") or {}).get(key)
        if value is None:
            continue
        star = " ta-best" if best.get(key) is not None and value >= best[key] - 1e-9 else ""
        chips.append(f"<span class='ta-chip ta-score{star}'>{METRIC_LABELS[key]} {value:.2f}</span>")
    retrieved = "".join(
        f"<li><b>{passage['score']:.2f}</b> {html.escape(passage['source'].rsplit('/', 1)[-1])}: "
        f"{html.escape(' '.join(passage['text'].split())[:300])}</li>" for passage in result.get("retrieved", []))
    parts = [f"<div class='ta-card'><h3>{title}</h3>",
             f"<div class='ta-answer'>{html.escape(answer) or '<i>…</i>'}</div>",
             probabilities_html(result.get("probabilities")),
             f"<div class='ta-chips'>{''.join(chips)}</div>"]
    parts += [f"<p class='ta-why'>{html.escape(note)}</p>" for note in result.get("notes") or []]
    if retrieved:
        parts.append(f"<details><summary>Retrieved passages</summary><ol>{retrieved}</ol></details>")
    if result.get("prompt"):
        parts.append(f"<details><summary>Exact prompt</summary><pre>{html.escape(result['prompt'])}</pre></details>")
    parts.append("</div>")
    return "".join(parts)


def render_cards(results: list[dict[str, Any]], streams: dict[int, str] | None = None, *,
                 order: list[int] | None = None, blind: bool = False) -> str:
    """Cards side by side; the best value of each metric (over available variants) is highlighted. ``order``: the
    indices of ``results`` to show, in that order, headed A, B, C… (a vote's cards); ``blind`` hides what tells the
    variants apart (see ``_card``). ``streams``: text so far by index of ``results``."""
    best: dict[str, float] = {}
    for key in CHIPS:
        values = [(r.get("metrics") or {}).get(key) for r in results if r.get("available", True)]
        values = [v for v in values if v is not None]
        if len(values) > 1 and max(values) > min(values):
            best[key] = max(values)
    if order is None:
        cards = [_card(result, best, (streams or {}).get(number)) for number, result in enumerate(results)]
    else:
        cards = [_card(results[number], best, (streams or {}).get(number), answer_label(position), blind)
                 for position, number in enumerate(order)]
    return f"<div class='ta-cards'>{''.join(cards)}</div>"


def vote_order(results: list[dict[str, Any]], blind: bool, rng: random.Random) -> list[int]:
    """The indices of the answers a person votes on: the available ones, shuffled when blind."""
    order = [number for number, result in enumerate(results) if result.get("available", True)]
    if blind:
        rng.shuffle(order)
    return order


def vote_choices(count: int) -> list[tuple[str, str]]:
    """The vote's options: each card's label, a tie, or all bad."""
    return [(f"{answer_label(number)} is best", answer_label(number)) for number in range(count)] + [
        ("Tie", "tie"), ("All bad", "all_bad")]


def create_arena_tab(engine: Engine) -> dict[str, Any]:
    instance = engine  # build time only: every handler works with the requesting visitor's engine
    examples = _examples()
    first = load_examples(demo_path("test.jsonl")).examples[0]  # a newcomer can press Run at once
    runs = run_choices(engine)
    demo_run = [path for _, path in runs if path.endswith(f"/{DEMO_RUN}")]
    with gr.Row():
        with gr.Column(scale=3):
            query = gr.Textbox(first.instruction, label="Query", lines=2,
                               placeholder="Ask about the demo company, or anything", elem_id="arena-query")
            with gr.Row():
                reference = gr.Textbox(first.output or "", label="Reference answer (optional: enables scores)",
                                       lines=2, elem_id="arena-reference")
                task = gr.Dropdown(["", "qa", "summarization", "classification"], value=first.task or "", label="Task",
                                   elem_id="arena-task")
            context = gr.Textbox(label="Input text (e.g. a message to summarise)", lines=2, visible=True,
                                 elem_id="arena-input")
            pick = gr.Dropdown(examples, label="…or pick a demo test question", value=None, elem_id="arena-pick")
        with gr.Column(scale=2):
            variants = gr.CheckboxGroup(list(STRATEGIES), value=list(DEFAULT_VARIANTS), label="Variants",
                                        info=" · ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values()),
                                        elem_id="arena-variants")
            adapter = gr.Dropdown(runs, value=demo_run, label="Fine-tuned run(s)", multiselect=True,
                                  elem_id="arena-adapter")
            index = gr.Dropdown(index_choices(engine), value=DEMO_INDEX, label="Knowledge base", elem_id="arena-index")
            refresh_lists = gr.Button("Refresh runs and knowledge bases", size="sm", elem_id="arena-refresh")
            with gr.Accordion("Settings", open=False):
                shots = gr.Slider(0, 8, value=field_default(ArenaConfig, "few_shot_k"), step=1,
                                  label="Few-shot examples", info=field_help(ArenaConfig, "few_shot_k"))
                rag_k = gr.Slider(1, 8, value=field_default(ArenaConfig, "rag_k"), step=1, label="Retrieved passages",
                                  info=field_help(ArenaConfig, "rag_k"))
                max_new_tokens = gr.Slider(8, 512, value=96, step=8, label="Max new tokens",
                                           info=field_help(GenerationConfig, "max_new_tokens"))
                temperature = gr.Slider(0.0, 1.5, value=field_default(GenerationConfig, "temperature"), step=0.05,
                                        label="Temperature", info=field_help(GenerationConfig, "temperature"))
                top_p = gr.Slider(0.05, 1.0, value=field_default(GenerationConfig, "top_p"), step=0.05,
                                  label="Top-p", info=field_help(GenerationConfig, "top_p"))
                repetition = gr.Slider(1.0, 2.0, value=field_default(GenerationConfig, "repetition_penalty"),
                                       step=0.05, label="Repetition penalty",
                                       info=field_help(GenerationConfig, "repetition_penalty"))
                stop = gr.Textbox("", lines=2, label="Stop strings (one per line)", elem_id="arena-stop")
                base_model = gr.Dropdown([("SmolLM2-135M-Instruct (bundled)", "")], value="", allow_custom_value=True,
                                         label="Base model", info="or type a hub id or a local folder; fine-tuned "
                                         "runs must come from the same base model", elem_id="arena-base-model")
            blind = gr.Checkbox(False, label="Blind vote", elem_id="arena-blind",
                                info="answers as A, B, C… in a shuffled order, names shown after your vote")
            run = gr.Button("Run the arena", variant="primary", elem_id="arena-run")
    status = gr.Markdown(elem_id="arena-status")
    cards = gr.HTML(elem_id="arena-cards")
    shown = gr.State(None)  # the last result and the order its cards were shown in: what a vote is about
    with gr.Row(visible=False, elem_id="arena-vote-row") as vote_row:
        vote = gr.Radio([], label="Which answer is best?", elem_id="arena-vote", scale=4)
        submit_vote = gr.Button("Submit vote", elem_id="arena-vote-submit", scale=1)
    vote_status = gr.Markdown(elem_id="arena-vote-status")
    verdict = gr.HTML(arena_verdict(engine, first.task), elem_id="arena-verdict")  # the latest eval's, for the task

    def on_pick(number: int | None):
        if number is None:
            return gr.update(), gr.update(), gr.update(), gr.update()
        row = load_examples(demo_path("test.jsonl")).examples[int(number)]
        return row.instruction, row.output or "", row.input, row.task or ""

    def refresh(task_name: str | None = None, request: gr.Request | None = None):
        engine = scoped(instance, request)
        return (gr.update(choices=run_choices(engine)), gr.update(choices=index_choices(engine)),
                arena_verdict(engine, task_name))

    def on_task(task_name: str | None, request: gr.Request | None = None) -> str:
        return arena_verdict(scoped(instance, request), task_name)

    def on_run(query_text, reference_text, task_name, input_text, chosen, runs, index_choice, k_shots, k_rag,
               tokens, temp, nucleus=1.0, penalty=1.0, stop_text="", model="", is_blind=False,
               request: gr.Request | None = None) -> Iterator[tuple[str, str, dict | None]]:
        engine = scoped(instance, request)
        if not query_text or not query_text.strip():
            raise gr.Error("Type a query first (or pick a demo test question).")
        if not chosen:
            raise gr.Error("Choose at least one variant.")
        try:
            config = ArenaConfig(variants=list(chosen), adapters=list(runs or []), index=index_choice or None,
                                 few_shot_k=int(k_shots), rag_k=int(k_rag),
                                 generation=GenerationConfig(
                                     max_new_tokens=int(tokens), temperature=float(temp), top_p=float(nucleus),
                                     repetition_penalty=float(penalty),
                                     stop=[line for line in (stop_text or "").splitlines() if line.strip()]))
        except ValueError as err:
            raise gr.Error(str(err)) from None
        specs = config.specs()
        retrieves = any(STRATEGIES[spec.strategy].uses_retrieval for spec in specs)
        if retrieves and index_choice == DEMO_INDEX and not (engine.workspace.demo_index / "manifest.json").exists():
            yield "Indexing the demo corpus (once)…", "", None
            engine.ensure_demo_index()
        placeholder = [{"variant": s.name, "available": True, "answer": ""} for s in specs]
        order = vote_order(placeholder, bool(is_blind), random.Random())  # the cards' places, kept while streaming
        streams: dict[int, str] = {}
        updates: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = engine.arena(query_text, config, reference=reference_text or None,
                                                 task=task_name or None, input_text=input_text or "",
                                                 model=(model or "").strip() or None,
                                                 on_text=lambda variant, text: updates.put((variant, text)))
            except Exception as err:  # shown to the user as one line
                outcome["error"] = err
            updates.put(None)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        yield "Generating…", render_cards(placeholder, order=order, blind=bool(is_blind)), None
        while True:
            item = updates.get()
            if item is None:
                break
            while item is not None:
                streams[item[0]] = item[1]
                try:
                    item = updates.get_nowait()
                except queue.Empty:
                    break
            if item is None:
                break
            yield "Generating…", render_cards(placeholder, streams, order=order, blind=bool(is_blind)), None
        worker.join()
        if "error" in outcome:
            raise gr.Error(str(outcome["error"]).splitlines()[0])
        result: ArenaResult = outcome["result"]
        rows = [r.to_dict() for r in result.results]
        ran = [r for r in rows if r["available"]]
        summary = f"{len(ran)} of {len(rows)} variants answered in {result.wall_s:.1f} s"
        order = [number for number in order if rows[number]["available"]]
        voted = {"arena": result.to_dict(), "shown": [rows[number]["variant"] for number in order],
                 "order": order, "input": input_text or "", "blind": bool(is_blind),
                 "generation": {"max_new_tokens": int(tokens), "temperature": float(temp), "top_p": float(nucleus),
                                "repetition_penalty": float(penalty), "few_shot_k": int(k_shots),
                                "rag_k": int(k_rag), "index": index_choice or None,
                                "base_model": (model or "").strip() or None}}
        if is_blind:
            yield f"{summary} · pick the best answer below; the names show after your vote", render_cards(
                rows, order=order, blind=True), voted
            return
        if not reference_text:
            summary += " · add a reference answer to see scores"
        yield summary, render_cards(rows), voted

    def on_shown(voted: dict | None):
        """The vote row under a result with two or more answers (hidden while none is waiting for a vote)."""
        if not voted or len(voted["shown"]) < 2:
            return gr.update(visible=False), gr.update(choices=[], value=None), ""
        return gr.update(visible=True), gr.update(choices=vote_choices(len(voted["shown"])), value=None), ""

    def on_vote(choice: str | None, voted: dict | None, request: gr.Request | None = None):
        if not voted:
            raise gr.Error("Run the arena first: there is no answer to vote on.", print_exception=False)
        if not choice:
            raise gr.Error("Pick the best answer (or Tie, or All bad) first.", print_exception=False)
        engine = scoped(instance, request)
        try:  # the winner by its card's label (or tie, all_bad)
            saved = engine.record_vote(voted["arena"], choice, shown=voted["shown"], input_text=voted["input"],
                                       generation=voted["generation"], blind=voted["blind"])
        except ValueError as err:
            raise gr.Error(one_line(err), print_exception=False) from None
        rows = voted["arena"]["results"]
        verdict = {"tie": "a tie", "all_bad": "all bad"}.get(choice, f"{choice}: {saved['winner_variant']}")
        names = " · ".join(f"{answer_label(position)} = {name}" for position, name in enumerate(voted["shown"]))
        line = f"Vote saved ({verdict}). {names}. {len(engine.list_votes())} votes in this workspace: see the " \
               "Leaderboard tab."
        return (line, "Voted: the cards now show their variants.", render_cards(rows, order=voted["order"]),
                gr.update(visible=False), gr.update(choices=[], value=None), None)

    pick.change(on_pick, [pick], [query, reference, context, task])
    # a query typed by hand (.input does not fire when on_pick fills it) clears the demo question's reference and the
    # pick, in the browser: no server reply arrives late to wipe a reference typed right after
    query.input(None, None, [reference, pick], js=CLEAR_REFERENCE)
    inputs = [query, reference, task, context, variants, adapter, index, shots, rag_k, max_new_tokens, temperature,
              top_p, repetition, stop, base_model, blind]
    # a new run hides the vote row first, then answers (one queue group for the button and Enter: at most two Arena
    # requests run at once, the rest wait their turn), then shows the vote row when the answers can be compared. One
    # chain, so the hiding can never land after the showing. The State output is not part of the API's answer: /arena
    # still returns status and cards.
    for trigger, api_name in ((run.click, "arena"), (query.submit, None)):
        answered = trigger(lambda: (gr.update(visible=False), ""), None, [vote_row, vote_status], queue=False,
                           api_visibility="private").then(
            on_run, inputs, [status, cards, shown], api_name=api_name, concurrency_limit=2, concurrency_id="arena")
        answered.success(on_shown, [shown], [vote_row, vote, vote_status], queue=False, api_visibility="private")
    submit_vote.click(on_vote, [vote, shown], [vote_status, status, cards, vote_row, vote, shown],
                      api_visibility="private")

    def vote_api(arena: dict, winner: str, shown_variants: list[str], input_text: str = "", blind: bool = True,
                 base_model: str = "", request: gr.Request | None = None) -> dict:
        """Record a vote on an arena result (``ArenaResult.to_dict()``): ``winner`` is one of ``shown_variants``
        (the variants in the order the cards were shown), "tie" or "all_bad"; ``base_model``: the model the /arena
        call answered with (its ``base_model``; empty = the default). Returns the saved vote."""
        try:
            return scoped(instance, request).record_vote(arena, winner, shown=list(shown_variants),
                                                         input_text=input_text, blind=blind,
                                                         base_model=(base_model or "").strip() or None)
        except ValueError as err:
            raise gr.Error(one_line(err), print_exception=False) from None

    gr.api(vote_api, api_name="vote")
    refresh_lists.click(refresh, [task], [adapter, index, verdict], queue=False)
    task.change(on_task, [task], [verdict], queue=False, api_visibility="private")
    return {"query": query, "reference": reference, "task": task, "variants": variants, "adapter": adapter,
            "index": index, "run": run, "cards": cards, "status": status, "verdict": verdict, "pick": pick,
            "blind": blind, "vote": vote, "vote_row": vote_row, "submit_vote": submit_vote, "vote_status": vote_status,
            "refresh": (refresh, [task], [adapter, index, verdict])}


CSS = """
.ta-cards {display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px;}
.ta-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px;
          background: var(--background-fill-secondary);}
.ta-card h3 {margin: 0 0 8px 0; font-size: 1.05em;}
.ta-off {opacity: 0.6;}
.ta-answer {white-space: pre-wrap; min-height: 3em; margin-bottom: 8px;}
.ta-chip {display: inline-block; padding: 2px 8px; margin: 2px; border-radius: 999px; font-size: 0.85em;
          background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);}
.ta-best {background: #d8f5d0; border-color: #4caf50; font-weight: 600; color: #1b5e20;}
.ta-card pre {white-space: pre-wrap; font-size: 0.8em; max-height: 300px; overflow: auto;}
.ta-why {font-style: italic;}
.ta-blind h3 {font-size: 1.3em;}
"""
