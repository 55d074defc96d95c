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
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Awaitable, Callable

from devprof.devices import aliases as al
from devprof.devices.base import Device, StageReport
import devprof.devices.ios.app as A
import devprof.devices.ios.pmd3 as M
from devprof.errors import DeviceError, DeviceLost, DevprofError, UsageError
from devprof.results import DeviceInfo
from devprof.devices.ios.run import MEMORY_METRIC, IosRun

TUNNEL_MODES = ("auto", "tunneld", "userspace", "none")


def _version_tuple(v: str | None) -> tuple[int, ...]:
    out = []
    for part in str(v or "0").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


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


# ------------------------------------------------------------------------------------------
class IosDevice(IosRun, Device):
    """An iPhone (or iPad) attached over usbmux, profiled through devprof's benchmark app."""

    kind = "ios"
    runtime_preinstalled = True  # the benchmark app (DEVPROF_IOS_APP) carries the runtime
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
    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.close(self._a_drop_connections())
