"""The layer functions a block kernel is built from, each running one
layer of the block on a few pixel rows held in the kernel's buffers: a 1x1
layer as a GEMM over rows (or one thread's K share of it), a depthwise or
a dense kxk layer on one output row read from a ring of padded rows, a
row reduction (layer norm) in place. Epilogues are rendered by the same
code as a lone kernel's, the layer's operands named as in its own spec
(`bind`)."""

from __future__ import annotations

import dataclasses
import math

from ....kernels.spec import KernelSpec, conv_geometry
from ..common import depthwise_chains, depthwise_filter_row, depthwise_finish, sum_chains, vload, vstore
from ..gemm import epilogue_stores, finishes_in_registers, half_last_vector, microkernel, tile_columns
from ..reduction import row_program
from .common import gemm_dims, weight_key


MAX_KC = 512  # K block of a layer GEMM (its A rows stay in L1)


def bind(spec: KernelSpec, index: int) -> str:
    """Declarations naming layer ``index``'s operands as in its own spec."""
    layer = spec.attrs["layers"][index]
    mapping = spec.attrs["operand_maps"][index]
    return " ".join(
        f"const float* FC_RESTRICT in{k} = (const float*)args[{m}]; (void)in{k};"
        for k, m in enumerate(mapping)
        if m >= 0 and k != weight_key(layer)
    )


def _pixel_stride(layer: KernelSpec, access) -> int:
    """The stride of an epilogue operand over the flat (n, oh, ow) pixel index."""
    n, _, oh, ow = layer.space
    sn, _, sh, sw = access.strides
    step = sw if ow > 1 else sh if oh > 1 else sn
    if (oh > 1 and sh != step * ow) or (n > 1 and sn != step * oh * ow):
        raise NotImplementedError("an epilogue operand is not laid out pixel after pixel")
    return step


def _flat_strides(layer: KernelSpec, access) -> tuple[int, int]:
    """An epilogue access as (stride per pixel, stride per channel)."""
    if layer.kind == "gemm":  # space (1, pixels, channels)
        return access.strides[1], access.strides[2]
    return _pixel_stride(layer, access), access.strides[1]


def epilogue(layer: KernelSpec, valid: str | None) -> list[str]:
    """The layer's epilogue at (pix, co), stored to ``dst + row * ldd + co - co_base``."""
    flat = dataclasses.replace(
        layer,
        accesses=[dataclasses.replace(a, strides=_flat_strides(layer, a)) for a in layer.accesses],
    )

    def store(j: int, o, value: str, n: str | None) -> str:
        return vstore("f32", "dst + row * ldd + (co - co_base)", value, n)

    return epilogue_stores(flat, ["pix"], "co", valid, store)


def _a_strides(k_major: bool) -> tuple[str, str]:
    """(row stride, k stride) of A: rows of K values, or K rows of ``lda`` pixels (an im2col panel)."""
    return ("1", "lda") if k_major else ("lda", "1")


def _microkernels(
    name: str,
    layer: KernelSpec,
    tile: tuple[int, int],
    vl: int,
    k: int | None = None,
    accumulate: bool = False,
    k_major: bool = False,
) -> list[str]:
    k = k or gemm_dims(layer)[0]
    half = half_last_vector(gemm_dims(layer)[1], tile[1], vl)  # one panel whose last vector is half empty
    return [
        microkernel(
            f"{name}_u{r}", r, tile[1], vl, *_a_strides(k_major), min(k, MAX_KC), inline=False,
            accumulate=accumulate, half_last=half,
        )
        for r in range(1, tile[0] + 1)
    ]


def _dispatch(
    name: str, mr: int, k: str, bp: str, indent: str, variant: str = "u", extra: str = "tile", k_major: bool = False
) -> str:
    a = "a + m0" if k_major else "a + m0 * lda"
    cases = "\n".join(
        f"{indent}  case {r}: {name}_{variant}{r}({k}, {a}, lda, {bp}, {extra}); break;" for r in range(1, mr + 1)
    )
    return f"{indent}switch (r) {{\n{cases}\n{indent}  default: break;\n{indent}}}"


def gemm_rows(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int, k_major: bool = False) -> str:
    """``name(args, a, lda, rows, wp, dst, ldd, pix0, p0, p1, co_base)``: columns of panels
    [p0, p1) of dst[rows][..] = epilogue(a[rows][K] @ W), stored at column co - co_base.
    ``k_major``: A is K rows of ``lda`` pixels instead (a[k][rows], an im2col panel)."""
    layer = spec.attrs["layers"][index]
    mr, nv = tile
    (k, c), nr = gemm_dims(layer), nv * vl
    full, part = epilogue(layer, None), epilogue(layer, "rem")
    kernels = _microkernels(name, layer, tile, vl, k_major=k_major)
    finishing = ""
    if finishes_in_registers(full, k, MAX_KC):  # for panels of whole vectors
        declarations = "  " + bind(spec, index)
        kernels += [
            microkernel(
                f"{name}_f{r}", r, nv, vl, *_a_strides(k_major), MAX_KC, inline=False, finish=(declarations, full)
            )
            for r in range(1, mr + 1)
        ]
        finish_args = f"tile, args, dst, ldd, m0, pix0, p * {nr}L, co_base"
        finishing = f"""      if ((p + 1) * {nr}L <= {c}L) {{
{_dispatch(name, mr, f"{k}L", "bp", "        ", variant="f", extra=finish_args, k_major=k_major)}
        continue;
      }}
"""
    return (
        "\n".join(kernels)
        + f"""
static void {name}(void* const* args, const float* FC_RESTRICT a, long lda, long rows,
                   const float* FC_RESTRICT wp, float* FC_RESTRICT dst, long ldd, long pix0,
                   long p0, long p1, long co_base) {{
  {bind(spec, index)}
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = p0; p < p1; ++p) {{
    const float* FC_RESTRICT bp = wp + p * {k * nr}L;
    for (long m0 = 0; m0 < rows; m0 += {mr}L) {{
      const long r = rows - m0 < {mr}L ? rows - m0 : {mr}L;
{finishing}{_dispatch(name, mr, f"{k}L", "bp", "      ", k_major=k_major)}
      for (long i = 0; i < r; ++i) {{
        const long row = m0 + i, pix = pix0 + row;
{tile_columns(nr, vl, "co", f"p * {nr}L", c, full, part, "        ")}
      }}
    }}
  }}
}}
"""
    )


def gemm_partial_sums(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int) -> str:
    """``name(a, lda, rows, wp, k0, klen, dst)``: dst[rows][C] = a[rows][klen] @ W[k0 : k0 + klen]
    with no epilogue - one thread's share of a K split (the channel-split project)."""
    layer = spec.attrs["layers"][index]
    mr, nv = tile
    (k, c), nr = gemm_dims(layer), nv * vl
    return (
        "\n".join(_microkernels(name, layer, tile, vl))
        + f"""
static void {name}(const float* FC_RESTRICT a, long lda, long rows, const float* FC_RESTRICT wp,
                   long k0, long klen, float* FC_RESTRICT dst) {{
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = 0; p < {math.ceil(c / nr)}L; ++p) {{
    const float* FC_RESTRICT bp = wp + p * {k * nr}L + k0 * {nr}L;
    for (long m0 = 0; m0 < rows; m0 += {mr}L) {{
      const long r = rows - m0 < {mr}L ? rows - m0 : {mr}L;
{_dispatch(name, mr, "klen", "bp", "      ")}
      for (long i = 0; i < r; ++i)
        for (long cc = 0; cc < {nr}L; cc += {vl}) {{
          const long co = p * {nr}L + cc;
          if (co + {vl} <= {c}L) vstore(dst + (m0 + i) * {c}L + co, vload(tile + i * {nr} + cc));
          else if (co < {c}L) vstoren(dst + (m0 + i) * {c}L + co, vload(tile + i * {nr} + cc), (int)({c}L - co));
        }}
    }}
  }}
}}
"""
    )


def depthwise_row(spec: KernelSpec, name: str, index: int, vl: int, pixels: int) -> str:
    """``name(args, rows_in, wts, dst, pix0, c0, c1, ld)``: channels [c0, c1) of one output
    row of the depthwise layer from ``kh`` padded input rows of ``ld`` floats per pixel
    (column 0 = image column -pad_left, channel 0 = c0), ``pixels`` output pixels side by
    side (`common.depthwise_filter_row`; 1: one at a time, an FMA chain per filter row)."""
    layer = spec.attrs["layers"][index]
    g = conv_geometry(layer)
    c, kh, kw, sw, ow = g["cout"], g["kh"], g["kw"], g["sw"], g["ow"]

    def input_at(ky: int, column: str) -> str:
        return f"rows_in[{ky}] + ({column}) * ld + (co - c0)"

    def one_at_a_time(valid: str | None, finish: list[str]) -> list[str]:
        chains = depthwise_chains(kh, kw)
        lines = [f"const vf w{t} = {vload('f32', f'wts + {t * c}L + co', 1, valid)};" for t in range(kh * kw)]
        lines.append(f"for (long ox = 0; ox < {ow}L; ++ox) {{")
        lines.extend(f"  vf acc{a} = vzero();" for a in range(chains))
        for ky in range(kh):
            for kx in range(kw):
                x = vload("f32", input_at(ky, f"ox * {sw}L + {kx * g['dw']}L"), 1, valid)
                lines.append(f"  acc{ky % chains} = vfma(w{ky * kw + kx}, {x}, acc{ky % chains});")
        lines.append(f"  const vf acc = {sum_chains(chains)};")
        lines.append("  const long row = ox, pix = pix0 + ox, ldd = ld, co_base = c0;")
        lines.extend("  " + x for x in finish)
        return lines + ["}"]

    def side_by_side(valid: str | None, finish: list[str], count: int) -> list[str]:
        lines = [f"vf acc{p} = vzero();" for p in range(count)]
        for ky in range(kh):
            lines.extend(
                depthwise_filter_row(
                    kw, sw, g["dw"], count,
                    lambda kx, ky=ky: f"wts + {(ky * kw + kx) * c}L + co",
                    lambda off, ky=ky: input_at(ky, f"ox * {sw}L + {off}L"),
                    valid,
                )  # fmt: skip
            )
        return lines + depthwise_finish(
            count, lambda p: f"const long row = ox + {p}L, pix = pix0 + ox + {p}L, ldd = ld, co_base = c0;", finish
        )

    def body(partial: bool) -> list[str]:
        valid = "rem" if partial else None
        finish = epilogue(layer, valid)
        if pixels == 1:
            return one_at_a_time(valid, finish)
        step = min(pixels, ow)
        lines = ["long ox = 0;", f"for (; ox + {step}L <= {ow}L; ox += {step}L) {{"]
        lines.extend("  " + x for x in side_by_side(valid, finish, step))
        lines.append("}")
        if ow % step:  # the columns left over, as one shorter step
            lines.extend(["{"] + ["  " + x for x in side_by_side(valid, finish, ow % step)] + ["}"])
        return lines

    return f"""
static void {name}(void* const* args, const float* const* rows_in, const float* FC_RESTRICT wts,
                   float* FC_RESTRICT dst, long pix0, long c0, long c1, long ld) {{
  {bind(spec, index)}
  for (long co = c0; co < c1; co += {vl}) {{
    if (co + {vl} <= c1) {{
{chr(10).join("      " + x for x in body(False))}
    }} else {{
      const int rem = (int)(c1 - co);
{chr(10).join("      " + x for x in body(True))}
    }}
  }}
}}
"""


def conv_row(spec: KernelSpec, name: str, index: int, tile: tuple[int, int], vl: int) -> str:
    """``name(args, rows_in, wts, dst, pix0, c0, c1, ld)`` for a dense kxk
    layer (a bottleneck's middle): one output row, all channels, as a GEMM
    per tap - the A operand is the padded ring row ``ky`` shifted by ``kx``
    pixels (rows ``sw * ld`` floats apart), accumulated in the register
    tile over the kh x kw taps; the epilogue as for any layer."""
    layer = spec.attrs["layers"][index]
    g = conv_geometry(layer)
    mr, nv = tile
    nr, cin, cout, ow = nv * vl, g["cin"], g["cout"], g["ow"]
    panels = math.ceil(cout / nr)
    full, part = epilogue(layer, None), epilogue(layer, "rem")
    cases = "\n".join(
        f"            case {r}: {name}_u{r}({cin}L, a, {g['sw']}L * ld, bp, tile); break;" for r in range(1, mr + 1)
    )
    return (
        "\n".join(_microkernels(name, layer, tile, vl, k=cin, accumulate=True))
        + f"""
static void {name}(void* const* args, const float* const* rows_in, const float* FC_RESTRICT wts,
                   float* FC_RESTRICT dst, long pix0, long c0, long c1, long ld) {{
  {bind(spec, index)}
  const long ldd = c1 - c0, co_base = c0;  /* output pixels are c1 - c0 floats apart */
  float tile[{mr * nr}] __attribute__((aligned(64)));
  for (long p = 0; p < {panels}L; ++p) {{
    for (long m0 = 0; m0 < {ow}L; m0 += {mr}L) {{
      const long r = {ow}L - m0 < {mr}L ? {ow}L - m0 : {mr}L;
      memset(tile, 0, sizeof tile);
      for (long ky = 0; ky < {g["kh"]}L; ++ky)
        for (long kx = 0; kx < {g["kw"]}L; ++kx) {{
          const float* a = rows_in[ky] + (m0 * {g["sw"]}L + kx) * ld;
          const float* bp = wts + ((ky * {g["kw"]}L + kx) * {panels}L + p) * {cin * nr}L;
          switch (r) {{
{cases}
            default: break;
          }}
        }}
      for (long i = 0; i < r; ++i) {{
        const long row = m0 + i, pix = pix0 + row;
{tile_columns(nr, vl, "co", f"p * {nr}L", cout, full, part, "        ")}
      }}
    }}
  }}
}}
"""
    )


def norm_rows(spec: KernelSpec, name: str, index: int, vl: int) -> str:
    """``name(args, buf, rows)``: layer ``index`` (a row reduction: the layer
    norm) on ``rows`` pixel rows of ``buf``, in place."""
    layer = spec.attrs["layers"][index]
    x = spec.attrs["operand_maps"][index].index(-1)
    body = "\n".join("    " + line for line in row_program(layer, vl))
    return f"""
static void {name}(void* const* args, float* buf, long rows) {{
  {bind(spec, index)}
  const float* in{x} = buf;  /* read, then overwritten: no restrict */
  float* out0 = buf;
  for (long r = 0; r < rows; ++r) {{
{body}
  }}
}}
"""
