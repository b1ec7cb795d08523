#!/usr/bin/env python3
"""ProLIP's losses against their float64 references (pcmekit.reference): a table of the largest
absolute differences of the value and of the gradients, for float64 and float32 inputs.

Each loss runs on one random batch (B images and B captions, D dimensions, the first B/4 rows
masked for the inclusion terms, ProLIP's default weights except where noted) with float64 inputs
and with the same inputs rounded to float32; the reference always runs in float64 on the
float64 inputs. Gradients are taken with respect to every input the loss reads (means,
log-variances, masked inputs, and PPCL's scale and bias), and the table gives the largest
absolute difference over all of them next to the largest reference gradient.

Usage: prolip_vs_reference.py [--batch 64] [--dim 32] [--seed 0]
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import torch

from pcmekit import ProbEmbedding
from pcmekit.losses import InclusionLoss, PPCLLoss, ProLIPLoss, ProLIPVIBLoss
from pcmekit.reference import (
    inclusion_loss_reference,
    ppcl_loss_reference,
    prolip_loss_reference,
    prolip_vib_reference,
)

Run = Callable[[List[torch.Tensor]], Tuple[torch.Tensor, List[torch.Tensor]]]


def batch(b: int, d: int, seed: int) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img_mean = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt_mean = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    img_logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5 - 3.0
    txt_logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.5 - 2.5
    n = b // 4
    masked_mean = img_mean[:n] + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    masked_logvar = img_logvar[:n] + 0.5 + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return [img_mean, img_logvar, txt_mean, txt_logvar, masked_mean, masked_logvar]


def grads_of(loss: torch.Tensor, leaves: List[torch.Tensor]) -> List[torch.Tensor]:
    got = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(got, leaves)]


def ours(name: str) -> Run:
    def run(x: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        img, txt, masked = ProbEmbedding(x[0], x[1]), ProbEmbedding(x[2], x[3]), ProbEmbedding(x[4], x[5])
        dtype = x[0].dtype
        if name == "PPCL":
            fn = PPCLLoss().to(dtype)
            loss, _ = fn(img, txt)
            return loss, grads_of(loss, x[:4] + [fn.scale, fn.bias])
        if name == "Inclusion":
            loss, _ = InclusionLoss(image_text_weight=1.0, masked_weight=1.0)(img, txt, masked_img=masked)
            return loss, grads_of(loss, x)
        if name == "VIB":
            loss, _ = ProLIPVIBLoss(1.0)(img, txt)
            return loss, grads_of(loss, x[:4])
        fn = ProLIPLoss().to(dtype)
        loss, _ = fn(img, txt, masked_img=masked)
        return loss, grads_of(loss, x + [fn.ppcl.scale, fn.ppcl.bias])

    return run


def reference(name: str) -> Run:
    def run(x: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        if name == "PPCL":
            loss = ppcl_loss_reference(*x[:4], scale, bias)
            return loss, grads_of(loss, x[:4] + [scale, bias])
        if name == "Inclusion":
            loss, _ = inclusion_loss_reference(*x[:4], masked_img=(x[4], x[5]), image_text_weight=1.0, masked_weight=1.0)
            return loss, grads_of(loss, x)
        if name == "VIB":
            loss, _ = prolip_vib_reference(*x[:4], 1.0)
            return loss, grads_of(loss, x[:4])
        loss = prolip_loss_reference(*x[:4], scale, bias, masked_img=(x[4], x[5]))
        return loss, grads_of(loss, x + [scale, bias])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    inputs = batch(args.batch, args.dim, args.seed)
    print(f"B = {args.batch}, D = {args.dim}, seed {args.seed}; reference in float64")
    print(f"| loss | value (ref) | max abs grad (ref) | dtype | max abs value diff | max abs grad diff |")
    print("|---|---|---|---|---|---|")
    notes: Dict[str, str] = {
        "PPCL": "PPCLLoss()",
        "Inclusion": "InclusionLoss(1.0, 1.0), masked images",
        "VIB": "ProLIPVIBLoss(1.0)",
        "ProLIP": "ProLIPLoss(), masked images",
    }
    for name in ("PPCL", "Inclusion", "VIB", "ProLIP"):
        ref_value, ref_grads = reference(name)([t.clone().requires_grad_() for t in inputs])
        grad_scale = max(g.abs().max().item() for g in ref_grads)
        for dtype in (torch.float64, torch.float32):
            value, grads = ours(name)([t.to(dtype).requires_grad_() for t in inputs])
            dv = abs(value.double().item() - ref_value.item())
            dg = max((g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads))
            label = f"{name}: {notes[name]}"
            print(f"| {label} | {ref_value.item():.6g} | {grad_scale:.3g} | {str(dtype)[6:]} | {dv:.2e} | {dg:.2e} |")


if __name__ == "__main__":
    main()
