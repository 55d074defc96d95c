"""Model bundles for the reference runtime: seeded random fp32 weights laid out for lazy paging.

A bundle is a folder::

    config.json    the spec (``ModelSpec`` fields + its summary), seed, format version, bundle_id
    tokenizer.json copy of the repository's workloads/tokenizer.json (16384-token BPE; full-size
                   models keep their own vocabulary size in the embedding but only ids < 16384
                   ever occur)
    weights.bin    raw little-endian float32 tensors at the offsets layout.json gives
    layout.json    tensor name -> offset, shape, dtype, nbytes; expert blocks (layer, expert) ->
                   offset, nbytes, span
    manifest.json  per-file size and sha256, computed once while building (for pushing to phones)

Layout of weights.bin (every offset a multiple of 64 bytes):

    tok_embeddings [vocab, d]   (stored [d, vocab] when tied: see "transposed" below)
    per layer i:
        layers.i.attn_norm [d]  layers.i.wqkv [(H + 2 KV) hd, d]  layers.i.wo [d, H hd]
        layers.i.q_norm [hd]  layers.i.k_norm [hd]        (qk_norm models)
        layers.i.ffn_norm [d]
        dense:  layers.i.ffn.w13 [2 f, d] (gate rows, then up rows)   layers.i.ffn.w2 [d, f]
        MoE:    layers.i.router [E, d]
                layers.i.shared.j.w13 [2 fs, d]  layers.i.shared.j.w2 [d, fs]
                (64 KiB boundary) then E expert blocks, each ``span`` bytes apart:
                    layers.i.experts.e.w13 [2 fe, d]  layers.i.experts.e.w2 [d, fe]
                (the routed-expert region starts and ends on an EXPERT_ALIGN boundary)
    norm [d]
    output [vocab, d]   (untied models only)

Shapes above are logical ([out, in] for matrices). layout.json gives each tensor's stored
``shape`` and ``transposed``: a matrix with more outputs than inputs (wqkv, w13 of the dense
FFN and the shared experts, experts' w2, the LM head) is stored as [in, out], so that a
one-token GEMV streams long contiguous rows (BLAS sgemv reaches about half the memory bandwidth
on rows of 256..768 floats, full bandwidth on rows of thousands).

Every routed expert's tensors (gate, up, down) form one contiguous block starting on a
64 KiB boundary (``EXPERT_ALIGN``), and its span is padded to a multiple of 64 KiB, so no page
and no 64 KiB fault-around window (Linux's default ``fault_around_bytes``) is shared between two
experts or between an expert and a dense tensor: an expert's pages become resident only when a
token is routed to it.

Pages cached by read()/write() sit in large folios, which the kernel maps whole on a fault, so the
builder drops the new file's page cache (POSIX_FADV_DONTNEED) and the cache is warmed by running the
runtime, not by reading the file; why, and what each alignment costs: docs/measurements.md,
"Residency granularity".

Initialisation (fully determined by (spec, seed), independent of build order and machine):
every tensor is uniform on [-a, a] with a = sqrt(3) * std, drawn from a PCG64 stream seeded by
(seed, crc32(tensor name), chunk index) and converted with exact integer -> float32 arithmetic,
so the bytes do not depend on numpy's distribution code. Standard deviations:

    embedding 1; wqkv, router, w13: 1/sqrt(d); wo: 1/sqrt(H hd) * r; w2: 1/sqrt(f) * r;
    norms 1 (constant), with r = 1/sqrt(2 * n_layers)

This keeps the pre-norm residual stream near unit RMS through all layers (each sublayer adds
O(r)), and keeps router logits ~ N(0, 1), so the top-k choice depends on the token's hidden
state (its embedding plus what attention and earlier experts added from its context).

MoE layers also have ``router_bias`` [E]: +2.0 for a seeded quarter of the experts ("hot"
experts), 0 for the rest, added to the logits for selection only, so the router's load is uneven as a
trained router's is (what it changes: docs/measurements.md, "Router bias").
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import queue
import shutil
import tempfile
import threading
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from devprof import REPO_ROOT
from devprof.catalog import MODELS, ModelSpec
from devprof.errors import DevprofError, UsageError
from devprof.files import drop_page_cache, sha256_file

__all__ = [
    "FORMAT_VERSION",
    "EXPERT_ALIGN",
    "TENSOR_ALIGN",
    "build_bundle",
    "bundle_dir",
    "bundle_id",
    "default_cache_dir",
    "load_config",
    "load_layout",
    "spec_from_config",
    "tensor_plan",
    "verify_manifest",
]

FORMAT_VERSION = 2
TENSOR_ALIGN = 64  # bytes: every tensor starts on a cache line
EXPERT_ALIGN = 64 * 1024  # bytes: every routed-expert block starts on (and spans a multiple of) this
TOKENIZER_SRC = REPO_ROOT / "workloads" / "tokenizer.json"

#: Each layer's router_bias: a seeded quarter of its experts ("hot" experts) get +ROUTER_HOT_BIAS
#: (router logits have std ~1), the others 0 -- the load imbalance of a trained router. It is
#: used for selection only. With it, a templated prompt (a few dozen distinct tokens) routes to
#: about half of the experts, varied text to all of them (docs/measurements.md, "Router bias").
ROUTER_HOT_BIAS = 2.0
ROUTER_HOT_FRACTION = 0.25
_CHUNK = 1 << 20  # elements per independently seeded init chunk (4 MiB of float32)


# ---- spec <-> config ------------------------------------------------------------------------


def _spec_fields(spec: ModelSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["global_layers"] = list(spec.global_layers) if spec.global_layers is not None else None
    d["third_party"] = list(spec.third_party)
    return d


def spec_from_config(config: dict[str, Any]) -> ModelSpec:
    """Rebuild the exact ModelSpec a bundle was built from (config["spec"])."""
    raw = dict(config["spec"])
    names = {f.name for f in dataclasses.fields(ModelSpec)}
    kw = {k: v for k, v in raw.items() if k in names}
    if kw.get("global_layers") is not None:
        kw["global_layers"] = tuple(kw["global_layers"])
    kw["third_party"] = tuple(kw.get("third_party", ()))
    return ModelSpec(**kw)


def _tokenizer_sha() -> str:
    if not TOKENIZER_SRC.is_file():
        raise DevprofError(f"tokenizer not found: {TOKENIZER_SRC}")
    return sha256_file(TOKENIZER_SRC)


def bundle_id(spec: ModelSpec, seed: int = 0, expert_align: int = EXPERT_ALIGN) -> str:
    """Cheap content id: sha256 of (spec, seed, format version, alignment, tokenizer hash).

    The weights are a pure function of these, so equal ids mean equal bundles (for a given
    format version); it is computed without reading weights.bin.
    """
    key = {
        "spec": _spec_fields(spec),
        "seed": int(seed),
        "format_version": FORMAT_VERSION,
        "expert_align": int(expert_align),
        "tokenizer_sha256": _tokenizer_sha(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$DEVPROF_CACHE/bundles`` or ``~/.cache/devprof/bundles``."""
    root = os.environ.get("DEVPROF_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "devprof"
    return base / "bundles"


def bundle_dir(spec: ModelSpec, seed: int = 0, cache_dir: Path | None = None,
               expert_align: int = EXPERT_ALIGN) -> Path:
    """Where the bundle of (spec, seed) lives: ``<cache>/<name>-s<seed>-v<format>``.

    A spec that is not the catalog's spec of that name (a test's tiny shape, another
    alignment) gets the first 10 hex digits of its bundle_id appended, so it never collides.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"{spec.name}-s{seed}-v{FORMAT_VERSION}"
    if MODELS.get(spec.name) != spec or expert_align != EXPERT_ALIGN:
        name += "-" + bundle_id(spec, seed, expert_align)[:10]
    return base / name


# ---- the plan: every tensor's name, shape, offset and init ---------------------------------


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def tensor_plan(spec: ModelSpec, expert_align: int = EXPERT_ALIGN) -> dict[str, Any]:
    """The layout (what layout.json holds) plus each tensor's init, without touching any file.

    Returns ``{"tensors": {name: {offset, shape, dtype, nbytes, init}}, "expert_blocks": [...],
    "file_size": N, ...}``; ``init`` is ``("const", value)`` or ``("uniform", std)``.
    """
    if expert_align % 4096 or expert_align < 4096:
        raise UsageError(f"expert alignment must be a multiple of 4096 bytes, got {expert_align}")
    d, L = spec.hidden, spec.n_layers
    r = 1.0 / math.sqrt(2 * L)
    lay = _Layout()
    # tied: also the LM head, stored [d, vocab]; untied: a lookup table only, stored [vocab, d]
    lay.add("tok_embeddings", (spec.vocab, d), ("uniform", 1.0), orient=spec.tied_embeddings)
    blocks: list[dict[str, int]] = []
    span = 0
    if spec.is_moe:
        span = _round_up(_expert_block_bytes(spec), expert_align)
    for i in range(L):
        p = f"layers.{i}."
        _attention_tensors(lay, spec, p, r)
        if spec.is_moe:
            _moe_tensors(lay, spec, i, r, expert_align, span, blocks)
        else:
            lay.add(p + "ffn.w13", (2 * spec.ffn, d), ("uniform", 1 / math.sqrt(d)))
            lay.add(p + "ffn.w2", (d, spec.ffn), ("uniform", r / math.sqrt(spec.ffn)))
    lay.add("norm", (d,), ("const", 1.0))
    if not spec.tied_embeddings:
        lay.add("output", (spec.vocab, d), ("uniform", 1 / math.sqrt(d)))
    return {
        "format_version": FORMAT_VERSION,
        "dtype": "float32",
        "byteorder": "little",
        "alignment": {"tensor": TENSOR_ALIGN, "expert_block": expert_align if spec.is_moe else None},
        "file_size": lay.off,
        "tensors": lay.tensors,
        "expert_block_bytes": (4 * 3 * spec.expert_ffn * d) if spec.is_moe else 0,
        "expert_block_span": span,
        "expert_blocks": blocks,
    }


class _Layout:
    """Tensors placed one after another in the weights file; ``off`` is the end of the last one."""

    def __init__(self) -> None:
        self.tensors: dict[str, dict[str, Any]] = {}
        self.off = 0

    def add(self, name: str, shape: tuple[int, ...], init: tuple[str, float], align: int = TENSOR_ALIGN,
            orient: bool = True) -> int:
        """``shape`` is the logical shape ([out, in] for a matrix). A matrix with more outputs
        than inputs is stored transposed ([in, out], "transposed": true), so that the rows a
        one-token GEMV streams through are the longer dimension (BLAS GEMV runs at about half
        the memory bandwidth on 256..768-float rows, at full bandwidth on long ones)."""
        self.off = _round_up(self.off, align)
        nbytes = 4 * math.prod(shape)
        transposed = orient and len(shape) == 2 and shape[0] > shape[1]
        stored = [shape[1], shape[0]] if transposed else list(shape)
        self.tensors[name] = {"offset": self.off, "shape": stored, "dtype": "float32", "nbytes": nbytes,
                              "transposed": transposed, "init": list(init)}
        start = self.off
        self.off += nbytes
        return start


def _expert_block_bytes(spec: ModelSpec) -> int:
    fe, d = spec.expert_ffn, spec.hidden
    return 4 * (2 * fe * d + d * fe)


def _attention_tensors(lay: _Layout, spec: ModelSpec, p: str, r: float) -> None:
    """A layer's attention and its norms (the FFN norm included)."""
    d, hd, H, KV = spec.hidden, spec.head_dim, spec.n_heads, spec.n_kv_heads
    lay.add(p + "attn_norm", (d,), ("const", 1.0))
    lay.add(p + "wqkv", ((H + 2 * KV) * hd, d), ("uniform", 1 / math.sqrt(d)))
    lay.add(p + "wo", (d, H * hd), ("uniform", r / math.sqrt(H * hd)))
    if spec.qk_norm:
        lay.add(p + "q_norm", (hd,), ("const", 1.0))
        lay.add(p + "k_norm", (hd,), ("const", 1.0))
    lay.add(p + "ffn_norm", (d,), ("const", 1.0))


def _moe_tensors(lay: _Layout, spec: ModelSpec, i: int, r: float, expert_align: int, span: int,
                 blocks: list[dict[str, int]]) -> None:
    """Layer ``i``'s router, shared experts and expert blocks (each at an ``expert_align`` boundary)."""
    d, fe, p = spec.hidden, spec.expert_ffn, f"layers.{i}."
    block_bytes = _expert_block_bytes(spec)
    lay.add(p + "router", (spec.n_experts, d), ("uniform", 1 / math.sqrt(d)))
    lay.add(p + "router_bias", (spec.n_experts,), ("hot", ROUTER_HOT_BIAS))
    for j in range(spec.n_shared):
        lay.add(p + f"shared.{j}.w13", (2 * spec.shared_ffn, d), ("uniform", 1 / math.sqrt(d)))
        lay.add(p + f"shared.{j}.w2", (d, spec.shared_ffn), ("uniform", r / math.sqrt(spec.shared_ffn)))
    lay.off = _round_up(lay.off, expert_align)
    for e in range(spec.n_experts):
        start = lay.off
        q = p + f"experts.{e}."
        lay.add(q + "w13", (2 * fe, d), ("uniform", 1 / math.sqrt(d)), align=expert_align)
        lay.add(q + "w2", (d, fe), ("uniform", r / math.sqrt(fe)))
        blocks.append({"layer": i, "expert": e, "offset": start, "nbytes": block_bytes, "span": span})
        lay.off = start + span


# ---- deterministic init -------------------------------------------------------------------


def _uniform_chunks(seed: int, name: str, n: int, std: float) -> Iterator[np.ndarray]:
    """float32 uniform on [-a, a], a = sqrt(3) std, in chunks of _CHUNK elements.

    Each chunk comes from its own PCG64 stream (seed, crc32(name), chunk), whose raw 64-bit
    output numpy guarantees across versions; int32 -> float32 conversion and the scaling are
    exact IEEE operations, so the bytes are the same everywhere.
    """
    a = np.float32(math.sqrt(3.0) * std / 2.0**31)
    tag = zlib.crc32(name.encode())
    for c, start in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - start)
        bg = np.random.PCG64(np.random.SeedSequence([int(seed), tag, c]))
        raw = bg.random_raw((m + 1) // 2).view(np.int32)[:m]
        x = raw.astype(np.float32)
        x *= a
        yield x


def _tensor_chunks(seed: int, name: str, info: dict[str, Any]) -> Iterator[np.ndarray]:
    n = info["nbytes"] // 4
    kind, value = info["init"]
    if kind == "const":
        yield np.full(n, value, dtype=np.float32)
    elif kind == "hot":  # `value` for a seeded ROUTER_HOT_FRACTION of the entries, else 0
        raw = np.random.PCG64(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])).random_raw(n)
        rank = np.argsort(np.argsort(raw, kind="stable"), kind="stable")
        n_hot = int(round(n * ROUTER_HOT_FRACTION))
        yield np.where(rank < n_hot, np.float32(value), np.float32(0.0)).astype(np.float32)
    else:
        yield from _uniform_chunks(seed, name, n, float(value))


# ---- building -------------------------------------------------------------------------------


class _HashingWriter:
    """Writes (and sha256-hashes) buffers in a background thread, padding gaps with zeros."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.h = hashlib.sha256()
        self.pos = 0
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.err: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.err is not None:
                continue
            try:
                mv = memoryview(item).cast("B")
                self.h.update(mv)
                self.f.write(mv)
            except BaseException as exc:  # noqa: BLE001 - reported in close()
                self.err = exc

    def pad_to(self, offset: int) -> None:
        gap = offset - self.pos
        if gap < 0:
            raise AssertionError("tensors out of order")
        while gap:
            k = min(gap, 1 << 22)
            self.q.put(bytes(k))
            gap -= k
        self.pos = offset

    def write(self, arr: np.ndarray) -> None:
        if self.err is not None:
            raise self.err
        self.q.put(np.ascontiguousarray(arr, dtype="<f4"))
        self.pos += arr.nbytes

    def close(self) -> str:
        self.q.put(None)
        self.t.join()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        if self.err is not None:
            raise self.err
        return self.h.hexdigest()


def _write_weights(path: Path, plan: dict[str, Any], seed: int) -> str:
    w = _HashingWriter(path)
    try:
        for name, info in sorted(plan["tensors"].items(), key=lambda kv: kv[1]["offset"]):
            w.pad_to(info["offset"])
            for chunk in _tensor_chunks(seed, name, info):
                w.write(chunk)
        w.pad_to(plan["file_size"])
    finally:
        digest = w.close()
    # pages cached by write() sit in large folios, and Linux 6.18 maps a whole large folio on a
    # fault: the next run's residency would be coarser than one expert (docs/measurements.md)
    drop_page_cache(path)
    return digest


def _is_complete(folder: Path, bid: str) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
        return cfg.get("bundle_id") == bid and (folder / "manifest.json").is_file()
    except (OSError, ValueError):
        return False


def build_bundle(spec: ModelSpec, seed: int = 0, cache_dir: Path | None = None, *,
                 expert_align: int = EXPERT_ALIGN) -> Path:
    """The bundle folder of (spec, seed), built once into a temporary folder and renamed.

    Cached under :func:`bundle_dir`; a complete bundle (config.json with the expected
    bundle_id and a manifest.json) is returned as it is. Concurrent builders of the same
    bundle serialise on a lock file; an interrupted build leaves only a ``.tmp-*`` folder,
    which the next build removes.
    """
    final = bundle_dir(spec, seed, cache_dir, expert_align)
    bid = bundle_id(spec, seed, expert_align)
    if _is_complete(final, bid):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.parent / (final.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(final, bid):
            return final
        for stale in final.parent.glob(final.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            _build_into(tmp, spec, seed, bid, expert_align)
            if final.exists():  # an incomplete or outdated bundle: replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_into(tmp: Path, spec: ModelSpec, seed: int, bid: str, expert_align: int) -> None:
    plan = tensor_plan(spec, expert_align)
    files: dict[str, dict[str, Any]] = {}
    files["weights.bin"] = {"sha256": _write_weights(tmp / "weights.bin", plan, seed),
                            "size": plan["file_size"]}
    layout = {k: v for k, v in plan.items() if k != "tensors"}
    layout["tensors"] = {n: {k: v for k, v in t.items() if k != "init"} for n, t in plan["tensors"].items()}
    (tmp / "layout.json").write_text(json.dumps(layout, separators=(",", ":")))
    shutil.copyfile(TOKENIZER_SRC, tmp / "tokenizer.json")
    config = {
        "format": "devprof-refruntime-bundle",
        "format_version": FORMAT_VERSION,
        "bundle_id": bid,
        "name": spec.name,
        "seed": int(seed),
        "dtype": "float32",
        "expert_align": expert_align if spec.is_moe else None,
        "tokenizer": "tokenizer.json",
        "tokenizer_vocab": 16384,
        "init": {"distribution": "uniform(-sqrt(3) std, sqrt(3) std), PCG64 per (seed, crc32(name), chunk)",
                 "residual_scale": 1 / math.sqrt(2 * spec.n_layers),
                 "router_hot_bias": ROUTER_HOT_BIAS if spec.is_moe else None,
                 "router_hot_fraction": ROUTER_HOT_FRACTION if spec.is_moe else None},
        "spec": _spec_fields(spec),
        "summary": spec.summary(),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("layout.json", "tokenizer.json", "config.json"):
        p = tmp / name
        files[name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    (tmp / "manifest.json").write_text(json.dumps({"bundle_id": bid, "files": files}, indent=1, sort_keys=True))
    for p in tmp.iterdir():
        os.chmod(p, 0o644)
    os.chmod(tmp, 0o755)


# ---- reading --------------------------------------------------------------------------------


def load_config(folder: Path) -> dict[str, Any]:
    """config.json of a bundle folder; UsageError (one line) if it is not one."""
    folder = Path(folder)
    p = folder / "config.json"
    if not folder.is_dir():
        raise UsageError(f"model bundle not found: {folder}")
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"not a model bundle (no config.json): {folder}") from None
    except ValueError as exc:
        raise UsageError(f"bad config.json in {folder}: {exc}") from None
    if cfg.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"bundle {folder} has format version {cfg.get('format_version')}, this runtime reads {FORMAT_VERSION}"
        )
    return cfg


def load_layout(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "layout.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"bad or missing layout.json in {folder}: {exc}") from None


def verify_manifest(folder: Path) -> list[str]:
    """Names of the files whose size or sha256 differs from manifest.json (reads everything)."""
    folder = Path(folder)
    man = json.loads((folder / "manifest.json").read_text())
    bad = []
    for name, info in man["files"].items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != info["size"] or sha256_file(p, cached=False) != info["sha256"]:
            bad.append(name)
    if (folder / "weights.bin").is_file():  # read() cached it in large folios, as write() does
        drop_page_cache(folder / "weights.bin")
    return bad
