"""A minimal tab: ask the base model one question (the Arena tab replaces it as the main view)."""

from __future__ import annotations

import gradio as gr

from core.engine import Engine
from core.generation import GenerationConfig
from core.models import ModelNotFoundError


def create_ask_tab(engine: Engine) -> dict[str, gr.components.Component]:
    """Lay out a prompt box, settings and an answer box; wire the Ask button to ``engine.ask``."""
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Ask the base model something", elem_id="prompt")
            system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="system")
        with gr.Column(scale=1):
            max_new_tokens = gr.Slider(8, 512, value=96, step=8, label="Max new tokens", elem_id="max-new-tokens")
            ask = gr.Button("Ask", variant="primary", elem_id="ask")
    answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="answer")
    stats = gr.Markdown(elem_id="stats")

    def on_ask(prompt_text: str, system_text: str, tokens: float) -> tuple[str, str]:
        try:
            config = GenerationConfig(max_new_tokens=int(tokens))
            reply = engine.ask(prompt_text, system=system_text or None, generation=config)
        except (ValueError, ModelNotFoundError) as err:
            raise gr.Error(str(err)) from None
        rate = reply.new_tokens / reply.latency_s if reply.latency_s else 0.0
        return reply.text, f"{reply.new_tokens} tokens in {reply.latency_s:.1f} s ({rate:.1f} tokens/s)"

    ask.click(on_ask, [prompt, system, max_new_tokens], [answer, stats], api_name="ask")
    prompt.submit(on_ask, [prompt, system, max_new_tokens], [answer, stats])
    return {"prompt": prompt, "system": system, "max_new_tokens": max_new_tokens, "ask": ask, "answer": answer}
