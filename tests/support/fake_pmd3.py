"""Fakes of the pymobiledevice3 (11.45) entry points devprof's iOS backend uses: no iPhone needed.

Each fake class or function has the real one's signature (tests/test_ios.py compares them when
pymobiledevice3 is importable) and enough behaviour to drive devprof.devices.ios through its
paths: a :class:`FakeWorld` is usbmuxd plus the attached :class:`FakeIPhone` s; a phone has
apps, each app a container folder on the host (its Documents is ``<root>/<udid>/<bundle
id>/Documents``) and a *program*: the coroutine that runs when DVT process control launches it.

Programs:

* :func:`scripted_app` prints given output, walks a memory series, and exits, crashes, hangs,
  or makes the whole phone vanish, on cue.
* :func:`subprocess_app` really runs a host command (by default ``python -m devprof.refruntime``)
  with the app's arguments, Documents-relative paths mapped into the container, streams its
  merged stdout/stderr as output events, and has sysmontap report that process's real memory
  from ``/proc/PID/status``: physFootprint = RssAnon + VmSwap (dirty private memory: the Linux
  analogue of what iOS charges an app), memResidentSize = VmRSS, memAnon = RssAnon.

:func:`install_fake_iphone` makes ``devprof.devices.ios`` see one such phone (for CLI tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import types
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------
# exceptions, named and nested as in pymobiledevice3.exceptions


class PyMobileDevice3Exception(Exception):
    pass


class NotPairedError(PyMobileDevice3Exception):
    pass


class PairingError(PyMobileDevice3Exception):
    pass


class PasswordRequiredError(PairingError):
    pass


class PairingDialogResponsePendingError(PairingError):
    pass


class UserDeniedPairingError(PairingError):
    pass


class InvalidHostIDError(PairingError):
    pass


class FatalPairingError(PyMobileDevice3Exception):
    pass


class NotTrustedError(PyMobileDevice3Exception):
    pass


class NoDeviceConnectedError(PyMobileDevice3Exception):
    pass


class NotConnectedError(PyMobileDevice3Exception):
    pass


class DeviceNotFoundError(PyMobileDevice3Exception):
    def __init__(self, udid: str, message: Optional[str] = None) -> None:
        super().__init__(message or f"Device not found: {udid}")
        self.udid = udid


class TunneldConnectionError(PyMobileDevice3Exception):
    pass


class MuxException(PyMobileDevice3Exception):
    pass


class ConnectionFailedError(MuxException):
    pass


class ConnectionFailedToUsbmuxdError(ConnectionFailedError):
    def __init__(self, *args: Any) -> None:
        super().__init__(*(args or ("Failed to connect to usbmuxd socket. Make sure it's running.",)))


class AfcException(PyMobileDevice3Exception, OSError):
    def __init__(self, message: str, status: Optional[int], filename: Optional[str] = None) -> None:
        OSError.__init__(self, status, message)
        self.status = status
        self.filename = filename


class AfcFileNotFoundError(AfcException):
    pass


class DvtException(PyMobileDevice3Exception):
    pass


class ProcessInspectionError(DvtException):
    pass


class NotMountedError(PyMobileDevice3Exception):
    pass


class ConnectionTerminatedError(PyMobileDevice3Exception):
    pass


class DeveloperModeIsNotEnabledError(PyMobileDevice3Exception):
    pass


class LockdownError(PyMobileDevice3Exception):
    def __init__(self, message: str, identifier: Optional[str], product_version: str,
                 error: Optional[str] = None) -> None:
        super().__init__(message)
        self.error, self.identifier, self.product_version = error, identifier, product_version


class InvalidServiceError(LockdownError):
    pass


class PasscodeRequiredError(LockdownError):
    pass


class StartServiceError(PyMobileDevice3Exception):
    def __init__(self, service_name: str, message: str) -> None:
        super().__init__(f"Failed to start: {service_name} with. Received error: {message}.")
        self.service_name, self.message = service_name, message


class AppInstallError(PyMobileDevice3Exception):
    pass


class AppNotInstalledError(PyMobileDevice3Exception):
    pass


class RSDRequiredError(PyMobileDevice3Exception):
    def __init__(self, identifier: Optional[str], product_version: str) -> None:
        self.identifier, self.product_version = identifier, product_version
        super().__init__("This command needs an RSD (iOS 17+ tunnel) connection to the device.")


class UserspaceTunnelUnavailableError(PyMobileDevice3Exception):
    pass


class QueueShutDown(Exception):  # pymobiledevice3.dtx.service.QueueShutDown (Python < 3.13)
    pass


exc = types.SimpleNamespace(**{
    name: obj for name, obj in dict(globals()).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == __name__
})

TRANSPORT_ERRORS = (ConnectionTerminatedError, ConnectionFailedError, NoDeviceConnectedError, DeviceNotFoundError,
                    NotConnectedError, QueueShutDown, ConnectionError, EOFError)


# ------------------------------------------------------------------------------------------
# the world: usbmuxd, phones, apps, processes

@dataclasses.dataclass
class MuxDevice:
    devid: int
    serial: str
    connection_type: str

    def matches_udid(self, udid: str) -> bool:
        return self.serial.replace("-", "") == udid.replace("-", "")


@dataclasses.dataclass
class OutputReceivedEvent:
    pid: int
    date: Optional[datetime]
    message: str


Program = Callable[["FakeProcess"], Awaitable[Optional[int]]]


@dataclasses.dataclass
class FakeApp:
    bundle_id: str
    program: Program
    short_version: str = "1.0"
    build: str = "1"


class FakeProcess:
    """One launched app. Programs use print/set_memory/sleep/write_document/vanish_device."""

    def __init__(self, phone: "FakeIPhone", pid: int, app: FakeApp, arguments: list[str],
                 environment: dict[str, Any]) -> None:
        self.phone, self.pid, self.app = phone, pid, app
        self.arguments, self.environment = list(arguments), dict(environment)
        self.documents = phone.container(app.bundle_id) / "Documents"
        self.memory_bytes = {"physFootprint": 0, "memResidentSize": 0, "memAnon": 0}
        self.peak_footprint = 0
        self.running = True
        self.exit_code: Optional[int] = None
        self.signal: Optional[int] = None
        self.task: Optional[asyncio.Task] = None
        self.killed = False

    # -- what programs call ---------------------------------------------------------------
    def print(self, text: str) -> None:
        self.phone._output(self.pid, text)

    def set_memory(self, footprint_mb: float, resident_mb: Optional[float] = None,
                   anon_mb: Optional[float] = None) -> None:
        mb = 1 << 20
        fp = int(footprint_mb * mb)
        self.memory_bytes = {"physFootprint": fp, "memResidentSize": int((resident_mb or footprint_mb * 1.5) * mb),
                             "memAnon": int((anon_mb if anon_mb is not None else footprint_mb * 0.9) * mb)}
        self.peak_footprint = max(self.peak_footprint, fp)

    def memory(self) -> dict[str, int]:
        return dict(self.memory_bytes)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def document(self, rel: str) -> Path:
        return self.documents / rel

    def write_document(self, rel: str, data: bytes | str) -> None:
        p = self.document(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    def write_result(self, **fields: Any) -> None:
        rel = self.environment.get("DEVPROF_RESULT_FILE")
        if rel:
            self.write_document(rel, json.dumps({"run_id": self.environment.get("DEVPROF_RUN_ID"), **fields}))

    def vanish_device(self) -> None:
        self.phone.vanish()

    # -- lifecycle (the phone calls these) ------------------------------------------------
    def _finish(self, exit_code: Optional[int], sig: Optional[int]) -> None:
        if not self.running:
            return
        self.running = False
        self.exit_code, self.signal = exit_code, sig
        self.phone._terminated(self)

    async def _main(self) -> None:
        try:
            code = await self.app.program(self)
        except asyncio.CancelledError:
            self._finish(None, signal.SIGKILL)
            raise
        except _Crash as c:
            self._finish(None, c.sig)
            return
        except _Vanished:
            self.running = False
            return
        except Exception as e:  # noqa: BLE001 - a crashing program is a crashing app
            self.print(f"fake app raised {e!r}\n")
            self._finish(None, signal.SIGABRT)
            return
        self._finish(0 if code is None else int(code), None)

    async def _kill(self) -> None:
        self.killed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._finish(None, signal.SIGKILL)


class _Crash(Exception):
    def __init__(self, sig: int) -> None:
        super().__init__(sig)
        self.sig = sig


class _Vanished(Exception):
    pass


def crash(sig: int = signal.SIGSEGV) -> None:
    """Call from a program: the app dies by ``sig``."""
    raise _Crash(sig)


class FakeIPhone:
    """One phone: identity, readiness (trust, lock, Developer Mode, DDI, tunnel) and apps."""

    def __init__(self, world: "FakeWorld", *, udid: str, product_type: str = "iPhone17,1",
                 product_version: str = "18.2", build: str = "22C152", device_name: str = "devprof test iPhone",
                 connection_type: str = "USB", paired: bool = True, locked: bool = False,
                 developer_mode: bool = True, ddi_mounted: bool = True, tunnel: str = "tunneld",
                 termination_events: bool = True, battery_centi_c: int = 3150, devid: int = 1,
                 sysmon_attributes: Optional[list[str]] = None) -> None:
        self.world, self.udid, self.product_type = world, udid, product_type
        self.product_version, self.build, self.device_name = product_version, build, device_name
        self.connection_type, self.devid = connection_type, devid
        self.paired, self.locked, self.developer_mode, self.ddi_mounted = paired, locked, developer_mode, ddi_mounted
        self.tunnel = tunnel  # tunneld | userspace | none
        self.termination_events = termination_events
        self.battery_centi_c = battery_centi_c
        self.sysmon_attributes = sysmon_attributes or [
            "pid", "name", "cpuUsage", "ctxSwitch", "memAnon", "memAnonPeak", "memCompressed", "memResidentSize",
            "memVirtualSize", "physFootprint", "threadCount", "ppid", "procStatus"]
        self.present = True
        self.apps: dict[str, FakeApp] = {}
        self.processes: dict[int, FakeProcess] = {}
        self.launches: list[FakeProcess] = []
        self.installs: list[tuple[str, str]] = []  # (command, package path)
        self.bytes_pushed = 0
        self._next_pid = 4000
        self._output_queues: list[asyncio.Queue] = []
        self._system = {34: ("SpringBoard", 80), 120: ("backboardd", 20)}

    # -- set-up -------------------------------------------------------------------------------
    def install(self, bundle_id: str, program: Program, short_version: str = "1.0", build: str = "1") -> FakeApp:
        app = FakeApp(bundle_id, program, short_version, build)
        self.apps[bundle_id] = app
        (self.container(bundle_id) / "Documents").mkdir(parents=True, exist_ok=True)
        return app

    def container(self, bundle_id: str) -> Path:
        return self.world.root / self.udid / bundle_id

    def documents(self, bundle_id: str) -> Path:
        return self.container(bundle_id) / "Documents"

    @property
    def lockdown_values(self) -> dict[str, Any]:
        v = {"ProductType": self.product_type, "ProductVersion": self.product_version,
             "BuildVersion": self.build, "DeviceClass": "iPhone"}
        if self.paired:
            v.update({"UniqueDeviceID": self.udid, "DeviceName": self.device_name, "CPUArchitecture": "arm64e",
                      "HardwareModel": "D93AP"})
        return v

    # -- state --------------------------------------------------------------------------------
    def require(self, service: str = "") -> None:
        """What lockdownd's StartService checks, in order."""
        if not self.present:
            raise ConnectionTerminatedError("the device is gone")
        if not self.paired:
            raise NotPairedError("Device is not paired.")
        if self.locked:
            raise PasswordRequiredError("The device is protected with a passcode. Unlock it and try again.")

    def vanish(self) -> None:
        """Unplugged: usbmux forgets it, open connections break, its processes are lost."""
        self.present = False
        for q in self._output_queues:
            q.put_nowait(None)
        for p in list(self.processes.values()):
            p.running = False

    def _output(self, pid: int, text: str) -> None:
        if not self.present:
            raise _Vanished()
        for q in self._output_queues:
            q.put_nowait(OutputReceivedEvent(pid=pid, date=datetime.now(), message=text))

    def _terminated(self, proc: FakeProcess) -> None:
        if self.termination_events and self.present:
            self.world._notify_termination(proc.pid, proc.exit_code, proc.signal)

    async def launch(self, bundle_id: str, arguments: list[str], environment: dict[str, Any],
                     kill_existing: bool) -> int:
        self.require()
        app = self.apps.get(bundle_id)
        if app is None:
            raise DvtException(f"Failed to launch {bundle_id}: the application is not installed")
        if kill_existing:
            for p in list(self.processes.values()):
                if p.app.bundle_id == bundle_id and p.running:
                    await p._kill()
        self._next_pid += 1
        proc = FakeProcess(self, self._next_pid, app, arguments, environment)
        self.processes[proc.pid] = proc
        self.launches.append(proc)
        proc.task = asyncio.get_running_loop().create_task(proc._main())
        return proc.pid

    def snapshot(self) -> list[dict[str, Any]]:
        rows = [{"pid": pid, "name": name, "physFootprint": mb << 20, "memResidentSize": (mb * 2) << 20,
                 "memAnon": mb << 20} for pid, (name, mb) in self._system.items()]
        for p in self.processes.values():
            if p.running:
                rows.append({"pid": p.pid, "name": p.app.bundle_id.rsplit(".", 1)[-1], **p.memory()})
        return rows


_WORLDS: list["FakeWorld"] = []  # the userspace tunnel finds its phone here (it only gets a serial)


class FakeWorld:
    """usbmuxd and what it sees. ``usbmuxd_running=False`` makes every usbmux call fail."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.phones: list[FakeIPhone] = []
        self.usbmuxd_running = True
        self.taps: list["Sysmontap"] = []  # every sysmontap opened (tests read their intervals)
        self._default_program: Optional[Program] = None  # what a freshly installed .ipa runs
        self._term_callbacks: list[Callable[[int, Optional[int], Optional[int]], None]] = []
        _WORLDS.append(self)

    @property
    def default_program(self) -> Program:
        return self._default_program or scripted_app()

    def add_iphone(self, udid: Optional[str] = None, **kw: Any) -> FakeIPhone:
        n = len(self.phones) + 1
        udid = udid or f"00008140-{n:016X}"
        phone = FakeIPhone(self, udid=udid, devid=n, **kw)
        self.phones.append(phone)
        return phone

    def _phone(self, serial: Optional[str]) -> FakeIPhone:
        if not self.usbmuxd_running:
            raise ConnectionFailedToUsbmuxdError()
        live = [p for p in self.phones if p.present]
        if serial is None:
            if not live:
                raise NoDeviceConnectedError("Device is not connected.")
            return live[0]
        for p in live:
            if p.udid.replace("-", "") == serial.replace("-", ""):
                return p
        raise DeviceNotFoundError(serial, f"Device not found: usbmux has no device matching udid {serial}")

    # -- pymobiledevice3 module-level functions (bound methods keep the real signatures) -------
    async def list_devices(self, usbmux_address: Optional[str] = None) -> list[MuxDevice]:
        if not self.usbmuxd_running:
            raise ConnectionFailedToUsbmuxdError()
        return [MuxDevice(p.devid, p.udid, p.connection_type) for p in self.phones if p.present]

    async def create_using_usbmux(self, serial: Optional[str] = None, identifier: Optional[str] = None,
                                  label: str = "pymobiledevice3", autopair: bool = True,
                                  connection_type: Optional[str] = None, pair_timeout: Optional[float] = None,
                                  local_hostname: Optional[str] = None, pair_record: Optional[dict[str, Any]] = None,
                                  pairing_records_cache_folder: Optional[Path] = None, port: int = 62078,
                                  usbmux_address: Optional[str] = None) -> "LockdownClient":
        phone = self._phone(serial)
        if autopair and not phone.paired:
            if phone.locked:
                raise PasswordRequiredError("Device is password protected. Please unlock and retry.")
            raise PairingDialogResponsePendingError("Waiting for the user to answer the Trust dialog on the device.")
        return LockdownClient(phone, identifier or phone.udid)

    async def get_tunneld_device_by_udid(self, udid: str, tunneld_address: tuple[str, int] = ("127.0.0.1", 49151),
                                         bridge: Optional[bool] = None) -> Optional["RemoteServiceDiscoveryService"]:
        if not any(p.tunnel == "tunneld" for p in self.phones):
            raise TunneldConnectionError()
        for p in self.phones:
            if p.present and p.tunnel == "tunneld" and p.udid == udid:
                return RemoteServiceDiscoveryService(p)
        return None

    def on_termination(self, callback: Callable[[int, Optional[int], Optional[int]], None]) -> Callable[[], None]:
        self._term_callbacks.append(callback)
        return lambda: self._term_callbacks.remove(callback) if callback in self._term_callbacks else None

    def _notify_termination(self, pid: int, code: Optional[int], sig: Optional[int]) -> None:
        for cb in list(self._term_callbacks):
            cb(pid, code, sig)

    def adapter(self):
        """The devprof.devices.ios.pmd3.Pmd3 made of these fakes."""
        from devprof.devices.ios.pmd3 import Pmd3

        return Pmd3(
            version="11.45.0 (fake)", list_devices=self.list_devices, create_using_usbmux=self.create_using_usbmux,
            InstallationProxyService=InstallationProxyService, HouseArrestService=HouseArrestService,
            DvtProvider=DvtProvider, ProcessControl=ProcessControl, DvtDeviceInfo=DeviceInfo, Sysmontap=Sysmontap,
            DiagnosticsService=DiagnosticsService, MobileImageMounterService=MobileImageMounterService,
            image_type_for_device=image_type_for_device, get_tunneld_device_by_udid=self.get_tunneld_device_by_udid,
            userspace_tunnel=lambda: UserspaceRsdTunnel, exc=exc, transport_errors=TRANSPORT_ERRORS,
            on_termination=self.on_termination,
        )


# ------------------------------------------------------------------------------------------
# lockdown, RSD, and the lockdown services

class LockdownClient:
    def __init__(self, phone: FakeIPhone, identifier: str) -> None:
        self.phone = phone
        self.identifier = identifier
        self.paired = phone.paired
        self.all_values = phone.lockdown_values
        self.udid = self.all_values.get("UniqueDeviceID")
        self.product_type = phone.product_type
        self.closed = False

    @property
    def product_version(self) -> str:
        return self.phone.product_version

    @property
    def product_build_version(self) -> Optional[str]:
        return self.phone.build

    @property
    def display_name(self) -> Optional[str]:
        return {"iPhone17,1": "iPhone 16 Pro", "iPhone16,1": "iPhone 15 Pro"}.get(self.product_type)

    @property
    def has_developer_mode(self) -> bool:
        return int(self.product_version.split(".")[0]) >= 16

    async def get_developer_mode_status(self) -> bool:
        self.phone.require()
        return self.phone.developer_mode

    async def get_value(self, domain: Optional[str] = None, key: Optional[str] = None) -> Any:
        self.phone.require()
        return self.all_values if key is None else self.all_values.get(key)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class RemoteServiceDiscoveryService:
    """What tunneld or the userspace tunnel hands back (iOS 17+)."""

    def __init__(self, phone: FakeIPhone) -> None:
        self.phone = phone
        self.udid = phone.udid
        self.product_type = phone.product_type

    @property
    def product_version(self) -> str:
        return self.phone.product_version

    async def close(self) -> None:
        pass


class UserspaceRsdTunnel:
    def __init__(self, serial: Optional[str] = None, autopair: bool = True, remotepairing_fallback: bool = True) -> None:
        self.serial, self.autopair, self.remotepairing_fallback = serial, autopair, remotepairing_fallback
        self.rsd: Optional[RemoteServiceDiscoveryService] = None
        self.closed = False

    async def aopen(self) -> RemoteServiceDiscoveryService:
        world = _WORLDS[-1] if _WORLDS else None
        phone = next((p for p in (world.phones if world else []) if p.udid.replace("-", "") ==
                      (self.serial or "").replace("-", "") and p.present), None)
        if phone is None or phone.tunnel != "userspace":
            raise UserspaceTunnelUnavailableError("The no-root userspace tunnel cannot serve this device.")
        self.rsd = RemoteServiceDiscoveryService(phone)
        return self.rsd

    async def aclose(self) -> None:
        self.closed = True

    async def __aenter__(self) -> RemoteServiceDiscoveryService:
        return await self.aopen()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class LockdownService:
    SERVICE_NAME = "fake"

    def __init__(self, lockdown: Any, service_name: Optional[str] = None, is_developer_service: bool = False,
                 service: Any = None, include_escrow_bag: bool = False) -> None:
        self.lockdown = lockdown
        self.phone: FakeIPhone = lockdown.phone
        self.service_name = service_name or self.SERVICE_NAME

    async def connect(self) -> None:
        self.phone.require(self.service_name)

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class InstallationProxyService(LockdownService):
    SERVICE_NAME = "com.apple.mobile.installation_proxy"

    async def get_apps(self, application_type: str = "Any", calculate_sizes: bool = False,
                       bundle_identifiers: Optional[list[str]] = None,
                       show_placeholders: bool = False) -> dict[str, dict[str, Any]]:
        self.phone.require()
        return {bid: {"CFBundleIdentifier": bid, "CFBundleShortVersionString": a.short_version,
                      "CFBundleVersion": a.build, "ApplicationType": "User"}
                for bid, a in self.phone.apps.items() if bundle_identifiers is None or bid in bundle_identifiers}

    async def install_from_local(self, package_path: str, cmd: str = "Install", options: Optional[dict[str, Any]] = None,
                                 handler: Optional[Callable[..., Any]] = None, developer: bool = False, *args: Any) -> None:
        self.phone.require()
        from devprof.devices.ios.app import read_ipa

        info = read_ipa(Path(package_path))
        self.phone.installs.append((cmd, str(package_path)))
        old = self.phone.apps.get(info.bundle_id)
        program = old.program if old else self.phone.world.default_program
        self.phone.install(info.bundle_id, program, info.short_version, info.build)

    async def upgrade(self, ipa_path: str, options: Optional[dict[str, Any]] = None,
                      handler: Optional[Callable[..., Any]] = None, *args: Any) -> None:
        await self.install_from_local(Path(ipa_path), "Upgrade", options, handler, False, *args)


class DiagnosticsService(LockdownService):
    SERVICE_NAME = "com.apple.mobile.diagnostics_relay"

    async def get_battery(self) -> Optional[dict[str, Any]]:
        self.phone.require()
        return {"Temperature": self.phone.battery_centi_c, "CurrentCapacity": 87, "IsCharging": False}


class MobileImageMounterService(LockdownService):
    SERVICE_NAME = "com.apple.mobile.mobile_image_mounter"

    def __init__(self, lockdown: Any) -> None:
        super().__init__(lockdown)

    async def is_image_mounted(self, image_type: str) -> bool:
        self.phone.require()
        return self.phone.ddi_mounted


def image_type_for_device(lockdown: Any) -> str:
    return "Personalized" if int(lockdown.product_version.split(".")[0]) >= 17 else "Developer"


class HouseArrestService(LockdownService):
    """AFC on the app's container folder on the host ('/' = the container)."""

    SERVICE_NAME = "com.apple.mobile.house_arrest"

    def __init__(self, lockdown: Any, documents_only: bool = False) -> None:
        super().__init__(lockdown)
        self.documents_only = documents_only
        self.root: Optional[Path] = None

    @classmethod
    async def create(cls, lockdown: Any, bundle_id: str, documents_only: bool = False) -> "HouseArrestService":
        service = cls(lockdown, documents_only=documents_only)
        service.phone.require()
        if bundle_id not in service.phone.apps:
            raise AppNotInstalledError(f"No app with bundle ID {bundle_id} is installed.")
        service.root = service.phone.container(bundle_id)
        return service

    def _p(self, filename: Any) -> Path:
        self.phone.require()
        rel = str(filename).lstrip("/")
        p = (self.root / rel).resolve()
        if self.root.resolve() not in (p, *p.parents):
            raise AfcException(f"path escapes the container: {filename}", 7, str(filename))
        return p

    async def push(self, local_path: os.PathLike, remote_path: os.PathLike, callback: Optional[Callable[[str, str], Any]] = None,
                   progress_bar: bool = True):
        dst = self._p(remote_path)
        if dst.is_dir():
            dst = dst / Path(local_path).name
        if not dst.parent.is_dir():
            raise AfcException(f"Failed to open {remote_path}", 8, str(remote_path))
        shutil.copyfile(local_path, dst)
        self.phone.bytes_pushed += Path(local_path).stat().st_size

    async def pull(self, relative_src: str, dst: str, match: Any = None, callback: Optional[Callable[..., Any]] = None,
                   src_dir: str = "", ignore_errors: bool = False, progress_bar: bool = True) -> None:
        src = self._p(f"{src_dir}/{relative_src}" if src_dir else relative_src)
        if not src.exists():
            raise AfcFileNotFoundError(f"No such file on the device: {relative_src}", 8, relative_src)
        out = Path(dst)
        if out.is_dir():
            out = out / src.name
        shutil.copyfile(src, out)

    async def stat(self, filename: os.PathLike) -> dict[str, Any]:
        p = self._p(filename)
        if not p.exists():
            raise AfcFileNotFoundError(f"No such file on the device: {filename}", 8, str(filename))
        s = p.stat()
        return {"st_size": s.st_size, "st_ifmt": "S_IFDIR" if p.is_dir() else "S_IFREG", "st_nlink": 1,
                "st_blocks": (s.st_size + 511) // 512, "st_mtime": datetime.fromtimestamp(s.st_mtime),
                "st_birthtime": datetime.fromtimestamp(s.st_mtime)}

    async def exists(self, filename: str):
        return self._p(filename).exists()

    async def listdir(self, filename: str) -> list[str]:
        p = self._p(filename)
        if not p.is_dir():
            raise AfcFileNotFoundError(f"No such file on the device: {filename}", 8, filename)
        return sorted(x.name for x in p.iterdir())

    async def makedirs(self, filename: os.PathLike):
        self._p(filename).mkdir(parents=True, exist_ok=True)
        return b""

    async def isdir(self, filename: str) -> bool:
        return self._p(filename).is_dir()

    async def rm_single(self, filename: os.PathLike, force: bool = False) -> bool:
        p = self._p(filename)
        try:
            p.rmdir() if p.is_dir() else p.unlink()
        except OSError:
            if force:
                return False
            raise AfcException(f"Failed to remove {filename}", 8, str(filename)) from None
        return True

    async def get_file_contents(self, filename: os.PathLike) -> bytes:
        p = self._p(filename)
        if not p.is_file():
            raise AfcFileNotFoundError(f"No such file on the device: {filename}", 8, str(filename))
        return p.read_bytes()

    async def set_file_contents(self, filename: os.PathLike, data: bytes, progress: Any = None) -> None:
        p = self._p(filename)
        if not p.parent.is_dir():
            raise AfcException(f"Failed to open {filename}", 8, str(filename))
        p.write_bytes(data)

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------------------------------
# DVT: provider, process control, device info, sysmontap

class DvtProvider:
    SERVICE_NAME = "com.apple.instruments.remoteserver.DVTSecureSocketProxy"
    RSD_SERVICE_NAME = "com.apple.instruments.dtservicehub"

    def __init__(self, lockdown: Any, strip_ssl: Optional[bool] = None, dtx: Any = None) -> None:
        self.lockdown = lockdown
        self.phone: FakeIPhone = lockdown.phone
        self.connected = False

    async def connect(self) -> None:
        phone = self.phone
        phone.require()
        major = int(phone.product_version.split(".")[0])
        over_lockdown = isinstance(self.lockdown, LockdownClient)
        if major >= 17 and over_lockdown:
            raise InvalidServiceError("lockdownd failed StartService: InvalidService", phone.udid,
                                      phone.product_version, error="InvalidService")
        if not phone.developer_mode:
            raise DeveloperModeIsNotEnabledError()
        if not phone.ddi_mounted:
            raise InvalidServiceError("lockdownd failed StartService: InvalidService", phone.udid,
                                      phone.product_version, error="InvalidService")
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()


class _DtxService:
    def __init__(self, provider: Any, service: Any = None) -> None:
        self._provider = provider
        self.phone: FakeIPhone = provider.phone

    async def connect(self) -> None:
        if not self._provider.connected:
            await self._provider.connect()
        self.phone.require()

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()


class ProcessControl(_DtxService):
    async def connect(self) -> None:
        await super().connect()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.phone._output_queues.append(self._queue)

    async def launch(self, bundle_id: str, arguments: Optional[list[str]] = None, kill_existing: bool = True,
                     start_suspended: bool = False, environment: Optional[dict[str, Any]] = None,
                     extra_options: Optional[dict[str, Any]] = None) -> int:
        return await self.phone.launch(bundle_id, list(arguments or []), dict(environment or {}), kill_existing)

    async def kill(self, pid: int):
        self.phone.require()
        proc = self.phone.processes.get(pid)
        if proc is not None and proc.running:
            await proc._kill()

    async def signal(self, pid: int, sig: int):
        await self.kill(pid)

    async def process_identifier_for_bundle_identifier(self, app_bundle_identifier: str) -> int:
        self.phone.require()
        return next((p.pid for p in self.phone.processes.values()
                     if p.running and p.app.bundle_id == app_bundle_identifier), 0)

    async def __aiter__(self):
        while True:
            ev = await self._queue.get()
            if ev is None:
                self._queue.put_nowait(None)
                raise QueueShutDown("Queue is shut down")
            yield ev


class DeviceInfo(_DtxService):
    async def is_running_pid(self, pid: int) -> bool:
        self.phone.require()
        p = self.phone.processes.get(pid)
        return bool(p and p.running) or pid in self.phone._system

    async def sysmon_process_attributes(self) -> list[str]:
        self.phone.require()
        return list(self.phone.sysmon_attributes)

    async def sysmon_system_attributes(self) -> list[str]:
        self.phone.require()
        return ["vmFreeCount", "vmUsedCount", "physMemSize"]

    async def proclist(self) -> list[dict[str, Any]]:
        self.phone.require()
        return [{"pid": r["pid"], "name": r["name"]} for r in self.phone.snapshot()]


class Sysmontap:
    IDENTIFIER = "com.apple.instruments.server.services.sysmontap"
    DEFAULT_INTERVAL_MS = 500
    MINIMUM_INTERVAL_MS = 1

    def __init__(self, dvt: Any, process_attributes: list[str], system_attributes: list[str],
                 interval_ms: int = DEFAULT_INTERVAL_MS) -> None:
        self.dvt, self.phone = dvt, dvt.phone
        self.process_attributes, self.system_attributes = list(process_attributes), list(system_attributes)
        self.interval_ms = interval_ms
        self.started = False
        self.phone.world.taps.append(self)

    async def __aenter__(self):
        self.phone.require()
        unknown = [a for a in self.process_attributes if a not in self.phone.sysmon_attributes]
        if unknown:
            raise DvtException(f"unknown sysmon attributes {unknown}")
        self.started = True
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.started = False

    async def iter_processes(self):
        while True:
            await asyncio.sleep(self.interval_ms / 1000.0)
            if not self.phone.present:
                raise ConnectionTerminatedError("the device is gone")
            yield [{a: row.get(a) for a in self.process_attributes} for row in self.phone.snapshot()]


# ------------------------------------------------------------------------------------------
# app programs

def observer_line(prompt_tokens: int = 64, generated_tokens: int = 15, t0: int = 1_700_000_000_000) -> str:
    """A PyTorchObserver stats line as ExecuTorch's llama_main prints it."""
    stats = {"prompt_tokens": prompt_tokens, "generated_tokens": generated_tokens,
             "model_load_start_ms": t0, "model_load_end_ms": t0 + 120, "inference_start_ms": t0 + 130,
             "prompt_eval_end_ms": t0 + 330, "first_token_ms": t0 + 330, "inference_end_ms": t0 + 630,
             "aggregate_sampling_time_ms": 5, "SCALING_FACTOR_UNITS_PER_SECOND": 1000}
    return "PyTorchObserver " + json.dumps(stats)


def scripted_app(output: Optional[list[str]] = None, memory_mb: Optional[list[float]] = None, step_s: float = 0.02,
                 exit_code: int = 0, crash_signal: Optional[int] = None, hang: bool = False,
                 vanish_after: Optional[int] = None, write_result: bool = True, ledger_peak_mb: Optional[float] = None,
                 on_start: Optional[Callable[[FakeProcess], Any]] = None, files: Optional[dict[str, bytes]] = None,
                 observer_in_result: bool = False) -> Program:
    """A program: print ``output`` chunks, one per step, while memory walks ``memory_mb``
    (physFootprint in MiB), then write ``files`` and the result file and exit/crash/hang.
    ``vanish_after=N``: the phone disappears after N steps. Arguments it received go to
    ``proc.arguments``, its environment to ``proc.environment``."""
    output = ["llama runner: loading\n", observer_line() + "\n"] if output is None else output
    memory_mb = [40, 120, 260, 310, 290, 180] if memory_mb is None else memory_mb

    async def program(proc: FakeProcess) -> Optional[int]:
        if on_start is not None:
            on_start(proc)
        steps = max(len(output), len(memory_mb))
        for i in range(steps):
            if vanish_after is not None and i >= vanish_after:
                proc.vanish_device()
                raise _Vanished()
            if i < len(memory_mb):
                proc.set_memory(memory_mb[i])
            if i < len(output):
                proc.print(output[i])
            await proc.sleep(step_s)
        while hang:
            await proc.sleep(0.02)
        for rel, data in (files or {}).items():
            proc.write_document(rel, data)
        if crash_signal is not None:
            crash(crash_signal)
        if write_result:
            fields: dict[str, Any] = {"exit_code": exit_code, "status": "ok" if exit_code == 0 else "error"}
            peak = ledger_peak_mb if ledger_peak_mb is not None else None
            if peak is not None:
                fields["peak_phys_footprint_bytes"] = int(peak * (1 << 20))
            if observer_in_result:
                fields["observer"] = json.loads(observer_line().split(" ", 1)[1])
            proc.write_result(**fields)
        return exit_code

    return program


def map_documents_args(args: list[str], documents: Path) -> list[str]:
    """Documents-relative paths (``devprof/...``) in an argv, as host paths in the container."""

    def value(v: str) -> str:
        return str(documents / v) if v.startswith("devprof/") else v

    out = []
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out.append(f"{k}={value(v)}")
        else:
            out.append(value(a))
    return out


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f.read().decode("ascii", "replace").splitlines():
                k, _, rest = line.partition(":")
                if k in ("VmRSS", "RssAnon", "VmSwap", "VmHWM"):
                    out[k] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def subprocess_app(cmd: Optional[list[str]] = None, env: Optional[dict[str, str]] = None) -> Program:
    """A program that runs ``cmd + mapped arguments`` on the host, like the benchmark app would run
    its runtime: output streamed as output events, memory from /proc/PID/status, result file
    written at exit (exit code, peak RssAnon+VmSwap as the ledger peak)."""
    cmd = list(cmd or [sys.executable, "-m", "devprof.refruntime"])

    async def program(proc: FakeProcess) -> Optional[int]:
        proc.documents.mkdir(parents=True, exist_ok=True)
        argv = cmd + map_documents_args(proc.arguments, proc.documents)
        penv = {**os.environ, **{k: str(v) for k, v in proc.environment.items()}, **(env or {})}
        penv["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if x)
        penv["PYTHONUNBUFFERED"] = "1"
        child = await asyncio.create_subprocess_exec(*argv, cwd=str(proc.documents), env=penv,
                                                     stdin=asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        peak = 0

        def read_memory() -> dict[str, int]:
            nonlocal peak
            s = _proc_status(child.pid)
            if "VmRSS" not in s:
                return proc.memory_bytes
            fp = (s.get("RssAnon", 0) + s.get("VmSwap", 0)) * 1024
            peak = max(peak, fp)
            proc.peak_footprint = peak
            proc.memory_bytes = {"physFootprint": fp, "memResidentSize": s["VmRSS"] * 1024,
                                 "memAnon": s.get("RssAnon", 0) * 1024}
            return dict(proc.memory_bytes)

        proc.memory = read_memory  # sysmontap reads the child's real memory

        async def watch() -> None:  # the app's own ledger: a fast poll of its footprint
            while child.returncode is None:
                read_memory()
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            assert child.stdout is not None
            while True:
                line = await child.stdout.readline()
                if not line:
                    break
                proc.print(line.decode("utf-8", "replace"))
            rc = await child.wait()
        except asyncio.CancelledError:
            if child.returncode is None:
                child.kill()
                await child.wait()
            raise
        finally:
            watcher.cancel()
        if rc < 0:
            crash(-rc)
        proc.write_result(exit_code=rc, status="ok" if rc == 0 else "error", peak_phys_footprint_bytes=peak)
        return rc

    return program


# ------------------------------------------------------------------------------------------
def make_ipa(path: Path, bundle_id: str = "org.devprof.bench", version: str = "1.0", build: str = "1",
             executable: str = "Bench") -> Path:
    """A minimal .ipa (a zip with Payload/<App>.app/Info.plist) that devprof can read and the fake
    installation proxy installs."""
    import plistlib
    import zipfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"Payload/{executable}.app/Info.plist", plistlib.dumps(
            {"CFBundleIdentifier": bundle_id, "CFBundleShortVersionString": version, "CFBundleVersion": build,
             "CFBundleExecutable": executable}, fmt=plistlib.FMT_BINARY))
        z.writestr(f"Payload/{executable}.app/{executable}", b"\xcf\xfa\xed\xfe" + b"\0" * 64)
    return path


def install_fake_iphone(monkeypatch, product_type: str = "iPhone17,1", *, root: Optional[Path] = None,
                        app: Optional[Program] = None, bundle_id: str = "org.devprof.bench",
                        runtime_cmd: Optional[list[str]] = None, isolate_aliases: bool = True,
                        register_runtime: Optional[str] = None, **behaviour: Any) -> FakeIPhone:
    """Make ``devprof.devices.ios`` see one fake iPhone (and be in devices.BACKENDS).

    The phone has the benchmark app ``bundle_id`` installed; unless ``app`` gives another
    program it behaves like the reference runtime: launching it runs
    ``python -m devprof.refruntime`` (or ``runtime_cmd``) on the host with the translated
    arguments and sysmontap reports that process's real memory. ``behaviour`` goes to
    :class:`FakeIPhone` (product_version, paired, locked, developer_mode, ddi_mounted, tunnel,
    termination_events, ...). ``root`` (e.g. pytest's tmp_path) holds the fake containers; a
    temporary folder otherwise. With ``isolate_aliases`` the user's alias file is hidden
    (DEVPROF_DEVICES_FILE points to a missing file) unless the test set one already.

    ``register_runtime="reference"`` also writes ``<root>/Bench.ipa`` (bundle ``bundle_id``) and
    registers it as that runtime's ios binary in a manifest under ``root``
    (DEVPROF_BINS_MANIFEST), which is what a session on an iPhone needs: ``devprof run --device
    iphone16pro`` then works end to end. The phone is returned; ``phone.ipa`` is the .ipa path.
    """
    import devprof.devices as devices
    from devprof.devices import ios
    from devprof.devices.ios import pmd3

    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="fake-iphone-"))
    world = FakeWorld(root / "phones")
    program = app or subprocess_app(runtime_cmd)
    world._default_program = program
    phone = world.add_iphone(product_type=product_type, **behaviour)
    phone.install(bundle_id, program)
    monkeypatch.setattr(pmd3, "_ACTIVE", world.adapter())
    if ios not in devices.BACKENDS:
        monkeypatch.setattr(devices, "BACKENDS", [*devices.BACKENDS, ios])
    if isolate_aliases and "DEVPROF_DEVICES_FILE" not in os.environ:
        monkeypatch.setenv("DEVPROF_DEVICES_FILE", str(root / "no-devices.toml"))
    monkeypatch.setenv("DEVPROF_IOS_APP", bundle_id)
    phone.ipa = None
    if register_runtime:
        from devprof import bins

        monkeypatch.setenv("DEVPROF_BINS_MANIFEST", str(root / "device_bins" / "manifest.toml"))
        phone.ipa = make_ipa(root / "device_bins" / "Bench.ipa", bundle_id=bundle_id, version="1.0", build="2")
        bins.add(phone.ipa, register_runtime, "ios", "any", name=f"{register_runtime}-ios-fake-bench")
    return phone


def install_world(monkeypatch, world: FakeWorld) -> FakeWorld:
    """Use ``world`` as pymobiledevice3 for devprof.devices.ios (for tests with several phones)."""
    from devprof.devices.ios import pmd3

    monkeypatch.setattr(pmd3, "_ACTIVE", world.adapter())
    return world
