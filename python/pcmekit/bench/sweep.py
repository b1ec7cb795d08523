"""Benchmark suite ``sweep``: pcmekit against its peers over a grid of problem sizes, float32.

Two operations, every cell of the grid, the contenders of a cell in the same run:

* ``topk`` -- top-10 CSD retrieval, Q in {1, 16, 256, 5000} queries, N in {2000, 16000, 200000}
  gallery rows, D in {32, 64, 256, 512, 1024}: ``pcmekit`` (:func:`pcmekit.topk`), ``torch
  (chunked)`` (:func:`pcmekit.reference.topk_chunked`, the baseline), ``GalleryIndex (pcmekit,
  prepared)`` (:class:`pcmekit.bench.topk.PreparedIndex`, CPU only), ``faiss IndexFlatL2`` on the
  exact L2 reduction of CSD (:class:`pcmekit.bench.topk.FaissCSD`; CPU only, when faiss-cpu is
  installed) and ``keops LazyTensor`` (:mod:`pcmekit.bench._keops`, when pykeops is installed).
  The faiss index, KeOps' per-gallery variance sums and GalleryIndex's prepared gallery are built
  outside the timing; in the summary and the plot faiss and KeOps are therefore measured against
  GalleryIndex, and torch (which, like pcmekit.topk, starts from raw tensors) against pcmekit.topk.
* ``pairwise`` -- the dense ``[Q, N]`` CSD matrix, the same Q and D, N in {2000, 16000} (so the
  output fits in memory): ``pcmekit`` (:func:`pcmekit.ops.pairwise_distance`) against ``torch
  (GEMM form)`` (:func:`pcmekit.reference.pairwise_distance_fast`, the baseline).

``--quick`` runs Q in {1, 16}, N = 2000, D in {32, 64}. ``--grid KEY=V1,V2 ...`` replaces the
values of the keys it names (``Q``, ``N``, ``D``, ``op`` = ``topk``/``pairwise``), e.g.
``pcmekit bench sweep --grid Q=1,16 N=2000 D=32,64``; pairwise cells keep N <= 16000.

Method, per cell:

1. **Agreement before timing** on the first ``min(Q, 64)`` queries: top-k through
   :func:`pcmekit.bench.topk.check_agreement` (values equal the float64 CSD of the returned pairs,
   the contenders' k float64 CSDs agree, no duplicates); the matrix against float64 (relative
   1e-4 of its largest entry). A contender that fails to run (a KeOps compile error, say) is
   dropped from the cell with the reason in the notes; a wrong answer stops the sweep.
2. **Time budget.** Each contender's call time is estimated from two probes run before the sweep
   (a compute-bound and a gallery-streaming shape, giving a GFLOP/s and a GB/s), refined by the
   timed agreement call. A peer (faiss, KeOps) whose estimated call exceeds ``max_call_s``
   (30 s; CLI ``--max-call-s``) is skipped in that cell and the skip is reported: on 2 cores a
   single KeOps CPU call at Q = 5000, N = 200000, D = 1024 would take over half an hour. So is
   one whose agreement call, scaled from its 64 queries to Q, exceeds twice ``max_call_s`` (the
   factor 2 leaves room for the gain from batching more queries), in case the probes were
   optimistic, e.g. because the machine's load changed. pcmekit and the torch baseline always
   run: they are the comparison every cell exists for, and the ETA includes them.
3. **Adaptive, interleaved timing.** One untimed warm-up call (unless a call takes over 1 s: the
   agreement call has then warmed the code path). A sample is a batch of calls of at least
   20 ms, its time divided by the batch size; each contender gets ``max(3, 0.3 s / sample)``
   samples (at most 200), so each measurement takes about 0.3 s, or three calls when a call is
   longer than 0.1 s. Samples are taken in turn (a, b, c, a, b, c, ...; a contender that has
   its samples drops out of the rotation), so a change in machine load affects every contender
   alike. The row's time is the median sample; ``repeats`` says how many calls were timed.
   (``--quick`` aims at 0.05 s per measurement: it is a smoke test.)

Rows carry ``op``, ``q``, ``n``, ``d``, ``repeats`` and, for KeOps, ``compile_s`` (its first call
of that formula minus the steady state: the compile, or the load from its cache). After the
sweep it prints a summary -- per cell the pcmekit time and the peers' time over pcmekit's (above
1: pcmekit is faster), a ``<`` where pcmekit is not ahead of every peer -- and, with an output
folder and matplotlib, writes ``sweep_grid.png``: per operation and N a row of panels, one per
Q, the speed-up of pcmekit over each peer against D on log axes, with a line at 1x.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import ops, reference
from .._progress import Progress
from . import BenchConfig, row
from . import _keops
from . import topk as topk_suite
from .pairwise import _check_close

__all__ = ["SweepConfig", "parse_grid", "resolve_grid", "run", "format_summary", "plot_grid", "FULL_GRID",
           "QUICK_GRID"]

SUITE = "sweep"
K = topk_suite.K
OPS = ("topk", "pairwise")
FULL_GRID: Dict[str, List[Any]] = {
    "op": list(OPS),
    "Q": [1, 16, 256, 5000],
    "N": [2000, 16000, 200000],
    "D": [32, 64, 256, 512, 1024],
}
QUICK_GRID: Dict[str, List[Any]] = {"op": list(OPS), "Q": [1, 16], "N": [2000], "D": [32, 64]}
PAIRWISE_MAX_N = 16000  # the [Q, N] output of every pairwise cell fits in memory
CHECK_QUERIES = 64
TARGET_S = 0.3  # timed seconds per measurement
QUICK_TARGET_S = 0.05  # --quick: a smoke test, not a measurement
SAMPLE_S = 0.02  # least seconds per timed sample (a batch of calls)
MIN_SAMPLES, MAX_SAMPLES, MAX_BATCH = 3, 200, 1000
WARM_LIMIT_S = 1.0  # calls longer than this get no separate warm-up
DEFAULT_MAX_CALL_S = 30.0
#: Peer name of pcmekit's GalleryIndex contender (its gallery prepared before the timing).
INDEX = "GalleryIndex"
#: Peers that keep gallery-side state built before the timing (faiss's index, KeOps' variance
#: sums): their speed-ups are taken against GalleryIndex, which does the same, where it ran.
PREPARED_PEERS = ("faiss", "keops")
ALWAYS_RUN = ("pcmekit", "torch", INDEX)  # never skipped for time: the subjects and the baseline of every cell
PNG_NAME = "sweep_grid.png"

Fn = Callable[[torch.Tensor, torch.Tensor], Any]


@dataclasses.dataclass
class SweepConfig(BenchConfig):
    """:class:`BenchConfig` plus the sweep's own settings (other suites ignore them).

    ``grid``: overrides of :data:`FULL_GRID` / :data:`QUICK_GRID` (:func:`parse_grid`'s output);
    ``max_call_s``: the longest estimated call a peer (not pcmekit or torch) may have in a cell;
    ``out_dir``: where ``sweep_grid.png`` goes (None: no plot). ``repeats`` and ``warmup`` do not
    apply: the sweep picks its repeat counts per cell (module docstring).
    """

    grid: Optional[Dict[str, List[Any]]] = None
    max_call_s: float = DEFAULT_MAX_CALL_S
    out_dir: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# The grid.


def parse_grid(items: Iterable[str]) -> Dict[str, List[Any]]:
    """``["Q=1,16", "D=32"]`` -> ``{"Q": [1, 16], "D": [32]}``. Keys: ``Q``, ``N``, ``D`` (positive
    integers) and ``op`` (``topk``, ``pairwise``); each at most once. Raises ValueError naming the
    item that is wrong."""
    grid: Dict[str, List[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        canon = {"q": "Q", "n": "N", "d": "D", "op": "op"}.get(key.lower())
        if not sep or canon is None:
            raise ValueError(f"--grid: expected KEY=V1,V2,... with KEY one of Q, N, D, op; got {item!r}")
        if canon in grid:
            raise ValueError(f"--grid: {canon} given twice")
        parts = [v.strip() for v in values.split(",") if v.strip()]
        if not parts:
            raise ValueError(f"--grid: {canon} has no values in {item!r}")
        if canon == "op":
            bad = [p for p in parts if p not in OPS]
            if bad:
                raise ValueError(f"--grid: op must be among {', '.join(OPS)}, got {', '.join(bad)}")
            grid[canon] = list(dict.fromkeys(parts))
            continue
        numbers = []
        for p in parts:
            try:
                number = int(p)
            except ValueError:
                raise ValueError(f"--grid: {canon} values must be positive integers, got {p!r}") from None
            if number < 1:
                raise ValueError(f"--grid: {canon} values must be positive integers, got {number}")
            numbers.append(number)
        grid[canon] = sorted(set(numbers))
    if "N" in grid and min(grid["N"]) < K:
        raise ValueError(f"--grid: N must be at least k = {K} for top-{K} retrieval, got {min(grid['N'])}")
    return grid


def resolve_grid(config: BenchConfig) -> Dict[str, List[Any]]:
    """The grid a run covers: the quick or full grid with ``config.grid``'s keys replaced."""
    base = QUICK_GRID if config.quick else FULL_GRID
    override = getattr(config, "grid", None) or {}
    unknown = set(override) - set(base)
    if unknown:
        raise ValueError(f"grid: unknown keys {sorted(unknown)}; expected Q, N, D, op")
    return {key: list(override.get(key, values)) for key, values in base.items()}


def cells(grid: Dict[str, List[Any]]) -> List[Tuple[str, int, int, int]]:
    """``(op, Q, N, D)`` in run order: per op, per gallery (N, D), each Q."""
    out = []
    for op in grid["op"]:
        for n in grid["N"]:
            if op == "pairwise" and n > PAIRWISE_MAX_N:
                continue
            for d in grid["D"]:
                out += [(op, q, n, d) for q in grid["Q"]]
    return out


# ---------------------------------------------------------------------------------------------
# Contenders.


@dataclasses.dataclass
class Contender:
    """One implementation bound to one gallery: ``fn(q_mean, q_logvar)``."""

    name: str
    peer: str  # short name in the summary and the plot: pcmekit, torch, faiss, keops
    fn: Fn
    baseline: bool = False
    note: str = ""
    keops: Optional[_keops.KeOpsCSD] = None


def _contenders(op: str, gm: torch.Tensor, gl: torch.Tensor, device: str, notes: List[str]) -> List[Contender]:
    """The contenders of ``op`` for one gallery; reasons a peer is missing go to ``notes``."""
    if op == "pairwise":
        return [
            Contender("pcmekit", "pcmekit", lambda a, b: ops.pairwise_distance(a, b, gm, gl, metric="csd")),
            Contender("torch (GEMM form)", "torch", lambda a, b: reference.pairwise_distance_fast(a, b, gm, gl, "csd"),
                      baseline=True, note="addmm with the row and column terms"),
        ]
    out = [
        Contender("pcmekit", "pcmekit", lambda a, b: topk_suite.ours(a, b, gm, gl)),
        Contender("torch (chunked)", "torch", lambda a, b: topk_suite.baseline(a, b, gm, gl), baseline=True,
                  note=f"chunks of {topk_suite.CHUNK} gallery rows"),
    ]
    if not device.startswith("cuda"):
        out.append(Contender("GalleryIndex (pcmekit, prepared)", INDEX, topk_suite.PreparedIndex(gm, gl),
                             note="gallery prepared before the timing, like faiss's index"))
    if device.startswith("cuda"):
        notes.append("faiss: CPU only, not run on CUDA")
    else:
        faiss = topk_suite.faiss_module()
        if faiss is None:
            notes.append("faiss-cpu not installed (pip install faiss-cpu)")
        else:
            index = topk_suite.FaissCSD(faiss, gm, gl)
            out.append(Contender("faiss IndexFlatL2", "faiss", index,
                                 note="exact L2 reduction of CSD; index build not timed"))
    lazy, why = _keops.load()
    if lazy is None:
        notes.append(why)
    else:
        kcsd = _keops.KeOpsCSD(lazy, gm, gl, K)
        out.append(Contender("keops LazyTensor", "keops", kcsd, keops=kcsd,
                             note="Kmin_argKmin over the exact CSD; gallery variance sums not timed"))
    return out


def _call(c: Contender, a: torch.Tensor, b: torch.Tensor) -> Any:
    with torch.no_grad():
        if c.keops is not None:
            return c.keops.first_call(a, b)[0]
        return c.fn(a, b)


# ---------------------------------------------------------------------------------------------
# Estimates (probes) and timing.


@dataclasses.dataclass
class Speed:
    """A contender's measured compute rate and gallery streaming rate."""

    gflops: float
    gbps: float


def _flops(q: int, n: int, d: int) -> float:
    return 2.0 * q * n * d


def _bytes(op: str, q: int, n: int, d: int) -> float:
    gallery = 2.0 * n * d * 4
    return gallery + (4.0 * q * n if op == "pairwise" else 0.0)


def estimate_call_s(speed: Optional[Speed], op: str, q: int, n: int, d: int) -> float:
    """Estimated seconds of one call: the slower of computing and streaming (1 ms when unknown)."""
    if speed is None:
        return 1e-3
    return max(_flops(q, n, d) / (speed.gflops * 1e9), _bytes(op, q, n, d) / (speed.gbps * 1e9), 1e-5)


def estimate_measurement_s(call_s: float, q: int, target_s: float = TARGET_S) -> float:
    """Estimated seconds one contender spends in a cell: check (a warm-up and a timed call on
    the first queries), warm-up, timed samples."""
    check = 2 * call_s * min(1.0, CHECK_QUERIES / q) if q > 0 else 0.0
    warm = call_s if call_s < WARM_LIMIT_S else 0.0
    return check + warm + max(target_s, MIN_SAMPLES * call_s)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, calls: int = 1) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def interleaved_adaptive(fns: Sequence[Callable[[], Any]], estimates: Sequence[float], device: str,
                         target_s: float = TARGET_S) -> List[Tuple[float, int]]:
    """``(median seconds per call, calls timed)`` of each function (module docstring, step 3).

    ``estimates``: seconds per call, used when a call is too long for a separate warm-up;
    ``target_s``: the timed seconds each function should get (at least 3 calls)."""
    per_call = []
    for fn, est in zip(fns, estimates):
        per_call.append(_timed(fn, device) if est < WARM_LIMIT_S else est)  # the warm-up is timed too
    batch = [max(1, min(MAX_BATCH, math.ceil(SAMPLE_S / max(t, 1e-9)))) for t in per_call]
    wanted = [max(MIN_SAMPLES, min(MAX_SAMPLES, math.ceil(target_s / max(b * t, 1e-9))))
              for b, t in zip(batch, per_call)]
    samples: List[List[float]] = [[] for _ in fns]
    for r in range(max(wanted)):
        for i, fn in enumerate(fns):
            if r < wanted[i]:
                samples[i].append(_timed(fn, device, batch[i]))
    return [(statistics.median(s), len(s) * b) for s, b in zip(samples, batch)]


def _probe_shapes(op: str, grid: Dict[str, List[Any]]) -> Tuple[int, List[Tuple[int, int]]]:
    """``(D, [(Q, N) compute-bound, (Q, N) streaming])`` for the probes of ``op``."""
    ns = [n for n in grid["N"] if op != "pairwise" or n <= PAIRWISE_MAX_N]
    d = min(grid["D"], key=lambda x: abs(math.log(x / 256)))
    # Q = 2048: enough queries that the kernels reach the rate they have at Q = 5000 (at Q = 256
    # pcmekit runs several times below it, and the big cells would be overestimated).
    compute = (min(2048, max(grid["Q"])), min(16000, max(ns)))
    stream = (min(grid["Q"]), max(ns))
    return d, [compute, stream]


def calibrate(op: str, grid: Dict[str, List[Any]], device: str) -> Dict[str, Speed]:
    """Each contender's :class:`Speed` from two probes (one warm-up and one timed call each)."""
    d, shapes = _probe_shapes(op, grid)
    measured: Dict[str, List[float]] = {}
    for q, n in shapes:
        qm, ql, gm, gl = topk_suite.make_inputs(q, n, d, device, seed=7)
        for c in _contenders(op, gm, gl, device, []):
            try:
                _call(c, qm, ql)
                with torch.no_grad():
                    measured.setdefault(c.peer, []).append(_timed(lambda: c.fn(qm, ql), device))
            except Exception:  # noqa: BLE001 - reported when the cell runs it
                continue
    speeds = {}
    for peer, ts in measured.items():
        if len(ts) == 2:
            (qc, nc), (qs, ns) = shapes
            speeds[peer] = Speed(gflops=_flops(qc, nc, d) / ts[0] / 1e9, gbps=_bytes(op, qs, ns, d) / ts[1] / 1e9)
    return speeds


# ---------------------------------------------------------------------------------------------
# The sweep.


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    """Runs the grid (module docstring); returns the harness's rows, prints the summary and
    writes ``sweep_grid.png`` when ``config`` is a :class:`SweepConfig` with an ``out_dir``."""
    grid = resolve_grid(config)
    max_call_s = getattr(config, "max_call_s", DEFAULT_MAX_CALL_S)
    if not max_call_s > 0:
        raise ValueError(f"max_call_s must be positive, got {max_call_s}")
    dev = config.device
    plan = cells(grid)
    if not plan:
        raise ValueError(f"the sweep grid has no cells: {grid}")
    start = time.perf_counter()
    speeds = {op: calibrate(op, grid, dev) for op in grid["op"]}
    calib_s = time.perf_counter() - start
    target_s = QUICK_TARGET_S if config.quick else TARGET_S
    estimates = {cell: _cell_estimate(cell, speeds[cell[0]], max_call_s, target_s) for cell in plan}
    total = sum(estimates.values())
    rates = "; ".join(f"{op}: " + ", ".join(f"{p} {s.gflops:.1f} GFLOP/s {s.gbps:.1f} GB/s" for p, s in sp.items())
                      for op, sp in speeds.items())
    print(f"[sweep] {len(plan)} cells, probes took {calib_s:.1f} s ({rates}); "
          f"estimated {_duration(total)} (max {max_call_s:g} s per call)", flush=True)

    rows: List[Dict[str, Any]] = []
    bar = Progress(max(1, round(total)), "sweep", unit="est-s")
    done = 0.0
    for (op, n, d), qs in _by_gallery(plan).items():
        notes: List[str] = []
        qm_all, ql_all, gm, gl = topk_suite.make_inputs(max(qs), n, d, dev)
        contenders = _contenders(op, gm, gl, dev, notes)
        for q in qs:
            bar.update(0, info=f"{op} Q={q} N={n} D={d}")
            rows += _run_cell(op, q, n, d, (qm_all[:q], ql_all[:q], gm, gl), contenders, notes, speeds[op],
                              max_call_s, dev, target_s)
            done += estimates[(op, q, n, d)]
            bar.update(round(done) - bar.n, info=f"{op} Q={q} N={n} D={d}")
        del contenders, qm_all, ql_all, gm, gl
    bar.close()
    print(f"[sweep] done in {_duration(time.perf_counter() - start)} (estimated {_duration(total + calib_s)})")
    print(format_summary(rows))
    out_dir = getattr(config, "out_dir", None)
    if out_dir is not None:
        path = Path(out_dir) / PNG_NAME
        if plot_grid(rows, path):
            print(f"[sweep] wrote {path}")
        else:
            print("[sweep] matplotlib not installed: no sweep_grid.png (pip install matplotlib)")
    return rows


def _by_gallery(plan: Sequence[Tuple[str, int, int, int]]) -> Dict[Tuple[str, int, int], List[int]]:
    groups: Dict[Tuple[str, int, int], List[int]] = {}
    for op, q, n, d in plan:
        groups.setdefault((op, n, d), []).append(q)
    return groups


def _cell_estimate(cell: Tuple[str, int, int, int], speeds: Dict[str, Speed], max_call_s: float,
                   target_s: float) -> float:
    op, q, n, d = cell
    total = 0.0
    for peer, speed in speeds.items():
        call = estimate_call_s(speed, op, q, n, d)
        if call <= max_call_s or peer in ALWAYS_RUN:
            total += estimate_measurement_s(call, q, target_s)
    return total


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _run_cell(op: str, q: int, n: int, d: int, inputs: topk_suite.Inputs, contenders: List[Contender],
              gallery_notes: List[str], speeds: Dict[str, Speed], max_call_s: float, dev: str,
              target_s: float) -> List[Dict[str, Any]]:
    qm, ql, gm, gl = inputs
    sub = min(q, CHECK_QUERIES)
    notes = list(gallery_notes)
    # Skip what would take too long, then check the rest on the first queries (timing that call).
    active: List[Tuple[Contender, float]] = []
    results: Dict[str, Any] = {}
    for c in contenders:
        est = estimate_call_s(speeds.get(c.peer), op, q, n, d)
        if est > max_call_s and c.peer not in ALWAYS_RUN:
            notes.append(f"{c.peer} skipped: estimated {est:.0f} s per call > max_call_s {max_call_s:g}")
            continue
        try:
            _call(c, qm[:sub], ql[:sub])  # a KeOps formula compiles here, not in the timed call
            with torch.no_grad():
                start = time.perf_counter()
                results[c.name] = c.fn(qm[:sub], ql[:sub])
                _sync(dev)
                t_sub = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            if c.peer == "pcmekit" or c.baseline:
                raise
            notes.append(_keops.describe_error(err) if c.keops is not None else f"{c.peer} failed: {err}")
            continue
        scaled = t_sub * q / sub  # an overestimate where a call gains from batching queries
        if q > sub and scaled > 2 * max_call_s and c.peer not in ALWAYS_RUN:
            notes.append(f"{c.peer} skipped: its call on {sub} queries took {t_sub:.2f} s, about "
                         f"{scaled:.0f} s for {q} > 2 x max_call_s {max_call_s:g}")
            del results[c.name]
            continue
        active.append((c, t_sub if q <= sub else min(est, scaled)))
    agreement = _agreement(op, results, (qm[:sub], ql[:sub], gm, gl)) if results else ""
    case = (f"top-{K} csd Q={q} N={n} D={d} fp32" if op == "topk" else f"csd matrix Q={q} N={n} D={d} fp32 fwd")
    if not active:
        print(f"[sweep] {case}: no contender ran ({'; '.join(notes)})")
        return []
    # Time.
    with torch.no_grad():
        fns = [(lambda c=c: c.fn(qm, ql)) for c, _ in active]
        timings = interleaved_adaptive(fns, [est for _, est in active], dev, target_s)
    flops = _flops(q, n, d)
    lead = next((c.name for c, _ in active if c.peer == "pcmekit"), active[0][0].name)
    rows = []
    for (c, _), (seconds, calls) in zip(active, timings):
        extra: List[str] = [c.note]
        compile_s: Optional[float] = None
        if c.keops is not None:
            compile_s, compile_note = _keops.take_compile(c.keops.key)
            extra.append(compile_note)
        extra.append(f"median of {calls} timed calls")
        extra.append(agreement)
        if c.name == lead:
            extra += notes
        r = row(SUITE, case, c.name, seconds, baseline=c.baseline, flops=flops, queries_per_s=q / seconds,
                notes="; ".join(x for x in extra if x))
        r.update(op=op, q=q, n=n, d=d, repeats=calls, compile_s=compile_s)
        rows.append(r)
    return rows


def _agreement(op: str, results: Dict[str, Any], inputs: topk_suite.Inputs) -> str:
    if op == "topk":
        return topk_suite.check_agreement(results, inputs)
    qm, ql, gm, gl = inputs
    truth = reference.pairwise_distance_fast(qm.double(), ql.double(), gm.double(), gl.double(), "csd").cpu()
    values = list(results.values())
    _check_close(values[0], values[-1], truth, f"csd matrix Q={qm.shape[0]} rows")
    return f"checked {qm.shape[0]} rows against float64"


# ---------------------------------------------------------------------------------------------
# Summary and plot.


def _speedups(rows: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, int, int, int], Dict[str, float]]:
    """Per cell: pcmekit's ms (``pcmekit``: :func:`pcmekit.topk`; ``GalleryIndex``: the prepared
    index, when it ran) and each peer's ms over its pcmekit partner's (the speed-up of pcmekit):
    torch against pcmekit.topk (both from raw tensors), faiss and KeOps against GalleryIndex
    (all three keep gallery-side state built outside the timing)."""
    cellwise: Dict[Tuple[str, int, int, int], Dict[str, float]] = {}
    for r in rows:
        if r.get("suite") != SUITE:
            continue
        peer = r["impl"].split()[0]
        cellwise.setdefault((r["op"], r["q"], r["n"], r["d"]), {})[peer] = r["median_ms"]
    out: Dict[Tuple[str, int, int, int], Dict[str, float]] = {}
    for cell, times in cellwise.items():
        if "pcmekit" not in times:
            continue
        ours = times["pcmekit"]
        prepared = times.get(INDEX, ours)
        entry = {"pcmekit": ours}
        if INDEX in times:
            entry[INDEX] = prepared
        for p, t in times.items():
            if p not in ("pcmekit", INDEX):
                entry[p] = t / (prepared if p in PREPARED_PEERS else ours)
        out[cell] = entry
    return out


def format_summary(rows: Sequence[Dict[str, Any]]) -> str:
    """Per operation: a line per (Q, N, D) with pcmekit's ms and each peer's speed-up column;
    ``<`` marks a cell where some peer is at least as fast as pcmekit, ``-`` a peer not run."""
    table = _speedups(rows)
    lines: List[str] = []
    for op in OPS:
        sel = sorted((c for c in table if c[0] == op), key=lambda c: (c[2], c[1], c[3]))
        if not sel:
            continue
        peers = [p for p in ("torch", "faiss", "keops") if any(p in table[c] for c in sel)]
        indexed = any(INDEX in table[c] for c in sel)
        what = f"top-{K} CSD" if op == "topk" else "CSD matrix"
        lines.append(f"sweep summary, {what}: peer time / pcmekit time (> 1: pcmekit faster; '<': pcmekit not ahead)")
        if indexed:
            lines.append(f"  torch against pcmekit.topk (both from raw tensors); {', '.join(PREPARED_PEERS)} against "
                         f"{INDEX}, which like them prepares the gallery outside the timing")
        header = (f"{'Q':>5} {'N':>7} {'D':>5} {'pcmekit ms':>11}" + (f" {'index ms':>9}" if indexed else "")
                  + "".join(f" {p:>8}" for p in peers))
        lines += [header, "-" * len(header)]
        behind = 0
        for cell in sel:
            entry = table[cell]
            ratios = [entry.get(p) for p in peers]
            mark = any(x is not None and x <= 1.0 for x in ratios)
            behind += mark
            index_ms = entry.get(INDEX)
            lines.append(f"{cell[1]:>5} {cell[2]:>7} {cell[3]:>5} {entry['pcmekit']:>11.3f}"
                         + ((f" {'-':>9}" if index_ms is None else f" {index_ms:>9.3f}") if indexed else "")
                         + "".join(f" {'-' if x is None else format(x, '.2f') + 'x':>8}" for x in ratios)
                         + ("  <" if mark else ""))
        lines.append(f"pcmekit ahead of every peer in {len(sel) - behind} of {len(sel)} cells")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_grid(rows: Sequence[Dict[str, Any]], path: Path) -> bool:
    """Writes the speed-up grid (module docstring) to ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return False
    table = _speedups(rows)
    if not table:
        return False
    panel_rows = sorted({(c[0], c[2]) for c in table}, key=lambda x: (OPS.index(x[0]), x[1]))
    qs = sorted({c[1] for c in table})
    colors = {"torch": "#d62728", "faiss": "#2ca02c", "keops": "#9467bd"}
    fig, axes = plt.subplots(len(panel_rows), len(qs), figsize=(3.2 * len(qs), 2.6 * len(panel_rows) + 0.8),
                             squeeze=False, sharex=True)
    for i, (op, n) in enumerate(panel_rows):
        for j, q in enumerate(qs):
            ax = axes[i, j]
            ds = sorted(c[3] for c in table if c[0] == op and c[2] == n and c[1] == q)
            values = [1.0]
            for peer, color in colors.items():
                pts = [(dd, table[(op, q, n, dd)][peer]) for dd in ds if peer in table[(op, q, n, dd)]]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"vs {peer}", ms=4)
                    values += [p[1] for p in pts]
            low, high = min(values) / 1.5, max(values) * 1.5
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(low, high)
            ax.axhspan(low, 1.0, color="#f2dede", alpha=0.6, zorder=0)
            ax.axhline(1.0, color="black", lw=1, ls="--")
            ax.set_yticks(_ratio_ticks(low, high))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            what = f"top-{K}" if op == "topk" else "matrix"
            ax.set_title(f"{what} N={n} Q={q}", fontsize=9)
            if ds:
                ax.set_xticks(ds)
                ax.set_xticklabels([str(x) for x in ds], fontsize=7)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("speed-up of pcmekit", fontsize=8)
            if i == len(panel_rows) - 1:
                ax.set_xlabel("D", fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=max(1, len(labels)))
    fig.suptitle("speed-up of pcmekit over each peer (peer time / pcmekit time)\n"
                 "above the dashed 1x line pcmekit is faster; in the shaded band it is slower", fontsize=9)
    top = 1 - 0.75 / fig.get_figheight()
    bottom = 0.45 / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _ratio_ticks(low: float, high: float) -> List[float]:
    """Ticks for a log axis of ratios: 1, 2, 5 per decade, or only powers of ten when that is
    more than seven."""
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    ticks = [t for t in ticks if low <= t <= high]
    if len(ticks) > 7:
        ticks = [t for t in ticks if math.isclose(math.log10(t), round(math.log10(t)))]
    return ticks


if __name__ == "__main__":  # pragma: no cover - manual use: python -m pcmekit.bench.sweep [--quick]
    from . import run_suites

    run_suites([SUITE], SweepConfig(quick="--quick" in sys.argv), None)
