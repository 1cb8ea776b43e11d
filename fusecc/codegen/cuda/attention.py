"""Scaled dot-product attention as one CUDA kernel (online softmax), from
the same `KernelSpec` as the C kernel - dense, causal, masked, or under a
sparsity plan.

A thread block is one (batch, head, block of BQ query rows), one thread per
query row: the row's query and output accumulator live in registers, its
running max and sum too. The block walks the keys in tiles of BK: every
thread loads its share of the tile's keys and values into shared memory,
then each thread scores its row against the tile, rescales its output by
the change of its running max once per tile and adds the tile's
probabilities times the values. Nothing of size Lq x Lk is stored.

Under a sparsity plan (``attrs["sparse"]``) BQ is the plan's block and the
block walks only the key blocks its (head, query block) keeps, from the
same CSR table as the C kernel (in constant memory); rows that keep no key
output zeros. Correctness first: no tensor cores, no warp-level splitting
of the rows yet.
"""

from __future__ import annotations

import math

from ...kernels.spec import KernelSpec
from ..c.attention import kv_head_index, sparse_tables
from .common import PRELUDE, CudaSource, parameters

BQ_DENSE = 64  # query rows per thread block without a plan
BK = 16  # keys per shared-memory tile: divides every plan block size


def _sparse_key_loop(name: str, sparse: dict, row_block: str, lk: int, step: int) -> str:
    """Loop header over the keys of the kept blocks of ``row_block``, ``step`` at a time (``kb``: the first key)."""
    blk = sparse["block"]
    return (
        f"const long row_block = {row_block};\n"
        f"  for (long t = {name}_off[row_block]; t < {name}_off[row_block + 1]; ++t)\n"
        f"  for (long kb = (long){name}_blk[t] * {blk}L; kb < ((long){name}_blk[t] + 1) * {blk}L "
        f"&& kb < {lk}L; kb += {step}L) {{"
    )


def render(spec: KernelSpec, name: str) -> CudaSource:
    a = spec.attrs
    b, h, lq, d = spec.space
    lk = a["lk"]
    if spec.outputs[0].dtype != "f32":
        raise NotImplementedError("CUDA attention kernels are float32")
    qs, ks, vs = a["q_strides"], a["k_strides"], a["v_strides"]
    kv_head = kv_head_index("hi", a)
    os_ = spec.outputs[0].strides or (h * lq * d, lq * d, d, 1)
    sparse = a.get("sparse")
    bq = sparse["block"] if sparse else BQ_DENSE
    qblocks = math.ceil(lq / bq)
    mask = a.get("mask")
    if mask is not None:
        ms = a["mask_strides"]
        mask_add = f"s += in{mask}[bi * {ms[0]}L + hi * {ms[1]}L + row * {ms[2]}L + key * {ms[3]}L];"
    else:
        mask_add = ""
    # ATen aligns the causal mask top-left: query row i sees keys j <= i, even when Lq != Lk
    causal_skip = f"if (kb > q0 + {bq - 1}L) break;" if a["causal"] else ""
    causal_cut = "if (key > row) s = -INFINITY;" if a["causal"] else ""
    if sparse:
        tables = sparse_tables(name, sparse, "__constant__")
        key_loop = _sparse_key_loop(name, sparse, f"hi * {qblocks}L + blockIdx.x", lk, BK)
    else:
        tables, key_loop = "", f"for (long kb = 0; kb < {lk}L; kb += {BK}L) {{"
    # a row with every key masked (a left-padded query) or skipped outputs zeros, as ATen's kernel does
    inverse = "l > 0.0f ? 1.0f / l : 0.0f"
    text = f"""{PRELUDE}
{tables}
extern "C" __global__ void __launch_bounds__({bq}) {name}({parameters(spec)}) {{
  __shared__ float kt[{BK * d}];
  __shared__ float vt[{BK * d}];
  const float* FC_RESTRICT qp = in{a["q"]};
  const float* FC_RESTRICT kp = in{a["k"]};
  const float* FC_RESTRICT vp = in{a["v"]};
  const long bi = blockIdx.z, hi = blockIdx.y, q0 = (long)blockIdx.x * {bq}L;
  const long row = q0 + threadIdx.x;
  const bool live = row < {lq}L;
  float qr[{d}], o[{d}], sc[{BK}];
  for (int dd = 0; dd < {d}; ++dd) {{
    qr[dd] = live ? qp[bi * {qs[0]}L + hi * {qs[1]}L + row * {qs[2]}L + dd * {qs[3]}L] : 0.0f;
    o[dd] = 0.0f;
  }}
  float m = -INFINITY, l = 0.0f;
  {key_loop}
    {causal_skip}
    for (long idx = threadIdx.x; idx < {BK * d}L; idx += {bq}L) {{  /* the tile's keys and values */
      const long j = idx / {d}L, dd = idx % {d}L, key = kb + j;
      kt[idx] = key < {lk}L ? kp[bi * {ks[0]}L + {kv_head} * {ks[1]}L + key * {ks[2]}L + dd * {ks[3]}L] : 0.0f;
      vt[idx] = key < {lk}L ? vp[bi * {vs[0]}L + {kv_head} * {vs[1]}L + key * {vs[2]}L + dd * {vs[3]}L] : 0.0f;
    }}
    __syncthreads();
    if (live) {{
      float bmax = -INFINITY;
      for (int j = 0; j < {BK}; ++j) {{
        const long key = kb + j;
        float s = -INFINITY;
        if (key < {lk}L) {{
          s = 0.0f;
          for (int dd = 0; dd < {d}; ++dd) s += qr[dd] * kt[j * {d} + dd];
          s *= {a["scale"]!r}f;
          {mask_add}
          {causal_cut}
        }}
        sc[j] = s;
        bmax = fc_maxf(bmax, s);
      }}
      const float mnew = fc_maxf(m, bmax);
      if (mnew != -INFINITY) {{  /* else every key so far is masked: nothing to add */
        const float corr = expf(m - mnew);
        l *= corr;
        for (int dd = 0; dd < {d}; ++dd) o[dd] *= corr;
        for (int j = 0; j < {BK}; ++j) {{
          const float p = expf(sc[j] - mnew);
          l += p;
          for (int dd = 0; dd < {d}; ++dd) o[dd] += p * vt[j * {d} + dd];
        }}
        m = mnew;
      }}
    }}
    __syncthreads();
  }}
  if (live) {{
    const float inv = {inverse};
    for (int dd = 0; dd < {d}; ++dd) out0[bi * {os_[0]}L + hi * {os_[1]}L + row * {os_[2]}L + dd * {os_[3]}L] = o[dd] * inv;
  }}
}}
"""
    return CudaSource(name, text, (qblocks, h, b), (bq, 1, 1), {"bq": bq, "bk": BK})
