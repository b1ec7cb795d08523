"""Losses for probabilistic cross-modal embeddings, and the mixed-sample augmentation they use.

* :class:`PCMEPPLoss` -- PCME++ (BCE on the closed-form sampled distance, VIB, pseudo-positives).
* :class:`InfoNCELoss` -- the deterministic CLIP-style baseline on the means.
* :class:`PCMELoss` -- PCME v1's Monte-Carlo loss (when present in this build).
* :func:`mix_images` -- MixUp / CutMix of image i with image B-1-i, returning the soft match matrix.

Every loss is called as ``loss_fn(img, txt, matched=None)`` and returns ``(loss, parts)``; with
``gather=True`` it runs over the batches of all torch.distributed ranks.
"""

from __future__ import annotations

from .infonce import InfoNCELoss
from .mix import mix_images
from .pcmepp import PCMEPPLoss

__all__ = ["InfoNCELoss", "PCMEPPLoss", "mix_images"]

try:  # PCME v1's loss lives in its own module, added separately.
    from .pcme import PCMELoss  # noqa: F401
except ModuleNotFoundError as _err:
    if _err.name != f"{__name__}.pcme":  # pcme.py exists but one of *its* imports failed: say so
        raise
else:
    __all__.append("PCMELoss")
