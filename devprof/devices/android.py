"""Android phones over a real adb server, through adbutils.

The adb server is the local one (``ANDROID_ADB_SERVER_PORT`` is honoured) or any host:port given
with ``--adb-server``, so a device farm's remote adb endpoints work the same way. Files go to
``/data/local/tmp/devprof/<content hash>/``, pushed only when the on-device sha256 differs, and
checked after the transfer. A run starts one ``adb shell`` that executes ``sampler.sh`` on the
phone: it starts the runtime and reads ``/proc/PID/status`` every interval with shell builtins
into a file, so sampling costs no adb round trip; stdout, stderr and samples are pulled back after.
"""

from __future__ import annotations

import shlex
import stat as stat_mod
import struct
import threading
import time
from pathlib import Path

from devprof import memory
from devprof.devices import aliases as al
from devprof.devices.adb import IO_TIMEOUT, Probe, adb_client, adb_errors, error_line
from devprof.devices.android_output import (find_lmk_record, parse_df_available, parse_meminfo_available,
                                            parse_sampler_output, sampler_pid)
from devprof.devices.base import Device, RunRequest, StageReport, wait_for_exit
from devprof.errors import DeviceError, DeviceLost, killed_by
from devprof.files import sha256_file
from devprof.results import DeviceInfo, MemorySample, ProcessOutcome

REMOTE_ROOT = "/data/local/tmp/devprof"
SAMPLER = Path(__file__).with_name("sampler.sh")
# ------------------------------------------------------------------------------------------
# discovery and resolution (the backend's module-level interface, see devices/__init__.py)


def endpoints(adb_server: str | None) -> list[str | None]:
    """The adb servers of ``--adb-server``: one HOST:PORT, or a comma-separated list of them (the
    hosts of a lab, or a device farm's remote adb endpoints); None is the local server."""
    if not adb_server or not str(adb_server).strip():
        return [None]
    eps = [e.strip() for e in str(adb_server).split(",") if e.strip()]
    for e in eps:
        adb_client(e)  # a malformed entry is bad input (exit 2) before anything is contacted
    return list(dict.fromkeys(eps)) or [None]


#: One line per adb endpoint that did not answer during the last discover()/resolve(), for the CLI
#: to print (the phones of the other endpoints go on).
down: list[str] = []


def _list(adb_server: str | None, reasons: list[str] | None = None):
    """(client, [AdbDeviceInfo]) or (None, []) when no adb server answers (said in ``reasons``)."""
    client = adb_client(adb_server)
    try:
        return client, client.list()
    except adb_errors() as e:
        msg = f"adb server at {client.host}:{client.port} not reachable ({error_line(e)})"
        if reasons is not None:
            reasons.append(msg)
        down.append(msg)
        return None, []


def _endpoint_name(client) -> str:
    return f"{client.host}:{client.port}"


def discover(adb_server: str | None = None, devices_file: Path | None = None, reasons: list[str] | None = None,
             **_) -> list[DeviceInfo]:
    down.clear()
    out = []
    for ep in endpoints(adb_server):
        client, listed = _list(ep, reasons)
        for d in listed:
            if d.state == "device":
                try:
                    out.append(AndroidDevice(client, d.serial, devices_file=devices_file).info())
                    continue
                except DeviceError:
                    pass
            out.append(DeviceInfo(kind="android", serial=d.serial, name="", model="",
                                  extra={"state": d.state, "adb_server": _endpoint_name(client)}))
    return out


def resolve(spec: str, adb_server: str | None = None, devices_file: Path | None = None,
            reasons: list[str] | None = None, **_) -> list["AndroidDevice"]:
    """Devices matching ``spec`` on every endpoint of ``adb_server``: ``all`` gathers the phones of
    every endpoint that answers (those that do not are listed in ``down``); a serial or alias is
    looked for on each endpoint in turn. Why nothing matched goes to ``reasons``."""
    down.clear()
    eps = endpoints(adb_server)
    if len(eps) == 1:
        return _resolve_one(spec, eps[0], devices_file, reasons)
    found: list[AndroidDevice] = []
    errors: list[str] = []
    for ep in eps:
        try:
            devs = _resolve_one(spec, ep, devices_file, errors)
        except DeviceError as e:
            if spec.lower() == "all":
                raise
            errors.append(e.message)
            continue
        if devs and spec.lower() != "all":
            return devs
        found.extend(devs)
    if reasons is not None:
        reasons.extend(errors)
    if not found and errors and any(not e.startswith("adb server at") for e in errors):
        raise DeviceError("; ".join(e for e in errors if not e.startswith("adb server at")))
    return found


def _resolve_one(spec: str, adb_server: str | None, devices_file: Path | None,
                 reasons: list[str] | None = None) -> list["AndroidDevice"]:
    """Devices matching ``spec`` on one adb server: all | serial | alias. Raises DeviceError when the
    spec clearly meant an Android phone that cannot be used; returns [] when nothing Android matches."""
    client, listed = _list(adb_server, reasons)
    if client is None:
        return []
    table = al.load(devices_file)
    key = spec.lower()
    alias = table.get(key)
    if alias is not None and alias.platform == "ios":
        return []
    ready = [d for d in listed if d.state == "device"]
    if key == "all":
        _raise_for_unusable([d for d in listed if d.state != "device"], "")
        return [AndroidDevice(client, d.serial, devices_file=devices_file) for d in ready]
    by_serial = [d for d in listed if d.serial == spec]
    if by_serial:
        _raise_for_unusable(by_serial, spec)
        return [AndroidDevice(client, spec, devices_file=devices_file)]
    if alias is None:
        return []
    if alias.serial is not None and alias.platform == "any":
        # a user alias naming one serial/UDID: ours only if adb lists it
        found = [d for d in listed if d.serial == alias.serial]
        if not found:
            return []
        _raise_for_unusable(found, spec)
        return [AndroidDevice(client, alias.serial, devices_file=devices_file)]
    matches = []
    for d in ready:
        model = _getprop(client, d.serial, "ro.product.model")
        if alias.matches("android", d.serial, model):
            matches.append((d.serial, model))
    if not matches:
        unusable = [d for d in listed if d.state != "device"]
        if unusable:
            _raise_for_unusable(unusable, spec)
        attached = ", ".join(f"{d.serial} ({d.state})" for d in listed) or "none"
        raise DeviceError(f"no attached Android device is a {alias.display or alias.name} "
                          f"(model {alias.model or alias.serial}); attached: {attached}")
    if len(matches) > 1:
        listing = ", ".join(f"{s} ({m})" for s, m in matches)
        raise DeviceError(f"{len(matches)} devices match {spec!r}: {listing}; pass a serial, or --device all")
    return [AndroidDevice(client, matches[0][0], devices_file=devices_file)]


def _raise_for_unusable(listed, spec: str) -> None:
    for d in listed:
        if d.state == "unauthorized":
            raise DeviceError(f"device {d.serial} is unauthorized: unlock the phone and accept the "
                              "'Allow USB debugging' prompt, then run again")
        if d.state == "offline":
            raise DeviceError(f"device {d.serial} is offline: reconnect the cable or run `adb reconnect`")
        if d.state != "device":
            raise DeviceError(f"device {d.serial} is not ready (state: {d.state})")


def _getprop(client, serial: str, prop: str) -> str:
    try:
        return client.device(serial).shell(["getprop", prop], timeout=20).strip()
    except adb_errors() as e:
        raise DeviceError(f"cannot read {prop} from {serial}: {e}") from None


# ------------------------------------------------------------------------------------------
class AndroidDevice(Device):
    kind = "android"

    def __init__(self, client, serial: str, devices_file: Path | None = None) -> None:
        self.client, self.serial = client, serial
        self.dev = client.device(serial)
        self._aliases = al.load(devices_file)
        self._info: DeviceInfo | None = None
        self._scratch = f"{REMOTE_ROOT}/scratch"
        self._sampler_path: str | None = None
        self._seq = 0
        self._shell_v2: bool | None = None  # detected once: phones without it get the legacy shell
        self._sysroot: str | None = None

    # -- plumbing --------------------------------------------------------------------------
    def sh(self, cmd: str | list[str], timeout: float = 2 * IO_TIMEOUT) -> tuple[int, str]:
        """Run a shell command (a list is quoted element by element); (exit code, output)."""
        if isinstance(cmd, list):
            cmd = " ".join(shlex.quote(c) for c in cmd)
        try:
            r = self.dev.shell2(cmd, timeout=timeout, v2=self.shell_v2())
        except adb_errors() as e:
            raise DeviceLost(f"lost contact with {self.serial}: {error_line(e)}") from None
        return r.returncode, r.output

    def shell_v2(self) -> bool:
        """Whether the phone speaks the shell protocol v2 (separate stderr, exit codes): read once
        from the features adb learnt from its banner. Without it devprof uses the legacy shell
        quietly (adbutils would warn on every command it was asked for v2)."""
        if self._shell_v2 is None:
            try:
                features = self.dev.get_features()
            except adb_errors() as e:
                raise DeviceLost(f"lost contact with {self.serial}: {error_line(e)}") from None
            self._shell_v2 = "shell_v2" in {f.strip() for f in features.split(",")}
        return self._shell_v2

    def _check(self, cmd: str | list[str], what: str, timeout: float = 2 * IO_TIMEOUT) -> str:
        rc, out = self.sh(cmd, timeout)
        if rc != 0:
            raise DeviceError(f"{what} failed on {self.serial} (exit {rc}): {out.strip()[:200]}")
        return out

    # -- identity --------------------------------------------------------------------------
    def info(self) -> DeviceInfo:
        if self._info is None:
            props = self._props(["ro.product.model", "ro.product.manufacturer", "ro.build.version.release",
                                 "ro.build.version.sdk", "ro.product.cpu.abi", "ro.soc.model", "ro.product.name"])
            model = props.get("ro.product.model", "")
            mem_kb = None
            rc, meminfo = self.sh("cat /proc/meminfo", timeout=20)
            for line in meminfo.splitlines():
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
            disp = al.display_name("android", model, self._aliases)
            self._info = DeviceInfo(
                kind="android", serial=self.serial,
                name=f"{disp} ({model})" if disp != model else model, model=model,
                os_version=f"Android {props.get('ro.build.version.release', '?')}",
                memory_metric=memory.PEAK_RULE,
                extra={"abi": props.get("ro.product.cpu.abi", ""), "sdk": props.get("ro.build.version.sdk", ""),
                       "manufacturer": props.get("ro.product.manufacturer", ""),
                       "soc": props.get("ro.soc.model", ""), "mem_total_mb": round(mem_kb / 1024) if mem_kb else None,
                       "aliases": al.names_for("android", self.serial, model, self._aliases), "state": "device",
                       "adb_server": _endpoint_name(self.client)},
            )
        return self._info

    def _props(self, names: list[str]) -> dict[str, str]:
        script = "; ".join(f"echo {shlex.quote(n)}=$(getprop {shlex.quote(n)})" for n in names)
        _, out = self.sh(script, timeout=20)
        props = {}
        for line in out.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                props[k.strip()] = v.strip()
        return props

    @property
    def abi(self) -> str:
        return str(self.info().extra.get("abi", ""))

    @property
    def sysroot(self) -> str:
        """Where the phone's /sys and /proc files are read from: "/" on a real phone; the test daemon
        names its sandbox in the ``debug.devprof.sysroot`` property (devices/power.py)."""
        if self._sysroot is None:
            from devprof.devices.power import SYSROOT_PROP

            self._sysroot = self._props([SYSROOT_PROP]).get(SYSROOT_PROP) or "/"
        return self._sysroot

    @property
    def scratch_dir(self) -> str:
        return self._scratch

    # -- files -----------------------------------------------------------------------------
    def _remote_hashes(self, remote_dir: str, names: list[str]) -> dict[str, str]:
        """sha256 of files in one device folder, by file name (missing files are absent)."""
        if not names:
            return {}
        cmd = f"cd {shlex.quote(remote_dir)} && sha256sum " + " ".join(shlex.quote(n) for n in names) + " 2>/dev/null"
        _, out = self.sh(cmd, timeout=120)  # silent while it hashes: room for a slow phone
        found = {}
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and len(parts[0]) == 64:
                found[parts[1].strip().lstrip("*")] = parts[0]
        return found

    def stage(self, files: dict[str, Path], group: str) -> StageReport:
        remote_dir = f"{REMOTE_ROOT}/{group}"
        started = time.monotonic()
        self._check(["mkdir", "-p", remote_dir, self._scratch], "creating the devprof folder")
        local = {name: Path(p) for name, p in files.items()}
        for name, p in local.items():
            if not p.is_file():
                raise DeviceError(f"file to push does not exist: {p}")
        fname = {name: _remote_name(name, p) for name, p in local.items()}
        remote = {name: f"{remote_dir}/{fname[name]}" for name in local}
        want = {name: sha256_file(p) for name, p in local.items()}
        have = self._remote_hashes(remote_dir, list(fname.values()))
        report = StageReport(paths=dict(remote), remote_dir=remote_dir)
        need = sum(p.stat().st_size for name, p in local.items() if have.get(fname[name]) != want[name])
        if need:
            self._check_space(remote_dir, need)
        for name, p in local.items():
            dst = remote[name]
            if have.get(fname[name]) == want[name]:
                report.files_skipped += 1
                continue
            mode = 0o755 if (p.stat().st_mode & 0o111 or name == "__binary__") else 0o644
            self._push(p, dst, mode)
            got = self._remote_hashes(remote_dir, [fname[name]]).get(fname[name])
            if got != want[name]:
                self.sh(["rm", "-f", dst])
                raise DeviceError(f"push of {p.name} to {self.serial} is corrupt: sha256 on the device "
                                  f"{(got or 'missing')[:12]} != {want[name][:12]}; removed it, run again")
            if mode & 0o111:
                self._check(["chmod", "755", dst], f"chmod of {p.name}")
            report.files_pushed += 1
            report.bytes_pushed += p.stat().st_size
        report.seconds = time.monotonic() - started
        return report

    def mem_available_bytes(self) -> int | None:
        """The phone's /proc/meminfo MemAvailable in bytes (None if unreadable)."""
        rc, out = self.sh("cat /proc/meminfo", timeout=IO_TIMEOUT)
        return parse_meminfo_available(out) if rc == 0 else None

    def free_bytes(self, remote_dir: str) -> int | None:
        """Bytes free for devprof in the file system of ``remote_dir`` (``df -k``; None if unknown)."""
        rc, out = self.sh(f"df -k {shlex.quote(remote_dir)} 2>/dev/null", timeout=IO_TIMEOUT)
        return parse_df_available(out) if rc == 0 else None

    def _check_space(self, remote_dir: str, need: int) -> None:
        free = self.free_bytes(remote_dir)
        if free is not None and need > free:
            raise DeviceError(
                f"not enough space on {self.serial} in {REMOTE_ROOT}: {_mib(need)} to push, {_mib(free)} free; "
                f"free some space on the phone (old devprof bundles: adb -s {self.serial} shell rm -r {REMOTE_ROOT})")

    def _push(self, src: Path, dst: str, mode: int) -> None:
        """Push one file over the sync protocol, naming the phone's own reason when it refuses
        (adbutils reports a refusal as a bare "FAIL"). The socket times out after IO_TIMEOUT of
        silence, so a phone that hangs mid-transfer is lost, not waited on forever."""
        what = f"push of {src.name} to {self.serial}"
        sent_error: BaseException | None = None
        try:
            with self.dev.open_transport(timeout=IO_TIMEOUT) as c:
                c.send_command("sync:")
                c.check_okay()
                path = f"{dst},{stat_mod.S_IFREG | mode}".encode()
                c.conn.sendall(b"SEND" + struct.pack("<I", len(path)) + path)
                try:
                    with open(src, "rb") as f:
                        while True:
                            chunk = f.read(64 * 1024)
                            if not chunk:
                                break
                            c.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                    c.conn.sendall(b"DONE" + struct.pack("<I", int(time.time())))
                except (ConnectionError, BrokenPipeError) as e:
                    sent_error = e  # the phone may have refused and closed: its reason follows
                reply = c.read(8)
                if reply[:4] == b"OKAY":
                    return
                if reply[:4] == b"FAIL":
                    n = struct.unpack("<I", reply[4:8])[0]
                    reason = c.read(n).decode("utf-8", "replace").strip() if n else ""
                    raise DeviceError(f"{what} failed: the phone says {reason or 'FAIL (no reason given)'}")
                raise DeviceLost(f"{what} failed: unexpected reply {reply[:4]!r} from the phone")
        except DeviceError:
            raise
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not src.exists():
                raise DeviceError(f"file to push does not exist: {src}") from None
            raise DeviceLost(f"{what} failed: {error_line(sent_error or e)}") from None
        except adb_errors() as e:
            raise DeviceLost(f"{what} failed: {error_line(sent_error or e)}") from None

    def scratch_path(self, name: str) -> str:
        return f"{self._scratch}/{name}"

    def discard(self, device_path: str) -> None:
        try:
            self.sh(["rm", "-f", device_path], timeout=IO_TIMEOUT)
        except DeviceLost:
            pass

    def pull(self, device_path: str, local_path: Path) -> bool:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.dev.sync.stat(device_path).size == 0 and self.sh(["test", "-e", device_path])[0] != 0:
                return False
            self.dev.sync.pull(device_path, local_path)
        except adb_errors():
            return False
        return True

    def _read(self, device_path: str) -> str:
        rc, out = self.sh(["cat", device_path], timeout=2 * IO_TIMEOUT)
        return out if rc == 0 else ""

    # -- state -----------------------------------------------------------------------------
    def thermal(self) -> dict[str, float]:
        root = "" if self.sysroot == "/" else shlex.quote(self.sysroot.rstrip("/"))
        script = (f'for z in {root}/sys/class/thermal/thermal_zone*; do '
                  '[ -r "$z/temp" ] || continue; '
                  't=$(cat "$z/type" 2>/dev/null); v=$(cat "$z/temp" 2>/dev/null); echo "${z##*/} $t $v"; done')
        rc, out = self.sh(script, timeout=IO_TIMEOUT)
        zones = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].lstrip("-").isdigit():
                v = int(parts[2])
                zones[f"{parts[0]}:{parts[1]}"] = v / 1000.0 if abs(v) > 200 else float(v)
        return zones

    def cpu_features(self) -> set[str] | None:
        from devprof.bins import cpuinfo_flags

        rc, out = self.sh("cat /proc/cpuinfo", timeout=20)
        return cpuinfo_flags(out, ("features",)) if rc == 0 else None  # arm64 "Features"

    def cpu_freqs(self) -> dict[str, float]:
        root = "" if self.sysroot == "/" else shlex.quote(self.sysroot.rstrip("/"))
        script = (f'for f in {root}/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do '
                  '[ -r "$f" ] || continue; '
                  'c=${f%/cpufreq/*}; echo "${c##*/} $(cat "$f" 2>/dev/null)"; done')
        _, out = self.sh(script, timeout=IO_TIMEOUT)
        freqs = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                freqs[parts[0]] = int(parts[1]) / 1000.0
        return freqs

    def cpu_snapshot(self) -> dict | None:
        from devprof.interference import ANDROID_SNAPSHOT_CMD, snapshot_from_shell

        try:
            rc, out = self.sh(ANDROID_SNAPSHOT_CMD, timeout=20)
        except DeviceLost:
            return None
        return snapshot_from_shell(out) if rc == 0 else None

    def drop_page_cache(self, device_path: str) -> tuple[str, str]:
        # Needs root: `echo 1 > /proc/sys/vm/drop_caches`. Without it the cache state is unknown.
        rc, _ = self.sh("sync; echo 1 > /proc/sys/vm/drop_caches", timeout=2 * IO_TIMEOUT)
        if rc == 0:
            return "cold", "drop_caches (root)"
        return "unknown", "cannot drop the page cache without root"

    # -- running ---------------------------------------------------------------------------
    def _ensure_sampler(self) -> str:
        if self._sampler_path is None:
            rep = self.stage({"sampler.sh": SAMPLER}, "tools")
            self._sampler_path = rep.paths["sampler.sh"]
        return self._sampler_path

    def run(self, req: RunRequest) -> ProcessOutcome:
        sampler = self._ensure_sampler()
        self._seq += 1
        base = f"{self._scratch}/run{self._seq}-{int(time.time() * 1000)}"
        cmd = _sampled_command(req, sampler, base)
        result: dict = {}
        v2 = self.shell_v2()

        def _go() -> None:
            try:
                r = self.dev.shell2(cmd, timeout=req.timeout_s + 60, v2=v2)
                result["rc"] = r.returncode
            except BaseException as e:  # noqa: BLE001 - reported as the outcome
                result["error"] = e

        silent = Probe(self.dev, sampler)
        start_wall = time.time() * 1000.0
        t0 = time.monotonic()
        th = threading.Thread(target=_go, daemon=True)
        th.start()
        silent.start()
        def finished(poll_s: float) -> bool:
            th.join(poll_s)
            return not th.is_alive()

        try:
            status, note = wait_for_exit(finished, req, t0, 0.1, gone=silent.gone)
        finally:
            silent.stop()
        wall_ms = (time.monotonic() - t0) * 1000.0

        def lost(why: str) -> ProcessOutcome:
            return ProcessOutcome(exit_code=None, stdout="", stderr="", start_wall_ms=start_wall,
                                  wall_ms=(time.monotonic() - t0) * 1000.0, status="lost", note=why)

        if status == "lost":
            return lost(f"{self.serial} stopped answering ({silent.why})")
        if status != "ok":
            if not self._kill_remote(base):
                # the phone did not answer the kill either: it is gone (frozen adbd, hung USB)
                return lost(f"{self.serial} stopped answering ({note}; the kill got no answer "
                            f"within {IO_TIMEOUT:g} s)")
            th.join(5)
        if "error" in result and status == "ok":
            return lost(f"lost contact with {self.serial} during the run: {error_line(result['error'])}")
        try:
            stdout, stderr, mem = self._collect(base)
        except DeviceLost as e:
            return lost(e.message)
        samples, dev_start_wall, end_rc = parse_sampler_output(mem)
        rc = result.get("rc", end_rc)
        exit_code = rc
        if status == "ok":
            exit_code, status, note = self._exit_status(rc, mem, samples, note)
        peak, parts = memory.android_peak(samples)
        from devprof.interference import sampler_cpu_seconds

        return ProcessOutcome(cpu_s=sampler_cpu_seconds(mem),
            exit_code=exit_code if status not in ("interrupted", "timeout") else None, stdout=stdout, stderr=stderr,
            start_wall_ms=dev_start_wall if dev_start_wall else start_wall, wall_ms=wall_ms, samples=samples,
            peak_rss_kb=peak, memory_metric=memory.PEAK_RULE, status=status,
            note=note or (f"peak is {memory.PEAK_RULE} over the samples ({parts['won']} won)" if peak else ""),
            memory={"meminfo_before": memory.sampler_meminfo(mem), "peak": parts},
        )

    def _collect(self, base: str) -> tuple[str, str, str]:
        """The run's stdout, stderr and sampler output, removed from the device once read."""
        stdout, stderr, mem = self._read(base + ".stdout"), self._read(base + ".stderr"), self._read(base + ".mem")
        self.sh(["rm", "-f", base + ".stdout", base + ".stderr", base + ".mem", base + ".pid"], timeout=IO_TIMEOUT)
        return stdout, stderr, mem

    def _exit_status(self, rc: int | None, mem: str, samples: list[MemorySample], note: str) -> tuple[int | None, str, str]:
        """Exit code, status and note of a runtime that exited by itself (signal, LMK, exit code, ok)."""
        if rc is not None and 128 < rc < 128 + 65:
            # the on-device shell reports a runtime killed by signal N as 128 + N
            sig = rc - 128
            status, note = "failed", killed_by(sig)
            if sig == 9:
                evidence = self._lmk_evidence(sampler_pid(mem), samples)
                if evidence:
                    status, note = "oom", f"{note} by the low-memory killer ({evidence})"
            return -sig, status, note
        if rc not in (0, None):
            return rc, "failed", f"exit code {rc}"
        return rc, "ok", note

    def _lmk_evidence(self, pid: int | None, samples: list[MemorySample]) -> str:
        """The low-memory killer's record of killing ``pid`` (lmkd's lines in the main log,
        killinfo/lmk_kill in the events log), or memory near the phone's limit; "" when none."""
        logs = []
        for cmd in ("logcat -d -b events 2>/dev/null | grep -iE 'killinfo|lmk_kill|am_kill|lowmemory' | tail -n 200",
                    "logcat -d -s lowmemorykiller lmkd 2>/dev/null | tail -n 200"):
            try:
                _, out = self.sh(cmd, timeout=IO_TIMEOUT)
            except DeviceLost:
                break
            logs.append(out)
        line = find_lmk_record("\n".join(logs), pid) if pid else ""
        if line:
            return f"logcat: {line[:160]}"
        total_mb = self.info().extra.get("mem_total_mb")
        if samples and total_mb and samples[-1].rss_kb / 1024 >= 0.85 * total_mb:
            return f"last sampled RSS {samples[-1].rss_kb / 1024:.0f} MiB of {total_mb} MiB"
        return ""

    def _kill_remote(self, base: str) -> bool:
        """Kill the runtime started by the sampler; False when the phone does not answer."""
        try:
            self.sh(f"p=$(cat {shlex.quote(base + '.pid')} 2>/dev/null) && kill -9 \"$p\"", timeout=IO_TIMEOUT)
        except DeviceLost:
            return False
        return True

    def close(self) -> None:
        pass


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _remote_name(name: str, p: Path) -> str:
    return p.name if name == "__binary__" else name


def _sampled_command(req: RunRequest, sampler: str, base: str) -> str:
    """The shell command: the sampler script running the request's argv, its files at `base`."""
    argv = list(req.argv)
    if req.cpu_mask:
        argv = ["taskset", req.cpu_mask, *argv]
    if req.env:
        argv = ["env", *[f"{k}={v}" for k, v in req.env.items()], *argv]
    interval = f"{req.sample_ms / 1000:.3f}" if req.sample_ms > 0 else "0"
    cmd = " ".join(shlex.quote(a) for a in ["sh", sampler, base, interval, *argv])
    if req.cwd:
        cmd = f"cd {shlex.quote(req.cwd)} && {cmd}"
    return cmd
