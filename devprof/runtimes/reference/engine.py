"""The reference engine: fp32 torch on CPU, weights memory-mapped from a bundle.

- weights.bin is mapped copy-on-write (MAP_PRIVATE) and every weight is a ``torch.frombuffer``
  view of the mapping: nothing is copied, so the process's RssFile counts exactly the weight
  pages that were touched (an expert's block only once a token is routed to it);
- pre-norm blocks: RMSNorm -> attention (fused QKV, optional QK-norm, RoPE, GQA, SDPA) ->
  residual; RMSNorm -> SwiGLU FFN or MoE (router in fp32; sigmoid gates with normalised top-k,
  or softmax then top-k; plus shared experts) -> residual; final RMSNorm; LM head (tied or not);
- prefill takes the whole prompt layer by layer (or ``prefill_chunk`` tokens at a time through
  all layers, if set): attention is one causal ``scaled_dot_product_attention`` per global
  layer; sliding-window layers run query blocks against a band of keys with a band mask, so
  their cost is O(n w), not O(n^2); the FFN / MoE runs over at most ``ffn_chunk`` tokens at a
  time, which bounds activation memory (~64 MB of intermediates) at 8192+ tokens. The MoE
  groups the token-slots by expert (one stable argsort; one GEMM pair per active expert; a
  gather back to token order), never a loop over tokens;
- decode is greedy with a preallocated KV cache: global layers keep every position, local
  (sliding-window) layers a ring buffer of ``window`` positions. A decode step is numpy on
  preallocated buffers: its GEMVs go through numpy's BLAS (OpenBLAS sgemv reads fp32 weights
  ~1.5x faster than torch's MKL GEMM-with-one-row on these shapes), the element-wise ops are
  numpy calls (~1 us each against 3-6 us for a torch op: at one token every op's dispatch cost
  adds to the time of reading the weights), scalars Python floats; only SDPA and SiLU stay in
  torch, on one thread meanwhile (:func:`decode_threads`).

Routing traces: pass a ``uint8`` numpy array ``[n_layers, n_tokens, top_k]`` to
:meth:`Engine.generate` (or prefill/decode) and the expert ids of every processed token are
written into it (prompt tokens first, then decode steps).
"""

from __future__ import annotations

import math
import mmap
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from devprof.catalog import ModelSpec
from devprof.errors import UsageError
from devprof.runtimes.reference.bundle import load_config, load_layout, spec_from_config
from devprof.runtimes.reference.state import Generation, KVCache, Layer, decode_threads, set_threads, tune_malloc

__all__ = ["Engine", "KVCache", "Generation", "EPS", "DEFAULT_PREFILL_CHUNK", "tune_malloc", "set_threads",
           "decode_threads"]

EPS = 1e-6
#: Prompt tokens per prefill chunk (through all layers); None: the whole prompt at once, so
#: global attention is one causal SDPA call. Activation memory is bounded separately by running
#: the FFN / MoE of a layer over at most ``ffn_chunk`` tokens at a time.
DEFAULT_PREFILL_CHUNK: int | None = None
#: Bytes of FFN intermediate (or of the MoE's sorted token-slots) per FFN chunk.
FFN_CHUNK_BYTES = 64 << 20
#: Query block of sliding-window attention in prefill (the band mask covers block + window).
LOCAL_QUERY_BLOCK = 256


def _now_ms() -> float:
    return time.time() * 1000.0


class Engine:
    """A loaded bundle. ``Engine(folder)`` maps weights.bin and builds views; it reads no weight."""

    def __init__(self, folder: str | os.PathLike[str], *, prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK):
        self.folder = Path(folder)
        self.config = load_config(self.folder)
        self.spec: ModelSpec = spec_from_config(self.config)
        self.layout = load_layout(self.folder)
        if prefill_chunk is not None and prefill_chunk < 1:
            raise UsageError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        sp = self.spec
        width = max(sp.top_k * sp.hidden + 2 * sp.expert_ffn, 2 * sp.shared_ffn) if sp.is_moe else 2 * sp.ffn
        #: tokens per FFN / MoE chunk in prefill (a power of two in 256..4096)
        self.ffn_chunk = 1 << max(8, min(12, int(math.log2(FFN_CHUNK_BYTES / (4 * width)))))
        path = self.folder / "weights.bin"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"cannot open {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size != self.layout["file_size"]:
                raise UsageError(f"{path} has {size} bytes, layout.json says {self.layout['file_size']}")
            # Copy-on-write private mapping: torch.frombuffer needs a writable buffer, and the
            # engine never writes weights, so every page stays file-backed (RssFile).
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._build_views()
        self._rope_cap = 0
        self._ws: _Workspace | None = None
        self.local_query_block = LOCAL_QUERY_BLOCK

    # ---- weights ---------------------------------------------------------------------
    def _t(self, name: str) -> torch.Tensor:
        """A tensor's logical view ([out, in] for matrices, whatever the stored orientation)."""
        info = self.layout["tensors"][name]
        shape = info["shape"]
        t = torch.frombuffer(self._mm, dtype=torch.float32, count=math.prod(shape),
                             offset=info["offset"]).view(shape)
        return t.t() if info.get("transposed") else t

    def _build_views(self) -> None:
        s = self.spec
        self.tok_embeddings = self._t("tok_embeddings")
        self.norm = self._t("norm")
        self.lm_head = self.tok_embeddings if s.tied_embeddings else self._t("output")
        self.lm_head_n = self.lm_head.t().numpy()
        self.tok_embeddings_n = self.tok_embeddings.numpy()
        self.norm_n = self.norm.numpy()
        blocks: dict[int, list[dict[str, int]]] = {}
        for b in self.layout.get("expert_blocks", []):
            blocks.setdefault(b["layer"], []).append(b)
        self.layers: list[Layer] = []
        for i in range(s.n_layers):
            p = f"layers.{i}."
            L = Layer()
            L.index = i
            L.is_global = s.is_global(i)
            L.window = None if L.is_global else s.sliding_window
            L.attn_norm = self._t(p + "attn_norm")
            L.wqkv = self._t(p + "wqkv")
            L.wo = self._t(p + "wo")
            L.wqkv_n, L.wo_n = L.wqkv.t().numpy(), L.wo.t().numpy()
            L.ffn_norm = self._t(p + "ffn_norm")
            L.attn_norm_n, L.ffn_norm_n = L.attn_norm.numpy(), L.ffn_norm.numpy()
            if s.qk_norm:
                q, k = self._t(p + "q_norm"), self._t(p + "k_norm")
                # one [H + KV, hd] weight so q and k are normalised by one op (a small copy)
                L.qk_norm = torch.cat([q.expand(s.n_heads, -1), k.expand(s.n_kv_heads, -1)])
                L.qk_norm_n = L.qk_norm.numpy()
            if s.is_moe:
                L.router = self._t(p + "router")
                L.router_bias = self._t(p + "router_bias")
                L.bias_n = L.router_bias.numpy()
                L.shared = [(self._t(p + f"shared.{j}.w13"), self._t(p + f"shared.{j}.w2"))
                            for j in range(s.n_shared)]
                bl = sorted(blocks[i], key=lambda b: b["expert"])
                if [b["expert"] for b in bl] != list(range(s.n_experts)):
                    raise UsageError(f"layout.json: layer {i} does not list experts 0..{s.n_experts - 1}")
                L.experts_w13 = [self._t(p + f"experts.{e}.w13") for e in range(s.n_experts)]
                L.experts_w2 = [self._t(p + f"experts.{e}.w2") for e in range(s.n_experts)]
                L.router_n = L.router.t().numpy()
                L.experts_w13_n = [w.t().numpy() for w in L.experts_w13]
                L.experts_w2_n = [w.t().numpy() for w in L.experts_w2]
                L.shared_n = [(a.t().numpy(), b.t().numpy()) for a, b in L.shared]
            else:
                L.w13 = self._t(p + "ffn.w13")
                L.w2 = self._t(p + "ffn.w2")
                L.w2_t = L.w2.t()
                L.w13_n, L.w2_n = L.w13.t().numpy(), L.w2_t.numpy()
            self.layers.append(L)

    def expert_block(self, layer: int, expert: int) -> tuple[int, int]:
        """(offset, nbytes) of an expert's block in weights.bin."""
        for b in self.layout["expert_blocks"]:
            if b["layer"] == layer and b["expert"] == expert:
                return b["offset"], b["nbytes"]
        raise KeyError((layer, expert))

    def advise(self, advice: int) -> None:
        """madvise the whole mapping (e.g. mmap.MADV_RANDOM, MADV_DONTNEED to drop residency)."""
        self._mm.madvise(advice)

    # ---- RoPE ------------------------------------------------------------------------
    def _ensure_rope(self, n: int) -> None:
        if n <= self._rope_cap:
            return
        hd = self.spec.head_dim
        inv = 1.0 / (self.spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = torch.cos(ang), torch.sin(ang)
        # x_rot = x * cos + roll(x, hd/2) * sin_signed  ==  x * cos + rotate_half(x) * sin
        self._cos = torch.cat([cos, cos], -1).float()[:, None, :]  # [n, 1, hd]
        self._sin = torch.cat([-sin, sin], -1).float()[:, None, :]
        # decode's rows: cos [n, hd]; sin as [n, 2, hd/2], to multiply the half-swapped x
        self._cos_n = self._cos.numpy()[:, 0]
        self._sin_n = self._sin.numpy().reshape(n, 2, hd // 2)
        self._rope_cap = n

    def _rope(self, x: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """x: [c, heads, hd] for positions s..e-1."""
        return torch.addcmul(x * self._cos[s:e], x.roll(self.spec.head_dim // 2, -1), self._sin[s:e])

    # ---- public API ------------------------------------------------------------------
    def new_cache(self, capacity: int) -> KVCache:
        """A KV cache for ``capacity`` positions (prompt + new tokens).

        Only the prompt is held to ``spec.max_context`` (by :meth:`generate`); decode steps may
        run past it, as a runner asked for ``max_new_tokens`` after a full-context prompt does.
        """
        self._ensure_rope(capacity)
        return KVCache(self.spec, capacity)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor | list[int], cache: KVCache, start: int = 0,
                trace: np.ndarray | None = None, chunk: int | None = None,
                all_logits: bool = False) -> torch.Tensor:
        """Run prompt tokens at positions start.. through the model.

        Returns the logits of the last token ``[vocab]`` (what a runner needs), or of every
        token ``[n, vocab]`` with ``all_logits`` (for tests).
        """
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = ids.numel()
        if n == 0:
            raise UsageError("empty prompt")
        if start + n > cache.capacity:
            raise UsageError(f"{start + n} tokens do not fit the KV cache ({cache.capacity})")
        self._check_ids(ids)
        chunk = chunk or self.prefill_chunk or n
        x = None
        outs = []
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            x = self._embed(ids[s:e])
            for L in self.layers:
                x = self._layer_prefill(L, x, start + s, start + e, cache, trace)
            if all_logits:
                outs.append(F.linear(F.rms_norm(x, (self.spec.hidden,), self.norm, EPS), self.lm_head))
        if all_logits:
            return torch.cat(outs)
        h = F.rms_norm(x[-1:], (self.spec.hidden,), self.norm, EPS)
        return F.linear(h, self.lm_head)[0]

    @torch.inference_mode()
    def decode(self, token: int, pos: int, cache: KVCache, trace: np.ndarray | None = None) -> torch.Tensor:
        """One decode step: feed ``token`` at position ``pos``; logits [vocab]."""
        if pos >= cache.capacity:
            raise UsageError(f"position {pos} is beyond the KV cache ({cache.capacity})")
        ws = self._workspace()
        x = ws.x
        x[0] = self.tok_embeddings_n[token]
        rope = (self._cos_n[pos], self._sin_n[pos])
        for L in self.layers:
            self._layer_decode(L, x, pos, rope, cache, trace)
        return torch.from_numpy(np.matmul(_rms_row(x, self.norm_n, ws.h), self.lm_head_n))[0]

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows [n, d] (a gather along the rows of a [d, vocab] table when tied)."""
        E = self.tok_embeddings
        if E.stride(0) == 1:  # stored transposed
            return E.t().index_select(1, ids).t().contiguous()
        return F.embedding(ids, E)

    def generate(self, ids: list[int] | torch.Tensor, max_new_tokens: int, *,
                 trace: np.ndarray | None = None,
                 on_prefill: Callable[[], None] | None = None) -> Generation:
        """Greedy generation of exactly ``max_new_tokens`` tokens (EOS ignored).

        As ExecuTorch's runner: the first token comes from the prefill logits, then
        ``max_new_tokens - 1`` decode steps. ``on_prefill`` is called right after the prefill
        (and the first token) is done, before any decode step.
        """
        if max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        t_start = _now_ms()
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        n = ids.numel()
        if n > self.spec.max_context:
            raise UsageError(f"prompt of {n} tokens is beyond {self.spec.display}'s max_context "
                             f"({self.spec.max_context})")
        cache = self.new_cache(n + max_new_tokens)
        if trace is not None and trace.shape[1] < n + max_new_tokens - 1:
            raise ValueError("routing trace array too small")
        sampling = 0.0
        p0 = time.perf_counter()
        logits = self.prefill(ids, cache, trace=trace)
        p1 = time.perf_counter()
        tok = int(torch.argmax(logits))
        p2 = time.perf_counter()
        sampling += p2 - p1
        exec_s = p1 - p0
        t_prefill = _now_ms()
        out = [tok]
        if on_prefill is not None:
            on_prefill()
        pos = n
        token_ms = []  # per decode step: model + sampling, the inter-token latency a user sees
        with decode_threads():
            for _ in range(max_new_tokens - 1):
                a = time.perf_counter()
                logits = self.decode(tok, pos, cache, trace)
                b = time.perf_counter()
                tok = int(torch.argmax(logits))
                c = time.perf_counter()
                exec_s += b - a
                sampling += c - b
                token_ms.append(round((c - a) * 1000.0, 3))
                out.append(tok)
                pos += 1
        t_end = _now_ms()
        return Generation(
            prompt_tokens=n, tokens=out, inference_start_ms=t_start, prompt_eval_end_ms=t_prefill,
            first_token_ms=t_prefill, inference_end_ms=t_end,
            aggregate_sampling_time_ms=sampling * 1000.0,
            aggregate_model_execution_time_ms=exec_s * 1000.0,
            decode_steps=max_new_tokens - 1,
            extra={"kv_cache_bytes": cache.nbytes(), "token_ms": token_ms},
        )

    def _check_ids(self, ids: torch.Tensor) -> None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.spec.vocab:
            raise UsageError(f"token id out of range [0, {self.spec.vocab}): {lo if lo < 0 else hi}")

    # ---- prefill ---------------------------------------------------------------------
    def _layer_prefill(self, L: Layer, x: torch.Tensor, s: int, e: int, cache: KVCache,
                       trace: np.ndarray | None) -> torch.Tensor:
        sp = self.spec
        H, KV, hd = sp.n_heads, sp.n_kv_heads, sp.head_dim
        c = e - s
        nqk = (H + KV) * hd
        h = F.rms_norm(x, (sp.hidden,), L.attn_norm, EPS)
        qkv = F.linear(h, L.wqkv)
        qk = qkv[:, :nqk].view(c, H + KV, hd)
        if L.qk_norm is not None:
            qk = F.rms_norm(qk, (hd,), None, EPS).mul_(L.qk_norm)
        qk = self._rope(qk, s, e)
        q = qk[:, :H].transpose(0, 1).unsqueeze(0)  # [1, H, c, hd]
        k = qk[:, H:].transpose(0, 1)  # [KV, c, hd]
        v = qkv[:, nqk:].view(c, KV, hd).transpose(0, 1)
        K, V = cache.k[L.index], cache.v[L.index]
        if L.is_global:
            K[:, s:e] = k
            V[:, s:e] = v
            Kx, Vx = K[:, :e].unsqueeze(0), V[:, :e].unsqueeze(0)
            if s == 0:
                o = F.scaled_dot_product_attention(q, Kx, Vx, is_causal=True, enable_gqa=True)
            else:
                mask = torch.arange(e)[None, :] <= torch.arange(s, e)[:, None]
                o = F.scaled_dot_product_attention(q, Kx, Vx, attn_mask=mask, enable_gqa=True)
        else:
            o = self._local_prefill(L, q, k, v, s, e, cache)
        o = o[0].transpose(0, 1).reshape(c, H * hd)
        x = torch.addmm(x, o, L.wo.t())
        step = self.ffn_chunk
        for a in range(0, c, step):  # FFN / MoE over bounded token chunks (in place on x)
            xa = x[a:a + step]
            h = F.rms_norm(xa, (sp.hidden,), L.ffn_norm, EPS)
            if sp.is_moe:
                self._moe_prefill(L, h, xa, s + a, trace)
            else:
                xa.addmm_(_swiglu(F.linear(h, L.w13)), L.w2_t)
        return x

    def _local_prefill(self, L: Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       s: int, e: int, cache: KVCache) -> torch.Tensor:
        """Sliding-window attention of queries s..e-1: query blocks against a band of keys."""
        w = L.window
        K, V = cache.k[L.index], cache.v[L.index]
        ring = cache.ring[L.index]
        base = max(0, s - w + 1)  # first key position any query of this chunk can see
        if base < s:  # earlier positions come from the ring (those still in it)
            slots = torch.arange(base, s) % ring
            kk = torch.cat([K.index_select(1, slots), k], 1)
            vv = torch.cat([V.index_select(1, slots), v], 1)
        else:
            kk, vv = k, v
        # keep the last `ring` positions of this chunk in the ring
        keep = max(s, e - ring)
        slots = torch.arange(keep, e) % ring
        K.index_copy_(1, slots, k[:, keep - s:])
        V.index_copy_(1, slots, v[:, keep - s:])
        outs = []
        c = e - s
        B = self.local_query_block
        for qb in range(0, c, B):
            qs, qe = s + qb, min(e, s + qb + B)
            ks = max(base, qs - w + 1)
            qq = q[:, :, qb:qb + (qe - qs)]
            kx = kk[:, ks - base:qe - base].unsqueeze(0)
            vx = vv[:, ks - base:qe - base].unsqueeze(0)
            if ks == qs and qe - 1 - ks < w:  # square block, all inside the window: causal
                o = F.scaled_dot_product_attention(qq, kx, vx, is_causal=True, enable_gqa=True)
            else:
                qpos = torch.arange(qs, qe)[:, None]
                kpos = torch.arange(ks, qe)[None, :]
                mask = (kpos <= qpos) & (kpos > qpos - w)
                o = F.scaled_dot_product_attention(qq, kx, vx, attn_mask=mask, enable_gqa=True)
            outs.append(o)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 2)

    def _route(self, L: Layer, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate weights [n, k] and expert ids [n, k] (fp32 router).

        Experts are selected by ``logits + router_bias`` (the bias only selects, as DeepSeek-V3's
        score correction); gate weights come from the unbiased logits: sigmoid scores of the
        chosen experts normalised to sum 1, or softmax probabilities over all experts (OLMoE,
        not renormalised)."""
        logits = F.linear(h, L.router)
        _, idx = torch.topk(logits + L.router_bias, self.spec.top_k, dim=-1)
        if self.spec.gate == "sigmoid":
            w = torch.sigmoid(logits.gather(-1, idx))
            w = w / w.sum(-1, keepdim=True)
        else:
            w = torch.softmax(logits, -1).gather(-1, idx)
        return w, idx

    def _moe_prefill(self, L: Layer, h: torch.Tensor, x: torch.Tensor, s: int,
                     trace: np.ndarray | None) -> torch.Tensor:
        n, d = h.shape
        k = self.spec.top_k
        w, idx = self._route(L, h)
        if trace is not None:
            trace[L.index, s:s + n] = idx.numpy()
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # token-slots grouped by expert
        counts = torch.bincount(flat, minlength=self.spec.n_experts).tolist()
        xs = h.index_select(0, order // k)
        ys = torch.empty_like(xs)
        a = 0
        for ex, cnt in enumerate(counts):
            if cnt:
                b = a + cnt
                torch.mm(_swiglu(F.linear(xs[a:b], L.experts_w13[ex])), L.experts_w2[ex].t(), out=ys[a:b])
                a = b
        ys.mul_(w.reshape(-1).index_select(0, order).unsqueeze(1))
        # back to token order: a gather with the inverse permutation (faster than a scatter)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel())
        y = ys.index_select(0, inv).view(n, k, d).sum(1)
        for w13, w2 in L.shared:
            y.addmm_(_swiglu(F.linear(h, w13)), w2.t())
        return x.add_(y)

    # ---- decode ----------------------------------------------------------------------
    def _workspace(self) -> "_Workspace":
        if self._ws is None:
            self._ws = _Workspace(self.spec)
        return self._ws

    def _layer_decode(self, L: Layer, x: np.ndarray, pos: int, rope: tuple[np.ndarray, np.ndarray],
                      cache: KVCache, trace: np.ndarray | None) -> None:
        # One token: the step is bound by reading the weights, and every op's dispatch cost adds
        # to it. So the step is numpy on preallocated buffers (a numpy call on a few hundred
        # floats costs ~1 us, a torch op 3-6 us): every GEMV goes through numpy's BLAS on
        # [in, out] views of the mapping (OpenBLAS sgemv streams fp32 weights ~1.5x faster than
        # torch's MKL path on these shapes: benchmarks/refruntime_roofline.py --gemv), scalars
        # through Python floats. Only attention (torch's SDPA kernel, faster than BLAS calls at
        # three query rows per KV head) and SiLU (one torch op, four numpy ones) stay in torch,
        # on views of the same buffers. x [1, d] is updated in place.
        sp = self.spec
        ws = self._ws
        _rms_row(x, L.attn_norm_n, ws.h)
        np.matmul(ws.h, L.wqkv_n, out=ws.qkv)
        if L.qk_norm_n is not None:  # RMSNorm of every q and k head
            np.multiply(ws.qk, ws.qk, out=ws.rot)
            ss = ws.rot.sum(1, keepdims=True)
            np.divide(ss, sp.head_dim, out=ss)
            np.add(ss, EPS, out=ss)
            np.sqrt(ss, out=ss)
            np.divide(ws.qk, ss, out=ws.qk)
            np.multiply(ws.qk, L.qk_norm_n, out=ws.qk)
        # RoPE (rotate-half): x * cos + [x2, x1] * [-sin, sin]
        np.multiply(ws.qk, rope[0], out=ws.rot)
        np.multiply(ws.qk_swapped, rope[1], out=ws.rot_tmp)
        np.add(ws.rot, ws.rot_tmp_flat, out=ws.rot)
        i = L.index
        ring = cache.ring[i]
        if ring is None:
            slot, n = pos, pos + 1
        else:
            slot, n = pos % ring, min(pos + 1, ring)
        cache.k_n[i][:, slot] = ws.k
        cache.v_n[i][:, slot] = ws.v
        # GQA without expanding K/V: the G query heads sharing a KV head act as G queries
        o = F.scaled_dot_product_attention(ws.q, cache.k4[i].narrow(2, 0, n), cache.v4[i].narrow(2, 0, n))
        np.matmul(o.numpy().reshape(ws.o_shape), L.wo_n, out=ws.y)
        np.add(x, ws.y, out=x)
        _rms_row(x, L.ffn_norm_n, ws.h)
        if sp.is_moe:
            self._moe_decode(L, x, pos, trace)
        else:
            self._ffn_decode(x, L.w13_n, L.w2_n)

    def _moe_decode(self, L: Layer, x: np.ndarray, pos: int, trace: np.ndarray | None) -> None:
        """x += the MoE FFN of ws.h: the router's top-k experts, gate-weighted, and the shared experts."""
        sp = self.spec
        ws = self._ws
        # route: top-k of logits + bias; gate weights from the unbiased logits, in Python
        np.matmul(ws.h, L.router_n, out=ws.logits)
        np.add(ws.logits[0], L.bias_n, out=ws.sel)
        ids = ws.sel.argsort()[:-sp.top_k - 1:-1].tolist()
        raw = ws.logits[0, ids].tolist()
        if sp.gate == "sigmoid":
            gw = [1.0 / (1.0 + math.exp(-v)) for v in raw]
            tot = sum(gw)
            gw = [v / tot for v in gw]
        else:  # softmax over all experts (log-sum-exp, max-shifted)
            m = float(ws.logits.max())
            lse = m + math.log(float(np.exp(ws.logits - m).sum()))
            gw = [math.exp(v - lse) for v in raw]
        if trace is not None:
            trace[L.index, pos] = ids
        w13, w2 = L.experts_w13_n, L.experts_w2_n
        for j, ex in enumerate(ids):
            np.matmul(ws.h, w13[ex], out=ws.g_rows[j])
        F.silu(ws.g_gate, inplace=True)
        ws.g_gate.mul_(ws.g_up)  # SwiGLU of all k experts, in ws.act_rows
        for j, ex in enumerate(ids):
            np.matmul(ws.act_rows[j], w2[ex], out=ws.ey_rows[j])
        ws.gw[0] = gw
        np.matmul(ws.gw, ws.ey, out=ws.y)  # the gate-weighted sum of the k expert outputs
        np.add(x, ws.y, out=x)
        for a, b in L.shared_n:
            self._ffn_decode(x, a, b)

    def _ffn_decode(self, x: np.ndarray, w13: np.ndarray, w2: np.ndarray) -> None:
        """x += SwiGLU FFN of ws.h (the dense FFN, or a shared expert)."""
        ws = self._ws
        np.matmul(ws.h, w13, out=ws.ffn)
        F.silu(ws.ffn_gate, inplace=True)
        ws.ffn_gate.mul_(ws.ffn_up)
        np.matmul(ws.ffn_gate_n, w2, out=ws.y)
        np.add(x, ws.y, out=x)


class _Workspace:
    """Decode buffers shared by all layers (one layer runs at a time): numpy arrays and their
    views, plus torch views of the same memory for the few torch ops (SDPA, SiLU)."""

    def __init__(self, sp: ModelSpec):
        H, KV, hd, d = sp.n_heads, sp.n_kv_heads, sp.head_dim, sp.hidden
        f32 = np.float32
        nqk = (H + KV) * hd
        self.x = np.empty((1, d), f32)  # the residual stream
        self.h = np.empty((1, d), f32)  # its normalised copy, the GEMVs' input
        self.y = np.empty((1, d), f32)  # a GEMV's output before it is added to x
        self.qkv = np.empty((1, nqk + KV * hd), f32)
        self.qk = self.qkv[0, :nqk].reshape(H + KV, hd)
        self.v = self.qkv[0, nqk:].reshape(KV, hd)
        self.qk_swapped = self.qk.reshape(H + KV, 2, hd // 2)[:, ::-1]  # [x2, x1] per head
        self.rot = np.empty((H + KV, hd), f32)
        self.rot_tmp = np.empty((H + KV, 2, hd // 2), f32)
        self.rot_tmp_flat = self.rot_tmp.reshape(H + KV, hd)
        self.q = torch.from_numpy(self.rot)[:H].view(1, KV, H // KV, hd)
        self.k = self.rot[H:]
        self.o_shape = (1, H * hd)
        f = sp.shared_ffn if sp.is_moe else sp.ffn  # dense FFN or shared expert: [gate | up]
        self.ffn = np.empty((1, 2 * f), f32)
        ffn_t = torch.from_numpy(self.ffn)
        self.ffn_gate, self.ffn_up = ffn_t[:, :f], ffn_t[:, f:]
        self.ffn_gate_n = self.ffn[:, :f]
        if sp.is_moe:
            fe, k = sp.expert_ffn, sp.top_k
            self.logits = np.empty((1, sp.n_experts), f32)
            self.sel = np.empty(sp.n_experts, f32)
            g = np.empty((k, 2 * fe), f32)
            self.g_rows = [g[j:j + 1] for j in range(k)]
            g_t = torch.from_numpy(g)
            self.g_gate, self.g_up = g_t[:, :fe], g_t[:, fe:]
            self.act_rows = [g[j:j + 1, :fe] for j in range(k)]
            self.ey = np.empty((k, d), f32)  # the k experts' outputs
            self.ey_rows = [self.ey[j:j + 1] for j in range(k)]
            self.gw = np.empty((1, k), f32)


def _rms_row(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """RMSNorm of one row [1, d] into ``out``, the scale as a Python float (3 numpy calls)."""
    ss = float(np.dot(x[0], x[0]))
    np.multiply(x, w, out=out)
    return np.multiply(out, 1.0 / math.sqrt(ss / x.shape[-1] + EPS), out=out)


def _swiglu(g: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for g = [gate | up] along the last dim."""
    f = g.shape[-1] // 2
    return F.silu(g[..., :f]).mul_(g[..., f:])
