"""What a user sees first: literal text (no rich markup eating brackets), no source locations in the
log, exit code 2 for every kind of bad input, tables that keep ids and names whole at 80 columns,
and the estimate `devprof run` prints before a long plan.

Through the CLI (CliRunner, or a subprocess where the real terminal path matters).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support import factories as F
from devprof.cli import cli
from devprof.store import Store

SMALL = ["--context", "128", "--new-tokens", "4", "--warmup", "0", "--reps", "1"]
SOURCE_LOCATION = re.compile(r"\b\w+\.py:\d+")


def invoke(*args: str, **kw):
    return CliRunner().invoke(cli, list(args), **kw)


def _store_with_run(path: Path) -> str:
    meta, reps = F.make_run(reps=2, warmup=0, workloads=("templated", "real"), contexts=(512,))
    with Store(path) as s:
        run_id = s.create_run(meta)
        for r in reps:
            s.add_repetition(run_id, r)
        s.finish_run(run_id, "complete")
    return run_id


# ---- 3: text reaches the terminal literally ---------------------------------------------------------
def test_install_hint_keeps_its_brackets_and_the_log_has_no_source_locations(tmp_path):
    """Without the llamacpp extra's gguf module, the hint is `pip install -e '.[llamacpp]'`, brackets and all."""
    code = "import sys; sys.modules['gguf'] = None; from devprof.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "run", "--runtime", "llamacpp", "--baseline", "none",
                           "--workload", "templated", *SMALL, "--db", str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "pip install -e '.[llamacpp]'" in out, out
    assert "writing the MobileMoE-S-mini GGUF" in out  # a log line was written ...
    assert not SOURCE_LOCATION.search(out), out  # ... without cli.py:NNN at its end
    assert "Traceback" not in out


def test_user_text_with_brackets_is_shown_literally(tmp_path):
    db = tmp_path / "[lab]" / "s.db"
    _store_with_run(db)
    res = invoke("show", "run[1]", "--db", str(db))
    assert res.exit_code == 2 and "no run 'run[1]'" in res.output, res.output
    res = invoke("list", "--db", str(db), env={"COLUMNS": "200"})
    assert res.exit_code == 0 and f"runs in {db}" in res.output, res.output
    res = invoke("show", "latest", "--db", str(tmp_path / "[none]" / "s.db"))
    assert res.exit_code == 2 and "[none]" in res.output


# ---- 6: exit code 2 for bad input ------------------------------------------------------------------
@pytest.fixture
def private_adb(adb_env):
    """A private adb server, so resolving a phone never starts (or asks) the user's own."""


@pytest.mark.parametrize("args,message", [
    (["--device", "s26"], "no device matches 's26'"),
    (["--device", "nokia3310"], "no device matches 'nokia3310'"),
])
def test_unknown_device_is_bad_input(private_adb, tmp_path, args, message):
    res = invoke("run", *args, *SMALL, "--db", str(tmp_path / "s.db"))
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--model", "gpt5"], "unknown model 'gpt5'"),
    (["--baseline", "llama"], "unknown model 'llama'"),
    (["--workload", "chat"], "unknown workload"),
    (["--context", "abc"], "--context must be a number"),
    (["--context", "0"], "--context must be positive"),
    (["--context", "16384"], "larger than MobileMoE-S-mini allows"),
    (["--runtime", "tflite"], "unknown runtime 'tflite'"),
    (["--weights", "q4_0"], "the reference runtime runs fp32 weights only"),
    (["--weights", "q5_1"], "Invalid value for '--weights'"),
    (["--runtime", "executorch"], "--runtime executorch runs a prebuilt model file"),
    (["--cpu-mask", "zz"], "--cpu-mask must be a non-zero hex CPU mask"),
    (["--cpu-mask", "0"], "--cpu-mask must be a non-zero hex CPU mask"),
    (["--binary", "nosuch"], "no registered binary named 'nosuch'"),
    (["--reps", "0"], "--reps must be between 1 and 1000"),
    (["--model-bundle", "/nonexistent/m.pte"], "does not exist"),
    (["--baseline", "none", "--baseline-bundle", __file__], "--baseline-bundle needs a --baseline model"),
    (["--devices-file", "/nonexistent/devices.toml", "--device", "s25"], "devices file not found"),
    (["--no-such-option"], "No such option"),
    (["--threads", "-5"], "Invalid value for '--threads'"),
    (["--out", __file__ + "/r.html"], "is a file, not a folder"),
])
def test_bad_run_input_exits_2_and_stores_nothing(private_adb, tmp_path, args, message):
    db = tmp_path / "s.db"
    res = invoke("run", *args, "--db", str(db))
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    if not _click_parser_error(message):  # click's own usage text under CliRunner; main() makes it one line
        assert len(res.output.strip().splitlines()) == 1, res.output
    if db.exists():
        with Store(db) as s:
            assert s.list_runs() == []


def _click_parser_error(message: str) -> bool:
    return message.startswith(("Invalid value", "No such option", "does not exist"))


def test_parser_errors_are_one_line_through_the_entry_point():
    for args in (["run", "--weights", "q5_1"], ["run", "--no-such-option"], ["show", "a", "b"]):
        proc = subprocess.run([sys.executable, "-m", "devprof", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_bad_paths_and_references_exit_2(tmp_path):
    db = tmp_path / "s.db"
    run_id = _store_with_run(db)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["run", "--db", str(afile / "devprof.db")], "cannot open the result store"),
        (["show", "nosuch", "--db", str(db)], "no run 'nosuch'"),
        (["show", "latest~x", "--db", str(db)], "bad run reference"),
        (["show", "latest~5", "--db", str(db)], "holds only 1 run"),
        (["show", "--db", str(tmp_path / "none.db")], "no results store"),
        (["report", run_id, "--out", str(afile / "r.html"), "--db", str(db)], "(the report)"),
        (["report", run_id, "--out", str(tmp_path), "--db", str(db)], "is a directory"),
        (["export", run_id, "--out", str(tmp_path), "--db", str(db)], "it is a folder"),
        (["export", run_id, "--out", str(afile / "x.csv"), "--db", str(db)], "cannot write to"),
        (["export", run_id, "--format", "perfetto", "--out", str(afile), "--db", str(db)], "it is a file"),
        (["export", run_id, "--format", "xls", "--db", str(db)], "Invalid value for '--format'"),
        (["compare", "nosuch", "--db", str(db)], "no run 'nosuch'"),
        (["compare", run_id, "--html", str(afile / "c.html"), "--db", str(db)], "cannot write to"),
        (["diff", run_id, "nosuch", "--db", str(db)], "no run 'nosuch'"),
        (["diff", run_id, run_id, "--db", str(db), "--db-b", str(tmp_path / "none.db")], "no results store"),
        (["diff", run_id, run_id, "--threshold", "-1", "--db", str(db)], "Invalid value for '--threshold'"),
        (["models", "--context", "0"], "Invalid value for '--context'"),
        (["bench", "--context", "10000000", "--no-llamacpp"], "is larger than"),
        (["bins", "add", str(tmp_path / "missing"), "--runtime", "reference", "--platform", "host"], "does not exist"),
    ]
    for args, message in cases:
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)


# ---- 4: a run that measured nothing ------------------------------------------------------------------
def test_ctrl_c_before_the_first_repetition_stores_a_failed_run(tmp_path):
    import signal
    import sqlite3
    import time

    script = tmp_path / "sleepy.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    script.chmod(0o755)
    env = {**os.environ, "DEVPROF_BINS_MANIFEST": str(tmp_path / "manifest.toml")}
    add = subprocess.run([sys.executable, "-m", "devprof", "bins", "add", str(script), "--runtime", "reference",
                          "--platform", "host", "--abi", "any", "--name", "sleepy"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert add.returncode == 0, add.stderr
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-m", "devprof", "run", *SMALL, "--binary", "sleepy", "--db", str(db)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not subprocess.run(["pgrep", "-f", str(script)],
                                                             capture_output=True, text=True).stdout.strip():
        time.sleep(0.1)  # until the runtime (the shell script) runs under devprof
    assert time.monotonic() < deadline, "the runtime never started"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    status, note = sqlite3.connect(db).execute("SELECT status, note FROM runs").fetchone()
    assert status == "failed" and "Ctrl-C" in note and "before its first measured repetition" in note
    res = invoke("show", "latest", "--db", str(db))
    assert res.exit_code == 2 and "has a measured repetition yet" in res.output


# ---- 5: tables that fit 80 and 120 columns, ids and names whole -------------------------------------
def _lines_fit(output: str, width: int) -> None:
    too_wide = [ln for ln in output.splitlines() if len(ln) > width]
    assert not too_wide, too_wide
    assert "…" not in output, output


@pytest.mark.parametrize("columns", [80, 120])
def test_list_keeps_run_ids_and_model_names_whole(tmp_path, columns):
    db = tmp_path / "s.db"
    ids = []
    with Store(db) as s:
        for seed, status in ((0, "complete"), (1, "interrupted")):
            meta, reps = F.make_run(seed=seed, reps=1, warmup=0, workloads=("templated", "real", "real:code"),
                                    contexts=(1024, 8192), created=f"2026-09-2{seed + 1}T14:05:07+00:00")
            run_id = s.create_run(meta)
            for r in reps:
                s.add_repetition(run_id, r)
            s.finish_run(run_id, status)
            ids.append(run_id)
    res = invoke("list", "--db", str(db), env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    _lines_fit(res.output, columns)
    for run_id in ids:
        assert run_id in res.output
    assert F.MOE in res.output and F.DENSE in res.output and "interrupted" in res.output
    if columns == 80:
        assert "not shown at 80 columns: created" in res.output


@pytest.mark.parametrize("columns", [80, 120])
def test_models_keeps_names_whole(columns):
    from devprof.catalog import MODELS

    res = invoke("models", env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    _lines_fit(res.output, columns)
    for name in MODELS:
        assert re.search(rf"^{re.escape(name)}\s", res.output, re.M), name
    for head in ("kind", "total", "active", "INT4"):
        assert head in res.output


@pytest.mark.parametrize("columns", [80, 120])
def test_show_devices_and_bins_fit(tmp_path, columns, monkeypatch):
    env = {"COLUMNS": str(columns)}
    db = tmp_path / "s.db"
    run_id = _store_with_run(db)
    res = invoke("show", "--db", str(db), env=env)
    assert res.exit_code == 0 and run_id in res.output
    assert "MobileMoE-S-mini" in res.output and "MobileLLM-Pro-mini" in res.output
    _lines_fit(res.output, columns)
    res = invoke("compare", "--db", str(db), env=env)
    assert res.exit_code == 0 and run_id in res.output and "effective" in res.output, res.output
    _lines_fit(res.output, columns)
    res = invoke("diff", run_id, run_id, "--db", str(db), env=env)
    assert res.exit_code == 0 and "prefill tok/s" in res.output
    assert not [ln for ln in res.output.splitlines() if len(ln) > columns]
    res = invoke("devices", env=env)
    assert res.exit_code == 0 and re.search(r"^local\s", res.output, re.M), res.output
    _lines_fit(res.output, columns)
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    monkeypatch.setenv("DEVPROF_BINS_MANIFEST", str(tmp_path / "manifest.toml"))
    name = "a-rather-long-binary-name-for-the-s25-llamacpp-build"
    assert invoke("bins", "add", str(script), "--runtime", "llamacpp", "--platform", "android", "--name", name).exit_code == 0
    res = invoke("bins", "list", env=env)
    assert res.exit_code == 0 and name in res.output, res.output
    _lines_fit(res.output, columns)
