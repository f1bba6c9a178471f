"""The timing statistics of ternary_ops.bench (which every printed speed figure goes through) on
given samples, and the CLI on the smallest problem. Nothing here asserts a speed."""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ternary_ops import bench

ROOT = Path(__file__).resolve().parents[1]


# ---- statistics on given samples ------------------------------------------------------------

def test_summarize_min_median_max_iqr():
    t = bench.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (t.n, t.min, t.q1, t.median, t.q3, t.max) == (5, 1.0, 2.0, 3.0, 4.0, 5.0)
    assert t.iqr == 2.0 and t.rel_iqr == pytest.approx(2 / 3) and t.spread == 5.0

    xs = [4.0, 1.0, 3.0, 2.0]  # even count: interpolated between closest ranks
    t = bench.summarize(xs, max_rel_iqr=None, max_median_over_min=None)
    assert (t.min, t.q1, t.median, t.q3, t.max) == (1.0, 1.75, 2.5, 3.25, 4.0)
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    assert (t.q1, t.median, t.q3) == (q1, med, q3)
    assert not t.noisy and t.reasons == []

    t = bench.summarize([7.0])
    assert (t.min, t.q1, t.median, t.q3, t.max, t.iqr) == (7.0, 7.0, 7.0, 7.0, 7.0, 0.0)
    assert t.noisy and "too few to show a spread" in t.reasons[0]  # one sample: no spread
    assert not bench.summarize([7.0], min_samples=None).noisy
    with pytest.raises(ValueError):
        bench.summarize([])


def test_summarize_quiet_samples_are_not_noisy():
    t = bench.summarize([100, 101, 99, 102, 100, 98, 100, 103, 250])  # one slow call is fine
    assert not t.noisy, t.reasons


def test_noisy_for_a_wide_spread():
    t = bench.summarize([1.0] * 10 + [3.0] * 10)  # IQR = 100% of the median
    assert t.noisy and "IQR" in t.reasons[0]
    t = bench.summarize([1.0] + [16.0] * 9)  # median 16x the minimum, IQR 0
    assert t.noisy and any("16.0x the minimum" in r for r in t.reasons)
    t = bench.summarize([1.0, 1.1, 2.0], max_rel_iqr=None, max_median_over_min=None,
                        max_spread=1.5)  # per-round ratios: max / min
    assert t.noisy and "2.00x the min" in t.reasons[0]


def test_noisy_for_an_impossible_bandwidth():
    # 1 GB in 1 ms is 1000 GB/s: more than the 50 GB/s the machine can deliver
    t = bench.summarize([1e-3] * 5, bytes_per_call=1e9, peak_gbs=50.0)
    assert t.noisy and "invalid" in t.reasons[0]
    t = bench.summarize([1e-3] * 5, bytes_per_call=1e7, peak_gbs=50.0)  # 10 GB/s
    assert not t.noisy


def test_noisy_when_other_processes_load_the_cpus():
    t = bench.summarize([1.0] * 5, other_load=0.5)  # half the CPUs busy with other work
    assert t.noisy and "other processes kept 50%" in t.reasons[0]
    assert not bench.summarize([1.0] * 5, other_load=0.05).noisy
    stop = bench.other_load_probe()
    load = stop()
    assert load is None or 0.0 <= load <= 1.0


def test_compare_rounds_alternates_and_takes_ratios_per_round():
    order = []
    # B takes half of A's time in every round, though the machine slows down over the rounds:
    # the per-round ratio stays 2 while the pooled times spread.
    slow = {"A": [1.0, 2.0, 4.0], "B": [0.5, 1.0, 2.0]}
    calls = {"A": 0, "B": 0}

    def measure(label):
        def run():
            order.append(label)
            v = slow[label][calls[label]]
            calls[label] += 1
            return [v, v]
        return run

    cmp = bench.compare_rounds({"A": measure("A"), "B": measure("B")}, rounds=3)
    assert order == ["A", "B", "B", "A", "A", "B"]  # alternated, first of a round rotating
    assert cmp.rounds == 3 and cmp.round_medians["A"] == [1.0, 2.0, 4.0]
    s = cmp.speedup("B", over="A")
    assert (s.min, s.median, s.max, s.n) == (2.0, 2.0, 2.0, 3) and not s.noisy
    assert cmp.timings["A"].noisy  # 1 .. 4 pooled: the timing itself is flagged
    assert bench.format_ratio(s) == "2.00x (2.00-2.00 over 3 rounds)"


def test_speedup_noisy_when_rounds_disagree():
    cmp = bench.Comparison(
        timings={k: bench.summarize([1.0]) for k in "AB"},
        round_medians={"A": [1.0, 1.0, 1.0], "B": [0.5, 0.25, 0.9]})
    s = cmp.speedup("B", over="A")
    assert s.noisy and s.max / s.min > bench.NOISY_RATIO_SPREAD


def test_compare_and_time_call_run_functions():
    calls = []
    cmp = bench.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        rounds=2, warmup=1, min_reps=2, max_reps=4, budget_s=0.0)
    assert cmp.rounds == 2 and set(cmp.timings) == {"a", "b"}
    assert all(t.n == 2 for t in cmp.timings.values())  # max_reps split over the rounds
    t = bench.time_call(lambda: None, warmup=0, min_reps=3, max_reps=3, budget_s=0.0)
    assert t.n == 3 and t.min <= t.median <= t.max


def test_formatting_and_warnings():
    t = bench.summarize([100e-6, 110e-6, 120e-6, 130e-6, 140e-6])
    text = bench.format_timing(t)
    assert text == "120.0 us (min 100.0, IQR 110.0-130.0, max 140.0; 5 calls)"
    assert bench.warning_lines("x", t) == []
    bad = bench.summarize([1.0] + [16.0] * 9)
    (line,) = bench.warning_lines("dense fp32", bad)
    assert line.startswith("WARNING: dense fp32: median is 16.0x the minimum")
    assert "not to be trusted" in bench.ADVICE


def result(mode, weight_gbs, notes=()):
    return bench.Result(kind="ternary", shape="64x64", N=64, K=64, M=1, mode=mode, format="i2",
                        act="int8", median_us=1.0, gops=1.0, weight_gbs=weight_gbs,
                        weight_bytes=1024, copies=1, reps=1, notes=list(notes))


def test_cold_rows_beyond_dram_bandwidth_are_flagged():
    rows = [result("cold", 54.6), result("hot", 54.6), result("cold", 9.0)]
    bench.attach_ratios(rows, dram_gbs=10.0)  # 546% of DRAM
    assert rows[0].noisy and "546%" in rows[0].bandwidth_note
    assert not rows[1].noisy  # hot: served from cache, legitimately
    assert not rows[2].noisy
    warnings = bench.row_warnings(rows)
    assert len(warnings) == 1 and "cold i2 act=int8" in warnings[0]
    bw = bench.bandwidth_warnings({"best": 30.0}, {"best": 10.0})
    assert bw and "changed during the run" in bw[0]


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as e:
        bench.require_matplotlib("--plot")
    assert "'bench' extra" in str(e.value) and "--plot" in str(e.value)
    assert 'pip install -e ".[bench]"' in str(e.value)


# ---- the CLI, smallest problem --------------------------------------------------------------

def run_cli(*args, prelude=""):
    code = (f"import sys; {prelude}from ternary_ops.bench import main; "
            f"sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=str(ROOT), env=env, timeout=300)


def test_cli_prints_spread_and_what_it_measures(tmp_path):
    r = run_cli("--shapes", "64x64", "--m", "1", "--formats", "i2", "--act", "int8",
                "--modes", "hot,cold", "--dense", "bfloat16", "--threads", "1",
                "--cold-gib", "0.001", "--bw-gib", "0.01", "--warmup", "1", "--min-reps", "2",
                "--max-reps", "4", "--budget", "0", "--rounds", "2",
                "--json", str(tmp_path / "out.json"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for text in ("median_us", "IQR_us", "min_us", "x bf16",          # spread columns
                 "in 2 rounds that alternate", "median [min-max over rounds]",
                 "hot: one weight matrix", "cold: rotates over", "act=int8",
                 "M activation rows", "DRAM read bandwidth"):
        assert text in out, text
    rows = [line for line in out.splitlines() if line.startswith("ternary ")]
    assert len(rows) == 2 and all("[" in row for row in rows)  # ratio with its range
    # every run ends with either the warnings or the statement that nothing was flagged
    assert "WARNING" in out or "no row flagged" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert len(saved["results"]) == 4 and isinstance(saved["warnings"], list)


def test_cli_plot_without_matplotlib_fails_before_running():
    r = run_cli("--shapes", "64x64", "--m", "1", "--plot", "x.png",
                prelude="sys.modules['matplotlib'] = None; ")
    assert r.returncode != 0
    assert 'pip install -e ".[bench]"' in r.stderr and "DRAM" not in r.stdout


def test_e2e_profile_prefill_smoke():
    # The prefill profiler on a one-layer model on the CPU: both variants are timed and
    # profiled, the ternary one in the library's ops and the dense one in torch's matmuls.
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/e2e/profile_prefill.py"),
                        "--device", "cpu", "--layers", "1", "--vocab", "512", "--prompt", "8",
                        "--runs", "1", "--top", "30"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ternary, dense = r.stdout.split("== dense:")
    assert "== ternary: wall [" in ternary and "ternary::rms_norm_linear_i2" in ternary
    assert "ternary::" not in dense and "aten::mm" in dense


def test_e2e_decode_smoke(tmp_path):
    # The end-to-end benchmark on a one-layer model: every variant and round runs in its own
    # process and is reported; nothing about speed is asserted.
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = tmp_path / "e2e.json"
    md = tmp_path / "e2e.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/e2e/decode.py"), "--layers", "1",
                        "--vocab", "512", "--prompt", "4", "--tokens", "3", "--warmup", "1",
                        "--rounds", "2", "--vs-dense", "--head", "int8", "--embedding", "int8",
                        "--prefills", "2", "--json", str(out), "--markdown", str(md)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [(s["mode"], s["variant"], s["rounds"]) for s in data["summaries"]] == [
        ("eager", "ternary", 2), ("eager", "dense", 2)]
    t, d = data["summaries"]
    assert t["tokens_per_s"] > 0 and d["tokens_per_s"] > 0
    assert t["bytes_per_token"] < d["bytes_per_token"]  # ternary layers, int8 head
    assert all(len(run["step_s"]) == 3 for run in data["runs"])
    # the prefill time is the median of the timed prefills (after an untimed one)
    for run in data["runs"]:
        assert len(run["prefill_times_s"]) == 2
        assert run["prefill_s"] == pytest.approx(sum(run["prefill_times_s"]) / 2)
    assert "ternary / dense bf16 tokens/s" in md.read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/e2e/decode.py"), "--mode",
                          "jit"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected eager, compiled or eager,compiled" in bad.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/e2e/decode.py"), "--prefills",
                          "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--prefills must be >= 1" in bad.stderr


def _mma_sweep():
    """benchmarks/cuda/mma_sweep.py as a module, and ternary_ops.cuda_mma (Triton >= 3.5)."""
    pytest.importorskip("triton.experimental.gluon", reason="needs Triton >= 3.5")
    sys.path.insert(0, str(ROOT / "benchmarks/cuda"))
    try:
        import mma_sweep
    finally:
        sys.path.pop(0)
    from ternary_ops import cuda_mma
    return mma_sweep, cuda_mma


def test_mma_sweep_candidates():
    # The sm_90 tile sweep's candidates (benchmarks/cuda/mma_sweep.py; it times them on a GPU):
    # the plan first, each tile height and split in each requested form, rings that fit in
    # shared memory only, and the plan in its other form always.
    mma_sweep, cuda_mma = _mma_sweep()

    assert mma_sweep._form("ws8") == (True, 8, 4, 128)
    assert mma_sweep._form("4") == (False, 4, 4, 128)
    assert mma_sweep._form("ws8w8") == (True, 8, 8, 128) and mma_sweep._form("4n64") == (
        False, 4, 4, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a form"):
        mma_sweep._form("w8")
    m, rows, k, sms = 128, 640, 2560, 132
    plan = cuda_mma._wgmma_plan(m, rows, k, True, sms)
    forms = [(False, 4, 4, 128), (True, 8, 4, 128), (True, 12, 4, 128), (True, 8, 8, 128),
             (True, 8, 4, 64)]
    got = mma_sweep._candidates(plan, m, rows, k, 128, sms, False, forms, [16, 128])
    assert got[0] == plan and len(set(got)) == len(got)
    assert plan._replace(ws=not plan.ws) in got
    assert all(mma_sweep._ring_bytes(c) <= mma_sweep.SMEM_BYTES for c in got)
    want = {(bm, split, ws, st, w, bn) for bm in (16, 128) for split in {1, plan.split_k, 4}
            for ws, st, w, bn in forms
            if mma_sweep._ring_bytes(plan._replace(bm=bm, stages=st, bn=bn))
            <= mma_sweep.SMEM_BYTES}
    assert want <= {(c.bm, c.split_k, c.ws, c.stages, c.warps, c.bn) for c in got}
    assert (128, 1, True, 12, 4, 128) not in want  # a 12-slot ring of 128-row tiles: too big
    assert mma_sweep._tag(plan._replace(bm=16, split_k=1, ws=True, stages=8, warps=8)) == (
        "wg16x128/s1/st8/ws/w8")
    assert mma_sweep._tag(plan._replace(bm=32, split_k=2, ws=True, stages=8, bn=64)) == (
        "wg32x64/s2/st8/ws")
    ab = mma_sweep._candidates(plan, m, rows, k, 128, sms, False, forms, None, True)
    mine = (plan.ws, plan.stages, plan.warps, plan.bn)
    assert [(c.ws, c.stages, c.warps, c.bn) for c in ab] == [mine] + [
        f for f in forms if f != mine]  # the plan's tile only
    assert {(c.bm, c.split_k) for c in ab} == {(plan.bm, plan.split_k)}
    default = mma_sweep._candidates(plan, m, rows, k, 128, sms, False)
    assert {c.stages for c in default} == {plan.stages} and {c.ws for c in default} == {
        True, False} and {c.warps for c in default} == {4}  # the plan's ring, in both forms


def test_mma_sweep_score_reads_logs(tmp_path, capsys):
    # --score checks this version's plan against printed sweep rows, without a GPU; the logs
    # kept in benchmarks/data parse, and a row whose pick the sweep did not time says so.
    mma_sweep, cuda_mma = _mma_sweep()

    now = mma_sweep._tag(cuda_mma._wgmma_plan(128, 640, 2560, True, 132))
    log = tmp_path / "sweep.log"
    log.write_text(
        "# a comment\n"
        f" 2560x2560  M=128  int8 dense     7.4 us | op 0.57x | *wg64x128/s1 0.69x {now} 0.94x"
        " wg16x128/s1 0.84x\n"
        " 2560x2560  M=128  none dense     7.4 us | op 0.45x | *wg16x128/s9/ws 0.40x\n")
    rows = mma_sweep.score([str(log)], 132)
    assert rows[0] == ("2560x2560", 128, "int8", "wg64x128/s1", 0.69, now, 0.94, now, 0.94)
    assert rows[1][5] != "wg16x128/s9/ws" and rows[1][6] is None  # not timed: "--"
    out = capsys.readouterr().out
    assert "1 of 2 rows timed this plan: at 1.00-1.00 of the best candidate, 1 at or above" in out
    kept = sorted((ROOT / "benchmarks/data").glob("cuda_mma_sweep_*.log"))
    assert kept and len(mma_sweep.score(kept, 132)) >= 70
