"""PCME's loss: the soft contrastive loss on Monte-Carlo match probabilities, plus a VIB term.

Chun et al., "Probabilistic Embeddings for Cross-Modal Retrieval", CVPR 2021 (docs/design.md, "The losses").
The match probabilities come from the fused kernel behind :func:`pcmekit.match_logprob` (log p and
log(1 - p) in log space, forward and backward); nothing of size B x B x J x J x D exists.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..embedding import ProbEmbedding
from ..ops._args import check_num_samples, draw_eps
from ..ops.match_prob import match_logprob
from .._distributed import collective_device, exchange_status, gather_rows
from ._distributed import prepare_batch, process_group_info

__all__ = ["PCMELoss"]


def _kl_sum(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over the batch and the dimensions (PCME v1)."""
    return -0.5 * (1 + logvar - mean * mean - logvar.exp()).sum()


class PCMELoss(nn.Module):
    """PCME's loss over a batch of B_img image and B_txt caption Gaussians.

    With ``log p_ij`` and ``log(1 - p_ij)`` from :func:`pcmekit.match_logprob` (J = ``num_samples``
    Monte-Carlo samples per embedding, learnable ``scale`` and ``shift``) and a match matrix ``M``
    in ``[0, 1]^{B_img x B_txt}`` (the identity by default; soft labels interpolate):

        nll_ij = -(M_ij log p_ij + (1 - M_ij) log(1 - p_ij))
        loss   = i2t + t2i + vib_weight * (KL_img + KL_txt),      i2t = t2i = sum_ij nll_ij

    **Reduction.** As in PCME v1's code, the matching term is *summed* over all B_img x B_txt pairs
    (not averaged) and counted for both directions, image-to-text and text-to-image. The two
    directions see the same pairs, labels and samples, so ``t2i == i2t`` and the matching term is
    ``2 * sum_ij nll_ij``. ``KL(x) = -1/2 sum_{i,d} (1 + logvar - mean^2 - exp(logvar))`` is summed
    over the batch and the dimensions too (PCME v1's ``kl_divergence``; PCME++ averages instead).

    **Convention.** ``p = mean_{s,t} sigmoid(-scale * d_st + shift)`` in pcmekit's convention.
    PCME v1's code uses ``exp(s) / (exp(s) + exp(-s)) = sigmoid(2 s)`` with ``s = -a d + b``, so
    its ``negative_scale`` ``a`` and ``shift`` ``b`` are half of ours: its initial 15 and 15 are
    ``init_scale = init_shift = 30`` here (the defaults). Its embeddings store ``log sigma``:
    pass ``logvar = 2 * log_sigma``.

    Args:
        num_samples: J, Monte-Carlo samples per embedding (PCME: 7).
        init_scale, init_shift: initial values of the learnable ``scale`` and ``shift``
            (``nn.Parameter``, 0-dim), in pcmekit's convention.
        vib_weight: weight of the KL (variational information bottleneck) term; PCME: 1e-5.
        squared: use squared sample distances (the variant the PCME++ repository offers).
        gather: compute the loss over the batches of all ranks of the default torch.distributed
            process group (as the other pcmekit losses; see :mod:`pcmekit.losses._distributed`).
            Each rank's noise is gathered with its embeddings, so every rank computes the same
            global loss.

    ``forward(img, txt, matched=None, *, eps_img=None, eps_txt=None, generator=None)``: ``img``
    and ``txt`` are :class:`~pcmekit.ProbEmbedding` of shapes ``[B_img, D]`` and ``[B_txt, D]``;
    ``matched`` is ``[B_img, B_txt]`` in [0, 1] (default: the identity, which needs
    B_img == B_txt) and gets no gradient. The noise ``eps_img`` ``[B_img, J, D]`` and ``eps_txt``
    ``[B_txt, J, D]`` is drawn from ``generator`` (see :func:`pcmekit.match_logprob`) unless given.
    Returns ``(loss, parts)``, ``parts`` a dict of detached 0-dim tensors: ``i2t_loss``,
    ``t2i_loss``, ``pos_loss`` and ``neg_loss`` (one direction's sums over matching and
    non-matching labels), ``vib`` (KL_img + KL_txt), ``kl_img``, ``kl_txt``, ``scale``, ``shift``.
    """

    def __init__(
        self,
        num_samples: int = 7,
        init_scale: float = 30.0,
        init_shift: float = 30.0,
        vib_weight: float = 1e-5,
        squared: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        num_samples = check_num_samples(num_samples)
        for name, value in (("init_scale", init_scale), ("init_shift", init_shift), ("vib_weight", vib_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if vib_weight < 0:
            raise ValueError(f"vib_weight must be >= 0, got {vib_weight}")
        for name, value in (("squared", squared), ("gather", gather)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.num_samples = num_samples
        self.vib_weight = float(vib_weight)
        self.squared = squared
        self.gather = gather
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, scale={self.scale.item():.4g}, "
                f"shift={self.shift.item():.4g}, vib_weight={self.vib_weight:g}, "
                f"squared={self.squared}, gather={self.gather}")

    def forward(
        self,
        img: ProbEmbedding,
        txt: ProbEmbedding,
        matched: Optional[torch.Tensor] = None,
        *,
        eps_img: Optional[torch.Tensor] = None,
        eps_txt: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        batch = prepare_batch("PCMELoss", img, txt, matched, gather=self.gather)
        assert batch.img_logvar is not None and batch.txt_logvar is not None  # need_logvar=True
        if self.gather:
            eps_img, eps_txt = self._global_noise(img, txt, eps_img, eps_txt, generator)
        else:
            for name, emb, eps in (("eps_img", img, eps_img), ("eps_txt", txt, eps_txt)):
                error = self._noise_error(name, emb, eps)
                if error is not None:
                    raise error
        log_p, log_q = match_logprob(
            batch.img_mean, batch.img_logvar, batch.txt_mean, batch.txt_logvar,
            scale=self.scale, shift=self.shift, num_samples=self.num_samples,
            eps_a=eps_img, eps_b=eps_txt, generator=generator, squared=self.squared,
        )
        if batch.matched is None:  # the identity: no B x B target
            pos = -log_p.diagonal().sum()
            neg = log_q.diagonal().sum() - log_q.sum()
        else:
            target = batch.matched.to(log_p.dtype)
            pos = -(target * log_p).sum()
            neg = -((1 - target) * log_q).sum()
        i2t = pos + neg
        t2i = i2t  # the same pairs, labels and samples seen from the caption side
        kl_img = _kl_sum(batch.img_mean, batch.img_logvar).to(i2t.dtype)
        kl_txt = _kl_sum(batch.txt_mean, batch.txt_logvar).to(i2t.dtype)
        vib = kl_img + kl_txt
        loss = i2t + t2i
        if self.vib_weight:
            loss = loss + self.vib_weight * vib
        parts = {
            "i2t_loss": i2t.detach(),
            "t2i_loss": t2i.detach(),
            "pos_loss": pos.detach(),
            "neg_loss": neg.detach(),
            "vib": vib.detach(),
            "kl_img": kl_img.detach(),
            "kl_txt": kl_txt.detach(),
            "scale": self.scale.detach().clone(),
            "shift": self.shift.detach().clone(),
        }
        return loss, parts

    def _noise_error(self, name: str, emb: ProbEmbedding, eps: Any) -> Optional[Exception]:
        """None when ``eps`` is absent or is [B, J, D] noise of the embeddings' dtype and device."""
        if eps is None:
            return None
        rows, dim = emb.mean.shape
        want = f"[B, J, D] = [{rows}, {self.num_samples}, {dim}] ({emb.mean.dtype} on {emb.mean.device})"
        if not isinstance(eps, torch.Tensor):
            return TypeError(f"{name} must be a tensor {want}, got {type(eps).__name__}")
        if (tuple(eps.shape) != (rows, self.num_samples, dim) or eps.dtype != emb.mean.dtype
                or eps.device != emb.mean.device):
            where = " this rank's" if self.gather else ""
            return ValueError(f"{name} must be{where} noise {want}, got {list(eps.shape)} ({eps.dtype} on {eps.device})")
        return None

    def _global_noise(self, img: ProbEmbedding, txt: ProbEmbedding, eps_img, eps_txt, generator):
        """This rank's noise (given or drawn) for its own rows, gathered from every rank. A rank
        whose noise is malformed raises only after the metadata exchange (every rank does), so
        that no rank is left waiting in a collective."""
        rank, _ = process_group_info("PCMELoss")
        j = self.num_samples
        local, error = [], None
        for name, emb, eps in (("eps_img", img, eps_img), ("eps_txt", txt, eps_txt)):
            rows, dim = emb.mean.shape
            problem = self._noise_error(name, emb, eps)
            if eps is None:
                eps = draw_eps(rows, j, dim, emb.mean, generator)
            elif problem is not None:
                error = error or problem
                eps = torch.zeros((rows, j, dim), dtype=emb.mean.dtype, device=emb.mean.device)
            local.append(eps.detach().reshape(rows, j * dim))
        counts = exchange_status([local[0].shape[0], local[1].shape[0]], error,
                                 collective_device(local[0].device), "PCMELoss(gather=True)", "noise")
        with torch.no_grad():
            g_img, g_txt = gather_rows(local, counts, rank)
        return g_img.view(-1, j, img.mean.shape[1]), g_txt.view(-1, j, txt.mean.shape[1])
