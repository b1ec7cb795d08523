"""Benchmark suite ``optim``: one AdamP step over a ResNet-50-shaped set of parameters.

The parameters are the 161 tensors of torchvision's ResNet-50 (53 conv weights, 53 BatchNorm
weight/bias pairs, the classifier), 25.6 M values, built from their shapes. Two gradient cases:

* ``random``: Gaussian gradients. The scale-invariance test passes only by chance (the layer view,
  for a few weights), so nearly every weight pays for both views of the test.
* ``bn-invariant``: each conv weight's gradient is orthogonal to the weight per output channel,
  as BatchNorm after the conv makes it in a real network, so the channel view passes and the
  update is projected (the common case in training).

Implementations: ``pcmekit.optim.AdamP`` fused (the C++ kernel, CPU only; on CUDA it would
time the multi-tensor fallback, so the row is left out there), multi-tensor and per-tensor, the
``adamp`` package (the baseline; skipped with a note when it is not installed) and
``torch.optim.AdamW`` (the cost of plain Adam). Before timing, ours and the reference take three
float32 steps from the same state and must agree: the multi-tensor and per-tensor paths are
identical to the reference on CPU, the fused one within 1e-5 of each tensor's largest value.
Implementations are timed in turn within each repeat, so a change in machine load hits them
alike; every timed step starts from the same weights (the optimizer state evolves), so the
bn-invariant case projects on every step. Rows report the median and, in the notes, the minimum
(the least disturbed run on a shared machine).

The fused row also states the bytes it moves per step (:func:`fused_bytes`: the first pass reads
weight, gradient and both moments and writes the moments back; the second reads weight and
moments and writes the weight; a parameter that is never projected takes one pass) and the rate
that implies; the ``plain copy, same bytes`` row times ``dst.copy_(src)`` moving as many bytes
(half read, half written), the speed of memory on this machine for that much traffic. (The fused
step can beat it: the second pass over a small parameter reads from cache, and a copy also reads
each destination line before writing it.)
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..optim import AdamP

SUITE = "optim"
HYPER: Dict[str, Any] = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
COPY = "plain copy, same bytes"


def resnet50_shapes(scale: float = 1.0, num_classes: int = 1000) -> List[Tuple[int, ...]]:
    """Parameter shapes of ResNet-50 (torchvision order), channel widths multiplied by ``scale``."""

    def width(c: int) -> int:
        return max(1, int(round(c * scale)))

    shapes: List[Tuple[int, ...]] = []

    def conv_bn(out_c: int, in_c: int, k: int) -> None:
        shapes.extend([(out_c, in_c, k, k), (out_c,), (out_c,)])

    stem = width(64)
    conv_bn(stem, 3, 7)
    in_c = stem
    for base, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        mid = width(base)
        for b in range(blocks):
            conv_bn(mid, in_c, 1)
            conv_bn(mid, mid, 3)
            conv_bn(4 * mid, mid, 1)
            if b == 0:
                conv_bn(4 * mid, in_c, 1)
            in_c = 4 * mid
    shapes.extend([(num_classes, in_c), (num_classes,)])
    return shapes


def _make_case(shapes: Sequence[Tuple[int, ...]], invariant: bool, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    weights, grads = [], []
    for shape in shapes:
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        w = torch.randn(shape, generator=gen) * (1.0 / math.sqrt(fan_in))
        g = torch.randn(shape, generator=gen) * 1e-3
        if invariant and len(shape) == 4:
            w2, g2 = w.reshape(shape[0], -1), g.reshape(shape[0], -1)
            g2 -= w2 * ((g2 * w2).sum(1, keepdim=True) / (w2 * w2).sum(1, keepdim=True))
        weights.append(w.to(device))
        grads.append(g.to(device))
    return weights, grads


def _params(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> List[torch.nn.Parameter]:
    params = []
    for w, g in zip(weights, grads):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        params.append(p)
    return params


def fused_bytes(shapes: Sequence[Tuple[int, ...]], element_size: int = 4, nesterov: bool = False) -> int:
    """Bytes the fused AdamP kernel reads and writes in one step over parameters of ``shapes``.

    A weight (dimension > 1) takes two passes: weight, gradient, exp_avg, exp_avg_sq read and
    the two moments written (6 arrays), then weight and moments read (and the gradient with
    Nesterov) and the weight written (4 or 5). Any other parameter: one pass, 4 read and 3 written.
    """
    total = 0
    for shape in shapes:
        n = math.prod(shape)
        arrays = 6 + 4 + int(nesterov) if len(shape) > 1 else 7
        total += arrays * n * element_size
    return total


def _copy_of(nbytes: int, device: str) -> Callable[[], Any]:
    """A plain ``dst.copy_(src)`` that moves ``nbytes`` (half read, half written)."""
    n = max(1, nbytes // 8)  # float32 elements per buffer
    src = torch.ones(n, device=device)
    dst = torch.empty(n, device=device)
    return lambda: dst.copy_(src)


def _check(weights, grads, reference_cls, fused: bool) -> Dict[str, str]:
    """Three steps of each implementation from the same start; per implementation of ours, how
    far it is from the reference (raises when more than 1e-5 of a tensor's largest value)."""
    runs = {
        "pcmekit AdamP (foreach)": lambda ps: AdamP(ps, foreach=True, **HYPER),
        "pcmekit AdamP (per-tensor)": lambda ps: AdamP(ps, foreach=False, **HYPER),
    }
    if fused:
        runs["pcmekit AdamP (fused)"] = lambda ps: AdamP(ps, fused=True, **HYPER)
    if reference_cls is not None:
        runs["adamp"] = lambda ps: reference_cls(ps, **HYPER)
    results = {}
    for name, make in runs.items():
        ps = _params(weights, grads)
        opt = make(ps)
        for _ in range(3):
            opt.step()
        results[name] = ps
    base_name = "adamp" if "adamp" in results else "pcmekit AdamP (per-tensor)"
    base = results[base_name]
    notes = {}
    for name, ps in results.items():
        if name == base_name:
            continue
        worst = 0.0
        for a, b in zip(ps, base):
            scale = b.detach().abs().max().item() + 1e-30
            diff = (a.detach() - b.detach()).abs().max().item() / scale
            if diff > 1e-5:
                raise AssertionError(f"optim bench: {name} differs from the reference by {diff:.2e} (relative)")
            worst = max(worst, diff)
        identical = all(torch.equal(a, b) for a, b in zip(ps, base))
        what = "adamp" if base_name == "adamp" else "the per-tensor path"
        notes[name] = f"results identical to {what}" if identical else f"max rel. diff to {what} {worst:.1e}"
    return notes


def _time_interleaved(
    steps: Dict[str, Callable[[], Any]],
    reset: Dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: str,
) -> Dict[str, Tuple[float, float]]:
    """(median, min) seconds of each step; ``reset[name]()`` runs untimed before every step."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for name, fn in steps.items():
        for _ in range(warmup):
            reset[name]()
            fn()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(max(1, repeats)):
        for name, fn in steps.items():
            reset[name]()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def run(quick: Any = False, repeats: int = 20, *, device: Optional[str] = None) -> List[Dict[str, Any]]:
    """Times one optimizer step of each implementation; one dict per (case, implementation).

    ``quick`` uses a ResNet-50 with about a third of the channels (about 10x fewer values). A
    ``pcmekit.bench.BenchConfig`` is accepted in place of ``quick`` (its quick, repeats, warmup and
    device are used).
    """
    warmup = 3
    if hasattr(quick, "quick"):  # called by the harness with a BenchConfig
        config = quick
        quick, repeats, device = config.quick, config.repeats, config.device
        warmup = max(warmup, getattr(config, "warmup", warmup))
    device = device or "cpu"
    try:
        import adamp as reference  # the package the issue compares against
    except ImportError:
        reference = None

    shapes = resnet50_shapes(0.32, 320) if quick else resnet50_shapes()
    numel = sum(math.prod(s) for s in shapes)
    rows: List[Dict[str, Any]] = []
    for case_name, invariant in (("random grads", False), ("bn-invariant grads", True)):
        case = f"resnet50-shaped {len(shapes)} tensors {numel / 1e6:.1f}M params, {case_name}, fp32"
        weights, grads = _make_case(shapes, invariant, device)
        fused = not device.startswith("cuda")  # no CUDA kernel: fused=True would time foreach
        agreement = _check(weights, grads, None if reference is None else reference.AdamP, fused)

        params: Dict[str, List[torch.nn.Parameter]] = {}
        optimizers: Dict[str, Any] = {}
        makers: Dict[str, Callable[[Any], torch.optim.Optimizer]] = {}
        if fused:
            makers["pcmekit AdamP (fused)"] = lambda ps: AdamP(ps, fused=True, **HYPER)
        makers.update({
            "pcmekit AdamP (foreach)": lambda ps: AdamP(ps, foreach=True, **HYPER),
            "pcmekit AdamP (per-tensor)": lambda ps: AdamP(ps, foreach=False, **HYPER),
        })
        if reference is not None:
            makers["adamp 0.3.0"] = lambda ps: reference.AdamP(ps, **HYPER)
        makers["torch AdamW (default)"] = lambda ps: torch.optim.AdamW(ps, **HYPER)
        for name, make in makers.items():
            params[name] = _params(weights, grads)
            optimizers[name] = make(params[name])

        def restore(ps: List[torch.nn.Parameter]) -> Callable[[], None]:
            # Every timed step starts from the same weights (the optimizer state still evolves),
            # so that the bn-invariant gradients stay orthogonal to the weights they meet.
            def fn() -> None:
                with torch.no_grad():
                    for p, w in zip(ps, weights):
                        p.copy_(w)

            return fn

        moved = fused_bytes(shapes)
        steps: Dict[str, Callable[[], Any]] = {k: o.step for k, o in optimizers.items()}
        resets: Dict[str, Callable[[], Any]] = {k: restore(params[k]) for k in optimizers}
        if fused:  # the speed of memory for the fused step's traffic, timed in turn with the rest
            steps[COPY] = _copy_of(moved, device)
            resets[COPY] = lambda: None
        timings = _time_interleaved(steps, resets, repeats, warmup, device)
        medians = {k: t[0] for k, t in timings.items()}

        ours = optimizers["pcmekit AdamP (foreach)"]
        fired = [k for k in ours.last_projection[0] if k is not None]
        projected = f"projected: {fired.count('channel')} channel, {fired.count('layer')} layer of " \
                    f"{sum(1 for s in shapes if len(s) > 1)} weights"
        base_ms = medians.get("adamp 0.3.0")
        for impl, seconds in medians.items():
            notes = [f"min {timings[impl][1] * 1e3:.1f} ms"]
            if impl.startswith("pcmekit"):
                notes.append(agreement[impl])
                if impl.endswith("(foreach)"):
                    notes.append(projected)
            if impl == "pcmekit AdamP (fused)":
                notes.append(f"moves {moved / 1e9:.2f} GB/step: {moved / seconds / 1e9:.1f} GB/s (median), "
                             f"{moved / timings[impl][1] / 1e9:.1f} GB/s (min)")
            if impl == COPY:
                notes.append(f"dst.copy_(src) moving the fused step's {moved / 1e9:.2f} GB: "
                             f"{moved / seconds / 1e9:.1f} GB/s (median), {moved / timings[impl][1] / 1e9:.1f} GB/s (min)")
            if base_ms is not None and impl != "adamp 0.3.0":
                notes.append(f"{base_ms / seconds:.2f}x vs adamp (median), "
                             f"{timings['adamp 0.3.0'][1] / timings[impl][1]:.2f}x (min)")
            if reference is None and impl.startswith("pcmekit"):
                notes.append("adamp not installed: baseline skipped")
            rows.append(
                {
                    "suite": SUITE,
                    "case": case,
                    "impl": impl,
                    "baseline": impl == "adamp 0.3.0",
                    "median_ms": seconds * 1e3,
                    "gflops": None,
                    "speedup": None,
                    "peak_mb": None,
                    "notes": "; ".join(notes),
                }
            )
        del optimizers, params
    return rows


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r['case']:60s} {r['impl']:28s} {r['median_ms']:9.2f} ms  {r['notes']}")
