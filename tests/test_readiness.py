"""The readiness gate: parsing, waiting on a phone that cools down (the fake S25's sysfs), and a run's record."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner

from devprof import readiness as R
from devprof.cli import cli
from devprof.devices.local import LocalDevice
from devprof.errors import UsageError


def test_parse():
    assert R.parse("load<0.5,temp<40") == [R.Condition("load", 0.5), R.Condition("temp", 40.0)]
    assert R.parse(" cpu < 30 ") == [R.Condition("cpu", 30.0)]
    assert R.parse("none") == [] and R.parse(None) == [] and R.parse("off") == []
    assert R.describe(R.parse("cpu<30,temp<45")) == "cpu<30,temp<45"
    for bad in ("load>0.5", "fan<3", "temp<", "temp<hot", "load<0.5;temp<40"):
        with pytest.raises(UsageError):
            R.parse(bad)
    assert R.default_spec("android") == "temp<45" and R.default_spec("local") == "none"


def test_bad_ready_is_one_line_exit_2(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--ready", "fan<3", "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 2
    assert "bad --ready condition 'fan<3'" in res.output and "Traceback" not in res.output


def test_local_gate_sees_cpu_and_load():
    dev = LocalDevice()
    try:
        rec = R.wait(dev, R.parse("cpu<101,load<100000,temp<1000"), timeout_s=10)
    finally:
        dev.close()
    assert rec["ready"] and rec["checks"] == 1 and rec["waited_s"] < 60  # one check; a sanity bound on its time
    assert 0 <= rec["saw"]["cpu"] <= 100 and rec["saw"]["load"] >= 0
    # this host may have no thermal zones: then "temp" is not checked and says so
    assert rec["saw"]["temp"] is not None or rec["unknown"] == ["temp"]


@pytest.fixture(scope="module")
def phone():
    from tests.support.adb_env import AdbServer, FakePhone

    with AdbServer() as adb:
        mp = pytest.MonkeyPatch()
        for k, v in adb.env.items():
            if k.startswith("ANDROID_ADB") or k.startswith("ADB_"):
                mp.setenv(k, v)
        with FakePhone(adb) as p:
            yield p
        mp.undo()


def _zone(phone, i: int) -> object:
    return phone.sandbox / f"sys/class/thermal/thermal_zone{i}/temp"


def test_phone_that_cools_down_is_waited_for(phone):
    from devprof.devices import android

    dev = android.resolve(phone.serial)[0]
    old = _zone(phone, 0).read_text()
    _zone(phone, 0).write_text("48500\n")  # the big cores after a benchmark
    said: list[str] = []

    def cool() -> None:
        time.sleep(3.0)
        _zone(phone, 0).write_text("36000\n")

    t = threading.Thread(target=cool)
    try:
        t.start()
        rec = R.wait(dev, R.parse("temp<45"), timeout_s=60, progress=said.append)
        t.join()
        assert rec["ready"] and 2.5 <= rec["waited_s"] < 30
        assert rec["saw_first"] == {"temp": 48.5} and rec["saw"] == {"temp": 36.0} and rec["checks"] >= 2
        assert said and said[0].startswith("waiting for the android device to be ready: temp 48.5 >= 45")
        # never cool enough: it gives up after the timeout, goes on and records it
        said.clear()
        rec = R.wait(dev, R.parse("temp<30"), timeout_s=2.5, progress=said.append)
        # gives up once the timeout passed; the upper bound is a sanity bound (a loaded host reads slowly)
        assert not rec["ready"] and rec["not_ready"] == ["temp 36 >= 30"] and 2.5 <= rec["waited_s"] < 60
        assert said[-1] == "not ready after 2.5 s (temp 36 >= 30); going on"
        # the phone's /proc/stat through adb (the fake phone runs on this host: the host's CPUs)
        rec = R.wait(dev, R.parse("cpu<101,load<100000"), timeout_s=10)
        assert rec["ready"] and 0 <= rec["saw"]["cpu"] <= 100
    finally:
        t.join()
        _zone(phone, 0).write_text(old)


def test_a_run_records_the_gate_and_the_interference(tmp_path):
    db = tmp_path / "s.db"
    res = CliRunner().invoke(cli, ["run", "--context", "64", "--new-tokens", "4", "--warmup", "0", "--reps", "1",
                                   "--workload", "real", "--ready", "cpu<101,load<100000", "--db", str(db)])
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(db)
    rows = [json.loads(r[0]) for r in con.execute("select conditions_json from repetitions")]
    assert len(rows) == 2
    for c in rows:
        assert c["ready"]["ready"] and c["ready"]["spec"] == "cpu<101,load<100000"
        i = c["interference"]
        assert 0 <= i["other_cpu_pct"] <= 100 and i["own_cpu_pct"] > 0 and i["window_s"] > 0
        assert "load_before" in i and i["ncpu"] >= 1
    settings = json.loads(con.execute("select meta_json from runs").fetchone()[0])["settings"]
    assert settings["ready"] == "cpu<101,load<100000" and settings["ready_timeout_s"] == 60.0
