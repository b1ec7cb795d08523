"""InfoNCE: the deterministic CLIP-style baseline on the means (Radford et al., 2021)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..embedding import ProbEmbedding
from ._distributed import compute_dtype, prepare_batch

__all__ = ["InfoNCELoss"]

MAX_LOGIT_SCALE = 100.0


class InfoNCELoss(torch.nn.Module):
    """Symmetric cross-entropy over cosine similarities of the means, as CLIP trains.

    ``logits = exp(logit_scale) * normalize(img_mean) @ normalize(txt_mean).T`` with
    ``logit_scale = log(1 / temperature)`` a learnable log-parameter (CLIP's parametrisation). The
    scale is clamped at 100 in the forward pass (CLIP clamps the parameter at log 100 after each
    step; here the clamp has zero gradient instead, which stops it the same way without touching
    the parameter). ``loss = (CE_i2t + CE_t2i) / 2``.

    Args:
        init_temperature: initial temperature (> 0); CLIP's 0.07 gives a scale of about 14.3.
        learnable: when False the temperature is a fixed buffer.
        gather: compute over the batches of all ranks (as :class:`~pcmekit.losses.PCMEPPLoss`).

    ``forward(img, txt, matched=None)``: ``img``/``txt`` are :class:`~pcmekit.ProbEmbedding`
    (only the means are used; plain ``[B, D]`` tensors of means are accepted too). ``matched``
    ``[B_img, B_txt]`` in [0, 1] gives soft targets: image i's target distribution is row i of
    ``matched`` divided by its sum, caption j's is column j divided by its sum (every row and
    column needs a positive sum). Default: the identity (hard targets). Returns ``(loss, parts)``
    with detached ``i2t``, ``t2i``, ``logit_scale`` (the clamped exp) and ``temperature``.
    """

    def __init__(self, init_temperature: float = 0.07, learnable: bool = True, gather: bool = False) -> None:
        super().__init__()
        if isinstance(init_temperature, bool) or not isinstance(init_temperature, (int, float)):
            raise TypeError(f"init_temperature must be a real number, got {type(init_temperature).__name__}")
        if not (math.isfinite(init_temperature) and init_temperature > 0):
            raise ValueError(f"init_temperature must be finite and > 0, got {init_temperature}")
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable must be a bool, got {type(learnable).__name__}")
        if not isinstance(gather, bool):
            raise TypeError(f"gather must be a bool, got {type(gather).__name__}")
        value = torch.tensor(math.log(1.0 / init_temperature))
        if learnable:
            self.logit_scale = torch.nn.Parameter(value)
        else:
            self.register_buffer("logit_scale", value)
        self.gather = gather

    def extra_repr(self) -> str:
        return f"temperature={math.exp(-self.logit_scale.item()):.4g}, gather={self.gather}"

    def forward(
        self,
        img: Union[ProbEmbedding, torch.Tensor],
        txt: Union[ProbEmbedding, torch.Tensor],
        matched: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        batch = prepare_batch(
            "InfoNCELoss", img, txt, matched, gather=self.gather, need_logvar=False, positive_lines=True
        )
        img_mean, txt_mean = batch.img_mean, batch.txt_mean
        work = compute_dtype(img_mean.dtype)
        img_mean, txt_mean = img_mean.to(work), txt_mean.to(work)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).to(img_mean.dtype)
        logits = scale * (F.normalize(img_mean, dim=1) @ F.normalize(txt_mean, dim=1).T)
        if batch.matched is None:
            labels = torch.arange(logits.shape[0], device=logits.device)
            i2t = F.cross_entropy(logits, labels)
            t2i = F.cross_entropy(logits.T, labels)
        else:
            m = batch.matched.to(logits.dtype)
            i2t = _soft_cross_entropy(logits, m / m.sum(1, keepdim=True))
            t2i = _soft_cross_entropy(logits.T, (m / m.sum(0, keepdim=True)).T)
        loss = (i2t + t2i) / 2
        parts = {
            "i2t": i2t.detach(),
            "t2i": t2i.detach(),
            "logit_scale": scale.detach().clone(),
            "temperature": (1 / scale).detach(),
        }
        return loss, parts


def _soft_cross_entropy(logits: torch.Tensor, target: Any) -> torch.Tensor:
    """Mean over rows of -sum_j target[i, j] log softmax(logits[i])_j."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
