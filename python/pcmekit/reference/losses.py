"""Pure-PyTorch losses: the test oracles and benchmark baselines of ``PCMEPPLoss`` and ProLIP's.

A literal transcription of docs/design.md ("The losses") in the shape of PCME++'s published code
(``ClosedFormSampledDistanceLoss``): plain autograd, BCE-with-logits, the pseudo-positive matrices
built per direction on explicit transposes, the KL guard as a Python ``if``. Its only shortcut is
the published one: BCE(X^T, M^T) == BCE(X, M) (a mean over the same pairs), so i2t + t2i is
computed as 2 * BCE(X, M). The CSD matrix is plain PyTorch too: the GEMM form
(``pcmekit.reference.pairwise_distance_fast``, the fastest we know: the baseline) or, with
``naive=True``, the broadcast form (``pairwise_distance_naive``, the float64 oracle).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .pairwise import inclusion_logit_naive, pairwise_distance_fast, pairwise_distance_naive

__all__ = [
    "inclusion_loss_reference",
    "pcmepp_loss_reference",
    "ppcl_loss_reference",
    "ppcl_prolip_form_reference",
    "prolip_loss_reference",
    "prolip_vib_reference",
]

Scalar = Union[float, torch.Tensor]


def _kl_with_guard(mean: torch.Tensor, logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).mean()
    if kl > 1e4:  # PCME++: "prevent loss explosion" -- the term is ignored
        return kl.new_zeros(()), kl, True
    return kl, kl, False


def _pseudo_positive_matched(logits: torch.Tensor, matched: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Row i: g = logits[i, argmax matched[i]]; every column with logits >= g gets max(matched[i])."""
    gt_index = matched.argmax(dim=1)
    gt_label = matched.gather(1, gt_index[:, None])
    gt_logit = logits.gather(1, gt_index[:, None])
    pseudo = logits >= gt_logit
    new = matched.clone()
    new[pseudo] = gt_label.expand_as(matched)[pseudo]
    return new, int(pseudo.sum()) - matched.shape[0]


def pcmepp_loss_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    scale: Scalar = 5.0,
    shift: Scalar = 5.0,
    matched: Optional[torch.Tensor] = None,
    *,
    vib_weight: float = 1e-4,
    pp_weight: float = 0.1,
    naive: bool = False,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The PCME++ loss in plain PyTorch; same value, parts and gradients as ``PCMEPPLoss``.

    ``scale`` and ``shift`` may be floats or (0-dim, differentiable) tensors; ``matched`` is
    ``[B_img, B_txt]`` in [0, 1], the identity when ``None``. Returns ``(loss, parts)`` with the
    parts of ``PCMEPPLoss``: ``bce``, ``vib``, ``pp``, ``kl_img``, ``kl_txt``, ``vib_dropped``,
    ``n_pseudo_positives``, ``scale``, ``shift``. No argument checking: this is an oracle.
    """
    distance = pairwise_distance_naive if naive else pairwise_distance_fast
    csd = distance(img_mean, img_logvar, txt_mean, txt_logvar, "csd")
    logits = -scale * csd + shift
    if matched is None:
        matched = torch.eye(*csd.shape, dtype=csd.dtype, device=csd.device)
    matched = matched.to(csd.dtype)

    bce = 2 * F.binary_cross_entropy_with_logits(logits, matched)
    loss = bce

    kl_img_used, kl_img, dropped_img = _kl_with_guard(img_mean, img_logvar)
    kl_txt_used, kl_txt, dropped_txt = _kl_with_guard(txt_mean, txt_logvar)
    vib = kl_img_used + kl_txt_used
    if vib_weight:
        loss = loss + vib_weight * vib

    pp = logits.new_zeros(())
    n_pseudo = 0
    if pp_weight:
        matched_i2t, n_i2t = _pseudo_positive_matched(logits, matched)
        matched_t2i, n_t2i = _pseudo_positive_matched(logits.T, matched.T)
        pp = F.binary_cross_entropy_with_logits(logits, matched_i2t) + F.binary_cross_entropy_with_logits(
            logits.T, matched_t2i
        )
        n_pseudo = n_i2t + n_t2i
        loss = loss + pp_weight * pp

    as_tensor = lambda v: torch.as_tensor(v).detach().clone()  # noqa: E731
    parts = {
        "bce": bce.detach(),
        "vib": vib.detach(),
        "pp": pp.detach(),
        "kl_img": kl_img.detach(),
        "kl_txt": kl_txt.detach(),
        "vib_dropped": torch.tensor(int(dropped_img) + int(dropped_txt)),
        "n_pseudo_positives": torch.tensor(n_pseudo),
        "scale": as_tensor(scale),
        "shift": as_tensor(shift),
    }
    return loss, parts


# ---------------------------------------------------------------------------------------------
# ProLIP (docs/design.md, "The losses"): literal transcriptions in the shape of ProLIP's published
# loss (±1 labels and log-sigmoid, the quadratic a, b, c form of the inclusion test, the KL with
# log sigma in place of log sigma^2, the guards as Python ``if``s), deliberately not the
# rewritten forms pcmekit.losses.prolip computes.


def ppcl_loss_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    scale: Scalar = 5.0,
    bias: Scalar = 0.0,
    matched: Optional[torch.Tensor] = None,
    *,
    naive: bool = True,
) -> torch.Tensor:
    """PPCL as SigLIP writes it: ``-sum log sigmoid(z * (-scale * CSD + bias)) / B_img`` with
    ``z = 2 matched - 1`` (+1 on matched pairs, -1 elsewhere; ``matched`` 0/1, identity by
    default). The CSD matrix is the broadcast oracle (``naive``) or the GEMM form."""
    distance = pairwise_distance_naive if naive else pairwise_distance_fast
    csd = distance(img_mean, img_logvar, txt_mean, txt_logvar, "csd")
    if matched is None:
        matched = torch.eye(*csd.shape, dtype=csd.dtype, device=csd.device)
    labels = 2 * matched.to(csd.dtype) - 1
    logits = -scale * csd + bias
    return -F.logsigmoid(labels * logits).sum() / img_mean.shape[0]


def ppcl_prolip_form_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    logit_scale: Scalar = 10.0,
    logit_bias: Scalar = -10.0,
) -> torch.Tensor:
    """PPCL in ProLIP's own parametrisation, identity matches: logits
    ``logit_scale * (mu_i . mu_t - sum(var_i + var_t) / 2) + logit_bias`` (``logit_scale`` is the
    exponentiated parameter). Equals :func:`ppcl_loss_reference` with ``scale = logit_scale / 2``
    and ``bias = logit_bias + logit_scale`` when the means are unit-norm."""
    mu_dot = img_mean @ txt_mean.T
    var_sum = (img_logvar.exp()[:, None, :] + txt_logvar.exp()[None, :, :]).sum(-1)
    logits = logit_scale * (mu_dot - var_sum / 2) + logit_bias
    labels = 2 * torch.eye(*logits.shape, dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(labels * logits).sum() / img_mean.shape[0]


def _inclusion_reference(mu1, lv1, mu2, lv2, eps: float, scale: float) -> Tuple[torch.Tensor, bool]:
    if mu1.numel() == 0:
        return mu1.new_zeros(()), False
    term = -F.logsigmoid(scale * inclusion_logit_naive(mu1, lv1, mu2, lv2, eps)).mean()
    if term.abs() > 1e5:  # ProLIP: "inclusion loss explosion" -- the term is ignored
        return term, True
    return term, False


def inclusion_loss_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    matched: Optional[torch.Tensor] = None,
    *,
    masked_img: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    masked_txt: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    image_text_weight: float = 1e-7,
    masked_weight: float = 1e-3,
    eps: float = -10.0,
    scale: float = 1000.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """ProLIP's inclusion loss; same value, parts and gradients as ``InclusionLoss``.

    Image-caption pairs: (i, i), or the (i, j) with ``matched[i, j] == 1``. ``masked_img`` /
    ``masked_txt`` are ``(mean, logvar)`` of ``[n, D]`` masked inputs of the first n rows."""
    if matched is None:
        pi, pt = (img_mean, img_logvar), (txt_mean, txt_logvar)
    else:
        rows, cols = (matched == 1).nonzero(as_tuple=True)
        pi, pt = (img_mean[rows], img_logvar[rows]), (txt_mean[cols], txt_logvar[cols])
    zero = img_mean.new_zeros(())
    img_in_txt, drop_it = _inclusion_reference(*pi, *pt, eps, scale)
    img_in_masked, drop_im, txt_in_masked, drop_tm = zero, False, zero, False
    if masked_img is not None:
        n = masked_img[0].shape[0]
        img_in_masked, drop_im = _inclusion_reference(img_mean[:n], img_logvar[:n], *masked_img, eps, scale)
    if masked_txt is not None:
        n = masked_txt[0].shape[0]
        txt_in_masked, drop_tm = _inclusion_reference(txt_mean[:n], txt_logvar[:n], *masked_txt, eps, scale)
    loss = zero
    if not drop_it:
        loss = loss + image_text_weight * img_in_txt
    if not drop_im:
        loss = loss + masked_weight * img_in_masked
    if not drop_tm:
        loss = loss + masked_weight * txt_in_masked
    parts = {
        "img_in_txt": img_in_txt.detach(),
        "img_in_masked": img_in_masked.detach(),
        "txt_in_masked": txt_in_masked.detach(),
        "dropped": torch.tensor(int(drop_it) + int(drop_im) + int(drop_tm)),
    }
    return loss, parts


def _prolip_kl(mean: torch.Tensor, logvar: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    log_sigma = logvar / 2
    kl = -0.5 * (1 + log_sigma - mean.pow(2) - log_sigma.exp()).mean()
    if kl > 1e4:
        return kl.new_zeros(()), kl, True
    return kl, kl, False


def prolip_vib_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    weight: float = 1e-4,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """ProLIP's VIB loss; same value, parts and gradients as ``ProLIPVIBLoss``."""
    used_img, kl_img, dropped_img = _prolip_kl(img_mean, img_logvar)
    used_txt, kl_txt, dropped_txt = _prolip_kl(txt_mean, txt_logvar)
    vib = used_img + used_txt
    parts = {
        "vib": vib.detach(),
        "kl_img": kl_img.detach(),
        "kl_txt": kl_txt.detach(),
        "vib_dropped": torch.tensor(int(dropped_img) + int(dropped_txt)),
    }
    return weight * vib, parts


def prolip_loss_reference(
    img_mean: torch.Tensor,
    img_logvar: torch.Tensor,
    txt_mean: torch.Tensor,
    txt_logvar: torch.Tensor,
    scale: Scalar = 5.0,
    bias: Scalar = 0.0,
    matched: Optional[torch.Tensor] = None,
    *,
    masked_img: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    masked_txt: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ppcl_weight: float = 1.0,
    vib_weight: float = 1e-4,
    inclusion_weight: float = 1e-7,
    masked_inclusion_weight: float = 1e-3,
    inclusion_eps: float = -10.0,
    inclusion_scale: float = 1000.0,
) -> torch.Tensor:
    """ProLIP's whole objective (the value of ``ProLIPLoss``)."""
    ppcl = ppcl_loss_reference(img_mean, img_logvar, txt_mean, txt_logvar, scale, bias, matched)
    inclusion, _ = inclusion_loss_reference(
        img_mean, img_logvar, txt_mean, txt_logvar, matched, masked_img=masked_img, masked_txt=masked_txt,
        image_text_weight=inclusion_weight, masked_weight=masked_inclusion_weight, eps=inclusion_eps,
        scale=inclusion_scale,
    )
    vib, _ = prolip_vib_reference(img_mean, img_logvar, txt_mean, txt_logvar, vib_weight)
    return ppcl_weight * ppcl + inclusion + vib
