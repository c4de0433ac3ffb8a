"""core.charts: the trade-off chart and an evaluation's chart are PNGs, the loss curves an inline SVG with both
curves inside its plot area (drawn from numbers: no run folder, no model)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import pytest
from PIL import Image

from core.charts import (
    OTHER_COLOR,
    PNG_SIGNATURE,
    TradeoffGroup,
    eval_chart_png,
    loss_curves_svg,
    method_color,
    placeholder_png,
    point_label,
    save_chart,
    tradeoff_png,
)


def _row(run_id: str, method: str, trainable: float, wall_s: float, **quality: float) -> dict:
    return {"run_id": run_id, "method": method, "trainable_params": trainable, "wall_s": wall_s, **quality}


def test_tradeoff_png_draws_one_chart_row_per_group():
    evaluated = [_row("20250101-120000-lora-ab12", "lora", 1.8e6, 125.0, rougeL=0.4),
                 _row("20250101-110000-full-cd34", "full", 1.3e8, 900.0, rougeL=0.45)]
    by_loss = [_row("prompt-run", "prompt_tuning", 11_520, 80.0, final_val_loss=2.4)]
    fronts = {"trainable_params": [(1.8e6, 0.4), (1.3e8, 0.45)], "wall_s": [(125.0, 0.4), (900.0, 0.45)]}
    two = tradeoff_png([TradeoffGroup("evaluated", "ROUGE-L", "rougeL", True, evaluated, fronts),
                        TradeoffGroup("not evaluated", "val loss", "final_val_loss", False, by_loss,
                                      {"trainable_params": [(11_520, 2.4)], "wall_s": [(80.0, 2.4)]})])
    assert two.startswith(PNG_SIGNATURE) and len(two) > 10_000
    width, height = Image.open(io.BytesIO(two)).size
    assert width >= 1000 and height >= 800
    one = tradeoff_png([TradeoffGroup("evaluated", "ROUGE-L", "rougeL", True, evaluated, fronts)])
    assert Image.open(io.BytesIO(one)).size[1] < height


def test_tradeoff_png_without_points_is_a_placeholder():
    empty = tradeoff_png([], empty="No runs yet")
    assert empty.startswith(PNG_SIGNATURE) and Image.open(io.BytesIO(empty)).size == (1000, 160)
    assert tradeoff_png([TradeoffGroup("t", "y", "rougeL", True, [])]).startswith(PNG_SIGNATURE)
    assert placeholder_png("nothing").startswith(PNG_SIGNATURE)


def test_point_labels_and_method_colours():
    assert point_label({"run_id": "20250101-120000-lora-ab12", "method": "lora"}) == "lora · ab12"
    assert point_label({"run_id": "my-run", "method": None}) == "? · my-run"
    assert point_label({"run_id": "x" * 30, "method": "ia3"}) == "ia3 · …" + "x" * 16
    assert method_color("lora") != method_color("full") and method_color("nope") == OTHER_COLOR


def _polyline(svg: str, css: str) -> list[tuple[float, float]]:
    points = re.search(rf"<polyline points='([^']+)' class='{css}'", svg).group(1).split()
    return [tuple(float(v) for v in point.split(",")) for point in points]


def test_loss_curves_svg_draws_both_curves_in_the_plot_area():
    svg = loss_curves_svg([(1, 4.0), (2, 3.0), (10, 2.0)], [(0, 3.5), (10, 2.5)], 10, width=600, height=260)
    train, val = _polyline(svg, "ta-train"), _polyline(svg, "ta-val")
    assert len(train) == 3 and len(val) == 2 and svg.count("class='ta-val-dot'") == 2
    xs, ys = [x for x, _ in train + val], [y for _, y in train + val]
    assert min(xs) >= 48 and max(xs) == pytest.approx(600 - 12)  # step 10 of 10 at the right edge
    assert all(12 <= y <= 260 - 34 for y in ys)
    assert ys[0] < ys[1] < ys[2]  # a falling loss climbs down the SVG (y grows downwards)
    assert "last 2.000" in svg and "last 2.500" in svg
    assert "stroke='#4f8cff'" in svg and "fill='none'" in svg  # coloured without the app's CSS


def test_loss_curves_svg_smooths_a_long_curve_and_says_when_empty():
    train = [(step, 3.0 - step / 100 + (0.3 if step % 2 else 0.0)) for step in range(1, 41)]
    svg = loss_curves_svg(train, [], 50, title="run <1>")
    assert len(_polyline(svg, "ta-train ta-raw")) == 40 and len(_polyline(svg, "ta-train-smooth")) == 40
    assert "run &lt;1&gt;" in svg and "ta-val'" not in svg
    assert "appear here once training starts" in loss_curves_svg([], [])
    assert loss_curves_svg([], [], empty="No <loss>") == "<div class='ta-chart ta-why'>No &lt;loss&gt;</div>"
    only_val = loss_curves_svg([], [(0, 3.0)])
    assert "ta-train" not in only_val and "class='ta-val-dot'" in only_val


@dataclass
class _Evaluated:
    n: int
    variants: list[str]
    summary: dict


def test_eval_chart_is_saved_as_a_png_and_skipped_without_scores(tmp_path):
    stats = {"mean": 0.4, "low": 0.3, "high": 0.5, "n": 4}
    result = _Evaluated(4, ["zero_shot", "finetuned", "missing"],
                        {"zero_shot": {"all": {"rougeL": stats}}, "finetuned": {"all": {"rougeL": stats,
                                                                                        "token_f1": stats}}})
    path = save_chart(result, tmp_path / "chart.png")
    assert path == tmp_path / "chart.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # written atomically: no temporary file left
    assert eval_chart_png(result, metrics=("bleu",)) is None
    assert save_chart(_Evaluated(1, ["a"], {"a": {"all": {}}}), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
