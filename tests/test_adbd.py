"""The fake adbd (tests/support/adbd.py) driven by the real adb binary and by adbutils."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import threading
import time

import pytest

from tests.support.adb_env import INSTALL_HINT, AdbServer, FakePhone


@pytest.fixture(scope="module")
def server():
    if not shutil.which("adb"):
        pytest.fail(INSTALL_HINT, pytrace=False)
    with AdbServer() as s:
        yield s


@pytest.fixture(scope="module")
def phone(server):
    with FakePhone(server, serial="R3CYTEST001") as p:
        yield p


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(name))
    return out


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def test_devices_lists_model(server, phone):
    r = server.adb("devices", "-l")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(phone.serial))
    assert line.split()[1] == "device"
    # adb sanitises the banner's model: '-' becomes '_'.
    assert "model:SM_S931B" in line
    assert "product:pa1qxxx" in line and "device:pa1q" in line
    assert server.adb("-s", phone.serial, "get-state").stdout.strip() == "device"


def test_shell_v2_stdout_stderr_exit_code(server, phone):
    r = server.adb("-s", phone.serial, "shell", "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 3)
    assert server.adb("-s", phone.serial, "shell", "false").returncode == 1
    assert server.adb("-s", phone.serial, "shell", "true").returncode == 0

    d = phone.device()
    res = d.shell2("echo out; echo err >&2; exit 7", v2=True)
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    # killed by a signal: 0x80 | signal, as adbd reports it
    assert d.shell2("kill -9 $$", v2=True).returncode == 0x80 | 9


def test_shell_v2_stdin(server, phone):
    r = subprocess.run([server.adb_path, "-s", phone.serial, "shell", "cat; echo rc=$?"],
                       input="hello stdin\n", capture_output=True, text=True, env=server.env,
                       timeout=10)
    assert r.stdout == "hello stdin\nrc=0\n"


def test_shell_large_output_and_input(server, phone):
    # 2 MB on stdout and 1 MB on stderr at once: many WRTEs, v2 packets split across them
    cmd = "(head -c 1000000 /dev/zero | tr '\\0' e >&2) & head -c 2000000 /dev/zero | tr '\\0' o; wait"
    r = subprocess.run([server.adb_path, "-s", phone.serial, "shell", cmd], capture_output=True,
                       env=server.env, stdin=subprocess.DEVNULL, timeout=20)
    assert r.returncode == 0
    assert r.stdout == b"o" * 2_000_000 and r.stderr == b"e" * 1_000_000
    # 3 MB of stdin through shell protocol packets
    data = os.urandom(3 * 1024 * 1024)
    r = subprocess.run([server.adb_path, "-s", phone.serial, "shell", "sha256sum"], input=data,
                       capture_output=True, env=server.env, timeout=20)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_shell_v1_and_exec(server, phone):
    d = phone.device()
    assert d.shell("echo a; echo b >&2") == "a\nb"  # v1 merges stderr
    res = d.shell2("echo out; false")  # adbutils' v1 path (echoes $? itself)
    assert (res.returncode, res.output) == (1, "out\n")
    # adb -x: no shell protocol (service "shell,raw:"), so no remote exit code
    r = server.adb("-s", phone.serial, "shell", "-x", "echo x; exit 3")
    assert (r.stdout, r.returncode) == ("x\n", 0)
    r = server.adb("-s", phone.serial, "exec-out", "printf 'raw\\0bytes'")
    assert r.stdout == "raw\0bytes"
    data = os.urandom(1024 * 1024)
    r = subprocess.run([server.adb_path, "-s", phone.serial, "exec-in", "cat > /data/local/tmp/in.bin"],
                       input=data, capture_output=True, env=server.env, timeout=10)
    assert r.returncode == 0, r.stderr
    dst = phone.host_path("/data/local/tmp/in.bin")
    assert wait_until(lambda: dst.exists() and dst.read_bytes() == data, 30)


def test_paths_are_rewritten_into_the_sandbox(server, phone):
    d = phone.device()
    d.shell("echo hi > /data/local/tmp/rw.txt; echo sd > /sdcard/sd.txt")
    assert phone.host_path("/data/local/tmp/rw.txt").read_text() == "hi\n"
    assert (phone.sandbox / "sdcard" / "sd.txt").read_text() == "sd\n"
    assert d.shell("cd /data/local/tmp && cat rw.txt") == "hi"
    # not a path start: left alone
    assert d.shell("echo x/data/local/tmp") == "x/data/local/tmp"
    # fake sysfs, real /proc
    assert d.shell("cat /sys/class/thermal/thermal_zone0/type /sys/class/thermal/thermal_zone0/temp") \
        == "cpu-0-0\n41200"
    assert d.shell("cat /sys/class/thermal/thermal_zone1/temp") == "33000"
    freqs = d.shell("cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq").split()
    assert len(freqs) == 8 and all(int(f) > 0 for f in freqs)
    assert "VmRSS" in d.shell("cat /proc/self/status")


def test_push_pull_5mb_roundtrip(server, phone, tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024))
    r = server.adb("-s", phone.serial, "push", str(src), "/data/local/tmp/sub/blob.bin")
    assert r.returncode == 0, r.stderr
    assert sha256(phone.host_path("/data/local/tmp/sub/blob.bin")) == sha256(src)
    back = tmp_path / "back.bin"
    r = server.adb("-s", phone.serial, "pull", "/data/local/tmp/sub/blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert sha256(back) == sha256(src)
    remote = phone.device().shell("sha256sum /data/local/tmp/sub/blob.bin").split()[0]
    assert remote == sha256(src)

    # adbutils sync, same file
    d = phone.device()
    d.sync.push(src.read_bytes(), "/data/local/tmp/blob2.bin")
    assert hashlib.sha256(d.sync.read_bytes("/data/local/tmp/blob2.bin")).hexdigest() == sha256(src)
    # pull of a missing file fails cleanly
    r = server.adb("-s", phone.serial, "pull", "/data/local/tmp/nope", str(tmp_path / "x"))
    assert r.returncode != 0 and "No such file" in r.stdout + r.stderr  # adb 29 prints it on stdout


def test_push_preserves_mode_bits(server, phone, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho ran with $1\nexit 4\n")
    script.chmod(0o755)
    assert server.adb("-s", phone.serial, "push", str(script), "/data/local/tmp/run.sh").returncode == 0
    r = server.adb("-s", phone.serial, "shell", "/data/local/tmp/run.sh", "arg")
    assert (r.stdout, r.returncode) == ("ran with arg\n", 4)
    assert os.stat(phone.host_path("/data/local/tmp/run.sh")).st_mode & 0o111

    plain = tmp_path / "plain.txt"
    plain.write_text("data\n")
    plain.chmod(0o644)
    assert server.adb("-s", phone.serial, "push", str(plain), "/data/local/tmp/plain.txt").returncode == 0
    assert os.stat(phone.host_path("/data/local/tmp/plain.txt")).st_mode & 0o111 == 0
    assert server.adb("-s", phone.serial, "shell", "/data/local/tmp/plain.txt").returncode == 126

    # push into an existing directory, and a whole directory tree (parents are created)
    assert server.adb("-s", phone.serial, "push", str(plain), "/data/local/tmp/").returncode == 0
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "bin" / "tool").chmod(0o755)
    (tree / "model.bin").write_bytes(b"w" * 1000)
    r = server.adb("-s", phone.serial, "push", str(tree), "/data/local/tmp/deep/tree")
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.adb("-s", phone.serial, "shell", "/data/local/tmp/deep/tree/bin/tool").stdout == "tool\n"
    assert phone.host_path("/data/local/tmp/deep/tree/model.bin").stat().st_size == 1000

    d = phone.device()
    d.sync.push(b"#!/bin/sh\necho via adbutils\n", "/data/local/tmp/u.sh", mode=0o755)
    assert d.shell("/data/local/tmp/u.sh") == "via adbutils"


def test_stat_and_list(server, phone):
    d = phone.device()
    d.shell("mkdir -p /data/local/tmp/dir && printf 12345 > /data/local/tmp/dir/f5")
    st = d.sync.stat("/data/local/tmp/dir/f5")
    assert st.size == 5 and st.mode & 0o170000 == 0o100000 and st.mtime is not None
    assert d.sync.stat("/data/local/tmp/dir").mode & 0o170000 == 0o040000
    assert d.sync.stat("/data/local/tmp/missing").mtime is None
    assert not d.sync.exists("/data/local/tmp/missing")
    names = {f.path for f in d.sync.list("/data/local/tmp/dir")}
    assert names == {".", "..", "f5"}
    r = server.adb("-s", phone.serial, "ls", "/data/local/tmp/dir")  # LIS2 (ls_v2)
    assert "f5" in r.stdout
    # pull a whole directory (stat_v2 + ls_v2 + recv)
    r = server.adb("-s", phone.serial, "pull", "/data/local/tmp/dir", str(phone.sandbox / "pulled"))
    assert r.returncode == 0, r.stderr
    assert (phone.sandbox / "pulled" / "f5").read_text() == "12345"


def test_sendrecv_v2_raw(phone):
    """SND2/RCV2 (advertised as sendrecv_v2, no compression) over a raw sync: stream."""
    d = phone.device()
    path = b"/data/local/tmp/v2.bin"
    payload = os.urandom(100_000)
    with d.open_transport() as c:
        c.send_command("sync:")
        c.check_okay()
        msg = b"SND2" + struct.pack("<I", len(path)) + path + b"SND2" + struct.pack("<II", 0o100644, 0)
        for i in range(0, len(payload), 65536):
            chunk = payload[i:i + 65536]
            msg += b"DATA" + struct.pack("<I", len(chunk)) + chunk
        msg += b"DONE" + struct.pack("<I", 1_700_000_000)
        c.conn.sendall(msg)
        assert c.read(8) == b"OKAY\0\0\0\0"
        c.conn.sendall(b"RCV2" + struct.pack("<I", len(path)) + path + b"RCV2" + struct.pack("<I", 0))
        got = b""
        while True:
            ident, n = struct.unpack("<4sI", c.read(8))
            if ident == b"DONE":
                break
            assert ident == b"DATA"
            got += c.read(n)
        c.conn.sendall(b"QUIT" + bytes(4))
    assert got == payload
    assert int(os.stat(phone.host_path(path.decode())).st_mtime) == 1_700_000_000


def test_getprop(server, phone):
    d = phone.device()
    assert d.getprop("ro.product.model") == "SM-S931B"
    assert d.getprop("ro.soc.model") == "SM8750"
    assert d.getprop("ro.serialno") == "R3CYTEST001"
    assert d.getprop("no.such.prop") == ""
    assert d.prop.model == "SM-S931B"
    out = server.adb("-s", phone.serial, "shell", "getprop").stdout
    lines = out.splitlines()
    assert "[ro.product.manufacturer]: [samsung]" in lines
    assert "[ro.build.version.sdk]: [35]" in lines
    assert "[ro.product.cpu.abi]: [arm64-v8a]" in lines
    assert all(ln.startswith("[") and "]: [" in ln for ln in lines)
    assert phone.props_all()["ro.product.brand"] == "samsung"
    phone.set_prop("debug.devprof.test", "42")
    assert d.shell("getprop debug.devprof.test; getprop ro.product.model") == "42\nSM-S931B"


def test_two_phones_at_once(server, phone):
    with FakePhone(server, model="Pixel 9 Pro", android_version="14", props={"ro.soc.model": "Tensor G4"}) as other:
        listed = server.devices()
        assert listed[phone.serial] == "device" and listed[other.serial] == "device"
        assert "model:Pixel_9_Pro" in server.adb("devices", "-l").stdout
        results = {}

        def run(p):
            results[p.serial] = p.device().shell2(
                "getprop ro.product.model; getprop ro.build.version.sdk; sleep 0.3; echo x > /data/local/tmp/mine",
                v2=True)

        threads = [threading.Thread(target=run, args=(p,)) for p in (phone, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results[phone.serial].stdout == "SM-S931B\n35\n"
        assert results[other.serial].stdout == "Pixel 9 Pro\n34\n"
        assert phone.host_path("/data/local/tmp/mine").exists()
        assert other.host_path("/data/local/tmp/mine").exists()
        assert other.sandbox != phone.sandbox
        # a clean stop (SIGTERM) takes the phone's running processes with it
        conn = other.device().shell("echo $$ > /data/local/tmp/bg.pid; sleep 30", stream=True)
        pidfile = other.host_path("/data/local/tmp/bg.pid")
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30)
        pgid = int(pidfile.read_text())
        other.stop()
        conn.close()
        assert other.returncode == 0, other.log()
        assert not group_members(pgid)
        assert other.serial not in server.devices()


def test_unauthorized_phone(server):
    import adbutils

    with FakePhone(server, unauthorized=True) as p:
        assert server.state(p.serial) == "unauthorized"
        r = server.adb("-s", p.serial, "shell", "true")
        assert r.returncode != 0 and "unauthorized" in r.stderr
        with pytest.raises(adbutils.AdbError):
            p.device().shell("true")


def test_killed_daemon_makes_device_go_away(server):
    p = FakePhone(server)
    try:
        assert server.state(p.serial) == "device"
        # a run in progress on the phone when it vanishes
        running = subprocess.Popen(
            [server.adb_path, "-s", p.serial, "shell", "echo $$ > /data/local/tmp/run.pid; sleep 30"],
            env=server.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pidfile = p.host_path("/data/local/tmp/run.pid")
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30)
        pgid = int(pidfile.read_text())
        t0 = time.monotonic()
        p.kill()
        assert p.returncode == -signal.SIGKILL
        # a sanity bound (a loaded host is slow): the point is that it goes away, not how fast
        state = server.wait_for_state(p.serial, ["offline", None], timeout=20)
        assert state in ("offline", None) and time.monotonic() - t0 < 20
        # The host side of the interrupted shell ends; it does not hang. NB adb 29.0.6 exits 0
        # when the transport drops before the shell's exit packet (later adbs may differ), so a
        # vanished device is not visible in `adb shell`'s exit code, only in the missing output.
        running.wait(30)
        running.communicate()
        with pytest.raises(Exception):
            p.device().shell("true")
        assert not group_members(pgid)  # kill() reaps what the dead daemon left behind
    finally:
        p.stop()
    assert server.state(p.serial) is None  # stop() disconnects it


def test_long_shell_is_killed_when_client_goes_away(server, phone):
    pidfile = phone.host_path("/data/local/tmp/sleep.pid")
    for how in ("adb-cli", "adbutils"):
        pidfile.unlink(missing_ok=True)
        cmd = "echo $$ > /data/local/tmp/sleep.pid; sleep 30; echo never"
        if how == "adb-cli":
            # SIGINT may be inherited as ignored (background jobs of a non-interactive shell)
            proc = subprocess.Popen([server.adb_path, "-s", phone.serial, "shell", cmd],
                                    env=server.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30)
            pgid = int(pidfile.read_text())
            assert group_members(pgid), "shell not running"
            proc.send_signal(signal.SIGINT)  # Ctrl-C on the host
            proc.wait(30)
        else:
            conn = phone.device().shell(cmd, stream=True)
            assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30)
            pgid = int(pidfile.read_text())
            assert group_members(pgid), "shell not running"
            conn.close()
        # well inside the shell's 30 s sleep: a leaked shell is still caught on a loaded host
        assert wait_until(lambda: not group_members(pgid), 15), f"{how}: {group_members(pgid)} still alive"
    # the phone is still fine afterwards
    assert phone.device().shell("echo ok") == "ok"
