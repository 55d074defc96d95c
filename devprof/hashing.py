"""sha256 of local files, cached by (path, size, mtime) for the life of the process.

Staging (Android, iOS), the binaries manifest and bundle manifests all compare content hashes;
a multi-GB bundle is hashed once per process, not once per push.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path | str) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(4 << 20), b""):
                h.update(chunk)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
