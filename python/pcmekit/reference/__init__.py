"""Pure-PyTorch implementations of every op: the test oracle and the benchmark baseline.

One module per op, mirroring :mod:`pcmekit.ops`: :mod:`.pairwise` (the distances),
:mod:`.match_prob` (the Monte-Carlo match probability), :mod:`.topk` (retrieval) and
:mod:`.losses` (the PCME++ and ProLIP losses). Each builds only on the ones before it, so there are no cycles.
"""

from __future__ import annotations

from .pairwise import inclusion_logit_naive, pairwise_distance_fast, pairwise_distance_naive, pcmepp_style_loss
from .match_prob import match_logprob_fast, match_logprob_naive, sample_gaussians
from .topk import topk_chunked, topk_naive, topk_scores
from .losses import (
    inclusion_loss_reference,
    pcmepp_loss_reference,
    ppcl_loss_reference,
    ppcl_prolip_form_reference,
    prolip_loss_reference,
    prolip_vib_reference,
)

__all__ = [
    "inclusion_logit_naive",
    "inclusion_loss_reference",
    "match_logprob_fast",
    "match_logprob_naive",
    "pairwise_distance_fast",
    "pairwise_distance_naive",
    "pcmepp_loss_reference",
    "pcmepp_style_loss",
    "ppcl_loss_reference",
    "ppcl_prolip_form_reference",
    "prolip_loss_reference",
    "prolip_vib_reference",
    "sample_gaussians",
    "topk_chunked",
    "topk_naive",
    "topk_scores",
]
