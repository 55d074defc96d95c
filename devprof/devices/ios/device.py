"""One iPhone behind the Device interface, driven through pymobiledevice3 (see pmd3.py).

pymobiledevice3 11.x is asyncio-only and its connections belong to the event loop that opened
them, while :class:`~devprof.devices.base.Device` is synchronous: each IosDevice owns one event
loop on a daemon thread and runs every device conversation there. The calling thread only waits
(in short slices, so Ctrl-C reaches it) and relays cancellation.

How the interface maps onto the phone:

* ``stage``: install/upgrade the benchmark app when an .ipa is given (bundle id +
  CFBundleShortVersionString/CFBundleVersion + the .ipa's sha256 decide), then push files over
  house_arrest (AFC) into ``Documents/devprof/<group>/``, skipping files whose size and sha256
  match the folder's ``.devprof-index.json``. Returned paths are Documents-relative.
* ``run``: DVT process control launches the app with the runtime adapter's argv minus argv[0];
  sysmontap samples the process (physFootprint, memResidentSize, memAnon); output events become
  stdout; the app's result file is read back; exit, crash, timeout, cancel and a vanished device
  each give their own status.
* ``pull``: AFC from the Documents folder; ``thermal``: battery temperature (diagnostics relay).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from devprof.devices import aliases as al
from devprof.devices.base import Device, RunRequest, StageReport
from devprof.devices.ios import app as A
from devprof.devices.ios import pmd3 as M
from devprof.errors import DeviceError, DeviceLost, DevprofError, UsageError
from devprof.results import DeviceInfo, MemorySample, ProcessOutcome

MEMORY_METRIC = "physFootprint"
#: sysmontap process attributes devprof asks for ("pid" first: rows are matched by it)
SYSMON_ATTRS = ["pid", "name", "physFootprint", "memResidentSize", "memAnon"]
TUNNEL_MODES = ("auto", "tunneld", "userspace", "none")


#: iOS samples: ``rss_kb`` = memResidentSize (resident pages, file-backed and shared included, like
#: VmRSS), ``anon_kb`` = memAnon (like RssAnon), ``footprint_kb`` = physFootprint (dirty +
#: compressed, what Xcode's gauge and jetsam limits use); ``file_kb``/``hwm_kb`` = None (sysmontap
#: has no file-backed resident figure and no per-sample high-water mark).
IosMemorySample = MemorySample


def _kb(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) // 1024


def _version_tuple(v: str | None) -> tuple[int, ...]:
    out = []
    for part in str(v or "0").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except (ValueError, TypeError):
        return f"signal {sig}"


# ------------------------------------------------------------------------------------------
class _Loop:
    """An asyncio event loop on a daemon thread, and a blocking way to call into it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def start(self, coro: Awaitable, fut: concurrent.futures.Future) -> None:
        """Schedule ``coro`` with its outcome going into ``fut``, which the caller made first: a Ctrl-C
        that lands inside this call (the task may already be running) cannot lose the handle."""
        async def _run() -> None:
            fut.task = asyncio.current_task()  # type: ignore[attr-defined]
            try:
                result = await coro
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(result)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(_run()))

    def stop(self, fut: concurrent.futures.Future) -> None:
        """Cancel the task behind a future from :meth:`start`."""
        task = getattr(fut, "task", None)
        if task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

    def call(self, coro: Awaitable, timeout: float | None = None):
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise
        except KeyboardInterrupt:
            fut.cancel()
            raise

    def close(self, cleanup: Awaitable | None = None) -> None:
        if self.loop.is_closed():
            return

        async def _shutdown() -> None:
            if cleanup is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(cleanup, 10)
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=3)

        with contextlib.suppress(Exception):
            self.submit(_shutdown()).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


def run_blocking(coro_fn: Callable[[], Awaitable], timeout: float = 60.0):
    """Run one coroutine to completion on a throwaway loop thread (discovery, resolution)."""
    loop = _Loop("ios-discovery")
    try:
        return loop.call(coro_fn(), timeout)
    finally:
        loop.close()


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


# ------------------------------------------------------------------------------------------
class IosDevice(Device):
    """An iPhone (or iPad) attached over usbmux, profiled through devprof's benchmark app."""

    kind = "ios"
    #: how often the run loop asks DVT whether the process still runs (s)
    poll_s = 0.25
    #: after an exit seen by polling, how long to wait for the termination event's exit code (s)
    exit_event_grace_s = 0.3
    #: output events can trail the exit: wait for this much quiet (at most 1 s)
    drain_quiet_s = 0.15

    def __init__(self, udid: str, *, mux_serial: str | None = None, app: str | Path | None = None,
                 tunnel: str | None = None, devices_file: Path | None = None, product_type: str = "",
                 pmd3: M.Pmd3 | None = None, documents_only: bool = False) -> None:
        self.udid = udid
        self._mux_serial = mux_serial or udid
        self._P = pmd3 or M.get()
        self._product_type = product_type
        self._devices_file = devices_file
        self._documents_only = documents_only
        mode = (tunnel or os.environ.get("DEVPROF_IOS_TUNNEL") or "auto").strip().lower()
        if mode not in TUNNEL_MODES:
            raise UsageError(f"iOS tunnel must be one of {', '.join(TUNNEL_MODES)}, got {mode!r}")
        self.tunnel = mode
        app = app or os.environ.get("DEVPROF_IOS_APP") or A.DEFAULT_BUNDLE_ID
        self._ipa: A.IpaInfo | None = None
        if str(app).lower().endswith(".ipa"):
            self._ipa = A.read_ipa(Path(app))
            self.bundle_id = self._ipa.bundle_id
        else:
            if not A.looks_like_bundle_id(str(app)):
                raise UsageError(f"iOS app must be an .ipa path or a bundle id like {A.DEFAULT_BUNDLE_ID}, got {app!r}")
            self.bundle_id = str(app)
        self._app_ready: set[tuple[str, str]] = set()  # (bundle id, ipa sha256) installed this session
        self._dirs_ready: set[str] = set()
        self._loop = _Loop(f"ios-{udid[:12]}")
        self._closed = False
        # connections (all owned by self._loop)
        self._ld = None
        self._rsd = None
        self._tunnel_handle = None
        self._dvt = None
        self._pc = None
        self._di = None
        self._sysmon_attrs: tuple[list[str], list[str], str] | None = None

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def display(self) -> str:
        pt = self._product_type or (getattr(self._ld, "product_type", None) or "")
        name = al.display_name("ios", pt, self._aliases()) if pt else ""
        if not name or name == pt:
            name = (getattr(self._ld, "display_name", None) if self._ld is not None else None) or pt or "iPhone"
        return f"{name} ({self.udid})"

    def _aliases(self) -> dict:
        try:
            return al.load(self._devices_file)
        except DevprofError:
            return dict(al.BUILTIN)

    def _call(self, coro: Awaitable, what: str, timeout: float | None = None):
        if self._closed:
            raise DeviceError(f"{self.display} was closed")
        try:
            return self._loop.call(self._guard(coro, what), timeout)
        except concurrent.futures.TimeoutError:
            raise DeviceError(f"{self.display} did not answer while {what} (waited {timeout:g} s)") from None

    async def _guard(self, coro: Awaitable, what: str):
        try:
            return await coro
        except DevprofError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every library error becomes one line
            raise self._explain(e, what) from None

    def _explain(self, e: BaseException, what: str) -> DevprofError:
        P, name = self._P, self.display
        if isinstance(e, DevprofError):
            return e
        if P.is_exc(e, "ConnectionFailedToUsbmuxdError"):
            return DeviceError(M.USBMUXD)
        if P.is_exc(e, "DeviceNotFoundError", "NoDeviceConnectedError"):
            return DeviceLost(f"{name} is no longer attached (while {what})")
        if P.is_exc(e, "PasswordRequiredError", "PasscodeRequiredError"):
            return DeviceError(M.locked(name))
        if P.is_exc(e, "NotPairedError", "InvalidHostIDError", "FatalPairingError", "NotTrustedError",
                    "PairingDialogResponsePendingError", "UserDeniedPairingError", "PairingError"):
            return DeviceError(M.not_paired(name))
        if P.is_exc(e, "DeveloperModeIsNotEnabledError"):
            return DeviceError(M.developer_mode(name))
        if P.is_exc(e, "RSDRequiredError", "TunneldConnectionError"):
            return DeviceError(M.tunnel(name, getattr(self._ld, "product_version", "17+")))
        if P.is_exc(e, "AppNotInstalledError"):
            return DeviceError(M.app_missing(name, self.bundle_id))
        if P.is_exc(e, "AppInstallError"):
            return DeviceError(f"installing the benchmark app on {name} failed: {M.one_line(e)} (is the .ipa "
                               "development-signed with a profile that includes this iPhone's UDID?)")
        if P.is_exc(e, "ProcessInspectionError"):
            return DeviceError(f"{name} refuses to inspect the benchmark app: {M.one_line(e)}")
        if isinstance(e, P.transport_errors):
            return DeviceLost(f"lost the connection to {name} while {what}: {M.one_line(e)}")
        return DeviceError(f"{name}: {what} failed: {M.one_line(e)}")

    # -- connections (on the loop) -----------------------------------------------------------
    async def _a_lockdown(self):
        if self._ld is None:
            self._ld = await asyncio.wait_for(
                self._P.create_using_usbmux(serial=self._mux_serial, autopair=False), 30)
            self._product_type = self._product_type or (self._ld.product_type or "")
        if not self._ld.paired:
            raise DeviceError(M.not_paired(self.display))
        return self._ld

    async def _a_dvt(self):
        """A connected DvtProvider, after checking each prerequisite in the order a user fixes them."""
        if self._dvt is not None:
            return self._dvt
        P = self._P
        ld = await self._a_lockdown()
        ver = _version_tuple(ld.product_version)
        if ver >= (16,):
            try:
                enabled = await asyncio.wait_for(ld.get_developer_mode_status(), 15)
            except DevprofError:
                raise
            except Exception as e:  # noqa: BLE001
                if P.is_exc(e, "PasswordRequiredError", "PasscodeRequiredError") or isinstance(e, P.transport_errors):
                    raise
                enabled = None  # unknown: let the services tell
            if enabled is False:
                raise DeviceError(M.developer_mode(self.display))
        await self._a_check_ddi(ld)
        provider = ld
        if ver >= (17,):
            provider = await self._a_rsd(ld)
        dvt = P.DvtProvider(provider)
        try:
            await asyncio.wait_for(dvt.connect(), 30)
        except Exception as e:  # noqa: BLE001
            if P.is_exc(e, "InvalidServiceError", "StartServiceError"):
                if ver >= (17,) and provider is ld:
                    raise DeviceError(M.tunnel(self.display, ld.product_version)) from None
                raise DeviceError(M.ddi(self.display)) from None
            if P.is_exc(e, "DeveloperModeIsNotEnabledError"):
                raise DeviceError(M.developer_mode(self.display)) from None
            raise
        pc = P.ProcessControl(dvt)
        di = P.DvtDeviceInfo(dvt)
        await pc.connect()
        await di.connect()
        self._dvt, self._pc, self._di = dvt, pc, di
        return dvt

    async def _a_check_ddi(self, ld) -> None:
        """Raise only when the image mounter says plainly that no developer image is mounted."""
        P = self._P
        try:
            image_type = P.image_type_for_device(ld)

            async def probe() -> bool:
                async with P.MobileImageMounterService(lockdown=ld) as mounter:
                    return bool(await mounter.is_image_mounted(image_type))

            mounted = await asyncio.wait_for(probe(), 10)
        except asyncio.TimeoutError:
            return
        except Exception as e:  # noqa: BLE001
            if P.is_exc(e, "PasswordRequiredError", "PasscodeRequiredError", "NotPairedError") or \
                    isinstance(e, P.transport_errors):
                raise
            return  # unknown: the DVT connection will tell
        if not mounted:
            raise DeviceError(M.ddi(self.display))

    async def _a_rsd(self, ld):
        """iOS 17+: an RSD from tunneld, else (auto, iOS 17.4+, or userspace) a no-root userspace tunnel."""
        if self._rsd is not None:
            return self._rsd
        P, why = self._P, []
        ver = _version_tuple(ld.product_version)
        udid = getattr(ld, "udid", None) or self.udid
        if self.tunnel in ("auto", "tunneld"):
            try:
                rsd = await asyncio.wait_for(P.get_tunneld_device_by_udid(udid), 20)
            except Exception as e:  # noqa: BLE001
                rsd = None
                why.append("tunneld is not running" if P.is_exc(e, "TunneldConnectionError")
                           else f"tunneld: {M.one_line(e)}")
            else:
                if rsd is None:
                    why.append("tunneld has no tunnel to this iPhone")
            if rsd is not None:
                self._rsd = rsd
                return rsd
        if self.tunnel == "userspace" or (self.tunnel == "auto" and ver >= (17, 4)):
            handle = None
            try:
                handle = P.userspace_tunnel()(serial=self._mux_serial, autopair=False)
                rsd = await asyncio.wait_for(handle.aopen(), 60)
            except Exception as e:  # noqa: BLE001
                if handle is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(handle.aclose(), 5)
                why.append(f"the no-root userspace tunnel failed: {M.one_line(e, 120)}")
            else:
                self._tunnel_handle, self._rsd = handle, rsd
                return rsd
        if self.tunnel == "none":
            why.append("tunnels are disabled (DEVPROF_IOS_TUNNEL=none)")
        raise DeviceError(M.tunnel(self.display, ld.product_version, "; ".join(why)))

    async def _a_drop_connections(self) -> None:
        """Forget every connection (after the device vanished); close what still closes."""
        objs = [self._dvt, self._rsd, self._ld]
        handle = self._tunnel_handle
        self._ld = self._rsd = self._tunnel_handle = self._dvt = self._pc = self._di = None
        self._sysmon_attrs = None
        for obj in objs:
            if obj is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(obj.close(), 3)
        if handle is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(handle.aclose(), 5)

    async def _a_afc(self, bundle_id: str | None = None):
        ld = await self._a_lockdown()
        return await self._P.HouseArrestService.create(ld, bundle_id or self.bundle_id,
                                                       documents_only=self._documents_only)

    # -- identity ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """Check every prerequisite now (trust, Developer Mode, DDI, tunnel): one-line DeviceError."""
        self._call(self._a_dvt(), "starting the developer services", timeout=180)

    def info(self) -> DeviceInfo:
        ld = self._call(self._a_lockdown(), "reading the device's identity", timeout=60)
        v = dict(getattr(ld, "all_values", None) or {})
        pt = ld.product_type or v.get("ProductType") or self._product_type
        table = self._aliases()
        name = al.display_name("ios", pt, table) if pt else ""
        if not name or name == pt:
            name = getattr(ld, "display_name", None) or pt or "iPhone"
        build = getattr(ld, "product_build_version", None) or v.get("BuildVersion")
        return DeviceInfo(
            kind="ios", serial=self.udid, name=name, model=pt or "",
            os_version=f"iOS {ld.product_version}" + (f" ({build})" if build else ""),
            memory_metric=MEMORY_METRIC,
            extra={
                "product_type": pt, "build": build, "device_name": v.get("DeviceName"),
                "hardware_model": v.get("HardwareModel"), "abi": v.get("CPUArchitecture"),
                "aliases": al.names_for("ios", self.udid, pt or "", table), "app_bundle_id": self.bundle_id,
                "tunnel": self.tunnel, "pymobiledevice3": self._P.version, "state": "ready",
            },
        )

    # -- files ------------------------------------------------------------------------------
    def stage(self, files: dict[str, Path], group: str) -> StageReport:
        started = time.monotonic()
        files = {name: Path(p) for name, p in files.items()}
        binary = files.pop("__binary__", None)
        paths: dict[str, str] = {}
        if binary is not None:
            if binary.suffix.lower() != ".ipa":
                raise DeviceError(f"on iOS the runtime is the benchmark app: the binary must be its .ipa, "
                                  f"got {binary.name} (see docs/ios.md)")
            self._ipa = A.read_ipa(binary)
            self.bundle_id = self._ipa.bundle_id
            paths["__binary__"] = self.bundle_id
        for name, p in files.items():
            A.safe_component(name, "file name")
            if not p.is_file():
                raise DeviceError(f"file to push does not exist: {p}")
        rel_dir = f"{A.ROOT}/{A.safe_component(group, 'group')}"
        if self._ipa is not None:
            self._call(self._a_ensure_app(self._ipa), f"installing {self._ipa.path.name}", timeout=900)
        report = StageReport(paths=paths, remote_dir=rel_dir)
        self._call(self._a_stage(files, rel_dir, report), f"pushing files to {rel_dir}")
        report.seconds = time.monotonic() - started
        return report

    async def _a_ensure_app(self, ipa: A.IpaInfo) -> None:
        if (ipa.bundle_id, ipa.sha256) in self._app_ready:
            return
        P = self._P
        ld = await self._a_lockdown()
        async with P.InstallationProxyService(lockdown=ld) as ip:
            apps = await ip.get_apps(application_type="User", bundle_identifiers=[ipa.bundle_id])
            cur = (apps or {}).get(ipa.bundle_id)
            same_version = bool(cur) and cur.get("CFBundleShortVersionString") == ipa.short_version and \
                (not ipa.build or cur.get("CFBundleVersion") == ipa.build)
            stamp = await self._a_read_json(A.afc_path(A.APP_STAMP), ipa.bundle_id) if same_version else None
            if same_version and (stamp or {}).get("sha256") == ipa.sha256:
                self._app_ready.add((ipa.bundle_id, ipa.sha256))
                return
            if cur:
                await ip.upgrade(str(ipa.path))
            else:
                await ip.install_from_local(ipa.path)
        afc = await self._a_afc(ipa.bundle_id)
        async with afc:
            await afc.makedirs(A.afc_path(A.ROOT))
            stamp = {"sha256": ipa.sha256, "bundle_id": ipa.bundle_id, "short_version": ipa.short_version,
                     "build": ipa.build, "installed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            await afc.set_file_contents(A.afc_path(A.APP_STAMP), json.dumps(stamp).encode())
        self._app_ready.add((ipa.bundle_id, ipa.sha256))

    async def _a_read_json(self, path: str, bundle_id: str | None = None, afc=None) -> dict | None:
        """A small JSON file from the container, None when absent or unreadable."""
        P = self._P

        async def read(a) -> dict | None:
            try:
                data = await a.get_file_contents(path)
            except Exception as e:  # noqa: BLE001
                if P.is_exc(e, "AfcFileNotFoundError", "AfcException"):
                    return None
                raise
            try:
                obj = json.loads(bytes(data).decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                return None
            return obj if isinstance(obj, dict) else None

        if afc is not None:
            return await read(afc)
        async with await self._a_afc(bundle_id) as a:
            return await read(a)

    async def _a_stage(self, files: dict[str, Path], rel_dir: str, report: StageReport) -> None:
        P = self._P
        afc_dir = A.afc_path(rel_dir)
        index_path = f"{afc_dir}/{A.INDEX_NAME}"
        async with await self._a_afc() as afc:
            await afc.makedirs(afc_dir)
            index = await self._a_read_json(index_path, afc=afc) or {}
            entries = index.get("files") if isinstance(index.get("files"), dict) else {}
            for name, local in files.items():
                size = local.stat().st_size
                digest = await asyncio.to_thread(A.sha256_file, local)
                remote = f"{afc_dir}/{name}"
                report.paths[name] = f"{rel_dir}/{name}"
                have = entries.get(name) or {}
                if have.get("sha256") == digest and have.get("size") == size:
                    try:
                        st = await afc.stat(remote)
                    except Exception as e:  # noqa: BLE001
                        if not P.is_exc(e, "AfcFileNotFoundError"):
                            raise
                        st = None
                    if st is not None and int(st.get("st_size", -1)) == size:
                        report.files_skipped += 1
                        continue
                await afc.push(str(local), remote, progress_bar=False)
                entries[name] = {"size": size, "sha256": digest,
                                 "pushed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                await afc.set_file_contents(index_path, json.dumps({"version": 1, "files": entries}, indent=1).encode())
                report.files_pushed += 1
                report.bytes_pushed += size

    def scratch_path(self, name: str) -> str:
        return f"{A.SCRATCH_DIR}/{A.safe_component(name)}"

    def pull(self, device_path: str, local_path: Path) -> bool:
        rel = A.documents_rel(device_path)
        return self._call(self._a_pull(rel, Path(local_path)), f"pulling {rel}", timeout=900)

    async def _a_pull(self, rel: str, local: Path) -> bool:
        P = self._P
        src = A.afc_path(rel)
        async with await self._a_afc() as afc:
            try:
                st = await afc.stat(src)
            except Exception as e:  # noqa: BLE001
                if P.is_exc(e, "AfcFileNotFoundError"):
                    return False
                raise
            if st.get("st_ifmt") not in (None, "S_IFREG"):
                return False
            local.parent.mkdir(parents=True, exist_ok=True)
            await afc.pull(src, str(local), progress_bar=False)
            if rel.startswith(A.SCRATCH_DIR + "/"):  # scratch outputs are moved, as on the host
                with contextlib.suppress(Exception):
                    await afc.rm_single(src, force=True)
        return True

    def drop_page_cache(self, device_path: str) -> tuple[str, str]:
        return "unknown", "iOS gives the host no way to evict a file from the page cache"

    # -- state ------------------------------------------------------------------------------
    def thermal(self) -> dict[str, float]:
        """Battery temperature (IOPMPowerSource "Temperature", hundredths of a degree C)."""
        try:
            bat = self._call(self._a_battery(), "reading the battery temperature", timeout=20)
        except DevprofError:
            return {}
        out: dict[str, float] = {}
        for key, zone in (("Temperature", "battery"), ("VirtualTemperature", "battery_virtual")):
            v = (bat or {}).get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                c = v / 100.0
                if -40.0 <= c <= 150.0:
                    out[zone] = round(c, 2)
        return out

    async def _a_battery(self) -> dict | None:
        ld = await self._a_lockdown()
        async with self._P.DiagnosticsService(lockdown=ld) as diag:
            return await diag.get_battery()

    # -- running ----------------------------------------------------------------------------
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
                start_wall = time.time() * 1000.0
                st.t0 = time.monotonic()
                try:
                    pid = await pc.launch(bundle_id, arguments=list(args), kill_existing=True, environment=env)
                except Exception as e:  # noqa: BLE001
                    if isinstance(e, P.transport_errors):
                        raise
                    raise DeviceError(f"cannot launch {bundle_id} on {self.display}: {M.one_line(e)} (is the phone "
                                      "unlocked, the app installed and development-signed, and its developer trusted "
                                      "in Settings > General > VPN & Device Management?)") from None
                st.pid = int(pid)
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
                            fp = _kb(p.get("physFootprint"))
                            rss = _kb(p.get("memResidentSize"))
                            st.samples.append(IosMemorySample(
                                t_ms=round((now - st.t0) * 1000.0, 3),
                                rss_kb=rss if rss is not None else (fp or 0), anon_kb=_kb(p.get("memAnon")),
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
            gone = not any(_same_udid(getattr(d, "serial", ""), self._mux_serial) or
                           _same_udid(getattr(d, "serial", ""), self.udid) for d in listed)
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
        ledger_peak = _kb(result.get(A.R_PEAK_FOOTPRINT)) if isinstance(result, dict) else None
        peaks = [p for p in (sampled_peak, ledger_peak) if p]
        peak = max(peaks) if peaks else None
        extra: list[str] = []
        if status == "ok":
            if sig is not None:
                status = "oom" if sig == signal.SIGKILL else "failed"
                note = f"the app was killed by {_signal_name(sig)}"
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

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.close(self._a_drop_connections())


def _stdout(st: _RunState) -> str:
    pid = st.pid
    return "".join(msg for p, msg in list(st.chunks) if pid is not None and p == pid)


def _same_udid(a: str, b: str) -> bool:
    return bool(a) and bool(b) and a.replace("-", "").upper() == b.replace("-", "").upper()
