"""``python -m devprof.refruntime``: run one generation, print ExecuTorch-style stats.

Flags mirror ExecuTorch's ``llama_main`` where they apply::

    --model_path BUNDLE_DIR      a bundle folder (devprof.runtimes.reference.bundle)
    --tokenizer_path PATH        default: the bundle's tokenizer.json
    --prompt_file TEXT_FILE | --prompt_ids_file FILE (one int per line, or .npy) | --prompt TEXT
    --max_new_tokens N           tokens generated (the first from the prefill logits, then N-1
                                 decode steps, EOS ignored); default 128
    --cpu_threads N              -1: torch's default
    --temperature 0              only greedy decoding is supported
    --warmup                     one untimed generation first (same prompt and length)
    --routing_trace PATH.npz     expert ids per (layer, token, slot) of the measured generation
    --seed N                     accepted for symmetry; greedy decoding uses no randomness
    --prefill_chunk N            prompt tokens per prefill chunk (reference runtime only)

Output, like llama_main: the generated text on stdout (ids when the prompt came as ids), the
"RSS after loading model / after prompt prefill / after finishing text generation: X MiB (0
if unsupported)" log lines (ru_maxrss, a process peak) on stderr, and after the measured
generation exactly one stdout line ``PyTorchObserver {json}`` with wall-clock ms timestamps.
As in ExecuTorch, ``generated_tokens`` counts the decode steps (max_new_tokens - 1), so
``generated_tokens / (inference_end_ms - prompt_eval_end_ms)`` is the decode rate.

Bad input (missing bundle, bad ids file, context beyond max_context, ...) prints one line on
stderr and exits with code 2, before torch is even imported where possible.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from devprof.errors import DevprofError, ExitCode, UsageError

PROG = "refruntime"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m devprof.refruntime", description="devprof reference runtime")
    p.add_argument("--model_path", required=True)
    p.add_argument("--tokenizer_path", default=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt_file")
    src.add_argument("--prompt_ids_file")
    src.add_argument("--prompt")
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--cpu_threads", type=int, default=-1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--warmup", action="store_true")
    p.add_argument("--ignore_eos", action="store_true", help="accepted; EOS is always ignored")
    p.add_argument("--routing_trace", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill_chunk", type=int, default=None)
    return p


def _log(msg: str) -> None:
    # the shape of ExecuTorch's posix ET_LOG lines: "I 00:00:01.234567 file] message"
    t = time.monotonic() - _T0
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    sys.stderr.write(f"I {int(h):02d}:{int(m):02d}:{s:09.6f} {PROG}] {msg}\n")
    sys.stderr.flush()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _read_ids(path: str) -> list[int]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"prompt ids file not found: {path}")
    if p.suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
            raise UsageError(f"cannot read prompt ids from {path}: {exc}") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise UsageError(f"{path}: expected a 1-D integer array, got {arr.dtype} {arr.shape}")
        ids = [int(v) for v in arr]
    else:
        ids = []
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read prompt ids from {path}: {exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s:
                continue
            try:
                ids.append(int(s))
            except ValueError:
                raise UsageError(f"{path}:{n}: not an integer token id: {s[:40]!r}") from None
    if not ids:
        raise UsageError(f"{path}: no token ids")
    return ids


def main(argv: list[str] | None = None) -> int:
    global _T0
    _T0 = time.monotonic()
    try:
        return _run(_parser().parse_args(argv))
    except DevprofError as exc:
        sys.stderr.write(f"{PROG}: error: {exc.format_message()}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return ExitCode.INTERRUPTED
    except MemoryError:
        sys.stderr.write(f"{PROG}: error: out of memory\n")
        return 1


_T0 = time.monotonic()


def _run(args: argparse.Namespace) -> int:
    _check_args(args)  # everything cheap, before importing torch
    from devprof.runtimes.reference.bundle import load_config, spec_from_config

    folder = Path(args.model_path)
    config = load_config(folder)
    spec = spec_from_config(config)
    tok_path = Path(args.tokenizer_path) if args.tokenizer_path else folder / config.get("tokenizer", "tokenizer.json")
    ids, text = _read_prompt(args, spec, tok_path)

    engine, tokenizer, load_start, load_end = _load(args, folder, tok_path, text is not None)
    import numpy as np
    import torch

    def encode() -> list[int]:
        assert tokenizer is not None and text is not None
        out = tokenizer.encode(text).ids
        if not out:
            raise UsageError("the prompt encodes to no tokens")
        _check_context(spec, len(out), args.max_new_tokens)
        return out

    if args.warmup:
        wids = ids if ids is not None else encode()
        engine.generate(wids, args.max_new_tokens)
        _log("Warmup run finished!")

    trace = None
    inference_start = time.time() * 1000.0
    prompt_ids = ids if ids is not None else encode()
    if args.routing_trace:  # prompt tokens, then the max_new_tokens - 1 decode steps
        trace = np.zeros((spec.n_layers, len(prompt_ids) + args.max_new_tokens - 1, spec.top_k), dtype=np.uint8)
    gen = engine.generate(prompt_ids, args.max_new_tokens, trace=trace,
                          on_prefill=lambda: _log(f"RSS after prompt prefill: {_rss_mib():f} MiB (0 if unsupported)"))
    # generate() starts its clock after tokenization; ExecuTorch's includes it
    gen.inference_start_ms = inference_start
    if tokenizer is not None:
        sys.stdout.write(tokenizer.decode(gen.tokens) + "\n")
    else:
        sys.stdout.write(" ".join(map(str, gen.tokens)) + "\n")
    _log(f"RSS after finishing text generation: {_rss_mib():f} MiB (0 if unsupported)")
    stats = _observer_stats(gen, load_start, load_end, torch.get_num_threads())
    sys.stdout.write("PyTorchObserver " + json.dumps(stats, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    if trace is not None:
        _write_trace(args.routing_trace, engine, trace, len(prompt_ids))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.temperature != 0:
        raise UsageError(f"only greedy decoding is supported (--temperature 0), got {args.temperature:g}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if args.cpu_threads == 0 or args.cpu_threads < -1:
        raise UsageError(f"--cpu_threads must be -1 or >= 1, got {args.cpu_threads}")
    if args.prefill_chunk is not None and args.prefill_chunk < 1:
        raise UsageError(f"--prefill_chunk must be >= 1, got {args.prefill_chunk}")


def _read_prompt(args: argparse.Namespace, spec: Any, tok_path: Path) -> tuple[list[int] | None, str | None]:
    """(prompt ids, None) or (None, prompt text), checked; also checks the routing trace's folder."""
    ids: list[int] | None = None
    text: str | None = None
    if args.prompt_ids_file:
        ids = _read_ids(args.prompt_ids_file)
        bad = [i for i in ids if i < 0 or i >= spec.vocab]
        if bad:
            raise UsageError(f"{args.prompt_ids_file}: token id {bad[0]} outside [0, {spec.vocab})")
        _check_context(spec, len(ids), args.max_new_tokens)
    elif args.prompt_file:
        try:
            text = Path(args.prompt_file).read_text()
        except FileNotFoundError:
            raise UsageError(f"prompt file not found: {args.prompt_file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read prompt file {args.prompt_file}: {exc}") from None
    else:
        text = args.prompt
    if text is not None and not tok_path.is_file():
        raise UsageError(f"tokenizer not found: {tok_path}")
    if args.routing_trace:
        parent = Path(args.routing_trace).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"routing trace folder does not exist: {parent}")
    return ids, text


def _load(args: argparse.Namespace, folder: Path, tok_path: Path, needs_tokenizer: bool) -> tuple[Any, Any, float, float]:
    """(engine, tokenizer or None, load start ms, load end ms), logging the import time and the RSS."""
    t_imp = time.perf_counter()
    import numpy  # noqa: F401 - counted in the import time
    import torch

    from devprof.runtimes.reference.engine import DEFAULT_PREFILL_CHUNK, Engine, set_threads, tune_malloc

    if args.cpu_threads > 0:
        set_threads(args.cpu_threads)

    tune_malloc()

    _log(f"runtime import: {(time.perf_counter() - t_imp) * 1000:.0f} ms (torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads)")
    load_start = time.time() * 1000.0
    engine = Engine(folder, prefill_chunk=args.prefill_chunk or DEFAULT_PREFILL_CHUNK)
    tokenizer = None
    if needs_tokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot load tokenizer {tok_path}: {exc}") from None
    load_end = time.time() * 1000.0
    _log(f"RSS after loading model: {_rss_mib():f} MiB (0 if unsupported)")
    return engine, tokenizer, load_start, load_end


def _observer_stats(gen: Any, load_start: float, load_end: float, cpu_threads: int) -> dict[str, Any]:
    """The ``PyTorchObserver`` JSON object of the measured generation."""
    return {
        "prompt_tokens": gen.prompt_tokens,
        "generated_tokens": gen.decode_steps,
        "model_load_start_ms": round(load_start),
        "model_load_end_ms": round(load_end),
        "inference_start_ms": round(gen.inference_start_ms),
        "inference_end_ms": round(gen.inference_end_ms),
        "prompt_eval_end_ms": round(gen.prompt_eval_end_ms),
        "first_token_ms": round(gen.first_token_ms),
        "model_execution_start_ms": round(gen.inference_start_ms),
        "model_execution_end_ms": round(gen.inference_end_ms),
        "aggregate_sampling_time_ms": round(gen.aggregate_sampling_time_ms),
        "aggregate_model_execution_time_ms": round(gen.aggregate_model_execution_time_ms),
        "SCALING_FACTOR_UNITS_PER_SECOND": 1000,
        # devprof's addition (ExecuTorch's line has no such key): each decode step's wall time, ms
        "decode_token_ms": gen.extra.get("token_ms", []),
        "cpu_threads": cpu_threads,  # as used (-1 on the command line: torch's default)
    }


def _check_context(spec: Any, n_prompt: int, max_new: int) -> None:
    """The prompt must fit the model's context; decode steps may go past it (logged)."""
    if n_prompt > spec.max_context:
        raise UsageError(
            f"prompt of {n_prompt} tokens is beyond {spec.display}'s max_context ({spec.max_context})"
        )
    if n_prompt + max_new > spec.max_context:
        _log(f"note: prompt {n_prompt} + {max_new} new tokens runs {n_prompt + max_new - spec.max_context} "
             f"positions past max_context {spec.max_context}")


def _write_trace(path: str, engine: Any, trace: Any, n_prompt: int) -> None:
    import numpy as np

    from devprof.routing import write_trace

    spec = engine.spec
    offsets = np.zeros((spec.n_layers, spec.n_experts), dtype=np.int64)
    nbytes = np.zeros((spec.n_layers, spec.n_experts), dtype=np.int64)
    for b in engine.layout.get("expert_blocks", []):
        offsets[b["layer"], b["expert"]] = b["offset"]
        nbytes[b["layer"], b["expert"]] = b["nbytes"]
    write_trace(path, trace, n_prompt, n_experts=spec.n_experts, top_k=spec.top_k, block_offsets=offsets,
                block_nbytes=nbytes, block_bytes=int(engine.layout.get("expert_block_bytes", 0)),
                model=spec.name, bundle_id=engine.config.get("bundle_id", ""))


if __name__ == "__main__":
    sys.exit(main())
