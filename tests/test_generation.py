"""Generation on the tiny Llama (fp32, CPU): one left-padded batch equals one-by-one calls, stop/eos/length
endings, decoding settings; AdapterHost: mixed LoRA batches equal each adapter alone and leave base rows clean,
unmixable adapters get batches of their own, adapters of another base model are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from arena_helpers import PROMPTS, one_torch_thread, rendered, talkative_model_dir, trained_runs
from tiny_models import build_tiny_llama
from training_helpers import ROWS, SMALL_METHOD_CONFIG, tiny_config, write_rows

from core.inference import AdapterError, AdapterHost, GenerationConfig, generate_batch, load_trained_model
from core.models import load_causal_lm
from core.training import train

GEN = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def talkative_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return talkative_model_dir(tmp_path_factory, tiny_tokenizer)


@pytest.fixture(scope="module")
def tiny(talkative_dir):
    """The plain base model, never touched by an adapter."""
    return load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def prompts(tiny):
    return rendered(tiny.tokenizer, PROMPTS)


def one_by_one(loaded, prompts, config=GEN):
    return [generate_batch(loaded.model, loaded.tokenizer, [p], config)[0] for p in prompts]


# --------------------------------------------------------------------------------------------------------------------
# generate_batch
# --------------------------------------------------------------------------------------------------------------------


def test_batched_generation_equals_one_by_one(tiny, prompts):
    batched = generate_batch(tiny.model, tiny.tokenizer, prompts, GEN)
    alone = one_by_one(tiny, prompts)
    assert [(b.text, b.new_tokens, b.finish) for b in batched] == [(a.text, a.new_tokens, a.finish) for a in alone]
    assert [b.prompt_tokens for b in batched] == [a.prompt_tokens for a in alone]
    assert len({b.prompt_tokens for b in batched}) == 3  # really different lengths: left padding was exercised
    assert all(b.text for b in batched) and len({b.text for b in batched}) == 3
    assert all(b.batch_size == 3 for b in batched) and all(a.batch_size == 1 for a in alone)
    assert all(0 < b.last_token_s <= b.batch_s for b in batched + alone)
    assert len({b.started_at for b in batched}) == 1


def test_prompt_tokens_count_the_prompt_without_padding(tiny, prompts):
    out = generate_batch(tiny.model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=1))
    assert [o.prompt_tokens for o in out] == [len(tiny.tokenizer(p, add_special_tokens=False)["input_ids"])
                                              for p in prompts]


def test_max_new_tokens_ends_with_length(tiny, prompts):
    for limit in (1, 4):
        out = generate_batch(tiny.model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=limit))
        assert all(o.finish == "length" and o.new_tokens == limit for o in out)  # this model never ends by itself


def test_stop_string_cuts_the_text_and_only_its_row(tiny, prompts):
    plain = generate_batch(tiny.model, tiny.tokenizer, prompts, GEN)
    stop = plain[0].text[2:4]
    assert stop.strip()
    assert all(stop not in o.text for o in plain[1:])  # the other rows never produce it
    cut = generate_batch(tiny.model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=10, stop=[stop]))
    assert cut[0].finish == "stop" and stop not in cut[0].text
    assert cut[0].text == plain[0].text[:plain[0].text.index(stop)].strip()
    assert cut[0].new_tokens < GEN.max_new_tokens  # generation ended there, not at the limit
    assert [(o.text, o.finish) for o in cut[1:]] == [(o.text, "length") for o in plain[1:]]


def test_end_of_sequence_token_ends_a_row_and_is_not_counted(tiny, prompts, monkeypatch):
    config = GenerationConfig(max_new_tokens=10, repetition_penalty=2.0)  # the penalty makes row 0 change tokens
    encoded = tiny.tokenizer(prompts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = tiny.model.generate(**encoded, **config.generate_kwargs(), pad_token_id=2)[0, -10:].tolist()
    position = next(i for i in range(2, 10) if ids[i] not in ids[:i])  # a token first produced at step i
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", [2, ids[position]])
    streamed: dict[int, str] = {}
    out = generate_batch(tiny.model, tiny.tokenizer, prompts, config,
                         on_text=lambda row, text: streamed.update({row: text}))
    assert out[0].finish == "eos" and out[0].new_tokens == position
    assert out[0].text == tiny.tokenizer.decode(ids[:position], skip_special_tokens=True).strip()
    assert streamed[0].strip() == out[0].text  # the end token is not streamed either
    assert out[0].last_token_s <= out[0].batch_s
    assert out[1:] and all(o.finish in ("length", "eos") for o in out[1:])
    assert [o.text for o in out[1:]] == [o.text for o in one_by_one(tiny, prompts[1:], config)]  # after an end


def test_streamed_text_grows_to_the_answer(tiny, prompts):
    seen: dict[int, list[str]] = {}
    out = generate_batch(tiny.model, tiny.tokenizer, prompts, GEN,
                         on_text=lambda row, text: seen.setdefault(row, []).append(text))
    assert set(seen) == {0, 1, 2}
    for row, texts in seen.items():
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
        assert texts[-1].strip() == out[row].text


def test_sampling_is_seeded(tiny, prompts):
    def sample(seed):
        config = GenerationConfig(max_new_tokens=8, temperature=1.5, top_p=1.0, seed=seed)
        return [o.text for o in generate_batch(tiny.model, tiny.tokenizer, prompts, config)]

    assert sample(3) == sample(3)
    greedy = [o.text for o in generate_batch(tiny.model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=8))]
    assert any(sample(seed) != greedy for seed in (3, 4, 5))


def test_no_prompts_no_output(tiny):
    assert generate_batch(tiny.model, tiny.tokenizer, [], GEN) == []


@pytest.mark.parametrize(("values", "field"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2049}, "max_new_tokens"),
    ({"max_new_tokens": 1.5}, "max_new_tokens"), ({"max_new_tokens": True}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"repetition_penalty": 0.9}, "repetition_penalty"),
])
def test_generation_config_errors_name_the_field(values, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        GenerationConfig(**values)


def test_generation_config_kwargs():
    assert GenerationConfig(stop="###").stop == ["###"]
    assert GenerationConfig(stop=["", "x"]).stop == ["x"]
    greedy = GenerationConfig(max_new_tokens=5).generate_kwargs()
    assert greedy["do_sample"] is False and greedy["max_new_tokens"] == 5 and greedy["temperature"] is None
    sampled = GenerationConfig(temperature=0.7, top_p=0.9).generate_kwargs()
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9


# --------------------------------------------------------------------------------------------------------------------
# AdapterHost with real tiny runs
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, talkative_dir):
    return trained_runs(tmp_path_factory, talkative_dir)


@pytest.fixture
def host(talkative_dir):
    return AdapterHost(load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32"))


def texts_alone(run_dir, prompts):
    """Each prompt one by one through a fresh load of the run (independent of AdapterHost)."""
    return [g.text for g in one_by_one(load_trained_model(run_dir, device="cpu", dtype="fp32"), prompts)]


def test_mixed_lora_batch_equals_each_adapter_alone(host, tiny, runs, prompts):
    a, b = host.add(runs["lora_a"]).key, host.add(runs["lora_b"]).key
    assert (a, b) == ("lora_a", "lora_b") and host.adapters[a].mixable and host.adapters[b].mixable
    rows = [prompts[0], prompts[1], prompts[2], prompts[0], prompts[2], prompts[1]]
    keys = [None, a, b, a, None, b]
    mixed = host.generate(rows, keys, GEN)
    assert [g.batch_size for g in mixed] == [6] * 6  # one generate call for all six
    texts = [g.text for g in mixed]
    base = [g.text for g in one_by_one(tiny, prompts)]
    alone_a, alone_b = texts_alone(runs["lora_a"], prompts), texts_alone(runs["lora_b"], prompts)
    assert [texts[0], texts[4]] == [base[0], base[2]]  # base rows untouched by the loaded adapters
    assert [texts[1], texts[3]] == [alone_a[1], alone_a[0]]
    assert [texts[2], texts[5]] == [alone_b[2], alone_b[1]]
    assert alone_a != base and alone_b != base and alone_a != alone_b  # the adapters really change answers
    one_at_a_time = [host.generate([p], [key], GEN)[0].text for p, key in zip(rows, keys, strict=True)]
    assert one_at_a_time == texts


def test_base_rows_stay_clean_after_adapters_are_loaded(host, tiny, runs, prompts):
    host.add(runs["lora_a"])
    host.add(runs["lora_b"])
    only_base = host.generate(prompts, [None] * 3, GEN)
    assert [g.text for g in only_base] == [g.text for g in one_by_one(tiny, prompts)]
    assert host._peft is not None and set(host._peft.peft_config) == {"lora_a", "lora_b"}  # really loaded


def test_max_batch_size_splits_without_changing_answers(host, runs, prompts):
    key = host.add(runs["lora_a"]).key
    rows, keys = [prompts[0], prompts[1], prompts[2], prompts[1], prompts[0]], [None, key, None, key, key]
    whole = host.generate(rows, keys, GEN)
    progress: list[tuple[int, int]] = []
    split = host.generate(rows, keys, GEN, max_batch_size=2,
                          on_batch=lambda done, total: progress.append((done, total)))
    assert [g.text for g in split] == [g.text for g in whole]
    # continuous batching: two rows at a time, a waiting row joins as soon as one ends; progress per ended row
    assert [g.batch_size for g in split] == [2] * 5 and progress == [(n, 5) for n in range(1, 6)]
    assert len({g.started_at for g in split}) == 1  # one decoding loop for the base and LoRA rows


@pytest.mark.parametrize("name", ["ia3", "prompt_tuning"])
def test_unmixable_adapter_gets_its_own_batch(host, tiny, runs, prompts, name):
    key = host.add(runs[name]).key
    assert not host.adapters[key].mixable and host.adapters[key].method == name
    streamed: dict[int, str] = {}
    out = host.generate([prompts[0], prompts[1], prompts[2], prompts[1]], [key, None, key, None], GEN,
                        on_text=lambda row, text: streamed.update({row: text}))
    assert len({len(tiny.tokenizer(prompts[i], add_special_tokens=False)["input_ids"]) for i in (0, 2)}) == 2
    assert [g.batch_size for g in out] == [2, 2, 2, 2]  # the adapter's rows (of two lengths) apart from the base rows
    alone = texts_alone(runs[name], prompts)
    assert [out[0].text, out[2].text] == [alone[0], alone[2]]  # batched (left padded) == one by one
    assert [out[1].text, out[3].text] == [one_by_one(tiny, prompts[1:2])[0].text] * 2
    assert alone != [g.text for g in one_by_one(tiny, prompts)]
    assert {row: text.strip() for row, text in streamed.items()} == {row: g.text for row, g in enumerate(out)}


def test_unmixable_adapters_are_reloaded_after_eviction(talkative_dir, runs, prompts):
    host = AdapterHost(load_causal_lm(str(talkative_dir), device="cpu", dtype="fp32"), max_separate=1)
    ia3, prompt = host.add(runs["ia3"]).key, host.add(runs["prompt_tuning"]).key
    first = host.generate([prompts[0], prompts[0]], [ia3, prompt], GEN)
    again = host.generate([prompts[0]], [ia3], GEN)
    assert again[0].text == first[0].text == texts_alone(runs["ia3"], prompts[:1])[0]
    assert first[1].text == texts_alone(runs["prompt_tuning"], prompts[:1])[0]


def test_removed_adapter_is_refused_and_the_others_still_work(host, runs, prompts):
    a, b = host.add(runs["lora_a"]).key, host.add(runs["lora_b"]).key
    before = host.generate(prompts, [b, b, None], GEN)
    host.remove(a)
    assert a not in host.adapters
    with pytest.raises(AdapterError, match="lora_a is not loaded"):
        host.generate(prompts[:1], [a], GEN)
    assert [g.text for g in host.generate(prompts, [b, b, None], GEN)] == [g.text for g in before]
    host.remove("never-added")  # nothing to do


def test_adding_a_run_twice_gives_the_same_key(host, runs):
    assert host.add(runs["lora_a"]) == host.add(runs["lora_a"]) and len(host.adapters) == 1


def test_two_runs_with_the_same_folder_name_stay_apart(host, runs, tmp_path):
    copy = tmp_path / "elsewhere" / Path(runs["lora_b"]).name
    shutil.copytree(runs["lora_b"], copy)
    first, second = host.add(runs["lora_b"]).key, host.add(copy).key
    assert first != second and host.add(copy).key == second
    assert host.adapters[second].run_dir == str(copy)


def test_unknown_adapter_or_wrong_lengths_are_refused(host, prompts):
    with pytest.raises(AdapterError, match="nope is not loaded"):
        host.generate(prompts[:1], ["nope"], GEN)
    with pytest.raises(ValueError, match="^adapters: 1 given for 2 prompts"):
        host.generate(prompts[:2], [None], GEN)


def test_a_folder_that_is_not_a_run_is_refused(host, tmp_path):
    with pytest.raises(AdapterError, match="not a training run folder"):
        host.add(tmp_path)


def test_adapter_of_another_base_model_is_refused_naming_both(host, tmp_path, tiny_tokenizer):
    other = tmp_path / "other-base"
    build_tiny_llama(len(tiny_tokenizer), seed=5).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    run = train(tiny_config(data, other, method="lora", max_steps=1), run_dir=tmp_path / "other-run").run_dir
    ours = host.base.resolved.name
    with pytest.raises(AdapterError, match=f"trained on base model {other}, but the arena's base model is {ours}"):
        host.add(run)
    assert host.adapters == {}


def test_the_same_base_folder_spelled_differently_is_accepted(host, runs, tmp_path, talkative_dir, monkeypatch):
    """A run trained with a relative path (or through a symlink) to the folder the arena loaded is the same model."""
    link = tmp_path / "link-to-base"
    link.symlink_to(talkative_dir, target_is_directory=True)
    for name, spelling in (("relative", talkative_dir.name), ("symlink", str(link))):
        copy = tmp_path / name
        shutil.copytree(runs["lora_a"], copy)
        config = json.loads((copy / "config.json").read_text())
        config["base_model"] = spelling
        (copy / "config.json").write_text(json.dumps(config))
        monkeypatch.chdir(talkative_dir.parent)
        assert host.add(copy).key == name


def test_continuous_batching_equals_one_by_one_with_rows_ending_at_different_steps(tiny, prompts, monkeypatch):
    """Rows that end early leave the batch and waiting rows join mid-flight; every answer is still the lone one."""
    many = [prompts[i % 3] + " " * (i // 3) for i in range(7)]  # seven prompts, four lengths
    alone = one_by_one(tiny, many)
    ends = {alone[i].text[:1] for i in (0, 4)}  # text a row's answer starts with, to make two rows end early
    ids = tiny.tokenizer(sorted(ends)[0], add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", [2, ids[0]])
    alone = one_by_one(tiny, many)
    done: list[int] = []
    batched = generate_batch(tiny.model, tiny.tokenizer, many, GEN, max_batch_size=3, on_done=done.append)
    assert [(b.text, b.new_tokens, b.finish) for b in batched] == [(a.text, a.new_tokens, a.finish) for a in alone]
    assert {a.new_tokens for a in alone} != {GEN.max_new_tokens}  # some rows really ended early
    assert sorted(done) == list(range(7)) and all(b.batch_size == 3 for b in batched)
    waited = [b for b in batched if b.joined_s > 0]  # rows that joined a running batch
    assert len(waited) >= 4 and all(0 < b.generate_s < b.last_token_s <= b.batch_s for b in waited)


# --------------------------------------------------------------------------------------------------------------------
# prompt-learning adapters: generation equals a greedy loop of full forward passes
# --------------------------------------------------------------------------------------------------------------------

PROMPT_LEARNING = ("prompt_tuning", "p_tuning", "multitask_prompt_tuning", "prefix_tuning")
MPT_TASKS = ["qa", "summarization", "classification"]


def built(method: str, model_dir: Path, tokenizer):
    """``method`` (the project's builder, the tests' small settings) on a fresh copy of the talkative model."""
    from transformers import AutoModelForCausalLM

    from core.methods import BuildContext, get_method

    torch.manual_seed(5)
    values = dict(SMALL_METHOD_CONFIG.get(method, {}))
    if method == "multitask_prompt_tuning":
        values.update(tasks=MPT_TASKS, init="random")
    entry = get_method(method)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = entry.builder(base, entry.make_config(values), BuildContext(tokenizer, 10)).eval()
    if method == "multitask_prompt_tuning":  # task factors as after training: each task's prompt its own
        with torch.no_grad():
            encoder = model.prompt_encoder[model.active_adapter]
            encoder.prefix_task_cols.normal_(0, 1)
            encoder.prefix_task_rows.normal_(0, 1)
    return model


def greedy_reference(model, tokenizer, prompt: str, steps: int, task: int | None = None) -> list[int]:
    """The answer ids of a greedy loop that runs the whole forward pass (virtual tokens included) at every step."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    extra = {} if task is None else {"task_ids": torch.tensor([task])}
    new: list[int] = []
    with torch.no_grad():
        while len(new) < steps:
            token = int(model(input_ids=torch.tensor([ids + new]), **extra).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return new


def expected(tokenizer, answers: list[list[int]]) -> list[tuple[str, int]]:
    return [(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids)) for ids in answers]


@pytest.fixture(scope="module")
def prompt_models(talkative_dir, tiny):
    return {method: built(method, talkative_dir, tiny.tokenizer) for method in PROMPT_LEARNING}


@pytest.mark.parametrize("method", PROMPT_LEARNING)
@pytest.mark.parametrize("width", [None, 2])
def test_prompt_learning_generation_equals_full_forward_greedy(prompt_models, tiny, prompts, method, width):
    """Prompts of three lengths share a left-padded batch (``width`` 2: the third joins a running batch); each row's
    tokens are those of the full-forward loop. MPT rows of different tasks share the batch."""
    model = prompt_models[method]
    tasks = [2, 0, 1] if method == "multitask_prompt_tuning" else None
    reference = [greedy_reference(model, tiny.tokenizer, p, GEN.max_new_tokens, None if tasks is None else tasks[i])
                 for i, p in enumerate(prompts)]
    out = generate_batch(model, tiny.tokenizer, prompts, GEN, max_batch_size=width, task_ids=tasks)
    assert [(o.text, o.new_tokens) for o in out] == expected(tiny.tokenizer, reference)
    plain = [greedy_reference(tiny.model, tiny.tokenizer, p, GEN.max_new_tokens) for p in prompts]
    assert reference != plain  # the virtual tokens change the answers: the comparison is not the base model's


def test_multitask_rows_of_the_same_prompt_follow_their_own_task(prompt_models, tiny, prompts):
    model = prompt_models["multitask_prompt_tuning"]
    reference = [greedy_reference(model, tiny.tokenizer, prompts[0], GEN.max_new_tokens, task) for task in (0, 1, 2)]
    assert len({tuple(ids) for ids in reference}) > 1  # the tasks' prompts lead to different answers
    out = generate_batch(model, tiny.tokenizer, [prompts[0]] * 3, GEN, task_ids=[0, 1, 2])
    assert [(o.text, o.new_tokens) for o in out] == expected(tiny.tokenizer, reference)


def test_prompt_learning_keeps_stop_strings_streaming_and_the_hf_setting(prompt_models, tiny, prompts):
    """decoder="hf" takes the same (correct) path for prompt learning; a stop string cuts only its row; streamed
    text grows to the answer."""
    model = prompt_models["prompt_tuning"]
    plain = generate_batch(model, tiny.tokenizer, prompts, GEN)
    hf = generate_batch(model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=10, decoder="hf"))
    assert [o.text for o in hf] == [o.text for o in plain]
    pairs = [plain[0].text[i:i + 2] for i in range(2, len(plain[0].text) - 1)]
    stop = next(pair for pair in pairs if pair.isalpha() and all(pair not in o.text for o in plain[1:]))
    seen: dict[int, list[str]] = {}
    cut = generate_batch(model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=10, stop=[stop]),
                         on_text=lambda row, text: seen.setdefault(row, []).append(text))
    assert cut[0].finish == "stop" and cut[0].text == plain[0].text[:plain[0].text.index(stop)].strip()
    assert [(o.text, o.finish) for o in cut[1:]] == [(o.text, "length") for o in plain[1:]]
    assert all(b.startswith(a) for texts in seen.values() for a, b in zip(texts, texts[1:], strict=False))
    assert [seen[row][-1].strip() for row in range(3)] == [o.text for o in cut]
    assert all(0 < o.last_token_s <= o.batch_s and o.prompt_tokens > 0 for o in cut)


def test_lora_and_base_generation_equal_full_forward_greedy(talkative_dir, tiny, prompts):
    """Models without virtual tokens are decoded as before: the full-forward loop, and model.generate (decoder hf)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(talkative_dir), dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    for model in (tiny.model, lora):
        reference = [greedy_reference(model, tiny.tokenizer, p, GEN.max_new_tokens) for p in prompts]
        out = generate_batch(model, tiny.tokenizer, prompts, GEN)
        hf = generate_batch(model, tiny.tokenizer, prompts, GenerationConfig(max_new_tokens=10, decoder="hf"))
        assert [(o.text, o.new_tokens) for o in out] == expected(tiny.tokenizer, reference)
        assert [o.text for o in hf] == [o.text for o in out]
