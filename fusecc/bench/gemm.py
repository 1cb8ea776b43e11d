"""GEMM benchmark: fusecc's generated fp32 GEMM against ONNX Runtime's MLAS
and PyTorch's MKL on square and transformer shapes (``fusecc bench --gemm``).

C[M, N] = A[M, K] @ W[K, N] with W a constant (a linear layer's weight):
MLAS gets it as an initializer (prepacked), fusecc freezes and packs it at
compile time, MKL sees a plain tensor. fusecc's kernel is called directly
(the generated function, not through torch.compile's dispatch) so the
comparison is kernel against kernel; ORT's session.run overhead (~5-10 us)
is part of its numbers, which only matters for the smallest shapes.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from ..runtime.kernel import kernel_nodes, kernel_of
from .harness import machine_info
from .timing import interleaved

SQUARE = [256, 512, 1024, 2048, 4096]
TRANSFORMER = [(1, 768, 768), (1, 4096, 4096), (8, 768, 3072), (128, 768, 768), (128, 3072, 768), (128, 768, 3072),
               (512, 768, 768), (512, 1024, 4096)]  # fmt: skip


def _fusecc_kernel(weight_t: torch.Tensor, m: int):
    """The generated kernel for x @ weight_t, callable directly."""
    import fusecc

    class MatMul(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(weight_t, requires_grad=False)

        def forward(self, x):
            return x @ self.w

    x = torch.randn(m, weight_t.shape[0])
    compiled = fusecc.compile_exported(
        torch.export.export(MatMul().eval(), (x,)),
        {"target": "c", "fallback": "error", "tune": "off", "profile": False},
    )
    kernels = [kernel_of(n) for n in kernel_nodes(compiled.gm)]
    (kernel,) = kernels
    w_arg = torch.empty(0)  # the constant argument is ignored: the kernel holds the packed weight
    return lambda a: kernel.run(a, w_arg), kernel.info["params"]


def _mlas(weight_t: torch.Tensor, m: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight_t.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])],
        "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight_t.numpy(), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"A": a.numpy()})[0]


def bench_shape(m: int, n: int, k: int, budget: float) -> dict:
    torch.manual_seed(0)
    w = torch.randn(k, n) / k**0.5
    a = torch.randn(m, k)
    fusecc_fn, params = _fusecc_kernel(w, m)
    mlas_fn = _mlas(w, m)
    ref = a @ w
    err = ((fusecc_fn(a) - ref).abs().max() / ref.abs().max()).item()
    stats = interleaved(
        {"fusecc": lambda: fusecc_fn(a), "mlas": lambda: mlas_fn(a), "mkl": lambda: torch.mm(a, w)}, budget_s=budget
    )
    flop = 2 * m * n * k
    return {
        "shape": [m, n, k],
        "params": params,
        "rel_error": err,
        **{f"{name}_gflops": flop / (s.median_ms * 1e-3) / 1e9 for name, s in stats.items()},
        **{f"{name}_ms": s.median_ms for name, s in stats.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fusecc bench --gemm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gemm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--shapes", nargs="+", help="MxNxK shapes (default: square 256-4096 and transformer shapes)")
    args = parser.parse_args(argv)
    shapes = (
        [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes]
        if args.shapes
        else [(s, s, s) for s in SQUARE] + TRANSFORMER
    )
    console = Console(width=160 if not Console().is_terminal else None)
    info = machine_info()
    console.print(f"machine: {info}")
    results = []
    table = Table(title="fp32 GEMM, GFLOP/s (median); ratio = fusecc / peer")
    for col in ("M x N x K", "fusecc", "MLAS (ORT)", "MKL (torch)", "vs MLAS", "vs MKL", "tile"):
        table.add_column(col, justify="right")
    for m, n, k in shapes:
        r = bench_shape(m, n, k, args.budget)
        results.append(r)
        f, ml, mk = r["fusecc_gflops"], r["mlas_gflops"], r["mkl_gflops"]
        table.add_row(f"{m}x{n}x{k}", f"{f:.0f}", f"{ml:.0f}", f"{mk:.0f}", f"{f / ml:.2f}x", f"{f / mk:.2f}x",
                      str(r["params"].get("tile")))  # fmt: skip
        console.print(
            f"  {m}x{n}x{k}: fusecc {f:.0f}, MLAS {ml:.0f}, MKL {mk:.0f} GFLOP/s (error {r['rel_error']:.1e})"
        )
    console.print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "results": results}, fh, indent=2)
    return 0
