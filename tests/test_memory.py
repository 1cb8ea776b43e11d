"""Static memory plan (kernel intermediates in one arena) and the
huge-page constant arena: lifetimes never overlap in memory, graph outputs
stay the caller's own, concurrent callers do not share intermediates, and
results match eager."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from conftest import assert_close
from fusecc.compiler import collect_reports
from fusecc.runtime import memory
from fusecc.runtime.kernel import BoundKernel, kernel_nodes, kernel_of
from fusecc.runtime.memory_plan import _Allocator, plan_memory


class ConvStack(nn.Module):
    """Residual conv stack: intermediates with overlapping lifetimes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.d = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.relu(self.b(y))
        w = torch.relu(self.c(z) + y)
        return self.d(w) + x


def _compiled(model, x):
    model.eval()
    torch._dynamo.reset()
    with collect_reports() as reports, torch.no_grad():
        compiled = torch.compile(model, backend="fusecc")
        compiled(x)
    return compiled, reports


def test_planned_intermediates_match_eager_and_outputs_stay_fresh():
    torch.manual_seed(0)
    model, x = ConvStack(), torch.randn(2, 8, 12, 12)
    compiled, reports = _compiled(model, x)
    decisions = [d.message for r in reports for d in r.decisions if d.pass_name == "memory_plan"]
    assert decisions and "kernel outputs in one" in decisions[0]
    with torch.no_grad():
        ref = model(x)
        first = compiled(x)
        kept = first.clone()
        second = compiled(x * 2)
    assert_close(first, ref, 1e-4)
    assert torch.equal(first, kept), "a second call overwrote the caller's first result"
    assert first.data_ptr() != second.data_ptr()


def test_concurrent_callers_do_not_share_intermediates():
    torch.manual_seed(0)
    model = ConvStack()
    inputs = [torch.randn(2, 8, 12, 12) for _ in range(4)]
    compiled, _ = _compiled(model, inputs[0])
    with torch.no_grad():
        refs = [model(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i):
        with torch.no_grad():
            for _ in range(5):
                results[i] = compiled(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(refs):
        assert_close(results[i], ref, 1e-4)


def test_live_tensors_never_share_memory():
    """On the lowered graph of a real block stack: any two planned tensors
    alive at the same time occupy disjoint byte ranges (each kernel its own
    graph call: no chains hiding the intermediates)."""
    from fusecc import compile_exported

    torch.manual_seed(0)
    model, x = ConvStack().eval(), torch.randn(1, 8, 10, 10)
    compiled = compile_exported(torch.export.export(model, (x,)), {"target": "c", "chain_kernels": False})
    gm = compiled.gm
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    views = {n: n.meta["memory_slot"] for n in nodes if "memory_slot" in n.meta}
    assert len(views) >= 3
    tensors = gm.memory_plan.tensors()
    spans = {}
    for n, slot in views.items():
        t = tensors[slot]
        spans[n] = (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
    for a in views:
        for b in views:
            if a is b:
                continue
            live_a = (index[a], max(index[u] for u in a.users))
            live_b = (index[b], max(index[u] for u in b.users))
            overlap_time = live_a[0] <= live_b[1] and live_b[0] <= live_a[1]
            overlap_mem = spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
            assert not (overlap_time and overlap_mem), f"{a.name} and {b.name} share memory while both alive"


def test_kernels_between_planned_tensors_build_their_pointers_once():
    """A kernel reading and writing only planned tensors is called with its
    runtime inputs alone (it holds its constants) through a pointer array
    built once per thread; rebinding its constants rebuilds the array."""
    from fusecc import compile_exported

    torch.manual_seed(0)
    model, x = ConvStack().eval(), torch.randn(1, 8, 10, 10)
    compiled = compile_exported(torch.export.export(model, (x,)), {"target": "c", "chain_kernels": False})
    gm = compiled.gm
    calls = kernel_nodes(gm)
    fixed = [n for n in calls if all(isinstance(a, torch.fx.Node) and "memory_slot" in a.meta for a in n.args)]
    assert fixed and "memory_slot" in fixed[0].meta  # b reads a's planned output into a planned slot
    assert not [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]
    with torch.no_grad():
        ref = model(x)
        for _ in range(3):
            assert_close(compiled(x), ref, 1e-4)
        kernel = fixed[0].target.kernel
        kernel.rebind_constants({id(t): torch.zeros_like(t) for t in kernel.constants()}, owner=None)
        zeroed = compiled(x)  # the layer now computes zeros: the output must change
    assert (zeroed - ref).abs().max() > 1e-2


def test_allocator_prefers_best_fit_then_the_most_recently_freed():
    alloc = _Allocator()
    a, _, c, _, e = (alloc.allocate(n) for n in (128, 64, 256, 64, 128))
    alloc.release(a, 128, when=1)
    alloc.release(c, 256, when=2)
    alloc.release(e, 128, when=3)  # e ends at the top: a new range grows from it
    assert alloc.allocate(128) == e  # exact fits a and e: e was freed last (still in cache)
    assert alloc.allocate(128) == a  # exact fit beats the larger c
    assert alloc.allocate(100) == c  # only c fits; the rest of c stays free
    assert alloc.allocate(156) == c + 100
    top = alloc.top
    assert alloc.allocate(64) == top and alloc.top == top + 64


def test_plan_skips_graph_outputs():
    from fusecc import compile_exported

    model, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8)
    compiled = compile_exported(torch.export.export(model, (x,)), {"target": "c"})
    assert plan_memory(compiled.gm) is None  # the only kernel output is the graph output


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_HUGEPAGE"), reason="no transparent huge pages here")
def test_constant_arena_holds_exact_copies():
    tensors = [torch.randn(300, 700), torch.randn(5), torch.randn(1000, 300)]
    arena = memory.arena_for(tensors)
    assert arena is not None
    copies = [arena.copy_in(t) for t in tensors]
    for t, c in zip(tensors, copies):
        assert torch.equal(t, c) and c.data_ptr() % memory.ALIGN == 0
    assert memory.arena_for([torch.randn(10)]) is None  # too small to matter


def _fake_kernels(edges: dict[str, tuple[str, ...]], outputs: tuple[str, ...]) -> dict:
    """A graph of fixed-kernel calls: name -> the names it reads ("x": the input)."""
    from torch.fx import Graph

    graph, nodes = Graph(), {}
    nodes["x"] = graph.placeholder("x")
    for name, reads in edges.items():

        def call(*args):
            return args

        call.fixed_state, call.__name__ = (lambda: None), name
        nodes[name] = graph.call_function(call, tuple(nodes[r] for r in reads))
    graph.output(tuple(nodes[o] for o in outputs))
    return nodes


def test_chains_hold_skips_inside_and_end_where_an_output_leaves():
    """A kernel may be read by any later kernel of its chain (a residual's
    skip), never from outside it: such a kernel ends its chain."""
    from fusecc.runtime.chain import _split

    def names(chains):
        return [[n.target.__name__ for n in c] for c in chains]

    nodes = _fake_kernels({"a": ("x",), "b": ("a",), "c": ("b", "a")}, ("c",))
    assert names(_split([nodes[k] for k in "abc"])) == [["a", "b", "c"]]
    # b is read by e (outside any chain holding c, which the output reads): cut
    nodes = _fake_kernels(
        {"a": ("x",), "b": ("a",), "c": ("b", "a"), "d": ("c",), "e": ("d", "b")}, ("e", "c")
    )
    assert names(_split([nodes[k] for k in "abcde"])) == [["a"], ["b"], ["c"], ["d", "e"]]


class SkipStack(nn.Module):
    """Planned kernels with a skip: p is read two kernels later."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 1)
        self.e = nn.Conv2d(16, 24, 1)
        self.f = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        p = torch.relu(self.b(torch.relu(self.a(x))))
        q = torch.relu(self.c(p))
        return self.f(torch.relu(self.e(q + p)))


def _skip_stack_programs():
    """SkipStack's input, eager output, chained and unchained programs, and
    the compile reports."""
    from fusecc import compile_exported

    torch.manual_seed(0)
    model, x = SkipStack().eval(), torch.randn(1, 8, 10, 10)
    with torch.no_grad(), collect_reports() as reports:
        chained = compile_exported(torch.export.export(model, (x,)), {"target": "c"})
        unchained = compile_exported(torch.export.export(model, (x,)), {"target": "c", "chain_kernels": False})
        ref = model(x)
    return x, ref, chained, unchained, reports


def test_runs_of_fixed_kernels_are_one_call_from_c():
    """The kernels between planned buffers run from one C loop (one graph
    call); results match eager and the unchained program, and a kernel that
    rebinds its constants is seen by the chain."""
    x, ref, chained, unchained, reports = _skip_stack_programs()
    (decision,) = [d.message for d in reports[0].decisions if d.pass_name == "kernel_chains"]
    (call,) = [n for n in chained.gm.graph.nodes if "chain" in n.meta]
    assert len(call.meta["chain"]) >= 3 and f"({len(call.meta['chain'])})" in decision
    assert not any("chain" in n.meta for n in unchained.gm.graph.nodes)
    with torch.no_grad():
        for _ in range(3):
            assert_close(chained(x), ref, 1e-4)
        assert_close(unchained(x), ref, 1e-4)
        kernel = call.target.kernels[0]
        kernel.rebind_constants({id(t): torch.zeros_like(t) for t in kernel.constants()}, owner=None)
        zeroed = chained(x)
    assert (zeroed - ref).abs().max() > 1e-2


def test_kernels_share_one_scratch_buffer_and_survive_its_growth():
    """Every kernel a thread calls uses the same scratch buffer (it is warm in
    the caches from the kernel before). No kernel may keep state in it
    between calls, and when it grows, pointer arrays built with the old
    buffer (fixed kernels, chains) are rebuilt before their next call."""
    from fusecc.runtime import scratch

    x, ref, chained, unchained, reports = _skip_stack_programs()
    (decision,) = [d.message for d in reports[0].decisions if d.pass_name == "scratch"]
    assert "kernels share one scratch buffer per thread" in decision
    kernels = [kernel_of(n) for n in kernel_nodes(unchained.gm)]
    users = [k for k in kernels if k.workspace]
    assert len(users) >= 2, "the test needs two kernels with scratch"
    assert len({k._workspace_ptr() for k in users}) == 1

    def poison():
        scratch._scratch.bytes.view(torch.float32).fill_(float("nan"))

    with torch.no_grad():
        for program in (chained, unchained):
            poison()
            assert_close(program(x), ref, 1e-4)
        before = scratch.generation()
        scratch.reserve(scratch._scratch.nbytes * 4)  # moves it; the old mapping is unmapped
        assert scratch.generation() == before + 1
        poison()
        for program in (chained, unchained):
            assert_close(program(x), ref, 1e-4)
    bound = [n.target for n in unchained.gm.graph.nodes if isinstance(n.target, BoundKernel)]
    _, array, _ = bound[0].state()
    assert array[len(array) - 1] in (None, scratch.pointer(1))


class PooledClassifier(nn.Module):
    """A conv, a global pool and a flatten before a linear layer, like a
    CNN's head: the flatten reshapes a kernel output that only a kernel reads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.mid(torch.relu(self.conv(x))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_a_whole_graph_is_one_chain_from_its_input_to_a_fresh_output():
    """The graph input and the graph output are the chain's holes, filled on
    each call; the flatten between the pooled conv and the linear layer
    becomes a second slot over the same memory, so no ATen call is left.
    Results match eager (also for an input in another layout, copied into
    the compiled one), and each call returns a tensor of its own."""
    from fusecc import compile_exported

    torch.manual_seed(0)
    model, x = PooledClassifier().eval(), torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        compiled = compile_exported(torch.export.export(model, (x,)), {"target": "c"})
        ref = model(x)
        (chain,) = [n for n in compiled.gm.graph.nodes if n.op == "call_function"]  # no aten.view left
        assert chain.meta["chain"] == ["fused_conv_0", "fused_conv_1", "fused_gemm_0"]
        assert [a.op for a in chain.args] == ["placeholder"]
        first = compiled(x)
        kept = first.clone()
        second = compiled(2 * x)
        assert_close(first, ref, 1e-4)
        assert_close(second, model(2 * x), 1e-4)
        assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()
        channels_last = x.contiguous(memory_format=torch.channels_last)
        assert_close(compiled(channels_last), ref, 1e-4)


def test_every_kernel_puts_a_threads_scratch_at_the_same_place():
    """Thread t's scratch region starts at t x THREAD_STRIDE in every kernel
    whose need per thread is below the stride (so a thread writes where it
    wrote in the kernel before, not into lines the other core holds), and
    each kernel's workspace covers its last thread's region."""
    from fusecc.codegen.c.common import THREAD_STRIDE, thread_workspace

    unchained = _skip_stack_programs()[3]
    kernels = [kernel_of(n) for n in kernel_nodes(unchained.gm)]
    with_scratch = [k for k in kernels if k.workspace]
    assert len(with_scratch) >= 2
    for k in with_scratch:
        assert f"(size_t)(tid) * {THREAD_STRIDE}L" in k.info["source"], k.spec.name
    for need in (1000, THREAD_STRIDE + 4096):
        for threads in (1, 2, 3):
            stride = max(need, THREAD_STRIDE)
            assert thread_workspace(threads, need) >= (threads - 1) * stride + need
