"""Access to the compiled core: build information, views, threads and streams.

Everything that touches ``pcmekit._C`` directly goes through this module, so the rest of the
package sees plain Python functions.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple, overload

import torch

from . import _C

__all__ = ["build_info", "cuda_available", "set_num_threads", "get_num_threads"]

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3, torch.int64: 4}
_DEVICE_CODES = {"cpu": 0, "cuda": 1}
_num_threads: Optional[int] = None

View = Tuple[int, int, int, int, int, int, int, int]


def build_info() -> dict[str, Any]:
    """How this copy of pcmekit was built and what it will use at run time.

    Returns a dict with ``version``, ``cuda_compiled`` (whether the CUDA back end was compiled
    in), ``cuda_archs`` (the compiled GPU architectures), ``cuda_runtime``, ``cuda_available``,
    ``cuda_devices``, ``cpu_simd`` (the micro-kernel the running CPU gets: ``avx512``, ``avx2``
    or ``generic``), ``cpu_threading`` (``openmp (<library>)`` when the CPU kernels run on the
    OpenMP runtime torch loaded, ``pcmekit pool`` otherwise) and ``num_threads`` (CPU threads the
    kernels use).
    """
    info: Dict[str, Any] = dict(_C.build_config())
    info["cuda_devices"] = _C.cuda_device_count()
    info["cuda_available"] = info["cuda_devices"] > 0
    info["num_threads"] = get_num_threads()
    info["torch"] = torch.__version__
    return info


@functools.lru_cache(maxsize=None)
def cuda_compiled() -> bool:
    """True when the CUDA back end was compiled in (a GPU may still be missing)."""
    return bool(_C.build_config()["cuda_compiled"])


def cuda_available() -> bool:
    """True when the CUDA back end was compiled in and a GPU is visible."""
    return _C.cuda_device_count() > 0


def set_num_threads(num_threads: Optional[int]) -> None:
    """Fix the number of CPU threads pcmekit's kernels use; ``None`` follows ``torch.get_num_threads()``."""
    global _num_threads
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    _num_threads = num_threads


def get_num_threads() -> int:
    """CPU threads the kernels use: ``set_num_threads``'s value, else ``torch.get_num_threads()``."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()


@overload
def matrix_view(t: torch.Tensor) -> View: ...
@overload
def matrix_view(t: None) -> None: ...
@overload
def matrix_view(t: Optional[torch.Tensor]) -> Optional[View]: ...
def matrix_view(t: Optional[torch.Tensor]) -> Optional[View]:
    """The core's description of a 2-D tensor (None stays None)."""
    if t is None:
        return None
    device = t.device
    return (
        t.data_ptr(),
        t.shape[0],
        t.shape[1],
        t.stride(0),
        t.stride(1),
        _DTYPE_CODES[t.dtype],
        _DEVICE_CODES[device.type],
        device.index or 0,
    )


def stream_handle(device: torch.device) -> int:
    """The raw CUDA stream pcmekit must launch on (0 on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


#: Outcome codes of ``_C.adamp_step``, in code order.
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
    code = _DTYPE_CODES[params[0].dtype] if params else 0
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

    outcome = _C.adamp_step(
        algorithm, views(params), views(grads), views(exp_avgs),
        None if exp_avg_sqs is None else views(exp_avg_sqs), list(steps), projectable,
        lr, beta1, beta2, momentum, dampening, eps, weight_decay, delta, wd_ratio, nesterov,
        get_num_threads(),
    )
    return [ADAMP_PROJECTIONS[k] for k in outcome]
