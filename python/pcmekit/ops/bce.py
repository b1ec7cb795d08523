"""The BCE op: BCE-with-logits over a distance matrix, the matching term of PCME++, as one
fused op (csrc: include/pcmekit/bce.h, core/bce.cpp, cpu/bce.cpp, cuda/bce.cu).

``distance_bce_with_logits(distance, target, scale=a, shift=b)`` equals
``torch.nn.functional.binary_cross_entropy_with_logits(-a * distance + b, target)``, but the
forward pass is one vectorised C++ pass over the matrix that also forms every gradient (with
respect to the distances, the scale and the shift), so the backward pass is a single scaling. On
the CPU it replaces the ~10 element-wise passes and temporaries torch's composite spends on the
logits, the loss and its backward (measured 1.1 ms against 6-7 ms at 1024 x 1024, 2 threads). CUDA
tensors take the same formulas in one kernel (cuda/bce.cu) whose sums are added in a fixed
order (the same bits every run); the three scalars stay on the device.

``pairwise_bce_loss(a, b, target)`` is the same loss on ``pairwise_distance(a, b)`` in one op:
the distance kernel writes the matrix into a buffer that the BCE pass then overwrites with the
gradient, and the backward pass is the distance kernel's own, fed with that gradient. No [N, M]
tensor is allocated beyond that one buffer and nothing else is passed over it; this is the
PCME++-style training step of ``pcmekit bench pairwise``. On CUDA, where the tensor-core
engine computes the distances (csd/w2/l2/kl under matmul precision "high"/"medium", or 16-bit
csd/l2), the BCE runs in its epilogue and the distances never reach memory.

Under ``torch.autocast`` both ops compute in float32 (docs/design.md, "Autocast").
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch

from .. import _core
from .._core import get_num_threads, matrix_view, stream_handle
from ..embedding import ProbEmbedding
from ._args import (
    METRICS,
    as_scalar,
    autocast_float32,
    check_metric,
    compiling,
    embedding_needs,
    gaussians_of,
    out_dtype,
    prepare_pair,
    register_autocast_float32,
)
from .pairwise import pairwise_backward_op, pairwise_into

__all__ = ["distance_bce_with_logits", "pairwise_bce_loss"]

Scalar = Union[float, torch.Tensor]

_REDUCTIONS = ("mean", "sum")


def _sums(device: torch.device) -> torch.Tensor:
    """The CUDA ops' [rows, 3] float64 sums (pcmekit/bce.h): row 0 receives the results."""
    rows = _core.build_info()["cuda_bce_sums_rows"]
    return torch.empty((rows, 3), dtype=torch.float64, device=device)


def _from_sums(
    sums: torch.Tensor, grad: torch.Tensor, loss_dtype: torch.dtype, scale: torch.Tensor, shift: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ops' outputs from row 0 of the CUDA sums (no copy to the host)."""
    return (
        sums[0, 0].to(loss_dtype),
        grad,
        sums[0, 1].to(device=scale.device, dtype=scale.dtype),
        sums[0, 2].to(device=shift.device, dtype=shift.dtype),
    )


def _bce_cuda(
    distance: torch.Tensor,
    target: Optional[torch.Tensor],
    grad: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    mean: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CUDA pass (cuda/bce.cu): float32 arithmetic for 16-bit distances, whose gradient is
    stored in their dtype; the loss is float32 for them."""
    sums = _sums(distance.device)
    _core.distance_bce(
        matrix_view(distance),
        matrix_view(target),
        matrix_view(grad),
        float(scale),
        float(shift),
        mean,
        get_num_threads(),
        stream_handle(distance.device),
        matrix_view(sums),
    )
    return _from_sums(sums, grad, out_dtype(distance.dtype), scale, shift)


def _bce_cpu(
    distance: torch.Tensor,
    target: Optional[torch.Tensor],
    grad: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    mean: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The C++ pass (``grad`` may be ``distance``, which it then overwrites), as the ops' outputs."""
    loss, grad_scale, grad_shift = _core.distance_bce(
        matrix_view(distance),
        matrix_view(target),
        matrix_view(grad),
        float(scale),
        float(shift),
        mean,
        get_num_threads(),
    )
    return (
        torch.tensor(loss, dtype=grad.dtype),
        grad,
        torch.tensor(grad_scale, dtype=scale.dtype, device=scale.device),
        torch.tensor(grad_shift, dtype=shift.dtype, device=shift.device),
    )


@torch.library.custom_op("pcmekit::distance_bce_with_logits", mutates_args=())
def _bce_op(
    distance: torch.Tensor, target: Optional[torch.Tensor], scale: torch.Tensor, shift: torch.Tensor, mean: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dloss/ddistance, dloss/dscale, dloss/dshift), all formed by the forward pass."""
    grad = torch.empty(distance.shape, dtype=distance.dtype, device=distance.device)
    if distance.device.type != "cpu":
        return _bce_cuda(distance, target, grad, scale, shift, mean)
    return _bce_cpu(distance, target, grad, scale, shift, mean)


@_bce_op.register_fake
def _(distance, target, scale, shift, mean):
    return (
        distance.new_empty((), dtype=out_dtype(distance.dtype)),
        torch.empty_like(distance, memory_format=torch.contiguous_format),
        scale.new_empty(()),
        shift.new_empty(()),
    )


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
    _, grad, grad_scale, grad_shift = output
    ctx.save_for_backward(grad, grad_scale, grad_shift)
    ctx.set_materialize_grads(False)  # (as _pairwise_setup_context below)


def _times(saved: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """A gradient formed for an upstream gradient of 1, times the actual one."""
    return saved * grad_loss.to(device=saved.device, dtype=saved.dtype)


def _backward(ctx: Any, grad_loss: Optional[torch.Tensor], *unused: Any):
    if grad_loss is None:
        return (None,) * 5
    grad, grad_scale, grad_shift = ctx.saved_tensors
    g_distance = grad * grad_loss.to(grad.dtype) if ctx.needs_input_grad[0] else None
    g_scale = _times(grad_scale, grad_loss) if ctx.needs_input_grad[2] else None
    g_shift = _times(grad_shift, grad_loss) if ctx.needs_input_grad[3] else None
    return g_distance, None, g_scale, g_shift, None


_bce_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast_float32(_bce_op)


def _check_target(
    target: Any, shape: Tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Optional[torch.Tensor]:
    """None, or the target as a [N, M] tensor of the distance's dtype on its device."""
    if target is None:
        return None
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor or None, got {type(target).__name__}")
    if tuple(target.shape) != tuple(shape):
        raise ValueError(f"target must have the distance's shape {tuple(shape)}, got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target must be on {device}, got {target.device}")
    if target.requires_grad and torch.is_grad_enabled():
        raise ValueError("target requires grad, but the BCE gives it no gradient; detach it")
    return target if target.dtype == dtype else target.to(dtype)


def _as_scalar_tensor(value: Scalar, name: str, like: torch.Tensor) -> torch.Tensor:
    # A number becomes float64 for float64 distances, float32 otherwise, on their device.
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return as_scalar(value, name, dtype=dtype, device=like.device)


def _pairwise_bce_cuda(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    target: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    metric: str,
    mean: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One core call: the BCE fused into the tensor-core forward where that engine applies, else
    the distance kernel and the BCE pass over the same buffer (cuda/bce.cu)."""
    grad = torch.empty((a_mean.shape[0], b_mean.shape[0]), dtype=out_dtype(a_mean.dtype), device=a_mean.device)
    sums = _sums(a_mean.device)
    _core.pairwise_bce(
        METRICS.index(metric),
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        matrix_view(grad),
        matrix_view(target),
        float(scale),
        float(shift),
        mean,
        get_num_threads(),
        stream_handle(a_mean.device),
        _core.matmul_precision_code(),
        matrix_view(sums),
    )
    return _from_sums(sums, grad, grad.dtype, scale, shift)


@torch.library.custom_op("pcmekit::pairwise_bce_with_logits", mutates_args=())
def _pairwise_bce_op(
    a_mean: torch.Tensor,
    a_logvar: Optional[torch.Tensor],
    b_mean: torch.Tensor,
    b_logvar: Optional[torch.Tensor],
    target: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    metric: str,
    mean: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dloss/ddistance, dloss/dscale, dloss/dshift) of the BCE on pairwise_distance(a, b)."""
    if a_mean.device.type != "cpu":
        return _pairwise_bce_cuda(a_mean, a_logvar, b_mean, b_logvar, target, scale, shift, metric, mean)
    buffer = torch.empty((a_mean.shape[0], b_mean.shape[0]), dtype=a_mean.dtype)
    pairwise_into(buffer, a_mean, a_logvar, b_mean, b_logvar, metric)
    # The distances are read once, by this pass, which overwrites them with their gradient.
    return _bce_cpu(buffer, target, buffer, scale, shift, mean)


@_pairwise_bce_op.register_fake
def _(a_mean, a_logvar, b_mean, b_logvar, target, scale, shift, metric, mean):
    dtype = out_dtype(a_mean.dtype)
    return (
        a_mean.new_empty((), dtype=dtype),
        a_mean.new_empty((a_mean.shape[0], b_mean.shape[0]), dtype=dtype),
        scale.new_empty(()),
        shift.new_empty(()),
    )


def _pairwise_setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, ...]) -> None:
    a_mean, a_logvar, b_mean, b_logvar, _, _, _, metric, _ = inputs
    _, grad, grad_scale, grad_shift = output
    ctx.save_for_backward(a_mean, a_logvar, b_mean, b_logvar, grad, grad_scale, grad_shift)
    ctx.metric = metric
    # Only the loss carries a gradient; left unmaterialised, autograd would fill an [N, M] tensor
    # of zeros for the `grad` output every step (0.35 ms of a B = 1024 step here).
    ctx.set_materialize_grads(False)


def _is_one(g: torch.Tensor) -> bool:
    """True for a CPU upstream gradient equal to 1 (``loss.backward()``'s), outside a graph of
    its own: multiplying by it would copy the gradients unchanged. (On CUDA reading it would
    wait for the device, so CUDA gradients are always multiplied.)"""
    return (type(g) is torch.Tensor and g.device.type == "cpu" and not g.requires_grad
            and g.numel() == 1 and g.item() == 1.0)


def _pairwise_backward(ctx: Any, grad_loss: Optional[torch.Tensor], *unused: Any):
    if grad_loss is None:  # the loss is not on the path to what backward() was called on
        return (None,) * 9
    a_mean, a_logvar, b_mean, b_logvar, grad, grad_scale, grad_shift = ctx.saved_tensors
    needs = embedding_needs(ctx.needs_input_grad, a_logvar, b_logvar)
    embedding_grads: List[Optional[torch.Tensor]] = [None] * 4
    if any(needs):
        # The kernel's gradients are for an upstream gradient of 1; scale them in place (four
        # [N or M, D] tensors: less to touch than the [N, M] matrix), unless it is 1.
        grads = pairwise_backward_op(grad, a_mean, a_logvar, b_mean, b_logvar, ctx.metric, needs)
        if compiling() or not _is_one(grad_loss):
            g = grad_loss.to(device=a_mean.device, dtype=a_mean.dtype)
            grads = tuple(x.mul_(g) if need else x for x, need in zip(grads, needs))
        embedding_grads = [x if need else None for x, need in zip(grads, needs)]
    g_scale = _times(grad_scale, grad_loss) if ctx.needs_input_grad[5] else None
    g_shift = _times(grad_shift, grad_loss) if ctx.needs_input_grad[6] else None
    return (*embedding_grads, None, g_scale, g_shift, None, None)


_pairwise_bce_op.register_autograd(_pairwise_backward, setup_context=_pairwise_setup_context)
register_autocast_float32(_pairwise_bce_op)


def distance_bce_with_logits(
    distance: torch.Tensor,
    target: Optional[torch.Tensor] = None,
    *,
    scale: Scalar = 5.0,
    shift: Scalar = 5.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """BCE-with-logits of the match logits ``shift - scale * distance`` against ``target``.

    The same value as ``F.binary_cross_entropy_with_logits(-scale * distance + shift, target,
    reduction=reduction)``, in one fused pass (module docstring). With
    ``distance = pcmekit.pairwise_distance(img, txt, metric="csd")`` and learnable ``scale`` and
    ``shift`` it is PCME++'s matching loss for one direction (PCME++ counts it for i2t and t2i).

    Args:
        distance: ``[N, M]`` floating tensor (float32 or float64; on CUDA also float16 and
            bfloat16, computed in float32), e.g. from
            :func:`pcmekit.pairwise_distance`. Any strides.
        target: ``[N, M]`` match matrix with values in [0, 1] (soft labels allowed); ``None`` means
            the identity (pair i matches caption i). Converted to the distance's dtype; it gets
            no gradient.
        scale, shift: numbers or one-element floating tensors; tensors that require grad get
            their gradients (computed in the same pass).
        reduction: ``"mean"`` over all N M pairs (NaN when there are none, as in torch) or
            ``"sum"``.

    Returns:
        0-dim tensor (float32 for 16-bit distances on CUDA), differentiable with respect to
        ``distance``, ``scale`` and ``shift``.

    Accuracy: float32 sums are accumulated in double; exp and log1p are evaluated by polynomials
    within a few float32 ulp on the CPU, by the device's math library on CUDA (tests/test_bce.py
    and tests/test_cuda_emu_bce.py compare with float64). Under ``torch.autocast`` 16-bit
    distances are computed as float32 (docs/design.md, "Autocast").

    Raises:
        TypeError: ``distance`` not a floating tensor, or bad ``scale``/``shift`` types.
        ValueError: ``distance`` not 2-D, ``target`` of another shape or device, ``target``
            requiring grad, unknown ``reduction``, non-finite ``scale``/``shift``.
    """
    if not isinstance(distance, torch.Tensor):
        raise TypeError(f"distance must be a torch.Tensor, got {type(distance).__name__}")
    if not distance.is_floating_point():
        raise TypeError(f"distance must be floating point, got dtype {distance.dtype}")
    if distance.dim() != 2:
        raise ValueError(f"distance must be 2-D [N, M], got shape {tuple(distance.shape)}")
    (distance,) = autocast_float32(distance)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    target = _check_target(target, tuple(distance.shape), distance.device, distance.dtype)
    s = _as_scalar_tensor(scale, "scale", distance)
    t = _as_scalar_tensor(shift, "shift", distance)
    loss, _, _, _ = _bce_op(distance, target, s, t, reduction == "mean")
    return loss


Gaussians = Union[ProbEmbedding, Tuple[torch.Tensor, Optional[torch.Tensor]]]


def pairwise_bce_loss(
    a: Gaussians,
    b: Gaussians,
    target: Optional[torch.Tensor] = None,
    *,
    metric: str = "csd",
    scale: Scalar = 5.0,
    shift: Scalar = 5.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``distance_bce_with_logits(pairwise_distance(a, b, metric), target, scale=, shift=)`` as one op.

    Same value and gradients as the two calls, with less memory traffic (module docstring): use it
    for PCME++-style training (``metric="csd"``, learnable ``scale`` and ``shift``).

    Args:
        a, b: the two sets of Gaussians, ``[N, D]`` and ``[M, D]``: :class:`~pcmekit.ProbEmbedding`
            or ``(mean, logvar)`` pairs of tensors (``logvar`` may be ``None`` for ``l2``).
        target: ``[N, M]`` match matrix in [0, 1], or ``None`` for the identity.
        metric, scale, shift, reduction: as in :func:`pcmekit.pairwise_distance` and
            :func:`distance_bce_with_logits`.

    Returns:
        0-dim tensor, differentiable with respect to both means and log-variances, ``scale`` and
        ``shift``.

    Raises:
        TypeError / ValueError: as :func:`pcmekit.pairwise_distance` and
        :func:`distance_bce_with_logits` raise them (numpy arrays are not accepted: a loss needs
        autograd).
    """
    metric = check_metric(metric)
    a_mean, a_logvar = gaussians_of(a, "a", pairs=True)
    b_mean, b_logvar = gaussians_of(b, "b", pairs=True)
    a_mean, a_logvar, b_mean, b_logvar = autocast_float32(a_mean, a_logvar, b_mean, b_logvar)
    am, alv, bm, blv, was_numpy = prepare_pair(a_mean, a_logvar, b_mean, b_logvar, metric != "l2", metric)
    if was_numpy:
        raise TypeError("pairwise_bce_loss takes torch tensors (a loss needs autograd), got numpy arrays")
    shape = (am.shape[0], bm.shape[0])
    distance_dtype = out_dtype(am.dtype)
    target = _check_target(target, shape, am.device, distance_dtype)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    like = am.new_empty((), dtype=distance_dtype)
    s = _as_scalar_tensor(scale, "scale", like)
    t = _as_scalar_tensor(shift, "shift", like)
    loss, _, _, _ = _pairwise_bce_op(am, alv, bm, blv, target, s, t, metric, reduction == "mean")
    return loss
