"""PCME++ as a drop-in for open_clip-style training loops (docs/design.md, "The open_clip drop-in").

open_clip's losses are called as ``loss(image_features, text_features, logit_scale[, logit_bias],
output_dict=False)`` -- in its training loop as ``loss(**model(images, texts), output_dict=True)``
-- and return a scalar, or a dict of terms that the loop sums. :class:`OpenCLIPPCMEPPLoss` takes
the same call with probabilistic features and returns the same kinds of result.

Distributed modes (both gather with gradients; the contract is in docs/design.md, "Distributed"):

* ``gather=True``: every rank computes the PCME++ loss of the whole global batch (as
  :class:`~pcmekit.losses.PCMEPPLoss` with ``gather=True``).
* ``gather=True, local_loss=True``: a rank computes only its own rows against the global
  columns -- its images against every caption (the image-to-text terms of its rows) and its
  captions against every image (the text-to-image terms) -- and returns ``world_size`` times its
  share of the global loss. The shares add up to the global loss, so the mean of the returned
  values over ranks is the global loss, and after DistributedDataParallel's gradient averaging
  every parameter has the single-process gradient of the global loss, as with ``gather=True``.
  Each rank forms ``(b_img + b_txt) x B`` logits instead of ``B x B``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import _distributed
from ..embedding import ProbEmbedding
from ..ops.pairwise import pairwise_distance
from ._distributed import LocalBatch, compute_dtype, prepare_batch, prepare_local_batch
from .pcmepp import _check_number, pcmepp_terms, vib_terms

__all__ = ["OpenCLIPPCMEPPLoss"]

Features = Union[torch.Tensor, ProbEmbedding, Mapping[str, torch.Tensor]]

_OWNER = "OpenCLIPPCMEPPLoss"


def _gaussians(features: Any, logvar: Any, name: str) -> ProbEmbedding:
    """One modality's Gaussians from open_clip-shaped features: a ``[B, D]`` mean with
    ``<name>_logvar``, a :class:`ProbEmbedding`, or a dict with ``"mean"`` and ``"std"`` (PCME++'s
    and ProLIP's key, which holds log sigma^2; docs/design.md, "Checkpoint conventions") or
    ``"logvar"``."""
    logvar_name = name.replace("_features", "_logvar")
    if isinstance(features, ProbEmbedding) or isinstance(features, Mapping):
        if logvar is not None:
            raise ValueError(
                f"{logvar_name} must be None when {name} is a {type(features).__name__} "
                "(it carries its own log-variances)"
            )
        if isinstance(features, ProbEmbedding):
            return features
        keys = [k for k in ("std", "logvar") if k in features]
        if "mean" not in features or len(keys) != 1:
            raise ValueError(
                f"{name} as a dict must hold 'mean' and exactly one of 'std' (log sigma^2, the PCME++/ProLIP "
                f"key) or 'logvar'; got keys {sorted(features)}"
            )
        mean, logvar = features["mean"], features[keys[0]]
    elif isinstance(features, torch.Tensor):
        if logvar is None:
            raise ValueError(
                f"{logvar_name} is required when {name} is a tensor of means (or pass {name} as "
                "{'mean': ..., 'std': log sigma^2} or a ProbEmbedding)"
            )
        mean = features
    else:
        raise TypeError(
            f"{name} must be a [B, D] tensor of means, a ProbEmbedding or a dict with 'mean' and 'std', "
            f"got {type(features).__name__}"
        )
    for what, t in (("mean", mean), ("log-variance", logvar)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}'s {what} must be a torch.Tensor, got {type(t).__name__}")
    if logvar.shape != mean.shape:
        raise ValueError(f"{name}'s log-variances must have the means' shape {list(mean.shape)}, got {list(logvar.shape)}")
    return ProbEmbedding(mean, logvar)


def _scalar(value: Any, name: str, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim floating tensor on ``like``'s device from a one-element tensor (kept in the graph)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a one-element floating-point torch.Tensor, got {type(value).__name__}")
    if value.numel() != 1 or not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be a one-element floating-point tensor, got shape {list(value.shape)} and {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but the features are on {like.device}; they must be on one device")
    return value.reshape(())


class OpenCLIPPCMEPPLoss(torch.nn.Module):
    """The PCME++ loss (docs/design.md, "The losses") with open_clip's loss interface.

    Args:
        init_scale: ``None`` (default): the scale of ``logits = -scale * CSD + shift`` is the
            ``logit_scale`` the model passes at every call (open_clip models own it and pass
            ``logit_scale.exp()``). A float (> 0): the loss owns a learnable ``scale`` starting
            there, and ``logit_scale`` must not be passed.
        init_shift: the same for the shift and ``logit_bias``. Default 5.0 (PCME++'s start): the
            loss owns ``shift``, since open_clip's CLIP models have no bias; ``None`` for models
            that own one (SigLIP-style ``init_logit_bias``) and pass it as ``logit_bias``.
        vib_weight, pp_weight: as in :class:`~pcmekit.losses.PCMEPPLoss` (1e-4 and 0.1).
        gather: compute over the batches of all ranks of the default torch.distributed group
            (all-gather with gradients); every rank computes the whole global loss.
        local_loss: with ``gather=True``, each rank computes only its own rows against the global
            columns and returns ``world_size`` times its share of the global loss (module
            docstring; docs/design.md, "Distributed").

    ``forward(image_features, text_features, logit_scale=None, logit_bias=None, *,
    image_logvar=None, text_logvar=None, matched=None, output_dict=False)``:

    * ``image_features`` / ``text_features``: ``[B, D]`` means with ``image_logvar`` /
      ``text_logvar`` (log sigma^2), or a :class:`~pcmekit.ProbEmbedding`, or a dict
      ``{"mean": ..., "std": log sigma^2}`` (PCME++ and ProLIP output dicts; ``"logvar"`` is
      accepted for ``"std"``). The means are used as given (open_clip models L2-normalise them).
    * ``logit_scale`` / ``logit_bias``: one-element tensors, the model's (already exponentiated)
      scale and its bias; gradients flow into them.
    * ``matched``: ``[B_img, B_txt]`` in [0, 1], as for PCMEPPLoss (default: the identity).
    * Returns the loss (0-dim), or with ``output_dict=True`` ``{"pcmepp_loss": bce + pp_weight * pp,
      "vib_loss": vib_weight * vib}``, whose sum is the loss (open_clip's loop sums the values).
      With ``local_loss`` both are this rank's terms (``world_size`` times its share for the first).

    After each call ``last_parts`` holds PCMEPPLoss's detached diagnostics (``bce``, ``pp``,
    ``vib``, ``kl_img``, ``kl_txt``, ``vib_dropped``, ``n_pseudo_positives``, ``scale``,
    ``shift``) of the global batch, on every rank and in every mode.
    """

    def __init__(
        self,
        init_scale: Optional[float] = None,
        init_shift: Optional[float] = 5.0,
        vib_weight: float = 1e-4,
        pp_weight: float = 0.1,
        gather: bool = False,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        if init_scale is not None:
            _check_number("init_scale", init_scale, positive=True)
        if init_shift is not None:
            _check_number("init_shift", init_shift)
        _check_number("vib_weight", vib_weight, non_negative=True)
        _check_number("pp_weight", pp_weight, non_negative=True)
        for name, flag in (("gather", gather), ("local_loss", local_loss)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if local_loss and not gather:
            raise ValueError("local_loss=True needs gather=True (it computes this rank's rows against every rank's columns)")
        self.scale = None if init_scale is None else torch.nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = None if init_shift is None else torch.nn.Parameter(torch.tensor(float(init_shift)))
        self.vib_weight = float(vib_weight)
        self.pp_weight = float(pp_weight)
        self.gather = gather
        self.local_loss = local_loss
        self.last_parts: Dict[str, torch.Tensor] = {}

    def extra_repr(self) -> str:
        scale = "logit_scale" if self.scale is None else f"{self.scale.item():.4g}"
        shift = "logit_bias" if self.shift is None else f"{self.shift.item():.4g}"
        return (
            f"scale={scale}, shift={shift}, vib_weight={self.vib_weight:g}, pp_weight={self.pp_weight:g}, "
            f"gather={self.gather}, local_loss={self.local_loss}"
        )

    def _scalars(self, logit_scale: Any, logit_bias: Any, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = []
        for own, given, name, init in ((self.scale, logit_scale, "logit_scale", "init_scale"),
                                       (self.shift, logit_bias, "logit_bias", "init_shift")):
            if own is None:
                if given is None:
                    raise ValueError(f"{name} is required: this loss was built with {init}=None (the model owns it)")
                pairs.append(_scalar(given, name, like))
            else:
                if given is not None:
                    raise ValueError(
                        f"{name} must not be passed: this loss owns its own (built with {init}={own.item():g}); "
                        f"build it with {init}=None to use the model's"
                    )
                pairs.append(own)
        return pairs[0], pairs[1]

    def forward(
        self,
        image_features: Features,
        text_features: Features,
        logit_scale: Optional[torch.Tensor] = None,
        logit_bias: Optional[torch.Tensor] = None,
        *,
        image_logvar: Optional[torch.Tensor] = None,
        text_logvar: Optional[torch.Tensor] = None,
        matched: Optional[torch.Tensor] = None,
        output_dict: bool = False,
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        img = _gaussians(image_features, image_logvar, "image_features")
        txt = _gaussians(text_features, text_logvar, "text_features")
        scale, shift = self._scalars(logit_scale, logit_bias, img.mean)
        if self.local_loss:
            matching, vib_term, parts = _local_terms(prepare_local_batch(_OWNER, img, txt, matched), scale, shift,
                                                     self.vib_weight, self.pp_weight)
        else:
            batch = prepare_batch(_OWNER, img, txt, matched, gather=self.gather)
            matching, vib_term, parts = pcmepp_terms(batch, scale, shift, self.vib_weight, self.pp_weight)
        self.last_parts = parts
        if output_dict:
            return {"pcmepp_loss": matching, "vib_loss": vib_term}
        return matching + vib_term if self.vib_weight else matching


def _row_sums(
    csd: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, rows: torch.Tensor, pp_weight: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the pairs of some rows of the logit matrix ``X = -scale * csd + shift``
    (``csd``: those rows, ``[b, B]``; ``rows``: their full rows of the match matrix): the BCE,
    the pseudo-positive BCE and the number of pseudo-positive labels beyond each row's argmax.
    The row rule is PCME++'s (docs/design.md, "The losses"): in row i, g = X[i, argmax M[i]], and
    every column with X >= g gets the label max M[i]."""
    dtype = csd.dtype
    x = csd * (-scale.to(dtype)) + shift.to(dtype)
    bce = F.binary_cross_entropy_with_logits(x, rows, reduction="sum")
    if not pp_weight:
        zero = x.new_zeros(())
        return bce, zero, torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        best = rows.argmax(1, keepdim=True)
        marked = x >= x.gather(1, best)
        target = torch.maximum(rows, marked.to(dtype) * rows.gather(1, best))
        n_pseudo = marked.sum() - x.shape[0]
    return bce, F.binary_cross_entropy_with_logits(x, target, reduction="sum"), n_pseudo


def _local_terms(
    batch: LocalBatch, scale: torch.Tensor, shift: torch.Tensor, vib_weight: float, pp_weight: float
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """``local_loss``: this rank's rows of both directions against the global columns.

    Global PCME++ sums split by rows: the image-to-text terms are row sums of X over the images,
    the text-to-image terms row sums of X^T over the captions, so rank r's share is the sum over
    its images' rows of X plus its captions' rows of X^T, divided by the global pair count. The
    returned matching term is ``world_size`` times the share (see the module docstring); the VIB
    term is computed on the gathered global batch, identically on every rank, so its drop rule
    sees the global KL."""
    _, world = _distributed.process_group_info(_OWNER)
    dtype = compute_dtype(batch.img_mean.dtype)
    b_img, b_txt = batch.img_mean.shape[0], batch.txt_mean.shape[0]
    n_img, n_txt = batch.all_img_mean.shape[0], batch.all_txt_mean.shape[0]
    block = batch.matched
    if block is None:  # the identity; _validate_local checked b_img == b_txt
        block = torch.eye(b_img, dtype=dtype, device=batch.img_mean.device)
    rows_i2t = block.new_zeros(b_img, n_txt)
    rows_i2t[:, batch.txt_offset : batch.txt_offset + b_txt] = block
    rows_t2i = block.new_zeros(b_txt, n_img)
    rows_t2i[:, batch.img_offset : batch.img_offset + b_img] = block.T

    csd_i2t = pairwise_distance(batch.img_mean, batch.img_logvar, batch.all_txt_mean, batch.all_txt_logvar, metric="csd")
    csd_t2i = pairwise_distance(batch.txt_mean, batch.txt_logvar, batch.all_img_mean, batch.all_img_logvar, metric="csd")
    bce_i, pp_i, np_i = _row_sums(csd_i2t, scale, shift, rows_i2t, pp_weight)
    bce_t, pp_t, np_t = _row_sums(csd_t2i, scale, shift, rows_t2i, pp_weight)
    n = n_img * n_txt
    bce_share = (bce_i + bce_t) / n
    pp_share = (pp_i + pp_t) / n
    matching = world * (bce_share + pp_weight * pp_share if pp_weight else bce_share)

    vib_term, parts = vib_terms(batch.all_img_mean, batch.all_img_logvar, batch.all_txt_mean, batch.all_txt_logvar,
                                vib_weight)
    # The diagnostics of the global batch: the shares summed over ranks (no gradient).
    totals = torch.stack([bce_share.detach().double(), pp_share.detach().double(), (np_i + np_t).double()])
    device = _distributed.collective_device(totals.device)
    totals = totals.to(device)
    dist.all_reduce(totals)
    totals = totals.to(batch.img_mean.device)
    parts.update(bce=totals[0].to(dtype), pp=totals[1].to(dtype), n_pseudo_positives=totals[2].round().to(torch.int64),
                 scale=scale.detach().clone(), shift=shift.detach().clone())
    return matching, vib_term, parts
