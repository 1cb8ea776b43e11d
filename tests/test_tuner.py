"""The auto-tuner: database (persistence, validity, corruption, concurrency),
search order, robust timing, and tuning through torch.compile and the CLI."""

import multiprocessing
import subprocess
import sys
import time

import pytest
import torch

from fusecc.compiler import collect_reports
from fusecc.targets.cpu import HostCTarget
from fusecc.targets.evict import evictor
from fusecc.tuner import CONFIRM_MIN, KernelTuner, TuningDatabase
from fusecc.tuner.database import TuningWarning, canonical
from fusecc.tuner.measure import MIN_RUNS, PAIRED_CALLS, WARMUP, median_us, paired_speedup, robust_median
from fusecc.tuner.search import Search, features

SPACE = {"tile": ((6, 4), (12, 2), (8, 3)), "kc": (64, 256)}
DEFAULT = {"tile": (6, 4), "kc": 256, "vl": 16}


def test_database_keeps_the_fastest_valid_record(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite3")
    db.record("cpu", "sig", {**DEFAULT, "tile": (12, 2)}, 50.0)
    db.record("cpu", "sig", DEFAULT, 80.0)
    db.record("cpu", "sig", {**DEFAULT, "tile": (8, 3)}, None, "build failed")
    db.record("cpu", "sig", {**DEFAULT, "tile": (99, 1)}, 1.0)  # outside today's search space
    db.record("other-cpu", "sig", DEFAULT, 0.5)
    params, us = db.best("cpu", "sig", {"tile": SPACE["tile"], "kc": SPACE["kc"]})
    assert params["tile"] == (12, 2) and us == 50.0
    assert TuningDatabase(tmp_path / "t.sqlite3").count() == 5  # persisted


def test_a_corrupted_database_is_moved_aside_not_trusted(tmp_path):
    path = tmp_path / "t.sqlite3"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.warns(TuningWarning, match="unreadable"):
        db = TuningDatabase(path)
    assert db.count() == 0
    assert list(tmp_path.glob("t.sqlite3.corrupt-*"))
    db.record("cpu", "sig", DEFAULT, 10.0)
    assert db.best("cpu", "sig") is not None


def _writer(path, worker):
    db = TuningDatabase(path)
    for i in range(40):
        db.record("cpu", f"sig{worker}", {"i": i}, float(i + 1))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "t.sqlite3"
    TuningDatabase(path)
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert TuningDatabase(path).count() == 120


def test_search_measures_the_default_first_then_every_candidate_once():
    search = Search(DEFAULT, SPACE)
    measured = {}
    order = []
    while (params := search.next(measured)) is not None:
        order.append(canonical(params))
        # a cost the model can learn: fewer rows per tile is slower
        measured[canonical(params)] = 100.0 / params["tile"][0] + params["kc"] / 1000
    assert order[0] == canonical(DEFAULT)
    assert len(order) == len(set(order)) == 6


def test_cost_model_learns_which_parameters_are_fast():
    search = Search(DEFAULT, SPACE)
    measured = [(p, 100.0 / p["tile"][0] + p["kc"] / 1000) for p in search.pool]
    predict = search._fit(measured)  # xgboost is a dependency: the model must exist
    assert predict is not None
    scores = predict([features(p, SPACE) for p, _ in measured])
    fastest = min(range(len(measured)), key=lambda i: measured[i][1])
    slowest = max(range(len(measured)), key=lambda i: measured[i][1])
    assert scores[fastest] < scores[slowest]


# -- the cross-kernel prior -----------------------------------------------------------------------

WIDE_SPACE = {"tile": ((4, 1), (4, 4), (6, 2), (6, 4), (8, 3), (12, 2), (14, 2)), "kc": (64, 128, 256, 512),
              "schedule": ("pixel_major", "channel_major")}  # fmt: skip


def _synthetic_us(kernel: dict, params: dict) -> float:
    """A deterministic cost with structure shared by every kernel of the kind:
    (6, 4) tiles, kc 256 and the channel-major order are best; time scales
    with the kernel's work."""
    mr, nv = params["tile"]
    tile_cost = 1 + abs(mr * nv - 24) / 8 + (0.3 if nv == 1 else 0)
    kc_cost = 1 + abs(params["kc"] - 256) / 512
    order = 1.0 if params["schedule"] == "channel_major" else 1.15
    return 2 ** kernel["log_flops"] / 1e3 * tile_cost * kc_cost * order


def _kernel(log_flops: float, space0: float) -> dict:
    return {"log_flops": log_flops, "log_bytes": log_flops - 3, "space0": space0, "space1": 6.0, "log_k": 9.0}


def test_history_holds_other_kernels_of_the_kind_on_the_target(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite3")
    db.describe("cpu", "a", "conv2d", _kernel(26, 10))
    db.describe("cpu", "b", "conv2d", _kernel(27, 11))
    db.describe("cpu", "g", "gemm", _kernel(20, 7))
    db.record("cpu", "a", DEFAULT, 10.0)
    db.record("cpu", "b", DEFAULT, 20.0)
    db.record("cpu", "b", {**DEFAULT, "tile": (8, 3)}, None, "failed")  # failures teach nothing
    db.record("cpu", "b", {"impl": "layers"}, 5.0)  # implementation choices are not parameters
    db.record("cpu", "g", DEFAULT, 1.0)
    db.record("other-cpu", "a", DEFAULT, 1.0)  # another machine
    (record,) = db.history("cpu", "conv2d", exclude="a")
    assert record == (_kernel(27, 11), DEFAULT, 20.0)
    assert len(db.history("cpu", "conv2d")) == 2 and db.history("other-cpu", "conv2d") == []


def test_prior_from_earlier_kernels_ranks_a_new_kernels_candidates():
    """Fitted on three fully measured kernels of other sizes, the prior puts
    the new kernel's true best among its first picks, where the kernel's own
    model has nothing to go on yet and the search would pick at random."""
    from fusecc.tuner.search import Prior

    default = {"tile": (4, 1), "kc": 64, "schedule": "pixel_major", "vl": 16}
    pool = Search(default, WIDE_SPACE).pool
    history = [(k, p, _synthetic_us(k, p)) for k in (_kernel(24, 9), _kernel(26, 11), _kernel(28, 12)) for p in pool]
    prior = Prior.fit(history)
    assert prior is not None
    new = _kernel(25, 10)
    truth = sorted(pool, key=lambda p: _synthetic_us(new, p))
    best3 = {canonical(p) for p in truth[:3]}
    search = Search(default, WIDE_SPACE, prior=prior, kernel=new)
    measured = {canonical(default): _synthetic_us(new, default)}
    picks = []
    for _ in range(3):
        params = search.next(measured)
        measured[canonical(params)] = _synthetic_us(new, params)
        picks.append(canonical(params))
    assert best3 & set(picks), (picks, best3)
    # too little history: no prior, the search stays as it was
    assert Prior.fit(history[:3]) is None


def test_tuning_a_new_kernel_starts_from_the_database(tmp_path):
    """KernelTuner describes every kernel it tunes and fits the prior on the
    other kernels of its kind (the tuning info says how many records)."""
    db = TuningDatabase(tmp_path / "t.sqlite3")
    default = {"tile": (4, 1), "kc": 64, "schedule": "pixel_major", "vl": 16}
    for sig, kernel in (("k1", _kernel(24, 9)), ("k2", _kernel(26, 11))):
        db.describe("cpu", sig, "conv2d", kernel)
        for p in Search(default, WIDE_SPACE).pool[:12]:
            db.record("cpu", sig, p, _synthetic_us(kernel, p))
    tuner = KernelTuner(db, "cpu", trials=2)
    _, info = tuner.choose("k3", default, WIDE_SPACE, lambda p: (lambda: None), measure=True,
                           kind="conv2d", features=_kernel(25, 10))  # fmt: skip
    assert info["prior_records"] == 24 and info["measured_now"] == 2
    assert len(db.history("cpu", "conv2d", exclude="k1")) == 12 + 2  # k2's records and k3's own two


def test_robust_median_ignores_a_preempted_run():
    assert robust_median([1.0, 1.1, 0.9, 1.0, 50.0, 1.05]) == pytest.approx(1.0, abs=0.05)


def test_tuner_measures_up_to_the_budget_and_never_again(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite3")
    calls = []

    def build(params):
        calls.append(params)
        if params["tile"] == (8, 3):
            raise RuntimeError("does not compile")
        return lambda: sum(range(1000 * params["tile"][0]))

    tuner = KernelTuner(db, "cpu", trials=4)
    params, info = tuner.choose("sig", DEFAULT, SPACE, build, measure=True)
    assert info["measured_now"] == 4 and len(calls) == 4 and info["source"] == "database"
    assert info["best_us"] <= info["default_us"]
    again, info2 = KernelTuner(db, "cpu", trials=4).choose("sig", DEFAULT, SPACE, build, measure=True)
    assert info2["measured_now"] == 0 and len(calls) == 4 and again == params


def test_a_kernel_with_nothing_to_search_is_still_timed_once(tmp_path):
    """Its time is what a block is weighed against its layers with: without
    it the block was kept unmeasured."""
    calls = []

    def build(params):
        calls.append(params)
        return lambda: sum(range(1000))

    tuner = KernelTuner(TuningDatabase(tmp_path / "t.sqlite3"), "cpu", trials=4)
    params, info = tuner.choose("sig", {"vl": 16}, {}, build, measure=True)
    assert params == {"vl": 16} and calls == [{"vl": 16}] and info["best_us"] > 0
    _, again = KernelTuner(TuningDatabase(tmp_path / "t.sqlite3"), "cpu", trials=4).choose(
        "sig", {"vl": 16}, {}, build, measure=True
    )
    assert again["measured_now"] == 0 and len(calls) == 1


def test_median_us_prepares_before_every_timed_call():
    events = []

    def call():
        events.append("run")

    call.prepare = lambda: events.append("prepare")
    median_us(call)
    assert events[:2] == ["prepare", "run"] and events.count("prepare") == events.count("run") >= MIN_RUNS


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_paired_speedup_alternates_and_measures_the_ratio():
    order = []

    def fast():
        order.append("fast")
        _busy(1e-4)

    def slow():
        order.append("slow")
        _busy(2e-4)

    assert paired_speedup(slow, fast, rounds=6) == pytest.approx(2.0, rel=0.2)
    timed = order[2 * WARMUP :]  # after both sides' warm-up calls
    firsts = [timed[r * 2 * PAIRED_CALLS] for r in range(6)]
    assert firsts == ["slow", "fast"] * 3  # the side going first swaps every round


class _Phases:
    """Calls of the first kernel built run slow until the next one is built
    (a noisy neighbour while the default was timed), so the candidate timed
    after it looks faster in one-after-the-other medians. When ``noisy`` is
    off every call costs its true time."""

    def __init__(self, noisy: bool):
        self.calls = self.builds = 0
        self.noisy = noisy

    def build(self, params):
        self.builds += 1
        build = self.builds

        def call():
            self.calls += 1
            slow = self.noisy and build == 1 and self.builds == 1
            _busy(4e-4 if slow else 1e-4 * params["tile"][0] / 6)

        return call


def test_a_winner_by_noise_is_not_kept_and_a_real_one_is(tmp_path):
    """The search's medians come one after another, default first; a slow
    phase during the default's made every candidate look faster. The paired
    re-timing keeps the default then, and it is recorded: "use" decides the
    same without measuring."""
    db = TuningDatabase(tmp_path / "t.sqlite3")
    space = {"tile": ((6, 4), (7, 2))}  # (7, 2) is truly 7/6 slower
    phases = _Phases(noisy=True)
    params, info = KernelTuner(db, "cpu", trials=2).choose("sig", DEFAULT, space, phases.build, measure=True)
    assert info["unconfirmed"]["params"] == canonical({**DEFAULT, "tile": (7, 2)})
    assert params == DEFAULT and info["best_us"] == info["default_us"] and info["paired_speedup"] < CONFIRM_MIN
    calls = phases.calls
    again, info2 = KernelTuner(db, "cpu", trials=2).choose("sig", DEFAULT, space, phases.build, measure=False)
    assert again == DEFAULT and phases.calls == calls and info2["paired_speedup"] == info["paired_speedup"]

    # a real winner: (4, 6) is 1.5x faster than the default, and keeps its place
    space = {"tile": ((6, 4), (4, 6))}
    tuner = KernelTuner(db, "cpu", trials=2)
    params, info = tuner.choose("sig2", DEFAULT, space, _Phases(noisy=False).build, measure=True)
    assert params["tile"] == (4, 6) and info["paired_speedup"] == pytest.approx(1.5, rel=0.2)


def test_a_new_measurement_supersedes_a_paired_comparison(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite3")
    candidate = {**DEFAULT, "kc": 64}
    db.confirm("cpu", "sig", candidate, DEFAULT, 0.97)
    assert db.confirmation("cpu", "sig", candidate, DEFAULT) == 0.97
    assert db.confirmation("cpu", "sig", DEFAULT, candidate) is None  # the pair is ordered
    db.record("cpu", "sig", candidate, 12.0)
    assert db.confirmation("cpu", "sig", candidate, DEFAULT) is None


def test_an_alternative_faster_only_by_noise_keeps_the_kernel(tmp_path):
    """Block against layers, kernel against library: a faster median of the
    alternative is re-timed paired before it replaces the kernel."""
    from types import SimpleNamespace

    from fusecc.errors import KeepUnfused
    from fusecc.targets.cpu import _Weighing
    from fusecc.targets.tuning import LAYERS

    db = TuningDatabase(tmp_path / "t.sqlite3")
    tuner = KernelTuner(db, "cpu", trials=1)
    spec = SimpleNamespace(signature=lambda: "block")

    def weigh(kernel_seconds, alternative_seconds, median_us):
        db.record("cpu", "block", LAYERS, None)  # forget the last comparison
        db.record("cpu", "block", LAYERS, median_us)
        info = {"best_us": 100.0}
        chosen = _Weighing(spec, DEFAULT, info, tuner, True, lambda: lambda: _busy(kernel_seconds))
        chosen.against(LAYERS, lambda: lambda: _busy(alternative_seconds), KeepUnfused, "the layers", "the block")
        return info

    info = weigh(2e-4, 2e-4, 50.0)  # the median said 2x; paired, they are equal
    assert info["layers_paired_speedup"] < CONFIRM_MIN
    with pytest.raises(KeepUnfused, match="as fast as the block, paired"):
        weigh(3e-4, 1e-4, 50.0)  # truly faster
    assert "layers_paired_speedup" not in weigh(1e-4, 1e-4, 150.0)  # slower median: no re-timing


def test_evicted_tensors_keep_their_values(tmp_path):
    """The tuner times kernels with their weights flushed from the caches
    (`targets/evict.py`); flushing writes nothing back but the data."""
    target = HostCTarget(cache_dir=str(tmp_path))
    evict = evictor(target.toolchain, target.cache())
    t = torch.randn(1 << 16)
    view = t[5:]  # a view: flushed from its own first element on
    expected = t.clone()
    evict([t, view, torch.empty(0)])
    assert torch.equal(t, expected)


class _LinearEpilogue(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 1024)

    def forward(self, x):
        return torch.nn.functional.gelu(self.linear(x)) * 1.5 + 0.5


def _linear():
    """A GEMM whose epilogue (GELU, scale, shift) fuses into the kernel but
    costs ATen three more passes over a 4 MB tensor: tuning keeps the
    kernel by a wide margin (2.4x measured here), so tests of the parameter
    search never see the library choice flip."""
    torch.manual_seed(0)
    return _LinearEpilogue().eval(), torch.randn(1024, 64)


def _compile(model, x, **options):
    torch._dynamo.reset()
    with torch.no_grad(), collect_reports() as reports:
        out = torch.compile(model, backend="fusecc", options=options)(x)
    return out, reports[0].kernels


def _pin_library_slow(model, x, cache_dir):
    """Record the group's ATen ops as far slower than any kernel, so that a
    test of the parameter search never depends on how a timing under load
    turns out (the library is not measured again where a record exists)."""
    from fusecc.targets.cpu import HostCTarget
    from fusecc.targets.tuning import LIBRARY

    _, kernels = _compile(model, x, cache_dir=str(cache_dir))
    (kernel,) = kernels
    key = HostCTarget().tuner_key(torch.get_num_threads())
    TuningDatabase(cache_dir / "tuning.sqlite3").record(key, kernel["spec"]["signature"], LIBRARY, 1e9)


def test_tune_through_torch_compile_then_use(tmp_path):
    model, x = _linear()
    with torch.no_grad():
        ref = model(x)
    _pin_library_slow(model, x, tmp_path)
    out, kernels = _compile(model, x, tune="tune", tune_trials=3, cache_dir=str(tmp_path))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    (kernel,) = kernels
    assert kernel["tuning"]["measured_now"] == 3 and kernel["tuning"]["records"] == 3
    assert kernel["tuning"]["library_us"] == 1e9  # read back, not measured again
    # tuning again measures nothing; "use" takes the same parameters from the database
    _, again = _compile(model, x, tune="tune", tune_trials=3, cache_dir=str(tmp_path))
    assert again[0]["tuning"]["measured_now"] == 0
    out, used = _compile(model, x, tune="use", cache_dir=str(tmp_path))
    assert used[0]["params"] == kernel["params"] and used[0]["tuning"]["source"] == "database"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_compiles_survive_a_corrupted_database(tmp_path):
    (tmp_path / "tuning.sqlite3").write_bytes(b"\x00garbage" * 512)
    model, x = _linear()
    with pytest.warns(TuningWarning):
        out, kernels = _compile(model, x, tune="use", cache_dir=str(tmp_path))
    assert kernels and kernels[0]["tuning"]["source"] == "default"
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)


def test_tune_command_prints_the_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fusecc.cli", "tune", "mobilenet_v2", "--size", "tiny", "--trials", "2",
         "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fusecc tune mobilenet_v2" in result.stdout and "block" in result.stdout
    assert "fusecc tune [" in result.stderr  # progress, one line per measurement
    assert TuningDatabase(tmp_path / "tuning.sqlite3").count() > 0


def test_a_block_is_kept_only_where_it_beats_its_layers(tmp_path):
    from fusecc.bench.blocks import InvertedResidual, _randomize_bn
    from fusecc.targets.tuning import LAYERS

    model = _randomize_bn(InvertedResidual(8, 8, 4))
    x = torch.randn(1, 8, 14, 14).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    _, kernels = _compile(model, x, tune="tune", tune_trials=2, cache_dir=str(tmp_path))
    (block,) = [k for k in kernels if k["kind"] == "block"]
    assert block["tuning"]["layers_us"] > 0  # the alternative was measured too
    # pretend the layers were faster: "use" must now run them, and say why
    db = TuningDatabase(tmp_path / "tuning.sqlite3")
    (key,) = _targets_keys(db)
    db.record(key, block["spec"]["signature"], LAYERS, 1e-3)
    torch._dynamo.reset()
    with torch.no_grad(), collect_reports() as reports:
        out = torch.compile(model, backend="fusecc", options={"tune": "use", "cache_dir": str(tmp_path)})(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert [k["kind"] for k in reports[0].kernels] == ["conv", "conv", "conv"]
    assert any("measured the layers one by one faster" in d.message for d in reports[0].decisions)


def _targets_keys(db):
    import sqlite3

    with sqlite3.connect(db.path) as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT target FROM measurements")]


def test_a_kernel_is_kept_only_where_it_beats_the_vendor_library(tmp_path):
    """The third implementation: the group's own ATen ops (oneDNN/MKL).
    Tuning measures them beside the kernel; "use" runs the group as ATen
    where that record is faster - a decision, not a fallback."""
    from fusecc.targets.tuning import LIBRARY

    model, x = _linear()
    with torch.no_grad():
        ref = model(x)
    _compile(model, x, tune="tune", tune_trials=2, cache_dir=str(tmp_path))  # either may win here
    db = TuningDatabase(tmp_path / "tuning.sqlite3")
    (key,) = _targets_keys(db)
    (signature,) = _signatures(db)
    assert db.measured(key, signature)[canonical(LIBRARY)] > 0  # the library was measured beside the kernel
    db.record(key, signature, LIBRARY, 1e-3)  # pretend ATen is faster
    torch._dynamo.reset()
    with torch.no_grad(), collect_reports() as reports:
        out = torch.compile(model, backend="fusecc", options={"tune": "use", "cache_dir": str(tmp_path)})(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    (report,) = reports
    assert report.kernels == [] and report.fallbacks == []
    assert any("runs as ATen" in d.message and "ATen ops faster" in d.message for d in report.decisions)
    db.record(key, signature, LIBRARY, 1e9)  # and slower: the kernel is back
    _, again = _compile(model, x, tune="use", cache_dir=str(tmp_path))
    assert [k["kind"] for k in again] == ["gemm"]


def _signatures(db):
    import sqlite3

    with sqlite3.connect(db.path) as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT signature FROM measurements")]


def test_every_block_of_a_model_is_tuned_and_equal_blocks_share_records(tmp_path):
    """A block without an expand layer (its tiles hold a None) tuned first
    must not stop the blocks after it from being tuned (the cross-kernel
    prior describes every block's per-layer tiles), and two equal blocks at
    different places in the graph are one kernel signature: the second is
    read back from the database, not measured again."""
    from fusecc.bench.blocks import InvertedResidual, _randomize_bn

    model = _randomize_bn(
        torch.nn.Sequential(InvertedResidual(8, 8, 1), InvertedResidual(8, 8, 4), InvertedResidual(8, 8, 4))
    ).eval()
    x = torch.randn(1, 8, 10, 10).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
    out, kernels = _compile(model, x, tune="tune", tune_trials=2, cache_dir=str(tmp_path))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    blocks = [k for k in kernels if k["kind"] == "block"]
    assert len(blocks) == 3, [k["kind"] for k in kernels]
    assert all("error" not in b["tuning"] for b in blocks), [b["tuning"] for b in blocks]
    assert [b["tuning"]["records"] for b in blocks] == [2, 2, 2]
    first, second, third = (b["spec"]["signature"] for b in blocks)
    assert first != second == third
    assert blocks[1]["tuning"]["measured_now"] == 2 and blocks[2]["tuning"]["measured_now"] == 0


def test_parameter_features_line_up_for_nested_and_missing_tiles():
    from fusecc.tuner.features import param_features

    keys = ["band", "tile", "tiles"]
    rows = [
        param_features({"band": 2, "tiles": [(4, 3), (6, 2)]}, keys),
        param_features({"band": 1, "tiles": (None, [6, 2])}, keys),  # a block without an expand layer
        param_features({"tile": (6, 2)}, keys),
    ]
    assert len({len(r) for r in rows}) == 1
    assert rows[0] != rows[1] and all(isinstance(v, float) for r in rows for v in r)


def test_records_are_keyed_by_the_renderer_that_generated_the_kernels(tmp_path):
    """The tuner's target key carries a hash of the C renderer's sources:
    a changed renderer (here a copy of it with one file edited) gets a new
    key, so timings of the kernels an older renderer generated are not
    replayed; an unchanged copy hashes the same."""
    import shutil
    from pathlib import Path

    from fusecc.codegen import c as c_codegen
    from fusecc.targets.cpu import HostCTarget

    key = HostCTarget().tuner_key(2)
    assert key.endswith(f"|renderer={c_codegen.source_fingerprint()}")
    copy = tmp_path / "c"
    shutil.copytree(Path(c_codegen.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert c_codegen.source_fingerprint(copy) == c_codegen.source_fingerprint()
    (copy / "gemm.py").write_text((copy / "gemm.py").read_text() + "\n# a new microkernel\n")
    assert c_codegen.source_fingerprint.__wrapped__(copy) != c_codegen.source_fingerprint()
