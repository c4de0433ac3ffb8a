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
