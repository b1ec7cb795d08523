"""torch custom ops over the compiled kernels, and the public functions that call them.

Each kernel is one ``torch.library.custom_op`` with a fake (meta) implementation and a registered
autograd formula whose backward is itself a custom op (a kernel, not a composite of torch ops),
so the ops work under autograd, ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import torch

from . import _C
from ._checks import METRICS, check_metric, prepare_pair, unpack_pair
from ._core import get_num_threads, matrix_view, stream_handle
from .embedding import ProbEmbedding

__all__ = ["pairwise_distance"]

Array = Union[torch.Tensor, np.ndarray]


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    # 16-bit inputs accumulate in float32, and a sum of D squared terms overflows float16 easily.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.custom_op("pcmekit::pairwise_distance", mutates_args=())
def _pairwise_op(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    metric: str,
) -> torch.Tensor:
    out = torch.empty(
        (a_mean.shape[0], b_mean.shape[0]), dtype=_out_dtype(a_mean.dtype), device=a_mean.device
    )
    _C.pairwise_forward(
        METRICS.index(metric),
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        matrix_view(out),
        get_num_threads(),
        stream_handle(a_mean.device),
    )
    return out


@_pairwise_op.register_fake
def _(a_mean, a_logvar, b_mean, b_logvar, metric):
    return a_mean.new_empty((a_mean.shape[0], b_mean.shape[0]), dtype=_out_dtype(a_mean.dtype))


@torch.library.custom_op("pcmekit::pairwise_distance_backward", mutates_args=())
def _pairwise_backward_op(
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
    _C.pairwise_backward(
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
    )
    return grads


def _empty_grads(
    a_mean: torch.Tensor, b_mean: torch.Tensor, needs: Sequence[bool]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    shapes = (a_mean.shape, a_mean.shape, b_mean.shape, b_mean.shape)
    return tuple(  # type: ignore[return-value]
        a_mean.new_empty(shape if need else (0,)) for shape, need in zip(shapes, needs)
    )


@_pairwise_backward_op.register_fake
def _(grad_out, a_mean, a_logvar, b_mean, b_logvar, metric, needs):
    return _empty_grads(a_mean, b_mean, needs)


def _pairwise_setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    a_mean, a_logvar, b_mean, b_logvar, metric = inputs
    ctx.save_for_backward(a_mean, a_logvar, b_mean, b_logvar)
    ctx.metric = metric


def _embedding_needs(
    needs_input_grad: Sequence[bool], a_logvar: Optional[torch.Tensor], b_logvar: Optional[torch.Tensor]
) -> List[bool]:
    """Which of (a_mean, a_logvar, b_mean, b_logvar) need a gradient (the first four inputs)."""
    return [
        bool(needs_input_grad[0]),
        bool(needs_input_grad[1]) and a_logvar is not None,
        bool(needs_input_grad[2]),
        bool(needs_input_grad[3]) and b_logvar is not None,
    ]


def _pairwise_backward(ctx: Any, grad_out: torch.Tensor):
    a_mean, a_logvar, b_mean, b_logvar = ctx.saved_tensors
    needs = _embedding_needs(ctx.needs_input_grad, a_logvar, b_logvar)
    grads = _pairwise_backward_op(grad_out, a_mean, a_logvar, b_mean, b_logvar, ctx.metric, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


_pairwise_op.register_autograd(_pairwise_backward, setup_context=_pairwise_setup_context)


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
    (negative log expected likelihood); DESIGN.md section 2 gives the formulas. Smaller is closer.

    Returns ``[N, M]`` in the input dtype (float32 for float16/bfloat16 inputs on CUDA), on the
    inputs' device; numpy inputs give a numpy result. Differentiable with respect to all four
    inputs (the backward pass is a fused kernel too).

    Accuracy: csd, w2, l2 and kl are computed in inner-product form (a GEMM plus row and column
    terms), so in float32 the absolute error is about 1e-7 times the squared norms of the means;
    results are clamped at zero. bhattacharyya and elk are computed term by term. NaN inputs give
    NaN in the affected rows and columns.

    Raises:
        ValueError: wrong ndim, mismatched N or D, mixed devices, unknown metric, missing logvar.
        TypeError: non-floating or mixed dtypes, 16-bit dtypes on the CPU.
    """
    a_mean, a_logvar, b_mean, b_logvar, leftover = unpack_pair(a_mean, a_logvar, b_mean, b_logvar)
    if leftover is not None:
        metric = leftover
    metric = check_metric(metric)
    needs_logvar = metric != "l2"
    am, alv, bm, blv, to_numpy = prepare_pair(a_mean, a_logvar, b_mean, b_logvar, needs_logvar, metric)
    if not needs_logvar:
        alv = blv = None
    out = _pairwise_op(am, alv, bm, blv, metric)
    return out.numpy() if to_numpy else out
