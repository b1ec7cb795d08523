"""The BCE losses' import path; the op lives in :mod:`pcmekit.ops.bce`."""

from ..ops.bce import _bce_op, distance_bce_with_logits, pairwise_bce_loss

__all__ = ["distance_bce_with_logits", "pairwise_bce_loss", "_bce_op"]
