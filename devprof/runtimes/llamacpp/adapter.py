"""The llama.cpp adapter: ``llama-completion``'s command line (devprof's native runner takes its
registered command template instead), the GGUF files a run needs, and the host's runner binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from devprof.errors import UsageError
from devprof.results import RunResult
from devprof.runtimes.base import Invocation, RuntimeAdapter, extra_args, flag, joined_output, register, require_int
from devprof.runtimes.llamacpp.perf import add_runner_lines, parse_llama_perf

__all__ = ["LlamaCppAdapter", "host_runner"]

#: the registered binaries of devprof's own llama.cpp runner (runner/runner.cpp)
NATIVE_PREFIX = "devprof-llamarunner-"


@register
class LlamaCppAdapter(RuntimeAdapter):
    """``llama-completion`` (or a pre-2025-12 ``llama-cli``) run once over a prompt file.

    Default command: ``BINARY -m MODEL -f PROMPT_FILE -n N --temp 0 --ignore-eos -no-cnv
    --no-display-prompt [-t THREADS]``: greedy, exactly N tokens, no chat template or
    interactive mode, and the (long) prompt not echoed. ``inv.tokenizer_path`` is unused (the
    GGUF carries its tokenizer).

    ``extra`` keys read by :meth:`argv` (others are ignored): ``ctx_size`` (``-c``),
    ``batch_size`` (``-b``), ``ubatch_size`` (``-ub``), ``n_gpu_layers`` (``-ngl``), ``seed``
    (``-s``), ``warmup`` (default True; False adds ``--no-warmup``), ``mmap`` (default True;
    False adds ``--no-mmap``), ``ignore_eos`` (default True), ``conversation`` (default False:
    ``-no-cnv``; None leaves the flag out for builds that lack it), ``display_prompt`` (default
    False: ``--no-display-prompt``), ``temperature`` (default 0), ``extra_args`` (list of str).
    """

    name = "llamacpp"

    def argv(self, inv: Invocation) -> list[str]:
        c = inv.checked()
        ex = c.extra
        args = [c.binary, "-m", c.model, "-f", c.prompt_file, "-n", str(c.max_new_tokens)]
        threads = c.threads
        args += ["--temp", c.temperature]
        if c.ignore_eos:
            args.append("--ignore-eos")
        conversation = ex.get("conversation", False)
        if conversation is not None:
            if not isinstance(conversation, bool):
                raise UsageError(f"conversation must be true, false or null, got {conversation!r}")
            args.append("-cnv" if conversation else "-no-cnv")
        if not flag(ex, "display_prompt", False):
            args.append("--no-display-prompt")
        if threads > 0:
            args += ["-t", str(threads)]
        for key, opt, minimum in (
            ("ctx_size", "-c", 0),
            ("batch_size", "-b", 1),
            ("ubatch_size", "-ub", 1),
            ("n_gpu_layers", "-ngl", -1),
            ("seed", "-s", -1),
        ):
            if ex.get(key) is not None:
                args += [opt, str(require_int(ex[key], key, minimum=minimum))]
        if not flag(ex, "warmup", True):
            args.append("--no-warmup")
        if not flag(ex, "mmap", True):
            args.append("--no-mmap")
        return args + extra_args(ex)

    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        text = joined_output(stdout, stderr)
        result = parse_llama_perf(text, runtime=self.name)
        return add_runner_lines(result, text)

    weight_formats = ("fp32", "q8_0", "q4_0")
    default_weights = "q4_0"
    kv_bytes = 2  # llama.cpp keeps K/V in f16
    picks_host_threads = True
    needs_cpu_features = True

    def model_files(self, spec: Any, seed: int, weights: str, stage: Callable[[str], None]) -> tuple[dict[str, Path], str]:
        from devprof.runtimes.llamacpp.gguf_export import build_gguf

        stage(f"writing the {spec.display} GGUF ({weights}) from the seeded weights (cached)")
        gguf = build_gguf(spec, seed=seed, weights={"fp32": "f32"}.get(weights, weights))
        return {"model": gguf}, gguf.stem

    def native_evict(self, binary: Any) -> list[str]:
        # devprof's runner drops its model file itself (posix_fadvise DONTNEED: no root needed)
        return ["--evict"] if binary is not None and binary.name.startswith(NATIVE_PREFIX) else []


def host_runner() -> str:
    """Path of devprof's runner built for this host (the committed variant this CPU can run,
    chosen from /proc/cpuinfo flags and checked against its sha256)."""
    import platform
    from pathlib import Path

    from devprof import bins

    try:
        flags = bins.cpuinfo_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        flags = None
    b = bins.select("llamacpp", "host", platform.machine(), cpu_flags=flags)
    return str(b.verify())
