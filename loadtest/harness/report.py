"""What a run shows: percentiles, Markdown tables, plots over time (matplotlib, from the
`loadtest` extra; a run without it just has no plots), progress lines and the one JSON line
that ends stdout for scripts and tests."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.harness.processes import log


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def rounded(value: float | None, scale: float = 1.0, digits: int = 1) -> float | None:
    return None if value is None else round(value * scale, digits)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table; numbers right-aligned."""
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "/")


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (pip install -e '.[loadtest]'): no plots")
        return None
    return plt


def line_plot(
    path: Path,
    title: str,
    lines: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    spans: Sequence[tuple[float, float, str]] = (),
    marks: Sequence[tuple[float, str]] = (),
) -> bool:
    """One PNG: a line per (label, xs, ys), shaded `spans` (start, end, label) and vertical
    `marks`; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label)
    for n, (start, end, label) in enumerate(spans):
        ax.axvspan(start, end, alpha=0.15, color=f"C{(n % 7) + 3}")
        ax.text(
            start, 1.0, label, rotation=90, va="top", fontsize=7, transform=ax.get_xaxis_transform()
        )
    for at, label in marks:
        ax.axvline(at, color="grey", linewidth=0.8)
        if label:
            ax.text(
                at,
                0.0,
                label,
                rotation=90,
                va="bottom",
                fontsize=7,
                transform=ax.get_xaxis_transform(),
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if lines:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def per_second(times: Sequence[float], start: float, end: float) -> tuple[list[float], list[int]]:
    """How many of `times` fall in each whole second from `start` to `end`."""
    width = max(1, math.ceil(end - start))
    counts = [0] * width
    for t in times:
        i = int(t - start)
        if 0 <= i < width:
            counts[i] += 1
    return [float(i) for i in range(width)], counts


def final_line(figures: dict[str, Any]) -> None:
    """The last line of stdout: one JSON object, for scripts and tests."""
    print(json.dumps(figures, separators=(",", ":"), default=str), flush=True)
    sys.stdout.flush()
