"""Energy per token and --soak end to end: the real adb server, the suite's phone daemon with its fake
battery (tests/support/fake_battery.py: busy_ua while a native program runs, idle_ua otherwise, at voltage_uv,
so the true J/token of a phase is (busy - idle) x V x phase seconds / tokens), devprof's native arm64
runner under qemu, and devprof's CLI, store and reports."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from devprof import energy as E
from devprof.cli import cli
from tests.support.adb_env import AdbServer, FakePhone

RUN = ["run", "--device", "s25", "--context", "128", "--new-tokens", "8", "--reps", "2", "--warmup", "0",
       "--threads", "1", "--workload", "real", "--baseline", "none", "--sample-ms", "20"]


def need_qemu() -> None:
    if not shutil.which("qemu-aarch64-static"):
        pytest.fail("qemu-aarch64-static is not installed: run scripts/test-setup (Debian: qemu-user-static)",
                    pytrace=False)


@pytest.fixture(scope="module")
def adb():
    with AdbServer() as server:
        yield server


@pytest.fixture
def env(adb, monkeypatch):
    for k, v in adb.env.items():
        if k.startswith("ANDROID_ADB") or k.startswith("ADB_"):
            monkeypatch.setenv(k, v)
    return adb.env


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_j_per_token_matches_the_fake_batterys_true_energy(adb, env, tmp_path):
    need_qemu()
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        conf = phone.battery(sign=1, unit="mA", idle_ua=300_000, busy_ua=1_500_000)  # Samsung's convention
        res = invoke(*RUN, "--energy-baseline", "1.5", "--db", str(db))
        assert res.exit_code == 0, res.output
    net_w = (conf["busy_ua"] - conf["idle_ua"]) * conf["voltage_uv"] / 1e12
    con = sqlite3.connect(db)
    rows = con.execute("select energy_json, result_json from repetitions where warmup = 0").fetchall()
    assert len(rows) == 2
    meta = json.loads(con.execute("select meta_json from runs").fetchone()[0])
    assert all(json.loads(e).get("source") for e, _ in rows), (meta.get("settings", {}).get("energy"), rows, res.output)
    for energy_json, result_json in rows:
        e, r = json.loads(energy_json), json.loads(result_json)
        assert e["source"] == "sysfs" and e["current_unit"] == "mA" and e["discharge_sign"] == "positive"
        assert e["baseline_w"] == pytest.approx(conf["idle_ua"] * conf["voltage_uv"] / 1e12, rel=0.02)
        stamps = r["extra"]["token_stamp_ms"]
        true_decode = net_w * (stamps[-1] - stamps[0]) / 1000.0 / (len(stamps) - 1)
        true_prefill = net_w * r["extra"]["prefill_wall_ms"] / 1000.0 / r["prompt_tokens"]
        assert e["phases"]["decode"]["j_per_token"] == pytest.approx(true_decode, rel=0.05)
        assert e["phases"]["prefill"]["j_per_token"] == pytest.approx(true_prefill, rel=0.05)
        assert e["phases"]["decode"]["tokens"] == 7 and e["phases"]["prefill"]["tokens"] == 128
        assert not e["phases"]["decode"]["slow_gauge"]  # a 20 ms gauge against a phase of seconds
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    en = shown["energy"]
    assert en["state"] == "measured" and en["source"] == "sysfs" and en["update_ms"] > 0
    phases = {r["phase"]: r for r in en["rows"]}
    assert set(phases) == {"prefill", "decode"} and all(r["n"] == 2 for r in phases.values())
    assert phases["decode"]["ci"][0] <= phases["decode"]["j_per_token"] <= phases["decode"]["ci"][1]
    assert shown["soak"] is None
    text = invoke("show", "latest", "--db", str(db)).output
    assert "Energy (battery current_now × voltage_now (sysfs), reading changes" in text and "decode:" in text
    setting = next(ln for ln in text.splitlines() if ln.startswith("Energy setting: "))
    assert setting.startswith("Energy setting: on: battery current_now × voltage_now (sysfs)") and "{" not in setting
    exported = json.loads(invoke("export", "latest", "--format", "json", "--db", str(db)).output)
    assert exported["energy"]["rows"] == en["rows"] and exported["repetitions"][0]["energy"]["phases"]
    html = tmp_path / "r.html"
    assert invoke("report", "latest", "--db", str(db), "--out", str(html)).exit_code == 0
    page = html.read_text()
    assert '<section id="energy">' in page and "J/token (median)" in page
    assert "<th>energy</th><td>on: battery current_now × voltage_now (sysfs), reading changes" in page


def test_charging_refuses_energy_with_a_clear_line(adb, env, tmp_path):
    need_qemu()
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        phone.battery(status="Charging", plugged="USB")
        res = invoke(*RUN[:8], "1", *RUN[9:], "--db", str(db))
        assert res.exit_code == 0, res.output
    line = next((ln for ln in res.output.splitlines() if ln.startswith("energy refused")), None)
    assert line, res.output
    # the fake phone is reached over TCP (wireless debugging, as far as adb knows) yet its USB supply is online
    assert line == ("energy refused: the battery is charging on USB power, so its current says nothing about the "
                    f"load; unplug the USB cable: devprof already reaches {phone.serial} over wireless debugging")
    con = sqlite3.connect(db)
    assert [json.loads(e) for (e,) in con.execute("select energy_json from repetitions")] == [{}]
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    assert shown["energy"]["state"] == "refused" and shown["energy"]["rows"] == []
    assert shown["energy"]["why"] == line
    assert "energy refused: the battery is charging" in invoke("show", "latest", "--db", str(db)).output
    shown_text = invoke("show", "latest", "--db", str(db)).output
    assert "Energy setting: refused" in [ln.rstrip() for ln in shown_text.splitlines()]
    html = tmp_path / "r.html"
    assert invoke("report", "latest", "--db", str(db), "--out", str(html)).exit_code == 0
    page = html.read_text()
    assert "energy-refused" in page and "No energy figures are shown." in page and "J/token (median)" not in page
    assert f"<th>energy</th><td>{line}</td>" in page  # the setup table: the reason, not the raw setting


def test_soak_records_speed_heat_and_clock_over_time(adb, env, tmp_path):
    need_qemu()
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        # the phone warms 3 °C per busy second and throttles its big cores above 50 °C
        phone.battery(heat_c_per_s=3.0, throttle_c=50.0, throttle_share=0.5)
        res = invoke(*RUN[:4], "32", "--new-tokens", "4", "--reps", "1", *RUN[9:], "--no-energy", "--soak", "0.25",
                     "--db", str(db))
        assert res.exit_code == 0, res.output
    assert "Soak:" in res.output
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    pts = shown["soak"]["points"]
    assert len(pts) >= 2 and all(p["status"] == "ok" and p["decode_tok_s"] > 0 for p in pts)
    assert [p["t_s"] for p in pts] == sorted(p["t_s"] for p in pts) and pts[-1]["t_s"] >= 15.0
    assert pts[-1]["hottest_c"] > pts[0]["hottest_c"] - 0.5 and pts[-1]["hottest_zone"].startswith("thermal_zone0")
    assert pts[-1]["big_core_mhz"] == pytest.approx(4320.0 * 0.5, rel=0.01)  # throttled by the end
    assert shown["energy"]["state"] == "off"
    v = shown["soak"]["verdict"]
    assert v["n"] == len(pts) and v["sentence"] and "big core" in v["sentence"]
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from repetitions").fetchone()[0] == 1  # soak points are not repetitions
    html = tmp_path / "r.html"
    assert invoke("report", "latest", "--db", str(db), "--out", str(html)).exit_code == 0
    page = html.read_text()
    assert '<section id="soak">' in page and "Sustained load" in page and v["sentence"].split(":")[0] in page


def test_soak_on_this_host_says_when_there_are_no_thermal_zones(tmp_path):
    pytest.importorskip("gguf")
    db = tmp_path / "s.db"
    res = invoke("run", "--device", "local", "--runtime", "llamacpp", "--context", "64", "--new-tokens", "8",
                 "--warmup", "0", "--reps", "1", "--workload", "real", "--baseline", "none", "--threads", "1",
                 "--soak", "0.05", "--db", str(db))
    assert res.exit_code == 0, res.output
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    pts = shown["soak"]["points"]
    assert pts and pts[-1]["t_s"] >= 3.0
    zones = [z for z in Path("/sys/class/thermal").glob("thermal_zone*") if os.access(z / "temp", os.R_OK)]
    said = "this device exposes no thermal zones" in shown["soak"]["verdict"]["sentence"]
    assert said == (not zones) and said == all(p["hottest_c"] is None for p in pts)
    assert shown["energy"]["state"] == "off"  # not a phone: no energy, no noise about it


def test_a_charge_counter_only_phone_gives_j_per_token_within_5_percent(adb, env, tmp_path):
    need_qemu()
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:  # no current_now: a kernel with only charge_counter (1 µAh steps, every 20 ms)
        conf = phone.battery(current_now=False, idle_ua=300_000, busy_ua=1_500_000, counter_update_ms=20,
                             counter_step_uah=1)
        # 48 tokens: a decode of many counter updates (8 tokens under qemu last ~0.2 s, about the
        # uncertainty of where a phase ends on a counter sampled every 50 ms)
        res = invoke(*RUN[:6], "48", *RUN[7:], "--energy-baseline", "1.5", "--db", str(db))
        assert res.exit_code == 0, res.output
    assert "energy: no readable battery current; from the battery's charge counter (sysfs charge_counter)" in res.output
    net_w = (conf["busy_ua"] - conf["idle_ua"]) * conf["voltage_uv"] / 1e12
    con = sqlite3.connect(db)
    rows = con.execute("select energy_json, result_json from repetitions where warmup = 0").fetchall()
    assert len(rows) == 2
    for energy_json, result_json in rows:
        e, r = json.loads(energy_json), json.loads(result_json)
        assert e["source"] == "sysfs-counter" and e["counter_unit"] == "µAh" and e["counter_direction"] == "falling"
        assert e["resolution_uah"] >= 1 and 0 < e["update_ms"] < 1000
        assert e["baseline_s"] >= 0.8 * 1.5 and e["baseline_w"] == pytest.approx(
            conf["idle_ua"] * conf["voltage_uv"] / 1e12, rel=0.05), e
        stamps = r["extra"]["token_stamp_ms"]
        true_decode = net_w * (stamps[-1] - stamps[0]) / 1000.0 / (len(stamps) - 1)
        true_prefill = net_w * r["extra"]["prefill_wall_ms"] / 1000.0 / r["prompt_tokens"]
        dec, pre = e["phases"]["decode"], e["phases"]["prefill"]
        assert not dec["slow_gauge"] and not pre["slow_gauge"], e
        assert dec["j_per_token"] == pytest.approx(true_decode, rel=0.05), (e, r["extra"]["prefill_wall_ms"])
        assert pre["j_per_token"] == pytest.approx(true_prefill, rel=0.05), (e, r["extra"]["prefill_wall_ms"])
        for d in (dec, pre):  # marked coarse exactly when shorter than SLOW_UPDATES of the measured updates
            short = d["s"] * 1000 < E.SLOW_UPDATES * e["update_ms"]
            assert d["slow_gauge"] == (short or d["extrapolated"] or e["baseline_slow"]), e
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    assert shown["energy"]["source"] == "sysfs-counter" and shown["energy"]["resolution_uah"] >= 1
    text = invoke("show", "latest", "--db", str(db)).output
    assert "Energy (battery charge_counter Δcharge × voltage_now (sysfs), counter steps of" in text


def test_an_aosp_phone_uses_dumpsys_charge_counter_and_marks_a_phase_shorter_than_its_updates(adb, env, tmp_path):
    need_qemu()
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:  # stock AOSP: no sysfs current or counter; dumpsys prints a 3 s counter
        phone.battery(current_now=False, sysfs_counter=False, counter_update_ms=3000, counter_step_uah=50)
        # a 1 s idle window is too short for a 3 s counter: devprof waits for its updates, before and after
        res = invoke(*RUN[:4], "32", "--new-tokens", "2", "--reps", "1", *RUN[9:], "--energy-baseline", "1",
                     "--db", str(db))
        assert res.exit_code == 0, res.output
    assert "from the battery's charge counter (dumpsys battery's Charge counter)" in res.output
    (energy_json,), = sqlite3.connect(db).execute("select energy_json from repetitions where warmup = 0").fetchall()
    e = json.loads(energy_json)
    assert e["source"] == "dumpsys-counter" and e["voltage_unit"] == "mV", e
    assert e["resolution_uah"] >= 50 and e["resolution_uah"] % 50 == 0 and e["update_ms"] >= 2500
    assert not e["baseline_slow"] and e["baseline_s"] >= E.BASELINE_UPDATES * e["update_ms"] / 1000
    dec = e["phases"]["decode"]
    assert not dec["extrapolated"] and not e["phases"]["prefill"]["extrapolated"]
    assert dec["tokens"] == 1 and dec["s"] * 1000 < E.SLOW_UPDATES * e["update_ms"]  # one step: under 10 updates
    assert dec["slow_gauge"] is True and dec["updates"] <= 3
    shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    decode = next(row for row in shown["energy"]["rows"] if row["phase"] == "decode")
    assert shown["energy"]["source"] == "dumpsys-counter" and decode["slow_gauge"] is True
    text = invoke("show", "latest", "--db", str(db)).output
    assert "Energy (dumpsys battery Charge counter Δcharge × voltage, counter steps of" in text and "‡" in text


def test_the_idle_baseline_counts_from_a_late_samplers_first_sample(adb, env):
    """A busy phone may start the battery sampler's shell seconds late: the baseline still spans
    (most of) its length of samples before the run would start."""
    from devprof.devices import android
    from devprof.energy import Meter

    with FakePhone(adb) as phone:
        dev = android.resolve(phone.serial)[0]
        meter, setting = Meter.open(dev, None, 1.0, 60, lambda m: None)
        assert meter is not None and setting["state"] == "measured", setting
        late = "/data/local/tmp/late_power_sampler.sh"
        phone.host_path(late).write_text(f'sleep 3\nexec sh {phone.host_path(meter.script)} "$@"\n')
        meter.script = late
        trace = meter.start().stop()
    ups = [up for up, _, _ in trace.samples]
    assert ups and ups[-1] - ups[0] >= 0.8 * 1.0, trace  # most of the baseline: Meter.start's criterion


def test_a_battery_probe_without_answer_is_asked_again_then_named(adb, env):
    from devprof.devices import android
    from devprof.energy import Meter
    from devprof.errors import DeviceLost

    class Unanswered:
        """The phone, whose shell gives no answer to the first ``fail`` commands."""

        def __init__(self, dev, fail: int) -> None:
            self._dev, self.fail = dev, fail

        def sh(self, cmd, timeout=20):
            if self.fail:
                self.fail -= 1
                raise DeviceLost("lost contact with the phone: timed out")
            return self._dev.sh(cmd, timeout)

        def __getattr__(self, name):
            return getattr(self._dev, name)

    with FakePhone(adb) as phone:
        dev = android.resolve(phone.serial)[0]
        dev.sysroot  # noqa: B018 - read once: the probe is what is asked again
        meter, setting = Meter.open(Unanswered(dev, 1), None, 1.0, 60, lambda m: None)
        assert meter is not None and setting["state"] == "measured" and setting["source"] == "sysfs"
        said: list[str] = []
        meter, setting = Meter.open(Unanswered(dev, 2), None, 1.0, 60, said.append)
    assert meter is None and setting["state"] == "unavailable"
    assert said == ["energy: no readable battery current: the battery probe got no answer "
                    "(lost contact with the phone: timed out)"]
