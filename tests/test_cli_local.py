"""The CLI on the embedded default device (this host), end to end, and its errors.

Real subprocesses, real /proc sampling, real SQLite. Each runtime process imports torch, so the
runs here are small (128-token prompts, a few new tokens, one repetition where that suffices).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from devprof.cli import cli

SMALL = ["--context", "128", "--new-tokens", "4", "--warmup", "0"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One default-shaped run (both minis, templated and real) at a small context, 2 reps."""
    db = tmp_path_factory.mktemp("local") / "devprof.db"
    res = invoke("run", *SMALL, "--reps", "2", "--db", str(db))
    assert res.exit_code == 0, res.output
    return db, res.output


def test_run_reports_and_shows_json(local_run):
    db, output = local_run
    assert "report:" in output
    doc = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    assert doc["run"]["device"]["kind"] == "local" and doc["run"]["status"] == "complete"
    rows = {(r["model"], r["workload"]): r for r in doc["results"]}
    assert set(rows) == {(m, w) for m in ("mobilemoe-s-mini", "mobilellm-pro-mini") for w in ("templated", "real")}
    for (model, _), r in rows.items():
        assert r["n"] == 2
        for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "peak_rss_file_mb", "peak_rss_anon_mb"):
            assert r[key] > 0, key
        assert (r["distinct_experts"] is None) == (model == "mobilellm-pro-mini")
    # routing: a real prompt spreads over more experts than a repeated template
    assert rows[("mobilemoe-s-mini", "real")]["distinct_experts"] > rows[("mobilemoe-s-mini", "templated")]["distinct_experts"]
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from samples").fetchone()[0] > 8
    assert {r[0] for r in con.execute("select cache_state from repetitions")} == {"cold"}


def test_report_list_and_artifacts(local_run, tmp_path):
    db, _ = local_run
    out = tmp_path / "r.html"
    res = invoke("report", "latest", "--out", str(out), "--db", str(db))
    assert res.exit_code == 0 and out.exists()
    html = out.read_text()
    assert "MobileMoE-S-mini" in html and "VmHWM" in html and "cold" in html
    runs = json.loads(invoke("list", "--json", "--db", str(db)).output)
    assert len(runs) >= 1 and runs[0]["status"] == "complete"
    run_dir = db.parent / "runs" / runs[0]["run_id"]
    assert list(run_dir.glob("mobilemoe-s-mini/real-c128/rep0/routing.npz"))
    assert list(run_dir.glob("*/templated-c128/rep0/stdout.txt"))


def test_models_and_devices():
    doc = json.loads(invoke("models", "--json").output)
    names = {m["name"] for m in doc}
    assert {"mobilemoe-s", "mobilemoe-m", "mobilemoe-l", "mobilellm-pro", "olmoe-1b-7b",
            "mobilemoe-s-mini", "mobilellm-pro-mini"} <= names
    table = invoke("models").output
    assert "MobileMoE" not in table or "mobilemoe-s-mini" in table
    devs = json.loads(invoke("devices", "--json").output)
    assert devs[0]["serial"] == "local" and devs[0]["memory_metric"] == "VmHWM"


@pytest.mark.parametrize("args,message,code", [
    (["--model", "gpt5"], "unknown model 'gpt5'", 2),
    (["--workload", "chat"], "unknown workload", 2),
    (["--context", "16384"], "larger than MobileMoE-S-mini allows (8192 tokens)", 2),
    (["--context", "abc"], "--context must be a number", 2),
    (["--device", "nokia3310"], "no device matches 'nokia3310'", 2),
    (["--runtime", "tflite"], "unknown runtime 'tflite'", 2),
    (["--weights", "q4_0"], "the reference runtime runs fp32 weights only", 2),
])
def test_bad_input_is_one_line(args, message, code, tmp_path):
    res = invoke("run", *args, "--db", str(tmp_path / "s.db"))
    assert res.exit_code == code, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_unwritable_db_and_missing_run(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a regular file
            bad = tmp_path / "file"
            bad.write_text("x")
            target = bad / "devprof.db"
        else:
            target = ro / "devprof.db"
        res = invoke("run", *SMALL, "--db", str(target))
        assert res.exit_code == 2 and str(target) in res.output and "Traceback" not in res.output  # a bad --db path
    finally:
        ro.chmod(0o700)
    res = invoke("show", "latest", "--db", str(tmp_path / "none.db"))
    assert res.exit_code == 2 and "no results store" in res.output


def _bins(tmp_path: Path, name: str, body: str, monkeypatch) -> None:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    manifest = tmp_path / "manifest.toml"
    monkeypatch.setenv("DEVPROF_BINS_MANIFEST", str(manifest))
    res = invoke("bins", "add", str(script), "--runtime", "reference", "--platform", "host", "--abi", "any",
                 "--name", name)
    assert res.exit_code == 0, res.output


def test_runtime_that_fails_or_prints_nothing(tmp_path, monkeypatch):
    _bins(tmp_path, "crash", 'echo "segfault in expert 7" >&2; exit 3\n', monkeypatch)
    res = invoke("run", *SMALL, "--reps", "1", "--binary", "crash", "--db", str(tmp_path / "s.db"))
    assert res.exit_code == 1 and "runtime exited with code 3" in res.output and "segfault in expert 7" in res.output
    _bins(tmp_path, "mute", "exit 0\n", monkeypatch)
    res = invoke("run", *SMALL, "--reps", "1", "--binary", "mute", "--db", str(tmp_path / "s.db"))
    assert res.exit_code == 1 and "no usable stats" in res.output and "PyTorchObserver" in res.output
    runs = json.loads(invoke("list", "--json", "--db", str(tmp_path / "s.db")).output)
    assert [r["status"] for r in runs] == ["failed", "failed"]


def test_a_run_that_measured_nothing_is_never_latest(local_run, tmp_path, monkeypatch):
    """A failed run newer than a complete one: `latest` is still the complete one; the failed one, named
    by its id, is a one-line error (exit 2) for show and report, never an empty page."""
    db = tmp_path / "s.db"
    src = sqlite3.connect(local_run[0])
    with sqlite3.connect(db) as dst:
        src.backup(dst)
    src.close()
    good = json.loads(invoke("list", "--json", "--db", str(db)).output)[0]["run_id"]
    _bins(tmp_path, "crash", 'echo "segfault in expert 7" >&2; exit 3\n', monkeypatch)
    res = invoke("run", *SMALL, "--reps", "1", "--binary", "crash", "--db", str(db))
    assert res.exit_code == 1
    runs = json.loads(invoke("list", "--json", "--db", str(db)).output)
    bad = runs[0]["run_id"]
    assert bad != good and runs[0]["status"] == "failed"
    for cmd in (["show", "--json"], ["show"], ["report", "--out", str(tmp_path / "r.html")], ["compare", "--json"],
                ["export", "--format", "json"]):
        res = invoke(*cmd, "--db", str(db))  # RUN defaults to latest
        assert res.exit_code == 0, (cmd, res.output)
        assert bad not in res.output
    assert json.loads(invoke("show", "--json", "--db", str(db)).output)["run"]["run_id"] == good
    assert invoke("diff", "latest", good, "--db", str(db)).exit_code == 0
    for args in (["show", bad, "--json"], ["show", bad], ["report", bad, "--out", str(tmp_path / "bad.html")]):
        res = invoke(*args, "--db", str(db))
        assert res.exit_code == 2, res.output
        assert f"run {bad} has no measured repetition (failed: runtime exited with code 3" in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.html").exists()


def test_changed_binary_is_refused(tmp_path, monkeypatch):
    _bins(tmp_path, "tool", "exit 0\n", monkeypatch)
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho changed\n")
    res = invoke("run", *SMALL, "--binary", "tool", "--db", str(tmp_path / "s.db"))
    assert res.exit_code == 1 and "changed since it was registered" in res.output


def test_llamacpp_runtime_q4_end_to_end(tmp_path):
    db = tmp_path / "s.db"
    res = invoke("run", "--runtime", "llamacpp", "--weights", "q4_0", *SMALL, "--reps", "1",
                 "--workload", "real", "--db", str(db))
    assert res.exit_code == 0, res.output
    doc = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
    assert doc["run"]["runtime"] == "llamacpp" and doc["run"]["settings"]["weights"] == "q4_0"
    rows = {r["model"]: r for r in doc["results"]}
    assert rows["mobilemoe-s-mini"]["decode_tok_s"] > 0 and rows["mobilellm-pro-mini"]["prefill_tok_s"] > 0


def test_runtime_arg_reaches_llamacpp(tmp_path):
    """--runtime-arg=--no-repack: llama.cpp keeps no CPU repack copy of the Q4_0 weights, so the
    process's anonymous memory drops by about the GGUF's size; the argument is stored with the run."""
    from devprof.catalog import get_model
    from devprof.runtimes.llamacpp.gguf_export import build_gguf

    db = tmp_path / "s.db"
    anon = {}
    for extra in ([], ["--runtime-arg=--no-repack"]):
        res = invoke("run", "--runtime", "llamacpp", "--weights", "q4_0", *SMALL, "--reps", "1", "--workload", "real",
                     "--baseline", "none", "--db", str(db), *extra)
        assert res.exit_code == 0, res.output
        doc = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
        assert doc["run"]["settings"].get("runtime_args") == (["--no-repack"] if extra else None)
        anon[bool(extra)] = doc["results"][0]["peak_rss_anon_mb"]
    gguf_mb = build_gguf(get_model("mobilemoe-s-mini"), seed=0, weights="q4_0").stat().st_size / 1e6
    assert anon[False] - anon[True] > 0.5 * gguf_mb, (anon, gguf_mb)


def test_runtime_arg_the_runtime_refuses_is_one_line(tmp_path):
    res = invoke("run", *SMALL, "--reps", "1", "--workload", "real", "--baseline", "none",
                 "--db", str(tmp_path / "s.db"), "--runtime-arg=--bogus")
    assert res.exit_code != 0
    assert "unrecognized arguments: --bogus" in res.output and "Traceback" not in res.output
