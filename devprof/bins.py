"""The prebuilt runtime binaries devprof can push: ``device_bins/manifest.toml``.

Each entry names a binary file, the runtime adapter that parses its output, the platform and ABI
it runs on, its sha256 (checked before every push, so a binary replaced behind devprof's back is
caught), and optionally a command template overriding the adapter's command line, e.g.::

    [[binary]]
    name = "llama_main-arm64"
    runtime = "executorch"
    platform = "android"
    abi = "arm64-v8a"
    path = "android/arm64-v8a/llama_main"       # relative to device_bins/, or absolute
    sha256 = "..."
    command = "{binary} --model_path {model} --tokenizer_path {tokenizer} --prompt_file {prompt_file} --max_new_tokens {max_new_tokens} --temperature 0"

Platforms: android, ios, host. ABI: arm64-v8a, x86_64, ... or "any" (scripts).
"""

from __future__ import annotations

import os
import shlex
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from devprof import REPO_ROOT
from devprof.errors import DevprofError, UsageError
from devprof.files import atomic_write, sha256_file

PLATFORMS = ("android", "ios", "host")
TEMPLATE_KEYS = ("binary", "model", "tokenizer", "prompt_file", "prompt_ids_file", "max_new_tokens",
                 "threads", "routing_trace")


def manifest_path() -> Path:
    env = os.environ.get("DEVPROF_BINS_MANIFEST")
    return Path(env) if env else REPO_ROOT / "device_bins" / "manifest.toml"


@dataclass
class Binary:
    name: str
    runtime: str
    platform: str
    abi: str
    path: str
    sha256: str
    command: str = ""
    notes: str = ""
    variant: str = ""       # CPU variant of a multi-variant build, e.g. "arm64-v8.2-dotprod-i8mm"
    cpu_features: str = ""  # /proc/cpuinfo features the binary needs (space-separated); "" = any CPU
    source: str = ""        # what it was built from (pinned source + toolchain), for the report's setup

    def runs_on(self, cpu_flags: set[str] | None) -> bool:
        """True when a CPU with these /proc/cpuinfo flags can run it (unknown flags: assume yes)."""
        if cpu_flags is None:
            return True
        return set(self.cpu_features.split()) <= cpu_flags

    def file(self, manifest: Path | None = None) -> Path:
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else (manifest or manifest_path()).parent / p

    def verify(self, manifest: Path | None = None) -> Path:
        """The binary's file, after checking it exists and still has the recorded sha256."""
        f = self.file(manifest)
        if not f.is_file():
            raise DevprofError(f"binary {self.name!r} is missing: {f} (re-register it with `devprof bins add`)")
        got = sha256_file(f)
        if got != self.sha256:
            raise DevprofError(f"binary {self.name!r} changed since it was registered ({f}: sha256 {got[:12]} "
                               f"!= {self.sha256[:12]}); re-register it with `devprof bins add`")
        return f

    def argv(self, values: dict[str, str]) -> list[str]:
        """The command template filled in, split into a list (each value stays one argument)."""
        out = []
        for tok in shlex.split(self.command):
            for k in TEMPLATE_KEYS:
                tok = tok.replace("{" + k + "}", "\0" + k + "\0")
            parts = tok.split("\0")
            out.append("".join(str(values.get(p, "")) if i % 2 else p for i, p in enumerate(parts)))
        return out


def load(manifest: Path | None = None) -> list[Binary]:
    path = manifest or manifest_path()
    if not path.exists():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DevprofError(f"cannot read the binaries manifest {path}: {e}") from None
    out = []
    for i, entry in enumerate(data.get("binary", [])):
        try:
            out.append(Binary(**{k: str(v) for k, v in entry.items()}))
        except TypeError as e:
            raise DevprofError(f"{path}: binary entry {i + 1} is malformed ({e})") from None
    return out


def select(runtime: str, platform: str, abi: str, manifest: Path | None = None, name: str | None = None,
           cpu_flags: set[str] | None = None) -> Binary:
    """The registered binary for (runtime, platform, abi); ABI "any" matches every device.

    With ``cpu_flags`` (the device's /proc/cpuinfo features; None = unknown), only binaries whose
    ``cpu_features`` the CPU has are candidates, and the most demanding of those wins (the
    v8.2+dotprod+i8mm runner over the armv8-a one on a phone that has them); among equals, the
    last registered.
    """
    entries = load(manifest)
    if name:
        named = [b for b in entries if b.name == name]
        if not named:
            raise UsageError(f"no registered binary named {name!r}; `devprof bins list` shows them")
        b = named[0]
        if b.platform != platform or b.abi not in ("any", abi):
            raise UsageError(f"binary {name!r} is for {b.platform}/{b.abi}, the device is {platform}/{abi}")
        return b
    fits = [b for b in entries if b.runtime == runtime and b.platform == platform and b.abi in (abi, "any")]
    if not fits:
        other = [b for b in entries if b.runtime == runtime and b.platform == platform]
        hint = (f" (registered for other ABIs: {', '.join(sorted({b.abi for b in other}))}; the device is {abi})"
                if other else "")
        raise UsageError(f"no {runtime} binary registered for {platform}/{abi}{hint}; register one with "
                         f"`devprof bins add PATH --runtime {runtime} --platform {platform} --abi {abi}`")
    exact = [b for b in fits if b.abi == abi]
    cands = exact or fits
    runnable = [b for b in cands if b.runs_on(cpu_flags)]
    if not runnable:
        need = "; ".join(f"{b.name} needs {' '.join(sorted(set(b.cpu_features.split()) - (cpu_flags or set())))}"
                         for b in cands)
        raise UsageError(f"no registered {runtime} binary for {platform}/{abi} runs on this CPU ({need})")
    best = max(range(len(runnable)), key=lambda i: (len(runnable[i].cpu_features.split()), i))
    return runnable[best]


def cpuinfo_flags(text: str, keys: tuple[str, ...] = ("features", "flags")) -> set[str] | None:
    """CPU features from /proc/cpuinfo text: arm64 "Features" or x86 "flags" (of the first CPU
    that lists them; big.LITTLE cores share one ISA level on Android). None if there are none."""
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep and key.strip().lower() in keys:
            return set(val.split())
    return None


def add(path: Path, runtime: str, platform: str, abi: str, name: str | None = None, command: str = "",
        notes: str = "", manifest: Path | None = None) -> Binary:
    """Register (or re-register) a binary: hash it and write the manifest entry."""
    manifest = manifest or manifest_path()
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    from devprof.runtimes import known_runtimes

    if runtime not in known_runtimes():
        raise UsageError(f"unknown runtime {runtime!r}; known: {', '.join(known_runtimes())}")
    if platform not in PLATFORMS:
        raise UsageError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    for tok in _placeholders(command):
        if tok not in TEMPLATE_KEYS:
            raise UsageError(f"unknown placeholder {{{tok}}} in --command; known: {', '.join(TEMPLATE_KEYS)}")
    try:
        rel = path.resolve().relative_to(manifest.parent.resolve())
        stored = str(rel)
    except ValueError:
        stored = str(path.resolve())
    entry = Binary(name=name or f"{runtime}-{platform}-{abi}-{path.name}", runtime=runtime, platform=platform,
                   abi=abi, path=stored, sha256=sha256_file(path), command=command, notes=notes)
    entries = [b for b in load(manifest) if b.name != entry.name] + [entry]
    save(entries, manifest)
    return entry


def save(entries: list[Binary], manifest: Path | None = None) -> None:
    manifest = manifest or manifest_path()
    lines = ["# devprof prebuilt runtime binaries; edit with `devprof bins add` (see devprof/bins.py).", ""]
    for b in entries:
        lines.append("[[binary]]")
        for k, v in asdict(b).items():
            if v != "" or k in ("name", "runtime", "platform", "abi", "path", "sha256"):
                lines.append(f"{k} = {_toml_str(v)}")
        lines.append("")
    try:
        atomic_write(manifest, "\n".join(lines))
    except OSError as e:
        raise DevprofError(f"cannot write the binaries manifest {manifest}: {e.strerror}") from None


def _toml_str(v: str) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _placeholders(command: str) -> list[str]:
    import re

    return re.findall(r"\{([^{}]*)\}", command or "")
