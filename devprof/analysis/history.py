"""`devprof history`: one figure of one cell (device, model, metric, workload, context) over every stored run.

Each point is a run: the median of its measured repetitions of that cell with the distribution-free
95% interval of the median (``stats.median_ci``; the range below n = 6), the runtime binary's sha256
(``settings.binary_info.sha256``; devprof's own reference runtime has no binary: "-") and the
devprof version that measured it (``settings.devprof_version``; "?" for runs stored before it was kept).

Change points, simple on purpose: a run is a change point when its interval does not overlap the
*baseline band* of the previous ``window`` runs of the same series (workload, context), where the band
is ``median_ci`` of those runs' medians (with 5 or fewer runs, their range). At least ``min_prev``
previous runs are needed before anything is called. After a step the band widens to take in the new
level, so one step marks one run, not every run after it. A run with one repetition has a point
interval: it is a change point whenever its median falls outside the band.

``against_last(series, n)``: the latest run against the median of the ``n`` runs before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devprof import stats
from devprof.errors import UsageError

FORMAT = "devprof.history/1"
WINDOW = 5
MIN_PREV = 2


@dataclass
class Point:
    run_id: str
    created: str
    workload: str
    context: int
    median: float
    ci_low: float
    ci_high: float
    n: int
    sha256: str
    version: str
    runtime: str
    device: str = ""  # the run's device name (and its adb endpoint, when it has one)
    change: str = ""  # "", "up" or "down": beyond the noise of the previous runs
    band: tuple[float, float] | None = None  # the baseline band it was judged against


@dataclass
class History:
    device: str
    model: str
    metric: str
    points: list[Point] = field(default_factory=list)
    window: int = WINDOW

    def series(self) -> dict[tuple[str, str, int], list[Point]]:
        """(device, workload, context) -> its points, oldest first."""
        out: dict[tuple[str, str, int], list[Point]] = {}
        for p in self.points:
            out.setdefault((p.device, p.workload, p.context), []).append(p)
        return out


def device_matches(dev: Any, wanted: str) -> bool:
    """A stored run's device is ``wanted`` when it is its serial, one of its aliases, its model or name;
    ``all`` is every device (a series each)."""
    w = wanted.strip().lower()
    if w == "all":
        return True
    names = {str(dev.serial or "").lower(), str(dev.model or "").lower(), str(dev.name or "").lower()}
    names |= {str(a).lower() for a in (dev.extra or {}).get("aliases") or []}
    if dev.kind == "local":
        names.add("local")
    return w in names


def _device_label(dev: Any) -> str:
    ep = (dev.extra or {}).get("adb_server")
    name = f"{dev.name or dev.model} [{dev.serial}]" if dev.kind != "local" else str(dev.name or dev.serial)
    return f"{name} @ adb {ep}" if ep else name


def mark_changes(points: list[Point], window: int = WINDOW, min_prev: int = MIN_PREV) -> list[Point]:
    """Set ``change`` and ``band`` on points of one series (oldest first), as the module docstring says."""
    for i, p in enumerate(points):
        prev = points[max(0, i - window):i]
        p.change, p.band = "", None
        if len(prev) < min_prev:
            continue
        band = stats.median_ci([q.median for q in prev])
        p.band = (band.low, band.high)
        if p.ci_low > band.high:
            p.change = "up"
        elif p.ci_high < band.low:
            p.change = "down"
    return points


def build(store: Any, device: str, model: str, metric: str, workload: str | None = None,
          context: int | None = None, window: int = WINDOW) -> History:
    if metric not in stats.METRICS:
        raise UsageError(f"unknown metric {metric!r}; one of: {', '.join(stats.METRICS)}")
    hist = History(device=device, model=model, metric=metric, window=window)
    metas = [m for m in store.list_runs() if device_matches(m.device, device) and model in m.models]
    for meta in sorted(metas, key=lambda m: (m.created, m.run_id)):
        record = store.load_run(meta.run_id, samples=False)
        settings = meta.settings or {}
        sha = (settings.get("binary_info") or {}).get("sha256") or "-"
        version = str(settings.get("devprof_version") or "?")
        for wl in record.workloads():
            if workload is not None and wl != workload:
                continue
            for ctx in record.contexts():
                if context is not None and ctx != context:
                    continue
                m = stats.metric(stats.rep_value(r, metric) for r in record.measured(model, wl, ctx))
                if m is None:
                    continue
                hist.points.append(Point(run_id=meta.run_id, created=meta.created, workload=wl, context=ctx,
                                         median=m.median, ci_low=m.ci_low, ci_high=m.ci_high, n=m.n,
                                         sha256=sha, version=version, runtime=meta.runtime,
                                         device=_device_label(meta.device)))
    if not hist.points:
        raise UsageError(f"no stored run of {model} on {device} measured {metric}"
                         + (f" ({workload or 'any workload'}, context {context or 'any'})"
                            if workload or context else "") + "; `devprof list` shows the runs")
    for pts in hist.series().values():
        mark_changes(pts, window=window)
    return hist


def against_last(points: list[Point], n: int) -> dict[str, Any] | None:
    """The latest point of a series against the median of the ``n`` before it; None with no earlier run."""
    if len(points) < 2:
        return None
    latest, prev = points[-1], points[-1 - n:-1]
    base = stats.median([p.median for p in prev])
    band = stats.median_ci([p.median for p in prev])
    beyond = latest.ci_low > band.high or latest.ci_high < band.low
    return {"run_id": latest.run_id, "latest": latest.median, "baseline_median": base, "baseline_runs": len(prev),
            "baseline_band": [band.low, band.high], "change_pct": (latest.median / base - 1.0) * 100.0 if base else None,
            "beyond_noise": beyond}


def to_dict(hist: History, last_n: int | None = None) -> dict[str, Any]:
    series = []
    for (dev, wl, ctx), pts in hist.series().items():
        doc: dict[str, Any] = {"device": dev, "workload": wl, "context": ctx, "points": [
            {"run_id": p.run_id, "created": p.created, "median": p.median, "ci": [p.ci_low, p.ci_high], "n": p.n,
             "sha256": p.sha256, "devprof_version": p.version, "runtime": p.runtime, "device": p.device, "change": p.change or None,
             "band": list(p.band) if p.band else None} for p in pts]}
        if last_n:
            doc["against_last"] = against_last(pts, last_n)
        series.append(doc)
    return {"format": FORMAT, "device": hist.device, "model": hist.model, "metric": hist.metric,
            "window": hist.window, "series": series}


def against_last_runs(store: Any, record: Any, n: int, threshold: float = 5.0) -> list[dict[str, Any]]:
    """Every metric of ``record`` (each model, workload, context) against the median of the ``n`` runs
    before it on the same device (same serial) that measured the same cell: `devprof diff RUN --against-last N`.

    ``regression`` is set when the change is in the bad direction, beyond ``threshold`` percent and beyond
    the noise (the run's interval misses the band of the earlier runs' medians, as for change points)."""
    meta = record.meta
    earlier = [m for m in store.list_runs() if m.device.serial == meta.device.serial
               and (m.created, m.run_id) < (meta.created, meta.run_id)]
    earlier.sort(key=lambda m: (m.created, m.run_id), reverse=True)
    loaded: list[Any] = []
    rows = []
    for model in record.models():
        for wl in record.workloads():
            for ctx in record.contexts():
                reps = record.measured(model, wl, ctx)
                if not reps:
                    continue
                for metric in stats.METRICS:
                    cur = stats.metric(stats.rep_value(r, metric) for r in reps)
                    if cur is None:
                        continue
                    prev: list[tuple[str, float]] = []
                    for i, m in enumerate(earlier):
                        if len(prev) >= n:
                            break
                        if model not in m.models:
                            continue
                        while len(loaded) <= i:
                            loaded.append(store.load_run(earlier[len(loaded)].run_id, samples=False))
                        pm = stats.metric(stats.rep_value(r, metric) for r in loaded[i].measured(model, wl, ctx))
                        if pm is not None:
                            prev.append((m.run_id, pm.median))
                    if not prev:
                        continue
                    base = stats.median([v for _, v in prev])
                    band = stats.median_ci([v for _, v in prev])
                    beyond = cur.ci_low > band.high or cur.ci_high < band.low
                    change = (cur.median / base - 1.0) * 100.0 if base else None
                    better = stats.METRIC_INFO[metric].higher_is_better
                    worse = None if better is None or change is None else (change < 0 if better else change > 0)
                    rows.append({"model": model, "workload": wl, "context": ctx, "metric": metric,
                                 "median": cur.median, "ci": [cur.ci_low, cur.ci_high], "n": cur.n,
                                 "baseline_median": base, "baseline_band": [band.low, band.high],
                                 "baseline_runs": [r for r, _ in prev], "change_pct": change, "beyond_noise": beyond,
                                 "regression": bool(worse and beyond and change is not None and abs(change) > threshold)})
    return rows
