"""The benchmark's statistics and warnings (ternary_ops.bench), and its command line on the
smallest arguments. Nothing here asserts a speed."""
import subprocess
import sys

import pytest

from ternary_ops import bench


def test_spread_order_statistics():
    s = bench.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.min, s.q1, s.median, s.q3, s.max, s.n) == (1.0, 2.0, 3.0, 4.0, 5.0, 5)
    assert s.iqr_fraction == pytest.approx(2.0 / 3.0)
    even = bench.spread([1.0, 2.0, 3.0, 10.0])
    assert even.median == 2.5 and even.q1 == 1.75 and even.q3 == 4.75
    assert "2.500 ms (min 1.000, max 10.000, IQR 120%)" == even.format(scale=1.0)
    with pytest.raises(ValueError):
        bench.spread([])


def test_noisy_flag_and_warnings():
    quiet = bench.spread([1.00, 1.01, 1.02, 1.03, 1.04])
    busy = bench.spread([1.0, 1.0, 2.0, 3.0, 3.0])
    assert not quiet.noisy and busy.noisy
    lines = bench.noise_warnings({"quiet": quiet, "busy": busy}, {"bw": 5.46, "ok": 0.8})
    assert len(lines) == 2
    assert lines[0].startswith("WARNING busy: IQR 100% of the median")
    assert lines[1].startswith("WARNING bw: 546% of the measured bandwidth is impossible")


def test_row_warnings_flag_impossible_bandwidth():
    r = bench.make_result("ternary", 64, 64, 1, "cold", "i2", "int8", [1e-6] * 9 + [9e-6], 1024, 4)
    assert r.min_us == pytest.approx(1.0) and r.max_us == pytest.approx(9.0)
    r.dram_fraction = 5.46
    assert any("546% of the measured DRAM bandwidth is impossible" in w
               for w in bench.row_warnings(r))


def test_cli_prints_spread_and_what_it_measures():
    out = subprocess.run(
        [sys.executable, "-m", "ternary_ops.bench", "--shapes", "64x64", "--m", "1",
         "--formats", "i2", "--act", "int8", "--modes", "hot", "--dense", "float32",
         "--min-reps", "5", "--max-reps", "20", "--budget", "0.01", "--bw-gib", "0.05"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("kind"))
    for column in ("M", "mode", "act", "median_us", "min_us", "max_us", "IQR%"):
        assert column in header.split()
    assert any(line.startswith("ternary") and " hot " in line and " int8 " in line
               for line in out.stdout.splitlines())
