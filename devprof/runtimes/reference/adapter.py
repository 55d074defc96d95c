"""devprof's own reference runtime (``python -m devprof.refruntime``).

It prints what ExecuTorch's ``llama_main`` prints -- one ``PyTorchObserver {json}`` line and the
"RSS after ..." log lines -- so :meth:`ReferenceAdapter.parse` is the ExecuTorch parser; the
only differences are the command line and the flags the reference runtime adds.

``inv.binary``: ``"python"`` or empty runs ``[sys.executable, "-m", "devprof.refruntime", ...]``
on this host; any other value is a launcher (on a phone, a pushed shell script that runs this
module with the device's Python) and becomes ``argv[0]``, followed by the flags.

``inv.model_path`` is a bundle folder (``devprof.refruntime.bundle.build_bundle``);
``inv.tokenizer_path`` is optional (default: the bundle's tokenizer.json).

``extra`` keys read by :meth:`ReferenceAdapter.argv` (others are ignored):

``prompt_ids_file`` (str)
    ``--prompt_ids_file`` instead of ``--prompt_file``: exactly these token ids are the prompt
    (one per line, or .npy), so the prompt length does not depend on tokenization.
``routing_trace`` (str)
    ``--routing_trace PATH.npz``: expert ids per (layer, token) of the measured generation.
``warmup`` (bool, default False)
    ``--warmup``: one discarded generation first.
``prefill_chunk`` (int >= 1), ``seed`` (int)
``extra_args`` (list of str): appended verbatim.

As in ExecuTorch, ``generated_tokens`` in the stats line counts decode steps
(``max_new_tokens - 1``).
"""

from __future__ import annotations

import sys

from devprof.errors import UsageError
from devprof.results import RunResult
from devprof.runtimes.base import (
    Invocation,
    RuntimeAdapter,
    coerce_text,
    register,
    require_int,
    require_path,
)
from devprof.runtimes.executorch import parse_pytorch_observer

__all__ = ["ReferenceAdapter", "MODULE"]

MODULE = "devprof.refruntime"


@register
class ReferenceAdapter(RuntimeAdapter):
    """The reference runtime: argv for ``python -m devprof.refruntime`` or a launcher script."""

    name = "reference"

    def argv(self, inv: Invocation) -> list[str]:
        ex = inv.extra or {}
        binary = (inv.binary or "").strip()
        if binary in ("", "python"):
            head = [sys.executable, "-m", MODULE]
        else:
            head = [require_path(inv.binary, "binary")]
        args = head + [f"--model_path={require_path(inv.model_path, 'model_path')}"]
        if inv.tokenizer_path:
            args.append(f"--tokenizer_path={require_path(inv.tokenizer_path, 'tokenizer_path')}")
        ids_file = ex.get("prompt_ids_file")
        if ids_file:
            args.append(f"--prompt_ids_file={require_path(ids_file, 'prompt_ids_file')}")
        else:
            args.append(f"--prompt_file={require_path(inv.prompt_file, 'prompt_file')}")
        args.append(f"--max_new_tokens={require_int(inv.max_new_tokens, 'max_new_tokens', minimum=1)}")
        threads = require_int(inv.threads, "threads", minimum=-1)
        if threads > 0:
            args.append(f"--cpu_threads={threads}")  # -1/0: torch's default
        temperature = ex.get("temperature", 0)
        if isinstance(temperature, bool) or temperature != 0:
            raise UsageError(f"the reference runtime decodes greedily only (temperature 0), got {temperature!r}")
        args.append("--temperature=0")
        warmup = ex.get("warmup", False)
        if not isinstance(warmup, bool):
            raise UsageError(f"warmup must be true or false, got {warmup!r}")
        if warmup:
            args.append("--warmup")
        if ex.get("routing_trace"):
            args.append(f"--routing_trace={require_path(ex['routing_trace'], 'routing_trace')}")
        if ex.get("prefill_chunk") is not None:
            args.append(f"--prefill_chunk={require_int(ex['prefill_chunk'], 'prefill_chunk', minimum=1)}")
        if ex.get("seed") is not None:
            args.append(f"--seed={require_int(ex['seed'], 'seed', minimum=0)}")
        extra = ex.get("extra_args") or []
        if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
            raise UsageError("extra_args must be a list of strings (one argv element each)")
        return args + list(extra)

    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        """The PyTorchObserver line and the "RSS after ..." lines (stdout and stderr)."""
        text = coerce_text(stdout, "stdout") + "\n" + coerce_text(stderr, "stderr")
        return parse_pytorch_observer(text, runtime=self.name)
