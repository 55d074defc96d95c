"""Device discovery and resolution: turn ``--device SPEC`` into device objects.

``local`` is this host (the embedded default, needs no phone). Phone backends register
themselves in ``BACKENDS``; each offers ``discover()`` (what is attached) and ``resolve(spec)``.
"""

from __future__ import annotations

from devprof.devices.base import Device
from devprof.devices.local import LocalDevice
from devprof.errors import UsageError
from devprof.results import DeviceInfo


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
    errors = []
    for backend in backends:
        devices = backend.resolve(spec, **opts)
        if devices:
            return devices
        errors.extend(getattr(backend, "last_errors", []))
    # no alias, serial or UDID of that name: bad input (exit 2); a known alias whose phone is not
    # attached, or an attached phone that cannot be used, is a DeviceError from the backend (exit 1)
    raise UsageError(f"no device matches {spec!r}" + (f" ({'; '.join(errors)})" if errors else "")
                      + "; `devprof devices` lists what is attached")


def _phone_backends() -> list:
    if not BACKENDS:
        from devprof.devices import android

        BACKENDS.append(android)
        try:
            from devprof.devices import ios
        except ImportError:  # the iOS backend module itself is optional
            pass
        else:
            BACKENDS.append(ios)
    return list(BACKENDS)


#: Phone backends (modules with discover(**opts) and resolve(spec, **opts) and last_errors).
BACKENDS: list = []
