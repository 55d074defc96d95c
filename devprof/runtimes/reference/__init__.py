"""devprof's reference runtime: a small, honest MoE + dense inference engine in torch.

- :mod:`.adapter`: the command line (``python -m devprof.refruntime`` or a launcher) and the
  files a run stages (a bundle);
- :mod:`.bundle`: seeded random model bundles laid out for lazy paging (``build_bundle``);
- :mod:`.engine` (+ :mod:`.state`): memory-mapped fp32 weights, grouped-by-expert prefill,
  greedy decode with a preallocated KV cache, routing traces (``Engine``);
- :mod:`.runner`: the process entry, flags like ExecuTorch's ``llama_main``, printing one
  ``PyTorchObserver {json}`` line.

Importing this package imports no torch (only the engine does).
"""

from devprof.runtimes.reference.adapter import MODULE, ReferenceAdapter

__all__ = ["ReferenceAdapter", "MODULE"]
