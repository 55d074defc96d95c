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
import threading
import time
from pathlib import Path

from devprof.devices import aliases as al
from devprof.devices.base import Device, RunRequest, StageReport
from devprof.errors import DeviceError, DeviceLost, UsageError
from devprof.hashing import sha256_file
from devprof.results import DeviceInfo, MemorySample, ProcessOutcome

REMOTE_ROOT = "/data/local/tmp/devprof"
SAMPLER = Path(__file__).with_name("sampler.sh")


def _client(adb_server: str | None):
    import adbutils

    if adb_server:
        host, _, port = adb_server.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--adb-server must be HOST:PORT, got {adb_server!r}")
        return adbutils.AdbClient(host=host, port=int(port))
    return adbutils.AdbClient()


def _adb_errors():
    import adbutils

    return (adbutils.AdbError, ConnectionError, OSError, TimeoutError, EOFError)


# ------------------------------------------------------------------------------------------
# discovery and resolution (the backend's module-level interface, see devices/__init__.py)

last_errors: list[str] = []


def _list(adb_server: str | None):
    """(client, [AdbDeviceInfo]) or (None, []) when no adb server answers."""
    client = _client(adb_server)
    try:
        return client, client.list()
    except _adb_errors() as e:
        last_errors[:] = [f"adb server at {client.host}:{client.port} not reachable ({e})"]
        return None, []


def discover(adb_server: str | None = None, devices_file: Path | None = None, **_) -> list[DeviceInfo]:
    client, listed = _list(adb_server)
    out = []
    for d in listed:
        if d.state == "device":
            try:
                out.append(AndroidDevice(client, d.serial, devices_file=devices_file).info())
                continue
            except DeviceError:
                pass
        out.append(DeviceInfo(kind="android", serial=d.serial, name="", model="",
                              extra={"state": d.state}))
    return out


def resolve(spec: str, adb_server: str | None = None, devices_file: Path | None = None, **_) -> list["AndroidDevice"]:
    """Devices matching ``spec``: all | serial | alias. Raises DeviceError when the spec clearly
    meant an Android phone that cannot be used; returns [] when nothing Android matches."""
    last_errors.clear()
    client, listed = _list(adb_server)
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
    except _adb_errors() as e:
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

    # -- plumbing --------------------------------------------------------------------------
    def sh(self, cmd: str | list[str], timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command (a list is quoted element by element); (exit code, output)."""
        if isinstance(cmd, list):
            cmd = " ".join(shlex.quote(c) for c in cmd)
        try:
            r = self.dev.shell2(cmd, timeout=timeout, v2=True)
        except _adb_errors() as e:
            raise DeviceLost(f"lost contact with {self.serial}: {_why(e)}") from None
        return r.returncode, r.output

    def _check(self, cmd: str | list[str], what: str, timeout: float = 60.0) -> str:
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
                memory_metric="VmHWM",
                extra={"abi": props.get("ro.product.cpu.abi", ""), "sdk": props.get("ro.build.version.sdk", ""),
                       "manufacturer": props.get("ro.product.manufacturer", ""),
                       "soc": props.get("ro.soc.model", ""), "mem_total_mb": round(mem_kb / 1024) if mem_kb else None,
                       "aliases": al.names_for("android", self.serial, model, self._aliases), "state": "device"},
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

    # -- files -----------------------------------------------------------------------------
    def _remote_hashes(self, remote_dir: str, names: list[str]) -> dict[str, str]:
        """sha256 of files in one device folder, by file name (missing files are absent)."""
        if not names:
            return {}
        cmd = f"cd {shlex.quote(remote_dir)} && sha256sum " + " ".join(shlex.quote(n) for n in names) + " 2>/dev/null"
        _, out = self.sh(cmd, timeout=600)
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
        for name, p in local.items():
            dst = remote[name]
            if have.get(fname[name]) == want[name]:
                report.files_skipped += 1
                continue
            mode = 0o755 if (p.stat().st_mode & 0o111 or name == "__binary__") else 0o644
            try:
                self.dev.sync.push(p, dst, mode=mode)
            except _adb_errors() as e:
                raise DeviceLost(f"push of {p.name} to {self.serial} failed: {e}") from None
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

    def scratch_path(self, name: str) -> str:
        return f"{self._scratch}/{name}"

    def pull(self, device_path: str, local_path: Path) -> bool:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.dev.sync.stat(device_path).size == 0 and self.sh(["test", "-e", device_path])[0] != 0:
                return False
            self.dev.sync.pull(device_path, local_path)
        except _adb_errors():
            return False
        return True

    def _read(self, device_path: str) -> str:
        rc, out = self.sh(["cat", device_path], timeout=120)
        return out if rc == 0 else ""

    # -- state -----------------------------------------------------------------------------
    def thermal(self) -> dict[str, float]:
        script = ('for z in /sys/class/thermal/thermal_zone*; do [ -r "$z/temp" ] || continue; '
                  't=$(cat "$z/type" 2>/dev/null); v=$(cat "$z/temp" 2>/dev/null); echo "${z##*/} $t $v"; done')
        rc, out = self.sh(script, timeout=20)
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
        script = ('for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do [ -r "$f" ] || continue; '
                  'c=${f%/cpufreq/*}; echo "${c##*/} $(cat "$f" 2>/dev/null)"; done')
        _, out = self.sh(script, timeout=20)
        freqs = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                freqs[parts[0]] = int(parts[1]) / 1000.0
        return freqs

    def drop_page_cache(self, device_path: str) -> tuple[str, str]:
        # Needs root: `echo 1 > /proc/sys/vm/drop_caches`. Without it the cache state is unknown.
        rc, _ = self.sh("sync; echo 1 > /proc/sys/vm/drop_caches", timeout=60)
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
        argv = list(req.argv)
        if req.cpu_mask:
            argv = ["taskset", req.cpu_mask, *argv]
        if req.env:
            argv = ["env", *[f"{k}={v}" for k, v in req.env.items()], *argv]
        interval = f"{req.sample_ms / 1000:.3f}" if req.sample_ms > 0 else "0"
        cmd = " ".join(shlex.quote(a) for a in ["sh", sampler, base, interval, *argv])
        if req.cwd:
            cmd = f"cd {shlex.quote(req.cwd)} && {cmd}"
        result: dict = {}

        def _go() -> None:
            try:
                r = self.dev.shell2(cmd, timeout=req.timeout_s + 60, v2=True)
                result["rc"] = r.returncode
            except BaseException as e:  # noqa: BLE001 - reported as the outcome
                result["error"] = e

        start_wall = time.time() * 1000.0
        t0 = time.monotonic()
        th = threading.Thread(target=_go, daemon=True)
        th.start()
        status, note = "ok", ""
        try:
            while th.is_alive():
                th.join(0.1)
                if req.cancel is not None and req.cancel.is_set():
                    status, note = "interrupted", "stopped by the user"
                    break
                if time.monotonic() - t0 > req.timeout_s:
                    status, note = "timeout", f"killed after the {req.timeout_s:g} s timeout"
                    break
        except KeyboardInterrupt:
            status, note = "interrupted", "stopped by the user (Ctrl-C)"
        if status != "ok":
            self._kill_remote(base)
            th.join(10)
        wall_ms = (time.monotonic() - t0) * 1000.0
        if "error" in result and status == "ok":
            err = result["error"]
            return ProcessOutcome(exit_code=None, stdout="", stderr="", start_wall_ms=start_wall, wall_ms=wall_ms,
                                  status="lost", note=f"lost contact with {self.serial} during the run: {_why(err)}")
        try:
            stdout, stderr, mem = self._read(base + ".stdout"), self._read(base + ".stderr"), self._read(base + ".mem")
            self.sh(["rm", "-f", base + ".stdout", base + ".stderr", base + ".mem", base + ".pid"], timeout=20)
        except DeviceLost as e:
            return ProcessOutcome(exit_code=None, stdout="", stderr="", start_wall_ms=start_wall, wall_ms=wall_ms,
                                  status="lost", note=e.message)
        samples, dev_start_wall, end_rc = parse_sampler_output(mem)
        rc = result.get("rc", end_rc)
        if status == "ok":
            if rc == 137 or (rc is not None and rc < 0 and rc == -9):
                status, note = "oom", "killed by signal 9 (low-memory killer?)"
                if samples:
                    note += f"; last sampled RSS {samples[-1].rss_kb / 1024:.0f} MiB"
            elif rc not in (0, None):
                status, note = "failed", f"exit code {rc}"
        hwm = [s.hwm_kb for s in samples if s.hwm_kb]
        return ProcessOutcome(
            exit_code=rc if status not in ("interrupted", "timeout") else None, stdout=stdout, stderr=stderr,
            start_wall_ms=dev_start_wall if dev_start_wall else start_wall, wall_ms=wall_ms, samples=samples,
            peak_rss_kb=max(hwm) if hwm else None, memory_metric="VmHWM", status=status,
            note=note or ("peak is the last sampled VmHWM" if hwm else ""),
        )

    def _kill_remote(self, base: str) -> None:
        try:
            self.sh(f"p=$(cat {shlex.quote(base + '.pid')} 2>/dev/null) && kill -9 \"$p\"", timeout=20)
        except DeviceLost:
            pass

    def close(self) -> None:
        pass


def _why(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "the adb connection closed (device unplugged or adbd gone?)"
    return str(e) or type(e).__name__


def _remote_name(name: str, p: Path) -> str:
    return p.name if name == "__binary__" else name


def parse_sampler_output(text: str) -> tuple[list[MemorySample], float | None, int | None]:
    """Parse sampler.sh's OUT.mem: (samples, device wall clock at start in ms, exit code)."""
    samples: list[MemorySample] = []
    up0 = None
    wall0 = None
    rc = None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "start" and len(parts) >= 2:
            up0 = _float(parts[1])
            if len(parts) >= 3 and parts[2].isdigit() and len(parts[2]) > 12:
                wall0 = int(parts[2]) / 1e6
            continue
        if parts[0] == "end":
            if len(parts) >= 3 and parts[2].lstrip("-").isdigit():
                rc = int(parts[2])
            continue
        t = _float(parts[0])
        if t is None or up0 is None:
            continue
        vals = {}
        for item in parts[1:]:
            k, _, v = item.partition(":")
            if v.isdigit():
                vals[k] = int(v)
        if "VmRSS" not in vals:
            continue
        samples.append(MemorySample(t_ms=round((t - up0) * 1000.0, 1), rss_kb=vals["VmRSS"], anon_kb=vals.get("RssAnon"),
                                    file_kb=vals.get("RssFile"), hwm_kb=vals.get("VmHWM")))
    return samples, wall0, rc


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
