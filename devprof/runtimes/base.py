"""The runtime adapter interface, the invocation record, and the registry of adapters.

An adapter knows two things about one runtime binary: the command line that runs it for
(model, prompt, settings) and how to read what it printed into a :class:`RunResult`. It never
talks to a device: the device backend quotes and runs :meth:`RuntimeAdapter.argv` and hands
the captured stdout/stderr back to :meth:`RuntimeAdapter.parse`.

Adapters register themselves with :func:`register`; :func:`get_adapter` looks them up by name
and imports the built-in modules (``executorch``, ``llamacpp`` and, once it exists,
``reference``) on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from devprof.errors import ParseError, UsageError
from devprof.results import RunResult

__all__ = [
    "Invocation",
    "RuntimeAdapter",
    "register",
    "get_adapter",
    "known_runtimes",
]


@dataclass(frozen=True)
class Invocation:
    """What to run, with every path as the DEVICE sees it (not the host's copy).

    ``threads``: -1 (or 0) leaves the choice to the runtime (ExecuTorch: its performant-core
    heuristic; llama.cpp: its own default). ``extra`` holds runtime-specific knobs; each
    adapter documents the keys it reads and ignores the others, so one settings dict can be
    passed to any adapter.
    """

    binary: str
    model_path: str
    tokenizer_path: str | None
    prompt_file: str
    max_new_tokens: int
    threads: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


class RuntimeAdapter(ABC):
    """One runtime's command line and output parser. Stateless; cheap to construct."""

    #: Registry key: "executorch" | "llamacpp" | "reference".
    name: str = ""

    @abstractmethod
    def argv(self, inv: Invocation) -> list[str]:
        """The command line as a list, ``argv[0]`` being ``inv.binary``; never a shell string.

        Raises :class:`devprof.errors.UsageError` for settings this runtime cannot honour.
        """

    @abstractmethod
    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        """Read one process's output. Raises :class:`devprof.errors.ParseError` (one line)."""


_REGISTRY: dict[str, type[RuntimeAdapter]] = {}
_BUILTIN_MODULES = ("executorch", "llamacpp", "reference")
_builtins_loaded = False

A = TypeVar("A", bound=type[RuntimeAdapter])


def register(adapter_cls: A) -> A:
    """Class decorator: make ``adapter_cls`` available to :func:`get_adapter` under its ``name``."""
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, RuntimeAdapter)):
        raise TypeError(f"register() expects a RuntimeAdapter subclass, got {adapter_cls!r}")
    name = getattr(adapter_cls, "name", "")
    if not isinstance(name, str) or not name or name != name.strip().lower():
        raise ValueError(f"{adapter_cls.__name__}.name must be a non-empty lower-case string, got {name!r}")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not adapter_cls:
        # Re-registering the same class (module reload) is fine; two classes under one name is not.
        if (existing.__module__, existing.__qualname__) != (adapter_cls.__module__, adapter_cls.__qualname__):
            raise ValueError(
                f"runtime name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
    _REGISTRY[name] = adapter_cls
    return adapter_cls


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for mod in _BUILTIN_MODULES:
        qualified = f"{__package__}.{mod}"
        # A module that does not exist yet (reference.py) is skipped; one that exists but fails
        # to import is a bug and its error propagates.
        if importlib.util.find_spec(qualified) is not None:
            importlib.import_module(qualified)
    _builtins_loaded = True


def known_runtimes() -> list[str]:
    """Sorted names of every registered adapter."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_adapter(name: str) -> RuntimeAdapter:
    """A fresh adapter instance for ``name``; :class:`UsageError` listing the known ones if unknown."""
    _load_builtins()
    key = name.strip().lower() if isinstance(name, str) else ""
    cls = _REGISTRY.get(key)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UsageError(f"unknown runtime {name!r}; known runtimes: {known}")
    return cls()


# --------------------------------------------------------------------------------------------
# Helpers shared by the parsers (not part of the public API).


def coerce_text(data: Any, what: str = "output") -> str:
    """Parsers accept str, bytes (decoded leniently) or None (as empty)."""
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("utf-8", errors="replace")
    raise ParseError(f"{what} must be text, got {type(data).__name__}")


def snippet(text: str, limit: int = 60) -> str:
    """A short, single-line, printable rendering of ``text`` for error messages."""
    s = "".join(ch if ch.isprintable() else " " for ch in text)
    s = " ".join(s.split())
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return repr(s)


def as_number(value: Any, key: str, where: str) -> float:
    """A finite JSON number (bool excluded) or :class:`ParseError` naming the key."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParseError(f"{where}: {key} is not a number: {snippet(str(value), 40)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParseError(f"{where}: {key} is not a finite number: {value}")
    return value


def as_count(value: Any, key: str, where: str) -> int:
    """A non-negative integral JSON number as int, or :class:`ParseError`."""
    v = as_number(value, key, where)
    if isinstance(v, float):
        if not v.is_integer():
            raise ParseError(f"{where}: {key} is not a whole number: {v}")
        v = int(v)
    if v < 0:
        raise ParseError(f"{where}: {key} is negative: {v}")
    return v


def json_safe(v: Any) -> Any:
    """A copy with non-finite floats replaced by None, so results stay strict-JSON serialisable."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return v


def fmt_num(x: float | int) -> str:
    """Render a number for a command line: integral values without a decimal point."""
    if isinstance(x, bool):
        raise TypeError("bool is not a number here")
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x) if isinstance(x, float) else str(x)


def require_int(value: Any, key: str, *, minimum: int | None = None) -> int:
    """Validate an integer setting for an argv builder (UsageError on nonsense)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{key} must be >= {minimum}, got {value}")
    return value


def require_path(value: Any, key: str) -> str:
    """A non-empty path string without NUL or newline (they cannot survive a device shell)."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{key} must be a non-empty path, got {value!r}")
    if any(c in value for c in "\x00\n\r"):
        raise UsageError(f"{key} contains a NUL or newline character: {value!r}")
    return value


def safe_parse(fn: Callable[[], RunResult], runtime: str) -> RunResult:
    """Run a parser body, turning any unexpected exception into a one-line ParseError.

    The parsers are written to raise ParseError themselves; this is the last line of defence
    so that a garbled output can never surface as a traceback.
    """
    try:
        return fn()
    except ParseError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, ZeroDivisionError,
            RecursionError, UnicodeError) as exc:  # pragma: no cover - defensive
        raise ParseError(f"{runtime}: could not parse output ({type(exc).__name__}: {snippet(str(exc), 80)})") from exc
