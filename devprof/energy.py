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
figures are kept and marked ``slow_gauge``. Charging (or Full / Not charging on external power) makes
the battery's current the charger's business, not the load's: energy is refused, never guessed.
"""

from __future__ import annotations

from typing import Any

from devprof.devices.power import PowerTrace

MA_BELOW = 20_000  # |current| median below this: the kernel reports mA, not µA
MV_BELOW = 100_000  # voltage below this: mV, not µV
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
    state = setting.get("state") or ("measured" if rows else "off")
    if refused and not rows:
        state = "refused"
    return {"state": state, "why": setting.get("why") or (refused[0] if refused else ""),
            "source": setting.get("source"), "battery": setting.get("battery"),
            "update_ms": sorted(updates)[len(updates) // 2] if updates else None,
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


#: How much longer than the idle baseline ``Meter.start`` waits for a late battery sampler (s).
START_GRACE_S = 30.0


def sampled_s(rec) -> float:
    """How many seconds of samples a running PowerRecorder has written so far: 0 before its second
    sample, infinite when the phone does not answer (the run that follows finds out)."""
    from devprof.devices.power import parse_power_output
    from devprof.errors import DeviceLost

    try:
        _, text = rec.dev.sh(["cat", rec.out], timeout=20)
    except DeviceLost:
        return float("inf")
    ups = [up for up, _, _ in parse_power_output(text).samples]
    return ups[-1] - ups[0] if len(ups) > 1 else 0.0


class Meter:
    """Energy for one session on one phone: ``open`` decides once (source, or why not), ``start``
    begins sampling and waits the idle baseline, ``finish`` turns the trace into the figures."""

    def __init__(self, dev, battery, script: str, baseline_s: float, max_s: float) -> None:
        self.dev, self.battery, self.script = dev, battery, script
        self.baseline_s, self.max_s = baseline_s, max_s

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
                   "sample_s": power.SAMPLE_S, "sysroot": dev.sysroot}
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
        return cls(dev, bat, script, baseline_s, max_s), setting

    def start(self, cancel=None):
        """Start the battery sampler and return once its samples span the idle baseline: counted
        from its first sample, not from the request (a busy phone starts the sampler's shell late),
        for at most :data:`START_GRACE_S` more; a sampler that never starts leaves the repetition
        without figures (``rep_energy`` says why)."""
        import time

        from devprof.devices.power import SAMPLE_S, PowerRecorder

        rec = PowerRecorder(self.dev, self.battery, self.script, self.baseline_s + START_GRACE_S + self.max_s)
        rec.start()
        deadline = time.monotonic() + self.baseline_s + START_GRACE_S
        wait = self.baseline_s
        while True:
            if cancel is not None and cancel.wait(wait):
                rec.stop()
                raise KeyboardInterrupt
            if cancel is None:
                time.sleep(wait)
            left = self.baseline_s - sampled_s(rec)
            if left <= 2 * SAMPLE_S or time.monotonic() >= deadline:
                return rec
            wait = min(max(left, 0.1), max(0.0, deadline - time.monotonic()))

    def finish(self, rec, outcome, result) -> dict[str, Any]:
        if outcome.status == "lost":  # nothing more is asked of a phone that stopped answering
            return {}
        trace = rec.stop()
        if outcome.status != "ok":
            return {}
        return rep_energy(trace, outcome.start_wall_ms, result, self.battery.source, self.battery.plugged,
                          self.dev.serial)
