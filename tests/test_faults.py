"""The fault suite: every fault a phone lab meets, injected for real, ends cleanly.

One test per fault of issue 11 and per fault that already held (docs/faults.md lists them all).
Each asserts what a user sees and keeps: one error line on stderr (never a traceback), the exit
code, the run's stored status, and that every repetition that finished is still in the store.

Faults are real: the runtime process is SIGKILLed / SIGSEGVs / hangs on this host, devprof gets
SIGTERM and SIGINT, the phone is the suite's adb daemon (tests/support/adbd.py) behind the real adb server,
unplugged (SIGKILL), frozen (SIGSTOP), nearly full (a real small tmpfs as its /data/local/tmp,
which needs root, as CI has), without the shell protocol v2, and the report goes onto a full disk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.adb_env import AdbServer, FakePhone

# Small, fast runs: one model, one workload, a 128-token prompt, 4 new tokens.
TINY = ["--runtime", "reference", "--context", "128", "--new-tokens", "4", "--warmup", "0", "--baseline", "none",
        "--workload", "templated", "--sample-ms", "5"]


# ------------------------------------------------------------------------------------------
# helpers

def start(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """`devprof ARGS` as a user runs it (its own process: signals and exit codes are real)."""
    return subprocess.Popen([sys.executable, "-m", "devprof", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def devprof(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    return finish(start(list(args), env), timeout)


def error_line(stderr: str) -> str:
    """The one error line: no traceback, exactly one line that says error."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "internal error:"))]
    assert len(lines) == 1, stderr
    assert not lines[0].startswith("internal error"), lines[0]
    if os.environ.get("DEVPROF_FAULT_LOG"):  # collect what users see, for docs/faults.md
        with open(os.environ["DEVPROF_FAULT_LOG"], "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{lines[0]}\n")
    return lines[0]


def stored(db: Path) -> tuple[str | None, int]:
    """(status of the latest run, its finished measured repetitions in the store)."""
    if not db.exists():
        return None, 0
    con = sqlite3.connect(db, timeout=10)
    try:
        row = con.execute("SELECT run_id, status FROM runs ORDER BY rowid DESC LIMIT 1").fetchone()
        if row is None:
            return None, 0
        n = con.execute("SELECT count(*) FROM repetitions WHERE run_id = ? AND status = 'ok' AND warmup = 0",
                        (row[0],)).fetchone()[0]
        return row[1], n
    finally:
        con.close()


def n_ok(db: Path) -> int:
    try:
        return stored(db)[1]
    except sqlite3.Error:
        return 0


def kept(line: str) -> int:
    """N of '... kept N finished repetition(s) ...' in an error line."""
    m = re.search(r"kept (\d+) finished repetition", line)
    assert m, line
    return int(m.group(1))


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"devprof ended before {what}: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def runtime_pids(marker: str) -> list[int]:
    """Live runtime processes (devprof.refruntime) whose command line contains ``marker``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if "devprof.refruntime" in cmd and marker in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


def register(tmp_path: Path, name: str, body: str, good: int = 0) -> dict:
    """A host runtime binary that runs devprof's reference runtime for its first ``good`` calls,
    then does ``body`` (a real fault: kill itself, hang, ...). Returns the env that selects it."""
    count = tmp_path / f"{name}.count"
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"n=$(cat '{count}' 2>/dev/null || echo 0); n=$((n + 1)); echo $n > '{count}'\n"
        f"if [ $n -le {good} ]; then exec '{sys.executable}' -m devprof.refruntime \"$@\"; fi\n"
        f"{body}\n")
    script.chmod(0o755)
    env = {"DEVPROF_BINS_MANIFEST": str(tmp_path / "manifest.toml")}
    rc, out, err = devprof("bins", "add", str(script), "--runtime", "reference", "--platform", "host",
                           "--abi", "any", "--name", name, env=env)
    assert rc == 0, err
    return env


# ------------------------------------------------------------------------------------------
# this host

def test_runtime_sigkilled_without_memory_pressure_is_not_called_oom(tmp_path):
    """A plain SIGKILL (no OOM record in the kernel's counters) is "killed by signal 9 (SIGKILL)"."""
    db = tmp_path / "s.db"
    proc = start(["run", *TINY, "--reps", "3", "--db", str(db)])
    wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
    wait_for(lambda: runtime_pids(str(tmp_path)), 120, "the second runtime process", proc)
    for pid in runtime_pids(str(tmp_path)):
        os.kill(pid, signal.SIGKILL)
    rc, _, err = finish(proc)
    line = error_line(err)
    assert rc == 1, err
    assert "killed by signal 9 (SIGKILL)" in line and "OOM" not in line and "memory" not in line.split("SIGKILL")[0]
    assert "no out-of-memory record" in line
    status, n = stored(db)
    assert status == "failed" and n == kept(line) >= 1


@pytest.mark.parametrize("sig,hint", [("SEGV", "the runtime crashed"), ("ILL", "CPU instructions this CPU lacks")])
def test_runtime_dying_by_a_signal_names_it_and_what_to_try(tmp_path, sig, hint):
    db = tmp_path / "s.db"
    env = register(tmp_path, f"crash{sig.lower()}", f"kill -{sig} $$", good=1)
    rc, _, err = devprof("run", *TINY, "--reps", "2", "--binary", f"crash{sig.lower()}", "--db", str(db), env=env)
    line = error_line(err)
    num = getattr(signal, f"SIG{sig}").value
    assert rc == 1
    assert f"killed by signal {num} (SIG{sig})" in line and hint in line
    status, n = stored(db)
    assert status == "failed" and n == kept(line) == 1


def test_llamacpp_segfault_suggests_no_repack():
    from devprof.errors import signal_hint

    assert "--runtime-arg=--no-repack" in signal_hint(signal.SIGSEGV, "llamacpp")
    assert "rebuild" in signal_hint(signal.SIGILL, "llamacpp")


def _memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if (base / "memory.oom_control").exists() else None
    return None


def test_runtime_killed_by_the_oom_killer_is_oom(tmp_path):
    """A real OOM kill: devprof and its runtime run in a memory cgroup of 1.5 GiB (cgroup v1 here;
    the code reads v2's memory.events alike), the second repetition's runtime allocates 4 GiB."""
    parent = _memory_cgroup()
    cg = parent / f"devprof-fault-{os.getpid()}" if parent else None
    try:
        cg.mkdir()
        (cg / "memory.limit_in_bytes").write_text(str(1536 * 2**20))
        if (cg / "memory.memsw.limit_in_bytes").exists():  # no swapping out of the limit either
            (cg / "memory.memsw.limit_in_bytes").write_text(str(1536 * 2**20))
    except (OSError, AttributeError) as e:
        if cg is not None and cg.exists():
            cg.rmdir()
        pytest.skip(f"no writable memory cgroup here ({e})")
    try:
        db = tmp_path / "s.db"
        env = register(tmp_path, "hog", f"exec '{sys.executable}' -c 'b = bytearray(4 << 30)'", good=1)
        procs = cg / "cgroup.procs"
        proc = start(["run", *TINY, "--reps", "2", "--binary", "hog", "--db", str(db)], env=env,
                     preexec_fn=lambda: procs.write_text(str(os.getpid())))
        rc, _, err = finish(proc)
        line = error_line(err)
        assert rc == 1
        assert "killed for memory (OOM)" in line and "oom_kill 0 -> 1" in line, line
        status, n = stored(db)
        assert status == "failed" and n == kept(line) == 1
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_oom_evidence_reads_the_kernels_counters(tmp_path):
    from devprof.devices.local import oom_evidence, read_oom_counters

    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    before = read_oom_counters([v2, v1])
    assert before == {str(v2): 1, str(v1): 4}
    assert oom_evidence([v2, v1], before, before) == ""
    assert oom_evidence([v2, v1], before, {**before, str(v1): 5}) == f"{v1} oom_kill 4 -> 5"
    # the system-wide count decides only when no cgroup counter could be read
    vm = Path("/proc/vmstat")
    assert oom_evidence([v2, vm], {str(v2): 1, str(vm): 0}, {str(v2): 1, str(vm): 1}) == ""
    assert oom_evidence([vm], {str(vm): 0}, {str(vm): 2}) == "/proc/vmstat oom_kill 0 -> 2"


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """SIGTERM (a CI cancel): the runtime is stopped (no orphan), the run is interrupted, exit 143."""
    db = tmp_path / "s.db"
    proc = start(["run", *TINY, "--reps", "6", "--db", str(db)])
    wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
    wait_for(lambda: runtime_pids(str(tmp_path)), 120, "a running repetition", proc)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    line = error_line(err)
    assert rc == 143, err
    assert "interrupted by SIGTERM" in line
    status, n = stored(db)
    assert status == "interrupted" and n == kept(line) >= 1
    time.sleep(0.5)
    assert runtime_pids(str(tmp_path)) == []  # stopped, not re-parented to init


def test_ctrl_c_keeps_finished_repetitions(tmp_path):
    db = tmp_path / "s.db"
    proc = start(["run", *TINY, "--reps", "6", "--db", str(db)])
    wait_for(lambda: n_ok(db) >= 2, 240, "two repetitions", proc)
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    line = error_line(err)
    assert rc == 130, err
    assert "interrupted: kept" in line
    status, n = stored(db)
    assert status == "interrupted" and n == kept(line) >= 2
    time.sleep(0.5)
    assert runtime_pids(str(tmp_path)) == []
    rc, out, _ = devprof("show", "latest", "--json", "--db", str(db))
    assert rc == 0 and json.loads(out)["results"][0]["n"] == n


def test_timeout_kills_the_runtime_and_keeps_what_finished(tmp_path):
    db = tmp_path / "s.db"
    env = register(tmp_path, "hang", "exec sleep 900", good=1)
    t0 = time.monotonic()
    # the timeout must leave room for the first (real) repetition on a busy 2-core machine: a 20 s
    # timeout killed it at a load average of 20 (a python runtime importing torch; such repetitions
    # took 18-34 s there)
    rc, _, err = devprof("run", *TINY, "--reps", "2", "--binary", "hang", "--timeout", "90", "--db", str(db), env=env)
    line = error_line(err)
    assert rc == 1 and "killed after the 90 s timeout" in line and "peak" not in line, line
    status, n = stored(db)
    assert status == "failed" and n == kept(line) == 1, line
    assert time.monotonic() - t0 < 300  # a sanity bound: stopped by the timeout, not by `sleep 900` ending
    left = subprocess.run(["pgrep", "-f", "sleep 900"], capture_output=True, text=True).stdout.split()
    hang_children = [p for p in left if str(tmp_path) in Path(f"/proc/{p}/cmdline").read_text(errors="replace")] \
        if left else []
    assert hang_children == []


def _mount_tmpfs(path: Path, size_kb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {r.stderr.strip()}")


def _fill(path: Path) -> None:
    """Fill the disk at ``path`` (already full: nothing to add)."""
    try:
        with open(path / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete local run (2 repetitions) to report, list and check peaks on."""
    db = tmp_path_factory.mktemp("done") / "s.db"
    rc, _, err = devprof("run", *TINY, "--workload", "real", "--reps", "2", "--db", str(db))
    assert rc == 0, err
    return db


def test_report_onto_a_full_disk_leaves_no_file(finished_run, tmp_path):
    full = tmp_path / "full"
    _mount_tmpfs(full, 64)
    try:
        _fill(full)
        out = full / "r.html"
        rc, _, err = devprof("report", "latest", "--out", str(out), "--db", str(finished_run))
        line = error_line(err)
        assert rc == 1 and "No space left on device" in line and str(out) in line
        assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no 0-byte report, no temporary file
        assert stored(finished_run) == ("complete", 2)
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


def test_store_on_a_full_disk_is_one_line(tmp_path):
    """The store's disk fills up mid-run: one line, exit 1, what was written stays readable."""
    disk = tmp_path / "disk"
    # room for the first repetitions even on a loaded machine (slower runs at --sample-ms 1 store more
    # samples, and the WAL holds them again: 8 MiB was already full when the test saw the first one
    # stored, at a load average of 20); the filler then takes the rest
    _mount_tmpfs(disk, 65536)
    try:
        db = disk / "s.db"
        proc = start(["run", *TINY, "--reps", "50", "--sample-ms", "1", "--db", str(db)])
        wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
        _fill(disk)
        rc, _, err = finish(proc)
        line = error_line(err)
        assert rc == 1 and ("No space left" in line or "full" in line), line
        (disk / "filler").unlink(missing_ok=True)
        status, n = stored(db)
        assert n >= 1 and status in ("failed", "running")  # the store may have had no room to say failed
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_corrupt_store_is_one_line(tmp_path):
    db = tmp_path / "s.db"
    db.write_bytes(b"this is not a database" * 100)
    for args in (["show", "latest"], ["list"], ["run", *TINY, "--reps", "1"]):
        rc, _, err = devprof(*args, "--db", str(db))
        line = error_line(err)
        assert rc == 1 and str(db) in line, line
    assert db.read_bytes() == b"this is not a database" * 100  # never overwritten


def test_two_runs_on_one_store(tmp_path):
    db = tmp_path / "s.db"
    a = start(["run", *TINY, "--reps", "2", "--db", str(db)])
    b = start(["run", *TINY, "--reps", "2", "--db", str(db)])
    (ra, _, ea), (rb, _, eb) = finish(a), finish(b)
    assert ra == 0 and rb == 0, (ea, eb)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT r.status, count(p.rep_id) FROM runs r JOIN repetitions p ON p.run_id = r.run_id "
                       "WHERE p.status = 'ok' GROUP BY r.run_id").fetchall()
    assert sorted(rows) == [("complete", 2), ("complete", 2)]


HOSTILE = "$(touch {p}); `touch {p}` <script>alert(1)</script> & echo"


def test_shell_metacharacters_and_script_in_arguments(tmp_path):
    """--runtime-arg reaches the runtime as one literal argument (no shell runs it), is stored as
    given and the HTML report escapes it (on a phone: test_phone_arguments_are_not_shell)."""
    pwned = tmp_path / "pwned"
    arg = HOSTILE.format(p=pwned)
    seen = tmp_path / "last-arg.txt"
    # a runtime that records its last argument and runs the reference runtime without it
    script = tmp_path / "literal.py"
    script.write_text(f"#!{sys.executable}\nimport os, sys\nopen({str(seen)!r}, 'w').write(sys.argv[-1])\n"
                      f"os.execv(sys.executable, [sys.executable, '-m', 'devprof.refruntime', *sys.argv[1:-1]])\n")
    script.chmod(0o755)
    env = {"DEVPROF_BINS_MANIFEST": str(tmp_path / "manifest.toml")}
    rc, _, err = devprof("bins", "add", str(script), "--runtime", "reference", "--platform", "host", "--abi", "any",
                         "--name", "literal", env=env)
    assert rc == 0, err
    db = tmp_path / "s.db"
    rc, _, err = devprof("run", *TINY, "--reps", "1", "--binary", "literal", f"--runtime-arg={arg}",
                         "--db", str(db), "--out", str(tmp_path / "r.html"), env=env)
    assert rc == 0, err
    assert seen.read_text() == arg and not pwned.exists()
    assert stored(db) == ("complete", 1)
    rc, out, _ = devprof("show", "latest", "--json", "--db", str(db))
    assert json.loads(out)["run"]["settings"]["runtime_args"] == [arg]
    html = (tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in html and "alert(1)" in html
    # a runtime that refuses it: one line, exit 1, nothing ran it
    rc, _, err = devprof("run", *TINY, "--reps", "1", "--db", str(db), f"--runtime-arg=--x={arg}")
    line = error_line(err)
    assert rc == 1 and "unrecognized arguments" in line and not pwned.exists()
    assert stored(db) == ("failed", 0)


def test_stored_peak_is_the_highest_vmhwm_seen(finished_run):
    """The stored peak is never below a sampled VmHWM or the exit figure of the same repetition."""
    con = sqlite3.connect(finished_run)
    rows = con.execute("SELECT p.rep_id, p.peak_rss_kb, max(s.hwm_kb) FROM repetitions p "
                       "JOIN samples s ON s.rep_id = p.rep_id GROUP BY p.rep_id").fetchall()
    assert rows and all(peak >= hwm for _, peak, hwm in rows), rows


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="/usr/bin/time (Debian package `time`) is missing")
def test_peak_agrees_with_time_v():
    """The peak devprof measures for a process is what `/usr/bin/time -v` says for the same one
    (held at 0.4 % in issue 11; `devprof bench` measures it on the runtimes too)."""
    from devprof.bench import _time_v_maxrss
    from devprof.devices.base import RunRequest
    from devprof.devices.local import LocalDevice

    prog = [sys.executable, "-c", "b = b'x' * (256 << 20); import time; time.sleep(0.3)"]
    with LocalDevice() as dev:
        peaks = [dev.run(RunRequest(argv=prog, sample_ms=10, timeout_s=60)).peak_rss_kb for _ in range(2)]
    tv = [_time_v_maxrss(subprocess.run(["/usr/bin/time", "-v", *prog], capture_output=True, text=True).stderr)
          for _ in range(2)]
    assert all(peaks) and all(tv), (peaks, tv)
    assert abs(sorted(peaks)[0] / sorted(tv)[0] - 1) < 0.02, (peaks, tv)


def test_peak_folds_in_every_vmhwm():
    from devprof import stats
    from devprof.results import MemorySample, ProcessOutcome, Repetition, RunResult

    o = ProcessOutcome(exit_code=0, stdout="", stderr="", start_wall_ms=0, wall_ms=1, status="ok",
                       peak_rss_kb=387_216, samples=[MemorySample(t_ms=0, rss_kb=380_000, hwm_kb=387_420)])
    rep = Repetition(model="m", workload="w", context=1, index=0, warmup=False, result=None, outcome=o)
    assert stats.peak_rss_kb(rep) == 387_420  # the numbers: the sample was higher
    rep.result = RunResult(runtime="reference", extra={"vmhwm_kb": 390_000})
    assert stats.peak_rss_kb(rep) == 390_000  # the runtime's own VmHWM at exit


# ------------------------------------------------------------------------------------------
# a phone: the real adb server and the suite's daemon (tests/support/adbd.py)

@pytest.fixture(scope="module")
def adb():
    with AdbServer() as server:
        yield server


def _phone_env(adb: AdbServer) -> dict:
    return {k: v for k, v in adb.env.items() if k.startswith(("ANDROID_ADB", "ADB_"))}


def _phone_run(adb, phone, db: Path, *extra: str, reps: int = 1) -> subprocess.Popen:
    return start(["run", "--device", phone.serial, *TINY, "--reps", str(reps), "--db", str(db), *extra],
                 env=_phone_env(adb))


def test_unplug_mid_run_keeps_finished_repetitions(adb, tmp_path):
    db = tmp_path / "s.db"
    phone = FakePhone(adb)
    try:
        proc = _phone_run(adb, phone, db, reps=6)
        wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
        phone.kill()
        t0 = time.monotonic()
        rc, _, err = finish(proc)
        line = error_line(err)
        assert rc == 1 and re.search(r"device lost|lost contact", line) and "unplugged" in line, line
        # noticed at once, not by the liveness checks (two silent ones of 15 s); with room for a loaded host
        assert time.monotonic() - t0 < 25
        status, n = stored(db)
        assert status == "lost" and 1 <= n == kept(line) < 6
    finally:
        phone.stop()


def test_frozen_phone_is_lost_within_timeout_plus_grace(adb, tmp_path):
    """adbd stops answering mid-repetition (SIGSTOP: the link stays up, nothing answers) under the
    default --timeout of 900 s: the liveness check declares the phone lost in well under a minute
    (two silent checks of 15 s), not after the timeout; the finished repetitions are kept."""
    db = tmp_path / "s.db"
    phone = FakePhone(adb)
    try:
        proc = _phone_run(adb, phone, db, reps=6)
        wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
        wait_for(lambda: runtime_pids(str(phone.sandbox)), 120, "a running repetition", proc)
        phone.freeze()
        t0 = time.monotonic()
        rc, _, err = finish(proc, 200)
        took = time.monotonic() - t0
        line = error_line(err)
        assert rc == 1 and re.search(r"device lost|lost contact", line) and "stopped answering" in line, line
        assert took < 180, took  # a sanity bound (a loaded host is slow): far below the 900 s timeout
        status, n = stored(db)
        assert status == "lost" and n == kept(line) >= 1
    finally:
        phone.stop()


def test_unauthorized_phone_gives_one_clear_line(adb, tmp_path):
    db = tmp_path / "s.db"
    with FakePhone(adb, unauthorized=True) as phone:
        rc, _, err = devprof("run", "--device", phone.serial, *TINY, "--db", str(db), env=_phone_env(adb))
        line = error_line(err)
        assert rc == 1 and "unauthorized" in line and "Allow USB debugging" in line
        assert stored(db) == (None, 0)  # nothing started


def test_full_phone_storage_is_refused_before_pushing(adb, tmp_path):
    db = tmp_path / "s.db"
    try:
        phone = FakePhone(adb, storage_kb=8 * 1024)
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        rc, _, err = devprof("run", "--device", phone.serial, *TINY, "--reps", "1", "--db", str(db),
                             env=_phone_env(adb))
        line = error_line(err)
        assert rc == 1
        m = re.search(r"not enough space on \S+ in /data/local/tmp/devprof: ([\d.]+) MiB to push, ([\d.]+) MiB free", line)
        assert m, line
        assert float(m.group(1)) > 100 and float(m.group(2)) <= 8
        assert not list((phone.sandbox / "data/local/tmp/devprof").glob("*/weights.bin"))
        status, n = stored(db)
        assert status == "failed" and n == kept(line) == 0
    finally:
        phone.stop()


def test_a_refused_push_names_the_phones_reason(adb, tmp_path):
    """The phone refuses to write a file (a folder is in its place): the error says why."""
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        launcher = Path(__file__).resolve().parents[1] / "device_bins/android/devprof-refruntime.sh"
        # the runtime launcher goes to a folder named by the bundle's hash: block every candidate
        # by making the push target itself a folder in every devprof folder once they exist
        proc = _phone_run(adb, phone, db)
        rc, _, err = finish(proc)
        assert rc == 0, err
        for d in (phone.sandbox / "data/local/tmp/devprof").iterdir():
            target = d / launcher.name
            if target.exists():
                target.unlink()
                target.mkdir()
        rc, _, err = finish(_phone_run(adb, phone, db))
        line = error_line(err)
        assert rc == 1 and "push of devprof-refruntime.sh" in line and "Is a directory" in line, line
        assert "failed: ;" not in line
        status, n = stored(db)
        assert status == "failed" and n == kept(line) == 0


def test_phone_without_shell_v2_is_quiet(adb, tmp_path):
    db = tmp_path / "s.db"
    feats = ["stat_v2", "ls_v2", "fixed_push_mkdir", "fixed_push_symlink_timestamp"]
    with FakePhone(adb, features=feats) as phone:
        rc, _, err = finish(_phone_run(adb, phone, db))
        assert rc == 0, err
        assert "not supported by device" not in err and "Traceback" not in err
        assert stored(db) == ("complete", 1)
        log = phone.log()
        assert "shell,v2" not in log and "OPEN 'shell:" in log  # every command went through the legacy shell


def test_scratch_files_are_removed_after_each_repetition(adb, tmp_path):
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        rc, _, err = finish(_phone_run(adb, phone, db, "--model", "mobilemoe-s-mini", "--workload", "real", reps=2))
        assert rc == 0, err
        assert stored(db) == ("complete", 2)
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM repetitions WHERE artifacts_json LIKE '%routing%'").fetchone()[0] == 2
        scratch = phone.sandbox / "data/local/tmp/devprof/scratch"
        assert scratch.is_dir() and list(scratch.iterdir()) == []


def _phone_runtime_killed(adb, tmp_path, lmk: bool):
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        proc = _phone_run(adb, phone, db, reps=3)
        wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
        wait_for(lambda: runtime_pids(str(phone.sandbox)), 120, "the second runtime process", proc)
        time.sleep(1.0)
        for pid in runtime_pids(str(phone.sandbox)):
            if lmk:  # what lmkd logs as it kills (Android 14's format)
                phone.log_line("main", f"12-02 10:00:00.000   612   612 I lowmemorykiller: Kill 'devprof.refruntime' "
                                       f"({pid}), uid 2000, oom_score_adj 0 to free 337808kB rss, 0kB swap; "
                                       f"reason: low watermark is breached")
            os.kill(pid, signal.SIGKILL)
        rc, _, err = finish(proc)
        line = error_line(err)
        status, n = stored(db)
        assert rc == 1 and status == "failed" and n == kept(line) >= 1
        return line


def test_phone_runtime_sigkilled_without_lmk_record_is_not_oom(adb, tmp_path):
    line = _phone_runtime_killed(adb, tmp_path, lmk=False)
    assert "killed by signal 9 (SIGKILL)" in line and "OOM" not in line and "low-memory" not in line


def test_phone_runtime_killed_by_the_low_memory_killer_is_oom(adb, tmp_path):
    line = _phone_runtime_killed(adb, tmp_path, lmk=True)
    assert "killed for memory (OOM)" in line and "low-memory killer" in line and "lowmemorykiller: Kill" in line


def test_sigterm_stops_the_runtime_on_the_phone(adb, tmp_path):
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        proc = _phone_run(adb, phone, db, reps=6)
        wait_for(lambda: n_ok(db) >= 1, 240, "the first repetition", proc)
        wait_for(lambda: runtime_pids(str(phone.sandbox)), 120, "a running repetition", proc)
        proc.send_signal(signal.SIGTERM)
        rc, _, err = finish(proc)
        line = error_line(err)
        assert rc == 143 and "interrupted by SIGTERM" in line
        status, n = stored(db)
        assert status == "interrupted" and n == kept(line) >= 1
        time.sleep(1.0)
        assert runtime_pids(str(phone.sandbox)) == []


def test_sigterm_stops_every_phone_of_device_all(adb, tmp_path):
    """`--device all` runs one session per phone in threads; SIGTERM reaches the main thread
    only, which passes it on: every phone's runtime is stopped and every run is interrupted."""
    db = tmp_path / "s.db"
    with FakePhone(adb) as a, FakePhone(adb, model="Pixel 9 Pro", android_version="16") as b:
        proc = start(["run", "--device", "all", *TINY, "--reps", "6", "--db", str(db),
                      "--adb-server", f"127.0.0.1:{adb.port}"], env=_phone_env(adb))
        wait_for(lambda: n_ok(db) >= 2, 300, "two repetitions", proc)
        wait_for(lambda: runtime_pids(str(a.sandbox)) or runtime_pids(str(b.sandbox)), 120, "a running repetition",
                 proc)
        proc.send_signal(signal.SIGTERM)
        rc, _, err = finish(proc)
        line = error_line(err)
        assert rc == 143 and line.startswith("error: interrupted by SIGTERM: "), line
        assert a.serial in line and b.serial in line
        con = sqlite3.connect(db)
        runs = con.execute("SELECT run_id, status FROM runs").fetchall()
        assert len(runs) == 2 and {st for _, st in runs} == {"interrupted"}
        per_run = dict(con.execute("SELECT run_id, count(*) FROM repetitions WHERE status = 'ok' GROUP BY run_id"))
        assert sum(map(int, re.findall(r"kept (\d+) finished", line))) == sum(per_run.values()) >= 2
        time.sleep(1.0)
        assert runtime_pids(str(a.sandbox)) == [] and runtime_pids(str(b.sandbox)) == []


def test_phone_arguments_are_not_shell(adb, tmp_path):
    """Shell metacharacters in --runtime-arg go through `adb shell` quoted: the runtime refuses
    the literal argument, nothing on the phone runs it."""
    db = tmp_path / "s.db"
    with FakePhone(adb) as phone:
        pwned = "/data/local/tmp/pwned"
        rc, _, err = finish(_phone_run(adb, phone, db, f"--runtime-arg=--x={HOSTILE.format(p=pwned)}"))
        line = error_line(err)
        assert rc == 1 and "unrecognized arguments" in line and "<script>" in line
        assert not phone.host_path(pwned).exists()
        status, n = stored(db)
        assert status == "failed" and n == 0


# ------------------------------------------------------------------------------------------
# parsers the faults depend on

def test_parse_df_of_toybox_gnu_and_toolbox():
    from devprof.devices.android import parse_df_available

    toybox = ("Filesystem     1K-blocks    Used Available Use% Mounted on\n"
              "/dev/block/dm-46 115003392 60217272  54654056  53% /data\n")
    assert parse_df_available(toybox) == 54654056 * 1024
    wrapped = ("Filesystem     1K-blocks    Used Available Use% Mounted on\n"
               "/dev/block/bootdevice/by-name/userdata\n"
               "                115003392 60217272  54654056  53% /data\n")
    assert parse_df_available(wrapped) == 54654056 * 1024
    toolbox = ("Filesystem               Size     Used     Free   Blksize\n"
               "/data                    1.9G   500.0M     1.4G   4096\n")
    assert parse_df_available(toolbox) == int(1.4 * 2**30)
    assert parse_df_available("df: /nope: No such file or directory\n") is None
    assert parse_df_available("") is None


def test_find_lmk_record_matches_the_pid_only():
    from devprof.devices.android import find_lmk_record

    log = ("12-02 10:00:00.1  612  612 I lowmemorykiller: Kill 'com.x' (12345), uid 10234, oom_score_adj 900\n"
           "12-02 10:00:00.2  600  600 I killinfo: [4242,10234,900,200,50000,7]\n"
           "12-02 10:00:00.3  600  600 I am_proc_died: [0,12346,com.y]\n")
    assert "12345" in find_lmk_record(log, 12345)
    assert "killinfo" in find_lmk_record(log, 4242)
    assert find_lmk_record(log, 1234) == "" and find_lmk_record(log, 12346) == ""
