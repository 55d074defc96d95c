"""devprof's own reference runtime (``python -m devprof.refruntime``).

It prints what ExecuTorch's ``llama_main`` prints -- one ``PyTorchObserver {json}`` line and the
"RSS after ..." log lines -- so :meth:`ReferenceAdapter.parse` is the ExecuTorch parser; the
only differences are the command line and the flags the reference runtime adds.

``inv.binary``: ``"python"`` or empty runs ``[sys.executable, "-m", "devprof.refruntime", ...]``
on this host; any other value is a launcher (on a phone, a pushed shell script that runs this
module with the device's Python) and becomes ``argv[0]``, followed by the flags.

``inv.model_path`` is a bundle folder (:func:`devprof.runtimes.reference.bundle.build_bundle`);
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

import json
import sys
from pathlib import Path
from typing import Any, Callable

from devprof.errors import UsageError
from devprof.results import RunResult
from devprof.runtimes.base import (Invocation, RuntimeAdapter, extra_args, flag, joined_output, register, require_int,
                                   require_path)
from devprof.runtimes.executorch.observer import parse_pytorch_observer

__all__ = ["ReferenceAdapter", "MODULE"]

#: the entry point (devprof/refruntime/__main__.py runs :func:`devprof.runtimes.reference.runner.main`)
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
        if flag(ex, "warmup", False):
            args.append("--warmup")
        if ex.get("routing_trace"):
            args.append(f"--routing_trace={require_path(ex['routing_trace'], 'routing_trace')}")
        if ex.get("prefill_chunk") is not None:
            args.append(f"--prefill_chunk={require_int(ex['prefill_chunk'], 'prefill_chunk', minimum=1)}")
        if ex.get("seed") is not None:
            args.append(f"--seed={require_int(ex['seed'], 'seed', minimum=0)}")
        return args + extra_args(ex)

    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        """The PyTorchObserver line and the "RSS after ..." lines (stdout and stderr)."""
        return parse_pytorch_observer(joined_output(stdout, stderr), runtime=self.name)

    weight_formats = ("fp32",)

    def check_weights(self, weights: str) -> None:
        if weights != "fp32":
            raise UsageError("the reference runtime runs fp32 weights only (torch's int8/int4 CPU kernels are "
                             "far slower here); use --runtime llamacpp for q8_0/q4_0")

    def model_files(self, spec: Any, seed: int, weights: str, stage: Callable[[str], None]) -> tuple[dict[str, Path], str]:
        from devprof.runtimes.reference.bundle import build_bundle  # torch-free import

        stage(f"building the {spec.display} bundle (seeded random weights, cached)")
        bundle = build_bundle(spec, seed=seed)
        files = {p.name: p for p in sorted(bundle.iterdir()) if p.is_file()}
        return files, json.loads((bundle / "config.json").read_text()).get("bundle_id") or bundle.name

    def staged_paths(self, paths: dict[str, str], remote_dir: str) -> tuple[str, str | None, str]:
        if "model" in paths:  # a bundle the user gave as one file
            return super().staged_paths(paths, remote_dir)
        weights = paths["weights.bin"]
        return remote_dir or str(Path(weights).parent), paths.get("tokenizer.json"), weights

    prefill_order = "layers"

    def weights_layout(self, model: str, seed: int = 0, *, from_file: bool = True) -> tuple[dict, str] | None:
        from devprof.catalog import MODELS
        from devprof.runtimes.reference.bundle import bundle_dir, tensor_plan

        spec = MODELS.get(model)
        if spec is None:
            return None
        if from_file:
            try:
                p = bundle_dir(spec, seed) / "layout.json"
                if p.is_file():
                    return json.loads(p.read_text()), f"the bundle's layout.json ({p})"
            except (OSError, ValueError):
                pass
        return tensor_plan(spec), "devprof's bundle layout (computed)"

    def host_command(self) -> str | None:
        return f"python -m {MODULE}"
