"""Pieces every C kernel kind shares: the calling convention, operand
declarations and how a load or a store is spelled for a dtype."""

from __future__ import annotations

from ...kernels.spec import KernelSpec

# Every kernel: void NAME(void* const* args, int nthreads)
#   args[0 .. n_operands)                     operands (constants as prepared by the kernel kind)
#   args[n_operands .. n_operands+n_outputs)  outputs
#   args[n_operands+n_outputs]                workspace (may be NULL when the kernel needs none)
SIGNATURE = "void {name}(void* const* args, int nthreads)"


# A thread's share of the scratch buffer starts at the same place in every
# kernel: thread t at t x THREAD_STRIDE (or the kernel's own need, when
# larger). Kernels run one after another on the same buffer; when each sized
# its thread regions by its own need, thread 1's region moved from kernel to
# kernel onto lines thread 0 had just written, so thread 1 wrote into lines
# held by the other core (MobileNetV2's block 2 spent 52% more samples on
# thread 1 than on thread 0; the exported model ran 1.013x and 1.027x faster
# with stable regions for its blocks alone, paired, Zen 4).
THREAD_STRIDE = 1 << 20


def thread_stride(per_thread_bytes: int) -> int:
    return max(per_thread_bytes, THREAD_STRIDE)


def thread_scratch(t: str, per_thread_bytes: int, base: str = "ws") -> str:
    """C expression: the 64-byte aligned float region of thread ``t`` (a C
    expression) in the scratch at ``base``, for ``per_thread_bytes`` bytes
    (alignment slack included)."""
    return f"(float*)(((uintptr_t)({base} + (size_t)({t}) * {thread_stride(per_thread_bytes)}L) + 63) & ~(uintptr_t)63)"


def thread_workspace(nthreads: int, per_thread_bytes: int) -> int:
    """Scratch bytes for ``nthreads`` regions placed by `thread_scratch`."""
    return (nthreads - 1) * thread_stride(per_thread_bytes) + per_thread_bytes + 64 if nthreads > 0 else 0


def ctype(dtype: str) -> str:
    return {"f32": "float", "bf16": "uint16_t", "bool": "uint8_t"}[dtype]


_SUFFIX = {"f32": "", "bf16": "_bf16", "bool": "_u8"}


def declarations(spec: KernelSpec, indent: str = "  ", in_entry: bool = True) -> str:
    lines = []
    for i, o in enumerate(spec.operands):
        t = ctype(o.dtype)
        lines.append(f"const {t}* FC_RESTRICT in{i} = (const {t}*)args[{i}];")
    for j, o in enumerate(spec.outputs):
        t = ctype(o.dtype)
        lines.append(f"{t}* FC_RESTRICT out{j} = ({t}*)args[{len(spec.operands) + j}];")
    lines.append(f"char* FC_RESTRICT ws = (char*)args[{len(spec.operands) + len(spec.outputs)}];")
    lines.append("(void)ws; (void)nthreads;" if in_entry else "(void)ws;")
    return "\n".join(indent + line for line in lines)


def vload(dtype: str, ptr: str, stride: int, n: str | None = None) -> str:
    """Vector load of VL elements at ``ptr`` walking ``stride`` (0: broadcast)."""
    sfx = _SUFFIX[dtype]
    if stride == 0:
        return f"vset1({sload(dtype, ptr)})"
    if stride != 1:
        if n is not None:
            return f"vgathern{sfx}({ptr}, {stride}, {n})"
        return f"vgather{sfx}({ptr}, {stride})"
    if n is not None:
        return f"vloadn{sfx}({ptr}, {n})"
    return f"vload{sfx}({ptr})"


def sload(dtype: str, ptr: str) -> str:
    return {"bf16": f"fc_bf16_to_f32(*({ptr}))", "bool": f"(float)(*({ptr}))"}.get(dtype, f"(*({ptr}))")


def vstore(dtype: str, ptr: str, value: str, n: str | None = None) -> str:
    sfx = _SUFFIX[dtype]
    if n is not None:
        return f"vstoren{sfx}({ptr}, {value}, {n});"
    return f"vstore{sfx}({ptr}, {value});"


def sstore(dtype: str, ptr: str, value: str) -> str:
    if dtype == "bf16":
        return f"*({ptr}) = fc_f32_to_bf16({value});"
    if dtype == "bool":
        return f"*({ptr}) = ({value}) != 0.0f;"
    return f"*({ptr}) = {value};"


def unravel(index: str, dims: list[int], names: list[str]) -> list[str]:
    """C statements splitting a flat row-major index over ``dims``."""
    lines, stride = [], 1
    strides = []
    for d in reversed(dims):
        strides.append(stride)
        stride *= d
    strides.reverse()
    for name, d, s in zip(names, dims, strides):
        lines.append(f"const long {name} = ({index} / {s}L) % {d}L;")
    return lines


# A depthwise output vector sums kh * kw taps. In one FMA chain a 7x7
# filter is 49 dependent FMAs, and one pixel's chain is more than the
# out-of-order window holds, so the next pixel cannot overlap it: the
# kernel waits on FMA latency. Large filters get one chain per filter row.
def depthwise_chains(kh: int, kw: int) -> int:
    return kh if kh * kw > 9 else 1


def sum_chains(chains: int, name: str = "acc") -> str:
    """C: the sum of accumulators ``name0 .. name{chains-1}``, as a balanced tree."""
    terms = [f"{name}{i}" for i in range(chains)]
    while len(terms) > 1:
        terms = [f"vadd({a}, {b})" for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) - len(terms) % 2 :]
    return terms[0]


# One pixel at a time, a depthwise kernel loads a weight vector and an
# input vector per FMA (a 7x7 filter's 49 weight vectors do not stay in 16
# registers), so it is bound by loads, at half the FMA rate or less. Side
# by side, several output pixels share each weight vector of a filter row
# and each input vector their windows overlap on.
DEPTHWISE_PIXELS = (1, 2, 4, 7, 8)  # the tuner's choices


def depthwise_pixels(ow: int, kw: int, registers: int) -> int:
    """Output pixels per step along a row of ``ow``: one accumulator each
    beside the filter row's ``kw`` weight vectors and an input vector, at
    most 8 (enough independent FMA chains to cover the FMA latency); the
    fewest steps, then a row of whole steps (7 for 14 columns, not 8 + 6),
    then the most pixels."""
    most = max(1, min(8, registers - kw - 1, ow))
    return min(range(1, most + 1), key=lambda p: (-(-ow // p), ow % p != 0, -p))


def depthwise_filter_row(
    kw: int, sw: int, dw: int, pixels: int, weight, pixel, valid: str | None = None, inside=None
) -> list[str]:
    """C: one filter row's taps for ``pixels`` output pixels side by side,
    ``acc{p} += w[kx] * x[p * sw + kx * dw]``. The row's weight vectors are
    loaded once and each input vector once, then fed to every pixel whose
    window holds it. ``weight(kx)`` and ``pixel(offset)`` give the pointers
    (``offset`` in input columns from the first pixel's first tap),
    ``valid`` the lanes of a partial channel vector (None: whole vectors),
    and ``inside(offset)``, if given, the C condition under which that
    input column exists (zero where not)."""

    def load(ptr: str) -> str:
        return vload("f32", ptr, 1, valid)

    lines = [f"const vf w{kx} = {load(weight(kx))};" for kx in range(kw)]
    for offset in sorted({p * sw + kx * dw for p in range(pixels) for kx in range(kw)}):
        taps = [(p, divmod(offset - p * sw, dw)) for p in range(pixels) if offset >= p * sw]
        value = load(pixel(offset)) if inside is None else f"({inside(offset)}) ? {load(pixel(offset))} : vzero()"
        lines.append(f"{{ const vf xv = {value};")
        lines.extend(f"  acc{p} = vfma(w{kx}, xv, acc{p});" for p, (kx, r) in taps if r == 0 and kx < kw)
        lines.append("}")
    return ["{"] + ["  " + x for x in lines] + ["}"]


def depthwise_finish(pixels: int, declare, finish: list[str]) -> list[str]:
    """C: ``finish`` (an epilogue reading ``acc``) for each side-by-side pixel
    ``p``, with ``acc = acc{p}`` and ``declare(p)``'s index variables."""
    lines = []
    for p in range(pixels):
        lines.extend([f"{{ const vf acc = acc{p};", "  " + declare(p)] + ["  " + x for x in finish] + ["}"])
    return lines
