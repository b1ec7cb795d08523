"""The fused AdamP / SGDP step (csrc: include/pcmekit/adamp.h, core/adamp.cpp, cpu/adamp.cpp).

Not a torch custom op: an optimizer step mutates its tensors in place outside autograd.
:mod:`pcmekit.optim` calls it (through ``pcmekit._core.adamp_step``) for the parameters it can fuse.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import _core
from .._core import View, dtype_code, get_num_threads

__all__ = ["adamp_step", "ADAMP_PROJECTIONS"]

#: Outcome codes of the kernel, in code order.
ADAMP_PROJECTIONS = ("none", "channel", "layer")


def adamp_step(
    algorithm: int,
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Optional[Sequence[torch.Tensor]],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float = 0.0,
    beta2: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> List[str]:
    """One fused AdamP (``algorithm=0``) or SGDP (``1``) step over CPU tensors of one dtype.

    Precondition, checked by the caller (``pcmekit.optim``): each parameter and its gradient and
    state tensors have one shape and one memory order in which every ``t[i]`` is a block of
    consecutive elements (contiguous, or channels_last). A parameter of dimension > 1 is passed
    as its channel view ``[size(0), numel / size(0)]``, any other one as ``[1, numel]``. Returns
    the projection applied to each parameter: ``"none"``, ``"channel"`` or ``"layer"``.
    """
    code = dtype_code(params[0].dtype) if params else 0
    shapes: List[Tuple[int, int]] = []
    projectable: List[bool] = []
    for p in params:
        n = p.numel()
        tested = p.dim() > 1 and n > 0
        rows = p.shape[0] if tested else 1
        shapes.append((rows, n // rows))
        projectable.append(tested)

    def views(tensors: Sequence[torch.Tensor]) -> List[View]:
        return [(t.data_ptr(), r, c, c, 1, code, 0, 0) for t, (r, c) in zip(tensors, shapes)]

    outcome = _core.adamp_kernel(
        algorithm, views(params), views(grads), views(exp_avgs),
        None if exp_avg_sqs is None else views(exp_avg_sqs), list(steps), projectable,
        lr, beta1, beta2, momentum, dampening, eps, weight_decay, delta, wd_ratio, nesterov,
        get_num_threads(),
    )
    return [ADAMP_PROJECTIONS[k] for k in outcome]
