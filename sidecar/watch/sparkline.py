"""A one-line picture of a metric against checkpoint step, for a terminal (`status`, `status --all`).

Pure: values in, text out. Eight block characters (ASCII where the terminal's encoding cannot
show them); a missing value is a space. Cells are placed by step, never one per row: each cell is
an equal share of the step range and shows the mean of the values whose step falls in it (a cell
whose share holds no value stays blank), so uneven steps look uneven. With few points there are
just enough cells for each point to have its own; more points than cells share them.
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
    """`points` (step, value or None), sorted by step, placed by step over at most `cells` equal
    parts of the step range: each part holds the mean of the values whose step falls in it, a part
    that holds none is None (a gap). The parts are as many as it takes to give each point its own
    (the step range over the smallest step between two points, plus one), `cells` at most: evenly
    spaced steps get one part each, a gap in the steps shows as gaps, and more points than cells
    share them."""
    if cells <= 0 or not points:
        return []
    first, last = points[0][0], points[-1][0]
    span = last - first
    if span <= 0:
        return [points[0][1]]
    smallest = min(b[0] - a[0] for a, b in zip(points, points[1:]) if b[0] > a[0])
    parts = min(cells, math.ceil(span / smallest) + 1)
    sums = [0.0] * parts
    counts = [0] * parts
    for step, value in points:
        if value is None:
            continue
        part = min(parts - 1, int((step - first) * parts / span))
        sums[part] += value
        counts[part] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(parts)]


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
