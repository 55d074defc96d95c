"""The Energy and Soak sections of the HTML report, rendered in headless Chromium (tests/chromium.py),
and the terminal's lines, from a stored-shape record (tests/factories.py)."""

from __future__ import annotations

from dataclasses import replace

from tests.support import factories as F
from tests.support.chromium import plot_divs, render_in_chromium

from devprof.report import HTMLRenderer, TerminalRenderer
from devprof.store import RunRecord


def _record(energy_state: str = "measured") -> RunRecord:
    rec = F.make_record()
    settings = {**rec.meta.settings, "energy": {"state": energy_state, "source": "sysfs", "baseline_s": 2.0,
                                                "why": "energy refused: the battery is charging" if energy_state == "refused" else ""}}
    reps = []
    for i, r in enumerate(rec.repetitions):
        if energy_state == "measured" and not r.warmup:
            slow = r.model == F.MOE  # the MoE's short prefill: a gauge slower than the phase
            r = replace(r, energy={"source": "sysfs", "update_ms": 250.0, "phases": {
                "prefill": {"j_per_token": 0.02 + 0.001 * (i % 3), "slow_gauge": slow},
                "decode": {"j_per_token": 0.5 + 0.01 * (i % 3), "slow_gauge": False}}})
        reps.append(r)
    soak = [{"t_s": 10.0 * k, "model": F.MOE, "workload": "real", "context": 2048, "status": "ok",
             "decode_tok_s": 10.0 if k < 12 else 6.5, "prefill_tok_s": 100.0, "hottest_c": 40.0 + k,
             "hottest_zone": "thermal_zone0:cpu-0-0", "big_core_mhz": 4320.0 if k < 12 else 2400.0} for k in range(30)]
    return RunRecord(meta=replace(rec.meta, settings=settings), repetitions=reps, soak=soak)


def test_energy_and_soak_sections_render_in_chromium(tmp_path):
    rec = _record()
    page = tmp_path / "r.html"
    page.write_text(HTMLRenderer().render(rec))
    text = page.read_text()
    assert '<section id="energy">' in text and '<section id="soak">' in text
    assert "reading changes every ~250 ms" in text and "‡" in text and "J/token (median)" in text
    assert "throttled from 120 s: decode 10.00 → 6.50 tok/s (-35%) from the first minute to the end" in text
    dom, errors = render_in_chromium(page)
    assert errors == []
    divs = plot_divs(dom)
    assert divs and all(n > 0 for n in divs.values())
    lines = TerminalRenderer(width=200).render(rec)
    assert "Energy (battery current_now × voltage_now (sysfs), reading changes every ~250 ms)" in lines
    assert "prefill: " in lines and "‡" in lines and "Soak: throttled from 120 s" in lines


def test_a_refused_run_shows_the_line_and_no_figures(tmp_path):
    rec = _record("refused")
    text = HTMLRenderer().render(rec)
    assert "energy refused: the battery is charging" in text and "J/token (median)" not in text
    assert "energy refused: the battery is charging" in TerminalRenderer(width=200).render(rec)
    plain = F.make_record()  # an older run, or energy off: no section, no line
    assert '<section id="energy">' not in HTMLRenderer().render(plain)
    assert "Energy" not in TerminalRenderer(width=200).render(plain)
