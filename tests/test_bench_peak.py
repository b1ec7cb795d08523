"""`pcmekit bench peak`: the measured FMA limit, and the `% peak` every CPU row reports against it."""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import _core
from pcmekit.bench import BenchConfig, _add_percent_of_peak, format_table, row
from pcmekit.bench import peak


def test_every_supported_path_measures_a_positive_rate():
    isas = _core.supported_isas()
    assert "generic" in isas and pcmekit.build_info()["cpu_simd"] in isas
    for isa in isas:
        for dtype in (torch.float32, torch.float64):
            m = peak.measure_peak(isa, dtype, 1, seconds=0.02, repeats=2)
            assert m["gflops"] == max(m["runs"]) and math.isfinite(m["gflops"]) and m["gflops"] > 0.1


def test_float64_runs_at_most_about_half_the_float32_rate():
    # Half the lanes per vector: a loop that measured something else (a dead loop, a wrong flop
    # count) would not keep this ratio. Generous bounds: the machine may be shared.
    isa = pcmekit.build_info()["cpu_simd"]
    f32 = peak.measure_peak(isa, torch.float32, 1, seconds=0.1, repeats=5)["gflops"]
    f64 = peak.measure_peak(isa, torch.float64, 1, seconds=0.1, repeats=5)["gflops"]
    assert 0.25 < f64 / f32 < 0.8, (f32, f64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(isa="sse9"), "isa must be one this CPU supports"),
        (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64"),
        (dict(threads=0), "threads must be a positive int"),
        (dict(seconds=0.0), "seconds and repeats must be positive"),
    ],
)
def test_bad_arguments_name_what_was_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        peak.measure_peak(**kwargs)


def test_core_rejects_bad_arguments_itself():
    with pytest.raises(ValueError, match="isa must be"):
        _core.fma_peak("avx1024", False, 1, 0.01)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        _core.fma_peak("generic", False, 0, 0.01)


def test_rows_report_percent_of_the_measured_limit():
    limit = peak.peak_gflops(torch.float32, 1)
    rows = [row("s", "c", "x", 1.0, flops=limit * 0.5e9), row("s", "c", "no rate", 1.0)]
    rows[0]["threads"] = 1
    line = _add_percent_of_peak(rows, BenchConfig())
    assert rows[0]["pct_peak"] == pytest.approx(50.0)
    assert rows[1]["pct_peak"] is None
    assert line is not None and "% peak" in line and "1 thread" in line
    assert "% peak" in format_table(rows).splitlines()[0]
    # CUDA rows are against the GPU's data-sheet peak (tests/test_bench_gpu_peak.py); without a
    # GPU there is none, and the header says why.
    rows[0]["pct_peak"] = None
    line = _add_percent_of_peak(rows, BenchConfig(device="cuda"))
    assert line is not None and line.startswith("% peak: none, no CUDA device") and rows[0]["pct_peak"] is None


def test_the_suite_has_a_row_per_path_dtype_and_thread_count():
    rows = peak.run(BenchConfig(quick=True))
    counts = sorted({1, torch.get_num_threads()})
    assert len(rows) == len(_core.supported_isas()) * 2 * len(counts)
    assert all(r["gflops"] > 0 for r in rows)
    assert peak.run(BenchConfig(device="cuda")) == []
