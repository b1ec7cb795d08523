"""Pure-PyTorch PCME++ loss: the test oracle and the benchmark baseline of ``PCMEPPLoss``.

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

from .pairwise import pairwise_distance_fast, pairwise_distance_naive

__all__ = ["pcmepp_loss_reference"]

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
