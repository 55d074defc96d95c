"""ExecuTorch: the ``llama_main`` adapter, the PyTorchObserver stats-line parser (also read for the
reference runtime, which prints the same line) and the Android benchmark app's results file."""

from devprof.runtimes.executorch.adapter import ExecuTorchAdapter
from devprof.runtimes.executorch.benchmark_app import (BenchmarkAppMetric, benchmark_app_run_result,
                                                       parse_benchmark_results)
from devprof.runtimes.executorch.observer import parse_pytorch_observer, parse_rss_lines

__all__ = [
    "ExecuTorchAdapter",
    "parse_pytorch_observer",
    "parse_rss_lines",
    "BenchmarkAppMetric",
    "parse_benchmark_results",
    "benchmark_app_run_result",
]
