"""iPhones over pymobiledevice3 (the optional ``devprof[ios]`` extra, imported lazily).

The backend's module-level interface (see devices/__init__.py): :func:`discover` lists what
usbmuxd sees, :func:`resolve` turns ``--device SPEC`` into :class:`IosDevice` objects; both append why nothing
matched to the ``reasons`` list they are given. SPEC is an alias matched on the ProductType
(``iphone16pro`` = iPhone17,1; built in or from the user's alias file shared with Android), a
UDID (with or without its dash), or ``all``.

Without pymobiledevice3 devprof works as before; asking for an iPhone then says
``pip install 'devprof[ios]'``. docs/ios.md has the prerequisites and the benchmark-app contract.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from devprof.devices import aliases as al
from devprof.devices.ios import pmd3 as _pmd3
from devprof.devices.ios.app import DEFAULT_BUNDLE_ID, IpaInfo, read_ipa
from devprof.devices.ios.device import IosDevice, run_blocking
from devprof.devices.ios.run import MEMORY_METRIC, IosMemorySample, same_udid
from devprof.devices.ios.pmd3 import INSTALL_HINT, Pmd3, Pmd3Missing
from devprof.errors import DeviceError, DevprofError
from devprof.results import DeviceInfo

__all__ = ["discover", "resolve", "IosDevice", "IosMemorySample", "Pmd3", "Pmd3Missing",
           "INSTALL_HINT", "DEFAULT_BUNDLE_ID", "MEMORY_METRIC", "IpaInfo", "read_ipa"]

_UDID_RE = re.compile(r"^([0-9a-f]{8}-?[0-9a-f]{16}|[0-9a-f]{40})$", re.IGNORECASE)


@dataclass
class _Probe:
    """What one usbmux entry says about itself (read with autopair=False: never pairs)."""

    mux_serial: str
    connection: str
    udid: str = ""
    product_type: str = ""
    version: str = ""
    build: str = ""
    device_name: str = ""
    abi: str = ""
    pmd3_name: str = ""
    paired: bool = False
    error: str = ""


async def _probe_all(P: Pmd3) -> list[_Probe]:
    listed = await P.list_devices()
    chosen: dict[str, object] = {}
    for d in listed:  # one entry per device: USB over Wi-Fi
        key = d.serial.replace("-", "").upper()
        if key not in chosen or getattr(d, "connection_type", "") == "USB":
            chosen[key] = d
    out = []
    for d in chosen.values():
        pr = _Probe(mux_serial=d.serial, connection=getattr(d, "connection_type", ""), udid=d.serial)
        try:
            ld = await asyncio.wait_for(P.create_using_usbmux(serial=d.serial, autopair=False), 15)
        except Exception as e:  # noqa: BLE001 - reported per device
            if P.is_exc(e, "ConnectionFailedToUsbmuxdError"):
                raise
            pr.error = _pmd3.one_line(e, 160)
        else:
            try:
                values = dict(getattr(ld, "all_values", None) or {})
                pr.udid = getattr(ld, "udid", None) or values.get("UniqueDeviceID") or d.serial
                pr.product_type = getattr(ld, "product_type", None) or values.get("ProductType") or ""
                pr.version = ld.product_version or ""
                pr.build = getattr(ld, "product_build_version", None) or values.get("BuildVersion") or ""
                pr.device_name = values.get("DeviceName") or ""
                pr.abi = values.get("CPUArchitecture") or ""
                pr.pmd3_name = getattr(ld, "display_name", None) or ""
                pr.paired = bool(ld.paired)
            finally:
                try:
                    await ld.close()
                except Exception:  # noqa: BLE001
                    pass
        out.append(pr)
    return out


def _name(pr: _Probe, table: dict) -> str:
    n = al.display_name("ios", pr.product_type, table) if pr.product_type else ""
    if not n or n == pr.product_type:
        n = pr.pmd3_name or pr.product_type or "iOS device"
    return n


def _describe(pr: _Probe, table: dict) -> str:
    bits = [pr.product_type or "?", pr.udid]
    if pr.error:
        bits.append(pr.error)
    elif not pr.paired:
        bits.append("not trusted")
    return f"{_name(pr, table)} ({', '.join(bits)})"


def _table(devices_file: Path | None) -> dict:
    try:
        return al.load(devices_file)
    except DevprofError:
        return dict(al.BUILTIN)


def _probes(P: Pmd3) -> list[_Probe]:
    try:
        return run_blocking(lambda: _probe_all(P), timeout=90)
    except DevprofError:
        raise
    except Exception as e:  # noqa: BLE001
        if P.is_exc(e, "ConnectionFailedToUsbmuxdError"):
            raise DeviceError(_pmd3.USBMUXD) from None
        raise DeviceError(f"cannot list iOS devices over usbmux: {_pmd3.one_line(e)}") from None


def discover(devices_file: Path | None = None, reasons: list[str] | None = None, **_) -> list[DeviceInfo]:
    """Every iPhone usbmuxd sees (never fails: problems go to ``reasons``)."""
    reasons = [] if reasons is None else reasons
    try:
        P = _pmd3.get()
    except Pmd3Missing:
        return []
    try:
        probes = _probes(P)
    except DeviceError as e:
        reasons.append(e.message)
        return []
    table = _table(devices_file)
    found = []
    for pr in probes:
        state = "ready" if pr.paired and not pr.error else (
            pr.error or "not trusted: run `pymobiledevice3 lockdown pair`")
        found.append(DeviceInfo(
            kind="ios", serial=pr.udid, name=_name(pr, table), model=pr.product_type,
            os_version=f"iOS {pr.version}" + (f" ({pr.build})" if pr.build else "") if pr.version else "",
            memory_metric=MEMORY_METRIC,
            extra={"product_type": pr.product_type, "build": pr.build, "device_name": pr.device_name,
                   "abi": pr.abi, "connection": pr.connection, "aliases": al.names_for("ios", pr.udid, pr.product_type, table),
                   "state": state},
        ))
    return found


def _looks_ios(key: str, alias) -> bool:
    if alias is not None:
        return alias.platform == "ios"
    return key.startswith(("iphone", "ipad", "ios")) or bool(_UDID_RE.match(key))


def resolve(spec: str, devices_file: Path | None = None, ios_app: str | Path | None = None,
            ios_tunnel: str | None = None, preflight: bool = True, reasons: list[str] | None = None,
            **_) -> list[IosDevice]:
    """iPhones matching ``spec`` (alias | UDID | all), prerequisites checked.

    Raises a one-line DeviceError when the spec clearly meant an iPhone that cannot be used
    (pymobiledevice3 missing, usbmuxd down, not trusted, Developer Mode off, no developer disk
    image, no iOS 17+ tunnel, an iOS alias with no such phone attached); returns [] with why in
    ``reasons`` when nothing iOS matches, so other backends get their turn.
    """
    reasons = [] if reasons is None else reasons
    raw = (spec or "").strip()
    key = raw.lower()
    table = al.load(devices_file)
    alias = table.get(key)
    if alias is not None and alias.platform == "android":
        return []
    meant_ios = _looks_ios(key, alias)
    try:
        P = _pmd3.get()
    except Pmd3Missing as e:
        if meant_ios:
            raise
        if key == "all":
            reasons.append(e.message)
        return []
    try:
        probes = _probes(P)
    except DeviceError as e:
        if meant_ios:
            raise
        reasons.append(e.message)
        return []
    matched = _matching(probes, raw, alias)
    if not matched:
        _explain_no_match(probes, raw, alias, meant_ios, table, reasons)
        return []
    if alias is not None and alias.model and len(matched) > 1:
        listing = ", ".join(_describe(p, table) for p in matched)
        raise DeviceError(f"{len(matched)} iPhones match {raw!r}: {listing}; pass a UDID, or --device all")
    for p in matched:
        if p.error:
            raise DeviceError(f"{_name(p, table)} ({p.udid}) cannot be reached: {p.error}")
    return _open(matched, P, ios_app=ios_app, ios_tunnel=ios_tunnel, devices_file=devices_file,
                 preflight=preflight)


def _matching(probes: list[_Probe], raw: str, alias) -> list[_Probe]:
    if raw.lower() == "all":
        return [p for p in probes if not p.error]
    if alias is not None:
        return [p for p in probes if alias.matches("ios", p.udid, p.product_type)
                or (alias.serial is not None and (same_udid(alias.serial, p.udid)
                                                  or same_udid(alias.serial, p.mux_serial)))]
    return [p for p in probes if same_udid(raw, p.udid) or same_udid(raw, p.mux_serial)]


def _explain_no_match(probes: list[_Probe], raw: str, alias, meant_ios: bool, table: dict,
                      reasons: list[str]) -> None:
    """Raise when the spec clearly meant a missing iPhone; otherwise say why in ``reasons``."""
    attached = "; ".join(_describe(p, table) for p in probes) or "none"
    if alias is not None and alias.platform == "ios":
        want = alias.model or alias.serial or alias.name
        raise DeviceError(f"no attached iPhone is a {alias.display or alias.name} ({want}); "
                          f"attached over usbmux: {attached}")
    if meant_ios and _UDID_RE.match(raw.lower()):
        raise DeviceError(f"no iPhone with UDID {raw} is attached; attached over usbmux: {attached}")
    reasons.extend([f"iOS devices attached: {attached}"] if probes else (
        ["no iOS device attached (usbmux lists none)"] if meant_ios else []))


def _open(matched: list[_Probe], P: Pmd3, *, ios_app, ios_tunnel, devices_file,
          preflight: bool) -> list[IosDevice]:
    """An IosDevice per probe, preflighted; all closed again if any fails."""
    devices = []
    try:
        for p in matched:
            dev = IosDevice(p.udid, mux_serial=p.mux_serial, app=ios_app, tunnel=ios_tunnel,
                            devices_file=devices_file, product_type=p.product_type, pmd3=P)
            devices.append(dev)
            if preflight:
                dev.preflight()
    except BaseException:
        for d in devices:
            d.close()
        raise
    return devices
