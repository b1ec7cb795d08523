"""Pure-PyTorch implementations of every op: the test oracle and the benchmark baseline.

One module per op, mirroring :mod:`pcmekit.ops`: :mod:`.pairwise` (the distances),
:mod:`.match_prob` (the Monte-Carlo match probability), :mod:`.topk` (retrieval) and
:mod:`.losses` (the PCME++ loss). Each builds only on the ones before it, so there are no cycles.
"""

from __future__ import annotations

from .pairwise import pairwise_distance_fast, pairwise_distance_naive, pcmepp_style_loss
from .match_prob import match_logprob_fast, match_logprob_naive, sample_gaussians
from .topk import topk_chunked, topk_naive, topk_scores
from .losses import pcmepp_loss_reference

__all__ = [
    "match_logprob_fast",
    "match_logprob_naive",
    "pairwise_distance_fast",
    "pairwise_distance_naive",
    "pcmepp_loss_reference",
    "pcmepp_style_loss",
    "sample_gaussians",
    "topk_chunked",
    "topk_naive",
    "topk_scores",
]
