"""Runtime adapters: one per runtime output format, all producing a :class:`devprof.results.RunResult`.

Use :func:`get_adapter` (``"executorch"``, ``"llamacpp"``, ``"reference"``) to get an adapter,
build its command line with :meth:`RuntimeAdapter.argv` from an :class:`Invocation`, and read the
process output back with :meth:`RuntimeAdapter.parse`. Adapters never talk to devices.

Format-level parsers that do not fit the one-process/one-result shape live in the runtime
modules: :func:`devprof.runtimes.executorch.parse_pytorch_observer` (also used by the reference
runtime, which prints the same stats line), :func:`devprof.runtimes.executorch.parse_benchmark_results`
(the Android benchmark app's JSON), :func:`devprof.runtimes.llamacpp.parse_llama_bench`.
"""

from devprof.runtimes.base import Invocation, RuntimeAdapter, get_adapter, known_runtimes, register

__all__ = ["Invocation", "RuntimeAdapter", "get_adapter", "known_runtimes", "register"]
