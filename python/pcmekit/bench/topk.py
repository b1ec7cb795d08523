"""Benchmark suite ``topk``: top-10 CSD retrieval, Q = 5000 queries, D = 512, float32.

Gallery sizes N = 25 000 (COCO 5K's captions) and N = 200 000 (on CUDA also N = 1 000 000);
``--quick``: Q = 256, D = 64, N = 2 000 and 16 000. Contenders, in the same run:

* ``pcmekit`` -- :func:`pcmekit.topk` (the fused streaming kernel);
* ``pcmekit GalleryIndex`` -- CPU only: :class:`pcmekit.retrieval.GalleryIndex` with its gallery
  prepared (column terms and packed GEMM operand) before the timing, as faiss's index is built;
* ``torch (chunked)`` -- :func:`pcmekit.reference.topk_chunked`, the baseline: the score matrix
  of 8192 gallery rows at a time and ``torch.topk``;
* ``faiss IndexFlatL2`` -- when ``faiss-cpu`` is importable (``pip install pcmekit[bench]``), CPU
  only: the exact L2 reduction of CSD. CSD = |mu_q - mu_g|^2 + s_q + s_g with s = sum(var), so
  with gallery rows ``[mu_g, sqrt(s_g)]`` and query rows ``[mu_q, 0]`` the squared L2 distance is
  |mu_q - mu_g|^2 + s_g, and adding s_q back gives CSD exactly. The index is built once, outside
  the timing (like the inputs of the other two); the timing covers forming the query rows, the
  search and adding s_q back. faiss uses ``torch.get_num_threads()`` OpenMP threads.
* ``keops LazyTensor`` -- when ``pykeops`` is importable (:mod:`pcmekit.bench._keops`):
  ``Kmin_argKmin`` over the exact CSD formula. Its first call of a formula compiles it (or loads
  it from KeOps' cache); that happens on the first 16 queries, before the agreement check, and is
  reported in the notes and as ``compile_s``, never timed. KeOps' CPU back end is much slower
  than the others on large problems, so it is skipped (with the estimate in the notes) when its
  timing would exceed ``KEOPS_BUDGET_S``, estimated from that first call.

Before timing, the results for the first queries (all of them with ``--quick``) are
checked: no duplicate indices; each contender's values equal the float64 CSD of the pairs it
returned (relative 1e-4); the k float64 CSDs of the pairs each contender returned agree between
contenders (so each found the true neighbours, up to near-ties within float32 rounding); the share
of identical indices is reported in the notes.

Measures per contender: median time, queries/s, GFLOP/s counted as 2 Q N D, and peak extra memory.
Peak extra memory on the CPU is measured in a fresh subprocess per contender and size: the growth
of its peak resident set size (VmHWM, reset through /proc/self/clear_refs after the inputs -- and
the faiss index -- were built) during one call, so it counts the outputs and every temporary but
not the inputs; where clear_refs is not writable it falls back to ru_maxrss and says so. On CUDA
it is the allocator's peak above the memory in use before the call.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import reference
from ..retrieval import GalleryIndex, topk
from . import BenchConfig, _keops, median_time, row
from ._memory import cuda_peak_mb, peak_rss_mb

SUITE = "topk"
K = 10
CHUNK = 8192  # gallery rows per chunk of the torch baseline (reference.topk_chunked's default)
KEOPS_BUDGET_S = 120.0  # the most seconds KeOps' warm-up and timed calls may take in one case
KEOPS_PROBE_QUERIES = 16

Inputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(q: int, n: int, d: int, device: str = "cpu", seed: int = 0) -> Inputs:
    """Unit-norm means and log-variances around -4 (sigma ~ 0.14), float32: q_mean, q_logvar,
    g_mean, g_logvar."""
    g = torch.Generator().manual_seed(seed)

    def side(rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
        mean = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)
        logvar = torch.randn(rows, d, generator=g) * 0.5 - 4.0
        return mean.to(device), logvar.to(device)

    return (*side(q), *side(n))  # type: ignore[return-value]


def faiss_module() -> Optional[Any]:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def ours(qm: torch.Tensor, ql: torch.Tensor, gm: torch.Tensor, gl: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return topk(qm, ql, gm, gl, K, "csd")  # type: ignore[return-value]


def baseline(
    qm: torch.Tensor, ql: torch.Tensor, gm: torch.Tensor, gl: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    return reference.topk_chunked(qm, ql, gm, gl, K, "csd", chunk_size=CHUNK)


class PreparedIndex:
    """CSD top-k through :class:`pcmekit.retrieval.GalleryIndex`, whose gallery is copied in and
    prepared (column terms, packed operand) before the timing, as faiss's index is built: the
    fair partner of faiss and KeOps, which also keep gallery-side terms between calls."""

    def __init__(self, gm: torch.Tensor, gl: torch.Tensor) -> None:
        self.index = GalleryIndex("csd", device=gm.device, dtype=gm.dtype)
        self.index.add(gm, gl)
        self.index.search(gm[:1], gl[:1], 1)  # prepares the gallery

    def __call__(self, qm: torch.Tensor, ql: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.index.search(qm, ql, K)  # type: ignore[return-value]


class FaissCSD:
    """CSD top-k through faiss ``IndexFlatL2`` on the exact L2 reduction (module docstring)."""

    def __init__(self, faiss: Any, gm: torch.Tensor, gl: torch.Tensor) -> None:
        self.faiss = faiss
        faiss.omp_set_num_threads(torch.get_num_threads())
        rows = torch.cat([gm, gl.exp().sum(1, keepdim=True).sqrt()], dim=1).contiguous()
        self.index = faiss.IndexFlatL2(rows.shape[1])
        self.index.add(rows.numpy())
        self.bytes = rows.numel() * rows.element_size()

    def __call__(self, qm: torch.Tensor, ql: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = torch.cat([qm, qm.new_zeros(qm.shape[0], 1)], dim=1).contiguous()
        dist, idx = self.index.search(rows.numpy(), K)
        values = torch.from_numpy(dist) + ql.exp().sum(1, keepdim=True)
        return values, torch.from_numpy(idx)


# ---------------------------------------------------------------------------------------------
# Agreement before timing.


def _true_csd(
    qm: torch.Tensor, ql: torch.Tensor, gm: torch.Tensor, gl: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """float64 CSD of the pairs (query i, gallery idx[i, j]), ``[Q, k]``."""
    qm, ql = qm.double().cpu(), ql.double().cpu()
    idx = idx.cpu()
    rows_m = gm[idx.reshape(-1)].double().cpu().view(*idx.shape, -1)
    rows_l = gl[idx.reshape(-1)].double().cpu().view(*idx.shape, -1)
    delta = qm[:, None, :] - rows_m
    return (delta * delta).sum(-1) + ql.exp().sum(-1, keepdim=True) + rows_l.exp().sum(-1)


def check_agreement(results: Dict[str, Tuple[torch.Tensor, torch.Tensor]], inputs: Inputs) -> str:
    """Raises when a contender is wrong; returns a note on how often the indices are identical."""
    qm, ql, gm, gl = inputs
    rows = next(iter(results.values()))[0].shape[0]
    qm, ql = qm[:rows], ql[:rows]
    truths = {}
    for name, (values, indices) in results.items():
        values, indices = values.cpu(), indices.cpu()
        if values.shape != (rows, K) or indices.shape != (rows, K):
            shapes = f"{list(values.shape)} and {list(indices.shape)}"
            raise AssertionError(f"{name}: expected [{rows}, {K}] values and indices, got {shapes}")
        if bool((indices.sort(1).values[:, 1:] == indices.sort(1).values[:, :-1]).any()):
            raise AssertionError(f"{name}: duplicate indices in a row")
        truth = _true_csd(qm, ql, gm, gl, indices)
        err = ((values.double() - truth).abs() / truth.abs()).max().item()
        if err > 1e-4:
            raise AssertionError(f"{name}: its values differ from the float64 CSD of its pairs by {err:.2e} (relative)")
        truths[name] = truth.sort(1).values
    names = list(results)
    ref_name = names[0]
    for name in names[1:]:
        err = ((truths[name] - truths[ref_name]).abs() / truths[ref_name].abs()).max().item()
        if err > 1e-4:
            raise AssertionError(
                f"{name} and {ref_name} disagree: the float64 CSDs of their top-{K} differ by {err:.2e} (relative)"
            )
    ref_idx = results[ref_name][1].cpu()
    shares = [f"{name} {100 * (results[name][1].cpu() == ref_idx).double().mean().item():.2f}%" for name in names[1:]]
    return f"checked on {rows} queries; indices identical to {ref_name}'s: " + ", ".join(shares)


# ---------------------------------------------------------------------------------------------
# Peak memory (bench/_memory.py): the search counts, its inputs and the faiss index do not.


def memory_workload(args: Dict[str, Any], small: bool) -> Callable[[], Any]:
    """Builds the inputs (and the faiss index) of one contender, returns the call to measure."""
    q, n, d = (16, 64, 8) if small else (args["q"], args["n"], args["d"])
    if small and args["impl"] == "keops":
        d = args["d"]  # the same KeOps formula, so the warm-up loads it instead of compiling another
    inputs = make_inputs(q, n, d, seed=1 if small else 0)
    if args["impl"] == "faiss":
        index = FaissCSD(faiss_module(), inputs[2], inputs[3])
        call = lambda: index(inputs[0], inputs[1])  # noqa: E731
    elif args["impl"] == "index":
        prepared = PreparedIndex(inputs[2], inputs[3])
        call = lambda: prepared(inputs[0], inputs[1])  # noqa: E731
    elif args["impl"] == "keops":
        lazy, why = _keops.load()
        if lazy is None:
            raise RuntimeError(why)
        kcsd = _keops.KeOpsCSD(lazy, inputs[2], inputs[3], K)
        call = lambda: kcsd(inputs[0], inputs[1])  # noqa: E731
    else:
        fn = ours if args["impl"] == "ours" else baseline
        call = lambda: fn(*inputs)  # noqa: E731

    def run() -> Any:
        with torch.no_grad():
            return call()

    return run


# ---------------------------------------------------------------------------------------------


def _sizes(config: BenchConfig) -> Tuple[int, int, List[int]]:
    if config.quick:
        return 256, 64, [2_000, 16_000]
    ns = [25_000, 200_000] + ([1_000_000] if config.device.startswith("cuda") else [])
    return 5000, 512, ns


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    # Threads: pcmekit follows torch.get_num_threads() (set by --threads), faiss is given as many.
    q, d, ns = _sizes(config)
    faiss = None if config.device.startswith("cuda") else faiss_module()
    rows: List[Dict[str, Any]] = []
    for n in ns:
        rows += _run_case(config, q, n, d, faiss)
    return rows


def _run_case(config: BenchConfig, q: int, n: int, d: int, faiss: Optional[Any]) -> List[Dict[str, Any]]:
    dev = config.device
    on_cuda = dev.startswith("cuda")
    inputs = make_inputs(q, n, d, dev)
    qm, ql, gm, gl = inputs
    Search = Callable[[torch.Tensor, torch.Tensor], Any]
    contenders: Dict[str, Tuple[str, Search, str]] = {
        "pcmekit": ("ours", lambda a, b: ours(a, b, gm, gl), ""),
        "torch (chunked)": ("base", lambda a, b: baseline(a, b, gm, gl), f"chunks of {CHUNK} gallery rows"),
    }
    if not on_cuda:  # the prepared gallery is a CPU feature; on CUDA the index runs pcmekit.topk
        contenders["pcmekit GalleryIndex"] = ("index", PreparedIndex(gm, gl), "gallery prepared before the timing, like faiss's index")
    if faiss is not None:
        faiss_index = FaissCSD(faiss, gm, gl)
        build = f"exact L2 reduction; index build not timed (index {faiss_index.bytes / 1e6:.0f} MB)"
        contenders["faiss IndexFlatL2"] = ("faiss", faiss_index, build)
    keops_note, compile_s = _add_keops(contenders, inputs, config)

    # Agreement on the first queries, before any timing.
    check_rows = q if config.quick else min(q, 500)
    with torch.no_grad():
        results = {name: fn(qm[:check_rows], ql[:check_rows]) for name, (_, fn, _) in contenders.items()}
    agreement = check_agreement(results, inputs)
    del results
    if faiss is None and not on_cuda:
        agreement += "; faiss-cpu not installed (pip install faiss-cpu)"
    if keops_note and "keops LazyTensor" not in contenders:
        agreement += "; " + keops_note

    case = f"top-{K} csd Q={q} N={n} D={d} fp32"
    flops = 2.0 * q * n * d
    rows = []
    for name, (impl, fn, note) in contenders.items():
        with torch.no_grad():
            seconds = median_time(lambda: fn(qm, ql), config.repeats, config.warmup, dev)
        peak: Optional[float]
        if on_cuda:
            with torch.no_grad():
                peak, how = cuda_peak_mb(lambda: fn(qm, ql)), "CUDA allocator peak above the inputs"
        else:
            peak, how = peak_rss_mb(__name__, {"impl": impl, "q": q, "n": n, "d": d}, timeout=3600)
        if impl == "keops":
            note = "; ".join(x for x in (note, keops_note) if x)
        notes = "; ".join(x for x in (note, how, agreement) if x)
        r = row(SUITE, case, name, seconds, baseline=impl == "base", flops=flops, peak_mb=peak,
                queries_per_s=q / seconds, notes=notes)
        if impl == "keops":
            r["compile_s"] = compile_s
        rows.append(r)
    return rows


def _add_keops(contenders: Dict[str, Tuple[str, Any, str]], inputs: Inputs, config: BenchConfig
               ) -> Tuple[str, Optional[float]]:
    """Adds the KeOps contender when pykeops works and its timing fits KEOPS_BUDGET_S; returns
    the note for its row (or, when it is left out, why) and its compile time."""
    lazy, why = _keops.load()
    if lazy is None:
        return why, None
    qm, ql, gm, gl = inputs
    try:
        kcsd = _keops.KeOpsCSD(lazy, gm, gl, K)
        fits, note, compile_s = _keops.probe(kcsd, (qm, ql), config.repeats + config.warmup, KEOPS_BUDGET_S,
                                             KEOPS_PROBE_QUERIES, config.device)
    except Exception as err:  # noqa: BLE001 - an optional peer that cannot run is reported, not fatal
        return _keops.describe_error(err), None
    if not fits:
        return note, compile_s
    contenders["keops LazyTensor"] = ("keops", kcsd, "Kmin_argKmin over the exact CSD; gallery variance sums not timed")
    return note, compile_s


if __name__ == "__main__":  # pragma: no cover - manual use: python -m pcmekit.bench.topk [--quick]
    from . import run_suites

    run_suites([SUITE], BenchConfig(quick="--quick" in sys.argv), None)
