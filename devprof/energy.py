"""Energy per token from a phone's battery readings: units, sign, idle baseline, phase integrals.

Per repetition (``rep_energy``): the battery's current and voltage were sampled (devices/power.py)
from an idle window right before the run until after it. Power is |I| x V: current_now is µA on most
kernels but mA on some Samsung ones (a median magnitude below 20 000 reads as mA: no phone draws
under 20 mA with the screen on and the SoC awake), voltage_now µV (below 100 000 reads as mV); the
sign of a discharging current differs per vendor (Pixel and most Qualcomm kernels negative, Samsung
positive), so the magnitude is used while the battery discharges. The idle baseline is the
time-averaged power before the process starts; the figure of a phase is the integral of the power
above that baseline over the phase, divided by the phase's tokens:

* prefill: from the prefill start to its end, per prompt token;
* decode: from the first sampled token to the last, per decode step (tokens - 1).

Phase times are milliseconds from the process start: the native runner's token timestamps count from
the prefill start, which follows the model load (``load_ms``); other runtimes' phase durations are laid
end to end after the load. A fuel gauge that updates slower than a phase lasts cannot resolve it: such
figures are kept and marked ``slow_gauge``.

Where no current reads (stock AOSP/Pixel), the battery's charge counter does (``counter_energy``):
the counter's updates are timed (midway between the last sample showing the old value and the first
showing the new; at the reading itself when the counter changes at every sample), the charge drained is interpolated linearly between updates (a constant current
between them), and a phase's energy is Δcharge × its mean voltage; the idle baseline is the charge
rate between the counter's updates before the process starts. The counter's resolution (its smallest
step) and update interval are measured per repetition; a phase shorter than :data:`SLOW_UPDATES`
updates (where the error can pass 5%: docs/measurements.md), one reaching past the last update
(extrapolated), or one whose baseline spans fewer than :data:`BASELINE_UPDATES` update intervals, is
kept and marked ``slow_gauge`` (coarse). Charging (or Full / Not charging on external power) makes
the battery's current the charger's business, not the load's: energy is refused, never guessed.
"""

from __future__ import annotations

from typing import Any

from devprof.devices.power import COUNTER_SOURCES, PowerTrace

MA_BELOW = 20_000  # |current| median below this: the kernel reports mA, not µA
MV_BELOW = 100_000  # voltage below this: mV, not µV
MAH_BELOW = 20_000  # charge counter median below this: mAh, not µAh (no phone battery holds under 20 mAh)
SLOW_UPDATES = 10  # a charge-counter phase shorter than this many updates is coarse (docs/measurements.md)
BASELINE_UPDATES = 3  # an idle baseline spanning fewer counter update intervals is coarse
WAIT_S = 150.0  # the longest wait for the battery trace (a charge counter's updates), before a run and after it
UAH_TO_C = 3.6e-3  # 1 µAh = 3.6 mC
REFUSE_STATUS = {"Charging"}
REFUSE_WHEN_PLUGGED = {"Full", "Not charging"}


def refusal(status: str, plugged: list[str], serial: str) -> str | None:
    """Why energy cannot be measured now (None: it can)."""
    if status in REFUSE_STATUS or (status in REFUSE_WHEN_PLUGGED and plugged):
        power = f" on {'/'.join(plugged)} power" if plugged else ""
        what = f"the battery is {status.lower()}{power}, so its current says nothing about the load"
        if not is_wireless(serial):
            return (f"energy refused: {what}; unplug the USB cable and use wireless debugging "
                    "(phone: Developer options > Wireless debugging > Pair device with pairing code; host: "
                    "`adb pair IP:PAIRPORT` with the code, then `adb connect IP:PORT`; then "
                    "`devprof run --device IP:PORT`)")
        if "USB" in plugged:
            return (f"energy refused: {what}; unplug the USB cable: devprof already reaches {serial} over "
                    "wireless debugging")
        return f"energy refused: {what}; unplug the charger and run again"
    return None


def is_wireless(serial: str) -> bool:
    """A serial adb gives a phone reached over Wi-Fi: HOST:PORT or an mDNS ``adb-...._adb-tls-connect._tcp``."""
    host, sep, port = serial.rpartition(":")
    return (bool(sep) and port.isdigit() and bool(host)) or "._adb-tls-connect." in serial


def to_watts(trace: PowerTrace) -> tuple[list[float], list[float], dict[str, Any]]:
    """(device wall ms, W) of every sample, and the units/sign read from the values."""
    if not trace.samples:
        return [], [], {}
    cur = sorted(abs(c) for _, c, _ in trace.samples)
    volt = sorted(abs(v) for _, _, v in trace.samples)
    c_scale = 1e-3 if cur[len(cur) // 2] < MA_BELOW else 1e-6
    v_scale = 1e-3 if volt[len(volt) // 2] < MV_BELOW else 1e-6
    negative = sum(1 for _, c, _ in trace.samples if c < 0) > len(trace.samples) / 2
    ts, ws = [], []
    for up, c, v in trace.samples:
        t = trace.wall_ms(up)
        if t is None:
            continue
        ts.append(t)
        ws.append(abs(c) * c_scale * abs(v) * v_scale)
    units = {"current_unit": "mA" if c_scale == 1e-3 else "µA", "voltage_unit": "mV" if v_scale == 1e-3 else "µV",
             "discharge_sign": "negative" if negative else "positive"}
    return ts, ws, units


def integrate(ts: list[float], ws: list[float], a: float, b: float) -> float | None:
    """∫ power dt (J) over [a, b] ms of a piecewise-linear trace; None when it does not cover [a, b]."""
    if not ts or b < a or a < ts[0] or b > ts[-1]:
        return None
    total = 0.0
    for i in range(len(ts) - 1):
        lo, hi = max(a, ts[i]), min(b, ts[i + 1])
        if hi <= lo:
            continue
        span = ts[i + 1] - ts[i]
        w_lo = ws[i] + (ws[i + 1] - ws[i]) * (lo - ts[i]) / span
        w_hi = ws[i] + (ws[i + 1] - ws[i]) * (hi - ts[i]) / span
        total += (w_lo + w_hi) / 2 * (hi - lo) / 1000.0
    return total


def mean_power(ts: list[float], ws: list[float], a: float, b: float) -> float | None:
    e = integrate(ts, ws, a, b)
    return e / ((b - a) / 1000.0) if e is not None and b > a else None


def update_interval_ms(ts: list[float], trace: PowerTrace) -> float | None:
    """How often the gauge's reading really changes: the median time between changes of the raw
    (current, voltage) pair; None when it changed fewer than 3 times (slower than the whole trace)."""
    changes = [ts[i] for i in range(1, min(len(ts), len(trace.samples)))
               if trace.samples[i][1:] != trace.samples[i - 1][1:]]
    if len(changes) < 3:
        return None
    gaps = sorted(b - a for a, b in zip(changes, changes[1:]))
    return gaps[len(gaps) // 2]


def phase_windows(result, load_ms: float | None = None) -> dict[str, tuple[float, float, int]]:
    """{phase: (start ms, end ms, tokens)} from the process start, from a parsed RunResult."""
    if result is None:
        return {}
    t0 = result.load_ms if result.load_ms is not None else (load_ms or 0.0)
    ex = result.extra or {}
    stamps = ex.get("token_stamp_ms")
    out: dict[str, tuple[float, float, int]] = {}
    if stamps and ex.get("prefill_wall_ms") is not None:
        if result.prompt_tokens:
            out["prefill"] = (t0, t0 + float(ex["prefill_wall_ms"]), int(result.prompt_tokens))
        if len(stamps) > 1:
            out["decode"] = (t0 + stamps[0], t0 + stamps[-1], len(stamps) - 1)
        return out
    if result.prefill_ms and result.prompt_tokens:
        out["prefill"] = (t0, t0 + result.prefill_ms, int(result.prompt_tokens))
    if result.decode_ms and result.generated_tokens and result.generated_tokens > 1:
        start = t0 + (result.prefill_ms or 0.0)
        out["decode"] = (start, start + result.decode_ms, int(result.generated_tokens) - 1)
    return out


def rep_energy(trace: PowerTrace, start_wall_ms: float, result, source: str, plugged: list[str],
               serial: str) -> dict[str, Any]:
    """The energy figures of one repetition (or {"refused": why} / {"missing": why})."""
    for st in (trace.status_first, trace.status_last):
        why = refusal(st, plugged, serial)
        if why:
            return {"refused": why, "status": st}
    if source in COUNTER_SOURCES:
        return counter_energy(trace, start_wall_ms, result, source)
    ts, ws, units = to_watts(trace)
    if len(ts) < 3:
        return {"missing": "too few battery samples"}
    idle = [i for i, t in enumerate(ts) if t < start_wall_ms]
    if len(idle) < 2:
        return {"missing": "no idle baseline before the process started"}
    base_w = mean_power(ts, ws, ts[idle[0]], ts[idle[-1]])
    if base_w is None:
        base_w = ws[idle[0]]
    upd = update_interval_ms(ts, trace)
    out: dict[str, Any] = {"source": source, **units, "baseline_w": round(base_w, 6),
                           "baseline_s": round((ts[idle[-1]] - ts[idle[0]]) / 1000.0, 3),
                           "update_ms": round(upd, 1) if upd is not None else None,
                           "n_samples": len(ts), "status": trace.status_first, "phases": {}}
    for phase, (a, b, n) in phase_windows(result).items():
        e = integrate(ts, ws, start_wall_ms + a, start_wall_ms + b)
        if e is None or n <= 0:
            out["phases"][phase] = {"missing": "the battery trace does not cover this phase"}
            continue
        net = e - base_w * (b - a) / 1000.0
        out["phases"][phase] = {"j": round(net, 6), "j_gross": round(e, 6), "s": round((b - a) / 1000.0, 4),
                                "tokens": n, "j_per_token": round(net / n, 8),
                                "slow_gauge": upd is None or upd > (b - a)}
    return out


class Counter:
    """A charge counter's trace as drained charge over device wall time: the counter's updates
    (timed midway between the samples around each change, or at the reading when the counter changes
    at every sample), its unit, step and update interval."""

    def __init__(self, trace: PowerTrace) -> None:
        rows = [(t, q, v) for up, q, v in trace.samples for t in [trace.wall_ms(up)] if t is not None]
        self.times = [t for t, _, _ in rows]
        qs = sorted(abs(q) for _, q, _ in rows) or [0]
        volts = sorted(abs(v) for _, _, v in rows) or [0]
        self.q_scale = 1000.0 if qs[len(qs) // 2] < MAH_BELOW else 1.0  # to µAh
        self.v_scale = 1e-3 if volts[len(volts) // 2] < MV_BELOW else 1e-6  # to V
        self.volts = [abs(v) * self.v_scale for _, _, v in rows]
        falling = not rows or rows[-1][1] <= rows[0][1]  # the counter holds charge left: it falls on discharge
        sign = -1.0 if falling else 1.0
        self.pts: list[tuple[float, float]] = []  # (wall ms of an update, µAh drained since the first sample)
        steps = []
        for i, ((t0, q0, _), (t1, q1, _)) in enumerate(zip(rows, rows[1:])):
            if q1 != q0:
                # A counter slower than the sampling changed once somewhere between the two readings:
                # midway. One that also changed at the reading before updates at least once per sample
                # gap, so the value read at t1 is the charge up to (nearly) t1: midway would date every
                # update half a sample gap early and shift energy out of a phase's end.
                every_sample = i > 0 and rows[i - 1][1] != q0
                self.pts.append((t1 if every_sample else (t0 + t1) / 2, sign * (q1 - rows[0][1]) * self.q_scale))
                steps.append(abs(q1 - q0) * self.q_scale)
        gaps = sorted(b[0] - a[0] for a, b in zip(self.pts, self.pts[1:]))
        self.update_ms = gaps[len(gaps) // 2] if gaps else None
        self.step_uah = min(steps) if steps else None
        self.units = {"counter_unit": "mAh" if self.q_scale == 1000.0 else "µAh",
                      "voltage_unit": "mV" if self.v_scale == 1e-3 else "µV",
                      "counter_direction": "falling" if falling else "rising"}

    def drained(self, t: float) -> tuple[float, bool]:
        """(µAh drained at wall ms ``t``, whether it is extrapolated past the first or last update)."""
        pts = self.pts
        i = 1
        while i < len(pts) - 1 and pts[i][0] < t:
            i += 1
        (ta, qa), (tb, qb) = pts[i - 1], pts[i]
        return (qa + (qb - qa) * (t - ta) / (tb - ta) if tb > ta else qb), not pts[0][0] <= t <= pts[-1][0]

    def volts_mean(self, a: float, b: float) -> float:
        inside = [v for t, v in zip(self.times, self.volts) if a <= t <= b]
        if inside:
            return sum(inside) / len(inside)
        return self.volts[min(range(len(self.times)), key=lambda i: abs(self.times[i] - (a + b) / 2))]

    def updates_in(self, a: float, b: float) -> int:
        return sum(1 for t, _ in self.pts if a <= t <= b)


def counter_energy(trace: PowerTrace, start_wall_ms: float, result, source: str) -> dict[str, Any]:
    """The energy figures of one repetition from a charge counter (see the module's docstring)."""
    if len(trace.samples) < 3:
        return {"missing": "too few battery samples"}
    c = Counter(trace)
    idle = [t for t, _ in c.pts if t <= start_wall_ms]
    if len(c.pts) < 2 or len(idle) < 2:
        every = f" (it updated every ~{c.update_ms / 1000:.1f} s)" if c.update_ms else ""
        return {"missing": f"the battery's charge counter changed fewer than twice during the idle baseline{every}: "
                           "use a longer --energy-baseline", "source": source,
                "update_ms": round(c.update_ms, 1) if c.update_ms else None, "resolution_uah": c.step_uah}
    q0, q1 = c.drained(idle[0])[0], c.drained(idle[-1])[0]
    base_w = (q1 - q0) * UAH_TO_C / ((idle[-1] - idle[0]) / 1000.0) * c.volts_mean(idle[0], start_wall_ms)
    base_slow = c.update_ms is None or idle[-1] - idle[0] < BASELINE_UPDATES * c.update_ms
    out: dict[str, Any] = {"source": source, **c.units, "baseline_w": round(base_w, 6),
                           "baseline_s": round((idle[-1] - idle[0]) / 1000.0, 3), "baseline_slow": base_slow,
                           "update_ms": round(c.update_ms, 1) if c.update_ms else None,
                           "resolution_uah": round(c.step_uah, 3) if c.step_uah else None,
                           "n_samples": len(c.times), "status": trace.status_first, "phases": {}}
    for phase, (a, b, n) in phase_windows(result).items():
        (qa, xa), (qb, xb) = c.drained(start_wall_ms + a), c.drained(start_wall_ms + b)
        if n <= 0 or b <= a:
            out["phases"][phase] = {"missing": "an empty phase"}
            continue
        gross = (qb - qa) * UAH_TO_C * c.volts_mean(start_wall_ms + a, start_wall_ms + b)
        net = gross - base_w * (b - a) / 1000.0
        slow = base_slow or xa or xb or c.update_ms is None or (b - a) < SLOW_UPDATES * c.update_ms
        out["phases"][phase] = {"j": round(net, 6), "j_gross": round(gross, 6), "s": round((b - a) / 1000.0, 4),
                                "tokens": n, "j_per_token": round(net / n, 8), "slow_gauge": bool(slow),
                                "updates": c.updates_in(start_wall_ms + a, start_wall_ms + b),
                                "extrapolated": bool(xa or xb)}
    return out


def counter_notice(source: str, baseline_s: float) -> str:
    """The line telling the user that energy comes from a charge counter, and what that costs."""
    where = "sysfs charge_counter" if source == "sysfs-counter" else "dumpsys battery's Charge counter"
    return (f"energy: no readable battery current; from the battery's charge counter ({where}) × voltage: "
            f"its step and update interval are measured per repetition, and a phase shorter than {SLOW_UPDATES} "
            f"counter updates is marked ‡ (coarse); the idle window before each repetition lasts "
            f"{baseline_s:g} s and until the counter updated {BASELINE_UPDATES + 2} times, and each repetition "
            f"waits for one update after the run (each wait at most {WAIT_S:.0f} s: counters often "
            "update every 10-40 s); only phases of minutes (more --new-tokens, a longer --context) give sharp figures")


def figures(reps) -> dict[tuple, dict[str, list]]:
    """{(model, workload, context): {phase: [j_per_token, ...], phase + "_slow": [bool, ...]}} of the
    measured repetitions that have energy figures."""
    out: dict[tuple, dict[str, list]] = {}
    for r in reps:
        ph = (getattr(r, "energy", None) or {}).get("phases") or {}
        for phase, d in ph.items():
            if "j_per_token" not in d:
                continue
            cell = out.setdefault((r.model, r.workload, r.context), {})
            cell.setdefault(phase, []).append(d["j_per_token"])
            cell.setdefault(phase + "_slow", []).append(bool(d.get("slow_gauge")))
    return out


def summary(record) -> dict[str, Any]:
    """The run's energy as the report and the JSON export show it: the state (measured | refused |
    off | unavailable), the source and its resolution, and per cell and phase the median J/token,
    its interval, n and whether any figure came from a gauge slower than the phase."""
    from devprof import stats

    setting = dict((record.meta.settings or {}).get("energy") or {})
    reps = record.measured()
    refused = sorted({(r.energy or {}).get("refused") for r in reps if (r.energy or {}).get("refused")})
    rows = []
    for (model, workload, context), cell in sorted(figures(reps).items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        for phase in ("prefill", "decode"):
            vals = cell.get(phase)
            if not vals:
                continue
            m = stats.metric(vals)
            rows.append({"model": model, "workload": workload, "context": context, "phase": phase, "n": len(vals),
                         "j_per_token": m.median, "ci": [m.ci_low, m.ci_high], "min": m.min, "max": m.max,
                         "slow_gauge": any(cell[phase + "_slow"])})
    updates = [e["update_ms"] for r in reps for e in [r.energy or {}] if e.get("update_ms")]
    steps = sorted(e["resolution_uah"] for r in reps for e in [r.energy or {}] if e.get("resolution_uah"))
    state = setting.get("state") or ("measured" if rows else "off")
    missing = sorted({(r.energy or {}).get("missing") for r in reps if (r.energy or {}).get("missing")})
    why = setting.get("why") or (refused[0] if refused else "")
    if refused and not rows:
        state = "refused"
    elif missing and not rows and state == "measured":
        state, why = "unavailable", f"no energy figures: {missing[0]}"
    return {"state": state, "why": why,
            "source": setting.get("source"), "battery": setting.get("battery"),
            "update_ms": sorted(updates)[len(updates) // 2] if updates else None,
            **({"resolution_uah": steps[len(steps) // 2]} if steps else {}),  # a charge counter's step
            "refused_reps": sum(1 for r in reps if (r.energy or {}).get("refused")), "rows": rows}


def probe(dev, tries: int = 2):
    """``power.probe``, asked again when the phone does not answer in time (a busy phone's shell can
    be slow); after that a Battery without a source that says why: energy is not worth failing the run."""
    from devprof.devices import power
    from devprof.errors import DeviceLost

    for _ in range(tries):
        try:
            return power.probe(dev)
        except DeviceLost as e:
            why = e.message
    return power.Battery(None, why=f"the battery probe got no answer ({why})")


class Meter:
    """Energy for one session on one phone: ``open`` decides once (source, or why not), ``start``
    begins sampling and waits the idle baseline (until the trace itself spans it: the sampler's adb
    shell can start late on a loaded phone), ``finish`` turns the trace into the figures.
    With a charge counter the idle window lasts until the counter spanned :data:`BASELINE_UPDATES`
    update intervals and one more, and ``finish`` waits for one update after the process ended (each at most
    :data:`WAIT_S`), so a phase's ends are interpolated rather than extrapolated."""

    def __init__(self, dev, battery, script: str, baseline_s: float, max_s: float) -> None:
        self.dev, self.battery, self.script = dev, battery, script
        self.baseline_s, self.max_s = baseline_s, max_s
        self.cancel = None

    @classmethod
    def open(cls, dev, want: bool | None, baseline_s: float, max_s: float, say) -> tuple["Meter | None", dict]:
        """(meter or None, the run's ``settings["energy"]``); ``say`` prints a line for the user."""
        if want is False:
            return None, {"state": "off"}
        if dev.kind != "android":
            if not want:
                return None, {"state": "off"}
            setting = {"state": "unavailable", "why": "energy is measured on Android phones only (their fuel gauge)"}
            say(f"energy: {setting['why']}")
            return None, setting
        from devprof.devices import power

        bat = probe(dev)
        setting = {"battery": bat.to_dict(), "source": bat.source, "baseline_s": baseline_s,
                   "sample_s": power.sample_s(bat.source), "sysroot": dev.sysroot}
        if bat.source is None:
            setting.update(state="unavailable", why=f"no readable battery current: {bat.why}")
            say(f"energy: {setting['why']}")
            return None, setting
        why = refusal(bat.status, bat.plugged, dev.serial)
        if why:
            setting.update(state="refused", why=why)
            say(why)
            return None, setting
        script = dev.stage({"power_sampler.sh": power.POWER_SAMPLER}, "tools").paths["power_sampler.sh"]
        setting["state"] = "measured"
        if bat.source in COUNTER_SOURCES:
            say(counter_notice(bat.source, baseline_s))
        return cls(dev, bat, script, baseline_s, max_s), setting

    def start(self, cancel=None):
        from devprof.devices.power import PowerRecorder

        counter = self.battery.source in COUNTER_SOURCES
        rec = PowerRecorder(self.dev, self.battery, self.script,
                            self.baseline_s + self.max_s + (2 * WAIT_S if counter else WAIT_S))
        self.cancel = cancel
        rec.start()
        if cancel is not None and cancel.wait(self.baseline_s):
            rec.stop()
            raise KeyboardInterrupt
        if cancel is None:
            import time

            time.sleep(self.baseline_s)
        # the idle window spans most of --energy-baseline in the trace itself (the sampler's shell may
        # start late); a counter's also BASELINE_UPDATES update intervals, and one to spare
        if not self.await_trace(rec, None, BASELINE_UPDATES + 2 if counter else 2, 800.0 * self.baseline_s):
            rec.stop()
            raise KeyboardInterrupt
        return rec

    def await_trace(self, rec, after_ms: float | None, need: int, span_ms: float = 0.0) -> bool:
        """Poll the battery trace (every 0.25 s, a counter's every 1 s; at most WAIT_S) until ``need``
        of its points (a charge counter's updates, else samples), spanning ``span_ms``, came after
        device wall ms ``after_ms`` (any time: None); False on Ctrl-C."""
        import time

        end, every = time.monotonic() + WAIT_S, 1.0 if self.battery.source in COUNTER_SOURCES else 0.25
        while time.monotonic() < end:
            tr = rec.peek()
            pts = ([t for t, _ in Counter(tr).pts] if self.battery.source in COUNTER_SOURCES
                   else [t for up, _, _ in tr.samples for t in [tr.wall_ms(up)] if t is not None])
            got = [t for t in pts if after_ms is None or t > after_ms]
            if len(got) >= need and got[-1] - got[0] >= span_ms:
                return True
            if self.cancel is not None and self.cancel.wait(every):
                return False
            if self.cancel is None:
                time.sleep(every)
        return True

    def finish(self, rec, outcome, result) -> dict[str, Any]:
        if outcome.status == "lost":  # nothing more is asked of a phone that stopped answering
            return {}
        if outcome.status == "ok" and self.battery.source in COUNTER_SOURCES:
            self.await_trace(rec, outcome.start_wall_ms + outcome.wall_ms, 1)
        trace = rec.stop()
        if outcome.status != "ok":
            return {}
        return rep_energy(trace, outcome.start_wall_ms, result, self.battery.source, self.battery.plugged,
                          self.dev.serial)
