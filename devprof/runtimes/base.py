"""The runtime adapter interface, the invocation record, and the registry of adapters.

An adapter knows one runtime: the command line that runs it for (model, prompt, settings), how
to read what it printed into a :class:`RunResult`, and the hooks the session asks instead of
naming runtimes: which weight formats it runs, the files a run stages (:meth:`model_files`),
where the staged weights are (:meth:`staged_paths`), whether it runs on this host without a
registered binary (:meth:`host_command`) and whether its binary drops the weights from the page
cache itself (:meth:`native_evict`). It never talks to a device: the device backend quotes and
runs :meth:`RuntimeAdapter.argv` and hands the captured stdout/stderr back to
:meth:`RuntimeAdapter.parse`.

A runtime is a folder ``devprof/runtimes/<name>/`` whose ``__init__`` imports its adapter, which
registers itself with :func:`register`; :func:`get_adapter` imports every runtime folder on
first use and looks adapters up by name.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from devprof.errors import ParseError, UsageError
from devprof.results import RunResult

__all__ = [
    "Invocation",
    "RuntimeAdapter",
    "register",
    "get_adapter",
    "known_runtimes",
    "default_runtime",
    "find_adapter",
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

    def checked(self, tokenizer_for: str | None = None) -> "CheckedInvocation":
        """The settings every adapter reads, validated in one order (UsageError on nonsense).

        ``tokenizer_for``: the runtime that needs ``tokenizer_path`` (None: it is not read).
        """
        ex = self.extra or {}
        binary = require_path(self.binary, "binary")
        model = require_path(self.model_path, "model_path")
        tokenizer = None
        if tokenizer_for is not None:
            if self.tokenizer_path is None:
                raise UsageError(f"{tokenizer_for} runtime needs a tokenizer path (--tokenizer_path)")
            tokenizer = require_path(self.tokenizer_path, "tokenizer_path")
        return CheckedInvocation(
            binary=binary, model=model, tokenizer=tokenizer,
            prompt_file=require_path(self.prompt_file, "prompt_file"),
            max_new_tokens=require_int(self.max_new_tokens, "max_new_tokens", minimum=1),
            threads=require_int(self.threads, "threads", minimum=-1),
            temperature=fmt_num(temperature(ex)),
            ignore_eos=flag(ex, "ignore_eos", True),
            extra=ex,
        )


@dataclass(frozen=True)
class CheckedInvocation:
    """:meth:`Invocation.checked`: paths, counts, the temperature as a command-line number."""

    binary: str
    model: str
    tokenizer: str | None
    prompt_file: str
    max_new_tokens: int
    threads: int
    temperature: str
    ignore_eos: bool
    extra: dict[str, Any]


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

    # ---- hooks the session asks (defaults: a runtime that runs the user's prebuilt model file)

    #: weight formats this runtime runs from devprof's own seeded weights; empty: a prebuilt file only
    weight_formats: tuple[str, ...] = ()
    #: the weight format when none is given
    default_weights: str = "fp32"
    #: bytes per KV-cache element (for the memory estimate before a run)
    kv_bytes: int = 4
    #: True: on a host without idle cores to spare the session picks the thread count itself
    picks_host_threads: bool = False
    #: True: choosing the registered binary needs the device's CPU features
    needs_cpu_features: bool = False

    def check_weights(self, weights: str) -> None:
        """UsageError when this runtime cannot run devprof's weights at ``weights``."""
        if self.weight_formats and weights not in self.weight_formats:
            raise UsageError(f"the {self.name} runtime runs {', '.join(self.weight_formats)} weights only, "
                             f"got {weights}")

    def model_files(self, spec: Any, seed: int, weights: str, stage: Callable[[str], None]) -> tuple[dict[str, Path], str]:
        """The files one run of catalog model ``spec`` needs on the device, built from devprof's seeded
        weights, and the staging group they share (files that do not change keep their group)."""
        raise UsageError(f"--runtime {self.name} runs a prebuilt model file: give {spec.name}'s with "
                         "--model-bundle (and the baseline's with --baseline-bundle)")

    def staged_paths(self, paths: dict[str, str], remote_dir: str) -> tuple[str, str | None, str]:
        """(model path, tokenizer path or None, weights file) on the device from the staged files."""
        return paths["model"], paths.get("tokenizer"), paths["model"]

    def host_command(self) -> str | None:
        """How this runtime runs on this host without a registered binary, or None if it cannot."""
        return None

    #: the order the prefill reads the weights in: "layers" (the whole prompt one layer at a time) or "tokens"
    prefill_order: str = "tokens"

    def weights_layout(self, model: str, seed: int = 0, *, from_file: bool = True) -> tuple[dict, str] | None:
        """Where the tensors of catalog model ``model`` sit in the weights file this runtime reads
        (``{"tensors": {name: {"nbytes", ...}}, "expert_blocks": [{layer, expert, offset, nbytes}]}``)
        and where that comes from (``from_file``: the file's own record if it exists, else computed);
        None when unknown."""
        return None

    def native_evict(self, binary: Any) -> list[str]:
        """Arguments that make ``binary`` drop its weights from the page cache itself before loading
        them (and report its own peak RSS and residency); [] when the device must evict them."""
        return []


_REGISTRY: dict[str, type[RuntimeAdapter]] = {}
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
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.ispkg:  # every runtime folder; one that fails to import is a bug and its error propagates
            importlib.import_module(f"{__package__}.{mod.name}")
    _builtins_loaded = True


def known_runtimes() -> list[str]:
    """Sorted names of every registered adapter."""
    _load_builtins()
    return sorted(_REGISTRY)


#: the runtime `devprof run` uses when none is given, and per device kind where another one is better:
#: devprof's native llama.cpp runner on Android phones (the reference runtime's Android launcher needs a
#: host Python, which only the test daemon has; `--runtime reference` still reaches it)
DEFAULT_RUNTIME = "reference"
DEFAULT_BY_KIND = {"android": "llamacpp"}


def default_runtime(kind: str | None = None, weights: str | None = None) -> str:
    """The runtime for a device kind when no --runtime is given; without a kind, the default runtime if it
    runs ``weights`` (None: its default), else the first runtime that does."""
    if kind is not None:
        return DEFAULT_BY_KIND.get(kind, DEFAULT_RUNTIME)
    if weights is None or weights in get_adapter(DEFAULT_RUNTIME).weight_formats:
        return DEFAULT_RUNTIME
    return next((n for n in known_runtimes() if weights in get_adapter(n).weight_formats), DEFAULT_RUNTIME)


def find_adapter(name: str) -> RuntimeAdapter | None:
    """The adapter for ``name``, or None for a runtime this devprof does not know (an old run's)."""
    _load_builtins()
    cls = _REGISTRY.get(name.strip().lower() if isinstance(name, str) else "")
    return cls() if cls is not None else None


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


def joined_output(stdout: Any, stderr: Any) -> str:
    """A run's stdout and stderr as one text (what the parsers read)."""
    return coerce_text(stdout, "stdout") + "\n" + coerce_text(stderr, "stderr")


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


def flag(ex: dict, key: str, default: bool) -> bool:
    """A boolean ``extra`` setting (UsageError for anything but true/false)."""
    v = ex.get(key, default)
    if not isinstance(v, bool):
        raise UsageError(f"{key} must be true or false, got {v!r}")
    return v


def extra_args(ex: dict) -> list[str]:
    """``extra["extra_args"]``: the arguments appended verbatim, one argv element each."""
    extra = ex.get("extra_args") or []
    if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
        raise UsageError("extra_args must be a list of strings (one argv element each)")
    return list(extra)


def temperature(ex: dict) -> float | int:
    """``extra["temperature"]`` (default 0): a finite number >= 0."""
    t = ex.get("temperature", 0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t >= 0):
        raise UsageError(f"temperature must be a number >= 0, got {t!r}")
    return t


def require_path(value: Any, key: str) -> str:
    """A non-empty path string without NUL or newline (they cannot survive a device shell)."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{key} must be a non-empty path, got {value!r}")
    if any(c in value for c in "\x00\n\r"):
        raise UsageError(f"{key} contains a NUL or newline character: {value!r}")
    return value


def token_rate(n: int | None, span: float | None, per_second: float, label: str, zero_span: str,
               warnings: list[str]) -> float | None:
    """Tokens per second over a span in units of ``1 / per_second`` s; None (with a warning) for 0 tokens or
    a span of 0 (``zero_span`` says why), None without one when either is unknown."""
    if n is None or span is None:
        return None
    if n == 0:
        warnings.append(f"{label}: 0 tokens, rate not computed")
        return None
    if span == 0:
        warnings.append(zero_span)
        return None
    return n / span * per_second


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
