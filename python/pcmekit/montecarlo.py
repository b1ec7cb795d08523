"""Former home of the match probability; it lives in :mod:`pcmekit.ops.match_prob`."""

from .ops.match_prob import match_logprob, match_prob

__all__ = ["match_prob", "match_logprob"]
