"""The embedded default device: this host.

Processes are started with subprocess in their own process group, sampled from
``/proc/PID/status`` by a thread that keeps the file open and re-reads it with pread (the way
Perfetto's poller does), and reaped with ``os.wait4`` so that the kernel's own peak resident set
(ru_maxrss, the VmHWM at exit) is kept even though /proc/PID is gone by then.

One catch, found by ``devprof bench``: at exec the kernel folds the high-water mark of the
process's pre-exec memory (a copy of devprof's own) into ru_maxrss (``exec_mmap`` ->
``setmax_mm_hiwater_rss``), so a child smaller than devprof reports devprof's VmHWM (measured:
every MobileMoE-S-mini run "peaked" at exactly the bench process's 517 MiB, against 430 MiB
under ``/usr/bin/time -v``). So ru_maxrss is the peak only when it is above devprof's own
VmHWM at spawn; otherwise the peak is the last sampled VmHWM (the exec'd image's own mark,
which the kernel keeps, so no sample can miss a spike before it).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil

from devprof import memory
from devprof.devices.base import Device, RunRequest, StageReport, wait_for_exit
from devprof.errors import DeviceError, killed_by
from devprof.files import evict as evict_file, state as file_cache_state
from devprof.results import DeviceInfo, MemorySample, ProcessOutcome

_STATUS_RX = re.compile(rb"^(VmRSS|RssAnon|RssFile|VmHWM|RssShmem|VmSwap):\s+(\d+)", re.M)
_FIELDS = {b"VmRSS": "rss", b"RssAnon": "anon", b"RssFile": "file", b"VmHWM": "hwm", b"RssShmem": "shmem",
           b"VmSwap": "swap"}


def parse_status(raw: bytes) -> dict[str, int]:
    """Pick VmRSS/RssAnon/RssFile/VmHWM/RssShmem/VmSwap (kB) out of /proc/PID/status text (one regex
    pass: 8 us a sample against 21 us splitting every line; the sampler's cost is what it steals)."""
    return {_FIELDS[k]: int(v) for k, v in _STATUS_RX.findall(raw)}


def _own_vmhwm_kb() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            return parse_status(f.read()).get("hwm")
    except OSError:
        return None


def exit_peak_kb(maxrss: int | None, own_hwm_kb: int | None,
                 samples: list[MemorySample]) -> tuple[int | None, str]:
    """The process's peak RSS (kB) and, when it is not the kernel's exit figure, why.

    ``maxrss`` is wait4's ru_maxrss; it holds the spawning process's VmHWM (``own_hwm_kb``,
    read just before the spawn) as a floor, inherited at exec, so it is the child's own peak
    only above that floor, and then the peak is the larger of it and every sampled VmHWM (the
    two are read at different moments and can differ by a few pages). Below it, the highest
    sampled VmHWM (or RSS) is the peak; with no samples there is none to report."""
    sampled = max((s.hwm_kb or s.rss_kb for s in samples), default=None)
    if maxrss and (own_hwm_kb is None or maxrss > own_hwm_kb):
        return max(int(maxrss), sampled or 0), ""  # every VmHWM seen: exit figure and samples
    floor = f"ru_maxrss is devprof's own {(own_hwm_kb or 0) / 1024:.0f} MiB inherited at exec"
    if sampled is not None:
        return sampled, f"peak from the sampled VmHWM ({floor})"
    return None, f"no peak: {floor} and sampling was off"


class StatusSampler(threading.Thread):
    """Reads /proc/PID/status every ``interval_ms`` until stopped or the process is gone."""

    def __init__(self, pid: int, interval_ms: int, t0: float) -> None:
        super().__init__(daemon=True, name=f"sampler-{pid}")
        self.pid, self.interval, self.t0 = pid, interval_ms / 1000.0, t0
        self.samples: list[MemorySample] = []
        self.cpu_s = 0.0  # CPU time this thread spent sampling: the sampler's own cost
        self._stop_evt = threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()

    def run(self) -> None:
        try:
            fd = os.open(f"/proc/{self.pid}/status", os.O_RDONLY)
        except OSError:
            return
        extra = _ExtraFiles(self.pid)
        c0 = time.thread_time()
        try:
            nxt = time.monotonic()
            while not self._stop_evt.is_set():
                try:
                    raw = os.pread(fd, 8192, 0)
                except OSError:
                    break
                now = time.monotonic()
                v = parse_status(raw)
                if "rss" not in v:  # a zombie: memory fields are gone
                    break
                sample = MemorySample(
                    t_ms=round((now - self.t0) * 1000.0, 3), rss_kb=v["rss"], anon_kb=v.get("anon"),
                    file_kb=v.get("file"), hwm_kb=v.get("hwm"), shmem_kb=v.get("shmem"), swap_kb=v.get("swap"))
                extra.fill(sample)
                self.samples.append(sample)
                nxt += self.interval
                delay = nxt - time.monotonic()
                if delay < 0:  # fell behind (machine busy): skip, don't burst
                    nxt = time.monotonic()
                    delay = 0
                self._stop_evt.wait(delay)
        finally:
            os.close(fd)
            extra.close()
            self.cpu_s = time.thread_time() - c0


class _ExtraFiles:
    """The sampler's other reads: /proc/PID/stat (page faults) and /proc/PID/io (storage reads) every
    sample; /proc/PID/smaps_rollup and /proc/meminfo on devprof.memory's cadence (smaps_rollup walks
    the page tables: costly)."""

    def __init__(self, pid: int) -> None:
        self.fds: dict[str, int] = {}
        for name, path in (("stat", f"/proc/{pid}/stat"), ("io", f"/proc/{pid}/io"), ("meminfo", "/proc/meminfo")):
            try:
                self.fds[name] = os.open(path, os.O_RDONLY)
            except OSError:
                continue
        # opened per read: a descriptor of smaps_rollup keeps the address space it was opened on,
        # which an exec replaces (status and stat follow the process)
        self.smaps_path = f"/proc/{pid}/smaps_rollup"
        self.cadence = memory.SmapsCadence()

    def _read(self, name: str, size: int = 4096) -> bytes:
        try:
            return os.pread(self.fds[name], size, 0) if name in self.fds else b""
        except OSError:
            return b""

    def fill(self, s: MemorySample) -> None:
        f = memory.parse_stat_faults(self._read("stat", 2048))
        s.minflt, s.majflt = f.get("minflt"), f.get("majflt")
        io = memory.parse_io(self._read("io", 1024))
        s.read_kb = io["read_bytes"] // 1024 if io else None
        t = time.monotonic()
        if not self.cadence.due(t):
            return
        try:
            with open(self.smaps_path, "rb") as f:
                sm = memory.parse_smaps_rollup(f.read())
        except OSError:
            sm = {}
        mi = memory.parse_meminfo(self._read("meminfo", 8192))
        self.cadence.done(t, time.monotonic())
        s.pss_kb, s.pss_anon_kb, s.pss_file_kb = sm.get("Pss"), sm.get("Pss_Anon"), sm.get("Pss_File")
        s.smaps_swap_kb, s.swap_pss_kb = sm.get("Swap"), sm.get("SwapPss")
        s.mem_available_kb, s.swap_free_kb = mi.get("MemAvailable"), mi.get("SwapFree")

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


class LocalDevice(Device):
    kind = "local"

    def __init__(self, scratch_dir: Path | None = None) -> None:
        self._scratch = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="devprof-local-"))
        self._own_scratch = scratch_dir is None

    # -- identity ------------------------------------------------------------------------
    def info(self) -> DeviceInfo:
        cpu = _cpu_model()
        vm = psutil.virtual_memory()
        return DeviceInfo(
            kind="local", serial="local", name=socket.gethostname(), model=cpu,
            os_version=f"{platform.system()} {platform.release()}", memory_metric="VmHWM",
            extra={
                "cpu_count": os.cpu_count(), "mem_total_mb": round(vm.total / 2**20),
                "python": platform.python_version(), "machine": platform.machine(),
            },
        )

    # -- files -----------------------------------------------------------------------------
    def stage(self, files: dict[str, Path], group: str) -> StageReport:
        """Local files are already here: nothing is copied."""
        paths = {}
        for name, p in files.items():
            if not Path(p).exists():
                raise DeviceError(f"file to stage does not exist: {p}")
            paths[name] = str(Path(p).resolve())
        return StageReport(paths=paths, files_skipped=len(files), remote_dir="")

    def scratch_path(self, name: str) -> str:
        self._scratch.mkdir(parents=True, exist_ok=True)
        return str(self._scratch / name)

    def pull(self, device_path: str, local_path: Path) -> bool:
        src = Path(device_path)
        if not src.exists():
            return False
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != local_path.resolve():
            shutil.move(str(src), str(local_path))
        return True

    def discard(self, device_path: str) -> None:
        try:
            Path(device_path).unlink(missing_ok=True)
        except OSError:
            pass

    def drop_page_cache(self, device_path: str) -> tuple[str, str]:
        return evict_file(device_path)

    def cache_state(self, device_path: str) -> tuple[str, str]:
        return file_cache_state(device_path)

    # -- state -----------------------------------------------------------------------------
    def cpu_features(self) -> set[str] | None:
        from devprof.bins import cpuinfo_flags

        try:
            return cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            return None

    def thermal(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
            try:
                name = (zone / "type").read_text().strip() or zone.name
                out[f"{zone.name}:{name}"] = int((zone / "temp").read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
        return out

    def cpu_freqs(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
            try:
                out[f.parent.parent.name] = int(f.read_text().strip()) / 1000.0
            except (OSError, ValueError):
                continue
        return out

    def cpu_snapshot(self) -> dict | None:
        from devprof.interference import local_snapshot

        return local_snapshot()

    # -- running ---------------------------------------------------------------------------
    def run(self, req: RunRequest) -> ProcessOutcome:
        argv = _pinned_argv(req)
        env = {**os.environ, **req.env}
        own_hwm = _own_vmhwm_kb()
        meminfo_before = _meminfo()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start_wall = time.time() * 1000.0
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        env=env, cwd=req.cwd, start_new_session=True)
            except OSError as e:
                raise DeviceError(f"cannot start {argv[0]}: {e.strerror}") from None
            oom_files = oom_counter_files(proc.pid)
            oom_before = read_oom_counters(oom_files)
            sampler = StatusSampler(proc.pid, req.sample_ms, t0) if req.sample_ms > 0 else None
            if sampler:
                sampler.start()
            waited, done = _reap_in_background(proc.pid)
            status, note = wait_for_exit(done.wait, req, t0, 0.05)
            if status != "ok":
                _kill_group(proc.pid, done)
            done.wait(10)
            wall_ms = (time.monotonic() - t0) * 1000.0
            if sampler:
                sampler.stop()
                sampler.join(2)
            raw_status = waited.get("status")
            exit_code = None
            if raw_status is not None:
                exit_code = os.waitstatus_to_exitcode(raw_status)
            proc.returncode = exit_code if exit_code is not None else -9  # we reaped it ourselves
            if status == "ok":
                status, note = _exit_status(exit_code, oom_files, oom_before, note)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        samples = sampler.samples if sampler else []
        peak, why = exit_peak_kb(waited.get("maxrss"), own_hwm, samples)
        if why:
            note = f"{note}; {why}" if note else why
        if status == "oom" and samples:
            note += f"; last sampled RSS {samples[-1].rss_kb / 1024:.0f} MiB"
        return ProcessOutcome(
            exit_code=exit_code if status not in ("interrupted", "timeout") else None,
            stdout=stdout, stderr=stderr, start_wall_ms=start_wall, wall_ms=wall_ms,
            samples=samples, peak_rss_kb=peak, memory_metric="VmHWM", status=status, note=note,
            sampler_cpu_s=sampler.cpu_s if sampler else None, cpu_s=waited.get("cpu_s"),
            memory={"meminfo_before": meminfo_before},
        )

    def close(self) -> None:
        if self._own_scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


# ---- out-of-memory evidence: the kernel's own OOM-kill counters ---------------------------------

def _cgroup_mounts() -> tuple[str | None, str | None, str, str]:
    """(cgroup2 mount point, cgroup v1 memory mount point, their mount roots) from mountinfo."""
    v2 = v1 = None
    v2_root = v1_root = "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, None, "/", "/"
    for line in lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        if r[0] == "cgroup2" and v2 is None:
            v2, v2_root = f[4], f[3]
        elif r[0] == "cgroup" and "memory" in r[2].split(",") and v1 is None:
            v1, v1_root = f[4], f[3]
    return v2, v1, v2_root, v1_root


def _under(mount: str, root: str, cg_path: str) -> Path:
    rel = cg_path
    if root != "/" and (rel == root or rel.startswith(root + "/")):
        rel = rel[len(root):]
    return Path(mount) / rel.lstrip("/")


def oom_counter_files(pid: int) -> list[Path]:
    """The files whose ``oom_kill`` count covers ``pid``: its memory cgroup's (v2 memory.events,
    v1 memory.oom_control), found from /proc/PID/cgroup (devprof's own when the process is gone:
    a child starts in its parent's cgroup), and the system-wide /proc/vmstat last."""
    text = ""
    for who in (str(pid), "self"):
        try:
            text = Path(f"/proc/{who}/cgroup").read_text()
            break
        except OSError:
            continue
    v2, v1, v2_root, v1_root = _cgroup_mounts()
    files: list[Path] = []
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, cg_path = rest.partition(":")
        if hid == "0" and ctrls == "" and v2:
            f = _under(v2, v2_root, cg_path) / "memory.events"
        elif "memory" in ctrls.split(",") and v1:
            f = _under(v1, v1_root, cg_path) / "memory.oom_control"
        else:
            continue
        if f.is_file():
            files.append(f)
    files.append(Path("/proc/vmstat"))
    return files


def read_oom_counters(files: list[Path]) -> dict[str, int]:
    """``oom_kill`` of each readable file, by path."""
    out: dict[str, int] = {}
    for f in files:
        try:
            for line in f.read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and v.strip().isdigit():
                    out[str(f)] = int(v)
        except OSError:
            continue
    return out


def oom_evidence(files: list[Path], before: dict[str, int], after: dict[str, int]) -> str:
    """Why a SIGKILL was the OOM killer's, or "" when no counter says so. The process's own cgroup
    counters decide when there are any; the system-wide count only when no cgroup one is readable."""
    cgroup = [str(f) for f in files if str(f) != "/proc/vmstat" and str(f) in before and str(f) in after]
    for key in cgroup or [k for k in ("/proc/vmstat",) if k in before and k in after]:
        if after[key] > before[key]:
            return f"{key} oom_kill {before[key]} -> {after[key]}"
    return ""


def _kill_group(pid: int, done: threading.Event) -> None:
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if done.wait(wait):
            return


def _meminfo() -> dict[str, int]:
    try:
        return memory.parse_meminfo(Path("/proc/meminfo").read_bytes())
    except OSError:
        return {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pinned_argv(req: RunRequest) -> list[str]:
    """The request's argv, under `taskset` when it asks for a CPU mask."""
    argv = list(req.argv)
    if req.cpu_mask:
        if not shutil.which("taskset"):
            raise DeviceError("--cpu-mask needs `taskset` (util-linux) on this host")
        argv = ["taskset", req.cpu_mask, *argv]
    return argv


def _reap_in_background(pid: int) -> tuple[dict, threading.Event]:
    """Wait for the child on a thread (wait4: its exit status, peak RSS and CPU time); the event
    is set once it is reaped."""
    waited: dict = {}
    done = threading.Event()

    def _reap() -> None:
        _, status, usage = os.wait4(pid, 0)
        waited.update(status=status, maxrss=usage.ru_maxrss, cpu_s=usage.ru_utime + usage.ru_stime)
        done.set()

    threading.Thread(target=_reap, daemon=True).start()
    return waited, done


def _exit_status(exit_code: int | None, oom_files, oom_before, note: str) -> tuple[str, str]:
    """The status of a process that exited by itself: killed by a signal (by the OOM killer when
    its counters moved), a non-zero exit code, or ok."""
    if exit_code is not None and exit_code < 0:
        status, note = "failed", killed_by(-exit_code)
        if exit_code == -signal.SIGKILL:
            evidence = oom_evidence(oom_files, oom_before, read_oom_counters(oom_files))
            if evidence:
                status, note = "oom", f"{note} by the kernel's OOM killer ({evidence})"
        return status, note
    if exit_code not in (0, None):
        return "failed", f"exit code {exit_code}"
    return "ok", note
