"""The one writer of devprof's output files: through :mod:`devprof.files`' atomic writes (a temporary
file beside the target, renamed into place, so a full disk or a Ctrl-C leaves no half-written file),
every OS error one clear line."""

from __future__ import annotations

from pathlib import Path

from devprof.errors import UsageError, path_error
from devprof.files import atomic_write, write_text

__all__ = ["atomic_write", "write_text", "write_files", "write"]


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
