"""Test helpers: a private adb server and fake phones (``tests/support/adbd.py``) attached to it.

Not a conftest: import these from fixtures::

    from tests.support.adb_env import AdbServer, FakePhone

    @pytest.fixture(scope="session")
    def adb_server():
        with AdbServer() as server:
            yield server

    @pytest.fixture
    def phone(adb_server):
        with FakePhone(adb_server, model="SM-S931B") as p:
            yield p            # p.serial == "127.0.0.1:PORT"; p.sandbox holds its files

Everything started here is stopped by the context managers, and, as a last resort, at
interpreter exit, so no adb server or daemon outlives the test session.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
ADBD = HERE / "adbd.py"

INSTALL_HINT = "adb is not installed (or not on PATH): install it with `apt-get install adb`"

# Android release -> API level, for FakePhone(android_version=...).
SDK_FOR_RELEASE = {"16": "36", "15": "35", "14": "34", "13": "33", "12": "31", "11": "30",
                   "10": "29", "9": "28", "8.1": "27", "8.0": "26"}

# Map of device path prefixes -> sandbox sub-folders, as tests/support/adbd.py rewrites them.
DEVICE_DIRS = {
    "/data/local/tmp": "data/local/tmp",
    "/sdcard": "sdcard",
    "/storage/emulated/0": "sdcard",
    "/storage/self/primary": "sdcard",
}
SYSFS_DIRS = {
    "/sys/class/thermal": "sys/class/thermal",
    "/sys/devices/system/cpu": "sys/devices/system/cpu",
}

_live: "weakref.WeakSet[object]" = weakref.WeakSet()


class AdbMissing(RuntimeError):
    """Raised when the adb binary cannot be found."""


def find_adb() -> str:
    """Path to the adb binary, or raise :class:`AdbMissing` with the install hint."""
    path = shutil.which("adb")
    if not path:
        raise AdbMissing(INSTALL_HINT)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (outside adb's 5037/5554-5585)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 5037 and not 5550 <= port <= 5590:
            return port
    raise RuntimeError("no free TCP port")


def _pids_with_env(exe_name: str, key: str, value: str) -> list[int]:
    """PIDs of processes named ``exe_name`` whose environment has ``key=value``."""
    needle = f"{key}={value}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb") as f:
                if f.read().strip() != exe_name.encode():
                    continue
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != b"Z":
            out.append(int(entry.name))
    return out


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < end:
        left = [p for p in left if _alive(p)]
        if left:
            time.sleep(0.05)
    return left


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class AdbServer:
    """A private adb server on its own port, with its own HOME (keys) and TMPDIR (log).

    ``env`` is the environment to give any subprocess that should use this server (the adb
    CLI, devprof itself): it carries ``ANDROID_ADB_SERVER_PORT`` and switches off emulator
    port scanning (``ADB_EMU=0``), USB (``ADB_USB=0``) and mDNS (``ADB_MDNS=0``), all of which
    adb 29.0.6 honours.
    """

    def __init__(self, port: int | None = None, adb: str | None = None, start: bool = True):
        self.adb_path = adb or find_adb()
        self.port = port or free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="devprof-adb-"))
        self.home = self._tmp / "home"
        self.tmpdir = self._tmp / "tmp"
        self.home.mkdir()
        self.tmpdir.mkdir()
        self.log_path = self.tmpdir / "adb-server.log"
        env = dict(os.environ)
        for k in ("ANDROID_SERIAL", "ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS",
                  "ADB_VENDOR_KEYS", "ANDROID_SDK_HOME", "ANDROID_USER_HOME",
                  "ANDROID_EMULATOR_HOME", "ADB_LOCAL_TRANSPORT_MAX_PORT"):
            env.pop(k, None)
        env.update(
            ANDROID_ADB_SERVER_PORT=str(self.port),
            HOME=str(self.home),
            TMPDIR=str(self.tmpdir),
            ANDROID_ADB_LOG_PATH=str(self.log_path),
            ADB_MDNS="0",
            ADB_MDNS_AUTO_CONNECT="0",
            ADB_EMU="0",
            ADB_USB="0",
            ADB_LIBUSB="0",
        )
        self.env = env
        self.pid: int | None = None
        self._started = False
        _live.add(self)
        if start:
            self.start()

    # ---- lifecycle ----
    def start(self) -> "AdbServer":
        if self._started:
            return self
        r = self.adb("start-server", timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"adb start-server failed ({r.returncode}): {r.stderr}{r.stdout}"
                               f"\n--- server log ---\n{self.log()}")
        self._started = True
        pids = _pids_with_env("adb", "ANDROID_ADB_SERVER_PORT", str(self.port))
        self.pid = pids[0] if pids else None
        return self

    def stop(self) -> None:
        """``adb kill-server``, then make sure the server process is gone."""
        if self._started:
            self._started = False
            try:
                self.adb("kill-server", timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                pass
        pids = set(_pids_with_env("adb", "ANDROID_ADB_SERVER_PORT", str(self.port)))
        if self.pid:
            pids.add(self.pid)
        left = _wait_gone(pids, 5)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _wait_gone(left, 2)
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "AdbServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- use ----
    def adb(self, *args: str, timeout: float = 30, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run the adb CLI against this server (text mode, output captured)."""
        return subprocess.run(
            [self.adb_path, *map(str, args)], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=check,
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
        )

    def client(self):
        """An ``adbutils.AdbClient`` talking to this server."""
        import adbutils

        return adbutils.AdbClient(host="127.0.0.1", port=self.port)

    def devices(self) -> dict[str, str]:
        """serial -> state, as ``adb devices`` lists them."""
        r = self.adb("devices", timeout=10)
        out = {}
        for line in r.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def state(self, serial: str) -> str | None:
        """The device's state (device, offline, unauthorized, ...) or None if not listed."""
        return self.devices().get(serial)

    def wait_for_state(self, serial: str, states: Iterable[str | None], timeout: float = 10) -> str | None:
        """Poll ``adb devices`` until ``serial`` is in one of ``states`` (None = absent)."""
        wanted = set(states)
        end = time.monotonic() + timeout
        last = "?"
        while True:
            last = self.state(serial)
            if last in wanted:
                return last
            if time.monotonic() > end:
                raise TimeoutError(f"{serial} stayed {last!r}, wanted {sorted(map(str, wanted))} "
                                   f"within {timeout}s")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class FakePhone:
    """A ``tests/support/adbd.py`` daemon, optionally attached to an :class:`AdbServer`.

    Keyword arguments override the default Galaxy S25 (SM-S931B) identity; ``props`` adds or
    overrides any system property. ``sandbox`` is the folder holding the phone's files
    (``/data/local/tmp`` is ``sandbox / "data/local/tmp"``; see :meth:`host_path`).
    """

    def __init__(
        self,
        server: AdbServer | None = None,
        *,
        model: str = "SM-S931B",
        serial: str | None = None,
        android_version: str = "15",
        sdk: str | int | None = None,
        abi: str = "arm64-v8a",
        unauthorized: bool = False,
        sysfs: bool = True,
        props: dict | None = None,
        sandbox: str | Path | None = None,
        connect: bool = True,
        verbose: bool = False,
        timeout: float = 15,
        start: bool = True,
        features: list[str] | None = None,
        storage_kb: int | None = None,
    ):
        self.server = server
        self.unauthorized = unauthorized
        self.sysfs = sysfs
        self.verbose = verbose
        self.timeout = timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="devprof-phone-"))
        self._own_sandbox = sandbox is None
        self.sandbox = Path(sandbox).resolve() if sandbox else self._tmp / "sandbox"
        self.log_path = self._tmp / "adbd.log"
        self.props_path = self._tmp / "props.json"
        p = {
            "ro.product.model": model,
            "ro.build.version.release": str(android_version),
            "ro.build.version.sdk": str(sdk or SDK_FOR_RELEASE.get(str(android_version), "35")),
            "ro.product.cpu.abi": abi,
            "ro.product.cpu.abilist": abi,
        }
        if serial:
            p["ro.serialno"] = serial
        p.update({str(k): str(v) for k, v in (props or {}).items()})
        self.props = p
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None  # the daemon's exit status once stopped/killed
        self._connect = connect
        self.features = features  # None: adbd's defaults (shell_v2 included)
        self.storage_kb = storage_kb  # a tmpfs of this size as /data/local/tmp: a phone that is nearly full
        self._mounted: Path | None = None
        self.frozen = False
        _live.add(self)
        if start:
            self.start()

    # ---- identity ----
    @property
    def serial(self) -> str:
        """The serial adb knows this phone by: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives on this host (e.g. /data/local/tmp/x -> sandbox/...)."""
        dirs = dict(DEVICE_DIRS)
        if self.sysfs:
            dirs.update(SYSFS_DIRS)
        for dev in sorted(dirs, key=len, reverse=True):
            if device_path == dev or device_path.startswith(dev + "/"):
                return self.sandbox / dirs[dev] / device_path[len(dev):].lstrip("/")
        return Path(device_path)

    def set_prop(self, key: str, value) -> None:
        """Change a property as ``getprop`` reports it from now on (the CNXN banner, which
        ``adb devices -l`` shows, keeps the values the daemon started with)."""
        self.props[str(key)] = str(value)
        props_txt = self.sandbox / ".adbd" / "props.txt"
        props_txt.write_text("".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props_all().items())))

    def props_all(self) -> dict[str, str]:
        """Every property the phone reports (defaults of tests/support/adbd.py included)."""
        props = {}
        txt = self.sandbox / ".adbd" / "props.txt"
        for line in txt.read_text().splitlines() if txt.exists() else []:
            if line.startswith("[") and "]: [" in line and line.endswith("]"):
                k, v = line[1:-1].split("]: [", 1)
                props[k] = v
        props.update(self.props)
        return props

    def device(self):
        """An ``adbutils.AdbDevice`` for this phone (needs a server)."""
        assert self.server is not None, "FakePhone has no AdbServer"
        return self.server.client().device(self.serial)

    # ---- lifecycle ----
    def start(self) -> "FakePhone":
        if self.process is not None:
            return self
        self.props_path.write_text(json.dumps(self.props))
        cmd = [sys.executable, str(ADBD), "--port", "0", "--sandbox", str(self.sandbox),
               "--props", str(self.props_path)]
        if self.unauthorized:
            cmd.append("--unauthorized")
        if self.sysfs:
            cmd.append("--sysfs")
        if self.verbose:
            cmd.append("--verbose")
        if self.features is not None:
            cmd += ["--features", ",".join(self.features)]
        if self.storage_kb is not None and self._mounted is None:
            self._mount_storage()
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log_file,
            start_new_session=True,
        )
        self.port = self._read_ready_port()
        if self.server is not None and self._connect:
            self.connect()
        return self

    def _read_ready_port(self) -> int:
        assert self.process and self.process.stdout
        end = time.monotonic() + self.timeout
        buf = b""
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0:
                self.stop()
                raise TimeoutError(f"adbd did not start within {self.timeout}s:\n{self.log()}")
            r, _, _ = select.select([self.process.stdout], [], [], left)
            if r:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    rc = self.process.wait()
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"adbd exited with {rc} before listening:\n{log}")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"unexpected adbd output {line!r}")
        return int(line.split()[1])

    def connect(self) -> str:
        """``adb connect`` through the server and wait for ``device`` (or ``unauthorized``)."""
        assert self.server is not None
        r = self.server.adb("connect", self.serial, timeout=self.timeout)
        text = (r.stdout + r.stderr).strip()
        # "connected to X", "already connected to X"; adb 29 says "failed to authenticate to X"
        # for a phone that answers CNXN with AUTH (it stays listed as unauthorized).
        if "connected to" not in text and "failed to authenticate" not in text:
            raise RuntimeError(f"adb connect {self.serial} failed: {text}\n{self.log()}")
        want = "unauthorized" if self.unauthorized else "device"
        try:
            return self.server.wait_for_state(self.serial, [want], timeout=self.timeout)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- adbd log ---\n{self.log()}") from None

    # ---- faults ----
    def _mount_storage(self) -> None:
        """A real small file system (tmpfs, needs root) as the phone's /data/local/tmp."""
        target = self.sandbox / "data/local/tmp"
        target.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.storage_kb}k", "tmpfs", str(target)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cannot mount a {self.storage_kb} kB tmpfs (root needed): {r.stderr.strip()}")
        self._mounted = target

    def _unmount_storage(self) -> None:
        if self._mounted is not None:
            subprocess.run(["umount", "-l", str(self._mounted)], capture_output=True)
            self._mounted = None

    def freeze(self) -> None:
        """SIGSTOP the daemon: the TCP link stays up but nothing answers (a frozen adbd, a hung USB link)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def battery(self, **changes) -> dict:
        """Change the fake battery (tests/support/fake_battery.py: status, plugged, idle_ua, busy_ua, voltage_uv,
        update_ms, sign, unit, heat_c_per_s, ...); returns its whole configuration."""
        from tests.support.fake_battery import configure

        return configure(self.sandbox, **changes)

    def log_line(self, buffer: str, line: str) -> None:
        """Append a line to one of the phone's logcat buffers (main, events, ...)."""
        f = self.sandbox / ".adbd" / f"logcat-{buffer}.txt"
        with open(f, "a") as fh:
            fh.write(line.rstrip("\n") + "\n")

    def kill(self, reap_orphans: bool = True) -> None:
        """SIGKILL the daemon: to the adb server the phone vanishes (goes offline).

        Processes it had started are orphaned like on a phone that dropped off Wi-Fi; with
        ``reap_orphans`` (default) they are killed too, so nothing outlives the test.
        """
        if self.process is None:
            return
        try:
            self.process.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.returncode = self.process.wait()
        if reap_orphans:
            self._reap_orphans()

    def stop(self) -> None:
        """Disconnect, SIGTERM the daemon (SIGKILL if it lingers), clean up."""
        self.thaw()
        if self.process is not None:
            # Disconnect even a killed phone, or the server keeps trying to reconnect its port.
            if self.server is not None and self.server._started:
                try:
                    self.server.adb("disconnect", self.serial, timeout=10)
                except (subprocess.TimeoutExpired, OSError):
                    pass
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stdout:
                self.process.stdout.close()
            self._reap_orphans()
            self.returncode = self.process.returncode
            self.process = None
        if getattr(self, "_log_file", None):
            self._log_file.close()
            self._log_file = None
        self._unmount_storage()
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._own_sandbox:
            shutil.rmtree(self.sandbox, ignore_errors=True)

    def _reap_orphans(self) -> None:
        d = self.sandbox / ".adbd" / "pgids"
        if d.is_dir():
            from tests.support.adbd import kill_recorded_groups

            kill_recorded_groups(d)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "FakePhone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakePhone({self.props.get('ro.product.model')!r}, serial={self.serial!r})"


_cleanup_lock = threading.Lock()


@atexit.register
def _stop_everything() -> None:
    """Last resort: nothing started here may outlive the interpreter."""
    with _cleanup_lock:
        objs = list(_live)
        for o in objs:
            if isinstance(o, FakePhone):
                try:
                    o.stop()
                except Exception:  # noqa: BLE001
                    pass
        for o in objs:
            if isinstance(o, AdbServer):
                try:
                    o.stop()
                except Exception:  # noqa: BLE001
                    pass
