"""Top-k retrieval over Gaussian embeddings."""

from ._topk import topk
from .index import GalleryIndex, ShardedIndex

__all__ = ["topk", "GalleryIndex", "ShardedIndex"]
