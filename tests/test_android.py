"""Android end to end: the real adb server, the suite's fake phone daemon, devprof's CLI.

The daemon presents itself as a Galaxy S25 (SM-S931B) and runs what devprof pushes on this host
inside a sandbox folder, so `devprof run --device s25` pushes the reference runtime's launcher and
bundle over adb, samples the real process through the on-device sampler script, and pulls back
stdout, samples and routing traces.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from devprof.cli import cli
from tests.support.adb_env import FakePhone

# Every repetition starts a fresh runtime process (torch import included): keep their number small.
# the reference runtime, explicitly: on a phone the default is the native runner (tests/test_android_native.py)
QUICK = ["--runtime", "reference", "--context", "128", "--new-tokens", "4", "--reps", "1", "--warmup", "0",
         "--sample-ms", "5"]


@pytest.fixture
def env(adb_env):
    return adb_env


def invoke(*args):
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res


def test_devices_lists_the_fake_s25(adb, env):
    with FakePhone(adb) as phone:
        res = invoke("devices", "--json")
        assert res.exit_code == 0, res.output
        found = {d["serial"]: d for d in json.loads(res.output)}
        d = found[phone.serial]
        assert d["kind"] == "android" and d["model"] == "SM-S931B"
        assert d["os_version"] == "Android 15"
        assert d["extra"]["abi"] == "arm64-v8a" and "s25" in d["extra"]["aliases"]
        assert d["extra"]["mem_total_mb"] > 0
        assert "local" in found
        table = invoke("devices").output
        assert "SM-S931B" in table and "Galaxy S25" in table


def test_run_s25_end_to_end_then_nothing_is_pushed_again(adb, env, tmp_path):
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        res = invoke("run", "--device", "s25", *QUICK, "--db", str(db))
        assert res.exit_code == 0, res.output
        shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
        assert shown["run"]["device"]["model"] == "SM-S931B"
        assert shown["run"]["status"] == "complete"
        rows = {(r["model"], r["workload"]): r for r in shown["results"]}
        assert set(rows) == {(m, w) for m in ("mobilemoe-s-mini", "mobilellm-pro-mini") for w in ("templated", "real")}
        for r in rows.values():
            assert r["n"] == 1 and r["decode_tok_s"] > 0 and r["peak_rss_mb"] > 10
        assert rows[("mobilemoe-s-mini", "real")]["distinct_experts"] > 0
        first = _run_settings(db)
        assert first["bytes_pushed"] > 100 * 2**20  # both bundles and the launcher went over adb
        # the on-device sampler produced a timeline, and the thermal zones were read
        con = sqlite3.connect(db)
        assert con.execute("select count(*) from samples").fetchone()[0] > 20
        html = Path(invoke("report", "latest", "--db", str(db)).output.strip()).read_text()
        assert "SM-S931B" in html and "Android 15" in html and "thermal_zone0" in html
        # files on the phone, where the manifest says
        assert list((phone.sandbox / "data/local/tmp/devprof").glob("*/weights.bin"))

        res = invoke("run", "--device", "s25", *QUICK, "--db", str(db), "--workload", "templated")
        assert res.exit_code == 0, res.output
        assert _run_settings(db)["bytes_pushed"] == 0  # same bundles, launcher and sampler: nothing pushed


def test_device_all_runs_two_phones_in_parallel(adb, env, tmp_path):
    db = tmp_path / "s.db"
    with FakePhone(adb) as s25, FakePhone(adb, model="Pixel 9 Pro", android_version="16") as pixel:
        res = invoke("run", "--device", "all", *QUICK, "--workload", "templated", "--baseline", "none", "--db", str(db),
                     "--adb-server", f"127.0.0.1:{adb.port}")
        assert res.exit_code == 0, res.output
        runs = json.loads(invoke("list", "--json", "--db", str(db)).output)
        assert sorted(r["device"] for r in runs) == sorted(["Galaxy S25 (SM-S931B)", "Pixel 9 Pro"])
        assert all(r["status"] == "complete" for r in runs)
        assert s25.serial != pixel.serial


def test_unknown_alias_and_no_match(adb, env, tmp_path):
    with FakePhone(adb):
        res = invoke("run", "--device", "pixel9", *QUICK, "--db", str(tmp_path / "s.db"))
        assert res.exit_code == 1 and "no attached Android device is a Pixel 9" in res.output
        res = invoke("run", "--device", "nokia3310", *QUICK, "--db", str(tmp_path / "s.db"))
        assert res.exit_code == 2 and "no device matches 'nokia3310'" in res.output  # no such name: bad input


def test_corrupt_push_is_caught(adb, env, tmp_path):
    with FakePhone(adb) as phone:
        marker = phone.sandbox / ".adbd" / "corrupt-push"
        marker.write_text("tokenizer.json")
        res = invoke("run", "--device", "s25", *QUICK, "--db", str(tmp_path / "s.db"))
        assert res.exit_code == 1
        assert "is corrupt: sha256 on the device" in res.output
        assert not marker.exists()  # the hook fired


def _run_settings(db: Path) -> dict:
    res = CliRunner().invoke(cli, ["show", "latest", "--json", "--db", str(db)], catch_exceptions=False)
    return json.loads(res.output)["run"]["settings"]
