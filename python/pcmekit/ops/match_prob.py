"""The match probability op: PCME's Monte-Carlo match probability (docs/design.md, "The match
probability"; csrc: include/pcmekit/match_prob.h, core/match_prob.cpp, cpu/, cuda/).

One name throughout: ``match_prob`` in C++, in this module and in its helpers. The torch op is
``pcmekit::match_logprob`` because it returns ``(log p, log(1 - p))`` for every pair of two sets
of Gaussians from given noise, not ``p`` (docs/design.md, "Names"); its backward is the custom op
``pcmekit::match_logprob_backward`` (a fused kernel too). Both have fake implementations, so they
work under autograd, ``torch.compile`` and ``torch.library.opcheck``. The public functions
:func:`match_prob` and :func:`match_logprob` validate the arguments and draw the noise when it
is not given.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union, overload

import numpy as np
import torch

from .. import _core
from .._core import get_num_threads, matrix_view, stream_handle
from ..embedding import ProbEmbedding
from ._args import (
    HALF,
    as_scalar,
    autocast_float32,
    check_bool,
    check_eps,
    check_generator,
    check_num_samples,
    draw_eps,
    eager_without_grad,
    empty_grads,
    prepare_pair,
    register_autocast_float32,
    unpack_pair,
)

__all__ = ["match_prob", "match_logprob", "match_prob_op", "match_prob_scalar"]

Array = Union[torch.Tensor, np.ndarray]
Scalar = Union[float, int, torch.Tensor]


def _flat_eps(eps: torch.Tensor) -> torch.Tensor:
    """[N, J, D] -> [N * J, D] (a view whenever the strides allow; the core takes any strides)."""
    return eps.reshape(eps.shape[0] * eps.shape[1], eps.shape[2])


def _pair_shape(a_mean: torch.Tensor, b_mean: torch.Tensor) -> Tuple[int, int]:
    return (a_mean.shape[0], b_mean.shape[0])


def _match_prob_kernel(
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    eps_a: torch.Tensor,
    eps_b: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    squared: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    log_p = a_mean.new_empty(_pair_shape(a_mean, b_mean))
    log_q = a_mean.new_empty(_pair_shape(a_mean, b_mean))
    flat_a, flat_b = _flat_eps(eps_a), _flat_eps(eps_b)  # referenced until the call returns
    _core.match_prob_forward(
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        matrix_view(flat_a),
        matrix_view(flat_b),
        eps_a.shape[1],
        float(scale),
        float(shift),
        squared,
        matrix_view(log_p),
        matrix_view(log_q),
        get_num_threads(),
        stream_handle(a_mean.device),
        _core.matmul_precision_code(),
    )
    return log_p, log_q


# The custom op is what autograd, torch.compile and the dispatcher's modes see. An eager call that
# needs no gradient needs none of them: it runs the kernel function itself, which skips the
# dispatcher's round trip and, on the first call of a process, torch's import of its compiler
# stack for custom ops (~1.5 s here).
match_prob_op = torch.library.custom_op("pcmekit::match_logprob", _match_prob_kernel, mutates_args=())


@match_prob_op.register_fake
def _(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale, shift, squared):
    shape = _pair_shape(a_mean, b_mean)
    return a_mean.new_empty(shape), a_mean.new_empty(shape)


def _backward_outputs(
    a_mean: torch.Tensor, b_mean: torch.Tensor, needs: List[bool]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    shapes = (a_mean.shape, a_mean.shape, b_mean.shape, b_mean.shape, (1, 2))
    return empty_grads(a_mean, shapes, needs)  # type: ignore[return-value]


@torch.library.custom_op("pcmekit::match_logprob_backward", mutates_args=())
def _match_prob_backward_op(
    grad_log_p: torch.Tensor,
    grad_log_q: torch.Tensor,
    log_p: torch.Tensor,
    log_q: torch.Tensor,
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    eps_a: torch.Tensor,
    eps_b: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    squared: bool,
    needs: List[bool],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (a_mean, a_logvar, b_mean, b_logvar) and ``[[d scale, d shift]]``; one
    nobody needs (``needs[k]`` false) comes back as an empty tensor and is not computed."""
    grads = _backward_outputs(a_mean, b_mean, needs)
    flat_a, flat_b = _flat_eps(eps_a), _flat_eps(eps_b)
    g_am, g_al, g_bm, g_bl, g_ss = (matrix_view(g) if need else None for g, need in zip(grads, needs))
    _core.match_prob_backward(
        matrix_view(grad_log_p),
        matrix_view(grad_log_q),
        matrix_view(log_p),
        matrix_view(log_q),
        matrix_view(a_mean),
        matrix_view(a_logvar),
        matrix_view(b_mean),
        matrix_view(b_logvar),
        matrix_view(flat_a),
        matrix_view(flat_b),
        eps_a.shape[1],
        float(scale),
        float(shift),
        squared,
        g_am,
        g_al,
        g_bm,
        g_bl,
        g_ss,
        get_num_threads(),
        stream_handle(a_mean.device),
        _core.matmul_precision_code(),
    )
    return grads


@_match_prob_backward_op.register_fake
def _(grad_log_p, grad_log_q, log_p, log_q, a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b,
      scale, shift, squared, needs):
    return _backward_outputs(a_mean, b_mean, needs)


def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
    a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale, shift, squared = inputs
    log_p, log_q = output
    ctx.save_for_backward(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale, shift, log_p, log_q)
    ctx.squared = squared


def _backward(ctx: Any, grad_log_p: Optional[torch.Tensor], grad_log_q: Optional[torch.Tensor]):
    a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale, shift, log_p, log_q = ctx.saved_tensors
    need = ctx.needs_input_grad
    needs = [bool(need[0]), bool(need[1]), bool(need[2]), bool(need[3]), bool(need[6] or need[7])]
    if grad_log_p is None:
        grad_log_p = torch.zeros_like(log_p)
    if grad_log_q is None:
        grad_log_q = torch.zeros_like(log_q)
    g_am, g_al, g_bm, g_bl, g_ss = _match_prob_backward_op(
        grad_log_p.contiguous(), grad_log_q.contiguous(), log_p, log_q, a_mean, a_logvar, b_mean,
        b_logvar, eps_a, eps_b, scale, shift, ctx.squared, needs,
    )
    g_scale = g_ss[0, 0].to(scale.dtype).to(scale.device).reshape(scale.shape) if need[6] else None
    g_shift = g_ss[0, 1].to(shift.dtype).to(shift.device).reshape(shift.shape) if need[7] else None
    return (
        g_am if needs[0] else None,
        g_al if needs[1] else None,
        g_bm if needs[2] else None,
        g_bl if needs[3] else None,
        None,  # eps_a: the noise is a constant
        None,  # eps_b
        g_scale,
        g_shift,
        None,  # squared
    )


match_prob_op.register_autograd(_backward, setup_context=_setup_context)
register_autocast_float32(match_prob_op)


# ---------------------------------------------------------------------------------------------
# Public functions.


def match_prob_scalar(x: Any, name: str) -> torch.Tensor:
    """scale / shift of the match probability as a 0-d tensor (a tensor argument keeps its
    autograd graph; a number becomes float64, so the kernel gets it exactly). The core checks
    that it is finite."""
    return as_scalar(x, name, accepts="a Python float or a 0-d tensor")


def _prepare(
    a_mean: Any, a_logvar: Any, b_mean: Any, b_logvar: Any, scale: Any, shift: Any,
    num_samples: Any, eps_a: Any, eps_b: Any, generator: Optional[torch.Generator], squared: Any,
):
    a_mean, a_logvar, b_mean, b_logvar, leftover = unpack_pair(a_mean, a_logvar, b_mean, b_logvar)
    if leftover != (None, None):
        raise TypeError("with two ProbEmbeddings, pass every other argument by keyword")
    for name, value in (("a_logvar", a_logvar), ("b_logvar", b_logvar)):
        if value is None:
            raise ValueError(f"match_prob needs {name} (the log-variances), got None")
    a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b = autocast_float32(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b)
    am, al, bm, bl, to_numpy = prepare_pair(a_mean, a_logvar, b_mean, b_logvar, True, "match_prob")
    assert al is not None and bl is not None  # prepare_pair raised otherwise (needs_logvar=True)
    j = check_num_samples(num_samples)
    check_bool(squared, "squared")
    check_generator(generator)
    scale_t, shift_t = match_prob_scalar(scale, "scale"), match_prob_scalar(shift, "shift")
    n, m, d = am.shape[0], bm.shape[0], am.shape[1]
    ea = None if eps_a is None else check_eps(eps_a, "eps_a", n, "N", d, None, am)
    eb = None if eps_b is None else check_eps(eps_b, "eps_b", m, "M", d, None, am)
    if ea is not None and ea.shape[1] != j:
        raise ValueError(
            f"eps_a has J = {ea.shape[1]} samples per embedding but num_samples is {j}; pass num_samples={ea.shape[1]}"
        )
    if eb is not None and eb.shape[1] != j:
        other = "eps_a's J" if ea is not None else "num_samples"
        raise ValueError(f"eps_b has J = {eb.shape[1]} samples per embedding but {other} is {j}")
    if ea is None:
        ea = draw_eps(n, j, d, am, generator)
    if eb is None:
        eb = draw_eps(m, j, d, am, generator)
    if am.dtype in HALF:
        # 16-bit inputs compute in float32 (and return float32).
        am, al, bm, bl, ea, eb = (t.float() for t in (am, al, bm, bl, ea, eb))
    return am, al, bm, bl, ea, eb, scale_t, shift_t, to_numpy


# Typed call forms (the implementations below take them all): tensors or two ProbEmbeddings give
# tensors, numpy arrays give arrays.
@overload
def match_logprob(
    a_mean: ProbEmbedding,
    a_logvar: ProbEmbedding,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> Tuple[torch.Tensor, torch.Tensor]: ...
@overload
def match_logprob(
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> Tuple[torch.Tensor, torch.Tensor]: ...
@overload
def match_logprob(
    a_mean: np.ndarray,
    a_logvar: np.ndarray,
    b_mean: np.ndarray,
    b_logvar: np.ndarray,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> Tuple[np.ndarray, np.ndarray]: ...
def match_logprob(
    a_mean: Any,
    a_logvar: Any = None,
    b_mean: Any = None,
    b_logvar: Any = None,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = 7,
    eps_a: Optional[Array] = None,
    eps_b: Optional[Array] = None,
    generator: Optional[torch.Generator] = None,
    squared: bool = False,
) -> Tuple[Array, Array]:
    """``(log p, log(1 - p))`` of PCME's Monte-Carlo match probability for every pair.

    With ``J = num_samples`` samples per Gaussian, ``z_as = mu_a + exp(logvar_a / 2) * eps_a[:, s]``
    (likewise ``z_bt``), ``d_st = sqrt(||z_as - z_bt||^2 + 1e-6)`` (``||z_as - z_bt||^2`` with
    ``squared=True``) and

        p(a, b) = 1/J^2 * sum_{s,t} sigmoid(-scale * d_st + shift).

    Both outputs are computed in log space (a log-sum-exp over the J^2 log-sigmoids): they are
    finite and accurate to relative rounding even where ``p`` rounds to 0 or to 1 in float32:
    ``log p ~ -69`` and ``log(1 - p) ~ -1e-30`` for ``p ~ 1e-30``; ``log p ~ -1e-9`` and
    ``log(1 - p) ~ -20.7`` for ``p ~ 1 - 1e-9``.

    Call it with four arrays ``(a_mean [N, D], a_logvar [N, D], b_mean [M, D], b_logvar [M, D])``
    or with two :class:`~pcmekit.ProbEmbedding`. ``scale`` and ``shift`` are Python floats or
    0-d tensors; tensors that require grad get gradients. ``eps_a`` ``[N, J, D]`` and ``eps_b``
    ``[M, J, D]`` are the standard-normal noise (treated as constants: no gradient); each one
    omitted is drawn with ``torch.randn`` from ``generator`` on the generator's device (the CPU
    when ``generator`` is None), ``eps_a`` first, then moved to the inputs' device, so a seeded
    CPU generator gives the same noise and the same result on every device. Given noise must
    have ``J == num_samples``.

    Returns two ``[N, M]`` arrays in the input dtype (float32 for float16/bfloat16 CUDA inputs),
    numpy for numpy inputs. Differentiable with respect to the means, the log-variances (through
    ``z = mu + sigma * eps``), scale and shift; the backward pass is a fused kernel.

    Accuracy: sample distances are computed in inner-product form (``|z_a|^2 + |z_b|^2 - 2 z_a.z_b``,
    clamped at zero), so in float32 their absolute error is about 1e-7 times the squared sample
    norms. On CUDA, float32 (and 16-bit) inputs follow ``torch.get_float32_matmul_precision()``:
    "highest" keeps that float32 accuracy, "high"/"medium" compute the sample products on TF32
    tensor cores (J <= 64), about 2^-10 of the samples' products (docs/design.md, "The match
    probability on tensor cores"); the backward pass is float32 in every mode.
    NaN inputs give NaN in the affected rows and columns. Convention: PCME v1's code uses
    ``exp(s) / (exp(s) + exp(-s)) = sigmoid(2 s)``, so its scale and shift are half of ours.

    Raises:
        ValueError: wrong shapes (including eps), num_samples < 1 or not matching the given
            eps, eps_a / eps_b with different J, non-finite scale or shift, mixed devices.
        TypeError: non-floating or mixed dtypes, 16-bit dtypes on the CPU.
    """
    am, al, bm, bl, ea, eb, scale_t, shift_t, to_numpy = _prepare(
        a_mean, a_logvar, b_mean, b_logvar, scale, shift, num_samples, eps_a, eps_b, generator, squared
    )
    eager = eager_without_grad((am, al, bm, bl, ea, eb, scale_t, shift_t))
    op = _match_prob_kernel if eager else match_prob_op
    log_p, log_q = op(am, al, bm, bl, ea, eb, scale_t, shift_t, squared)
    if to_numpy:
        return log_p.detach().numpy(), log_q.detach().numpy()
    return log_p, log_q


@overload
def match_prob(
    a_mean: ProbEmbedding,
    a_logvar: ProbEmbedding,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> torch.Tensor: ...
@overload
def match_prob(
    a_mean: torch.Tensor,
    a_logvar: torch.Tensor,
    b_mean: torch.Tensor,
    b_logvar: torch.Tensor,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> torch.Tensor: ...
@overload
def match_prob(
    a_mean: np.ndarray,
    a_logvar: np.ndarray,
    b_mean: np.ndarray,
    b_logvar: np.ndarray,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = ...,
    eps_a: Optional[Array] = ...,
    eps_b: Optional[Array] = ...,
    generator: Optional[torch.Generator] = ...,
    squared: bool = ...,
) -> np.ndarray: ...
def match_prob(
    a_mean: Any,
    a_logvar: Any = None,
    b_mean: Any = None,
    b_logvar: Any = None,
    *,
    scale: Scalar,
    shift: Scalar,
    num_samples: int = 7,
    eps_a: Optional[Array] = None,
    eps_b: Optional[Array] = None,
    generator: Optional[torch.Generator] = None,
    squared: bool = False,
) -> Array:
    """PCME's Monte-Carlo match probability ``p(a_i, b_j)``, ``[N, M]``; larger is closer.

    ``exp`` of the first output of :func:`match_logprob`, which documents the arguments. Use
    :func:`match_logprob` for losses: ``p`` itself rounds to 0 or 1 where its logarithms do not.
    """
    am, al, bm, bl, ea, eb, scale_t, shift_t, to_numpy = _prepare(
        a_mean, a_logvar, b_mean, b_logvar, scale, shift, num_samples, eps_a, eps_b, generator, squared
    )
    log_p, _ = match_prob_op(am, al, bm, bl, ea, eb, scale_t, shift_t, squared)
    p = torch.exp(log_p)
    return p.detach().numpy() if to_numpy else p
