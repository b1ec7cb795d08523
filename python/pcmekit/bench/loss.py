"""Benchmark suite ``loss``: the PCME++ loss, forward + backward.

``PCMEPPLoss`` (fused CSD kernels + one hand-written autograd function over the B x B logits)
against ``pcmekit.reference.pcmepp_loss_reference`` (the same loss in plain PyTorch: GEMM-form
CSD, BCE-with-logits, autograd) at B = 128, 1024, 4096 (quick: 128, 512), D = 512, float32, the
identity match matrix and the default weights, in one process. Values and gradients are checked
to agree (float64, and the smooth parts in float32) before anything is timed. Each row's notes split the time into the CSD matrix (forward +
backward of the distance alone) and the rest of the loss.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .. import ops, reference
from ..embedding import ProbEmbedding
from ..losses import PCMEPPLoss
from ..reference.losses import pcmepp_loss_reference
from . import BenchConfig, interleaved_medians, row

SUITE = "loss"
D = 512


def _inputs(n: int, d: int, device: str, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    logvar = torch.randn(n, d, generator=g) * 0.5 - 4.0
    return mean.to(device), logvar.to(device)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() / (b.double().abs().max().item() + 1e-30)


def _loss_and_grads(fn: Callable[..., Any], leaves: Sequence[torch.Tensor], params: Sequence[torch.Tensor]):
    for t in [*leaves, *params]:
        t.grad = None
    loss, parts = fn(*leaves)
    loss.backward()
    return loss.detach(), parts, [t.grad for t in [*leaves, *params]]


def _check(leaves32: Sequence[torch.Tensor], device: str, case: str) -> None:
    """pcmekit against the PyTorch reference before timing.

    float64 (the first 1024 rows, to keep it quick): loss, every part and every gradient to 1e-9.
    float32 (the timed problem): the smooth parts (bce, vib) to 1e-4 and the pseudo-positive count
    to 1e-6 of the pairs -- pseudo-positive labels switch at a logit threshold, so float32
    rounding differences between two correct implementations may flip a few of them.
    """
    rows = min(leaves32[0].shape[0], 1024)
    names = ("img.mean", "img.logvar", "txt.mean", "txt.logvar", "scale", "shift")
    for dtype in (torch.float64, torch.float32):
        leaves = [(t[:rows] if dtype == torch.float64 else t).detach().to(dtype).requires_grad_() for t in leaves32]
        loss_fn = PCMEPPLoss().to(device=device, dtype=dtype)
        scale = torch.tensor(5.0, dtype=dtype, device=device, requires_grad=True)
        shift = torch.tensor(5.0, dtype=dtype, device=device, requires_grad=True)
        ours = _loss_and_grads(
            lambda im, il, tm, tl: loss_fn(ProbEmbedding(im, il), ProbEmbedding(tm, tl)), leaves, list(loss_fn.parameters())
        )
        base = _loss_and_grads(
            lambda im, il, tm, tl: pcmepp_loss_reference(im, il, tm, tl, scale, shift), leaves, [scale, shift]
        )
        if dtype == torch.float64:
            checks = [("loss", ours[0], base[0], 1e-9)]
            checks += [(k, ours[1][k], base[1][k].to(ours[1][k]), 1e-9) for k in ours[1]]
            checks += [(f"grad {n}", g, r, 1e-9) for n, g, r in zip(names, ours[2], base[2])]
        else:
            checks = [(k, ours[1][k], base[1][k], 1e-4) for k in ("bce", "vib")]
            n_pairs = leaves[0].shape[0] * leaves[2].shape[0]
            flips = abs(int(ours[1]["n_pseudo_positives"]) - int(base[1]["n_pseudo_positives"]))
            if flips > 2 + 1e-6 * n_pairs:
                raise AssertionError(f"{case}: pseudo-positive counts differ by {flips} between pcmekit and torch")
        for what, o, b, limit in checks:
            err = _rel_err(o, b)
            if err > limit:
                raise AssertionError(f"{case} ({dtype}): {what} differs between pcmekit and torch by {err:.2e} (relative)")


def _peak_mb(fn: Callable[[], Any], device: str) -> Optional[float]:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(config: BenchConfig) -> List[Dict[str, Any]]:
    dev = config.device
    rows: List[Dict[str, Any]] = []
    for b in (128, 512) if config.quick else (128, 1024, 4096):
        leaves = [t.requires_grad_() for t in (*_inputs(b, D, dev, 2 * b), *_inputs(b, D, dev, 2 * b + 1))]
        loss_fn = PCMEPPLoss().to(dev)
        scale = torch.tensor(5.0, device=dev, requires_grad=True)
        shift = torch.tensor(5.0, device=dev, requires_grad=True)
        params = [loss_fn.scale, loss_fn.shift]

        def ours_step():
            for t in leaves + params:
                t.grad = None
            loss, _ = loss_fn(ProbEmbedding(leaves[0], leaves[1]), ProbEmbedding(leaves[2], leaves[3]))
            loss.backward()

        def base_step():
            for t in leaves + [scale, shift]:
                t.grad = None
            loss, _ = pcmepp_loss_reference(leaves[0], leaves[1], leaves[2], leaves[3], scale, shift)
            loss.backward()

        case = f"PCME++ loss B={b} D={D} fp32 fwd+bwd"
        _check(leaves, dev, case)

        # The CSD matrix alone (forward + backward), to split each loss's time.
        grad_out = torch.randn(b, b, generator=torch.Generator().manual_seed(b)).to(dev) / (b * b)

        def csd_step(distance):
            for t in leaves:
                t.grad = None
            distance(*leaves).backward(grad_out)

        def ours_csd(am, al, bm, bl):
            return ops.pairwise_distance(am, al, bm, bl, metric="csd")

        def base_csd(am, al, bm, bl):
            return reference.pairwise_distance_fast(am, al, bm, bl, "csd")

        flops = 6.0 * b * b * D  # one GEMM forward, two backward
        t_ours, t_base, t_ours_csd, t_base_csd = interleaved_medians(
            [ours_step, base_step, lambda: csd_step(ours_csd), lambda: csd_step(base_csd)], config
        )
        for impl, t_all, t_csd, fn, is_base in (
            ("pcmekit PCMEPPLoss", t_ours, t_ours_csd, ours_step, False),
            ("torch reference", t_base, t_base_csd, base_step, True),
        ):
            notes = f"csd fwd+bwd {t_csd * 1e3:.2f} ms + rest {(t_all - t_csd) * 1e3:.2f} ms"
            rows.append(row(SUITE, case, impl, t_all, baseline=is_base, flops=flops, peak_mb=_peak_mb(fn, dev), notes=notes))
    return rows
