"""devprof's own arm64 llama.cpp runner on the (fake) S25: the real adb server, the suite's phone
daemon, which runs aarch64 ELF files under qemu-aarch64-static, and devprof's CLI.

`devprof run --device s25` (no --runtime: the native runner is the phones' default) pushes the
committed arm64 runner and the Q4_0 GGUF over adb and gets a stored, reported run back from the real
binary. qemu runs it ~50x slower than native: the minis only, a 128-token prompt, 1 thread.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from devprof.cli import cli
from tests.support.adb_env import FakePhone

REPO = Path(__file__).resolve().parent.parent


def need_qemu() -> None:
    if not shutil.which("qemu-aarch64-static"):
        pytest.fail("qemu-aarch64-static is not installed: run scripts/test-setup (Debian: qemu-user-static)",
                    pytrace=False)


@pytest.fixture
def env(adb_env):
    return adb_env


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_daemon_runs_arm64_elf_under_qemu_and_leaves_file_tools_alone(tmp_path):
    """tests/support/adbd.py's command rewriting: an aarch64 ELF in command position (or behind a
    launcher) gets qemu-aarch64-static in front; as a file tool's argument it does not."""
    from tests.support.adbd import PathMap

    need_qemu()
    sandbox = tmp_path / "sb"
    (sandbox / "data/local/tmp").mkdir(parents=True)
    arm = REPO / "device_bins/android/arm64-v8a/devprof-llamarunner-v82"
    dst = sandbox / "data/local/tmp/runner"
    shutil.copyfile(arm, dst)
    dst.chmod(0o755)
    (sandbox / "data/local/tmp/script.sh").write_text("#!/bin/sh\necho hi\n")
    pm = PathMap(sandbox, sysfs=False)
    qemu = shutil.which("qemu-aarch64-static")
    cmd = pm.command("cd /data/local/tmp && sh tools/sampler.sh OUT 0.01 taskset f0 /data/local/tmp/runner -h")
    assert f"taskset f0 {qemu} {dst} -h" in cmd
    assert pm.command("/data/local/tmp/runner --help") == f"{qemu} {dst} --help"
    assert pm.command("sha256sum /data/local/tmp/runner") == f"sha256sum {dst}"
    assert pm.command("chmod 755 /data/local/tmp/runner; /data/local/tmp/runner") == f"chmod 755 {dst}; {qemu} {dst}"
    assert pm.command("sh /data/local/tmp/script.sh") == f"sh {sandbox}/data/local/tmp/script.sh"
    # and it really runs: the runner's own one-line error for a missing model
    out = subprocess.run(["/bin/sh", "-c", pm.command("/data/local/tmp/runner -m /data/local/tmp/none.gguf "
                                                     "--prompt-ids /data/local/tmp/x -n 1")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"devprof-llamarunner: error: model file {sandbox}/data/local/tmp/none.gguf: not found"


def test_s25_default_runs_the_committed_arm64_runner(adb, env, tmp_path):
    """No --runtime, no --weights: on a phone devprof runs its own native runner at Q4_0."""
    need_qemu()
    from devprof import bins

    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        res = invoke("run", "--device", "s25", "--context", "128", "--new-tokens", "8", "--reps", "2",
                     "--warmup", "0", "--threads", "1", "--workload", "real", "--sample-ms", "20", "--db", str(db))
        assert res.exit_code == 0, res.output
        shown = json.loads(invoke("show", "latest", "--json", "--db", str(db)).output)
        run = shown["run"]
        assert run["status"] == "complete" and run["runtime"] == "llamacpp"
        assert run["settings"]["weights"] == "q4_0"
        # the committed arm64 runner (the best variant: this phone's /proc/cpuinfo is the host's,
        # which lists no arm64 features, so devprof assumes a modern core) went over adb
        info = run["settings"]["binary_info"]
        entry = next(b for b in bins.load() if b.name == info["name"])
        assert entry.abi == "arm64-v8a" and info["sha256"] == entry.sha256 and info["cpu_features"]
        pushed = [p for p in phone.sandbox.rglob(Path(entry.path).name) if p.is_file()]
        assert pushed and hashlib.sha256(pushed[0].read_bytes()).hexdigest() == entry.sha256
        assert pushed[0].read_bytes()[18] == 183  # EM_AARCH64: qemu ran it
        rows = {r["model"]: r for r in shown["results"]}
        assert set(rows) == {"mobilemoe-s-mini", "mobilellm-pro-mini"}
        for r in rows.values():
            assert r["n"] == 2 and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_rss_mb"] > 1
        assert rows["mobilemoe-s-mini"]["distinct_experts"] > 0
        con = sqlite3.connect(db)
        reps = con.execute("select model, cache_state, cache_note, result_json, peak_rss_kb from repetitions "
                           "where warmup = 0").fetchall()
        assert len(reps) == 4
        for model, state, note, result_json, peak in reps:
            assert state == "cold" and "fadvise" in note  # no root needed
            result = json.loads(result_json)
            ex = result["extra"]
            # 8 sampled tokens: 8 timestamps, 7 decode steps between them
            assert len(ex["token_stamp_ms"]) == 8 and len(ex["token_ms"]) == 7 and ex["threads"] == 1
            assert [x["stage"] for x in ex["residency"]] == ["before_load", "after_prefill", "exit"]
            # the stored peak is at least the runner's own VmHWM at exit
            assert peak >= ex["runner_status_kb"]["VmHWM"] > 0
        html = tmp_path / "r.html"
        rep = invoke("report", "latest", "--db", str(db), "--out", str(html))
        assert rep.exit_code == 0, rep.output
        text = html.read_text()
        # the setup names the runner binary, its sha256, ABI and CPU features
        for shown_bit in (entry.name, entry.sha256, "arm64-v8a", entry.cpu_features.split(",")[0]):
            assert shown_bit in text, shown_bit
        # per-token latency percentiles from the runner's own timestamps
        for r in rows.values():
            itl = r["inter_token_ms"]
            assert itl is not None and 0 < itl["p50"] <= itl["p90"] <= itl["p99"], itl


def test_arm64_variants_need_what_the_manifest_says(tmp_path):
    """On a Cortex-A53 (armv8.0, no dotprod/i8mm: qemu -cpu cortex-a53) the baseline runner works
    and the v8.2 one dies with SIGILL: why devprof picks the variant from /proc/cpuinfo."""
    need_qemu()
    from devprof import bins

    ids = tmp_path / "p.ids"
    ids.write_text("1\n2\n3\n4\n")
    entries = {b.variant: b for b in bins.load() if b.abi == "arm64-v8a" and b.variant}
    base, best = entries["arm64-v8.0"], entries["arm64-v8.2-dotprod-i8mm"]
    assert not {"asimddp", "i8mm"} & set(base.cpu_features.split()) and {"asimddp", "i8mm"} <= set(best.cpu_features.split())
    assert bins.select("llamacpp", "android", "arm64-v8a", cpu_flags={"fp", "asimd", "evtstrm", "crc32"}).name == base.name
    a53 = ["qemu-aarch64-static", "-cpu", "cortex-a53"]
    import dataclasses

    from devprof.catalog import get_model
    from devprof.runtimes.llamacpp.gguf_export import build_gguf

    model = build_gguf(dataclasses.replace(get_model("mobilellm-pro-mini"), n_layers=2, name="llamacpp-test-dense",
                                           sliding_window=16, global_layers=(1,)), seed=0, weights="q4_0")
    ok = subprocess.run([*a53, str(base.verify()), "-m", str(model), "--prompt-ids", str(ids), "-n", "2", "-t", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-500:]
    assert len(ok.stdout.split()) == 2
    bad = subprocess.run([*a53, str(best.verify()), "-m", str(model), "--prompt-ids", str(ids), "-n", "2", "-t", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode in (-4, 132), (bad.returncode, bad.stderr[-300:])  # SIGILL


def test_a_plan_bigger_than_the_phones_free_ram_is_refused_before_any_push(adb, env, tmp_path):
    """The phone's /proc/meminfo MemAvailable (the fake S25's is this host's) against the plan's weights
    plus KV cache: a 1 TiB model file (sparse) cannot fit; refused as bad input, nothing pushed or stored."""
    from devprof.devices.android import parse_meminfo_available

    big = tmp_path / "huge.gguf"
    with open(big, "wb") as f:
        f.truncate(2**40)
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        res = invoke("run", "--device", "s25", "--model-bundle", str(big), "--baseline", "none", "--context", "64",
                     "--new-tokens", "4", "--reps", "2", "--warmup", "0", "--db", str(db))
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert "will not fit in" in line and "MemAvailable" in line and "mobilemoe-s-mini 1,048,576 MiB" in line
        assert not [p for p in phone.sandbox.rglob("huge.gguf")]  # refused before the push
    if db.exists():
        con = sqlite3.connect(db)
        assert con.execute("select count(*) from runs").fetchone()[0] == 0
    assert parse_meminfo_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n") == 2 * 2**20
    assert parse_meminfo_available("MemTotal: 100 kB\n") is None


def test_memory_need_is_weights_plus_kv_at_the_largest_context():
    from devprof.catalog import get_model
    from devprof.errors import UsageError
    from devprof.session import Plan, check_memory, memory_need

    moe = get_model("mobilemoe-s-mini")
    plan = Plan(models=[moe], workloads=["real"], contexts=[128, 1024], new_tokens=8, runtime="llamacpp",
                weights="q4_0")
    need = memory_need(plan)["mobilemoe-s-mini"]
    assert need == moe.weight_bytes("int4") + moe.kv_cache_bytes(1032, 2)  # f16 K/V in llama.cpp
    assert check_memory(plan, need * 2, "phone") is None
    warn = check_memory(plan, int(need / 0.8), "phone")
    assert warn.startswith("warning: mobilemoe-s-mini needs at least") and "\n" not in warn
    with pytest.raises(UsageError, match="will not fit in phone's free RAM"):
        check_memory(plan, need - 1, "phone")
    assert check_memory(plan, None, "phone") is None  # unknown: no claim
