"""Zero-shot classification with probabilistic embeddings (PCME++ / ProLIP style).

A class is described by P prompts ("a photo of a {c}.", "a drawing of a {c}.", ...), each
encoded as a Gaussian by the text encoder: ``mean [C, P, D]`` and ``logvar [C, P, D]``
(pcmekit's log sigma^2; convert checkpoint outputs with :meth:`ProbEmbedding.from_output`).

* :func:`prompt_uncertainty` scores each prompt by the mean of its variances over D,
  ``u = mean_d exp(logvar_d)``: the same number as :meth:`ProbEmbedding.uncertainty`, the
  convention of this library (docs/design.md, "Zero-shot classification"). Dividing a sum by D
  changes no ranking, so filtering is the same for the sum over D.
* :func:`filter_prompts` keeps, per class, all but the ``drop`` most uncertain prompts.
* :func:`class_prototypes` turns each class's kept prompts into one Gaussian: the means are
  averaged and then L2-renormalised (CLIP's prompt ensembling), the variances ``exp(logvar)`` are
  averaged (and the log taken again).
* :func:`csd_logits` scores image Gaussians against the class Gaussians with
  ``-scale * CSD + shift`` (PCME++'s closed-form sampled distance, computed by
  :func:`pcmekit.pairwise_distance`).
* :func:`point_logits` scores deterministic image points against the class Gaussians:
  ``kind="csd"`` is the CSD with a zero-variance point, ``|x - mu_c|^2 + sum_d var_c``;
  ``kind="loglik"`` the Gaussian log-density ``log N(x; mu_c, diag var_c)``.

Every function takes tensors of one dtype and device and returns tensors; the class axis is
always the last axis of the logits, so ``logits.argmax(-1)`` predicts.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .embedding import ProbEmbedding
from .ops import pairwise_distance

__all__ = [
    "class_prototypes",
    "csd_logits",
    "filter_prompts",
    "point_logits",
    "prompt_uncertainty",
    "zeroshot_classifier",
]


def _check_prompts(mean: torch.Tensor, logvar: Optional[torch.Tensor]) -> None:
    if not isinstance(mean, torch.Tensor) or mean.dim() != 3:
        raise ValueError(f"prompt means must be a tensor of shape [C, P, D] (classes, prompts, dims), got "
                         f"{list(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__}")
    if logvar is not None and (not isinstance(logvar, torch.Tensor) or logvar.shape != mean.shape):
        raise ValueError(f"prompt logvars must have the means' shape {list(mean.shape)}, got "
                         f"{list(logvar.shape) if isinstance(logvar, torch.Tensor) else type(logvar).__name__}")
    if mean.shape[0] == 0 or mean.shape[1] == 0:
        raise ValueError(f"need at least one class and one prompt, got shape {list(mean.shape)}")


def prompt_uncertainty(logvar: torch.Tensor) -> torch.Tensor:
    """``[C, P]``: each prompt's uncertainty, the mean of ``exp(logvar)`` over D."""
    if not isinstance(logvar, torch.Tensor) or logvar.dim() != 3:
        raise ValueError("prompt logvars must be a tensor of shape [C, P, D]")
    return logvar.exp().mean(dim=-1)


def filter_prompts(logvar: torch.Tensor, drop: Union[int, float]) -> torch.Tensor:
    """``[C, P]`` bool mask of the prompts to keep: per class, all but the ``drop`` most uncertain.

    ``drop`` is a count (an int, 0 <= drop < P) or a fraction of P (a float in [0, 1), rounded
    down). Ties in uncertainty are broken by prompt order (the later prompt is dropped first).
    """
    u = prompt_uncertainty(logvar)
    p = u.shape[1]
    if isinstance(drop, bool) or not isinstance(drop, (int, float)):
        raise TypeError(f"drop must be an int count or a float fraction, got {drop!r}")
    if isinstance(drop, float):
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"drop as a fraction must be in [0, 1), got {drop}")
        n = int(math.floor(drop * p))
    else:
        n = drop
    if not 0 <= n < p:
        raise ValueError(f"drop must leave at least one of the P = {p} prompts per class, got drop = {n}")
    mask = torch.ones_like(u, dtype=torch.bool)
    if n:
        # A stable descending sort of the reversed prompts: the most uncertain first and, among
        # equals, the later prompt first.
        rev = torch.argsort(u.flip(1), dim=1, descending=True, stable=True)[:, :n]
        mask.scatter_(1, p - 1 - rev, False)
    return mask


def class_prototypes(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    normalize: bool = True,
) -> ProbEmbedding:
    """One Gaussian per class from its prompts' Gaussians: ``ProbEmbedding [C, D]``.

    ``mean_c = normalize(mean over kept p of mean_cp)`` (skip the L2 renormalisation with
    ``normalize=False``) and ``var_c = mean over kept p of exp(logvar_cp)``, returned as
    ``logvar_c = log var_c`` (computed as a log-sum-exp, so tiny variances do not underflow).
    ``mask [C, P]`` (bool, from :func:`filter_prompts`) selects the prompts; every class must
    keep one.
    """
    _check_prompts(mean, logvar)
    c, p, _ = mean.shape
    if mask is None:
        mask = torch.ones((c, p), dtype=torch.bool, device=mean.device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (c, p):
        raise ValueError(f"mask must be a bool tensor of shape [C, P] = {[c, p]}")
    kept = mask.sum(dim=1)
    if bool((kept == 0).any()):
        raise ValueError(f"mask keeps no prompt of class {int((kept == 0).nonzero()[0, 0])}")
    w = mask.to(mean.dtype).unsqueeze(-1)
    mu = (mean * w).sum(dim=1) / kept.to(mean.dtype).unsqueeze(-1)
    if normalize:
        mu = torch.nn.functional.normalize(mu, dim=-1)
    masked = logvar.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    lv = torch.logsumexp(masked, dim=1) - kept.to(logvar.dtype).log().unsqueeze(-1)
    return ProbEmbedding(mu, lv)


def zeroshot_classifier(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    *,
    drop: Union[int, float] = 0,
    normalize: bool = True,
) -> Tuple[ProbEmbedding, torch.Tensor]:
    """:func:`filter_prompts` then :func:`class_prototypes`: ``(prototypes [C, D], kept mask [C, P])``."""
    _check_prompts(mean, logvar)
    mask = filter_prompts(logvar, drop)
    return class_prototypes(mean, logvar, mask, normalize=normalize), mask


def csd_logits(
    images: ProbEmbedding,
    classes: ProbEmbedding,
    *,
    scale: float = 1.0,
    shift: float = 0.0,
) -> torch.Tensor:
    """``[N, C]`` logits ``-scale * CSD(image_n, class_c) + shift`` (larger is more likely).

    ``CSD = |mu_n - mu_c|^2 + sum_d (var_n + var_c)``; ``scale`` and ``shift`` are the trained
    model's (PCME++'s learnable pair; they change no argmax for ``scale > 0``, only the softmax).
    """
    return -scale * pairwise_distance(images, classes, "csd") + shift


def point_logits(x: torch.Tensor, classes: ProbEmbedding, kind: str = "loglik") -> torch.Tensor:
    """``[N, C]`` scores of deterministic points ``x [N, D]`` under the class Gaussians.

    * ``kind="loglik"``: ``log N(x; mu_c, diag var_c) = -1/2 * sum_d ((x_d - mu_cd)^2 / var_cd
      + log var_cd + log(2 pi))``, the Gaussian log-density; the expected likelihood kernel
      (the ``elk`` metric) in the limit of a zero-variance image.
    * ``kind="csd"``: ``-(|x - mu_c|^2 + sum_d var_cd)``, PCME++'s CSD with a zero-variance image.

    For ``loglik`` a class's variance trades width against height (a broad class wins far from
    every mean); for ``csd`` a larger class variance always lowers its score.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != classes.dim:
        raise ValueError(f"x must be a tensor [N, D] with D = {classes.dim}, got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if kind == "csd":
        return -(pairwise_distance(x, None, classes.mean, None, "l2") + classes.variance.sum(dim=1))
    if kind == "loglik":
        inv = (-classes.logvar).exp()                               # [C, D] 1 / var
        mu = classes.mean
        # sum_d (x - mu)^2 / var = x^2 . inv - 2 x . (mu inv) + mu^2 . inv, one GEMM per term
        quad = (x * x) @ inv.t() - 2.0 * (x @ (mu * inv).t()) + (mu * mu * inv).sum(dim=1)
        quad = quad.clamp_min(0.0)
        const = classes.logvar.sum(dim=1) + classes.dim * math.log(2.0 * math.pi)
        return -0.5 * (quad + const)
    raise ValueError(f"kind must be 'loglik' or 'csd', got {kind!r}")
