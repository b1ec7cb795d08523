"""Top-k retrieval over Gaussian embeddings: :func:`topk` and the gallery indexes."""

from ..ops.topk import topk
from .index import GalleryIndex
from .sharded import ShardedIndex

__all__ = ["topk", "GalleryIndex", "ShardedIndex"]
