"""Benchmark suite ``pairwise``: the CSD matrix and a PCME++-style training step.

1. CSD distance matrix, N = M = 4096, D = 512, float32, forward only.
2. Forward + backward of BCE-with-logits on ``-5 * CSD + 5`` against the identity (the core of
   the PCME++ loss), B = 1024, D = 512, as pcmekit computes it (``pairwise_bce_loss``: the
   distance kernel and the fused BCE in one op), as ``pairwise_distance`` then
   ``distance_bce_with_logits``, and, to show the distance kernel alone, as ``pairwise_distance``
   followed by torch's BCE.

Each against ``pcmekit.reference``: ``pairwise_distance_fast`` (GEMM form), then for the loss
``pcmepp_style_loss`` (torch's BCE-with-logits), in the same process; the rows of a case are timed
in turn (a, b, c, a, b, c, ...) so that a change in machine load affects them alike.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from .. import ops, reference
from ..losses import distance_bce_with_logits, pairwise_bce_loss
from . import BenchConfig, interleaved_medians, row

SUITE = "pairwise"


def _inputs(n: int, d: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    mean = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    logvar = torch.randn(n, d, generator=g) * 0.5 - 4.0
    return mean.to(device), logvar.to(device)


def _check_close(ours: torch.Tensor, base: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    """Both implementations must agree with the float64 truth to float32 accuracy."""
    scale = truth.abs().max().item() + 1e-12
    for name, value in (("pcmekit", ours), ("torch", base)):
        err = (value.double().cpu() - truth).abs().max().item() / scale
        if err > 1e-4:
            raise AssertionError(f"{what}: {name} differs from the float64 result by {err:.2e} (relative)")


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    dev = config.device
    rows: List[Dict[str, Any]] = []

    # 1. CSD matrix.
    n, d = (1024, 512) if config.quick else (4096, 512)
    am, al = _inputs(n, d, dev, 0)
    bm, bl = _inputs(n, d, dev, 1)
    ours = ops.pairwise_distance(am, al, bm, bl, metric="csd")
    base = reference.pairwise_distance_fast(am, al, bm, bl, "csd")
    rows_check = slice(0, 256)
    truth = reference.pairwise_distance_fast(
        am[rows_check].double(), al[rows_check].double(), bm.double(), bl.double(), "csd"
    ).cpu()
    _check_close(ours[rows_check], base[rows_check], truth, "csd matrix")
    del ours, base
    case = f"csd matrix N=M={n} D={d} fp32 fwd"
    flops = 2.0 * n * n * d
    t_ours, t_base = interleaved_medians(
        [
            lambda: ops.pairwise_distance(am, al, bm, bl, metric="csd"),
            lambda: reference.pairwise_distance_fast(am, al, bm, bl, "csd"),
        ],
        config,
    )
    rows.append(row(SUITE, case, "pcmekit", t_ours, flops=flops))
    rows.append(row(SUITE, case, "torch (GEMM form)", t_base, baseline=True, flops=flops))

    # 2. PCME++-style loss, forward + backward.
    b = 256 if config.quick else 1024
    leaves = [t.requires_grad_() for t in (*_inputs(b, d, dev, 2), *_inputs(b, d, dev, 3))]

    def step(distance_fn, loss_fn=reference.pcmepp_style_loss):
        for t in leaves:
            t.grad = None
        loss = loss_fn(distance_fn(*leaves))
        loss.backward()
        return loss, [t.grad for t in leaves]

    def ours_fn(am, al, bm, bl):
        return ops.pairwise_distance(am, al, bm, bl, metric="csd")

    def base_fn(am, al, bm, bl):
        return reference.pairwise_distance_fast(am, al, bm, bl, "csd")

    def fused_step():
        for t in leaves:
            t.grad = None
        loss = pairwise_bce_loss((leaves[0], leaves[1]), (leaves[2], leaves[3]))
        loss.backward()
        return loss, [t.grad for t in leaves]

    steps = {
        "pcmekit": fused_step,
        "pcmekit distance + fused BCE": lambda: step(ours_fn, distance_bce_with_logits),
        "pcmekit distance + torch BCE": lambda: step(ours_fn),
        "torch (GEMM form)": lambda: step(base_fn),
    }
    results = {name: fn() for name, fn in steps.items()}
    loss_b, grads_b = results["torch (GEMM form)"]
    for name, (loss_o, grads_o) in results.items():
        if not torch.allclose(loss_o, loss_b, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"loss: {name} {loss_o.item()} vs torch {loss_b.item()}")
        for go, gb in zip(grads_o, grads_b):
            err = (go - gb).abs().max().item() / (gb.abs().max().item() + 1e-30)
            if err > 1e-3:
                raise AssertionError(f"loss gradients of {name} differ by {err:.2e} (relative)")
    case = f"PCME++-style loss B={b} D={d} fp32 fwd+bwd"
    flops = 6.0 * b * b * d  # one GEMM forward, two backward
    notes = {
        "pcmekit": "pairwise_bce_loss (distance and BCE in one op)",
        "pcmekit distance + fused BCE": "pairwise_distance, then distance_bce_with_logits",
        "pcmekit distance + torch BCE": "the distance kernel alone; the BCE is torch's, as in the baseline",
        "torch (GEMM form)": "",
    }
    times = interleaved_medians(list(steps.values()), config)
    for (name, _), seconds in zip(steps.items(), times):
        rows.append(row(SUITE, case, name, seconds, baseline=name.startswith("torch"), flops=flops, notes=notes[name]))
    return rows
