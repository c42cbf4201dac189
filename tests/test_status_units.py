"""Pure parts of `status`: the sparkline's resampling and heights, the run page's address."""

from sidecar.watch.sparkline import can_show_blocks, resample, sparkline, to_ascii
from sidecar.watch.status import run_url


def test_sparkline_heights_gaps_and_a_flat_line():
    assert sparkline([(1, 0.0), (2, 0.5), (3, 1.0)]) == "▁▅█"
    assert sparkline([(1, 1.0), (2, None), (3, 3.0)]) == "▁ █"  # a missing value is a space
    assert sparkline([(1, 2.0), (2, 2.0)]) == "▄▄"
    assert sparkline([(1, None)]) == "" and sparkline([]) == ""
    assert to_ascii("▁▅█ ") == "_=# "
    assert can_show_blocks("utf-8") and not can_show_blocks("ascii") and not can_show_blocks("latin-1")


def test_more_points_than_cells_are_averaged_over_equal_parts_of_the_step_range():
    points = [(step, float(step)) for step in range(0, 100)]
    assert resample(points, 4) == [12.0, 37.0, 62.0, 87.0]  # steps 0-24, 25-49, 50-74, 75-99
    uneven = [(0, 1.0), (1, 1.0), (2, 1.0), (100, 5.0)]  # the steps, not the rows, are spread evenly
    assert resample(uneven, 3) == [1.0, None, 5.0]
    assert len(sparkline([(s, s % 7) for s in range(1000)])) == 40


def test_few_points_are_placed_by_step_not_one_cell_per_row():
    assert sparkline([(100, 1.0), (200, 2.0), (300, 3.0), (1000, 4.0)]) == "▁▃▆      █"  # the gap shows
    assert sparkline([(0, 1.0), (3, 2.0), (5, 3.0)]) == "▁ ▅█"  # each point its own cell, by step
    assert sparkline([(s, float(s)) for s in range(100, 1300, 100)]) == "▁▂▂▃▄▄▅▅▆▇▇█"  # even steps: a cell each
    assert resample([(0, 1.0), (1, 3.0), (2, 5.0), (100, 7.0)], 40)[:2] == [3.0, None]  # too close: they share
    assert sparkline([(7, 0.5)]) == "▄"


def test_the_run_page_follows_wandb_base_url():
    assert run_url("team/proj/eval-abc", {}) == "https://wandb.ai/team/proj/runs/eval-abc"
    assert run_url("team/proj/eval-abc", {"WANDB_BASE_URL": "http://wandb.corp:8080/"}) == \
        "http://wandb.corp:8080/team/proj/runs/eval-abc"
    assert run_url("/proj/eval-abc", {}) is None  # no entity recorded: no address
