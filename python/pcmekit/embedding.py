"""`ProbEmbedding`: a set of diagonal Gaussian embeddings."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

__all__ = ["CONVENTIONS", "ProbEmbedding"]

# Checkpoint conventions (docs/design.md, "Checkpoint conventions"): the default output keys of
# each codebase and what its variance field holds.
#   name: (mean key, variance key, what the variance key holds)
CONVENTIONS: Dict[str, Tuple[str, str, str]] = {
    "pcme": ("embedding", "logsigma", "log_sigma"),
    "pcmepp": ("mean", "std", "log_var"),
    "prolip": ("mean", "std", "log_var"),
}


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

    @classmethod
    def from_output(
        cls,
        output: Mapping[str, Any],
        convention: str,
        *,
        mean_key: Optional[str] = None,
        var_key: Optional[str] = None,
    ) -> "ProbEmbedding":
        """Wrap a model's output dict, converting its variance field to pcmekit's log sigma^2.

        ``convention`` names the codebase that produced ``output`` (docs/design.md,
        "Checkpoint conventions"):

        ========== ============ =========== ================================ =====================
        convention mean key     var key     the var key holds                converted with
        ========== ============ =========== ================================ =====================
        ``pcme``   "embedding"  "logsigma"  log sigma (PCME v1)              ``logvar = 2 * value``
        ``pcmepp`` "mean"       "std"       log sigma^2, despite its name    ``logvar = value``
        ``prolip`` "mean"       "std"       log sigma^2, despite its name    ``logvar = value``
        ========== ============ =========== ================================ =====================

        ``mean_key`` / ``var_key`` override the keys (PCME v1's model-level dict, for example,
        says ``"image_features"`` and ``"image_logsigma"``). The tensors are taken as they are
        (no normalisation, no copy unless the conversion needs one); they must be ``[N, D]``: a
        PCME v1 output of sampled embeddings ``[N, J, D]`` is rejected.

        Raises:
            ValueError: unknown ``convention``, or a key missing from ``output`` (the message
                names the key and the keys that are present).
        """
        if not isinstance(convention, str) or convention not in CONVENTIONS:
            raise ValueError(f"ProbEmbedding.from_output: unknown convention {convention!r}; "
                             f"expected one of {sorted(CONVENTIONS)}")
        if not isinstance(output, Mapping):
            raise TypeError(f"ProbEmbedding.from_output: output must be a dict of tensors, "
                            f"got {type(output).__name__}")
        default_mean, default_var, holds = CONVENTIONS[convention]
        keys = (mean_key or default_mean, var_key or default_var)
        for key in keys:
            if key not in output:
                raise ValueError(
                    f"ProbEmbedding.from_output(convention={convention!r}): output has no key {key!r} "
                    f"(present: {sorted(map(str, output))}); pass mean_key= / var_key= if the model "
                    "names its fields differently")
        mean, value = output[keys[0]], output[keys[1]]
        for key, t in zip(keys, (mean, value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ProbEmbedding.from_output: output[{key!r}] must be a torch.Tensor, "
                                f"got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"ProbEmbedding.from_output: output[{key!r}] must have shape [N, D], "
                                 f"got {list(t.shape)} (sampled embeddings [N, J, D] are not a Gaussian's "
                                 "parameters)")
        logvar = 2.0 * value if holds == "log_sigma" else value
        return cls(mean, logvar)

    @staticmethod
    def cat(embeddings: "list[ProbEmbedding]") -> "ProbEmbedding":
        """Concatenate along N."""
        if not embeddings:
            raise ValueError("ProbEmbedding.cat needs at least one embedding, got an empty list")
        return ProbEmbedding(
            torch.cat([e.mean for e in embeddings]), torch.cat([e.logvar for e in embeddings])
        )
