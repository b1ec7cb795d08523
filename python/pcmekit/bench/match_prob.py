"""Benchmark suite ``match_prob``: PCME's Monte-Carlo match probability, in log space.

1. ``log p`` and ``log(1 - p)`` of Q = 1000 queries against N = 5000 gallery items, D = 256,
   J = 7 samples, float32, forward only (the issue's size; ``--quick``: Q = 200, N = 1000).
2. Forward + backward of a PCME-style loss on B x B pairs (B = 512; quick: 128), D = 256, J = 7.
3. Top-10 gallery items by match probability for the queries of case 1 (the same sizes and
   noise): :func:`pcmekit.topk` with ``metric="match_prob"``.

Cases 1 and 2 run against ``pcmekit.reference.match_logprob_fast`` (chunked GEMM over samples) in
the same run, on the same noise, after checking both against a float64 result. Case 3 runs
against ``pcmekit.reference.topk_chunked`` (that GEMM on 8192 gallery rows at a time, then
``torch.topk``) and, when ``pykeops`` is importable, KeOps (:class:`pcmekit.bench._keops.
KeOpsMatchProb`: ``Kmin_argKmin`` over the J x J sample terms written out, gallery samples
formed before the timing). KeOps compiles the formula on its first call (on a few queries,
reported as ``compile_s`` and in the notes, never timed) and is skipped, with its estimated time
in the notes, when its timed calls would take more than ``KEOPS_BUDGET_S``. Each contender's
values must equal the float64 match probability of the pairs it returned, and the float64
probabilities of the returned pairs must agree between contenders. GFLOP/s counts the
sample-distance GEMM, 2 (Q J) (N J) D per forward (3x that for forward + backward). scale and
shift are PCME's initial values in pcmekit's convention (30 and 30): most random pairs have
p ~ 1e-30, as in training.

Peak memory is measured per implementation: on the CPU in a fresh subprocess, as its peak
resident set size above the size it had before creating the inputs (so it counts inputs, noise,
outputs and every temporary; the high-water mark is reset through /proc/self/clear_refs after
start-up where Linux allows it, else ru_maxrss is used and start-up may dominate); on CUDA with
torch's allocator statistics (``max_memory_allocated`` above the memory in use before the inputs).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .. import reference
from ..reference import match_prob as reference_match
from ..ops.match_prob import match_logprob
from ..retrieval import topk
from . import BenchConfig, _keops, median_time, row
from ._memory import cuda_peak_mb, peak_rss_mb

SUITE = "match_prob"
SCALE = SHIFT = 30.0
J = 7
K = 10  # case 3's top-k
KEOPS_BUDGET_S = 120.0  # the most seconds KeOps' timed calls may take in case 3
KEOPS_PROBE_QUERIES = 8


def make_inputs(q: int, n: int, d: int, j: int, device: str, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Unit-norm means, log-variances around -4 (sigma ~ 0.14) and the noise, float32."""
    g = torch.Generator().manual_seed(seed)

    def side(rows: int):
        mean = torch.nn.functional.normalize(torch.randn(rows, d, generator=g), dim=1)
        logvar = torch.randn(rows, d, generator=g) * 0.5 - 4.0
        return mean, logvar

    am, al = side(q)
    bm, bl = side(n)
    ea = torch.randn(q, j, d, generator=g)
    eb = torch.randn(n, j, d, generator=g)
    return tuple(t.to(device) for t in (am, al, bm, bl, ea, eb))


def _ours(am, al, bm, bl, ea, eb):
    return match_logprob(am, al, bm, bl, scale=SCALE, shift=SHIFT, num_samples=ea.shape[1],
                         eps_a=ea, eps_b=eb)


def _base(am, al, bm, bl, ea, eb):
    return reference_match.match_logprob_fast(am, al, bm, bl, ea, eb, SCALE, SHIFT)


def _topk_ours(am, al, bm, bl, ea, eb, k: int = K):
    return topk(am, al, bm, bl, k, metric="match_prob", scale=SCALE, shift=SHIFT, num_samples=ea.shape[1],
                eps_q=ea, eps_g=eb)


def _topk_base(am, al, bm, bl, ea, eb, k: int = K):
    return reference.topk_chunked(am, al, bm, bl, k, metric="match_prob", eps_q=ea, eps_g=eb, scale=SCALE,
                                  shift=SHIFT)


def _loss(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """PCME's soft contrastive loss with the identity as matches (summed, one direction)."""
    eye = torch.eye(log_p.shape[0], log_p.shape[1], dtype=torch.bool, device=log_p.device)
    return -(torch.where(eye, log_p, log_q)).sum()


def _train_step(fn: Callable, inputs: Tuple[torch.Tensor, ...]) -> List[Optional[torch.Tensor]]:
    leaves = [t.detach().requires_grad_() for t in inputs[:4]]
    _loss(*fn(*leaves, *inputs[4:])).backward()
    return [t.grad for t in leaves]


def _check(ours, base, truth, what: str) -> None:
    """Both within float32 accuracy of the float64 result: |err| <= 1e-4 (1 + |truth|)."""
    for name, value in (("pcmekit", ours), ("torch", base)):
        for k, (v, t) in enumerate(zip(value, truth)):
            err = ((v.double().cpu() - t).abs() / (1 + t.abs())).max().item()
            if err > 1e-4:
                raise AssertionError(f"{what}: {name} output {k} differs from float64 by {err:.2e}")


def _check_grads(ours: List[Optional[torch.Tensor]], base: List[Optional[torch.Tensor]], what: str) -> None:
    for k, (go, gb) in enumerate(zip(ours, base)):
        assert go is not None and gb is not None, f"{what}: gradient {k} missing"
        err = (go - gb).abs().max().item() / (gb.abs().max().item() + 1e-30)
        if err > 1e-3:
            raise AssertionError(f"{what}: gradient {k} differs between pcmekit and torch by {err:.2e}")


def memory_workload(args: Dict[str, Any], small: bool) -> Callable[[], Any]:
    """The call whose peak memory is measured (bench/_memory.py): it makes its inputs and noise
    too, so they are counted along with the outputs and every temporary."""
    q, n, d, j = (8, 8, 16, 2) if small else (args["q"], args["n"], args["d"], args["j"])
    impl = args["impl"]
    fn: Callable[..., Any] = {"ours": _ours, "base": _base, "topk ours": _topk_ours,
                              "topk base": _topk_base}[impl]
    k = min(K, n)

    def run() -> Any:
        inputs = make_inputs(q, n, d, j, "cpu")
        if impl.startswith("topk"):
            with torch.no_grad():
                return fn(*inputs, k=k)
        if args["backward"]:
            return _train_step(fn, inputs)
        with torch.no_grad():
            return fn(*inputs)

    return run


def _megabytes(*tensors: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    dev = config.device
    rows: List[Dict[str, Any]] = []

    # 1. Forward: Q x N pairs.
    q, n, d = (200, 1000, 256) if config.quick else (1000, 5000, 256)
    inputs = make_inputs(q, n, d, J, dev)
    with torch.no_grad():
        ours = _ours(*inputs)
        base = _base(*inputs)
        check = slice(0, 16)
        am, al, bm, bl, ea, eb = (t.double().cpu() for t in inputs)
        truth = reference_match.match_logprob_fast(am[check], al[check], bm, bl, ea[check], eb, SCALE, SHIFT)
        _check([o[check] for o in ours], [b[check] for b in base], truth, "match_logprob")
        data_mb = _megabytes(*inputs) + _megabytes(*ours)  # inputs + eps + both outputs
        del ours, base
        case = f"match_logprob Q={q} N={n} D={d} J={J} fp32 fwd"
        flops = 2.0 * (q * J) * (n * J) * d
        t_ours = median_time(lambda: _ours(*inputs), config.repeats, config.warmup, dev)
        t_base = median_time(lambda: _base(*inputs), config.repeats, config.warmup, dev)
    rows += _with_memory(case, dev, t_ours, t_base, flops, data_mb, (q, n, d), False, inputs)

    # 2. Forward + backward of a PCME-style loss over B x B pairs.
    b = 128 if config.quick else 512
    inputs = make_inputs(b, b, d, J, dev, seed=1)
    grads_o = _train_step(_ours, inputs)
    grads_b = _train_step(_base, inputs)
    _check_grads(grads_o, grads_b, "PCME-style loss")
    data_mb = _megabytes(*inputs) + 2 * b * b * 4 / 1e6  # + the two [B, B] float32 outputs
    case = f"PCME-style loss B={b} D={d} J={J} fp32 fwd+bwd"
    flops = 3 * 2.0 * (b * J) ** 2 * d
    t_ours = median_time(lambda: _train_step(_ours, inputs), config.repeats, config.warmup, dev)
    t_base = median_time(lambda: _train_step(_base, inputs), config.repeats, config.warmup, dev)
    rows += _with_memory(case, dev, t_ours, t_base, flops, data_mb, (b, b, d), True, inputs)

    # 3. Top-k by match probability, case 1's sizes.
    rows += _topk_case(config, q, n, d)
    return rows


def _true_match_prob(inputs: Tuple[torch.Tensor, ...], indices: torch.Tensor) -> torch.Tensor:
    """``[rows, k]`` float64 match probability of query i and gallery item indices[i, c]."""
    am, al, bm, bl, ea, eb = (t.double().cpu() for t in inputs)
    rows = indices.shape[0]
    out = torch.empty(indices.shape, dtype=torch.float64)
    for i in range(rows):
        sel = indices[i].cpu()
        log_p, _ = reference_match.match_logprob_fast(am[i:i + 1], al[i:i + 1], bm[sel], bl[sel], ea[i:i + 1], eb[sel],
                                                      SCALE, SHIFT)
        out[i] = log_p.exp()[0]
    return out


def check_topk_agreement(results: Dict[str, Tuple[torch.Tensor, torch.Tensor]], inputs: Tuple[torch.Tensor, ...]) -> str:
    """Raises unless every contender's values are the float64 match probabilities of the pairs it
    returned (relative 1e-4 of the largest) and the contenders found equally probable pairs (their
    float64 probabilities agree to the same bound, so near-ties may swap); returns a note with the
    share of identical indices."""
    truth = {}
    for name, (values, indices) in results.items():
        if (indices.sort(dim=1).values.diff(dim=1) == 0).any():
            raise AssertionError(f"match_prob top-{K}: {name} returned a gallery item twice")
        t = _true_match_prob(inputs, indices)
        tol = 1e-4 * t.abs().max().item() + 1e-30
        err = (values.double().cpu() - t).abs().max().item()
        if err > tol:
            raise AssertionError(f"match_prob top-{K}: {name}'s values differ from the float64 match "
                                 f"probability of its pairs by {err:.3g} (> {tol:.3g})")
        truth[name] = t
    first = next(iter(results))
    notes = []
    for name in results:
        if name == first:
            continue
        tol = 1e-4 * truth[first].abs().max().item() + 1e-30
        gap = (truth[name] - truth[first]).abs().max().item()
        if gap > tol:
            raise AssertionError(f"match_prob top-{K}: {name} and {first} found pairs whose float64 "
                                 f"probabilities differ by {gap:.3g} (> {tol:.3g})")
        same = (results[name][1].cpu() == results[first][1].cpu()).double().mean().item()
        notes.append(f"{name}: {100 * same:.1f}% identical indices")
    return "agreement on the first queries: " + ", ".join(notes) if notes else ""


def _topk_case(config: BenchConfig, q: int, n: int, d: int) -> List[Dict[str, Any]]:
    dev = config.device
    inputs = make_inputs(q, n, d, J, dev)
    k = min(K, n)
    contenders: Dict[str, Tuple[str, Callable[..., Any], str]] = {
        "pcmekit": ("topk ours", functools.partial(_topk_ours, k=k), ""),
        "torch (chunked)": ("topk base", functools.partial(_topk_base, k=k), "chunks of 8192 gallery rows, then torch.topk"),
    }
    keops_note, compile_s = _add_keops(contenders, inputs, k, config)
    check = q if config.quick else min(q, 64)
    with torch.no_grad():
        first = tuple(t[:check] for t in inputs[:2]) + tuple(inputs[2:4]) + (inputs[4][:check], inputs[5])
        results = {name: fn(*first) for name, (_, fn, _) in contenders.items()}
    agreement = check_topk_agreement(results, first)
    del results
    if keops_note and "keops LazyTensor" not in contenders:
        agreement = "; ".join(x for x in (agreement, keops_note) if x)
    case = f"top-{k} match_prob Q={q} N={n} D={d} J={J} fp32"
    flops = 2.0 * (q * J) * (n * J) * d
    out = []
    for name, (impl, fn, note) in contenders.items():
        with torch.no_grad():
            seconds = median_time(lambda: fn(*inputs), config.repeats, config.warmup, dev)
        peak: Optional[float] = None
        how = ""
        if dev.startswith("cuda"):
            with torch.no_grad():
                peak, how = cuda_peak_mb(lambda: fn(*inputs)), "CUDA allocator peak above inputs"
        elif impl != "keops":
            work = {"impl": impl, "q": q, "n": n, "d": d, "j": J, "backward": False}
            peak, how = peak_rss_mb(__name__, work, timeout=1800)
        if impl == "keops":
            how = "peak memory not measured (a fresh process would load the formula again)"
            note = "; ".join(x for x in (note, keops_note) if x)
        r = row(SUITE, case, name, seconds, baseline=impl == "topk base", flops=flops, peak_mb=peak,
                queries_per_s=q / seconds, notes="; ".join(x for x in (note, how, agreement) if x))
        if impl == "keops":
            r["compile_s"] = compile_s
        out.append(r)
    return out


def _add_keops(contenders: Dict[str, Tuple[str, Callable[..., Any], str]], inputs: Tuple[torch.Tensor, ...], k: int,
               config: BenchConfig) -> Tuple[str, Optional[float]]:
    """Adds the KeOps contender of case 3 when pykeops works and its timed calls fit
    KEOPS_BUDGET_S; returns the note for its row (or why it was left out) and its compile time."""
    lazy, why = _keops.load()
    if lazy is None:
        return why, None
    am, al, bm, bl, ea, eb = inputs
    try:
        kmp = _keops.KeOpsMatchProb(lazy, bm, bl, eb, k, SCALE, SHIFT)
        fits, note, compile_s = _keops.probe(kmp, (am, al, ea), config.repeats + config.warmup, KEOPS_BUDGET_S,
                                             KEOPS_PROBE_QUERIES, config.device)
    except Exception as err:  # noqa: BLE001 - an optional peer that cannot run is reported, not fatal
        return _keops.describe_error(err), None
    if not fits:
        return note, compile_s

    def search(qm: torch.Tensor, ql: torch.Tensor, _bm: Any, _bl: Any, eq: torch.Tensor, _eb: Any) -> Any:
        return kmp(qm, ql, eq)

    contenders["keops LazyTensor"] = ("keops", search, f"Kmin_argKmin of -p over the {J * J} sample terms; "
                                      "gallery samples formed before the timing")
    return note, compile_s


def _with_memory(case: str, dev: str, t_ours: float, t_base: float, flops: float, data_mb: float,
                 size: Tuple[int, int, int], backward: bool, inputs: Tuple[torch.Tensor, ...]) -> List[Dict[str, Any]]:
    out = []
    for impl, seconds, label in (("ours", t_ours, "pcmekit"), ("base", t_base, "torch (chunked GEMM)")):
        fn = _ours if impl == "ours" else _base
        peak: Optional[float]
        if dev.startswith("cuda"):
            if backward:
                peak = cuda_peak_mb(lambda: _train_step(fn, inputs))
            else:
                with torch.no_grad():
                    peak = cuda_peak_mb(lambda: fn(*inputs))
            how = "CUDA allocator peak above inputs"
        else:
            q, n, d = size
            work = {"impl": impl, "q": q, "n": n, "d": d, "j": J, "backward": backward}
            peak, how = peak_rss_mb(__name__, work, timeout=1800)
        ratio = "" if peak is None else f"; {peak / data_mb:.2f}x inputs+eps+outputs"
        out.append(row(SUITE, case, label, seconds, baseline=impl == "base", flops=flops, peak_mb=peak,
                       notes=f"{how}; inputs+eps+outputs {data_mb:.0f} MB{ratio}"))
    return out


if __name__ == "__main__":  # pragma: no cover - manual use: python -m pcmekit.bench.match_prob
    from . import run_suites

    run_suites([SUITE], BenchConfig(quick="--quick" in sys.argv), None)
