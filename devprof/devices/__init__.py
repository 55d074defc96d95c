"""Device discovery and resolution: turn ``--device SPEC`` into device objects.

``local`` is this host (the embedded default, needs no phone). The phone backends are the modules
named in :data:`BACKEND_MODULES`; each offers ``discover(reasons=None, **opts)`` (what is attached)
and ``resolve(spec, reasons=None, **opts)`` (the devices ``spec`` names, [] when none of its kind),
appending to ``reasons`` one line per thing that kept it from finding a device.
"""

from __future__ import annotations

import importlib

from devprof.devices.base import Device
from devprof.devices.local import LocalDevice
from devprof.errors import NoDeviceMatch, UsageError  # noqa: F401 (NoDeviceMatch: raised by resolve)
from devprof.results import DeviceInfo

#: The phone backends by module name, and whether the module may be missing (its dependencies are an
#: optional extra). Adding a device kind is adding its module here.
BACKEND_MODULES: tuple[tuple[str, bool], ...] = (
    ("devprof.devices.android", False),
    ("devprof.devices.ios", True),
)

#: The backend modules, imported on first use (tests may replace the list).
BACKENDS: list = []


def discover(**opts) -> list[DeviceInfo]:
    """Every device devprof can use now, local first. Phone backends that cannot be reached
    (no adb server, no usbmuxd) are skipped: listing devices must not fail for that."""
    found = [LocalDevice().info()]
    for backend in _phone_backends():
        found.extend(backend.discover(**opts))
    return found


def resolve(spec: str, **opts) -> list[Device]:
    """``local`` | an alias (``s25``) | a serial | ``all`` -> the devices to run on."""
    spec = (spec or "local").strip()
    if spec.lower() in ("local", "host", "localhost"):
        return [LocalDevice()]
    backends = _phone_backends()
    if not backends:
        raise UsageError(
            f"unknown device {spec!r}: only 'local' is available (phone backends are not installed)")
    reasons: list[str] = []
    for backend in backends:
        devices = backend.resolve(spec, reasons=reasons, **opts)
        if devices:
            return devices
    # no alias, serial or UDID of that name: bad input (exit 2); a known alias whose phone is not
    # attached, or an attached phone that cannot be used, is a DeviceError from the backend (exit 1)
    raise NoDeviceMatch(spec, reasons)


def unreachable_endpoints() -> list[str]:
    """What the phone backends could not reach during the last discover/resolve (e.g. an adb endpoint of
    --adb-server that did not answer): one line each, for the CLI to warn about."""
    return [line for backend in BACKENDS for line in getattr(backend, "down", [])]


def _phone_backends() -> list:
    if not BACKENDS:
        for name, optional in BACKEND_MODULES:
            try:
                BACKENDS.append(importlib.import_module(name))
            except ImportError:
                if not optional:
                    raise
    return list(BACKENDS)
