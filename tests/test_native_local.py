"""`devprof run --device local --runtime llamacpp`: the committed host build of devprof's native
runner (device_bins/host/x86_64/), end to end through the CLI, at Q4_0 and Q8_0."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from devprof import bins
from devprof.cli import cli


@pytest.mark.parametrize("weights", ["q4_0", "q8_0"])
def test_local_llamacpp_runs_the_host_build_of_the_runner(tmp_path, weights):
    pytest.importorskip("gguf")
    db = tmp_path / "s.db"
    res = CliRunner().invoke(cli, ["run", "--device", "local", "--runtime", "llamacpp", "--weights", weights,
                                   "--context", "128", "--new-tokens", "6", "--warmup", "0", "--reps", "1",
                                   "--workload", "real", "--threads", "1", "--db", str(db)])
    assert res.exit_code == 0, res.output
    doc = json.loads(CliRunner().invoke(cli, ["show", "latest", "--json", "--db", str(db)]).output)
    info = doc["run"]["settings"]["binary_info"]
    entry = next(b for b in bins.load() if b.name == info["name"])
    assert entry.platform == "host" and entry.abi == "x86_64" and info["sha256"] == entry.sha256
    rows = {r["model"]: r for r in doc["results"]}
    assert rows["mobilemoe-s-mini"]["distinct_experts"] > 0
    for r in rows.values():
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0
        itl = r["inter_token_ms"]  # p50/p90/p99 of the runner's per-token times reach the store and the report
        assert itl is not None and itl["n"] == 5 and 0 < itl["p50"] <= itl["p90"] <= itl["p99"], itl
    shown = CliRunner().invoke(cli, ["show", "latest", "--db", str(db)], terminal_width=200).output
    assert "Inter-token latency" in shown and "p99" in shown
    html = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", "latest", "--db", str(db), "--out", str(html)]).exit_code == 0
    assert "p99 ms" in html.read_text()
    con = sqlite3.connect(db)
    for state, note, result_json, peak in con.execute(
            "select cache_state, cache_note, result_json, peak_rss_kb from repetitions where warmup = 0"):
        ex = json.loads(result_json)["extra"]
        assert state == "cold" and "fadvise" in note and "resident before load" in note
        # 6 sampled tokens: 6 timestamps; the 5 decode steps between them are the inter-token latencies
        assert len(ex["token_stamp_ms"]) == 6 and len(ex["token_ms"]) == 5 and ex["threads"] == 1
        assert ex["token_ms"] == [round(b - a, 3) for a, b in zip(ex["token_stamp_ms"], ex["token_stamp_ms"][1:])]
        assert peak >= ex["runner_status_kb"]["VmHWM"] > 0  # never below the runner's own peak


def test_the_host_default_threads_never_exceed_the_usable_idle_cores(tmp_path):
    """No --threads: devprof gives the runner the idle usable cores (at least 1), records why in the
    settings, and each repetition's n_threads is what the runner says it used."""
    import os

    from devprof.session import host_default_threads

    n, why = host_default_threads("1")  # --cpu-mask 1: one usable core, whatever the load
    assert n == 1 and "1 usable" in why
    n, why = host_default_threads()
    assert 1 <= n <= len(os.sched_getaffinity(0)) and "idle" in why
    db = tmp_path / "s.db"
    res = CliRunner().invoke(cli, ["run", "--device", "local", "--runtime", "llamacpp", "--context", "64",
                                   "--new-tokens", "4", "--warmup", "0", "--reps", "1", "--baseline", "none",
                                   "--workload", "templated", "--db", str(db)])
    assert res.exit_code == 0, res.output
    con = sqlite3.connect(db)
    settings = json.loads(con.execute("select meta_json from runs").fetchone()[0])["settings"]
    chosen = int(settings["threads_default"].split()[0])
    assert 1 <= chosen <= len(os.sched_getaffinity(0)) and settings["threads"] == -1
    for (result_json,) in con.execute("select result_json from repetitions where warmup = 0"):
        assert json.loads(result_json)["extra"]["n_threads"] == chosen
    html = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", "latest", "--db", str(db), "--out", str(html)]).exit_code == 0
    assert "devprof&#x27;s default on this host" in html.read_text() or "devprof's default on this host" in html.read_text()
