"""One run on an iPhone: DVT process control launches the benchmark app with the runtime's arguments,
sysmontap samples its memory, output events become stdout, the app's result file is read back; exit,
crash, timeout, cancel and a vanished device each give their own status. :class:`IosRun` is the part
of :class:`~devprof.devices.ios.device.IosDevice` that does it (on the device's event loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from devprof.devices.base import RunRequest
import devprof.devices.ios.app as A
import devprof.devices.ios.pmd3 as M
from devprof.errors import DeviceError, DeviceLost
from devprof.results import MemorySample, ProcessOutcome



MEMORY_METRIC = "physFootprint"
#: sysmontap process attributes devprof asks for ("pid" first: rows are matched by it)
SYSMON_ATTRS = ["pid", "name", "physFootprint", "memResidentSize", "memAnon"]


#: iOS samples: ``rss_kb`` = memResidentSize (resident pages, file-backed and shared included, like
#: VmRSS), ``anon_kb`` = memAnon (like RssAnon), ``footprint_kb`` = physFootprint (dirty +
#: compressed, what Xcode's gauge and jetsam limits use); ``file_kb``/``hwm_kb`` = None (sysmontap
#: has no file-backed resident figure and no per-sample high-water mark).
IosMemorySample = MemorySample


def kb(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) // 1024


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except (ValueError, TypeError):
        return f"signal {sig}"


def same_udid(a: str, b: str) -> bool:
    return bool(a) and bool(b) and a.replace("-", "").upper() == b.replace("-", "").upper()


@dataclass
class _RunState:
    pid: int | None = None
    t0: float = 0.0
    chunks: list[tuple[int, str]] = field(default_factory=list)
    samples: list[IosMemorySample] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    terminated: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    output_error: BaseException | None = None
    sampler_error: BaseException | None = None
    interrupted: threading.Event = field(default_factory=threading.Event)
    ctrl_c: bool = False
    interval: int = 0  # the sysmontap interval asked for (ms)
    t_end: float = 0.0  # when the exit was seen (monotonic)


class IosRun:
    """The run methods of IosDevice (its connections, event loop and settings come from there)."""

    def sample_interval(self, sample_ms: int) -> tuple[int, str]:
        """The sysmontap interval for a requested one, and a note when it had to change."""
        lo = int(getattr(self._P.Sysmontap, "MINIMUM_INTERVAL_MS", 1) or 1)
        if 0 < sample_ms < lo:
            return lo, f"sysmontap interval raised from {sample_ms} ms to its minimum {lo} ms (Sysmontap.MINIMUM_INTERVAL_MS)"
        return sample_ms, ""

    def run(self, req: RunRequest) -> ProcessOutcome:
        bundle_id, args, runtime = A.split_argv(list(req.argv), self.bundle_id)
        run_id = uuid.uuid4().hex[:16]
        result_rel = f"{A.RESULTS_DIR}/{run_id}.json"
        interval, inote = self.sample_interval(req.sample_ms)
        notes = [inote] if inote else []
        if req.cpu_mask:
            notes.append(f"cpu mask {req.cpu_mask} ignored: iOS apps cannot be pinned to cores")
        if req.cwd:
            notes.append("cwd ignored: the app runs in its container (relative paths resolve against Documents)")
        env = {**A.BASE_ENV, **{str(k): str(v) for k, v in req.env.items()},
               A.ENV_RUN_ID: run_id, A.ENV_RESULT_FILE: result_rel, A.ENV_RUNTIME: runtime,
               A.ENV_SAMPLE_MS: str(interval), A.ENV_TIMEOUT_S: f"{req.timeout_s:g}"}
        if self._closed:
            raise DeviceError(f"{self.display} was closed")
        st = _RunState(interval=interval if req.sample_ms > 0 else 0)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        coro = self._guard(self._a_run(bundle_id, args, env, req, interval, result_rel, notes, st),
                           f"running {bundle_id}")
        try:
            self._loop.start(coro, fut)
            while True:
                try:
                    return fut.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    continue
        except KeyboardInterrupt:
            st.ctrl_c = True
            st.interrupted.set()
            try:
                return fut.result(timeout=30)
            except (KeyboardInterrupt, concurrent.futures.TimeoutError):
                self._loop.stop(fut)
                return ProcessOutcome(exit_code=None, stdout=_stdout(st), stderr="", start_wall_ms=time.time() * 1000,
                                      wall_ms=0.0, samples=list(st.samples), memory_metric=MEMORY_METRIC,
                                      status="interrupted",
                                      note="stopped by the user (Ctrl-C); the app may still be running")

    async def _a_sysmon_attrs(self, di) -> tuple[list[str], list[str], str]:
        if self._sysmon_attrs is None:
            note = ""
            try:
                supported = list(await asyncio.wait_for(di.sysmon_process_attributes(), 15))
                system = list(await asyncio.wait_for(di.sysmon_system_attributes(), 15))
            except Exception as e:  # noqa: BLE001
                if isinstance(e, self._P.transport_errors):
                    raise
                supported, system = list(SYSMON_ATTRS), []
            proc = [a for a in SYSMON_ATTRS if a in supported or a == "pid"]
            missing = [a for a in SYSMON_ATTRS if a not in proc]
            if missing:
                note = f"this iOS does not report {', '.join(missing)} through sysmontap"
            self._sysmon_attrs = (proc, system, note)
        return self._sysmon_attrs

    async def _a_ensure_dirs(self, bundle_id: str) -> None:
        if bundle_id in self._dirs_ready:
            return
        try:
            afc = await self._a_afc(bundle_id)
        except Exception as e:  # noqa: BLE001
            if self._P.is_exc(e, "AppNotInstalledError"):
                raise DeviceError(M.app_missing(self.display, bundle_id)) from None
            raise
        async with afc:
            for d in (A.RESULTS_DIR, A.SCRATCH_DIR):
                await afc.makedirs(A.afc_path(d))
        self._dirs_ready.add(bundle_id)

    async def _a_run(self, bundle_id: str, args: list[str], env: dict[str, str], req: RunRequest, interval: int,
                     result_rel: str, notes: list[str], st: _RunState) -> ProcessOutcome:
        P = self._P
        await self._a_dvt()
        await self._a_ensure_dirs(bundle_id)
        pc, di = self._pc, self._di
        start_wall = time.time() * 1000.0
        remove_hook = P.on_termination(lambda pid, code, sig: st.terminated.setdefault(pid, (code, sig)))
        tasks: list[asyncio.Task] = []
        status, note = "ok", ""
        lost: BaseException | None = None
        try:
            try:
                await self._a_start_watchers(pc, di, req, interval, notes, st, tasks)
                start_wall = time.time() * 1000.0
                st.t0 = time.monotonic()
                st.pid = await self._a_launch(pc, bundle_id, args, env)
                status, note = await self._a_wait(pc, di, st, req)
            except P.transport_errors as e:
                lost = e
            except asyncio.TimeoutError as e:  # a DVT call that never answered
                lost = e
            wall_ms = ((st.t_end or time.monotonic()) - st.t0) * 1000.0 if st.t0 else 0.0
            if lost is None:
                await self._a_drain(st)
        finally:
            remove_hook()
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        if lost is not None:
            lnote = await self._a_lost_note(lost)
            await self._a_drop_connections()
            return self._outcome(st, start_wall, wall_ms, "lost", lnote, notes, None, None)
        return await self._a_collect(bundle_id, result_rel, st, start_wall, wall_ms, status, note, notes)

    async def _a_start_watchers(self, pc, di, req: RunRequest, interval: int, notes: list[str], st: _RunState,
                                tasks: list[asyncio.Task]) -> None:
        """The output reader and (when sampling) sysmontap, added to ``tasks`` as they start."""
        proc_attrs, sys_attrs, anote = await self._a_sysmon_attrs(di)
        if anote:
            notes.append(anote)
        tasks.append(asyncio.create_task(self._a_read_output(pc, st)))
        if req.sample_ms > 0:
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(self._a_sample(proc_attrs, sys_attrs, interval, st, ready)))
            try:
                await asyncio.wait_for(ready.wait(), 15)
            except asyncio.TimeoutError:
                notes.append("sysmontap did not start within 15 s: no memory samples")

    async def _a_launch(self, pc, bundle_id: str, args: list[str], env: dict[str, str]) -> int:
        try:
            pid = await pc.launch(bundle_id, arguments=list(args), kill_existing=True, environment=env)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, self._P.transport_errors):
                raise
            raise DeviceError(f"cannot launch {bundle_id} on {self.display}: {M.one_line(e)} (is the phone "
                              "unlocked, the app installed and development-signed, and its developer trusted "
                              "in Settings > General > VPN & Device Management?)") from None
        return int(pid)

    async def _a_collect(self, bundle_id: str, result_rel: str, st: _RunState, start_wall: float, wall_ms: float,
                         status: str, note: str, notes: list[str]) -> ProcessOutcome:
        """The outcome once the app has stopped: its result file read (and removed) from the container."""
        P = self._P
        result = None
        try:
            result = await asyncio.wait_for(self._a_take_result(bundle_id, result_rel), 60)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, (DeviceLost,) + P.transport_errors):
                lnote = await self._a_lost_note(e)
                await self._a_drop_connections()
                return self._outcome(st, start_wall, wall_ms, status if status != "ok" else "lost",
                                     note or lnote, notes, None, None)
            notes.append(f"result file unreadable: {M.one_line(e, 120)}")
        return self._outcome(st, start_wall, wall_ms, status, note, notes, result, st.terminated.get(st.pid))

    async def _a_read_output(self, pc, st: _RunState) -> None:
        try:
            async for ev in pc:
                st.chunks.append((int(getattr(ev, "pid", -1)), str(getattr(ev, "message", ""))))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the run loop decides what it means
            st.output_error = e

    async def _a_sample(self, proc_attrs: list[str], sys_attrs: list[str], interval: int, st: _RunState,
                        ready: asyncio.Event) -> None:
        P = self._P
        try:
            tap = P.Sysmontap(self._dvt, proc_attrs, sys_attrs, interval_ms=interval)
            async with tap:
                ready.set()
                async for procs in tap.iter_processes():
                    pid = st.pid
                    if pid is None:
                        continue
                    now = time.monotonic()
                    for p in procs:
                        if p.get("pid") == pid:
                            fp = kb(p.get("physFootprint"))
                            rss = kb(p.get("memResidentSize"))
                            st.samples.append(IosMemorySample(
                                t_ms=round((now - st.t0) * 1000.0, 3),
                                rss_kb=rss if rss is not None else (fp or 0), anon_kb=kb(p.get("memAnon")),
                                file_kb=None, hwm_kb=None, footprint_kb=fp))
                            st.arrivals.append(now)
                            break
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - sampling trouble is a note, not a failed run
            st.sampler_error = e
        finally:
            ready.set()

    async def _a_wait(self, pc, di, st: _RunState, req: RunRequest) -> tuple[str, str]:
        """Until the process exits, the timeout, a cancel, or Ctrl-C; kills it for the last three."""
        P, pid = self._P, st.pid
        deadline = st.t0 + req.timeout_s
        next_poll = 0.0
        status, note = "ok", ""
        while True:
            if pid in st.terminated:
                st.t_end = time.monotonic()
                break
            if st.output_error is not None:
                raise st.output_error if isinstance(st.output_error, P.transport_errors) else \
                    ConnectionError(M.one_line(st.output_error))
            if st.interrupted.is_set():
                status, note = "interrupted", "stopped by the user (Ctrl-C)" if st.ctrl_c else "stopped by the user"
                break
            if req.cancel is not None and req.cancel.is_set():
                status, note = "interrupted", "stopped by the user"
                break
            now = time.monotonic()
            if now > deadline:
                status, note = "timeout", f"killed after the {req.timeout_s:g} s timeout"
                break
            if now >= next_poll:
                next_poll = now + self.poll_s
                if not await asyncio.wait_for(di.is_running_pid(pid), 15):
                    st.t_end = time.monotonic()
                    # the termination callback usually carries the exit code: give it a moment
                    grace = time.monotonic() + self.exit_event_grace_s
                    while pid not in st.terminated and time.monotonic() < grace:
                        await asyncio.sleep(0.01)
                    break
            await asyncio.sleep(0.02)
        if status != "ok":
            await asyncio.wait_for(pc.kill(pid), 15)
            for _ in range(100):
                if pid in st.terminated or not await asyncio.wait_for(di.is_running_pid(pid), 15):
                    break
                await asyncio.sleep(0.05)
        return status, note

    async def _a_drain(self, st: _RunState) -> None:
        """Output events can trail the exit: wait until they stop (drain_quiet_s of quiet, 1 s at most)."""
        end = time.monotonic() + 1.0
        n, quiet_since = len(st.chunks), time.monotonic()
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            if len(st.chunks) != n:
                n, quiet_since = len(st.chunks), time.monotonic()
            elif time.monotonic() - quiet_since >= self.drain_quiet_s:
                break

    async def _a_take_result(self, bundle_id: str, result_rel: str) -> dict | None:
        path = A.afc_path(result_rel)
        async with await self._a_afc(bundle_id) as afc:
            obj = await self._a_read_json(path, afc=afc)
            with contextlib.suppress(Exception):
                await afc.rm_single(path, force=True)
        return obj

    async def _a_lost_note(self, e: BaseException) -> str:
        try:
            listed = await asyncio.wait_for(self._P.list_devices(), 5)
            gone = not any(same_udid(getattr(d, "serial", ""), self._mux_serial) or
                           same_udid(getattr(d, "serial", ""), self.udid) for d in listed)
        except Exception:  # noqa: BLE001
            gone = True
        if gone:
            return f"{self.display} disappeared from usbmux during the run (unplugged, rebooted or out of battery?)"
        what = "stopped answering" if isinstance(e, asyncio.TimeoutError) else f"dropped ({M.one_line(e, 120)})"
        return f"the connection to {self.display} {what} during the run"

    def _outcome(self, st: _RunState, start_wall: float, wall_ms: float, status: str, note: str, notes: list[str],
                 result: dict | None, term: tuple[int | None, int | None] | None) -> ProcessOutcome:
        stdout = _stdout(st)
        code, sig = term if term else (None, None)
        rcode = result.get(A.R_EXIT_CODE) if isinstance(result, dict) else None
        if code is None and isinstance(rcode, int) and not isinstance(rcode, bool):
            code = rcode
        if sig is not None and sig == 0:
            sig = None
        samples = list(st.samples)
        fps = [s.footprint_kb for s in samples if s.footprint_kb is not None]
        sampled_peak = max(fps) if fps else None
        ledger_peak = kb(result.get(A.R_PEAK_FOOTPRINT)) if isinstance(result, dict) else None
        peaks = [p for p in (sampled_peak, ledger_peak) if p]
        peak = max(peaks) if peaks else None
        extra: list[str] = []
        if status == "ok":
            if sig is not None:
                status = "oom" if sig == signal.SIGKILL else "failed"
                note = f"the app was killed by {signal_name(sig)}"
                if sig == signal.SIGKILL:
                    note += " (jetsam: the app went over its memory limit?)"
                if fps:
                    note += f"; last sampled physFootprint {fps[-1] / 1024:.0f} MiB"
            elif code is not None and code != 0:
                status, note = "failed", f"exit code {code}"
                if isinstance(result, dict) and result.get(A.R_ERROR):
                    note += f": {M.one_line(str(result[A.R_ERROR]), 160)}"
            elif code is None and result is None:
                status = "failed"
                note = ("the app ended without an exit status or a result file (crashed? "
                        "`pymobiledevice3 crash ls` lists crash reports)")
        if isinstance(result, dict) and isinstance(result.get(A.R_OBSERVER), dict) and "PyTorchObserver" not in stdout:
            line = "PyTorchObserver " + json.dumps(result[A.R_OBSERVER], separators=(",", ":"))
            stdout = (stdout if not stdout or stdout.endswith("\n") else stdout + "\n") + line + "\n"
            extra.append("stats line taken from the result file (it was not in the output stream)")
        if st.sampler_error is not None:
            extra.append(f"memory sampling stopped early: {M.one_line(st.sampler_error, 120)}")
        if samples and len(st.arrivals) >= 3:
            gap = statistics.median(b - a for a, b in zip(st.arrivals, st.arrivals[1:])) * 1000.0
            asked = st.interval
            if asked and gap > 1.5 * asked:
                extra.append(f"sysmontap samples arrived every ~{gap:.0f} ms (asked for {asked} ms; "
                             "iOS does not always honour the requested rate)")
        if peak is not None:
            if ledger_peak and (sampled_peak is None or ledger_peak >= sampled_peak):
                extra.append("peak physFootprint from the app's task_vm_info ledger")
            else:
                extra.append("peak physFootprint from sysmontap samples (a poll: short spikes can be missed)")
        exit_code = None
        if status not in ("interrupted", "timeout", "lost"):
            exit_code = -sig if sig else code
        full_note = "; ".join(x for x in [note, *notes, *extra] if x)
        return ProcessOutcome(exit_code=exit_code, stdout=stdout, stderr="", start_wall_ms=start_wall, wall_ms=wall_ms,
                              samples=samples, peak_rss_kb=peak, memory_metric=MEMORY_METRIC, status=status,
                              note=full_note)


def _stdout(st: _RunState) -> str:
    pid = st.pid
    return "".join(msg for p, msg in list(st.chunks) if pid is not None and p == pid)
