"""llama.cpp: the adapter (``llama-completion``, or devprof's native runner built from ``runner/``),
the end-of-run perf block and the runner's own lines, ``llama-bench`` JSON, and the GGUF export of
devprof's seeded weights (:mod:`devprof.runtimes.llamacpp.gguf_export`, imported on demand: numpy)."""

from devprof.runtimes.llamacpp.adapter import LlamaCppAdapter, host_runner
from devprof.runtimes.llamacpp.llama_bench import LlamaBenchRecord, parse_llama_bench
from devprof.runtimes.llamacpp.perf import (_percentile, add_runner_lines, parse_llama_perf, parse_runner_lines,
                                            token_intervals_ms)

__all__ = [
    "LlamaCppAdapter",
    "host_runner",
    "parse_llama_perf",
    "parse_runner_lines",
    "add_runner_lines",
    "token_intervals_ms",
    "LlamaBenchRecord",
    "parse_llama_bench",
    "_percentile",
]
