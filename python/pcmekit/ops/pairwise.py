"""The pairwise distance op (csrc: include/pcmekit/pairwise.h, core/pairwise.cpp, cpu/, cuda/).

``pcmekit::pairwise_distance`` is a ``torch.library.custom_op`` with a fake (meta)
implementation and a registered autograd formula whose backward is itself a custom op
(``pcmekit::pairwise_distance_backward``, a fused kernel, not a composite of torch ops), so it
works under autograd, ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``.
:func:`pairwise_distance` is the public function.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import torch

from .. import _core
from .._core import get_num_threads, matrix_view, stream_handle
from ..embedding import ProbEmbedding
from ._args import (
    METRICS,
    autocast_float32,
    check_metric,
    eager_without_grad,
    embedding_needs,
    empty_grads,
    out_dtype,
    prepare_pair,
    register_autocast_float32,
    unpack_pair,
)

__all__ = ["pairwise_distance", "pairwise_op", "pairwise_backward_op", "pairwise_into"]

Array = Union[torch.Tensor, np.ndarray]


def pairwise_into(
    out: torch.Tensor,
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str,
) -> torch.Tensor:
    """The forward kernel, writing the ``[N, M]`` distances into ``out`` (which it returns).

    On CUDA, float32 inputs follow ``torch.get_float32_matmul_precision()``: "highest" keeps full
    float32 accuracy, "high"/"medium" allow TF32 tensor cores for csd, w2, l2 and kl.
    """
    _core.pairwise_forward(
        METRICS.index(metric),
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        matrix_view(out),
        get_num_threads(),
        stream_handle(a_mean.device),
        _core.matmul_precision_code(),
    )
    return out


@torch.library.custom_op("pcmekit::pairwise_distance", mutates_args=())
def pairwise_op(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str,
) -> torch.Tensor:
    out = torch.empty(
        (a_mean.shape[0], b_mean.shape[0]), dtype=out_dtype(a_mean.dtype), device=a_mean.device
    )
    return pairwise_into(out, a_mean, a_logvar, b_mean, b_logvar, metric)


@pairwise_op.register_fake
def _(a_mean, a_logvar, b_mean, b_logvar, metric):
    return a_mean.new_empty((a_mean.shape[0], b_mean.shape[0]), dtype=out_dtype(a_mean.dtype))


@torch.library.custom_op("pcmekit::pairwise_distance_backward", mutates_args=())
def pairwise_backward_op(
    grad_out: torch.Tensor,
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str,
    needs: List[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (a_mean, a_logvar, b_mean, b_logvar); a gradient nobody needs comes back
    as an empty tensor and is not computed."""
    grads = _empty_grads(a_mean, b_mean, needs)
    grad_out = grad_out.contiguous()  # keep the reference: the core only gets its pointer
    g_am, g_al, g_bm, g_bl = (matrix_view(g) if need else None for g, need in zip(grads, needs))
    _core.pairwise_backward(
        METRICS.index(metric),
        matrix_view(grad_out),
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        g_am,
        g_al,
        g_bm,
        g_bl,
        get_num_threads(),
        stream_handle(a_mean.device),
        _core.matmul_precision_code(),
    )
    return grads


def _empty_grads(
    a_mean: torch.Tensor, b_mean: torch.Tensor, needs: Sequence[bool]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return empty_grads(a_mean, (a_mean.shape, a_mean.shape, b_mean.shape, b_mean.shape), needs)  # type: ignore[return-value]


@pairwise_backward_op.register_fake
def _(grad_out, a_mean, a_logvar, b_mean, b_logvar, metric, needs):
    return _empty_grads(a_mean, b_mean, needs)


def _pairwise_setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    a_mean, a_logvar, b_mean, b_logvar, metric = inputs
    ctx.save_for_backward(a_mean, a_logvar, b_mean, b_logvar)
    ctx.metric = metric


def _pairwise_backward(ctx: Any, grad_out: torch.Tensor):
    a_mean, a_logvar, b_mean, b_logvar = ctx.saved_tensors
    needs = embedding_needs(ctx.needs_input_grad, a_logvar, b_logvar)
    grads = pairwise_backward_op(grad_out, a_mean, a_logvar, b_mean, b_logvar, ctx.metric, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


pairwise_op.register_autograd(_pairwise_backward, setup_context=_pairwise_setup_context)
register_autocast_float32(pairwise_op)


# Typed call forms (the implementation below takes them all): tensors or two ProbEmbeddings give
# a tensor, numpy arrays give an array.
@overload
def pairwise_distance(
    a_mean: ProbEmbedding, a_logvar: ProbEmbedding, b_mean: str = ..., b_logvar: None = ..., metric: str = ...
) -> torch.Tensor: ...
@overload
def pairwise_distance(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor] = ...,
    metric: str = ...,
) -> torch.Tensor: ...
@overload
def pairwise_distance(
    a_mean: np.ndarray,
    a_logvar: Optional[np.ndarray],
    b_mean: np.ndarray,
    b_logvar: Optional[np.ndarray] = ...,
    metric: str = ...,
) -> np.ndarray: ...
def pairwise_distance(
    a_mean: Any,
    a_logvar: Any = None,
    b_mean: Any = None,
    b_logvar: Any = None,
    metric: str = "csd",
) -> Array:
    """Distance between every pair of Gaussians of two sets: ``out[i, j] = metric(a_i, b_j)``.

    Call it with four arrays ``(a_mean [N, D], a_logvar [N, D], b_mean [M, D], b_logvar [M, D])``
    or with two :class:`~pcmekit.ProbEmbedding` ``(a, b)``. ``metric`` is one of ``csd``
    (PCME++'s closed-form sampled distance), ``w2`` (squared 2-Wasserstein), ``l2`` (means only;
    the logvars may be ``None``), ``kl`` (KL(a || b), not symmetric), ``bhattacharyya``, ``elk``
    (negative log expected likelihood), ``inclusion`` (ProLIP's inclusion measure of "a inside b":
    antisymmetric, ``inclusion(a, b) = -inclusion(b, a)``, negative when a lies inside b);
    docs/design.md, "The metrics", gives the formulas. Smaller is closer (for ``inclusion``: a is
    more included in b).

    Returns ``[N, M]`` in the input dtype (float32 for float16/bfloat16 inputs on CUDA, and for
    16-bit inputs under ``torch.autocast``, which computes them in float32), on the inputs' device; numpy inputs give a numpy result. Differentiable with respect to all four
    inputs (the backward pass is a fused kernel too).

    Accuracy: csd, w2, l2 and kl are computed in inner-product form (a GEMM plus row and column
    terms), so in float32 the absolute error is about 1e-7 times the squared norms of the means;
    results are clamped at zero. bhattacharyya, elk and inclusion are computed term by term. NaN inputs give
    NaN in the affected rows and columns.

    Raises:
        ValueError: wrong ndim, mismatched N or D, mixed devices, unknown metric, missing logvar.
        TypeError: non-floating or mixed dtypes, 16-bit dtypes on the CPU.
    """
    a_mean, a_logvar, b_mean, b_logvar, (leftover, _) = unpack_pair(a_mean, a_logvar, b_mean, b_logvar)
    if leftover is not None:
        metric = leftover
    metric = check_metric(metric)
    a_mean, a_logvar, b_mean, b_logvar = autocast_float32(a_mean, a_logvar, b_mean, b_logvar)
    am, alv, bm, blv, to_numpy = prepare_pair(a_mean, a_logvar, b_mean, b_logvar, metric != "l2", metric)
    if eager_without_grad((am, alv, bm, blv)):
        # Nothing for autograd or a tracer to see: the kernel itself, without the dispatcher's
        # round trip (tens of microseconds, more than a small matrix costs).
        out = torch.empty((am.shape[0], bm.shape[0]), dtype=out_dtype(am.dtype), device=am.device)
        out = pairwise_into(out, am, alv, bm, blv, metric)
    else:
        out = pairwise_op(am, alv, bm, blv, metric)
    return out.numpy() if to_numpy else out

