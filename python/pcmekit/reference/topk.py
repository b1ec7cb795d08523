"""Pure-PyTorch top-k retrieval: the test oracle and the benchmark baseline.

(Part of :mod:`pcmekit.reference`.) Scores are the pairwise distances of
:func:`pcmekit.reference.pairwise_distance_fast` (smallest first) or, with ``metric="match_prob"``,
the Monte-Carlo match probability of :func:`pcmekit.reference.match_logprob_fast` (largest first).

* ``topk_naive`` builds the whole ``[Q, N]`` score matrix and sorts each row with a *stable* sort,
  so ties keep the lower gallery index first: exactly pcmekit's tie rule. The oracle.
* ``topk_chunked`` is the fastest plain-PyTorch form we know with bounded memory: the score matrix
  of ``chunk_size`` gallery rows at a time, ``torch.topk`` on it, merged with the running best k.
  ``torch.topk`` does not promise an order among ties, so this is a baseline, not an oracle.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from .match_prob import match_logprob_fast
from .pairwise import pairwise_distance_fast

__all__ = ["topk_naive", "topk_chunked", "topk_scores"]


def topk_scores(
    q_mean: torch.Tensor,
    q_logvar: Optional[torch.Tensor],
    g_mean: torch.Tensor,
    g_logvar: Optional[torch.Tensor],
    metric: str = "csd",
    **match_kwargs: Any,
) -> torch.Tensor:
    """``[Q, N]`` scores: distances, or match probabilities for ``metric="match_prob"``.

    ``match_kwargs`` (match_prob only): ``eps_q [Q, J, D]``, ``eps_g [N, J, D]``, ``scale``,
    ``shift`` and optionally ``squared``.
    """
    if metric == "match_prob":
        assert q_logvar is not None and g_logvar is not None
        log_p, _ = match_logprob_fast(
            q_mean,
            q_logvar,
            g_mean,
            g_logvar,
            match_kwargs["eps_q"],
            match_kwargs["eps_g"],
            match_kwargs["scale"],
            match_kwargs["shift"],
            match_kwargs.get("squared", False),
        )
        return torch.exp(log_p)
    return pairwise_distance_fast(q_mean, q_logvar, g_mean, g_logvar, metric)


def topk_naive(
    q_mean: torch.Tensor,
    q_logvar: Optional[torch.Tensor],
    g_mean: torch.Tensor,
    g_logvar: Optional[torch.Tensor],
    k: int,
    metric: str = "csd",
    **match_kwargs: Any,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(values [Q, k], indices [Q, k] int64)`` from the full score matrix, ties to the lower
    index (the oracle). ``scores`` may be passed in ``match_kwargs`` to rank a given matrix."""
    scores = match_kwargs.pop("scores", None)
    if scores is None:
        scores = topk_scores(q_mean, q_logvar, g_mean, g_logvar, metric, **match_kwargs)
    descending = metric == "match_prob"
    values, indices = torch.sort(scores, dim=1, descending=descending, stable=True)
    return values[:, :k], indices[:, :k]


def topk_chunked(
    q_mean: torch.Tensor,
    q_logvar: Optional[torch.Tensor],
    g_mean: torch.Tensor,
    g_logvar: Optional[torch.Tensor],
    k: int,
    metric: str = "csd",
    chunk_size: int = 8192,
    **match_kwargs: Any,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(values [Q, k], indices [Q, k] int64)`` with ``chunk_size`` gallery rows scored at a time
    (the benchmark baseline: peak extra memory ``Q * (chunk_size + 2 k)`` scores)."""
    largest = metric == "match_prob"
    best_v: Optional[torch.Tensor] = None
    best_i: Optional[torch.Tensor] = None
    eps_g = match_kwargs.get("eps_g")
    for start in range(0, g_mean.shape[0], chunk_size):
        stop = min(start + chunk_size, g_mean.shape[0])
        chunk_kwargs = dict(match_kwargs)
        if eps_g is not None:
            chunk_kwargs["eps_g"] = eps_g[start:stop]
        scores = topk_scores(
            q_mean,
            q_logvar,
            g_mean[start:stop],
            None if g_logvar is None else g_logvar[start:stop],
            metric,
            **chunk_kwargs,
        )
        v, i = torch.topk(scores, min(k, stop - start), dim=1, largest=largest, sorted=False)
        i = i + start
        if best_v is not None and best_i is not None:
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            v, pick = torch.topk(v, min(k, v.shape[1]), dim=1, largest=largest, sorted=False)
            i = torch.gather(i, 1, pick)
        best_v, best_i = v, i
    if best_v is None or best_i is None:
        empty = q_mean.new_empty((q_mean.shape[0], 0))
        return empty, empty.long()
    order = torch.argsort(best_v, dim=1, descending=largest)
    return torch.gather(best_v, 1, order), torch.gather(best_i, 1, order)
