"""The PCME++ loss (Chun, 2023): BCE on a closed-form sampled distance, VIB, pseudo-positives.

docs/design.md, "The losses", is the definition. With logits X = -scale * CSD(img, txt) + shift
over the B_img x B_txt pairs, a match matrix M and BCE(X, Y) the mean over all pairs of BCE-with-logits,

    loss = BCE(X, M) + BCE(X^T, M^T)                                        ("bce")
         + vib_weight * (KL_img + KL_txt)                                    ("vib")
         + pp_weight * (BCE(X, M_pp_i2t) + BCE(X^T, M_pp_t2i))               ("pp")

How it is computed. The CSD matrix comes from the fused kernel (forward and backward are
GEMM-shaped kernels; nothing of size B x B x D exists). Everything after it is one hand-written
autograd function over the B x B logits. Every term is a mean over the same logits of
BCE(x, y) = (1 - y) softplus(x) + y softplus(-x) (non-negative terms: no cancellation), so the
three BCEs share their transcendental passes, and the gradient
dLoss/dX = ((2 + 2 pp_weight) sigmoid(X) - Y) / n, with the combined target
Y = 2 M + pp_weight * (M_pp_i2t + (M_pp_t2i)^T), is formed in the forward pass: a handful of passes
over B x B instead of autograd's graph of three BCEs and their backward passes, and no transposed
copies. With the identity match matrix (the default) M is never materialised.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from ..embedding import ProbEmbedding
from ..ops.pairwise import pairwise_distance
from ._distributed import Batch, compute_dtype, prepare_batch

__all__ = ["PCMEPPLoss", "pcmepp_terms", "vib_terms", "vib_kl", "drop_exploded_kl"]

KL_DROP_THRESHOLD = 1e4


class _VIBKL(torch.autograd.Function):
    """KL(N(mu, exp(v)) || N(0, I)) as a mean over all N elements, in four passes forward and two
    backward (autograd's elementwise graph takes about three times as many):
    KL = (dot(mu, mu) + sum expm1(v) - sum v) / (2 N), dKL/dmu = mu / N, dKL/dv = expm1(v) / (2 N)."""

    @staticmethod
    def forward(ctx: Any, mean, logvar):  # type: ignore[override]
        n = mean.numel()
        mu = mean.reshape(-1)
        v = logvar.reshape(-1)
        e = torch.expm1(v)
        kl = (torch.dot(mu, mu) + e.sum() - v.sum()) / (2 * n) if n else mean.new_full((), float("nan"))
        ctx.save_for_backward(mean, e)
        return kl

    @staticmethod
    def backward(ctx: Any, grad):  # type: ignore[override]
        mean, e = ctx.saved_tensors
        n = mean.numel()
        grad_mean = mean * (grad / n) if ctx.needs_input_grad[0] else None
        grad_logvar = (e * (grad / (2 * n))).view(mean.shape) if ctx.needs_input_grad[1] else None
        return grad_mean, grad_logvar


def vib_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) as PCME++ computes it: a mean over all B x D elements
    (not a per-sample sum over D), ``-1/2 mean(1 + logvar - mean^2 - exp(logvar))``. 16-bit
    inputs compute in float32."""
    dtype = compute_dtype(mean.dtype)
    return _VIBKL.apply(mean.to(dtype), logvar.to(dtype))


def drop_exploded_kl(kl: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """PCME++'s guard: a KL above 1e4 is replaced by 0 (no gradient); returns (kl_used, dropped).

    The reference (``ClosedFormSampledDistanceLoss.kl_divergence``) returns 0 and warns "VIB loss
    explosion"; here the decision stays on the device (no host synchronisation, so no warning) and
    the loss reports it in ``parts["vib_dropped"]``. A NaN KL is kept (NaN > 1e4 is false there too).
    """
    dropped = kl.detach() > KL_DROP_THRESHOLD
    return torch.where(dropped, torch.zeros_like(kl), kl), dropped


class _PCMEPPObjective(torch.autograd.Function):
    """BCE + pseudo-positive terms of the PCME++ loss as a function of the CSD matrix.

    Inputs: csd [B_img, B_txt]; scale, shift 0-dim; matched [B_img, B_txt] or None (identity);
    pp_weight float. Outputs: total (differentiable), bce, pp, n_pseudo_positives (not).

    Per pair, BCE(x, y) = (1 - y) softplus(x) + y softplus(-x), and softplus(+-x) = relu(+-x) + l
    with l = log1p(exp(-|x|)), so every BCE sum here is dot(1 - y, relu(x)) + dot(y, relu(-x)) +
    sum(l): non-negative terms only (softplus(x) - x y would cancel badly in float32 for confident
    pairs), one exp and one log1p pass shared by all three BCEs, the other passes memory-bound
    arithmetic. The forward pass also forms dTotal/dX, so the backward pass is one scaling. It
    works in at most five B x B buffers (fresh buffers cost page faults on the CPU).
    """

    @staticmethod
    def forward(ctx: Any, csd, scale, shift, matched, pp_weight):  # type: ignore[override]
        dtype = csd.dtype
        s = scale.detach().to(dtype)
        t = shift.detach().to(dtype)
        b_img, b_txt = csd.shape
        n = b_img * b_txt
        identity = matched is None
        x = torch.mul(csd, -s).add_(t)  # the logits, [B_img, B_txt]

        # |x| is capped where exp(-|x|) would go subnormal (float32 below e^-87): subnormal exp and
        # log1p run many times slower, and the terms capped are < 2e-35 each (< 1e-304 in float64).
        cap = 700.0 if dtype == torch.float64 else 80.0
        work = x.abs().clamp_max_(cap).neg_().exp_().log1p_()  # l
        sum_l = work.sum()
        relu_pos = torch.clamp_min(x, 0, out=work)
        if identity:
            relu_pos.diagonal().zero_()  # a positive's 1 - y is 0 (and so is 2 - y_pp below)
            bce_half = relu_pos.sum() + x.diagonal().neg().clamp_min_(0).sum() + sum_l
            relu_neg = other = None
        else:
            matched = matched.contiguous()
            m = matched.view(-1)
            relu_neg = torch.neg(x).clamp_min_(0)
            other = torch.rsub(matched, 1)
            bce_half = torch.dot(other.view(-1), relu_pos.view(-1)) + torch.dot(m, relu_neg.view(-1)) + sum_l
        bce = 2 * bce_half / n

        y_pp = None
        if pp_weight:
            # Pseudo-positives: in row i, g = X[i, argmax M[i]]; columns with X >= g take max M[i].
            # The t2i direction does the same on columns (X^T's rows), kept in X's orientation:
            # y_pp = M_pp_i2t + M_pp_t2i^T. Comparisons write 0/1 straight into float buffers.
            y_pp = torch.empty_like(x)
            other = torch.empty_like(x) if other is None else other
            if identity:
                diag = x.diagonal().clone()  # contiguous: a strided [1, B] operand is ~30x slower
                torch.ge(x, diag[:, None], out=y_pp)
                torch.ge(x, diag[None, :], out=other)
                y_pp += other
                marked = y_pp.sum(1).sum(dtype=torch.float64)  # row sums are exact in any dtype
            else:
                row_idx = matched.argmax(1, keepdim=True)
                col_idx = matched.argmax(0, keepdim=True)
                torch.ge(x, x.gather(1, row_idx), out=y_pp)
                torch.ge(x, x.gather(0, col_idx), out=other)
                marked = y_pp.sum(1).sum(dtype=torch.float64) + other.sum(1).sum(dtype=torch.float64)
                # where(mask, max M[i], M) == maximum(M, mask * max M[i]) as max M[i] >= M[i, j] >= 0
                torch.maximum(matched, y_pp.mul_(matched.gather(1, row_idx)), out=y_pp)
                torch.maximum(matched, other.mul_(matched.gather(0, col_idx)), out=other)
                y_pp += other
            n_pseudo = marked.to(torch.int64) - (b_img + b_txt)
            y = y_pp.view(-1)
            y_minus_two = torch.sub(y_pp, 2, out=other).view(-1)  # dot(2 - y, .) = -dot(y - 2, .)
            pp_sum = 2 * sum_l - torch.dot(y_minus_two, relu_pos.view(-1))
            if relu_neg is None:
                relu_neg = torch.neg(x, out=work).clamp_min_(0)  # relu_pos is done with
            pp_sum = pp_sum + torch.dot(y, relu_neg.view(-1))
            pp = pp_sum / n
        else:
            n_pseudo = torch.zeros((), dtype=torch.int64, device=x.device)
            pp = torch.zeros((), dtype=dtype, device=x.device)
        total = bce + pp_weight * pp
        del work, relu_pos, relu_neg, other

        # dTotal/dX, in x's buffer: ((2 + 2 w) sigmoid(x) - 2 M - w y_pp) / n.
        grad_x = x.sigmoid_().mul_((2 + 2 * pp_weight) / n)
        if y_pp is not None:
            grad_x.sub_(y_pp, alpha=pp_weight / n)
        if identity:
            grad_x.diagonal().sub_(2 / n)
        else:
            grad_x.sub_(matched, alpha=2 / n)
        # dTotal/dscale = -sum(dTotal/dX * csd), dTotal/dshift = sum(dTotal/dX): formed now, so
        # the backward pass does not need csd.
        grad_scale = -torch.dot(grad_x.view(-1), csd.reshape(-1))
        grad_shift = grad_x.sum()

        ctx.save_for_backward(grad_x, s, grad_scale, grad_shift)
        ctx.param_dtypes = (scale.dtype, shift.dtype)
        ctx.mark_non_differentiable(bce, pp, n_pseudo)
        return total, bce, pp, n_pseudo

    @staticmethod
    def backward(ctx: Any, grad_total, *unused):  # type: ignore[override]
        grad_x, s, grad_scale, grad_shift = ctx.saved_tensors
        g = grad_total.to(grad_x.dtype)
        grad_csd = grad_x * (-s * g) if ctx.needs_input_grad[0] else None
        grad_scale = (grad_scale * g).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[1] else None
        grad_shift = (grad_shift * g).to(ctx.param_dtypes[1]) if ctx.needs_input_grad[2] else None
        return grad_csd, grad_scale, grad_shift, None, None


class PCMEPPLoss(torch.nn.Module):
    """The PCME++ objective over a batch of image and caption Gaussians (docs/design.md, "The losses").

    Args:
        init_scale: initial ``scale`` in ``logits = -scale * CSD + shift`` (must be > 0). Like
            PCME++'s ``negative_scale`` it is a free parameter afterwards: not clamped, so an
            optimiser may in principle drive it through 0 (it grows in practice).
        init_shift: initial ``shift``.
        vib_weight: weight of the VIB term ``KL_img + KL_txt`` (0 switches it off). A modality's
            KL above 1e4 is dropped (contributes 0 and no gradient), PCME++'s guard against a
            VIB explosion; ``parts["vib_dropped"]`` counts the dropped modalities.
        pp_weight: weight of the pseudo-positive term (0 switches it off; PCME++'s
            ``smoothness_alpha``).
        gather: compute the loss over the batches of all ranks of the default torch.distributed
            process group (all-gather with gradients; see :mod:`pcmekit.losses._distributed` for
            the gradient convention). Needs an initialised process group, else RuntimeError.

    ``forward(img, txt, matched=None)``: ``img`` and ``txt`` are :class:`~pcmekit.ProbEmbedding`
    of shapes ``[B_img, D]`` and ``[B_txt, D]``; ``matched`` is ``[B_img, B_txt]`` with values in
    [0, 1] (default: the identity, which needs B_img == B_txt): soft rows for mixed images
    (:func:`~pcmekit.losses.mix_images`), several 1s in a row for duplicates. With ``gather=True``
    each rank passes its own block; the global matrix is block-diagonal. ``matched`` gets no
    gradient. Returns ``(loss, parts)``: ``loss = bce + vib_weight * vib + pp_weight * pp`` and a
    dict of detached 0-dim tensors ``bce`` (both directions), ``vib`` (KL_img + KL_txt after the
    drop rule), ``pp`` (both directions, 0 when pp_weight is 0), ``kl_img``, ``kl_txt`` (as
    computed, before the rule), ``vib_dropped``, ``n_pseudo_positives`` (pseudo-positive labels
    beyond each row's argmax, both directions), ``scale``, ``shift``.

    16-bit embeddings (CUDA) are accepted; the loss is computed in float32.
    """

    def __init__(
        self,
        init_scale: float = 5.0,
        init_shift: float = 5.0,
        vib_weight: float = 1e-4,
        pp_weight: float = 0.1,
        gather: bool = False,
    ) -> None:
        super().__init__()
        _check_number("init_scale", init_scale, positive=True)
        _check_number("init_shift", init_shift)
        _check_number("vib_weight", vib_weight, non_negative=True)
        _check_number("pp_weight", pp_weight, non_negative=True)
        if not isinstance(gather, bool):
            raise TypeError(f"gather must be a bool, got {type(gather).__name__}")
        self.scale = torch.nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = torch.nn.Parameter(torch.tensor(float(init_shift)))
        self.vib_weight = float(vib_weight)
        self.pp_weight = float(pp_weight)
        self.gather = gather

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale.item():.4g}, shift={self.shift.item():.4g}, vib_weight={self.vib_weight:g}, "
            f"pp_weight={self.pp_weight:g}, gather={self.gather}"
        )

    def forward(
        self, img: ProbEmbedding, txt: ProbEmbedding, matched: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        batch = prepare_batch("PCMEPPLoss", img, txt, matched, gather=self.gather)
        matching, vib_term, parts = pcmepp_terms(batch, self.scale, self.shift, self.vib_weight, self.pp_weight)
        return (matching + vib_term if self.vib_weight else matching), parts


def pcmepp_terms(
    batch: Batch, scale: torch.Tensor, shift: torch.Tensor, vib_weight: float, pp_weight: float
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """The PCME++ objective on a prepared batch, with ``scale`` and ``shift`` given as 0-dim
    tensors (a loss's own parameters, or a model's ``logit_scale`` / ``logit_bias``).

    Returns ``(matching, vib_term, parts)``: ``matching = bce + pp_weight * pp`` and
    ``vib_term = vib_weight * vib``, both differentiable (the loss is their sum), and the detached
    ``parts`` that :class:`PCMEPPLoss` documents."""
    csd = pairwise_distance(batch.img_mean, batch.img_logvar, batch.txt_mean, batch.txt_logvar, metric="csd")
    matching, bce, pp, n_pseudo = _PCMEPPObjective.apply(csd, scale, shift, batch.matched, pp_weight)
    assert batch.img_logvar is not None and batch.txt_logvar is not None  # prepare_batch checked
    vib_term, parts = vib_terms(batch.img_mean, batch.img_logvar, batch.txt_mean, batch.txt_logvar, vib_weight)
    parts.update(bce=bce.detach(), pp=pp.detach(), n_pseudo_positives=n_pseudo.detach(),
                 scale=scale.detach().clone(), shift=shift.detach().clone())
    return matching, vib_term, parts


def vib_terms(
    img_mean: torch.Tensor, img_logvar: torch.Tensor, txt_mean: torch.Tensor, txt_logvar: torch.Tensor,
    vib_weight: float,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``vib_weight * (KL_img + KL_txt)`` after the drop rule (:func:`drop_exploded_kl`; a 0-dim
    zero when ``vib_weight`` is 0) and the detached parts ``vib``, ``kl_img``, ``kl_txt``,
    ``vib_dropped``."""
    kl_img = vib_kl(img_mean, img_logvar)
    kl_txt = vib_kl(txt_mean, txt_logvar)
    (used_img, dropped_img), (used_txt, dropped_txt) = drop_exploded_kl(kl_img), drop_exploded_kl(kl_txt)
    vib = used_img + used_txt
    term = vib_weight * vib if vib_weight else torch.zeros_like(vib)
    parts = {
        "vib": vib.detach(),
        "kl_img": kl_img.detach(),
        "kl_txt": kl_txt.detach(),
        "vib_dropped": dropped_img.to(torch.int64) + dropped_txt.to(torch.int64),
    }
    return term, parts


def _check_number(name: str, value: Any, *, positive: bool = False, non_negative: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
