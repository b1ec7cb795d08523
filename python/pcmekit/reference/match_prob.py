"""Pure-PyTorch Monte-Carlo match probability: the test oracle and the benchmark baseline.

(Part of :mod:`pcmekit.reference`.) Both functions compute, from given noise,

    z_as = mu_a + exp(lv_a / 2) * eps_a[:, s],   d_st = sqrt(||z_as - z_bt||^2 + 1e-6)  (or ||.||^2)
    log p = logsumexp_{s,t} logsigmoid(-scale d_st + shift) - 2 log J
    log q = logsumexp_{s,t} logsigmoid(+scale d_st - shift) - 2 log J      (q = 1 - p)

* ``match_logprob_naive`` broadcasts the sample differences to ``[N, M, J, J, D]``: a literal
  transcription of the formula (docs/design.md, "The match probability"), slow and memory-hungry, the oracle.
* ``match_logprob_fast`` is the fastest plain-PyTorch form we know that computes the same thing
  in log space: the squared distances of all sample pairs as one GEMM (``|z_a|^2 + |z_b|^2 - 2 Z_a
  Z_b^T``) over chunks of queries, in-place elementwise passes, and one log-sum-exp over each
  ``J x J`` block. It is the baseline ``pcmekit bench match_prob`` reports against.

Both are differentiable by torch's autograd (the fast form switches to out-of-place operations
when a gradient is needed). ``scale`` and ``shift`` may be Python floats or 0-d tensors.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["sample_gaussians", "match_logprob_naive", "match_logprob_fast"]

Scalar = Union[float, torch.Tensor]

DISTANCE_EPS = 1e-6


def sample_gaussians(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``[N, J, D]`` samples ``mean + exp(logvar / 2) * eps`` (the reparameterisation)."""
    return mean[:, None, :] + torch.exp(logvar / 2)[:, None, :] * eps


def match_logprob_naive(
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    eps_a: torch.Tensor,
    eps_b: torch.Tensor,
    scale: Scalar,
    shift: Scalar,
    squared: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log q)``, each ``[N, M]``, by direct broadcasting (the oracle)."""
    j = eps_a.shape[1]
    za = sample_gaussians(a_mean, a_logvar, eps_a)  # [N, J, D]
    zb = sample_gaussians(b_mean, b_logvar, eps_b)  # [M, J, D]
    diff = za[:, None, :, None, :] - zb[None, :, None, :, :]  # [N, M, J, J, D]
    sq = (diff * diff).sum(-1)
    dist = sq if squared else torch.sqrt(sq + DISTANCE_EPS)
    logit = (-scale * dist + shift).flatten(2)  # [N, M, J * J]
    log_j2 = 2.0 * math.log(j)
    log_p = torch.logsumexp(F.logsigmoid(logit), dim=-1) - log_j2
    log_q = torch.logsumexp(F.logsigmoid(-logit), dim=-1) - log_j2
    return log_p, log_q


def match_logprob_fast(
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    eps_a: torch.Tensor,
    eps_b: torch.Tensor,
    scale: Scalar,
    shift: Scalar,
    squared: bool = False,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log q)`` in the fastest plain-PyTorch form (the benchmark baseline).

    Queries are processed ``chunk_size`` at a time (default: about 2^23 sample pairs per chunk,
    the fastest setting measured on the 2-core development machine; each chunk's temporaries
    take a few times 32 MB in float32).
    """
    n, j, d = eps_a.shape
    m = b_mean.shape[0]
    za = sample_gaussians(a_mean, a_logvar, eps_a).reshape(n * j, d)
    zb = sample_gaussians(b_mean, b_logvar, eps_b).reshape(m * j, d)
    na = (za * za).sum(1)
    nb = (zb * zb).sum(1)
    log_j2 = 2.0 * math.log(j)
    if chunk_size is None:
        chunk_size = max(1, (1 << 23) // max(1, j * j * m))
    inplace = not (
        torch.is_grad_enabled()
        and any(isinstance(t, torch.Tensor) and t.requires_grad
                for t in (a_mean, a_logvar, b_mean, b_logvar, scale, shift))
    )
    zb_t = zb.T
    out_p, out_q = [], []
    for i in range(0, n, chunk_size):
        c = min(chunk_size, n - i)
        rows = slice(i * j, (i + c) * j)
        # Squared distances of every sample pair of the chunk: [c J, M J].
        x = torch.addmm(nb[None, :], za[rows], zb_t, alpha=-2)
        if inplace:
            x.add_(na[rows, None]).clamp_(min=0)
            if not squared:
                x.add_(DISTANCE_EPS).sqrt_()
            logit = x.mul_(-scale).add_(shift)
            ls_p = F.logsigmoid(logit)
            ls_q = torch.sub(ls_p, logit, out=logit)  # logsigmoid(-l) = logsigmoid(l) - l
        else:
            x = (x + na[rows, None]).clamp(min=0)
            dist = x if squared else torch.sqrt(x + DISTANCE_EPS)
            logit = -scale * dist + shift
            ls_p = F.logsigmoid(logit)
            ls_q = ls_p - logit
        out_p.append(torch.logsumexp(ls_p.view(c, j, m, j), dim=(1, 3)) - log_j2)
        out_q.append(torch.logsumexp(ls_q.view(c, j, m, j), dim=(1, 3)) - log_j2)
        del x, logit, ls_p, ls_q
    if not out_p:
        empty = a_mean.new_empty((0, m))
        return empty, empty.clone()
    return torch.cat(out_p), torch.cat(out_q)
