"""Benchmark suite ``peak``: the machine's measured multiply-add limit, the yardstick of every row.

A data-sheet constant is wrong on half the machines pcmekit runs on (Zen 4 runs 512-bit FMAs at
256-bit width, cloud vCPUs run at the host's clock), so the limit is measured: independent FMA
chains on full vectors of one instruction set, on T threads at once (``_core.fma_peak``, see
docs/design.md "Performance"). Each measurement is the best of several short runs: a limit is
what the machine *can* do, and a run that another process interrupted says nothing about that.

:func:`peak_gflops` is what the harness divides every CPU row's GFLOP/s by (the ``% peak``
column): the path the kernels run on (``build_info()["cpu_simd"]``, which
``PCMEKIT_CPU_CAPABILITY`` caps), the row's dtype, and torch's thread count. It is measured once
per process and key.

``pcmekit bench peak`` prints the limit of every supported path, float32 and float64, on one
thread and on all of torch's threads.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import _core
from . import BenchConfig, row

SUITE = "peak"
__all__ = ["measure_peak", "peak_gflops", "run"]

_cache: Dict[Tuple[str, bool, int], Dict[str, Any]] = {}


def _isa_of_kernels() -> str:
    return str(_core.build_info()["cpu_simd"])


def measure_peak(
    isa: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = None,
    *,
    seconds: float = 0.25,
    repeats: int = 5,
) -> Dict[str, Any]:
    """The best of ``repeats`` runs of ``seconds / repeats`` each: ``{"gflops", "isa", "dtype",
    "threads", "runs"}`` (``runs``: every run's GFLOP/s). ``isa`` defaults to the kernels' path,
    ``threads`` to ``torch.get_num_threads()``. Results are cached per (isa, dtype, threads).

    Raises:
        ValueError: an ISA this CPU does not support, a dtype other than float32/float64, or
            non-positive threads, seconds or repeats.
    """
    isa = _isa_of_kernels() if isa is None else isa
    supported = _core.supported_isas()
    if isa not in supported:
        raise ValueError(f"isa must be one this CPU supports ({', '.join(supported)}), got {isa!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    threads = torch.get_num_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if not seconds > 0 or repeats < 1:
        raise ValueError(f"seconds and repeats must be positive, got seconds={seconds}, repeats={repeats}")
    key = (isa, dtype == torch.float64, threads)
    if key not in _cache:
        runs = [_core.fma_peak(isa, key[1], threads, seconds / repeats)["gflops"] for _ in range(repeats)]
        _cache[key] = {"gflops": max(runs), "isa": isa, "dtype": str(dtype).replace("torch.", ""),
                       "threads": threads, "runs": runs}
    return _cache[key]


def peak_gflops(dtype: torch.dtype = torch.float32, threads: Optional[int] = None) -> float:
    """The measured limit the CPU kernels run against: their SIMD path, ``dtype``, ``threads``
    (default: torch's)."""
    return float(measure_peak(None, dtype, threads)["gflops"])


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    if config.device != "cpu":
        return []  # a GPU's limit is its data sheet's; this suite measures CPUs
    rows: List[Dict[str, Any]] = []
    counts = sorted({1, torch.get_num_threads()})
    seconds = 0.1 if config.quick else 0.5
    kernels = _isa_of_kernels()
    for isa in _core.supported_isas():
        for dtype in (torch.float32, torch.float64):
            for threads in counts:
                m = measure_peak(isa, dtype, threads, seconds=seconds)
                name = "fp32" if dtype == torch.float32 else "fp64"
                spread = f"runs {min(m['runs']):.0f}-{max(m['runs']):.0f} GFLOP/s"
                note = ("the kernels' path; " if isa == kernels else "") + spread
                r = row(SUITE, f"fma {isa} {name}", f"{threads} thread" + ("s" if threads > 1 else ""),
                        seconds / 5, flops=m["gflops"] * 1e9 * seconds / 5, notes=note)
                r["dtype"] = name
                r["threads"] = threads
                rows.append(r)
    return rows


if __name__ == "__main__":  # pragma: no cover - manual use: python -m pcmekit.bench.peak
    from . import run_suites

    run_suites([SUITE], BenchConfig(quick="--quick" in sys.argv), None)
