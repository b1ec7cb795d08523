"""pcmekit: fast kernels and a PyTorch layer for probabilistic cross-modal embeddings.

Every input is a diagonal Gaussian (:class:`ProbEmbedding`); the kernels compute pairwise
probabilistic distances, Monte-Carlo match probabilities and top-k retrieval on the CPU and on
CUDA.
"""

from __future__ import annotations

from . import losses, ops, reference, retrieval, zeroshot
from ._core import build_info, cuda_available, get_num_threads, set_num_threads
from .embedding import ProbEmbedding
from .losses import distance_bce_with_logits, pairwise_bce_loss
from .ops import match_logprob, match_prob, pairwise_distance, topk

__version__: str = build_info()["version"]

__all__ = [
    "ProbEmbedding",
    "build_info",
    "cuda_available",
    "distance_bce_with_logits",
    "get_num_threads",
    "losses",
    "match_logprob",
    "match_prob",
    "ops",
    "pairwise_bce_loss",
    "pairwise_distance",
    "reference",
    "retrieval",
    "set_num_threads",
    "topk",
    "zeroshot",
    "__version__",
]
