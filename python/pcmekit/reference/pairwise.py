"""Pure-PyTorch pairwise distances: the test oracle and the benchmark baseline.

Two forms of every pairwise metric (docs/design.md, "The metrics"):

* ``pairwise_distance_naive`` broadcasts to ``[N, M, D]`` and sums: slow and memory-hungry, but a
  literal transcription of the formulas. Tests compare the kernels against it in float64.
* ``pairwise_distance_fast`` is the fastest plain-PyTorch form we know: a GEMM plus row and
  column terms where the metric allows (csd, w2, l2, kl), chunked broadcasting otherwise. It is
  the baseline ``pcmekit bench`` reports speed-ups against; users may benchmark against it too.

Both are differentiable by torch's autograd.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["inclusion_logit_naive", "pairwise_distance_naive", "pairwise_distance_fast", "pcmepp_style_loss"]

_LOG_2PI = math.log(2.0 * math.pi)


def _logvar_or_zeros(mean: torch.Tensor, logvar: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.zeros_like(mean) if logvar is None else logvar


def _inclusion_test(mu1, lv1, mu2, lv2, eps: float):
    # log of a Gaussian integral of p1^2 p2 as ProLIP writes it (up to constants that cancel in the
    # difference below): with precisions p = exp(eps - lv), the exponent of p1(x)^2 p2(x) is
    # -(a x^2 - b x + c), and the integral's x-dependent part gives b^2 / (4 a) - 1/2 log a.
    p1 = torch.exp(eps - lv1)
    p2 = torch.exp(eps - lv2)
    a = p1 + 0.5 * p2
    b = 2 * mu1 * p1 + mu2 * p2
    c = mu1 * mu1 * p1 + 0.5 * mu2 * mu2 * p2
    return -2 * lv1 - lv2 - 0.5 * torch.log(a) + b * b / (4 * a) - c


def inclusion_logit_naive(
    mu1: torch.Tensor, lv1: torch.Tensor, mu2: torch.Tensor, lv2: torch.Tensor, eps: float = 0.0
) -> torch.Tensor:
    """ProLIP's per-dimension inclusion logit of "1 is included in 2", elementwise (broadcasting).

    ``test(1 in 2) - test(2 in 1)`` in the literal quadratic form (a, b, c of the Gaussian
    integral; docs/design.md, "The metrics"), large when 1 lies inside 2. ``eps`` multiplies the
    precisions by ``exp(eps)`` (ProLIP trains with eps = -10); the ``inclusion`` metric is minus its
    sum over the dimensions at eps = 0. Deliberately not the simplified closed form the kernels use,
    so comparing the two checks the algebra too.
    """
    return _inclusion_test(mu1, lv1, mu2, lv2, eps) - _inclusion_test(mu2, lv2, mu1, lv1, eps)


def pairwise_distance_naive(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str = "csd",
) -> torch.Tensor:
    """``[N, M]`` distances by direct broadcasting over ``[N, M, D]`` (the oracle)."""
    la = _logvar_or_zeros(a_mean, a_logvar)[:, None, :]
    lb = _logvar_or_zeros(b_mean, b_logvar)[None, :, :]
    delta = a_mean[:, None, :] - b_mean[None, :, :]
    d2 = delta * delta
    va, vb = la.exp(), lb.exp()
    if metric == "csd":
        return (d2 + va + vb).sum(-1)
    if metric == "w2":
        return (d2 + (torch.exp(la / 2) - torch.exp(lb / 2)) ** 2).sum(-1)
    if metric == "l2":
        return d2.sum(-1)
    if metric == "kl":
        return 0.5 * (va / vb + d2 / vb - 1 + lb - la).sum(-1)
    if metric == "bhattacharyya":
        s = va + vb
        return (d2 / (4 * s) + 0.5 * torch.log(s / 2) - (la + lb) / 4).sum(-1)
    if metric == "elk":
        s = va + vb
        return 0.5 * (d2 / s + torch.log(s)).sum(-1) + 0.5 * a_mean.shape[1] * _LOG_2PI
    if metric == "inclusion":
        return -inclusion_logit_naive(a_mean[:, None, :], la, b_mean[None, :, :], lb).sum(-1)
    raise ValueError(f"unknown metric {metric!r}")


def pairwise_distance_fast(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str = "csd",
    chunk_size: int = 256,
) -> torch.Tensor:
    """``[N, M]`` distances in the fastest plain-PyTorch form (the benchmark baseline).

    csd, w2, l2, kl: one matrix multiply plus per-row and per-column terms (clamped at zero, as
    none of them can be negative). bhattacharyya, elk: broadcasting over chunks of ``chunk_size``
    rows of ``a`` so memory stays bounded.
    """
    if metric in ("csd", "l2", "w2"):
        a_sq = (a_mean * a_mean).sum(1)
        b_sq = (b_mean * b_mean).sum(1)
        a_feat, b_feat = a_mean, b_mean
        if metric != "l2":
            assert a_logvar is not None and b_logvar is not None  # every metric but l2 needs them
            a_sq = a_sq + a_logvar.exp().sum(1)
            b_sq = b_sq + b_logvar.exp().sum(1)
        if metric == "w2":
            assert a_logvar is not None and b_logvar is not None
            a_feat = torch.cat([a_mean, torch.exp(a_logvar / 2)], 1)
            b_feat = torch.cat([b_mean, torch.exp(b_logvar / 2)], 1)
        # addmm fuses the row/column terms into the GEMM's output pass.
        return torch.addmm(a_sq[:, None] + b_sq[None, :], a_feat, b_feat.T, alpha=-2).clamp_min(0)
    if metric == "kl":
        assert a_logvar is not None and b_logvar is not None
        inv_vb = torch.exp(-b_logvar)
        a_feat = torch.cat([a_logvar.exp() + a_mean * a_mean, a_mean], 1)
        b_feat = torch.cat([0.5 * inv_vb, -b_mean * inv_vb], 1)
        row = -0.5 * a_logvar.sum(1) - 0.5 * a_mean.shape[1]
        col = 0.5 * (b_mean * b_mean * inv_vb + b_logvar).sum(1)
        return torch.addmm(row[:, None] + col[None, :], a_feat, b_feat.T).clamp_min(0)
    if metric in ("bhattacharyya", "elk", "inclusion"):
        assert a_logvar is not None and b_logvar is not None
        chunks = [
            pairwise_distance_naive(
                a_mean[i : i + chunk_size], a_logvar[i : i + chunk_size], b_mean, b_logvar, metric
            )
            for i in range(0, a_mean.shape[0], chunk_size)
        ]
        return torch.cat(chunks) if chunks else a_mean.new_empty((0, b_mean.shape[0]))
    raise ValueError(f"unknown metric {metric!r}")


def pcmepp_style_loss(distance: torch.Tensor, scale: float = 5.0, shift: float = 5.0) -> torch.Tensor:
    """BCE-with-logits of ``-scale * distance + shift`` against the identity match matrix, the core
    of the PCME++ loss (the pairwise benchmark's training-step workload)."""
    logits = -scale * distance + shift
    target = torch.eye(distance.shape[0], distance.shape[1], dtype=distance.dtype, device=distance.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
