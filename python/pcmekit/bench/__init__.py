"""Benchmark harness: every kernel against its pure-PyTorch baseline, in one process.

Each suite is a module in this package with ``run(config: BenchConfig) -> list[dict]``; every
dict is one measurement with the keys of :data:`FIELDS`. Suites check that the implementations
agree before they time anything. The harness adds speed-ups against the row marked as baseline
of the same case, prints a table, and writes CSV, JSON and (with matplotlib) a PNG plot.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["BenchConfig", "SUITES", "FIELDS", "median_time", "run_suites", "format_table", "check_precisions"]

SUITES: Dict[str, str] = {
    "pairwise": "pcmekit.bench.pairwise",
    "loss": "pcmekit.bench.loss",
    "match_prob": "pcmekit.bench.match_prob",
    "optim": "pcmekit.bench.optim",
    "topk": "pcmekit.bench.topk",
    "peak": "pcmekit.bench.peak",
    "sweep": "pcmekit.bench.sweep",
}

FIELDS = ["suite", "case", "impl", "baseline", "median_ms", "gflops", "pct_peak", "speedup", "peak_mb",
          "queries_per_s", "notes",
          # the sweep's structured fields (empty for the other suites)
          "op", "q", "n", "d", "repeats", "compile_s",
          # torch.get_float32_matmul_precision() the row ran under
          "precision"]


@dataclasses.dataclass
class BenchConfig:
    """What every suite gets: problem size switch, device, repeat counts, and the float32 matmul
    precisions (``torch.set_float32_matmul_precision`` modes) to run every suite under, one after
    the other, for pcmekit and torch alike (CUDA only: the CPU kernels ignore the mode)."""

    quick: bool = False
    device: str = "cpu"
    repeats: int = 10
    warmup: int = 2
    precisions: Tuple[str, ...] = ("highest",)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: Sequence[Callable[[], Any]], config: BenchConfig) -> List[float]:
    """Median time (seconds) of each function, the repeats taken in turn (a, b, c, a, b, c, ...)
    so that a change in machine load during the run affects every implementation alike."""
    for fn in fns:
        median_time(fn, 0, config.warmup, config.device)
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(max(1, config.repeats)):
        for fn, t in zip(fns, times):
            t.append(median_time(fn, 1, 0, config.device))
    return [statistics.median(t) for t in times]


def row(
    suite: str,
    case: str,
    impl: str,
    seconds: float,
    *,
    baseline: bool = False,
    flops: Optional[float] = None,
    peak_mb: Optional[float] = None,
    queries_per_s: Optional[float] = None,
    notes: str = "",
) -> Dict[str, Any]:
    """One measurement in the harness's format."""
    return {
        "suite": suite,
        "case": case,
        "impl": impl,
        "baseline": baseline,
        "median_ms": seconds * 1e3,
        "gflops": None if flops is None else flops / seconds / 1e9,
        "pct_peak": None,
        "speedup": None,
        "peak_mb": peak_mb,
        "queries_per_s": queries_per_s,
        "notes": notes,
    }


def _add_percent_of_peak(rows: List[Dict[str, Any]], config: BenchConfig) -> Optional[str]:
    """Fills ``pct_peak`` of every CPU row with a rate: its GFLOP/s over the measured FMA limit of
    the kernels' SIMD path for the row's ``dtype`` ("fp32" unless it says "fp64") and ``threads``
    (torch's unless it says). Returns a line describing the limit used, for the table's header."""
    if not any(r.get("gflops") for r in rows):
        return None
    if config.device != "cpu":
        return _add_percent_of_gpu_peak(rows, config)
    from .peak import measure_peak

    threads = torch.get_num_threads()
    used: Dict[Tuple[str, int], float] = {}
    for r in rows:
        if not r.get("gflops"):
            continue
        dtype = torch.float64 if r.get("dtype") == "fp64" else torch.float32
        t = int(r.get("threads") or threads)
        peak = measure_peak(None, dtype, t)["gflops"]
        used[(str(dtype).replace("torch.", ""), t)] = peak
        r["pct_peak"] = 100.0 * r["gflops"] / peak
    parts = [f"{gf:.0f} GFLOP/s {dt}, {t} thread{'s' if t > 1 else ''}" for (dt, t), gf in sorted(used.items())]
    return f"% peak: of the measured FMA limit of the {measure_peak()['isa']} path (" + "; ".join(parts) + ")"


def _add_percent_of_gpu_peak(rows: List[Dict[str, Any]], config: BenchConfig) -> Optional[str]:
    """The CUDA form of :func:`_add_percent_of_peak`: each row against the data-sheet peak of its
    dtype under the matmul precision it ran under (bench/gpu_peak.py)."""
    from .gpu_peak import gpu_peak_tflops

    try:
        name = torch.cuda.get_device_name(torch.device(config.device))
    except (AssertionError, RuntimeError) as err:  # torch without CUDA, or no such device
        return f"% peak: none, no CUDA device to name ({err})"
    used: Dict[str, float] = {}
    for r in rows:
        if not r.get("gflops"):
            continue
        peak = gpu_peak_tflops(name, r.get("dtype") or "fp32", r.get("precision") or "highest")
        if peak is None:
            return f"% peak: none, {name} is not in pcmekit.bench.gpu_peak's table"
        kind, tflops = peak
        used[kind] = tflops
        r["pct_peak"] = 100.0 * r["gflops"] / (tflops * 1e3)
    parts = [f"{kind.upper()} {tflops:g} TFLOP/s" for kind, tflops in sorted(used.items())]
    return f"% peak: of the {name}'s data-sheet peak for each row's dtype and matmul mode (" + "; ".join(parts) + ")"


def _add_speedups(rows: List[Dict[str, Any]]) -> None:
    base = {(r["suite"], r["case"]): r["median_ms"] for r in rows if r.get("baseline")}
    for r in rows:
        ref = base.get((r["suite"], r["case"]))
        r["speedup"] = None if ref is None else ref / r["median_ms"]


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of the measurements."""
    headers = ["suite", "case", "impl", "ms", "GFLOP/s", "% peak", "speed-up", "peak MB"]
    with_rate = any(r.get("queries_per_s") is not None for r in rows)  # retrieval suites
    if with_rate:
        headers.append("queries/s")

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    body = [
        [
            r["suite"],
            r["case"],
            r["impl"] + (" (baseline)" if r.get("baseline") else ""),
            fmt(r["median_ms"], ".2f"),
            fmt(r.get("gflops"), ".1f"),
            fmt(r.get("pct_peak"), ".0f"),
            fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") is not None else ""),
            fmt(r.get("peak_mb"), ".0f"),
        ]
        + ([fmt(r.get("queries_per_s"), ".0f")] if with_rate else [])
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def _plot(rows: Sequence[Dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys((r["suite"], r["case"]) for r in rows))
    if len(cases) > 40:  # a bar chart that tall says nothing (the sweep draws its own grid plot)
        return False
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 1.6 + 1.1 * len(cases) * 1.5), squeeze=False)
    for ax, key in zip(axes[:, 0], cases):
        sel = [r for r in rows if (r["suite"], r["case"]) == key]
        labels = [r["impl"] for r in sel]
        values = [r["median_ms"] for r in sel]
        colors = ["#999999" if r.get("baseline") else "#1f77b4" for r in sel]
        ax.barh(labels, values, color=colors)
        for y, r in enumerate(sel):
            text = f"{r['median_ms']:.1f} ms"
            if r.get("speedup") is not None:
                text += f"  ({r['speedup']:.2f}x)"
            ax.text(r["median_ms"], y, " " + text, va="center", fontsize=8)
        ax.set_title(f"{key[0]}: {key[1]}", fontsize=9)
        ax.set_xlabel("median time (ms), lower is better", fontsize=8)
        ax.set_xlim(0, max(values) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_suites(
    names: Sequence[str],
    config: BenchConfig,
    out_dir: Optional[Path],
    echo: Callable[[str], None] = print,
) -> List[Dict[str, Any]]:
    """Runs the named suites, prints the table, and writes results under ``out_dir``."""
    rows: List[Dict[str, Any]] = []
    for name in names:
        if name not in SUITES:
            raise ValueError(f"unknown benchmark suite {name!r}; expected one of {', '.join(SUITES)}")
    modes = check_precisions(config.precisions, config.device)
    # With more than the default mode, the mode is part of the case, so that each row's speed-up
    # is against the baseline of its own mode.
    tag = modes != ("highest",)
    for mode in modes:
        with _matmul_precision(mode):
            for name in names:
                echo(f"[pcmekit bench] running suite '{name}' (device={config.device}, quick={config.quick}, "
                     f"threads={torch.get_num_threads()}, matmul precision={mode})")
                module = importlib.import_module(SUITES[name])
                for r in module.run(config):
                    r["precision"] = mode
                    if tag:
                        r["case"] = f"{r['case']} [{mode}]"
                    rows.append(r)
    _add_speedups(rows)
    limit = _add_percent_of_peak(rows, config)
    if limit:
        echo(f"[pcmekit bench] {limit}")
    echo(format_table(rows))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = "_".join(names)
        with open(out_dir / f"{stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")  # suites' extra keys: JSON only
            writer.writeheader()
            writer.writerows(rows)
        meta = {"config": dataclasses.asdict(config), "build_info": _build_info(), "fma_peak": limit,
                "results": rows}
        (out_dir / f"{stem}.json").write_text(json.dumps(meta, indent=2))
        plotted = _plot(rows, out_dir / f"{stem}.png")
        echo(f"[pcmekit bench] wrote {out_dir / stem}.csv, .json" + (", .png" if plotted else ""))
    return rows


def check_precisions(precisions: Sequence[str], device: str) -> Tuple[str, ...]:
    """The matmul precision modes of a run, checked: known modes, no repeats, and only "highest"
    on the CPU (where pcmekit's kernels ignore the mode and torch's would not)."""
    from .gpu_peak import MODES

    modes = tuple(precisions)
    if not modes:
        raise ValueError("precisions must name at least one matmul precision mode")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"matmul precision must be one of {', '.join(MODES)}; got {m!r}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"matmul precisions must not repeat; got {', '.join(modes)}")
    if not device.startswith("cuda") and modes != ("highest",):
        raise ValueError(f"matmul precisions other than highest apply to --device cuda; the CPU kernels "
                         f"always compute in full float32 (got {', '.join(modes)} on {device})")
    return modes


class _matmul_precision:
    """``torch.set_float32_matmul_precision(mode)`` for a block, restored after it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.saved = ""

    def __enter__(self) -> None:
        self.saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.mode)

    def __exit__(self, *exc: Any) -> None:
        torch.set_float32_matmul_precision(self.saved)


def _build_info() -> Dict[str, Any]:
    from .._core import build_info

    return build_info()
