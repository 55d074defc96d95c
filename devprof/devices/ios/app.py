"""The benchmark app's side of the iOS backend: .ipa identity, device paths, argv and results.

Nothing here talks to a device or imports pymobiledevice3; it is the contract of docs/ios.md in
code form, so the backend and the test fakes share one definition of it.

Path convention: every device path devprof hands out (``StageReport.paths``, ``scratch_path``,
the result file) is RELATIVE TO THE APP'S Documents DIRECTORY, e.g.
``devprof/<group>/weights.bin``. The app resolves a relative path against its own
``NSSearchPathForDirectoriesInDomains(.documentDirectory)``; AFC (house_arrest) reaches the same
file as ``/Documents/devprof/<group>/weights.bin`` in the vended container.
"""

from __future__ import annotations

import plistlib
import posixpath
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from devprof.errors import DeviceError, UsageError
from devprof.files import sha256_file  # noqa: F401 - used here and by device.py as A.sha256_file

#: The bundle id of devprof's benchmark app when nothing else is configured.
DEFAULT_BUNDLE_ID = "org.devprof.bench"
#: Documents-relative roots.
ROOT = "devprof"
RESULTS_DIR = f"{ROOT}/results"
SCRATCH_DIR = f"{ROOT}/scratch"
#: The per-folder record of what was pushed (name -> size, sha256), kept on the device.
INDEX_NAME = ".devprof-index.json"
#: Where the app records the sha256 of the .ipa it was installed from (Documents-relative).
APP_STAMP = f"{ROOT}/.devprof-app.json"
#: The Documents folder as AFC sees it inside a vended container (both VendContainer and
#: VendDocuments: pymobiledevice3's HouseArrestService uses the same /Documents root).
AFC_DOCUMENTS = "/Documents"

#: Environment every launch gets (req.env overrides, devprof's own keys override both).
#: OS_ACTIVITY_DT_MODE and NSUnbufferedIO are what Xcode sets when it runs an app: os_log lines
#: are mirrored to stderr and Foundation does not buffer stdout, so process control's output
#: events carry them while the app runs.
BASE_ENV = {"OS_ACTIVITY_DT_MODE": "YES", "NSUnbufferedIO": "YES"}
ENV_RUN_ID = "DEVPROF_RUN_ID"
ENV_RESULT_FILE = "DEVPROF_RESULT_FILE"
ENV_RUNTIME = "DEVPROF_RUNTIME"
ENV_SAMPLE_MS = "DEVPROF_SAMPLE_MS"
ENV_TIMEOUT_S = "DEVPROF_TIMEOUT_S"

# Result-file keys (the app writes Documents/devprof/results/<run>.json before it exits).
R_EXIT_CODE = "exit_code"
R_STATUS = "status"  # "ok" | "error"
R_ERROR = "error"
R_OBSERVER = "observer"  # the PyTorchObserver JSON object
R_PEAK_FOOTPRINT = "peak_phys_footprint_bytes"  # task_vm_info.ledger_phys_footprint_peak
R_FOOTPRINT = "phys_footprint_bytes"  # task_vm_info.phys_footprint at the end

_BUNDLE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+){2,}$")
_INFO_PLIST_RE = re.compile(r"^Payload/[^/]+\.app/Info\.plist$")


@dataclass(frozen=True)
class IpaInfo:
    """What devprof needs to know about an .ipa: which app it is and which version."""

    path: Path
    bundle_id: str
    short_version: str  # CFBundleShortVersionString
    build: str  # CFBundleVersion
    executable: str
    sha256: str


_IPA_CACHE: dict[tuple[str, int, int], IpaInfo] = {}


def read_ipa(path: Path) -> IpaInfo:
    """Bundle id and versions from ``Payload/<name>.app/Info.plist`` inside an .ipa (a zip)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise UsageError(f"benchmark app not found: {path}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _IPA_CACHE:
        return _IPA_CACHE[key]
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if _INFO_PLIST_RE.match(n)]
            if len(names) != 1:
                raise UsageError(f"{path.name} is not an .ipa: expected one Payload/<App>.app/Info.plist, "
                                 f"found {len(names)}")
            info = plistlib.loads(z.read(names[0]))
    except (zipfile.BadZipFile, plistlib.InvalidFileException, ValueError, OSError) as e:
        raise UsageError(f"cannot read {path.name} as an .ipa: {e}") from None
    bid = info.get("CFBundleIdentifier")
    if not isinstance(bid, str) or not bid:
        raise UsageError(f"{path.name}: Info.plist has no CFBundleIdentifier")
    out = IpaInfo(path=path, bundle_id=bid, short_version=str(info.get("CFBundleShortVersionString", "")),
                  build=str(info.get("CFBundleVersion", "")), executable=str(info.get("CFBundleExecutable", "")),
                  sha256=sha256_file(path))
    _IPA_CACHE[key] = out
    return out




def looks_like_bundle_id(s: str) -> bool:
    """``org.devprof.bench`` yes; ``python3.11``, ``llama_main``, ``/usr/bin/x`` no."""
    return bool(_BUNDLE_ID_RE.match(s)) and "/" not in s


def split_argv(argv: list[str], default_bundle_id: str) -> tuple[str, list[str], str]:
    """(bundle id, app arguments, runtime name) for a runtime adapter's argv.

    argv[0] identifies the app/runtime: an .ipa path or a bundle id picks that app; anything else
    (``llama_main``, a host Python) names the runtime inside the default app and is passed as
    ``DEVPROF_RUNTIME``. ``-m MODULE`` right after a host interpreter is dropped the same way
    (``python -m devprof.refruntime ...`` -> runtime ``devprof.refruntime``).
    """
    if not argv:
        raise UsageError("nothing to run: empty command line")
    first, rest = argv[0], list(argv[1:])
    if first.lower().endswith(".ipa"):
        return read_ipa(Path(first)).bundle_id, rest, read_ipa(Path(first)).executable or first
    if looks_like_bundle_id(first):
        return first, rest, first
    runtime = PurePosixPath(first).name or first
    if len(rest) >= 2 and rest[0] == "-m":
        runtime, rest = rest[1], rest[2:]
    return default_bundle_id, rest, runtime


def safe_component(name: str, what: str = "name") -> str:
    """One path component for a device folder or file (no separators, no dot-dot)."""
    s = str(name)
    if not s or s in (".", "..") or "/" in s or "\\" in s or "\x00" in s or "\n" in s:
        raise DeviceError(f"invalid {what} for an iOS device path: {name!r}")
    return s


def documents_rel(device_path: str) -> str:
    """A device path as devprof hands it out (Documents-relative), also accepting
    ``Documents/...``, ``/Documents/...`` or an absolute container path (``.../Documents/...``)."""
    p = str(device_path).replace("\\", "/")
    if "/Documents/" in p:
        p = p.rsplit("/Documents/", 1)[1]
    elif p.startswith("Documents/"):
        p = p[len("Documents/"):]
    p = posixpath.normpath(p.lstrip("/"))
    if p in ("", ".") or p == ".." or p.startswith("../"):
        raise DeviceError(f"not a path inside the app's Documents folder: {device_path!r}")
    return p


def afc_path(rel: str) -> str:
    """The AFC path (inside the vended container) of a Documents-relative path."""
    return f"{AFC_DOCUMENTS}/{documents_rel(rel)}"
