"""The ops: one module per compiled kernel, mirroring csrc/ (docs/design.md, "Architecture").

Each of :mod:`~pcmekit.ops.pairwise`, :mod:`~pcmekit.ops.match_prob`, :mod:`~pcmekit.ops.topk`,
:mod:`~pcmekit.ops.bce` and :mod:`~pcmekit.ops.adamp` holds its torch custom op, the op's fake
implementation and autograd formula, the call into the core (through ``pcmekit._core``) and its
public function. :mod:`~pcmekit.ops._args` holds the argument rules they share.
"""

from __future__ import annotations

from .bce import distance_bce_with_logits, pairwise_bce_loss
from .match_prob import match_logprob, match_prob
from .pairwise import pairwise_distance
from .topk import topk

__all__ = [
    "distance_bce_with_logits",
    "match_logprob",
    "match_prob",
    "pairwise_bce_loss",
    "pairwise_distance",
    "topk",
]
