"""Build assets/demo/forgetting_probe.jsonl: keep the general-knowledge candidates the base model answers correctly.

    python assets/demo/build_forgetting_probe.py [--candidates assets/demo/probe_candidates.tsv]

Each candidate (question TAB short answer) is asked greedily through the chat template, in fp32 and in the
machine's default dtype; a row is kept only when the reference appears in both answers (case and punctuation
ignored). The probe then measures catastrophic forgetting: how many of these a fine-tuned model still gets right.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from core.inference import GenerationConfig  # noqa: E402
from core.models import load_causal_lm, pick_device, pick_dtype  # noqa: E402

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12"}


def normalise(text: str) -> str:
    words = re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split()
    return " ".join(NUMBER_WORDS.get(word, word) for word in words if word not in ("the", "a", "an"))


def is_correct(answer: str, reference: str) -> bool:
    return f" {normalise(reference)} " in f" {normalise(answer)} "


def answer_all(questions: list[str], dtype: str, batch_size: int = 16) -> list[str]:
    import torch

    loaded = load_causal_lm(dtype=dtype)
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    config = GenerationConfig(max_new_tokens=48)
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions[start : start + batch_size]
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, **config.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1] :]  # (batch, new_tokens)
        answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=Path, default=HERE / "probe_candidates.tsv")
    parser.add_argument("--out", type=Path, default=HERE / "forgetting_probe.jsonl")
    args = parser.parse_args()
    rows = [line.split("\t") for line in args.candidates.read_text().splitlines() if line.strip()]
    questions = [question for question, _ in rows]
    default = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(pick_dtype(pick_device()), "fp32")
    runs = {dtype: answer_all(questions, dtype) for dtype in dict.fromkeys(["fp32", default])}
    kept = []
    for index, (question, reference) in enumerate(rows):
        verdicts = {dtype: is_correct(answers[index], reference) for dtype, answers in runs.items()}
        status = "keep" if all(verdicts.values()) else "drop"
        print(f"{status}  {question!r} -> {runs['fp32'][index]!r} (ref {reference!r}) {verdicts}", file=sys.stderr)
        if status == "keep":
            kept.append({"task": "general_knowledge", "question": question, "answer": reference})
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
    os.replace(tmp, args.out)
    print(f"kept {len(kept)} of {len(rows)} candidates -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
