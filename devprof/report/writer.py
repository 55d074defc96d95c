"""The one writer of devprof's output files: atomic (a temporary file beside the target, renamed into
place, so a full disk or a Ctrl-C leaves no half-written file), every OS error one clear line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from devprof.errors import UsageError, path_error


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file renamed into place, with the permissions a plain write would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, what: str) -> Path:
    """Write a user-named file atomically; a folder or an OS error is one clear DevprofError."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write the {what} to {path}: it is a folder (give a file name)")
    try:
        atomic_write(path, text)
    except OSError as e:
        raise path_error(f"cannot write to {path} (the {what}): {e.strerror or e}", e) from None
    return path


def write_files(folder: Path, files: list[tuple[str, str]], what: str) -> list[Path]:
    """Each (name, text) of ``files`` written atomically into ``folder``; returns their paths."""
    folder = Path(folder)
    written = []
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"cannot write {what} into {folder}: it is a file (give a folder)")
        for name, text in files:
            path = folder / name
            atomic_write(path, text)
            written.append(path)
    except OSError as e:
        raise path_error(f"cannot write to {e.filename or folder}: {e.strerror or e}", e) from None
    return written


def write(renderer, record, out: Path, what: str) -> list[Path]:
    """What ``renderer`` makes of ``record``, written to the file ``out`` (or into the folder ``out``, for a
    renderer that writes a folder)."""
    if getattr(renderer, "writes_folder", False):
        return write_files(out, renderer.files(record), what)
    return [write_text(out, renderer.render(record), what)]
