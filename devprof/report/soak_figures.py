"""The report's Energy and Soak sections (HTML), and their lines for the terminal.

Energy: the state (measured, refused with the reason, unavailable, off), the source and how often
its reading really changed, and per (model, workload, context, phase) the median J/token with its
95% interval, n and min-max; figures from a gauge slower than the phase they measure carry a mark.
Soak: decode tok/s, the hottest thermal zone and the big-core frequency over time (one figure, three
rows), and the throttling sentence (devprof.soak.verdict).
"""

from __future__ import annotations

import html
from typing import Any

from devprof import energy as energy_mod
from devprof import soak as soak_mod
from devprof import stats
from devprof.devices.power import sample_s

h = html.escape
SLOW_MARK = "‡"


def _fmt(v: float | None, nd: int = 3) -> str:
    return "—" if v is None else f"{v:,.{nd}f}"


def energy_lines(record) -> list[str]:
    """Plain lines for the terminal: the state, then one line per figure."""
    s = energy_mod.summary(record)
    if s["state"] in ("off",) and not s["rows"]:
        return []
    if s["state"] == "refused" or (s["state"] == "unavailable" and not s["rows"]):
        return [s["why"] or f"energy {s['state']}"]
    out = []
    if s["rows"]:
        out.append(f"Energy ({source_text(s)}): J/token, median [95% interval] over n; {SLOW_MARK} = the gauge "
                   "updates slower than the phase lasts")
        for r in s["rows"]:
            out.append(f"  {stats.model_info(r['model'])[0]} {r['workload']} ctx {r['context']} {r['phase']}: "
                       f"{_fmt(r['j_per_token'], 4)} [{_fmt(r['ci'][0], 4)}, {_fmt(r['ci'][1], 4)}] n={r['n']}"
                       + (f" {SLOW_MARK}" if r["slow_gauge"] else ""))
    if s["refused_reps"]:
        out.append(f"energy refused for {s['refused_reps']} repetition(s): {s['why']}")
    return out


def source_text(s: dict[str, Any]) -> str:
    src = {"sysfs": "battery current_now × voltage_now (sysfs)", "dumpsys": "dumpsys battery current × voltage",
           "sysfs-counter": "battery charge_counter Δcharge × voltage_now (sysfs)",
           "dumpsys-counter": "dumpsys battery Charge counter Δcharge × voltage"}
    text = src.get(s.get("source") or "", s.get("source") or "unknown source")
    if s.get("resolution_uah"):
        text += f", counter steps of {s['resolution_uah']:g} µAh"
    every = s.get("update_ms")
    sample_ms = sample_s(s.get("source")) * 1000.0
    if every and every <= 1.5 * sample_ms:
        text += f", reading changes at every {sample_ms:.0f} ms sample (the gauge may be faster)"
    elif every:
        text += f", reading changes every ~{every:.0f} ms"
    return text


def setting_text(record, brief: bool = False) -> str | None:
    """The run's energy setting in words for the setup tables ("off", "on: <source>, <how often it
    changed>, sampled every 50 ms, idle baseline 2 s", "refused: <why>"); None for a run from before
    energy was measured (no setting stored). ``brief``: the state alone when not measured (the
    terminal prints the reason in its energy lines)."""
    setting = (record.meta.settings or {}).get("energy")
    if not isinstance(setting, dict):
        return None
    state = setting.get("state") or "off"
    if state == "off":
        return "off"
    if state != "measured":
        if brief:
            return state
        why = setting.get("why") or "no reason recorded"
        return why if state in why.split(":")[0] else f"{state}: {why}"
    s = energy_mod.summary(record)
    parts = [source_text(s)]
    path = (setting.get("battery") or {}).get("path")
    if path:
        parts.append(f"battery {path}")
    if setting.get("sample_s"):
        parts.append(f"sampled every {setting['sample_s'] * 1000:.0f} ms")
    if setting.get("baseline_s") is not None:
        parts.append(f"idle baseline {setting['baseline_s']:g} s")
    if s["refused_reps"]:
        parts.append(f"refused for {s['refused_reps']} repetition(s)")
    return "on: " + ", ".join(parts)


def energy_section(page) -> str:
    rec = page.rec
    s = energy_mod.summary(rec)
    if s["state"] == "off" and not s["rows"]:
        return "<p>Energy was not measured (<code>--no-energy</code>, or not an Android phone).</p>"
    parts = []
    if s["state"] in ("refused", "unavailable") and not s["rows"]:
        parts.append(f'<p class="banner energy-refused"><strong>{h(s["why"] or "energy " + s["state"])}</strong> '
                     "No energy figures are shown.</p>")
    if s["rows"]:
        setting = (rec.meta.settings or {}).get("energy") or {}
        parts.append(f"<p>Source: {h(source_text(s))}; idle baseline {setting.get('baseline_s', '?')} s right "
                     "before each repetition, subtracted. Prefill: energy above idle from the prefill start to its "
                     "end per prompt token; decode: from the first sampled token to the last per decode step.</p>")
        rows = []
        for r in s["rows"]:
            mark = f' <span title="the gauge updates slower than this phase lasts">{SLOW_MARK}</span>' if r["slow_gauge"] else ""
            rows.append(f"<tr><td>{h(page.display.get(r['model'], r['model']))}</td><td>{h(r['workload'])}</td>"
                        f"<td>{r['context']}</td><td>{h(r['phase'])}</td><td>{r['n']}</td>"
                        f"<td>{_fmt(r['j_per_token'], 4)}{mark}</td><td>{_fmt(r['ci'][0], 4)} – {_fmt(r['ci'][1], 4)}</td>"
                        f"<td>{_fmt(r['min'], 4)} – {_fmt(r['max'], 4)}</td></tr>")
        parts.append('<table class="energy"><thead><tr><th>model</th><th>workload</th><th>context</th><th>phase</th>'
                     "<th>n</th><th>J/token (median)</th><th>95% interval</th><th>min – max</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
        if any(r["slow_gauge"] for r in s["rows"]):
            parts.append(f'<p class="note">{SLOW_MARK} the fuel gauge updated slower than the phase lasted: '
                         "the figure spreads energy from outside the phase; measure a longer phase (more tokens).</p>")
    if s["refused_reps"] and s["rows"]:
        parts.append(f'<p class="banner">{h(s["why"])} ({s["refused_reps"]} repetition(s) without figures)</p>')
    return "\n".join(parts)


def soak_section(page) -> str:
    pts = page.rec.soak
    if not pts:
        return ""
    v = soak_mod.verdict(pts)
    ok = [p for p in pts if p.get("decode_tok_s")]
    xs = [p["t_s"] / 60.0 for p in ok]
    data = [{"type": "scatter", "mode": "lines+markers", "name": "decode tok/s", "x": xs,
             "y": [p["decode_tok_s"] for p in ok], "xaxis": "x", "yaxis": "y"}]
    hot = [p for p in ok if p.get("hottest_c") is not None]
    if hot:
        data.append({"type": "scatter", "mode": "lines", "name": "hottest zone °C", "x": [p["t_s"] / 60 for p in hot],
                     "y": [p["hottest_c"] for p in hot], "text": [p.get("hottest_zone") or "" for p in hot],
                     "xaxis": "x2", "yaxis": "y2"})
    mhz = [p for p in ok if p.get("big_core_mhz") is not None]
    if mhz:
        data.append({"type": "scatter", "mode": "lines", "name": "big core MHz", "x": [p["t_s"] / 60 for p in mhz],
                     "y": [p["big_core_mhz"] for p in mhz], "xaxis": "x3", "yaxis": "y3"})
    layout = {"title": {"text": "Sustained load: decode speed, heat and clock over time"}, "showlegend": True,
              "grid": {"rows": 3, "columns": 1, "pattern": "independent"},
              "xaxis3": {"title": {"text": "minutes"}}, "yaxis": {"title": {"text": "tok/s"}},
              "yaxis2": {"title": {"text": "°C"}}, "yaxis3": {"title": {"text": "MHz"}}}
    if v.get("onset_s") is not None:
        layout["shapes"] = [{"type": "line", "xref": f"x{n}" if n > 1 else "x", "yref": f"y{n} domain" if n > 1 else "y domain",
                             "x0": v["onset_s"] / 60, "x1": v["onset_s"] / 60, "y0": 0, "y1": 1,
                             "line": {"color": "#c92a2a", "dash": "dot"}} for n in (1, 2, 3)]
    first = pts[0]
    cap = (f"{len(pts)} back-to-back generations of {h(page.display.get(first['model'], first['model']))} "
           f"({h(first['workload'])}, context {first['context']}) over {v.get('minutes', 0):.1f} min")
    notes = [] if hot else ["<p class=\"note\">This device exposes no thermal zones: no temperature is plotted.</p>"]
    return (f"<p><strong>{h(v['sentence'])}</strong></p>" + page.figure(data, layout, cap, height=620)
            + "".join(notes))


def soak_lines(record) -> list[str]:
    return [f"Soak: {soak_mod.verdict(record.soak)['sentence']}"] if record.soak else []


def json_sections(record) -> dict[str, Any]:
    """`show --json`'s "energy" and "soak" keys."""
    return {"energy": energy_mod.summary(record),
            "soak": {"points": list(record.soak), "verdict": soak_mod.verdict(record.soak)} if record.soak else None}


def sections(page) -> list[tuple[str, str, str]]:
    """The (id, title, HTML) sections this module adds to a run's report, where it has something."""
    out = []
    s = energy_mod.summary(page.rec)
    if s["state"] != "off" or s["rows"]:
        out.append(("energy", "Energy", energy_section(page)))
    if page.rec.soak:
        out.append(("soak", "Soak", soak_section(page)))
    return out
