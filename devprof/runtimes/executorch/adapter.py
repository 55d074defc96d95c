"""The ExecuTorch adapter: ``llama_main``'s command line; its output is the PyTorchObserver line."""

from __future__ import annotations

from devprof.errors import UsageError
from devprof.results import RunResult
from devprof.runtimes.base import (Invocation, RuntimeAdapter, extra_args, flag, joined_output, register, require_int,
                                   require_path)
from devprof.runtimes.executorch.observer import parse_pytorch_observer

__all__ = ["ExecuTorchAdapter"]


@register
class ExecuTorchAdapter(RuntimeAdapter):
    """``llama_main`` from pytorch/executorch (flags of examples/models/llama/main.cpp).

    The command line always asks for greedy decoding (``--temperature=0``) and, unless
    ``extra["ignore_eos"]`` is False, ``--ignore_eos`` so that the generation length does not
    depend on the model's output. Needs a runner that knows ``--prompt_file``,
    ``--max_new_tokens`` and ``--ignore_eos`` (not in release 1.1's runner).

    ``extra`` keys read by :meth:`argv` (others are ignored):

    ``warmup`` (bool, default False)
        ``--warmup``: one discarded generation before the measured one (same prompt and
        length). It raises ``ru_maxrss`` before the measured run starts.
    ``ignore_eos`` (bool, default True), ``temperature`` (number, default 0)
    ``data_paths`` (str or list of str)
        ``--data_paths`` (.ptd weight files), comma-joined; a path containing a comma is refused
        because the runner splits on commas.
    ``num_bos`` / ``num_eos`` (int >= 0)
        BOS/EOS tokens the runner adds to the prompt (runner default 0: no BOS).
    ``seq_len`` (int, deprecated flag), ``etdump_path`` (str), ``method_name`` (str)
    ``extra_args`` (list of str): appended verbatim.
    """

    name = "executorch"

    def argv(self, inv: Invocation) -> list[str]:
        c = inv.checked(tokenizer_for="executorch")
        ex = c.extra
        # gflags accepts --flag=value for every type; the '=' form keeps each setting in one
        # argv element and is unambiguous for values that start with '-'.
        args = [
            c.binary,
            f"--model_path={c.model}",
            f"--tokenizer_path={c.tokenizer}",
            f"--prompt_file={c.prompt_file}",
            f"--max_new_tokens={c.max_new_tokens}",
        ]
        args.append(f"--temperature={c.temperature}")
        if c.threads > 0:
            args.append(f"--cpu_threads={c.threads}")  # -1/0: the runner's performant-core heuristic
        if c.ignore_eos:
            args.append("--ignore_eos")
        if flag(ex, "warmup", False):
            args.append("--warmup")

        data_paths = ex.get("data_paths")
        if data_paths:
            paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
            for p in paths:
                require_path(p, "data_paths entry")
                if "," in p:
                    raise UsageError(f"data path {p!r} contains a comma; llama_main splits --data_paths on commas")
            args.append("--data_paths=" + ",".join(paths))
        for key in ("num_bos", "num_eos"):
            if ex.get(key) is not None:
                args.append(f"--{key}={require_int(ex[key], key, minimum=0)}")
        if ex.get("seq_len") is not None:
            args.append(f"--seq_len={require_int(ex['seq_len'], 'seq_len', minimum=1)}")
        if ex.get("etdump_path"):
            args.append(f"--etdump_path={require_path(ex['etdump_path'], 'etdump_path')}")
        if ex.get("method_name"):
            args.append(f"--method_name={require_path(ex['method_name'], 'method_name')}")
        args.extend(extra_args(ex))
        return args

    def parse(self, stdout: str, stderr: str = "") -> RunResult:
        return parse_pytorch_observer(joined_output(stdout, stderr), runtime=self.name)
