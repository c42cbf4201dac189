"""A one-line picture of a metric against checkpoint step, for a terminal (`status`, `status --all`).

Pure: values in, text out. Eight block characters (ASCII where the terminal's encoding cannot
show them); a missing value is a space. More points than cells are resampled evenly over the step
range: each cell is the mean of the values whose step falls in its share of the range (a cell
whose share holds no value stays blank).
"""

from __future__ import annotations

import math
from typing import Iterable

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII = "_.-:=+*#"  # low to high, for terminals that cannot show the blocks
MAX_CELLS = 40


def can_show_blocks(encoding: str | None) -> bool:
    """Whether text in this encoding (a stream's `.encoding`) can hold the block characters."""
    try:
        BLOCKS.encode(encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def resample(points: list[tuple[int, float | None]], cells: int) -> list[float | None]:
    """`points` (step, value or None), sorted by step, as at most `cells` values: one per point when
    they fit, else the mean of the values in each of `cells` equal parts of the step range."""
    if cells <= 0 or not points:
        return []
    if len(points) <= cells:
        return [v for _, v in points]
    first, last = points[0][0], points[-1][0]
    span = max(last - first, 1)
    sums = [0.0] * cells
    counts = [0] * cells
    for step, value in points:
        if value is None:
            continue
        cell = min(cells - 1, int((step - first) * cells / span))
        sums[cell] += value
        counts[cell] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(cells)]


def sparkline(points: Iterable[tuple[int, float | None]], cells: int = MAX_CELLS, ascii: bool = False) -> str:
    """The picture of `points` (step, value or None) in at most `cells` characters; "" when no point
    has a value. The lowest value is the lowest block, the highest the highest; all equal: the middle."""
    points = sorted(points, key=lambda p: p[0])
    values = resample(points, cells)
    numbers = [v for v in values if v is not None]
    if not numbers:
        return ""
    chars = ASCII if ascii else BLOCKS
    low, high = min(numbers), max(numbers)
    top = len(chars) - 1
    out = []
    for value in values:
        if value is None:
            out.append(" ")
        elif high == low:
            out.append(chars[top // 2])
        else:
            out.append(chars[round((value - low) / (high - low) * top)])
    return "".join(out)


def metric_points(rows: dict[int, dict], metric: str) -> list[tuple[int, float | None]]:
    """(step, value) of one metric over state rows, None where a row has no number for it."""
    out = []
    for step in sorted(rows):
        value = rows[step].get(metric)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        out.append((step, float(value) if number else None))
    return out


_TO_ASCII = str.maketrans(BLOCKS, ASCII)


def to_ascii(line: str) -> str:
    """A block sparkline in the ASCII characters of the same heights."""
    return line.translate(_TO_ASCII)
