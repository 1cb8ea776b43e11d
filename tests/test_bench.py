"""The benchmark harness runs end to end (correctness of its plumbing, not
timing: performance is measured by `fusecc bench`, never asserted here)."""

import itertools
import json
import os
import threading
import time

import pytest

from fusecc.bench.harness import main
from fusecc.bench.timing import block_orders, interleaved, wait_until_quiet


def test_interleaved_timing_reports_every_runner():
    stats = interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}, budget_s=0.2, min_rounds=3)
    assert set(stats) == {"a", "b"}
    assert all(s.samples >= 3 and 0 < s.p10_ms <= s.median_ms <= s.p90_ms for s in stats.values())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_block_orders_let_every_runner_follow_every_other_equally_often(n):
    orders = block_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    follows = {pair: 0 for pair in itertools.permutations(range(n), 2)}
    for order in orders:
        for before, after in itertools.pairwise(order):
            follows[before, after] += 1
    assert len(set(follows.values())) <= 1  # every ordered pair equally often


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc/self/task/*/schedstat")
def test_wait_until_quiet_waits_for_a_spinning_thread_and_not_longer():
    stop = time.perf_counter() + 0.3

    def spin():  # like a runtime's worker pool waiting for work
        while time.perf_counter() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    waited = wait_until_quiet(max_s=5.0)
    assert waited >= 0.2  # the spinner ran for 0.3 s
    spinner.join()
    assert wait_until_quiet(max_s=5.0) < 1.0  # nothing spins now


def test_bench_harness_tiny_run_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(
        [
            "--models",
            "resnet18",
            "bert_base",
            "--batch",
            "1",
            "--size",
            "tiny",
            "--budget",
            "0.2",
            "--peers",
            "eager",
            "onnxruntime",
            "fusecc",
            "fusecc_tuned",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] >= 1
    assert [(r["model"], r["batch"]) for r in data["results"]] == [("resnet18", 1), ("bert_base", 1)]
    for r in data["results"]:
        for peer in ("eager", "onnxruntime", "fusecc", "fusecc_tuned"):
            entry = r["peers"][peer]
            assert "error" not in entry, entry
            assert entry["median_ms"] > 0 and entry["rel_error"] < 1e-3
    printed = capsys.readouterr().out
    assert "eager/fusecc" in printed and "geomean" in printed


def test_attention_bench_times_the_kernel_against_sdpa(tmp_path):
    """`fusecc bench --attention`: the case is built, checked against eager
    (SDPA) and timed; fusecc ran it as its attention kernel."""
    import json

    from fusecc.compiler import collect_reports

    out = tmp_path / "attention.json"
    with collect_reports() as reports:
        rc = main(["--attention", "--only", "attention L=128", "--budget", "0.2", "--peers", "eager", "fusecc",
                   "--json", str(out)])  # fmt: skip
    assert rc == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["peers"]["fusecc"]["rel_error"] < 1e-4 and result["peers"]["fusecc"]["median_ms"] > 0
    assert any(k["kind"] == "attention" for r in reports for k in r.kernels)


def test_sparse_attention_bench_agrees_with_flex_attention(tmp_path):
    """`fusecc bench --sparse-attention`: fusecc under the plan and
    FlexAttention given the same blocks compute the same attention."""
    import json

    out = tmp_path / "sparse.json"
    assert main(["--sparse-attention", "--lengths", "256", "--budget", "0.2", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    peers = result["peers"]
    assert peers["fusecc"]["rel_error"] < 1e-5 and peers["sdpa"]["rel_error"] > 1e-2  # exact vs flex, not dense
    assert 0 < result["kept"] < 1 and all(peers[p]["median_ms"] > 0 for p in peers)


def test_head_pruning_bench_matches_the_zeroed_heads(tmp_path):
    """`fusecc bench --head-pruning`: pruned and unpruned fusecc both compute
    eager with the skipped heads' output-projection columns zeroed."""
    import json

    out = tmp_path / "pruning.json"
    argv = ["--head-pruning", "--models", "gpt2", "--size", "tiny", "--tokens", "32", "--skip", "2",
            "--budget", "0.2", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    peers = result["peers"]
    assert peers["fusecc"]["rel_error"] < 1e-4 and peers["fusecc_zeros"]["rel_error"] < 1e-4
    assert peers["fusecc_dense"]["rel_error"] > 1e-3  # the plan changed something
    assert all(peers[p]["median_ms"] > 0 for p in peers)


def test_call_breakdown_splits_a_torch_compile_call(tmp_path):
    """`fusecc bench --call-breakdown --kernels`: the guard check of Dynamo's
    cached entry is found and timed, fusecc's compiled graph runs once per
    call and computes eager, every part is a share of the call, and each
    kernel of the exported program is timed in the model and hot."""
    import json

    out = tmp_path / "breakdown.json"
    argv = ["--call-breakdown", "--models", "mobilenet_v2", "--size", "tiny", "--calls", "5", "--kernels",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())["results"]
    us = result["us"]
    assert result["rel_error"] < 1e-4 and result["graphs_per_call"] == 1
    # measured inside each call, so below the call's time (the rest is a
    # difference of medians and may come out negative on a noisy machine)
    assert 0 < us["fusecc_prologue"] < us["total"] and 0 < us["compiled_graph"] < us["total"]
    assert us["guards"] > 0 and us["dynamo_other"] is not None and us["export"] > 0
    kernels = result["kernels"]  # every kernel of the exported program, in graph order
    assert [k["kind"] for k in kernels][:2] == ["block", "block"] and kernels[-1]["kind"] == "gemm"  # stem + block 0
    assert all(k["in_model_us"] > 0 and k["hot_us"] > 0 for k in kernels)


def test_alternated_rounds_pair_every_runner_per_round_and_reverse_the_order():
    from fusecc.bench.timing import alternated_rounds, paired_ratio

    order = []
    runners = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    rounds = alternated_rounds(runners, rounds=4, calls=3)
    assert {name: len(times) for name, times in rounds.items()} == {"a": 4, "b": 4}
    # each runner: one untimed call and three timed per round; b first in even rounds, a first in odd ones
    assert order[:8] == ["b"] * 4 + ["a"] * 4 and order[8:16] == ["a"] * 4 + ["b"] * 4
    assert paired_ratio([2.0, 6.0, 9.0, 8.0], [1.0, 2.0, 3.0, 1.0])[0] == 3.0  # ratios 2, 3, 3, 8
