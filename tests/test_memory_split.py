"""max_forward_tokens: a micro-batch over the cap runs in parts (core.training.batches.split_by_tokens) whose
gradients add up to the same optimizer step."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.training import train
from core.training.batches import split_by_tokens
from tests.training_helpers import ROWS, tiny_config, train_rows, write_rows


def padded(part: list[int], lengths: list[int]) -> int:
    return len(part) * max(lengths[i] for i in part)


def test_rows_that_fit_stay_one_part_in_their_order():
    lengths = [5, 9, 7]
    assert split_by_tokens([2, 0, 1], lengths, 27) == [[2, 0, 1]]
    assert split_by_tokens([2, 0, 1], lengths, 0) == [[2, 0, 1]]  # 0: off
    assert split_by_tokens([], lengths, 4) == [[]]


@pytest.mark.parametrize("cap", [1, 10, 16, 30, 50])
def test_parts_keep_under_the_cap_and_hold_every_row_once(cap):
    lengths = [12, 3, 8, 8, 20, 1, 5, 9]
    rows = [6, 0, 3, 5, 1, 7, 2, 4]
    parts = split_by_tokens(rows, lengths, cap)
    assert sorted(i for part in parts for i in part) == sorted(rows)
    for part in parts:  # a row longer than the cap goes alone; every other part fits
        assert len(part) == 1 or padded(part, lengths) <= cap
    if cap >= max(lengths):
        assert all(padded(part, lengths) <= cap for part in parts)


def test_longest_rows_share_a_part_so_padding_stays_small():
    lengths = [10, 2, 10, 2]
    parts = split_by_tokens([0, 1, 2, 3], lengths, 20)
    assert parts == [[0, 2], [1, 3]]  # not [[0, 1], [2, 3]], which pads the short rows to 10


def _cost(parts: list[list[int]], lengths: list[int], pass_cost: int) -> int:
    return sum(padded(part, lengths) + pass_cost for part in parts)


def _cheapest_by_brute_force(rows: list[int], lengths: list[int], cap: int, pass_cost: int) -> int:
    """Every way to cut the length-sorted rows into consecutive parts (2^(n-1) of them)."""
    order = sorted(rows, key=lambda i: -lengths[i])
    best = None
    for mask in range(2 ** (len(order) - 1)):
        parts, part = [], [order[0]]
        for k, row in enumerate(order[1:]):
            if mask >> k & 1:
                parts.append(part)
                part = []
            part.append(row)
        parts.append(part)
        if all(len(p) == 1 or padded(p, lengths) <= cap for p in parts):
            cost = _cost(parts, lengths, pass_cost)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_the_split_is_the_cheapest_cut_of_the_sorted_rows(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(5, 40), rng.randint(100, 300)]) for _ in range(9)]
    rows = rng.sample(range(9), rng.randint(2, 9))
    cap, pass_cost = rng.choice([256, 512, 1024, 4096]), rng.choice([0, 16, 64, 400])
    parts = split_by_tokens(rows, lengths, cap, pass_cost)
    assert sorted(i for part in parts for i in part) == sorted(rows)
    assert all(len(part) == 1 or padded(part, lengths) <= cap for part in parts)
    assert _cost(parts, lengths, pass_cost) == _cheapest_by_brute_force(rows, lengths, cap, pass_cost)


def test_a_random_batch_that_fits_is_cut_where_padding_costs_more_than_a_pass():
    lengths = [300, 40, 35, 30, 25]
    assert split_by_tokens([1, 0, 2, 3, 4], lengths, 4096) == [[0], [1, 2, 3, 4]]  # 1500 padded -> 460
    assert split_by_tokens([1, 0, 2, 3, 4], lengths, 4096, pass_cost=2000) == [[1, 0, 2, 3, 4]]  # a pass dearer


def test_negative_cap_is_refused_by_name(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(ConfigError, match="^max_forward_tokens: "):
        tiny_config(data, tiny_model_dir, max_forward_tokens=-1)


def test_split_forward_passes_give_the_same_steps(tmp_path, tiny_model_dir):
    """Without dropout the parts' gradients sum to the whole micro-batch's: same losses, same weights."""
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    common = {"max_steps": 3, "batch_size": 8, "val_fraction": 0.0, "method": "lora",
              "method_config": {"dropout": 0.0}}
    whole = train(tiny_config(data, tiny_model_dir, max_forward_tokens=0, **common), runs_root=tmp_path / "a")
    split = train(tiny_config(data, tiny_model_dir, max_forward_tokens=40, **common), runs_root=tmp_path / "b")
    assert whole.tokens_per_s > 0 and split.tokens_per_s > 0
    for a, b in zip(train_rows(whole.run_dir), train_rows(split.run_dir), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_the_default_splits_on_a_cpu_and_not_on_a_gpu(tmp_path, tiny_model_dir):
    from core.training.config import CPU_FORWARD_TOKENS

    data = write_rows(tmp_path / "train.jsonl", ROWS)
    default = tiny_config(data, tiny_model_dir)
    assert default.max_forward_tokens is None
    assert default.forward_tokens("cpu") == CPU_FORWARD_TOKENS
    assert default.forward_tokens("cuda:0") == 0 and default.forward_tokens("mps") == 0
    assert tiny_config(data, tiny_model_dir, max_forward_tokens=0).forward_tokens("cpu") == 0
    assert tiny_config(data, tiny_model_dir, max_forward_tokens=256).forward_tokens("cuda:0") == 256
