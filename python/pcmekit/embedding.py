"""`ProbEmbedding`: a set of diagonal Gaussian embeddings."""

from __future__ import annotations

from typing import Any, Iterator, Union

import torch

__all__ = ["ProbEmbedding"]


class ProbEmbedding:
    """N diagonal Gaussians N(mean, diag(exp(logvar))) in D dimensions.

    ``mean`` and ``logvar`` are tensors of the same shape ``[N, D]``, dtype and device.
    ``logvar`` is the log of the variance (log sigma^2) per dimension; code that stores
    log sigma instead (PCME v1's sampling convention) converts with ``logvar = 2 * log_sigma``.

    Indexing selects rows and always keeps two dimensions: ``emb[3]`` is a ``[1, D]`` embedding.
    """

    __slots__ = ("mean", "logvar")

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        for name, t in (("mean", mean), ("logvar", logvar)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ProbEmbedding {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"ProbEmbedding {name} must have shape [N, D], got {list(t.shape)}")
        if mean.shape != logvar.shape:
            raise ValueError(
                f"ProbEmbedding logvar must have the shape of mean {list(mean.shape)}, got {list(logvar.shape)}"
            )
        if mean.dtype != logvar.dtype:
            raise TypeError(f"ProbEmbedding logvar must have mean's dtype {mean.dtype}, got {logvar.dtype}")
        if mean.device != logvar.device:
            raise ValueError(f"ProbEmbedding logvar must be on mean's device {mean.device}, got {logvar.device}")
        self.mean = mean
        self.logvar = logvar

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    @property
    def dim(self) -> int:
        """D, the embedding dimension."""
        return self.mean.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def __len__(self) -> int:
        return self.mean.shape[0]

    def __getitem__(self, index: Union[int, slice, torch.Tensor, Any]) -> "ProbEmbedding":
        mean, logvar = self.mean[index], self.logvar[index]
        if mean.dim() == 1:
            mean, logvar = mean.unsqueeze(0), logvar.unsqueeze(0)
        return ProbEmbedding(mean, logvar)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # Allows ``mean, logvar = emb``.
        return iter((self.mean, self.logvar))

    def __repr__(self) -> str:
        return f"ProbEmbedding(N={len(self)}, D={self.dim}, dtype={self.dtype}, device={self.device})"

    def to(self, *args: Any, **kwargs: Any) -> "ProbEmbedding":
        """Like ``Tensor.to``, applied to both tensors."""
        return ProbEmbedding(self.mean.to(*args, **kwargs), self.logvar.to(*args, **kwargs))

    def detach(self) -> "ProbEmbedding":
        return ProbEmbedding(self.mean.detach(), self.logvar.detach())

    @property
    def variance(self) -> torch.Tensor:
        """exp(logvar), ``[N, D]``."""
        return self.logvar.exp()

    def uncertainty(self) -> torch.Tensor:
        """Per-embedding scalar uncertainty: the mean variance over D, ``[N]``."""
        return self.logvar.exp().mean(dim=1)

    @staticmethod
    def cat(embeddings: "list[ProbEmbedding]") -> "ProbEmbedding":
        """Concatenate along N."""
        if not embeddings:
            raise ValueError("ProbEmbedding.cat needs at least one embedding, got an empty list")
        return ProbEmbedding(
            torch.cat([e.mean for e in embeddings]), torch.cat([e.logvar for e in embeddings])
        )
