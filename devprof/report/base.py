"""What every renderer shares: the Renderer interface and the analysis of a run record.

A renderer only reads a ``RunRecord`` (pyinstrument's renderers only read a Session): the numbers
come from ``devprof.stats`` once, in ``analyse(record)``, and each renderer formats them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from abc import ABC, abstractmethod

from devprof import interference, stats
from devprof.analysis.phases import (  # noqa: F401 (re-exported for the renderers)
    phase_spans, phase_spans_from_durations, rep_label, representative,
)
from devprof.files import atomic_write
from devprof.results import RunRecord


class Renderer(ABC):
    """One output format. Subclasses implement ``render(record) -> str``.

    ``name`` is the key in ``devprof.report.RENDERERS``; a renderer whose output is a folder of files
    (``writes_folder``) also has ``files(record) -> [(file name, text)]``.
    """

    name = ""
    output_file_extension = "txt"
    writes_folder = False

    @abstractmethod
    def render(self, record: RunRecord) -> str:
        """The whole output for one run."""

    def write(self, record: RunRecord, path: Path | str) -> Path:
        """Render into ``path`` (written to a temporary file first, then renamed into place)."""
        path = Path(path)
        atomic_write(path, self.render(record))
        return path


@dataclass
class Analysis:
    """A run record with its statistics computed once."""

    record: RunRecord
    rows: list[stats.SummaryRow]
    ratios: list[stats.RatioRow]
    planned: int  # measured repetitions the run set out to do
    measured: int  # measured repetitions that finished ok
    failed: int  # measured repetitions that did not finish ok
    missing: int  # planned - measured (never run, or failed)
    level: float
    noise: interference.NoiseVerdict | None = None  # whether the figures can be trusted (one line)
    headline: str | None = None  # the one verdict on real prompts (analysis.verdict)

    @property
    def status(self) -> str:
        return self.record.meta.status

    @property
    def problem(self) -> str | None:
        """One sentence on what is wrong with the run, or None when it is complete and whole."""
        m = self.record.meta
        head = None
        if m.status == "running":
            head = "Run still running (or its writer cannot be checked from this host)"
        elif m.status != "complete":
            head = f"Run {m.status}"
        detail = None
        if self.missing:
            detail = f"{self.missing} of {self.planned} planned measured repetitions missing"
            if self.failed:
                detail += f" ({self.failed} failed)"
        elif self.failed:
            detail = f"{self.failed} measured repetitions failed"
        if head is None and detail is None:
            return None
        text = ": ".join(x for x in (head, detail) if x) + "."
        if m.note:
            text += f" Note: {m.note}"
        return text

    @property
    def verdicts(self) -> list[str]:
        # clear and beyond ±2% of 1; real prompts first (templated ones understate the MoE)
        found = [r for r in self.ratios if r.finding]
        return [r.verdict for r in sorted(found, key=lambda r: r.workload.startswith("templated"))]


def analyse(record: RunRecord, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Analysis:
    rows = stats.summarize(record, level=level, n_boot=n_boot, seed=seed)
    ratio_rows = stats.ratios(record, level=level, n_boot=n_boot, seed=seed, rows=rows)
    measured = len(record.measured())
    from devprof.analysis.verdict import headline

    return Analysis(record=record, rows=rows, ratios=ratio_rows, planned=record.planned_reps, measured=measured,
                    failed=len(record.failed_reps), missing=record.missing_reps, level=level,
                    noise=interference.verdict(record, rows=rows),
                    headline=headline(rows, ratio_rows, record.workloads(), level))


def reps_text(meta) -> str:
    """"3 reps" or, for --reps auto, "auto reps (5-12 a cell, to ±5%, ≤120 s)"."""
    ad = (meta.settings or {}).get("adaptive")
    if (meta.settings or {}).get("reps") == "auto" and ad:
        return (f"auto reps ({ad.get('min_reps')}–{ad.get('max_reps')} a cell, to ±{ad.get('target_pct', 5):g}%, "
                f"≤{ad.get('max_s', 0):g} s)")
    if (meta.settings or {}).get("reps") == "auto":
        return f"auto reps (at least {meta.reps})"
    return f"{meta.reps} reps"


def reps_count_text(measured: int, planned: int) -> str:
    """"12 of 12 measured repetitions"; with --reps auto a run may measure more than the planned
    minimum: "32 measured repetitions (20 planned at least)"."""
    if measured > planned:
        return f"{measured} measured repetitions ({planned} planned at least)"
    return f"{measured} of {planned} measured repetitions"


def threads_used(record: RunRecord) -> str | None:
    """The CPU threads the runtime reported using ("2", "2–4" when it varied), with what was asked when that
    was the runtime's default (-1); None when no repetition says."""
    seen = set()
    for r in record.measured():
        x = r.result.extra if r.result is not None else {}
        v = (x.get("observer") or {}).get("cpu_threads", x.get("n_threads", x.get("threads")))
        if isinstance(v, (int, float)) and v > 0:
            seen.add(int(v))
    if not seen:
        return None
    text = str(min(seen)) if len(seen) == 1 else f"{min(seen)}–{max(seen)}"
    asked = (record.meta.settings or {}).get("threads")
    if (record.meta.settings or {}).get("threads_default"):
        text += " (devprof's default on this host: the idle cores)"
    elif asked in (-1, 0, None):
        text += " (the runtime's default, as it reported)"
    return text


def adaptive_lines(meta) -> list[str]:
    """For --reps auto, one line per cell: how many rounds and what ended it."""
    from devprof.adaptive import describe_cell

    ad = (meta.settings or {}).get("adaptive") or {}
    return [describe_cell(c) for c in ad.get("cells", [])]


# ---- formatting --------------------------------------------------------------------------------
def rounded(x: float | None, decimals: int) -> float | None:
    """A float rounded for output; None for unknown, NaN or infinite values."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, decimals)


def fmt(x: float | None, decimals: int = 1, unknown: str = "—") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return unknown
    return f"{x:,.{decimals}f}"


def fmt_cv(cv: float | None) -> str:
    return "" if cv is None else f"±{cv * 100:.1f}%"


def when(created: str) -> str:
    """ISO-8601 -> "2026-09-21 14:05 UTC" (unchanged when it does not parse)."""
    try:
        t = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return str(created)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def memory_metric_note(metric: str) -> str:
    if metric == "physFootprint":
        return ("physFootprint: the memory iOS charges the app (what Xcode shows), sampled with "
                "sysmontap; not RSS, and without a file/anon split")
    if metric == "VmHWM":
        return ("VmHWM: the kernel's high-water mark of the process's resident set "
                "(/proc/PID/status), which also catches spikes between two samples")
    if metric == "max(VmHWM, RSS+swap)":
        return ("max(VmHWM, RSS+swap): the larger of the kernel's high-water mark of the resident set and the "
                "largest sampled VmRSS + VmSwap (Android swaps anonymous pages to zram, and its low-memory "
                "killer counts anonymous + swap; Pipette's rule)")
    return metric
