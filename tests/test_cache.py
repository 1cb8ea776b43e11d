"""The compile cache across processes: reuse, corruption, concurrency."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from fusecc.compiler import collect_reports
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5),
        torch.nn.Softmax(-1),
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), collect_reports() as reports:
        out = torch.compile(m, backend="fusecc", options={"target": "c"})(x)
    kernels = [k for r in reports for k in r.kernels]
    print(json.dumps({
        "built": sum(not k["cached"] for k in kernels),
        "cached": sum(bool(k["cached"]) for k in kernels),
        "fallbacks": [f.subject for r in reports for f in r.fallbacks],
        "ok": bool(torch.allclose(out, m(x), atol=1e-5)),
    }))
    """
)


def run(cache_dir, background=False):
    env = {**os.environ, "FUSECC_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-c", SCRIPT]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def shared_objects(cache_dir):
    """The kernels' libraries, not the helper built through the same cache
    (the C loop calling chains of kernels, `runtime/chain.py`)."""
    return sorted(p for p in cache_dir.glob("kernels/*/*.so") if b"fc_run_chain" not in p.read_bytes())


def test_second_process_compiles_nothing(tmp_path):
    first = run(tmp_path)
    assert first["ok"] and first["built"] >= 2 and not first["fallbacks"]
    second = run(tmp_path)
    assert second["ok"] and second["built"] == 0 and second["cached"] == first["built"] + first["cached"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign", "record"])
def test_damaged_or_foreign_entries_are_rebuilt_not_loaded(tmp_path, damage):
    first = run(tmp_path)
    sos = shared_objects(tmp_path)
    assert len(sos) >= 2
    victim = sos[0]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "garbage":
        victim.write_bytes(b"\x7fELF" + os.urandom(4000))
    elif damage == "foreign":  # a valid shared object, but not the one this entry was built as
        victim.write_bytes(sos[1].read_bytes())
    else:
        victim.with_suffix(".json").write_text("{not json")
    again = run(tmp_path)
    assert again["ok"] and not again["fallbacks"]
    assert again["built"] == 1 and again["cached"] == first["built"] + first["cached"] - 1
    third = run(tmp_path)  # the rebuilt entry is valid again
    assert third["built"] == 0


def test_concurrent_processes_share_a_cold_cache(tmp_path):
    procs = [run(tmp_path, background=True) for _ in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] and not r["fallbacks"] for r in results)
    after = run(tmp_path)
    assert after["built"] == 0
    assert not list(tmp_path.glob("kernels/*/.build-*")), "temporary build folders left behind"
