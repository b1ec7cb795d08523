"""Losses for probabilistic cross-modal embeddings, and the mixed-sample augmentation they use.

* :class:`PCMEPPLoss` -- PCME++ (BCE on the closed-form sampled distance, VIB, pseudo-positives).
* :class:`InfoNCELoss` -- the deterministic CLIP-style baseline on the means.
* :class:`PCMELoss` -- PCME v1's Monte-Carlo loss (match probability by sampling).
* :class:`PPCLLoss`, :class:`InclusionLoss`, :class:`ProLIPVIBLoss` -- ProLIP's three losses, and
  :class:`ProLIPLoss` the three with the weights of ProLIP's training scripts.
* :func:`distance_bce_with_logits` -- the BCE-with-logits of ``shift - scale * distance``
  (PCME++'s matching term) as one fused op over a distance matrix; :func:`pairwise_bce_loss`
  the same on ``pairwise_distance(a, b)``, distance and BCE in one op.
* :class:`OpenCLIPPCMEPPLoss` -- PCME++ with open_clip's loss interface (``logit_scale``,
  ``logit_bias``, ``output_dict``) and a ``local_loss`` distributed mode.
* :func:`mix_images` -- MixUp / CutMix of image i with image B-1-i, returning the soft match matrix.

Every loss module but the open_clip one is called as ``loss_fn(img, txt, matched=None)`` and returns
``(loss, parts)``; with ``gather=True`` it runs over the batches of all torch.distributed ranks.
"""

from __future__ import annotations

from .bce import distance_bce_with_logits, pairwise_bce_loss
from .infonce import InfoNCELoss
from .mix import mix_images
from .openclip import OpenCLIPPCMEPPLoss
from .pcme import PCMELoss
from .pcmepp import PCMEPPLoss
from .prolip import InclusionLoss, PPCLLoss, ProLIPLoss, ProLIPVIBLoss, inclusion_logits, prolip_vib_kl

__all__ = [
    "InclusionLoss",
    "InfoNCELoss",
    "OpenCLIPPCMEPPLoss",
    "PCMELoss",
    "PCMEPPLoss",
    "PPCLLoss",
    "ProLIPLoss",
    "ProLIPVIBLoss",
    "distance_bce_with_logits",
    "inclusion_logits",
    "mix_images",
    "pairwise_bce_loss",
    "prolip_vib_kl",
]
