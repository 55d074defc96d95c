"""Building blocks of the plotly figures: point reduction, side-by-side subplot grids, error bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devprof import stats


def downsample(xs: Sequence[float], ys: Sequence[float | None], max_points: int = 2000) -> tuple[list, list]:
    """At most ``max_points`` points, keeping each bucket's min and max (peaks survive); None dropped."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    n = len(pts)
    if n <= max_points:
        return [p[0] for p in pts], [p[1] for p in pts]
    buckets = max(1, max_points // 2)
    keep: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if hi <= lo:
            continue
        seg = range(lo, hi)
        i_min = min(seg, key=lambda i: pts[i][1])
        i_max = max(seg, key=lambda i: pts[i][1])
        keep.extend(sorted({i_min, i_max}))
    return [pts[i][0] for i in keep], [pts[i][1] for i in keep]


def median_err(m: stats.Metric | None) -> tuple[float | None, float, float]:
    if m is None:
        return None, 0.0, 0.0
    return m.median, max(0.0, m.ci_high - m.median), max(0.0, m.median - m.ci_low)


def grid(titles: Sequence[str], widths: Sequence[float] | None = None, gap: float = 0.07) -> dict[str, Any]:
    """Layout of side-by-side subplots: axes x, x2, ... with a title above each."""
    n = len(titles)
    widths = list(widths or [1.0 / n] * n)
    usable = 1.0 - gap * (n - 1)
    layout: dict[str, Any] = {"annotations": []}
    x = 0.0
    for i, (title, w) in enumerate(zip(titles, widths)):
        a, b = x, min(1.0, x + w * usable)
        x = b + gap
        sfx = "" if i == 0 else str(i + 1)
        layout[f"xaxis{sfx}"] = {"domain": [a, b], "anchor": f"y{sfx}"}
        layout[f"yaxis{sfx}"] = {"anchor": f"x{sfx}", "rangemode": "tozero"}
        layout["annotations"].append({"text": title, "x": (a + b) / 2, "y": 1.0, "xref": "paper", "yref": "paper",
                                      "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                                      "font": {"size": 13}})
    return layout


def axes(col: int) -> dict[str, str]:
    return {"xaxis": "x" if col == 1 else f"x{col}", "yaxis": "y" if col == 1 else f"y{col}"}


def error_bars(up: Sequence[float], down: Sequence[float]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "array": list(up), "arrayminus": list(down),
            "thickness": 1.2, "width": 4}


def rss_label(metric: str) -> str:
    return "VmRSS" if metric == "VmHWM" else metric
