"""The one boundary between devprof and pymobiledevice3: a small adapter object.

pymobiledevice3 is an optional extra (``pip install 'devprof[ios]'``), imported only when an
iPhone is asked for. Every entry point the backend uses comes through :class:`Pmd3`, so the tests
swap in fakes with the same signatures (tests/support/fake_pmd3.py) and no iPhone or pymobiledevice3 is
needed to exercise the backend.

Checked against pymobiledevice3 11.45.0 (everything is asyncio there; services are async context
managers):

* ``usbmux.list_devices(usbmux_address=None) -> list[MuxDevice(devid, serial, connection_type)]``
* ``lockdown.create_using_usbmux(serial=None, ..., autopair=True, ...) -> LockdownClient``
  (``.paired``, ``.udid``, ``.product_type``, ``.product_version``, ``.product_build_version``,
  ``.all_values``, ``.display_name``, ``get_developer_mode_status()``, ``close()``)
* ``services.installation_proxy.InstallationProxyService(lockdown)``: ``get_apps(application_type,
  calculate_sizes, bundle_identifiers)``, ``install_from_local(package_path, ...)``, ``upgrade(ipa_path)``
* ``services.house_arrest.HouseArrestService.create(lockdown, bundle_id, documents_only=False)``
  (an AFC service: ``push``, ``pull``, ``stat``, ``makedirs``, ``get_file_contents``,
  ``set_file_contents``, ``rm_single``)
* ``services.dvt.instruments.dvt_provider.DvtProvider(lockdown_or_rsd)``;
  ``process_control.ProcessControl(dvt)``: ``launch(bundle_id, arguments, kill_existing,
  start_suspended, environment, extra_options) -> pid``, ``kill(pid)``, ``async for`` ->
  ``OutputReceivedEvent(pid, date, message)``; ``device_info.DeviceInfo(dvt)``:
  ``is_running_pid``, ``sysmon_process_attributes``, ``sysmon_system_attributes``;
  ``sysmontap.Sysmontap(dvt, process_attributes, system_attributes, interval_ms)`` with
  ``MINIMUM_INTERVAL_MS = 1``, ``DEFAULT_INTERVAL_MS = 500``, ``iter_processes()``
* ``services.diagnostics.DiagnosticsService(lockdown).get_battery()`` (IOPMPowerSource)
* ``services.mobile_image_mounter.MobileImageMounterService(lockdown).is_image_mounted(type)`` and
  ``image_type_for_device(lockdown)``
* iOS 17+: ``tunneld.api.get_tunneld_device_by_udid(udid)`` (a running
  ``sudo pymobiledevice3 remote tunneld``) or ``remote.userspace_tunnel.UserspaceRsdTunnel``
  (no root, iOS 17.4+), both giving a ``RemoteServiceDiscoveryService``.
* Process exits: ``ProcessControlService`` receives
  ``processWithPID:terminatedWithExitCode:orCrashingSignal:`` and only LOGS it (a warning on the
  process_control logger); :meth:`Pmd3.on_termination` listens to that log record.
"""

from __future__ import annotations

import logging
import re
import types
from dataclasses import dataclass
from typing import Any, Callable

from devprof.errors import DeviceError

INSTALL_HINT = "pip install 'devprof[ios]'"

TerminationCallback = Callable[[int, "int | None", "int | None"], None]


class Pmd3Missing(DeviceError):
    """pymobiledevice3 is not installed (or cannot be imported)."""


@dataclass
class Pmd3:
    """The pymobiledevice3 entry points the iOS backend uses (real ones or fakes)."""

    version: str
    list_devices: Callable[..., Any]  # async (usbmux_address=None) -> list[MuxDevice]
    create_using_usbmux: Callable[..., Any]  # async (serial=None, ..., autopair=True, ...) -> LockdownClient
    InstallationProxyService: Any
    HouseArrestService: Any
    DvtProvider: Any
    ProcessControl: Any
    DvtDeviceInfo: Any  # services.dvt.instruments.device_info.DeviceInfo
    Sysmontap: Any
    DiagnosticsService: Any
    MobileImageMounterService: Any
    image_type_for_device: Callable[[Any], str]
    get_tunneld_device_by_udid: Callable[..., Any]  # async (udid, ...) -> RSD | None
    userspace_tunnel: Callable[[], Any]  # () -> the UserspaceRsdTunnel class (imported on demand)
    exc: Any  # namespace of exception classes, named as in pymobiledevice3.exceptions
    #: errors that mean "the connection to the device is gone"
    transport_errors: tuple[type[BaseException], ...]
    #: register a callback(pid, exit_code, crashing_signal); returns a function that removes it
    on_termination: Callable[[TerminationCallback], Callable[[], None]]

    def is_exc(self, e: BaseException, *names: str) -> bool:
        """isinstance(e, exc.<name>) for any name this pymobiledevice3 defines."""
        for n in names:
            cls = getattr(self.exc, n, None)
            if isinstance(cls, type) and isinstance(e, cls):
                return True
        return False


# ------------------------------------------------------------------------------------------
_ACTIVE: Pmd3 | None = None


def get() -> Pmd3:
    """The adapter in use: the real pymobiledevice3 (imported now) unless a test installed fakes."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = load_real()
    return _ACTIVE


def use(adapter: Pmd3 | None) -> None:
    """Install an adapter (tests: fakes); None goes back to importing the real library."""
    global _ACTIVE
    _ACTIVE = adapter


def available() -> bool:
    try:
        get()
    except Pmd3Missing:
        return False
    return True


_TERM_RE = re.compile(r"Process with PID (\d+) terminated with exit code (\S+) or crashing signal (\S+)")
_PC_LOGGER = "pymobiledevice3.services.dvt.instruments.process_control"


def _int_or_none(s: str) -> int | None:
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def _log_termination_hook(callback: TerminationCallback) -> Callable[[], None]:
    """pymobiledevice3 11.45 reports a process's end only as a log warning (ProcessControlService.
    _on_process_terminated -> ctx logger = the process_control logger's "dtx" child); listen there."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                m = _TERM_RE.search(record.getMessage())
            except Exception:  # noqa: BLE001 - a log handler must never raise
                return
            if m:
                callback(int(m.group(1)), _int_or_none(m.group(2)), _int_or_none(m.group(3)))

    logger = logging.getLogger(_PC_LOGGER)
    handler = _Handler(level=logging.WARNING)
    logger.addHandler(handler)
    return lambda: logger.removeHandler(handler)


def load_real() -> Pmd3:
    """Import pymobiledevice3; :class:`Pmd3Missing` (a one-line DeviceError) when it is absent."""
    try:
        from importlib.metadata import version as _dist_version

        from pymobiledevice3 import exceptions as exc_mod
        from pymobiledevice3 import usbmux
        from pymobiledevice3.lockdown import create_using_usbmux
        from pymobiledevice3.services.diagnostics import DiagnosticsService
        from pymobiledevice3.services.dvt.instruments.device_info import DeviceInfo
        from pymobiledevice3.services.dvt.instruments.dvt_provider import DvtProvider
        from pymobiledevice3.services.dvt.instruments.process_control import ProcessControl
        from pymobiledevice3.services.dvt.instruments.sysmontap import Sysmontap
        from pymobiledevice3.services.house_arrest import HouseArrestService
        from pymobiledevice3.services.installation_proxy import InstallationProxyService
        from pymobiledevice3.services.mobile_image_mounter import MobileImageMounterService, image_type_for_device
        from pymobiledevice3.tunneld.api import get_tunneld_device_by_udid
    except ImportError as e:
        missing = getattr(e, "name", "") or ""
        if missing.split(".")[0] == "pymobiledevice3" or "pymobiledevice3" in str(e):
            raise Pmd3Missing(f"iOS devices need pymobiledevice3, which is not installed: {INSTALL_HINT}") from None
        raise Pmd3Missing(f"pymobiledevice3 could not be imported ({e}): reinstall it with {INSTALL_HINT}") from None
    try:
        from pymobiledevice3.dtx.service import QueueShutDown
    except ImportError:  # pragma: no cover - older layouts
        QueueShutDown = ConnectionError  # noqa: N806
    try:
        ver = _dist_version("pymobiledevice3")
    except Exception:  # noqa: BLE001
        ver = "unknown"

    def userspace_tunnel():
        # imported on demand: it pulls in the pure-Python TCP stack (slow to import)
        from pymobiledevice3.remote.userspace_tunnel import UserspaceRsdTunnel

        return UserspaceRsdTunnel

    exc = types.SimpleNamespace(**{n: getattr(exc_mod, n) for n in dir(exc_mod) if not n.startswith("_")})
    exc.QueueShutDown = QueueShutDown
    transport = tuple(c for c in (
        getattr(exc_mod, "ConnectionTerminatedError", None), getattr(exc_mod, "ConnectionFailedError", None),
        getattr(exc_mod, "NoDeviceConnectedError", None), getattr(exc_mod, "DeviceNotFoundError", None),
        getattr(exc_mod, "NotConnectedError", None), QueueShutDown, ConnectionError, EOFError,
    ) if isinstance(c, type))
    return Pmd3(
        version=ver, list_devices=usbmux.list_devices, create_using_usbmux=create_using_usbmux,
        InstallationProxyService=InstallationProxyService, HouseArrestService=HouseArrestService,
        DvtProvider=DvtProvider, ProcessControl=ProcessControl, DvtDeviceInfo=DeviceInfo, Sysmontap=Sysmontap,
        DiagnosticsService=DiagnosticsService, MobileImageMounterService=MobileImageMounterService,
        image_type_for_device=image_type_for_device, get_tunneld_device_by_udid=get_tunneld_device_by_udid,
        userspace_tunnel=userspace_tunnel, exc=exc, transport_errors=transport,
        on_termination=_log_termination_hook,
    )


# ------------------------------------------------------------------------------------------
# The prerequisites, each as a one-line message that names the command to run.

USBMUXD = ("usbmuxd is not running, so no iPhone can be reached: start it (Linux: `sudo systemctl start usbmuxd`, "
           "or install the `usbmuxd` package; macOS/Windows: it comes with the OS / Apple Devices), "
           "then check with `pymobiledevice3 usbmux list`")


def not_paired(name: str) -> str:
    return (f"{name} does not trust this computer: unlock it, run `pymobiledevice3 lockdown pair` "
            "and tap Trust on the phone, then run again")


def locked(name: str) -> str:
    return (f"{name} is locked: unlock it and run again (set Settings > Display & Brightness > Auto-Lock "
            "to Never for long runs)")


def developer_mode(name: str) -> str:
    return (f"Developer Mode is off on {name}: run `pymobiledevice3 amfi enable-developer-mode` "
            "(the phone restarts; unlock it and confirm), then run again")


def ddi(name: str) -> str:
    return (f"no developer disk image is mounted on {name}: run `pymobiledevice3 mounter auto-mount` "
            "(with the phone unlocked), then run again")


def tunnel(name: str, version: str, why: str = "") -> str:
    return (f"{name} runs iOS {version}: on iOS 17+ developer services need a tunnel: run "
            "`sudo pymobiledevice3 remote tunneld` in another terminal and leave it running, then run again"
            + (f" ({why})" if why else ""))


def app_missing(name: str, bundle_id: str) -> str:
    return (f"the benchmark app {bundle_id} is not installed on {name}: register its development-signed .ipa "
            "(`devprof bins add APP.ipa --platform ios --abi any --runtime RUNTIME`) or set DEVPROF_IOS_APP=APP.ipa; "
            "see docs/ios.md")


def one_line(e: BaseException | str, limit: int = 240) -> str:
    text = str(e).strip() if not isinstance(e, str) else e.strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line and isinstance(e, BaseException):
        line = type(e).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
