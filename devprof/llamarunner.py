"""``python -m devprof.llamarunner``: a llama-cli-like runner on llama-cpp-python's low-level API.

It runs one greedy generation of a GGUF model with llama.cpp and prints what llama.cpp's own
tools print at the end, so :class:`devprof.runtimes.llamacpp.LlamaCppAdapter` parses it::

    -m, --model MODEL.gguf
    -f, --file PROMPT.txt | --prompt-ids FILE (one id per line, used as they are) | -p, --prompt TEXT
    -n, --n-predict N        generate exactly N tokens greedily, EOS ignored (default 128): the
                             first from the prompt pass, then N-1 single-token decode calls
    -t, --threads N          decode threads (default: all CPUs); -tb/--threads-batch for prompt
                             batches (default: --threads)
    -c, --ctx-size N         KV cache size (default 0: prompt + N)
    -b/--batch-size 2048, -ub/--ubatch-size 512, -fa/--flash-attn on|off|auto (default auto)
    --no-mmap                read the weights into memory (default: memory-map them, as llama.cpp)
    --warmup                 one untimed generation first (same prompt and N), then the KV cache
                             and llama.cpp's perf counters are reset
    --routing-trace PATH.npz expert ids per (layer, token, slot), the reference runtime's format
    --swa-full               full-size KV cache for sliding-window layers (default: window-sized)
    -nr, --no-repack         keep llama.cpp from copying weights into its CPU "repack" buffers
                             (anonymous memory) at load; with it, every weight stays a file-backed
                             mapping and expert pages become resident only when used (slower
                             Q4_0/Q8_0 kernels)
    -v, --verbose            pass llama.cpp's own log (model load, ...) through to stderr

Accepted for llama-cli compatibility (the adapter's default command line): ``--temp 0``,
``--ignore-eos``, ``-no-cnv``, ``--no-display-prompt``, ``--no-warmup``, ``-s/--seed``.

Output: the generated ids on stdout (space-separated, one line; text when the prompt was text),
then on stderr llama.cpp's ``llama_perf_sampler_print:`` and ``llama_perf_context_print:`` lines
exactly as llama.cpp formats them (its log callback is routed here; nothing else of llama.cpp's
log is shown unless -v). Bad input (a missing or unreadable file, bad ids, a model llama.cpp
cannot load, bad flags) prints one line on stderr and exits with code 2.

Routing traces. llama.cpp names each layer's selected-experts tensor ``ffn_moe_topk-<layer>``;
with --routing-trace the runner registers a ggml scheduler eval callback (``cb_eval``) that asks
for exactly those tensors and copies each one (int32 [tokens, top_k]) as it is computed. The
scheduler then computes each graph in pieces that end at those tensors, and the copy runs in
Python: measured on 2 cores, 1024-token prompt, Q4_0, 32 new tokens (benchmarks/
llamacpp_vs_reference.py, median of 3): mobilemoe-s-mini decode 1527 -> 973 tok/s (+0.4 ms per
token), prefill 7113 -> 6078 tok/s; mobilemoe-s no difference beyond the run-to-run noise
(decode 68 vs 72, prefill 316 vs 357 tok/s). Without --routing-trace nothing is
registered. The .npz has the reference runtime's keys (``experts`` uint8 [layers, tokens,
top_k], ``n_prompt``, ``n_decode``, ``n_experts``, ``top_k``, ``layer_block_bytes``,
``block_offsets``, ``block_nbytes``, ``model``, ``bundle_id``) plus:

- ``computed`` bool [layers, tokens]: False where llama.cpp never ran that layer's FFN for that
  token. llama.cpp skips the last layer's attention output and FFN for every prompt token whose
  logits are not wanted (all but the last), so those tokens touch no expert of the last layer.
  Their ``experts`` rows repeat the last prompt token's (so every (layer, expert) pair in the
  file was really touched; per-expert token counts of that layer are overstated);
- ``block_ranges`` int64 [layers, experts, 3, 2]: (file offset, bytes) of the expert's gate, up
  and down slices in the GGUF (each a contiguous slice of the stacked ``ffn_*_exps`` tensor);
  ``block_offsets`` is the gate slice's offset and ``block_nbytes`` the sum of the three.

A dense model gets an empty trace (``experts`` [layers, tokens, 0]), as from the reference runtime.

Startup imports llama-cpp-python (~0.3 s) and numpy, never torch.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

PROG = "llamarunner"


class BadInput(Exception):
    """One line on stderr, exit code 2."""


class Failure(Exception):
    """One line on stderr, exit code 1 (llama.cpp failed on good input)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m devprof.llamarunner", description="llama.cpp runner (llama-cpp-python)",
                allow_abbrev=False)
    p.add_argument("-m", "--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-f", "--file")
    src.add_argument("--prompt-ids")
    src.add_argument("-p", "--prompt")
    p.add_argument("-n", "--n-predict", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, default=-1)
    p.add_argument("-tb", "--threads-batch", type=int, default=-1)
    p.add_argument("-c", "--ctx-size", type=int, default=0)
    p.add_argument("-b", "--batch-size", type=int, default=2048)
    p.add_argument("-ub", "--ubatch-size", type=int, default=512)
    p.add_argument("-fa", "--flash-attn", choices=("on", "off", "auto"), default="auto")
    mm = p.add_mutually_exclusive_group()
    mm.add_argument("--no-mmap", dest="mmap", action="store_false")
    mm.add_argument("--mmap", dest="mmap", action="store_true")
    p.set_defaults(mmap=True)
    wu = p.add_mutually_exclusive_group()
    wu.add_argument("--warmup", dest="warmup", action="store_true")
    wu.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.set_defaults(warmup=False)
    p.add_argument("--routing-trace", default=None)
    p.add_argument("--swa-full", action="store_true")
    p.add_argument("-nr", "--no-repack", dest="repack", action="store_false")
    p.add_argument("-v", "--verbose", action="store_true")
    # llama-cli compatibility
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("-no-cnv", "--no-conversation", action="store_true")
    p.add_argument("--no-display-prompt", action="store_true")
    p.add_argument("-s", "--seed", type=int, default=-1)
    return p


# ---- input ----------------------------------------------------------------------------------


def read_ids(path: str) -> list[int]:
    """Token ids, one per line (blank lines skipped); BadInput on anything else."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"prompt ids file not found: {path}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read prompt ids from {path}: {exc}") from None
    ids: list[int] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        try:
            v = int(s)
        except ValueError:
            raise BadInput(f"{path}:{n}: not an integer token id: {s[:40]!r}") from None
        if v < 0:
            raise BadInput(f"{path}:{n}: negative token id {v}")
        ids.append(v)
    if not ids:
        raise BadInput(f"{path}: no token ids")
    return ids


def _check_gguf(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"model file not found: {path}")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise BadInput(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise BadInput(f"not a GGUF file: {path}")


# ---- llama.cpp ------------------------------------------------------------------------------


def _set(struct: Any, **fields: Any) -> None:
    """Set ctypes struct fields, failing on a name the struct lacks (ctypes would silently add a
    Python attribute: llama-cpp-python's structs follow llama.h, whose fields come and go)."""
    names = {f[0] for f in type(struct)._fields_}
    for k, v in fields.items():
        if k not in names:
            raise Failure(f"this llama-cpp-python has no {type(struct).__name__}.{k}")
        setattr(struct, k, v)


class _Log:
    """llama.cpp's log: kept in memory; passed to stderr when ``passthrough`` is set.

    One C callback is installed per process and never freed (llama.cpp keeps calling the raw
    pointer, even from destructors at exit); it writes to the newest _Log.
    """

    _current: "_Log | None" = None
    _installed: Any = None

    def __init__(self, L: Any, verbose: bool):
        self.lines: list[str] = []
        self.passthrough = verbose
        _Log._current = self
        if _Log._installed is None:
            @L.llama_log_callback
            def cb(level: int, text: bytes, user_data: Any) -> None:
                log = _Log._current
                if log is None:
                    return
                try:
                    s = text.decode("utf-8", errors="replace")
                    if len(log.lines) < 20000:
                        log.lines.append(s)
                    if log.passthrough:
                        sys.stderr.write(s)
                        sys.stderr.flush()
                except Exception:  # noqa: BLE001 - never raise into C
                    pass

            _Log._installed = cb
            L.llama_log_set(cb, ctypes.c_void_p(0))

    def last_error(self) -> str:
        """The most telling recent line of llama.cpp's log (an "error" line before a "failed" one)."""
        for word in ("error", "failed"):
            for s in reversed(self.lines[-200:]):
                t = " ".join(s.split())
                if word in t.lower():
                    return t
        return " ".join(self.lines[-1].split()) if self.lines else "no log"


class _Ggml:
    """The few libggml-base accessors the eval callback needs (no ggml_tensor struct layout)."""

    def __init__(self, L: Any):
        lib_dir = Path(L.__file__).resolve().parent / "lib"
        names = ["libggml-base.so", "libggml-base.dylib", "ggml-base.dll"]
        lib = None
        for n in names:
            if (lib_dir / n).exists():
                lib = ctypes.CDLL(str(lib_dir / n))
                break
        if lib is None:
            raise Failure(f"libggml-base not found in {lib_dir}")
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.ggml_get_name.argtypes, lib.ggml_get_name.restype = [vp], ctypes.c_char_p
        lib.ggml_get_data.argtypes, lib.ggml_get_data.restype = [vp], vp
        lib.ggml_nelements.argtypes, lib.ggml_nelements.restype = [vp], i64
        lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [vp], ctypes.c_size_t
        lib.ggml_is_contiguous.argtypes, lib.ggml_is_contiguous.restype = [vp], ctypes.c_bool
        lib.ggml_element_size.argtypes, lib.ggml_element_size.restype = [vp], ctypes.c_size_t
        P = ctypes.POINTER(i64)
        lib.ggml_unravel_index.argtypes, lib.ggml_unravel_index.restype = [vp, i64, P, P, P, P], None
        self.lib = lib

    def shape(self, t: int) -> tuple[int, int, int, int]:
        n = self.lib.ggml_nelements(t)
        if n == 0:
            return (0, 0, 0, 0)
        idx = [ctypes.c_int64() for _ in range(4)]
        self.lib.ggml_unravel_index(t, n - 1, *[ctypes.byref(i) for i in idx])
        return tuple(int(i.value) + 1 for i in idx)  # type: ignore[return-value]

    def read_i32(self, t: int) -> Any:
        """The tensor as an int32 numpy array [ne1, ne0] (ids of one layer: [tokens, top_k])."""
        import numpy as np

        ne0, ne1, ne2, ne3 = self.shape(t)
        if ne0 * ne1 == 0:
            return np.zeros((0, max(ne0, 0)), dtype=np.int32)
        if ne2 * ne3 != 1 or self.lib.ggml_element_size(t) != 4:
            raise Failure(f"unexpected routing tensor shape {(ne0, ne1, ne2, ne3)}")
        ptr = self.lib.ggml_get_data(t)
        if self.lib.ggml_is_contiguous(t):
            buf = (ctypes.c_int32 * (ne0 * ne1)).from_address(ptr)
            return np.frombuffer(buf, dtype=np.int32).reshape(ne1, ne0).copy()
        # a view of the first top_k columns of the argsort rows: row stride from the struct
        # layout (type, buffer, ne[4], nb[4]) checked against the accessors first
        ne = (ctypes.c_int64 * 4).from_address(t + 16)
        nb = (ctypes.c_size_t * 4).from_address(t + 48)
        if tuple(ne) != (ne0, ne1, 1, 1) or nb[0] != 4:
            raise Failure("cannot read a non-contiguous routing tensor (unknown ggml_tensor layout)")
        rows = np.empty((ne1, ne0), dtype=np.int32)
        for r in range(ne1):
            rows[r] = np.frombuffer((ctypes.c_int32 * ne0).from_address(ptr + r * nb[1]), dtype=np.int32)
        return rows


class _TraceCollector:
    """cb_eval target: copies every ``ffn_moe_topk-<layer>`` tensor, in compute order."""

    PREFIX = b"ffn_moe_topk-"

    def __init__(self, L: Any, n_layers: int):
        self.g = _Ggml(L)
        self.n_layers = n_layers
        self.pending: list[list[Any]] = [[] for _ in range(n_layers)]
        self.error: str | None = None
        self.seen = 0

        @L.ggml_backend_sched_eval_callback
        def cb(t: int, ask: bool, user_data: Any) -> bool:
            try:
                name = self.g.lib.ggml_get_name(t) or b""
                if not name.startswith(self.PREFIX):
                    return False if ask else True
                if ask:
                    return True
                layer = int(name[len(self.PREFIX):])
                if 0 <= layer < self.n_layers:
                    rows = self.g.read_i32(t)
                    if rows.size:  # a ubatch with no output rows reaches the last layer empty
                        self.pending[layer].append(rows)
                    self.seen += 1
            except Exception as exc:  # noqa: BLE001 - never raise into C
                if self.error is None:
                    self.error = f"{type(exc).__name__}: {exc}"
            return True

        self.cb = cb

    def take(self) -> list[Any]:
        """The rows collected since the last take(), per layer ([n, k] int32 each)."""
        import numpy as np

        out = []
        for layer in range(self.n_layers):
            parts = self.pending[layer]
            out.append(np.concatenate(parts) if parts else None)
            self.pending[layer] = []
        return out


class Runner:
    """One loaded model and context. ``generate`` is what the CLI times; tests use it directly."""

    def __init__(self, model: str, *, mmap: bool = True, repack: bool = True, verbose: bool = False):
        """Load the model (no context yet: :meth:`open` creates it).

        ``mmap``: map the file (llama.cpp's LLAMA_LOAD_MODE_MMAP) or read it into memory
        (LLAMA_LOAD_MODE_NONE). ``repack``: let llama.cpp's CPU backend copy the weight types
        it has faster kernels for (Q4_0, Q8_0, ... on AVX2) into its interleaved "repack"
        buffers at load (its default); those copies are anonymous memory, so the weights no
        longer stay file-backed and expert residency no longer follows routing.
        """
        import llama_cpp as L

        self.L = L
        self.model_path = str(model)
        self.log = _Log(L, verbose)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        _set(mp, load_mode=L.LLAMA_LOAD_MODE_MMAP if mmap else L.LLAMA_LOAD_MODE_NONE,
             use_extra_bufts=bool(repack), n_gpu_layers=0)
        self.model = L.llama_model_load_from_file(str(model).encode(), mp)
        if not self.model:
            raise BadInput(f"llama.cpp cannot load {model}: {self.log.last_error()}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_layers = L.llama_model_n_layer(self.model)
        self.arch = self.meta("general.architecture") or ""
        self.n_experts = int(self.meta(f"{self.arch}.expert_count") or 0)
        self.top_k = int(self.meta(f"{self.arch}.expert_used_count") or 0)
        self.ctx = self.smpl = self.batch = None
        self.collector: _TraceCollector | None = None
        self.trace_rows: list[list[Any]] = []  # per decode call: [first position, output flags, rows]

    def open(self, n_ctx: int, *, n_batch: int = 2048, n_ubatch: int = 512, threads: int = -1,
             threads_batch: int = -1, flash_attn: str = "auto", trace: bool = False,
             swa_full: bool = False, kv_type: str = "f16") -> "Runner":
        """Create the context (KV cache of ``n_ctx`` positions), the greedy sampler and a batch."""
        L = self.L
        cpu = os.cpu_count() or 1
        self.threads = threads if threads > 0 else cpu
        self.threads_batch = threads_batch if threads_batch > 0 else self.threads
        self.n_ctx = n_ctx
        self.n_batch = max(1, min(n_batch, n_ctx))
        self.n_ubatch = max(1, min(n_ubatch, self.n_batch))
        cp = L.llama_context_default_params()
        try:
            kv = {"f16": L.GGML_TYPE_F16, "f32": L.GGML_TYPE_F32, "q8_0": L.GGML_TYPE_Q8_0}[kv_type]
        except KeyError:
            raise BadInput(f"unknown KV cache type {kv_type!r} (f16, f32, q8_0)") from None
        _set(cp, n_ctx=n_ctx, n_batch=self.n_batch, n_ubatch=self.n_ubatch, n_seq_max=1,
             n_threads=self.threads, n_threads_batch=self.threads_batch,
             flash_attn_type={"on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED, "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                              "auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO}[flash_attn],
             no_perf=False, swa_full=bool(swa_full), type_k=kv, type_v=kv)
        if trace and self.n_experts:
            self.collector = _TraceCollector(L, self.n_layers)
            _set(cp, cb_eval=self.collector.cb, cb_eval_user_data=None)
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise Failure(f"llama.cpp could not create a context of {n_ctx} tokens: {self.log.last_error()}")
        sp = L.llama_sampler_chain_default_params()
        _set(sp, no_perf=False)
        self.smpl = L.llama_sampler_chain_init(sp)
        L.llama_sampler_chain_add(self.smpl, L.llama_sampler_init_greedy())
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        return self

    # ---- metadata ---------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    # ---- decoding ---------------------------------------------------------------------
    def _decode(self, ids: list[int], pos0: int, outputs: list[bool]) -> None:
        L, b = self.L, self.batch
        n = len(ids)
        b.n_tokens = n
        for i, tok in enumerate(ids):
            b.token[i] = tok
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if outputs[i] else 0
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise Failure(f"llama_decode failed ({rc}) at position {pos0}: {self.log.last_error()}")
        if self.collector is not None:
            self.trace_rows.append([pos0, list(outputs), self.collector.take()])

    def prefill(self, ids: list[int], all_logits: bool = False) -> None:
        """The prompt in llama_decode calls of at most n_batch tokens.

        llama.cpp books a 1-token call as "eval" (a decode run), not "prompt eval": the split
        never leaves a 1-token call (unless the prompt is 1 token), so the perf lines count
        every prompt token under "prompt eval".
        """
        n, nb = len(ids), self.n_batch
        bounds = list(range(0, n, nb)) + [n]
        if nb > 2 and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            bounds[-2] -= 1
        for s, e in zip(bounds, bounds[1:]):
            chunk = ids[s:e]
            outs = [all_logits or (e == n and i == len(chunk) - 1) for i in range(len(chunk))]
            self._decode(chunk, s, outs)

    def logits(self, i: int = -1) -> Any:
        import numpy as np

        p = self.L.llama_get_logits_ith(self.ctx, i)
        if not p:
            raise Failure(f"no logits for output {i}")
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy()

    def generate(self, ids: list[int], n_new: int) -> list[int]:
        """Greedy: the first token from the prompt pass, then n_new - 1 single-token decodes."""
        L = self.L
        self.prefill(ids)
        tok = L.llama_sampler_sample(self.smpl, self.ctx, -1)
        out = [int(tok)]
        pos = len(ids)
        for _ in range(n_new - 1):
            self._decode([int(tok)], pos, [True])
            tok = L.llama_sampler_sample(self.smpl, self.ctx, -1)
            out.append(int(tok))
            pos += 1
        L.llama_synchronize(self.ctx)
        return out

    def prompt_logits(self, ids: list[int]) -> Any:
        """Logits [len(ids), vocab] of every prompt position (fresh KV cache; for checks)."""
        import numpy as np

        self.reset()
        self.prefill(ids, all_logits=True)
        return np.stack([self.logits(i) for i in range(len(ids))])

    def reset(self) -> None:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        L.llama_perf_context_reset(self.ctx)
        L.llama_sampler_reset(self.smpl)
        L.llama_perf_sampler_reset(self.smpl)
        self.trace_rows = []
        if self.collector is not None:
            self.collector.take()

    def print_perf(self) -> None:
        """llama.cpp's own perf lines, through the log callback, to stderr."""
        old = self.log.passthrough
        self.log.passthrough = True
        try:
            sys.stderr.flush()
            self.L.llama_perf_sampler_print(self.smpl)
            self.L.llama_perf_context_print(self.ctx)
        finally:
            self.log.passthrough = old
        sys.stderr.flush()

    def token_text(self, tokens: list[int]) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        for t in tokens:
            n = self.L.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, False)
            if n > 0:
                out += buf.raw[:n]
        return out.decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        L = self.L
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, True, False)
        if n < 0:
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, True, False)
        return [int(arr[i]) for i in range(n)]

    # ---- routing trace ----------------------------------------------------------------
    def routing(self, n_tokens: int) -> tuple[Any, Any]:
        """(experts uint8 [layers, n_tokens, k], computed bool [layers, n_tokens]) of the decode
        calls since the last reset, positions 0..n_tokens-1 (see the module docstring)."""
        import numpy as np

        if self.collector is None:  # a dense model: no experts, an empty trace
            return (np.zeros((self.n_layers, n_tokens, 0), dtype=np.uint8),
                    np.ones((self.n_layers, n_tokens), dtype=bool))
        if self.collector.error:
            raise Failure(f"routing trace: {self.collector.error}")
        L_, k = self.n_layers, self.top_k
        ex = np.zeros((L_, n_tokens, k), dtype=np.uint8)
        done = np.zeros((L_, n_tokens), dtype=bool)
        for pos0, outputs, per_layer in self.trace_rows:
            n = len(outputs)
            out_pos = [pos0 + i for i, o in enumerate(outputs) if o]
            for layer, rows in enumerate(per_layer):
                if rows is None:
                    continue
                if len(rows) == n:
                    pos = list(range(pos0, pos0 + n))
                elif len(rows) == len(out_pos):
                    pos = out_pos
                else:
                    raise Failure(f"routing trace: layer {layer} gave {len(rows)} rows for a batch of {n} "
                                  f"tokens ({len(out_pos)} outputs)")
                sel = [i for i, p in enumerate(pos) if p < n_tokens]
                if sel:
                    idx = np.asarray([pos[i] for i in sel])
                    ex[layer, idx] = rows[sel].astype(np.uint8)
                    done[layer, idx] = True
        # rows llama.cpp never computed: repeat the next computed token's experts in that layer
        for layer in range(L_):
            missing = np.flatnonzero(~done[layer])
            if missing.size == 0:
                continue
            have = np.flatnonzero(done[layer])
            if have.size == 0:
                raise Failure(f"routing trace: no expert ids captured for layer {layer} (is the tensor "
                              "still named ffn_moe_topk-<layer> in this llama.cpp?)")
            nxt = np.searchsorted(have, missing)
            nxt[nxt >= have.size] = have.size - 1
            ex[layer, missing] = ex[layer, have[nxt]]
        return ex, done

    def close(self) -> None:
        L = self.L
        try:
            if self.batch is not None:
                L.llama_batch_free(self.batch)
            if self.smpl is not None:
                L.llama_sampler_free(self.smpl)
            if self.ctx is not None:
                L.llama_free(self.ctx)
            if self.model:
                L.llama_model_free(self.model)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
        self.batch = self.smpl = self.ctx = self.model = None


def expert_ranges(model_path: str, n_layers: int, n_experts: int) -> Any:
    """int64 [layers, experts, 3, 2]: (offset, bytes) of each expert's gate/up/down slice."""
    import numpy as np

    out = np.zeros((n_layers, n_experts, 3, 2), dtype=np.int64)
    if not n_experts:
        return out
    from gguf import GGUFReader

    r = GGUFReader(model_path, "r")
    by_name = {t.name: t for t in r.tensors}
    for layer in range(n_layers):
        for j, kind in enumerate(("gate", "up", "down")):
            t = by_name.get(f"blk.{layer}.ffn_{kind}_exps.weight")
            if t is None:
                continue
            per = int(t.n_bytes) // n_experts
            for e in range(n_experts):
                out[layer, e, j] = (int(t.data_offset) + e * per, per)
    return out


def write_trace(path: str, runner: Runner, experts: Any, computed: Any, n_prompt: int) -> None:
    import numpy as np

    L_, E = runner.n_layers, runner.n_experts
    ranges = expert_ranges(runner.model_path, L_, E)
    nbytes = ranges[..., 1].sum(-1)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez_compressed(
        tmp,
        experts=experts,
        computed=computed,
        n_prompt=np.int64(n_prompt),
        n_decode=np.int64(experts.shape[1] - n_prompt),
        n_experts=np.int64(E),
        top_k=np.int64(runner.top_k),
        layer_block_bytes=nbytes[:, 0] if E else np.zeros(L_, dtype=np.int64),
        block_offsets=ranges[..., 0, 0],
        block_nbytes=nbytes,
        block_ranges=ranges,
        model=np.str_(runner.meta("devprof.model") or runner.meta("general.name") or ""),
        bundle_id=np.str_(runner.meta("devprof.bundle_id") or ""),
        runtime=np.str_("llamacpp"),
    )
    os.replace(tmp, path)


# ---- the CLI --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(_parser().parse_args(argv))
    except BadInput as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except Failure as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"{PROG}: error: out of memory\n")
        return 1


def _run(a: argparse.Namespace) -> int:
    if a.temp != 0:
        raise BadInput(f"only greedy decoding is supported (--temp 0), got {a.temp:g}")
    if a.n_predict < 1:
        raise BadInput(f"-n must be >= 1 (exactly N tokens are generated), got {a.n_predict}")
    for flag, v in (("-t", a.threads), ("-tb", a.threads_batch)):
        if v == 0 or v < -1:
            raise BadInput(f"{flag} must be -1 or >= 1, got {v}")
    if a.ctx_size < 0:
        raise BadInput(f"-c must be >= 0, got {a.ctx_size}")
    if a.batch_size < 1 or a.ubatch_size < 1:
        raise BadInput("-b and -ub must be >= 1")
    _check_gguf(a.model)
    ids: list[int] | None = None
    text: str | None = None
    if a.prompt_ids:
        ids = read_ids(a.prompt_ids)
    elif a.file:
        try:
            text = Path(a.file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInput(f"prompt file not found: {a.file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read prompt file {a.file}: {exc}") from None
    else:
        text = a.prompt
    if text is not None and not text:
        raise BadInput("empty prompt")
    if a.routing_trace:
        parent = Path(a.routing_trace).resolve().parent
        if not parent.is_dir():
            raise BadInput(f"routing trace folder does not exist: {parent}")

    runner = None
    try:
        runner = Runner(a.model, mmap=a.mmap, repack=a.repack, verbose=a.verbose)
        if ids is None:
            ids = runner.tokenize(text or "")
            if not ids:
                raise BadInput("the prompt encodes to no tokens")
        n_ctx = a.ctx_size or (len(ids) + a.n_predict)
        if len(ids) + a.n_predict > n_ctx:
            raise BadInput(f"prompt {len(ids)} + {a.n_predict} new tokens do not fit -c {n_ctx}")
        bad = [i for i in ids if i >= runner.n_vocab]
        if bad:
            raise BadInput(f"token id {bad[0]} outside the model's vocabulary [0, {runner.n_vocab})")
        runner.open(n_ctx, n_batch=a.batch_size, n_ubatch=a.ubatch_size, threads=a.threads,
                    threads_batch=a.threads_batch, flash_attn=a.flash_attn, trace=bool(a.routing_trace),
                    swa_full=a.swa_full)
        if a.warmup:
            runner.generate(ids, a.n_predict)
            runner.reset()
            if not a.verbose:
                sys.stderr.write(f"{PROG}: warmup run finished\n")
        tokens = runner.generate(ids, a.n_predict)
        if text is not None and a.prompt_ids is None:
            sys.stdout.write(runner.token_text(tokens) + "\n")
        else:
            sys.stdout.write(" ".join(map(str, tokens)) + "\n")
        sys.stdout.flush()
        runner.print_perf()
        if a.routing_trace:
            n_tok = len(ids) + a.n_predict - 1
            experts, computed = runner.routing(n_tok)
            write_trace(a.routing_trace, runner, experts, computed, len(ids))
    finally:
        if runner is not None:
            runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
