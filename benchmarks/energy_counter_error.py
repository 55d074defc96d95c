"""How far charge-counter J/token is off against the phase's length in counter updates.

    python benchmarks/energy_counter_error.py                  # idle baseline of 4 updates
    python benchmarks/energy_counter_error.py --idle 10 --updates 3,5,8,10

A synthetic counter (devprof/energy.py's input: a PowerTrace) publishes the charge left every
UPDATE, rounded down to STEP µAh, drained by 0.3 A idle and 1.5 A while a process runs, at 3.87 V,
sampled every 50 ms like power_sampler.sh; the decode phase ends with the process (the worst edge:
the last update interval mixes busy and idle). Each row: 20 random offsets of the counter's clock,
the median and worst relative error of decode J/token and how many figures devprof marked coarse.
No timing is involved: the arithmetic is exact, the error is the counter's.
"""

from __future__ import annotations

import argparse
import random
import statistics

from devprof import energy as E
from devprof.devices.power import PowerTrace
from devprof.results import RunResult

IDLE_UA, BUSY_UA, VOLT_UV = 300_000, 1_500_000, 3_870_000


def trace(update_ms: int, step: int, busy: tuple[int, int], end_ms: int, offset: int) -> PowerTrace:
    def drained(t: int) -> float:
        return (IDLE_UA * t + (BUSY_UA - IDLE_UA) * max(0, min(t, busy[1]) - busy[0])) / 1000 / 3600

    pts = []
    for t in range(0, end_ms + 1, 50):
        at = max(0, (t + offset) // update_ms * update_ms - offset)
        pts.append((100 + t / 1000, int((3_120_000 - drained(at)) // step * step), VOLT_UV))
    return PowerTrace(100.0, 1e12, pts, "Discharging", "Discharging")


def row(update_ms: int, step: int, mult: int, idle_updates: int, rng: random.Random) -> str:
    length = update_ms * mult
    net_w = (BUSY_UA - IDLE_UA) * VOLT_UV / 1e12
    errs, marked = [], 0
    for _ in range(20):
        idle, pre = idle_updates * update_ms, 2000
        busy = (idle, idle + 500 + pre + length + 200)
        tr = trace(update_ms, step, busy, busy[1] + 2 * update_ms, rng.randrange(update_ms))
        stamps = [pre + length * i / 40 for i in range(41)]
        res = RunResult(runtime="x", prompt_tokens=64, generated_tokens=41, load_ms=500.0,
                        extra={"prefill_wall_ms": float(pre), "token_stamp_ms": stamps})
        d = E.rep_energy(tr, 1e12 + idle, res, "sysfs-counter", [], "x")["phases"]["decode"]
        errs.append(abs(d["j_per_token"] / (net_w * length / 1000 / 40) - 1))
        marked += bool(d["slow_gauge"])
    return (f"| {update_ms / 1000:.0f} s | {step} | {length / 1000:.0f} | {mult} | "
            f"{statistics.median(errs) * 100:.1f}% | {max(errs) * 100:.1f}% | {marked}/20 |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=int, default=4, help="idle baseline length in counter updates")
    ap.add_argument("--updates", default="1,2,3,6,10,12", help="decode lengths in counter updates")
    args = ap.parse_args()
    rng = random.Random(1)
    print("| update | step µAh | decode s | updates in it | median error | worst error | marked coarse |")
    print("| -----: | -------: | -------: | ------------: | -----------: | ----------: | ------------: |")
    for update_ms, step in ((10_000, 200), (30_000, 500)):
        for mult in (int(x) for x in args.updates.split(",")):
            print(row(update_ms, step, mult, args.idle, rng))


if __name__ == "__main__":
    main()
