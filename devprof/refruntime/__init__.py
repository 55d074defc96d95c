"""devprof's reference runtime: a small, honest MoE + dense inference engine in torch.

- :mod:`devprof.refruntime.bundle`: seeded random model bundles laid out for lazy paging
  (``build_bundle(spec, seed=0, cache_dir=None) -> Path``).
- :mod:`devprof.refruntime.engine`: memory-mapped fp32 weights, grouped-by-expert prefill,
  greedy decode with a preallocated KV cache, routing traces (``Engine``).
- ``python -m devprof.refruntime``: the process entry, flags like ExecuTorch's ``llama_main``,
  printing one ``PyTorchObserver {json}`` line.

This package's ``__init__`` imports nothing heavy (torch is imported by the engine only), so that
``python -m devprof.refruntime`` starts as fast as torch allows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_bundle", "Engine"]


def __getattr__(name: str) -> Any:  # lazy re-exports
    if name == "build_bundle":
        from devprof.refruntime.bundle import build_bundle

        return build_bundle
    if name == "Engine":
        from devprof.refruntime.engine import Engine

        return Engine
    raise AttributeError(name)
