"""GEMM kernels: C[b, M, N] = epilogue(A[b, M, K] @ B[b, K, N]).

B is laid out in panels of NR = nv * VL columns ([N/NR][K][NR], zero
padded): constant B (frozen weights) is packed once at compile time by
`prepare`, a runtime B is packed per call into the workspace. Each tile of
MR rows x NR columns accumulates the whole K in vector registers (MR*nv
accumulators; A broadcast, B loaded), then the tile goes through the fused
epilogue and is stored - bias, activations, residual adds never make a
trip through memory of their own. Tiles are split across threads over
(batch, block of panels, row tile): the panels of a block fit in L2 and
each row tile of A is used for all of them before the next.

The same tile generator serves convolution (`conv.py`), where the
broadcast operand is the packed weight and the loaded one an im2col panel.
"""

from __future__ import annotations

import math

import torch

from ...kernels.expr import Load
from ...kernels.spec import KernelSpec
from .common import SIGNATURE, declarations, sstore, vload, vstore
from .dialects import Dialect
from .expr import ExprEmitter


def tunables(spec: KernelSpec, dialect: Dialect) -> dict[str, tuple]:
    regs = dialect.vector_registers
    pairs = [(mr, nv) for mr in (1, 2, 4, 6, 8, 12, 14) for nv in (1, 2, 3, 4) if mr * nv + nv + 1 <= regs]
    # panel_block 0: sized to L2 (see render)
    return {"tile": tuple(pairs), "kc": (64, 128, 256, 384, 512, 1 << 30), "panel_block": (0, 1, 2, 4, 8)}


def default_params(spec: KernelSpec, dialect: Dialect) -> dict:
    _, m, n = spec.space
    vl = dialect.vl
    mr, nv = {"avx512": (6, 4), "avx2": (6, 2), "neon": (6, 4), "scalar": (4, 4)}[dialect.name]
    if m <= 16 and dialect.name != "scalar":
        # skinny M (decode, small batch): one row tile covering all of M, as
        # wide as the registers allow - a 6-row tile would run 8 rows as 6 + 2
        regs = dialect.vector_registers
        skinny_mr = m if m * 2 + 3 <= regs else math.ceil(m / 2)
        skinny_nv = max(v for v in range(1, 5) if skinny_mr * v + v + 1 <= regs)
        if skinny_nv >= 2:
            mr, nv = skinny_mr, skinny_nv
    nv = max(1, min(nv, math.ceil(n / vl)))  # do not pad a narrow N up to a wide panel
    mr = max(1, min(mr, m))
    # K in equal blocks of at most 512 (the A rows of a block stay in L1);
    # fewer blocks means fewer spills of the tile (512^3: kc 256 -> 244,
    # 512 -> 271 GFLOP/s), equal ones no short tail (K 768: 384 + 384)
    k = spec.attrs["K"]
    kc = math.ceil(k / math.ceil(k / 512))
    return {"tile": (mr, nv), "kc": kc, "vl": vl}


def _panel(params: dict, vl: int) -> tuple[int, int, int]:
    mr, nv = params["tile"]
    return mr, nv, nv * vl


PANEL_BLOCK_BYTES = 512 * 1024  # B panels sharing one pass over A (half of a 1 MB L2)
PREFETCH_K = 16  # rows of the B panel to prefetch ahead (64-byte lines)
STREAM_OPERANDS = True  # convolutions prefetch the operand block they read next (microkernel's stream)
# what a streaming micro-kernel (and the functions that pass them on) take and pass
STREAM_PARAMS, STREAM_ARGS = ", const float* FC_RESTRICT pf, long pf_rate", ", pf, pf_rate"
# vector math whose constants, hoisted by the compiler, would take the
# accumulators' registers: such epilogues stay in the buffered path
HEAVY_MATH = ("vexp(", "verf(", "vgelu", "vsigmoid(", "vsilu(", "vtanh(", "vsin(", "vcos(", "vlog(", "vpow(")
FINISH_IN_REGISTERS = True  # layer GEMMs run light epilogues on the accumulators (`finishes_in_registers`)
# what a finishing micro-kernel (the epilogue on its registers) takes besides the tile
FINISH_PARAMS = ", void* const* args, float* FC_RESTRICT dst, long ldd, long m0, long pix0, long co0, long co_base"


A_IN_L3_BYTES = 16 * 1024 * 1024  # half of a 32 MB L3


def _panel_block(panels: int, panel_bytes: int, row_tasks: int, a_bytes: int) -> int:
    """Panels that share one pass over a row tile of A: as many as fit in
    half of L2. When one panel alone outgrows that (long K) and A does not
    stay in L3 either, four: A would otherwise stream from memory once per
    panel, and its row tile (MR x K) is what a block reuses from L2
    (4096^3: 1 panel 412, 4-8 panels 436 GFLOP/s, MLAS 428; where A fits
    in L3 - 512x1024x4096, 128x768x3072 - one panel per block stays
    faster: 4 gave 0.96-0.98x MLAS). Then halved while that leaves the
    threads unevenly loaded (256^3: 43 tasks on 2 threads -> 86; 1.00x
    MLAS instead of 0.97x) or fewer than 16 tasks."""
    long_k = panel_bytes > PANEL_BLOCK_BYTES and a_bytes > A_IN_L3_BYTES
    pb = 4 if long_k else PANEL_BLOCK_BYTES // panel_bytes
    pb = max(1, min(panels, pb))
    threads = max(1, torch.get_num_threads())

    def tasks(p: int) -> int:
        return math.ceil(panels / p) * row_tasks

    def imbalance(p: int) -> float:
        return math.ceil(tasks(p) / threads) * threads / tasks(p) - 1

    while pb > 1 and (tasks(pb) < 16 or (imbalance(pb) > 0.02 and imbalance(pb // 2) < imbalance(pb))):
        pb //= 2
    return pb


def microkernel(
    fn: str,
    mr: int,
    nv: int,
    vl: int,
    a_row: str,
    a_k: str,
    kc: int = 256,
    a_dtype: str = "f32",
    inline: bool = True,
    accumulate: bool = False,
    stream: bool = False,
    half_last: bool = False,
    finish: tuple[str, list[str]] | None = None,
) -> str:
    """``static inline void fn(long K, const float* a, long lda, const float* bp, float* tile)``:
    tile[MR x NR] = sum_k a[i*a_row + k*a_k] * bp[k*NR + l] (a broadcast, bp loaded);
    ``a_row``/``a_k`` are C expressions and may use ``lda``. K is walked in
    blocks of ``kc`` so the A rows of a block stay in L1; the accumulators
    live in registers within a block and in ``tile`` between blocks.
    ``inline=False`` keeps it a function of its own: inlined next to a heavy
    epilogue (GELU's erf), the epilogue's hoisted constants take the
    accumulators' registers and the K loop spills (ConvNeXt block: 1.8 ->
    1.3 ms). ``accumulate`` adds to what ``tile`` holds (a convolution
    summing its taps, one call per tap) instead of starting from zero.
    ``stream`` adds the arguments ``const float* pf, long pf_rate``: the k
    loop also prefetches the lines of ``pf`` into L2 at ``pf_rate`` lines
    per step (16.16 fixed point, `fc_stream_rate`): the weights the caller
    reads next, streamed from memory while these are computed.
    ``half_last`` computes the last vector of each row in half vectors
    (AVX-512's ``vhf``; see `half_last_vector`): the upper half of its tile
    vector is stored as zeros.
    ``finish`` = (declarations, epilogue lines) runs the epilogue on the
    accumulators instead of storing them: the tile never goes through
    memory. The function then also takes `FINISH_PARAMS`, and the epilogue
    sees ``row`` (m0 + i), ``pix`` (pix0 + row), ``co`` (co0 + the vector's
    offset) and ``acc``; K must be one block (K <= kc)."""
    if finish is not None and (half_last or accumulate):
        raise ValueError("a finishing microkernel computes whole vectors from zero")
    nr = nv * vl
    first = "vload(tile + {o})" if accumulate else "k0 ? vload(tile + {o}) : vzero()"
    first_half = "vhload(tile + {o})" if accumulate else "k0 ? vhload(tile + {o}) : vhzero()"

    def half(j: int) -> bool:
        return half_last and j == nv - 1

    def init(i: int, j: int) -> str:
        o = i * nr + j * vl
        return f"vhf c{i}_{j} = {first_half.format(o=o)};" if half(j) else f"vf c{i}_{j} = {first.format(o=o)};"
    a_type = "uint16_t" if a_dtype == "bf16" else "float"
    linkage = "static inline" if inline else "static __attribute__((noinline))"
    stream_arg = STREAM_PARAMS if stream else ""
    finish_arg = FINISH_PARAMS if finish is not None else ""
    lines = [
        f"{linkage} void {fn}(long K, const {a_type}* FC_RESTRICT a, long lda, const float* FC_RESTRICT bp, "
        f"float* FC_RESTRICT tile{finish_arg}{stream_arg}) {{",
        "  (void)lda;" + (" (void)tile;" if finish is not None else ""),
        f"  for (long k0 = 0; k0 < K; k0 += {kc}) {{",
        f"  const long k1 = k0 + {kc} < K ? k0 + {kc} : K;",
    ]
    for i in range(mr):
        lines.append("  " + " ".join(init(i, j) for j in range(nv)))
    lines.append("  for (long k = k0; k < k1; ++k) {")
    # B streams from L2 (a K x NR panel outgrows L1); the hardware prefetcher
    # alone leaves 5-10% on long-K shapes (128x768x3072: 250 -> 276 GFLOP/s)
    lines.append(
        "    " + " ".join(f"__builtin_prefetch(bp + (k + {PREFETCH_K}) * {nr} + {c});" for c in range(0, nr, 16))
    )
    if stream:
        lines.append("    __builtin_prefetch(pf + ((k * pf_rate) >> 16) * 16, 0, 2);")
    lines.append(
        "    "
        + " ".join(
            f"const {'vhf' if half(j) else 'vf'} b{j} = {'vhload' if half(j) else 'vload'}(bp + k * {nr} + {j * vl});"
            for j in range(nv)
        )
    )
    for i in range(mr):
        fmas = " ".join(f"c{i}_{j} = {'vhfma' if half(j) else 'vfma'}(a{i}, b{j}, c{i}_{j});" for j in range(nv))
        elem = f"a[{i} * ({a_row}) + k * ({a_k})]"
        if a_dtype == "bf16":
            elem = f"fc_bf16_to_f32({elem})"
        lines.append(f"    {{ const vf a{i} = vset1({elem}); {fmas} }}")
    lines.append("  }")
    if finish is not None:
        declarations_code, full = finish
        lines.append(declarations_code)
        pixel = lambda i: f"const long row = m0 + {i}L, pix = pix0 + row; (void)pix;"  # noqa: E731
        lines.extend(epilogue_on_registers(mr, nv, vl, full, pixel, "  "))
    else:
        for i in range(mr):
            stored = (f"vhwiden(c{i}_{j})" if half(j) else f"c{i}_{j}" for j in range(nv))
            lines.append("  " + " ".join(f"vstore(tile + {i * nr + j * vl}, {c});" for j, c in enumerate(stored)))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines)


def epilogue_on_registers(rows: int, nv: int, vl: int, full: list[str], pixel, indent: str) -> list[str]:
    """The whole-vector epilogue ``full`` run on each accumulator ``c{i}_{j}``
    of a microkernel's tile: ``pixel(i)`` declares row i's position (``pix``
    at least), ``co`` is ``co0`` plus the vector's offset."""
    out = []
    for i in range(rows):
        for j in range(nv):
            out.append(f"{indent}{{ {pixel(i)} const long co = co0 + {j * vl}L; const vf acc = c{i}_{j};")
            out.extend(f"{indent}  {x}" for x in full)
            out.append(f"{indent}}}")
    return out


def light_epilogue(lines: list[str]) -> bool:
    return not any(f in line for line in lines for f in HEAVY_MATH)


def finishes_in_registers(full: list[str], k: int, kc: int) -> bool:
    """Whether a GEMM's microkernel runs the epilogue ``full`` on its
    accumulators (`microkernel`'s finish) for panels of whole vectors: K in
    one block and no vector math. The small-K expands of MobileNetV2's
    early blocks spent a quarter of their time storing the tile and reading
    it back (block 1: 329 -> 300 us in the model)."""
    return FINISH_IN_REGISTERS and k <= kc and light_epilogue(full)


def half_last_vector(channels: int, nv: int, vl: int) -> bool:
    """Whether a GEMM of ``channels`` output channels in one panel of ``nv``
    vectors can compute its last vector in half vectors: 8 channels or fewer
    in it, on AVX-512 (the one dialect of 16-float vectors, and the one with
    a half vector). A core that splits a 512-bit FMA in two (Zen 4) then
    spends half the FMA time on it, and one that does not (Zen 5) the same
    as the masked full vector: 24 channels cost 1.5 vectors, not 2."""
    return vl == 16 and (nv - 1) * vl < channels <= (nv - 1) * vl + vl // 2


def pack_panels(matrix: torch.Tensor, nr: int) -> torch.Tensor:
    """[K, N] -> [ceil(N/NR), K, NR], zero padded: the loaded operand's layout."""
    k, n = matrix.shape
    n_pad = math.ceil(n / nr) * nr
    padded = torch.zeros(k, n_pad, dtype=torch.float32)
    padded[:, :n] = matrix.float()
    return padded.view(k, n_pad // nr, nr).permute(1, 0, 2).contiguous()


def prepare(spec: KernelSpec, params: dict, constants: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = dict(constants)
    b = spec.attrs["b"]
    if b in constants:
        _, _, nr = _panel(params, _vl_of(params))
        value = constants[b]
        out[b] = pack_panels(value.reshape(value.shape[-2], value.shape[-1]), nr)
    return out


def _vl_of(params: dict) -> int:
    return params["vl"]


def workspace_bytes(spec: KernelSpec, params: dict, nthreads: int) -> int:
    b = spec.attrs["b"]
    if spec.operands[b].constant:
        return 0
    batch, _, n = spec.space
    _, _, nr = _panel(params, params["vl"])
    return 4 * batch * math.ceil(n / nr) * nr * spec.attrs["K"] + 64


def tile_columns(
    nr: int, vl: int, col: str, col0: str, limit: int, full: list[str], part: list[str], indent: str
) -> str:
    """C loop over the vectors of one accumulator-tile row (``tile + i * NR``):
    ``col`` = ``col0`` + offset; the epilogue ``full`` runs on whole vectors,
    ``part`` (with ``rem`` lanes) on the one that crosses ``limit``."""
    inner = indent + "    "
    return f"""{indent}for (long c = 0; c < {nr}; c += {vl}) {{
{indent}  const long {col} = {col0} + c;
{indent}  const vf acc = vload(tile + i * {nr} + c);
{indent}  if ({col} + {vl} <= {limit}L) {{
{chr(10).join(inner + x for x in full)}
{indent}  }} else if ({col} < {limit}L) {{
{inner}const int rem = (int)({limit}L - {col});
{chr(10).join(inner + x for x in part)}
{indent}  }}
{indent}}}"""


def epilogue_stores(
    spec: KernelSpec, point: list[str], col: str, valid: str | None, out_offset, ahead: int = 0
) -> list[str]:
    """Vector epilogue at one (.., row, col) point: the value of every output
    from the accumulator ``acc``; loads use the access strides over the space;
    ``valid`` (lanes) makes loads and stores partial. ``ahead`` > 0: each
    load that moves with the first point index (a residual) also prefetches
    its line ``ahead`` steps of that index on."""
    prefetches: list[str] = []

    def load(node: Load) -> str:
        acc = spec.accesses[node.access]
        dtype = spec.operands[node.operand].dtype
        off = " + ".join(f"{p} * {s}L" for p, s in zip(point, acc.strides[:-1]) if s) or "0"
        ptr = f"in{node.operand} + {off} + ({col}) * {acc.strides[-1]}L"
        if ahead and acc.strides[0] and dtype == "f32":
            prefetches.append(f"__builtin_prefetch({ptr} + {ahead * acc.strides[0]}L, 0, 2);")
        return vload(dtype, ptr, acc.strides[-1], valid if acc.strides[-1] != 0 else None)

    em = ExprEmitter(True, load, acc=lambda: "acc", prefix="e")
    lines = []
    for j, o in enumerate(spec.outputs):
        value = em.emit(o.expr)
        lines.extend(em.lines)
        em.lines = []
        lines.append(out_offset(j, o, value, valid))
    return prefetches + lines


def render(spec: KernelSpec, name: str, vl: int, params: dict) -> str:
    batch, m, n = spec.space
    k = spec.attrs["K"]
    mr, nv, nr = _panel(params, vl)
    a_i, b_i = spec.attrs["a"], spec.attrs["b"]
    sab, sam, sak = spec.attrs["a_strides"]
    sbb, sbk, sbn = spec.attrs["b_strides"]
    a_dtype, b_dtype = spec.operands[a_i].dtype, spec.operands[b_i].dtype
    a_type = "uint16_t" if a_dtype == "bf16" else "float"
    panels = math.ceil(n / nr)
    mtiles = math.ceil(m / mr)
    b_const = spec.operands[b_i].constant

    kc = params.get("kc", 256)
    half = half_last_vector(n, nv, vl)
    kernels = [
        microkernel(f"{name}_ukr{r}", r, nv, vl, f"{sam}L", f"{sak}L", kc, a_dtype, half_last=half)
        for r in range(1, mr + 1)
    ]

    def store(j: int, o, value: str, valid: str | None) -> str:
        if o.col_range is None:
            sb, sm, sn = o.space_strides or (m * n, n, 1)
            if sn != 1:
                raise NotImplementedError(f"gemm output {o.name} is not contiguous along N")
            ptr = f"out{j} + bi * {sb}L + mm * {sm}L + nn"
            return vstore(o.dtype, ptr, value, valid)
        lo, hi = o.col_range
        w = hi - lo
        ptr = f"out{j} + bi * {m * w}L + mm * {w}L + (nn - {lo}L)"
        return (
            f"if (nn >= {lo}L && nn + {vl} <= {hi}L) {{ {vstore(o.dtype, ptr, value, valid)} }} "
            f"else {{ float lanes[{vl}]; vstore(lanes, {value}); "
            f"for (int l = 0; l < {valid or vl}; ++l) if (nn + l >= {lo}L && nn + l < {hi}L) "
            f"{{ {sstore(o.dtype, f'out{j} + bi * {m * w}L + mm * {w}L + nn + l - {lo}L', 'lanes[l]')} }} }}"
        )

    full = epilogue_stores(spec, ["bi", "mm"], "nn", None, store)
    part = epilogue_stores(spec, ["bi", "mm"], "nn", "rem", store)
    tile_fn = f"""
static void {name}_tile(void* const* args, const {a_type}* FC_RESTRICT a, const float* FC_RESTRICT bp,
                        long bi, long m0, long rows, long n0) {{
{declarations(spec, in_entry=False)}
  float tile[{mr * nr}] __attribute__((aligned(64)));
  switch (rows) {{
{chr(10).join(f"    case {r}: {name}_ukr{r}({k}L, a, {sam}L, bp, tile); break;" for r in range(1, mr + 1))}
    default: return;
  }}
  for (long i = 0; i < rows; ++i) {{
    const long mm = m0 + i;
{tile_columns(nr, vl, "nn", "n0", n, full, part, "    ")}
  }}
}}
"""
    b_type = "uint16_t" if b_dtype == "bf16" else "float"
    b_elem = "src[kk * {sbk}L + l * {sbn}L]".format(sbk=sbk, sbn=sbn)
    if b_dtype == "bf16":
        b_elem = f"fc_bf16_to_f32({b_elem})"
    if b_const:
        pack = ""
        bp_expr = f"in{b_i} + p * {k * nr}L"
    else:
        # pack the runtime B of every batch into [batch][panel][K][NR]
        pack = f"""
    #pragma omp for collapse(2) schedule(static)
    for (long bi = 0; bi < {batch}L; ++bi)
      for (long p = 0; p < {panels}L; ++p) {{
        float* FC_RESTRICT dst = bpack + (bi * {panels}L + p) * {k * nr}L;
        const {b_type}* src = in{b_i} + bi * {sbb}L + p * {nr}L * {sbn}L;
        const long cols = {n}L - p * {nr}L < {nr}L ? {n}L - p * {nr}L : {nr}L;
        for (long kk = 0; kk < {k}L; ++kk)
          for (long l = 0; l < {nr}L; ++l)
            dst[kk * {nr}L + l] = l < cols ? {b_elem} : 0.0f;
      }}
"""
        bp_expr = f"bpack + (bi * {panels}L + p) * {k * nr}L"
    # Panels in blocks that stay in L2 together: a row tile of A (in L1) is
    # used for every panel of the block before moving on, so A is streamed
    # once per block rather than once per panel. The blocks split the panels
    # evenly (sizes differ by one at most): the threads' static shares are
    # runs of whole blocks, and a short last block left one thread with
    # most of the work (49x960x160: blocks of 51 and 9 panels, 0.66x MLAS).
    pb_size = params.get("panel_block") or _panel_block(panels, k * nr * 4, batch * mtiles, 4 * batch * m * k)
    pblocks = math.ceil(panels / pb_size)
    work = batch * panels * mtiles
    b_ptr_type = b_type if not b_const else "float"
    return f"""
{chr(10).join(kernels)}
{tile_fn}
{SIGNATURE.format(name=name)} {{
  const {a_type}* FC_RESTRICT a_base = (const {a_type}*)args[{a_i}];
  const {b_ptr_type}* FC_RESTRICT in{b_i} = (const {b_ptr_type}*)args[{b_i}];
  float* FC_RESTRICT bpack = (float*)args[{len(spec.operands) + len(spec.outputs)}];
  (void)bpack;
  #pragma omp parallel num_threads(nthreads) if ({work}L > 1)
  {{
{pack}
    #pragma omp for collapse(3) schedule(static)
    for (long bi = 0; bi < {batch}L; ++bi)
      for (long pb = 0; pb < {pblocks}L; ++pb)
        for (long t = 0; t < {mtiles}L; ++t) {{
          const long m0 = t * {mr}L;
          const long rows = {m}L - m0 < {mr}L ? {m}L - m0 : {mr}L;
          const long p_end = (pb + 1) * {panels}L / {pblocks}L;
          for (long p = pb * {panels}L / {pblocks}L; p < p_end; ++p)
            {name}_tile(args, a_base + bi * {sab}L + m0 * {sam}L, {bp_expr}, bi, m0, rows, p * {nr}L);
        }}
  }}
}}
"""
