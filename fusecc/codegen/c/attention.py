"""Scaled dot-product attention as one tiled kernel, online softmax
(FlashAttention's recurrence, on CPU vectors).

A task is one (batch, head) and a block of ``q_tiles`` x MR query rows.
It walks the keys in blocks of BK = ``key_panels`` x NR keys (NR = NV * VL,
the register tile's width; by default 256 keys, or 64 under the causal
flag, and never more than the sequence's keys):

  1. the key block is packed transposed, NR keys at a time
     ([BK / NR][D][NR]), and the value block in NR-wide panels
     ([D / NR][BK][NR]), into the thread's buffers;
  2. S = Q K^T for each row tile and NR keys, by the GEMM micro-kernel (a
     query row broadcast, the packed keys streamed);
  3. each row scales S, adds the mask, sets keys past the causal diagonal
     or the sequence to -inf, and updates its running max m and sum l:
     P = exp(S - m_new), the row's output so far scaled by exp(m - m_new).
     The softmax runs in base 2 (log2(e) folded into the scale), and
     without a mask the scale goes into the exponent's FMA, so the first
     pass over a block only reads it (12 heads x 64, L = 2048, Zen 1: the
     softmax took 42 of 234 ms with natural exp, 34 of them in exp; 27 of
     206 ms in base 2);
  4. O += P V for each row tile and value panel, by the same micro-kernel.

At the end each output row is divided by its l. Nothing of size Lq x Lk
is ever stored: the scores of one key block live in a BQ x BK buffer.
Under the causal flag, key blocks wholly above the diagonal are skipped.

Sparse attention (``attrs["sparse"]``, from an attention sparsity plan):
a task is one (batch, head, group of the plan's query blocks - about as
many rows as a dense task) and walks only the union of the key blocks
those query blocks keep, from a constant table compiled into the kernel
(CSR per (head, group): key blocks, and per key block a bit mask of the
query blocks keeping it). Each kept key block is packed once per group
and multiplied with the rows of the query blocks that keep it; a row that
keeps no key (a skipped head) outputs zeros. Tasks vary in work, so they
are scheduled dynamically.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ...kernels.spec import KernelSpec
from .common import SIGNATURE, thread_scratch, thread_workspace
from .dialects import Dialect
from .gemm import microkernel

# row tiles per task: a key block is packed once for Q_TILES x MR query rows.
# Measured (12 heads x 64, 2 threads): 4 tiles 1.02-1.06x SDPA, 8 1.22x, 16 1.38x, 32 1.41-1.72x
Q_TILES = 32


def _tile(dialect: Dialect) -> tuple[int, int]:
    """(MR, NV) of both GEMMs: four vectors of keys (or values) where the
    registers allow, the most query rows that fit beside them."""
    regs = dialect.vector_registers
    nv = 4 if regs >= 32 else 2
    mr = max(m for m in (1, 2, 3, 4, 6, 8) if m * nv + nv + 1 <= regs)
    return mr, nv


# keys per block of the dense kernel: each block costs a softmax pass with
# two horizontal reductions and a rescale of every output row, and its P V
# GEMM runs over K = BK keys; a block of one 16-key AVX2 tile made both the
# main cost (12 heads x 64: 0.89-0.91x SDPA on a Zen 1 core). Wider blocks
# amortize more (12 heads, Zen 1, 2 threads, ms for 64 / 256 keys: L=4096
# d=64 927 / 897, d=32 573 / 550; L=1024 d=64 57.4 / 56.2, d=32 35.7 /
# 34.4), but under the causal flag the diagonal blocks compute keys they
# then mask, so causal attention keeps 64 (L=1024: 37.2 / 41.8).
DENSE_KEYS = 256
CAUSAL_KEYS = 64
FLT_MAX = torch.finfo(torch.float32).max  # where a finite mask saturates in base 2 (see render)


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    return {} if spec.attrs.get("sparse") else {"q_tiles": (4, 8, 16, 32), "key_panels": (1, 2, 4, 8, 16)}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    _check(spec)
    mr, nv = _tile(dialect)
    sparse = spec.attrs.get("sparse")
    if sparse:  # a key block of the kernel must tile a block of the plan
        nv = max(v for v in range(1, nv + 1) if sparse["block"] % (v * dialect.vl) == 0)
        return {"tile": (mr, nv), "q_tiles": 1, "vl": dialect.vl}
    q_tiles = max(1, min(Q_TILES, math.ceil(spec.space[2] / mr)))
    nr = nv * dialect.vl
    keys = CAUSAL_KEYS if spec.attrs["causal"] else DENSE_KEYS
    key_panels = max(1, min(keys, math.ceil(spec.attrs["lk"] / nr) * nr) // nr)  # no wider than the keys
    return {"tile": (mr, nv), "q_tiles": q_tiles, "key_panels": key_panels, "vl": dialect.vl}


def _check(spec: KernelSpec) -> None:
    a = spec.attrs
    if a["q_strides"][3] != 1 or a["k_strides"][3] != 1 or a["v_strides"][3] != 1:
        raise NotImplementedError("attention kernels read q, k and v rows with unit stride over the head size")
    if spec.outputs[0].dtype != "f32":
        raise NotImplementedError("attention kernels are float32")


def kv_head_index(head: str, attrs: dict) -> str:
    """The key/value head query head ``head`` reads (GQA: one per ``kv_repeat`` query heads)."""
    rep = attrs.get("kv_repeat", 1)
    return head if rep == 1 else f"({head} / {rep}L)"


def sparse_group(sparse: dict, mr: int) -> int:
    """Query blocks of the plan per task: about Q_TILES row tiles, as the
    dense kernel, so a kept key block is packed once for all of them."""
    return max(1, min(32, mr * Q_TILES // sparse["block"]))


def _grouped_table(sparse: dict, heads: int, lq: int, group: int) -> tuple[list, list, list]:
    """The plan's (head, query block) table regrouped per (head, group of
    query blocks): CSR offsets, the union of their kept key blocks, and per
    key block a bit mask of the query blocks that keep it."""
    qn = math.ceil(lq / sparse["block"])
    offsets, blocks, bits = [0], [], []
    src_off, src_blk = sparse["offsets"], sparse["blocks"]
    for h in range(heads):
        for g0 in range(0, qn, group):
            kept: dict[int, int] = {}
            for i, qbk in enumerate(range(g0, min(qn, g0 + group))):
                row = h * qn + qbk
                for kb in src_blk[src_off[row] : src_off[row + 1]]:
                    kept[kb] = kept.get(kb, 0) | (1 << i)
            for kb in sorted(kept):
                blocks.append(kb)
                bits.append(kept[kb])
            offsets.append(len(blocks))
    return offsets, blocks, bits


class _Sizes(NamedTuple):
    b: int
    h: int
    lq: int
    d: int
    lk: int
    mr: int
    nv: int
    nr: int  # one register tile's width
    bk: int  # keys per block: key_panels tiles' width
    qb: int  # query rows per task
    panels: int  # value panels of NR floats covering the head size
    dpad: int  # the head size padded to whole panels


def _sizes(spec: KernelSpec, params: dict) -> _Sizes:
    b, h, lq, d = spec.space
    mr, nv = params["tile"]
    nr = nv * params["vl"]
    bk = nr * params.get("key_panels", 1)
    panels = math.ceil(d / nr)
    sparse = spec.attrs.get("sparse")
    if sparse and sparse["block"] % bk:
        raise NotImplementedError(f"a key block of {bk} does not tile the plan's blocks of {sparse['block']}")
    qb = sparse_group(sparse, mr) * sparse["block"] if sparse else mr * params["q_tiles"]
    return _Sizes(b, h, lq, d, spec.attrs["lk"], mr, nv, nr, bk, qb, panels, panels * nr)


def _per_thread_floats(z: _Sizes) -> int:
    """Packed keys, packed values, scores, output rows, running max and sum."""
    return z.d * z.bk + z.panels * z.bk * z.nr + z.qb * z.bk + z.qb * z.dpad + 2 * z.qb


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    return thread_workspace(nthreads, 4 * _per_thread_floats(_sizes(spec, params)) + 128)


def sparse_tables(name: str, sparse: dict, qualifier: str) -> str:
    """A table of kept key blocks as two C arrays: ``NAME_off`` (CSR offsets,
    one row per (head, query block) or per (head, group)) and ``NAME_blk``."""
    offsets, blocks = sparse["offsets"], sparse["blocks"] or (0,)
    return (
        f"{qualifier} int32_t {name}_off[{len(offsets)}] = {{{','.join(map(str, offsets))}}};\n"
        f"{qualifier} int32_t {name}_blk[{len(blocks)}] = {{{','.join(map(str, blocks))}}};\n"
    )


def _score_tiles(name: str, d: int, q_row: int, nr: int, bk: int) -> str:
    """C: the scores of row tile ``r0`` (``r`` rows) against the key block,
    one NR-wide panel of packed keys at a time; a block of one panel is
    written in place (the tile's rows are the score rows)."""
    if bk == nr:
        return f"          {name}_gemm(r, {d}L, qh + r0 * {q_row}L, {q_row}L, kt, sc + r0 * {bk}L);"
    return f"""          for (long kp = 0; kp < {bk // nr}L; ++kp) {{
            {name}_gemm(r, {d}L, qh + r0 * {q_row}L, {q_row}L, kt + kp * {d * nr}L, tile);
            for (long i = 0; i < r; ++i) memcpy(sc + (r0 + i) * {bk}L + kp * {nr}L, tile + i * {nr}L, sizeof(float) * {nr});
          }}"""


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    _check(spec)
    a = spec.attrs
    z = _sizes(spec, {**params, "vl": vl})
    b, h, lq, d, lk, mr, nv, nr, bk, qb, panels, dpad = z
    qs, ks, vs = a["q_strides"], a["k_strides"], a["v_strides"]
    os_ = spec.outputs[0].strides or (h * lq * d, lq * d, d, 1)
    kv_head = kv_head_index("hi", a)
    qblocks = math.ceil(lq / qb)
    per_thread = 4 * _per_thread_floats(z) + 128
    out_i = len(spec.operands)
    mask = a.get("mask")
    ms = a.get("mask_strides")
    mask_row = (
        f"const float* mrow = (const float*)args[{mask}] + bi * {ms[0]}L + hi * {ms[1]}L + (q0 + i) * {ms[2]}L;"
        if mask is not None
        else ""
    )
    if mask is not None and ms[3] != 1:
        raise NotImplementedError("the attention mask must be contiguous over the keys")
    kernels = "\n".join(
        microkernel(f"{name}_u{r}", r, nv, vl, "lda", "1", max(d, bk), inline=False) for r in range(1, mr + 1)
    )
    dispatch = "\n".join(f"      case {r}: {name}_u{r}(K, a, lda, bp, tile); break;" for r in range(1, mr + 1))
    # ATen aligns the causal mask top-left: query row i sees keys j <= i, even when Lq != Lk
    causal_skip = f"if (kb > q0 + {qb - 1}L) break;" if a["causal"] else ""
    sparse = a.get("sparse")
    if sparse:  # only the key blocks some query block of this task keeps, from the plan's table
        blk, group = sparse["block"], qb // sparse["block"]
        offsets, blocks, bits = _grouped_table(sparse, h, lq, group)
        tables = sparse_tables(name, {"offsets": offsets, "blocks": blocks}, "static const")
        tables += f"static const uint32_t {name}_bits[{max(1, len(bits))}] = {{{','.join(map(str, bits or [0]))}}};\n"
        key_loop = (
            f"const long row_group = hi * {qblocks}L + q0 / {qb}L;\n"
            f"      for (long t = {name}_off[row_group]; t < {name}_off[row_group + 1]; ++t) {{\n"
            f"      const uint32_t bits = {name}_bits[t];\n"
            f"      for (long kb = (long){name}_blk[t] * {blk}L; kb < ((long){name}_blk[t] + 1) * {blk}L "
            f"&& kb < {lk}L; kb += {bk}L) {{"
        )
        key_loop_end = "}}"
        # rows of the query blocks that keep this key block, one block at a time
        region = (
            f"for (long gi = 0; gi < {group}L; ++gi) {{\n"
            f"        if (!((bits >> gi) & 1u)) continue;\n"
            f"        const long ra = gi * {blk}L;\n"
            f"        if (ra >= rows) break;\n"
            f"        const long rb = ra + {blk}L < rows ? ra + {blk}L : rows;"
        )
        schedule = "dynamic"
    else:
        tables, key_loop, key_loop_end = "", f"for (long kb = 0; kb < {lk}L; kb += {bk}L) {{", "}"
        region = "{ const long ra = 0, rb = rows;"
        schedule = "static"
    # a row with every key masked (a left-padded query) or skipped outputs zeros, as ATen's kernel does
    inverse = "sm[i] > 0.0f ? 1.0f / sm[i] : 0.0f"
    # the last key of block kb row i sees: the sequence's end, and under the causal flag the diagonal
    last = "(kn - 1 < q0 + i - kb ? kn - 1 : q0 + i - kb)" if a["causal"] else "kn - 1"
    # the softmax runs in base 2: scores times scale * log2(e), the mask times log2(e)
    c = a["scale"] * math.log2(math.e)
    # a finite mask below -FLT_MAX / log2(e) (Hugging Face's float32 minimum) would overflow to -inf in
    # base 2: it saturates at -FLT_MAX instead, so a row masked that way everywhere still averages its
    # values as ATen's does; -inf stays -inf (a row masked so everywhere outputs zeros)
    mask_add = (
        f"if (jj < kn) {{ "
        f"const vf mv = jj + {vl}L <= kn ? vload(mrow + kb + jj) : vloadn(mrow + kb + jj, (int)(kn - jj)); "
        f"const vf m2 = vmul(mv, vset1({math.log2(math.e)!r}f)); "
        f"s = vadd(s, vselect(vgt(mv, vset1(-INFINITY)), vmax(m2, vset1({-FLT_MAX!r}f)), m2)); }}"
        if mask is not None
        else ""
    )
    # without a mask and with a positive scale, the max of the raw scores
    # gives the max of the scaled ones: the first pass only reads, and the
    # exponent takes the scale in an FMA
    if mask is None and a["scale"] > 0:
        score, store_score, block_max = "vload(srow + jj)", "", f"vreduce_max(vmaxv) * {c!r}f"
        exponent = "vfma(vload(srow + jj), vc, vm)"
    else:
        score, store_score = f"vmul(vload(srow + jj), vset1({c!r}f))", "vstore(srow + jj, s);"
        block_max = "vreduce_max(vmaxv)"
        exponent = "vadd(vload(srow + jj), vm)"
    return f"""
{tables}{kernels}

static void {name}_gemm(long rows, long K, const float* FC_RESTRICT a, long lda, const float* FC_RESTRICT bp,
                        float* FC_RESTRICT tile) {{
  switch (rows) {{
{dispatch}
      default: break;
  }}
}}

{SIGNATURE.format(name=name)} {{
  const float* FC_RESTRICT qp = (const float*)args[{a["q"]}];
  const float* FC_RESTRICT kp = (const float*)args[{a["k"]}];
  const float* FC_RESTRICT vp = (const float*)args[{a["v"]}];
  float* FC_RESTRICT out = (float*)args[{out_i}];
  char* ws = (char*)args[{out_i + 1}];
  const long tasks = {b * h * qblocks}L;
  #pragma omp parallel num_threads(nthreads) if (tasks > 1)
  {{
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* FC_RESTRICT kt = {thread_scratch("tid", per_thread)};
    float* FC_RESTRICT vpk = kt + {d * bk}L;          /* [panel][BK][NR] */
    float* FC_RESTRICT sc = vpk + {panels * bk * nr}L;  /* scores, then probabilities: [QB][BK] */
    float* FC_RESTRICT acc = sc + {qb * bk}L;         /* output rows: [QB][DPAD] */
    float* FC_RESTRICT mx = acc + {qb * dpad}L;       /* running max per row */
    float* FC_RESTRICT sm = mx + {qb}L;               /* running sum per row */
    float tile[{mr * nr}] __attribute__((aligned(64)));
    #pragma omp for schedule({schedule})
    for (long task = 0; task < tasks; ++task) {{
      const long bi = task / {h * qblocks}L, hi = (task / {qblocks}L) % {h}L, q0 = (task % {qblocks}L) * {qb}L;
      const long rows = {lq}L - q0 < {qb}L ? {lq}L - q0 : {qb}L;
      const float* FC_RESTRICT qh = qp + bi * {qs[0]}L + hi * {qs[1]}L + q0 * {qs[2]}L;
      const float* FC_RESTRICT kh = kp + bi * {ks[0]}L + {kv_head} * {ks[1]}L;
      const float* FC_RESTRICT vh = vp + bi * {vs[0]}L + {kv_head} * {vs[1]}L;
      memset(acc, 0, sizeof(float) * {qb * dpad});
      for (long i = 0; i < {qb}L; ++i) {{ mx[i] = -INFINITY; sm[i] = 0.0f; }}
      {key_loop}
        {causal_skip}
        const long kn = {lk}L - kb < {bk}L ? {lk}L - kb : {bk}L;
        if (kn < {bk}L) {{  /* a short last block: the missing keys and values are zeros */
          memset(kt, 0, sizeof(float) * {d * bk});
          memset(vpk, 0, sizeof(float) * {panels * bk * nr});
        }}
        for (long j = 0; j < kn; ++j) {{  /* keys transposed, NR at a time: [BK / NR][D][NR] */
          const float* FC_RESTRICT krow = kh + (kb + j) * {ks[2]}L;
          float* FC_RESTRICT kcol = kt + (j / {nr}L) * {d * nr}L + j % {nr}L;
          for (long dd = 0; dd < {d}L; ++dd) kcol[dd * {nr}L] = krow[dd];
        }}
        for (long j = 0; j < kn; ++j) {{  /* values in NR-wide panels: [panel][BK][NR] */
          const float* FC_RESTRICT vrow = vh + (kb + j) * {vs[2]}L;
          for (long p = 0; p < {panels}L; ++p) {{
            const long w = {d}L - p * {nr}L < {nr}L ? {d}L - p * {nr}L : {nr}L;
            memcpy(vpk + (p * {bk}L + j) * {nr}L, vrow + p * {nr}L, sizeof(float) * w);
            if (w < {nr}L) memset(vpk + (p * {bk}L + j) * {nr}L + w, 0, sizeof(float) * ({nr}L - w));
          }}
        }}
        {region}
        for (long r0 = ra; r0 < rb; r0 += {mr}L) {{  /* S = Q K^T, a row tile and NR keys at a time */
          const long r = rb - r0 < {mr}L ? rb - r0 : {mr}L;
{_score_tiles(name, d, qs[2], nr, bk)}
        }}
        for (long i = ra; i < rb; ++i) {{  /* online softmax of row i over this key block */
          float* FC_RESTRICT srow = sc + i * {bk}L;
          {mask_row}
          /* scale, mask; keys past `last` (the sequence's end, the causal diagonal) are -inf */
          const long last = {last};
          vf vmaxv = vset1(-INFINITY);
          for (long jj = 0; jj < {bk}L; jj += {vl}L) {{
            vf s = {score};
            {mask_add}
            if (jj + {vl - 1}L > last) {{  /* a boundary vector: lane by lane */
              float lanes[{vl}];
              vstore(lanes, s);
              for (long l = 0; l < {vl}L; ++l) if (jj + l > last) lanes[l] = -INFINITY;
              s = vload(lanes);
              vstore(srow + jj, s);
            }}
            {store_score}
            vmaxv = vmax(vmaxv, s);
          }}
          const float bmax = {block_max};
          const float mnew = mx[i] > bmax ? mx[i] : bmax;
          if (mnew == -INFINITY) {{ memset(srow, 0, sizeof(float) * {bk}); continue; }}  /* every key masked so far */
          const float alpha = ssoftmax_exp2(mx[i] - mnew);
          vf vsum = vzero();
          const vf vc = vset1({c!r}f), vm = vset1(-mnew);
          for (long jj = 0; jj < {bk}L; jj += {vl}) {{
            const vf e = vsoftmax_exp2({exponent});
            vstore(srow + jj, e);
            vsum = vadd(vsum, e);
          }}
          sm[i] = sm[i] * alpha + vreduce_add(vsum);
          mx[i] = mnew;
          if (alpha != 1.0f) {{
            const vf va = vset1(alpha);
            for (long dd = 0; dd < {dpad}L; dd += {vl}) vstore(acc + i * {dpad}L + dd, vmul(vload(acc + i * {dpad}L + dd), va));
          }}
        }}
        for (long r0 = ra; r0 < rb; r0 += {mr}L) {{  /* O += P V */
          const long r = rb - r0 < {mr}L ? rb - r0 : {mr}L;
          for (long p = 0; p < {panels}L; ++p) {{
            {name}_gemm(r, {bk}L, sc + r0 * {bk}L, {bk}L, vpk + p * {bk * nr}L, tile);
            for (long i = 0; i < r; ++i)
              for (long n = 0; n < {nr}L; n += {vl}) {{
                float* o = acc + (r0 + i) * {dpad}L + p * {nr}L + n;
                vstore(o, vadd(vload(o), vload(tile + i * {nr}L + n)));
              }}
          }}
        }}
        }}  /* rows */
      {key_loop_end}
      for (long i = 0; i < rows; ++i) {{
        const float inv = {inverse};
        float* FC_RESTRICT orow = out + bi * {os_[0]}L + hi * {os_[1]}L + (q0 + i) * {os_[2]}L;
        for (long dd = 0; dd < {d}L; ++dd) orow[dd * {os_[3]}L] = acc[i * {dpad}L + dd] * inv;
      }}
    }}
  }}
}}
"""
