"""Top-k retrieval over Gaussian embeddings."""

from ._topk import topk

__all__ = ["topk"]
