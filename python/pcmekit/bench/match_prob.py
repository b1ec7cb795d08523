"""Benchmark suite ``match_prob``: PCME's Monte-Carlo match probability, in log space.

1. ``log p`` and ``log(1 - p)`` of Q = 1000 queries against N = 5000 gallery items, D = 256,
   J = 7 samples, float32, forward only (the issue's size; ``--quick``: Q = 200, N = 1000).
2. Forward + backward of a PCME-style loss on B x B pairs (B = 512; quick: 128), D = 256, J = 7.

Each against ``pcmekit.reference.match_logprob_fast`` (chunked GEMM over samples) in the
same run, on the same noise, after checking both against a float64 result. GFLOP/s counts the
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

import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..reference import match_prob as reference_match
from ..ops.match_prob import match_logprob
from . import BenchConfig, median_time, row
from ._memory import cuda_peak_mb, peak_rss_mb

SUITE = "match_prob"
SCALE = SHIFT = 30.0
J = 7


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
    fn = _ours if args["impl"] == "ours" else _base

    def run() -> Any:
        inputs = make_inputs(q, n, d, j, "cpu")
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
    return rows


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
