"""A lab end to end: two fake phones behind two adb servers, `devprof run --device all` from two
processes at once (two hosts) into one PostgreSQL store, an adb endpoint that is down, and
`devprof history` over the shared store. Real adb servers, real daemons, a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.adb_env import AdbServer, FakePhone, free_port

TINY = ["--runtime", "reference", "--context", "64", "--new-tokens", "4", "--reps", "2", "--warmup", "0",
        "--workload", "real", "--baseline", "none", "--sample-ms", "20", "--ready", "none"]
MODEL = "mobilemoe-s-mini"


def devprof_proc(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "devprof", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "300"})


def devprof(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    p = devprof_proc(*args)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def lab():
    """Two hosts: an adb server each, one phone on each."""
    with AdbServer() as a, AdbServer() as b:
        with FakePhone(a) as s25, FakePhone(b, model="Pixel 9 Pro", android_version="16") as pixel:
            yield {"a": f"127.0.0.1:{a.port}", "b": f"127.0.0.1:{b.port}", "s25": s25, "pixel": pixel}


def test_devices_lists_phones_of_every_endpoint_and_a_down_one_in_one_line(lab):
    dead = f"127.0.0.1:{free_port()}"
    rc, out, err = devprof("devices", "--json", "--adb-server", f"{lab['a']},{dead},{lab['b']}")
    assert rc == 0, err
    found = {d["serial"]: d for d in json.loads(out)}
    assert found[lab["s25"].serial]["extra"]["adb_server"] == lab["a"]
    assert found[lab["pixel"].serial]["extra"]["adb_server"] == lab["b"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: adb server at {dead} not reachable"), err
    rc, out, _ = devprof("devices", "--adb-server", f"{lab['a']},{lab['b']}")
    assert rc == 0 and lab["a"] in out and lab["b"] in out and "Pixel 9 Pro" in out
    rc, _, err = devprof("devices", "--adb-server", f"{lab['a']},nonsense")
    assert rc == 2 and "--adb-server must be HOST:PORT, got 'nonsense'" in err


def test_two_hosts_run_device_all_into_one_postgresql_store_then_history(lab, pg_url, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    # host 1 lists both endpoints and one that is down; host 2 its own; both at once, one store
    p1 = devprof_proc("run", "--device", "all", "--adb-server", f"{lab['a']},{dead}", *TINY, "--db", pg_url)
    p2 = devprof_proc("run", "--device", "all", "--adb-server", lab["b"], *TINY, "--db", pg_url)
    (out1, err1), (out2, err2) = p1.communicate(timeout=600), p2.communicate(timeout=600)
    assert p1.returncode == 0, err1
    assert p2.returncode == 0, err2
    assert "Traceback" not in err1 + err2
    down = [ln for ln in err1.splitlines() if "not reachable" in ln]
    assert len(down) == 1 and down[0].startswith(f"warning: adb server at {dead} not reachable"), err1
    assert "not reachable" not in err2

    rc, out, err = devprof("list", "--json", "--db", pg_url)
    runs = json.loads(out)
    assert sorted(r["device"] for r in runs) == ["Galaxy S25 (SM-S931B)", "Pixel 9 Pro"]
    assert {r["status"] for r in runs} == {"complete"}

    rc, out, err = devprof("history", "--device", "all", "--model", MODEL, "--metric", "decode_tok_s",
                           "--workload", "real", "--context", "64", "--json", "--db", pg_url)
    assert rc == 0, err
    doc = json.loads(out)
    by_dev = {s["device"]: s for s in doc["series"]}
    assert len(by_dev) == 2
    s25 = next(s for d, s in by_dev.items() if lab["s25"].serial in d)
    pixel = next(s for d, s in by_dev.items() if lab["pixel"].serial in d)
    assert lab["a"] in s25["device"] and lab["b"] in pixel["device"]
    for s in (s25, pixel):
        (p,) = s["points"]
        assert p["n"] == 2 and p["median"] > 0 and p["ci"][0] <= p["median"] <= p["ci"][1]
        assert p["devprof_version"] != "?" and p["runtime"] == "reference"

    html = tmp_path / "history.html"
    rc, out, err = devprof("history", "--device", "s25", "--model", MODEL, "--db", pg_url, "--html", str(html))
    assert rc == 0, err
    assert "Galaxy S25" in out and "Pixel" not in out
    page = html.read_text()
    assert "Plotly" in page and s25["points"][0]["run_id"] in page


def test_one_run_takes_every_phone_of_every_endpoint_in_parallel(lab, pg_url):
    rc, out, err = devprof("run", "--device", "all", "--adb-server", f"{lab['a']},{lab['b']}", *TINY,
                           "--db", pg_url, timeout=600)
    assert rc == 0, err
    assert "2 run(s) finished" in out
    rc, out, err = devprof("history", "--device", "all", "--model", MODEL, "--db", pg_url)
    assert rc == 0, err
    assert f"Galaxy S25 (SM-S931B) [{lab['s25'].serial}] @ adb {lab['a']}" in out
    assert f"Pixel 9 Pro [{lab['pixel'].serial}] @ adb {lab['b']}" in out


def test_lab_file_hosts_and_phones(lab, tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text(f'[hosts.bench1]\nadb = "{lab["a"]}"\nphones = ["{lab["s25"].serial}", "R5CYGONE"]\n\n'
                 f'[hosts.bench2]\nadb = "{lab["b"]}"\n')
    rc, out, err = devprof("devices", "--json", "--lab", str(f))
    assert rc == 0, err
    assert {lab["s25"].serial, lab["pixel"].serial} <= {d["serial"] for d in json.loads(out)}
    rc, out, err = devprof("run", "--device", "all", "--lab", str(f), *TINY, "--dry-run",
                           "--db", str(tmp_path / "s.db"))
    assert rc == 0, err
    assert lab["s25"].serial in out + err and lab["pixel"].serial in out + err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert warn == [f"warning: lab host bench1 ({lab['a']}): phone R5CYGONE not attached: skipped"]
    # bench1 lists only the S25 and a missing phone; bench2 lists none: all of its phones
    f.write_text(f'[hosts.bench1]\nadb = "{lab["a"]}"\nphones = ["R5CYGONE"]\n')
    rc, out, err = devprof("run", "--device", "all", "--lab", str(f), *TINY, "--dry-run", "--db", str(tmp_path / "s.db"))
    assert rc == 1 and "no phone of the lab file" in err
    f.write_text('[hosts.x]\nadb = "nonsense"\n')
    rc, _, err = devprof("devices", "--lab", str(f))
    assert rc == 2 and "adb must be HOST:PORT" in err
