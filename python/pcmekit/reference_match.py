"""Former home of the match-probability oracle; it lives in :mod:`pcmekit.reference.match_prob`."""

from .reference.match_prob import match_logprob_fast, match_logprob_naive, sample_gaussians

__all__ = ["sample_gaussians", "match_logprob_naive", "match_logprob_fast"]
