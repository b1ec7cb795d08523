"""ProLIP's losses (Chun et al., "Probabilistic Language-Image Pre-Training", 2024).

docs/design.md, "The losses", is the definition; in short, over B image and caption Gaussians:

* :class:`PPCLLoss`, the probabilistic pairwise contrastive loss: SigLIP's sigmoid loss on
  ``X = -scale * CSD(img, txt) + bias``, labels +1 on matched pairs and -1 elsewhere, summed over
  all pairs and divided by B_img. For 0/1 labels ``-log sigmoid(+-x)`` is exactly BCE-with-logits of
  x against the 0/1 target, so the loss is ``B_txt * BCE_mean(X, M)`` and runs on the fused
  :func:`pcmekit.pairwise_bce_loss` kernel (CSD and BCE in one op, forward and backward).
* :class:`InclusionLoss`: per matched pair and per dimension, ``softplus(-scale * l)`` where ``l``
  is ProLIP's inclusion logit of "image inside caption" (and of "original inside masked input"),
  averaged over pairs and dimensions; the ``inclusion`` metric of :func:`pcmekit.pairwise_distance`
  is minus the sum of the same logit over the dimensions (at eps = 0).
* :class:`ProLIPVIBLoss`: ProLIP's variational information bottleneck, PCME++'s KL to N(0, I)
  evaluated at half the log-variance.
* :class:`ProLIPLoss`: the three together with the weights of ProLIP's training scripts.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..embedding import ProbEmbedding
from ..ops.bce import pairwise_bce_loss
from ._distributed import compute_dtype, prepare_batch
from .pcmepp import _check_number, drop_exploded_kl, vib_kl

__all__ = ["InclusionLoss", "PPCLLoss", "ProLIPLoss", "ProLIPVIBLoss", "inclusion_logits", "prolip_vib_kl"]

#: ProLIP drops an inclusion term whose absolute value exceeds this (its ``loss_thres``).
INCLUSION_DROP_THRESHOLD = 1e5


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _means_and_logvars(owner: str, x: Any, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, ProbEmbedding):
        raise TypeError(f"{owner}: {name} must be a pcmekit.ProbEmbedding, got {type(x).__name__}")
    dtype = compute_dtype(x.mean.dtype)
    return x.mean.to(dtype), x.logvar.to(dtype)


# ---------------------------------------------------------------------------------------------
# PPCL


class PPCLLoss(torch.nn.Module):
    """ProLIP's probabilistic pairwise contrastive loss (docs/design.md, "The losses").

    ``loss = sum over all (i, j) of -log sigmoid(z_ij * (-scale * CSD_ij + bias)) / B_img`` with
    ``z = +1`` on matched pairs and ``-1`` elsewhere; computed as ``B_txt * BCE_mean(X, M)`` by the
    fused CSD + BCE kernel (:func:`pcmekit.pairwise_bce_loss`), the same number.

    Args:
        init_scale: initial ``scale`` (> 0), learned as is (not through a log).
        init_bias: initial ``bias``.
        gather: compute over the batches of all ranks (as :class:`~pcmekit.losses.PCMEPPLoss`);
            B_img is then the global number of images.

    ProLIP writes the logits as ``s * (mu_i . mu_t - sum(var_i + var_t) / 2) + b`` on L2-normalised
    means, with ``s = exp(logit_scale)`` starting at 10 and ``b`` at -10 (its SigLIP start). For
    unit-norm means that is ``-(s / 2) * CSD + (s + b)``, so the defaults here, ``scale = 5`` and
    ``bias = 0``, are ProLIP's starting logits exactly; other values convert as
    ``scale = s / 2, bias = b + s``. Means that are not unit-norm are fine (it is then PCME++'s
    CSD logit with SigLIP's loss), but ProLIP's dot-product form no longer equals it.

    ``forward(img, txt, matched=None)``: :class:`~pcmekit.ProbEmbedding` ``[B_img, D]`` and
    ``[B_txt, D]``; ``matched`` ``[B_img, B_txt]`` in [0, 1] (default the identity). With 0/1
    entries it is ProLIP's ±1 labelling; fractional entries interpolate as BCE does (a soft label
    y weighs ``-log sigmoid(x)`` by y and ``-log sigmoid(-x)`` by 1 - y). Returns
    ``(loss, parts)`` with detached ``ppcl``, ``scale``, ``bias``. 16-bit embeddings (CUDA)
    compute in float32.
    """

    def __init__(self, init_scale: float = 5.0, init_bias: float = 0.0, gather: bool = False) -> None:
        super().__init__()
        _check_number("init_scale", init_scale, positive=True)
        _check_number("init_bias", init_bias)
        _check_bool("gather", gather)
        self.scale = torch.nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = torch.nn.Parameter(torch.tensor(float(init_bias)))
        self.gather = gather
        self._owner = "PPCLLoss"  # the name errors give (ProLIPLoss sets its own)

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.4g}, bias={self.bias.item():.4g}, gather={self.gather}"

    def forward(
        self, img: ProbEmbedding, txt: ProbEmbedding, matched: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        batch = prepare_batch(self._owner, img, txt, matched, gather=self.gather)
        b_img = batch.img_mean.shape[0]
        bce_sum = pairwise_bce_loss(
            (batch.img_mean, batch.img_logvar),
            (batch.txt_mean, batch.txt_logvar),
            batch.matched,
            metric="csd",
            scale=self.scale,
            shift=self.bias,
            reduction="sum",
        )
        loss = bce_sum / b_img
        parts = {"ppcl": loss.detach(), "scale": self.scale.detach().clone(), "bias": self.bias.detach().clone()}
        return loss, parts


# ---------------------------------------------------------------------------------------------
# Inclusion


def inclusion_logits(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor, eps: float = -10.0
) -> torch.Tensor:
    """ProLIP's per-dimension inclusion logit of "1 is included in 2", elementwise (broadcasting).

    Large and positive when Gaussian 1 lies inside Gaussian 2 (docs/design.md, "The metrics",
    ``inclusion``). ``eps`` scales the precisions in ProLIP's Gaussian integral by ``exp(eps)``,
    which is the same as scaling the mean difference by ``exp(eps / 2)``; ProLIP trains with
    -10. With ``s1 = var1 + 2 var2`` and ``s2 = 2 var1 + var2``::

        l = lv2 - lv1 - 1/2 log(s1 / s2) - exp(eps) * (mu1 - mu2)^2 * (var1 - var2) / (s1 * s2)

    The ``inclusion`` metric's per-dimension term is ``-l`` at eps = 0.
    """
    v1, v2 = logvar1.exp(), logvar2.exp()
    s1, s2 = v1 + 2 * v2, 2 * v1 + v2
    d = mean1 - mean2
    return logvar2 - logvar1 - 0.5 * torch.log1p((v2 - v1) / s2) - math.exp(eps) * d * d * (v1 - v2) / (s1 * s2)


def _inclusion_term(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor, eps: float, scale: float
) -> torch.Tensor:
    """mean over pairs and dimensions of softplus(-scale * l(1 in 2)); 0 when there are no pairs."""
    if mean1.numel() == 0:
        return mean1.new_zeros(())
    return F.softplus(-scale * inclusion_logits(mean1, logvar1, mean2, logvar2, eps)).mean()


def _drop_exploded(term: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    dropped = term.detach().abs() > INCLUSION_DROP_THRESHOLD
    return torch.where(dropped, torch.zeros_like(term), term), dropped


class InclusionLoss(torch.nn.Module):
    """ProLIP's inclusion loss (docs/design.md, "The losses").

    ``loss = image_text_weight * I(img in txt)
    + masked_weight * (I(img in masked_img) + I(txt in masked_txt))`` where
    ``I(a in b) = mean over pairs and dimensions of softplus(-scale * l(a in b))`` and ``l`` is
    :func:`inclusion_logits`: an image should lie inside its (more general) caption, and an input
    inside its masked, more uncertain, version.

    Args:
        image_text_weight: weight of the image-in-caption term (ProLIP's ``--inclusion-alpha``,
            1e-7 in its training scripts).
        masked_weight: weight of the two original-in-masked terms (``--inclusion-alpha-occ``,
            1e-3).
        eps: precision scale of the inclusion logit (``--inclusion-eps``, -10).
        scale: sharpness of the sigmoid (``--inclusion-scale``, 1000).

    ``forward(img, txt, matched=None, *, masked_img=None, masked_txt=None)``: ``img`` and ``txt``
    are :class:`~pcmekit.ProbEmbedding`. The image-caption pairs are (i, i) when ``matched`` is
    None (B_img == B_txt) and otherwise the (i, j) with ``matched[i, j] == 1``. ``masked_img``
    ``[n, D]`` pairs with the first n images (ProLIP masks a prefix of the batch), ``masked_txt``
    likewise with the captions; a term whose input is absent is 0. A term whose absolute value
    exceeds 1e5 is dropped (0, no gradient), ProLIP's guard; ``parts["dropped"]`` counts them.
    Returns ``(loss, parts)`` with detached unweighted ``img_in_txt``, ``img_in_masked``,
    ``txt_in_masked`` and ``dropped``. No ``gather``: every term is a mean over local pairs.
    """

    def __init__(
        self,
        image_text_weight: float = 1e-7,
        masked_weight: float = 1e-3,
        eps: float = -10.0,
        scale: float = 1000.0,
    ) -> None:
        super().__init__()
        _check_number("image_text_weight", image_text_weight, non_negative=True)
        _check_number("masked_weight", masked_weight, non_negative=True)
        _check_number("eps", eps)
        _check_number("scale", scale, positive=True)
        self.image_text_weight = float(image_text_weight)
        self.masked_weight = float(masked_weight)
        self.eps = float(eps)
        self.scale = float(scale)
        self._owner = "InclusionLoss"  # the name errors give (ProLIPLoss sets its own)

    def extra_repr(self) -> str:
        return (
            f"image_text_weight={self.image_text_weight:g}, masked_weight={self.masked_weight:g}, "
            f"eps={self.eps:g}, scale={self.scale:g}"
        )

    def forward(
        self,
        img: ProbEmbedding,
        txt: ProbEmbedding,
        matched: Optional[torch.Tensor] = None,
        *,
        masked_img: Optional[ProbEmbedding] = None,
        masked_txt: Optional[ProbEmbedding] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        owner = self._owner
        batch = prepare_batch(owner, img, txt, matched, gather=False)
        assert batch.img_logvar is not None and batch.txt_logvar is not None  # prepare_batch checked
        dtype = compute_dtype(batch.img_mean.dtype)
        im, il = batch.img_mean.to(dtype), batch.img_logvar.to(dtype)
        tm, tl = batch.txt_mean.to(dtype), batch.txt_logvar.to(dtype)
        if batch.matched is None:
            pi, pt = (im, il), (tm, tl)
        else:
            rows, cols = (batch.matched == 1).nonzero(as_tuple=True)
            pi, pt = (im[rows], il[rows]), (tm[cols], tl[cols])
        terms = {"img_in_txt": _inclusion_term(*pi, *pt, self.eps, self.scale)}
        for key, own_mean, own_logvar, masked, name in (
            ("img_in_masked", im, il, masked_img, "masked_img"),
            ("txt_in_masked", tm, tl, masked_txt, "masked_txt"),
        ):
            if masked is None:
                terms[key] = im.new_zeros(())
                continue
            mm, ml = _means_and_logvars(owner, masked, name)
            n = mm.shape[0]
            if mm.dim() != 2 or mm.shape[1] != own_mean.shape[1] or n > own_mean.shape[0]:
                raise ValueError(
                    f"{owner}: {name}.mean must have shape [n, D] with n <= {own_mean.shape[0]} and "
                    f"D == {own_mean.shape[1]}, got {list(mm.shape)}"
                )
            if mm.device != own_mean.device:
                raise ValueError(f"{owner}: {name} is on {mm.device} but img is on {own_mean.device}")
            terms[key] = _inclusion_term(own_mean[:n], own_logvar[:n], mm.to(dtype), ml.to(dtype), self.eps, self.scale)
        used = {k: _drop_exploded(v) for k, v in terms.items()}
        loss = (
            self.image_text_weight * used["img_in_txt"][0]
            + self.masked_weight * (used["img_in_masked"][0] + used["txt_in_masked"][0])
        )
        parts = {k: v.detach() for k, v in terms.items()}
        parts["dropped"] = sum(d.to(torch.int64) for _, d in used.values())  # type: ignore[assignment]
        return loss, parts


# ---------------------------------------------------------------------------------------------
# VIB


def prolip_vib_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """ProLIP's VIB term of one modality: ``-1/2 mean(1 + logvar/2 - mean^2 - exp(logvar/2))``.

    PCME++'s :func:`~pcmekit.losses.pcmepp.vib_kl` (the KL of N(mean, exp(logvar)) from N(0, I),
    a mean over all B x D elements) evaluated at half the log-variance, i.e. with sigma in place
    of sigma^2. Same minimum (mean 0, logvar 0); the pull on the log-variance is
    ``(exp(logvar/2) - 1) / 4`` per element instead of ``(exp(logvar) - 1) / 2``.
    """
    return vib_kl(mean, logvar * 0.5)


class ProLIPVIBLoss(torch.nn.Module):
    """ProLIP's VIB loss: ``weight * (KL'_img + KL'_txt)`` with KL' = :func:`prolip_vib_kl`.

    Args:
        weight: ProLIP's ``--vib-beta`` (1e-4 in its training scripts; its loss class defaults to
            1e-5).

    A modality's KL' above 1e4 is dropped (0, no gradient), as in ProLIP and PCME++.
    ``forward(img, txt, matched=None)`` (``matched`` is accepted for the common call form and not
    used); returns ``(loss, parts)`` with detached ``vib`` (the used sum, unweighted), ``kl_img``,
    ``kl_txt`` (before the drop rule) and ``vib_dropped``.
    """

    def __init__(self, weight: float = 1e-4) -> None:
        super().__init__()
        _check_number("weight", weight, non_negative=True)
        self.weight = float(weight)
        self._owner = "ProLIPVIBLoss"  # the name errors give (ProLIPLoss sets its own)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"

    def forward(
        self, img: ProbEmbedding, txt: ProbEmbedding, matched: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        batch = prepare_batch(self._owner, img, txt, matched, gather=False)
        assert batch.img_logvar is not None and batch.txt_logvar is not None  # prepare_batch checked
        kl_img = prolip_vib_kl(batch.img_mean, batch.img_logvar)
        kl_txt = prolip_vib_kl(batch.txt_mean, batch.txt_logvar)
        (used_img, dropped_img), (used_txt, dropped_txt) = drop_exploded_kl(kl_img), drop_exploded_kl(kl_txt)
        vib = used_img + used_txt
        parts = {
            "vib": vib.detach(),
            "kl_img": kl_img.detach(),
            "kl_txt": kl_txt.detach(),
            "vib_dropped": dropped_img.to(torch.int64) + dropped_txt.to(torch.int64),
        }
        return self.weight * vib, parts


# ---------------------------------------------------------------------------------------------
# All three


class ProLIPLoss(torch.nn.Module):
    """ProLIP's objective: ``ppcl_weight * PPCL + inclusion + VIB`` (docs/design.md, "The losses").

    Defaults are ProLIP's training scripts (``--ppcl-lambda 1 --vib-beta 1e-4 --inclusion-alpha
    1e-7 --inclusion-alpha-occ 1e-3``, eps -10, scale 1000) and its starting logits (see
    :class:`PPCLLoss`). ``gather`` applies to the PPCL term only (the others are per-sample means).

    ``forward(img, txt, matched=None, *, masked_img=None, masked_txt=None)`` returns
    ``(loss, parts)``: the parts of the three losses (``ppcl``, ``scale``, ``bias``,
    ``img_in_txt``, ``img_in_masked``, ``txt_in_masked``, ``dropped``, ``vib``, ``kl_img``,
    ``kl_txt``, ``vib_dropped``).
    """

    def __init__(
        self,
        init_scale: float = 5.0,
        init_bias: float = 0.0,
        ppcl_weight: float = 1.0,
        vib_weight: float = 1e-4,
        inclusion_weight: float = 1e-7,
        masked_inclusion_weight: float = 1e-3,
        inclusion_eps: float = -10.0,
        inclusion_scale: float = 1000.0,
        gather: bool = False,
    ) -> None:
        super().__init__()
        _check_number("ppcl_weight", ppcl_weight, non_negative=True)
        self.ppcl = PPCLLoss(init_scale, init_bias, gather=gather)
        self.inclusion = InclusionLoss(inclusion_weight, masked_inclusion_weight, inclusion_eps, inclusion_scale)
        self.vib = ProLIPVIBLoss(vib_weight)
        self.ppcl_weight = float(ppcl_weight)
        for part in (self.ppcl, self.inclusion, self.vib):
            part._owner = "ProLIPLoss"

    def forward(
        self,
        img: ProbEmbedding,
        txt: ProbEmbedding,
        matched: Optional[torch.Tensor] = None,
        *,
        masked_img: Optional[ProbEmbedding] = None,
        masked_txt: Optional[ProbEmbedding] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        ppcl, parts = self.ppcl(img, txt, matched)
        inclusion, inclusion_parts = self.inclusion(img, txt, matched, masked_img=masked_img, masked_txt=masked_txt)
        vib, vib_parts = self.vib(img, txt, matched)
        parts.update(inclusion_parts)
        parts.update(vib_parts)
        return self.ppcl_weight * ppcl + inclusion + vib, parts
