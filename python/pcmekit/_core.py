"""Access to the compiled core: build information, views, threads, streams and the kernels.

This is the only module that imports ``pcmekit._C``: the ops (``pcmekit.ops.<op>``) call the
compiled entry points through the names below, so the rest of the package sees plain Python
functions.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Tuple, overload

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
    OpenMP runtime torch loaded, ``pcmekit pool`` otherwise), ``num_threads`` (CPU threads the
    kernels use) and the core's limits: ``cuda_max_topk`` (the largest k the CUDA top-k takes)
    and ``cuda_bce_sums_rows`` (rows of the float64 ``[rows, 3]`` sums the CUDA BCE ops write).
    """
    info: Dict[str, Any] = dict(_build_config())
    info["cuda_devices"] = _C.cuda_device_count()
    info["cuda_available"] = info["cuda_devices"] > 0
    info["num_threads"] = get_num_threads()
    info["torch"] = torch.__version__
    return info


def cuda_compiled() -> bool:
    """True when the CUDA back end was compiled in (a GPU may still be missing)."""
    return bool(_build_config()["cuda_compiled"])


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
    # One call per attribute (each costs a few hundred ns, and a small kernel call is tens of us).
    rows, cols = t.shape
    row_stride, col_stride = t.stride()
    device = t.device
    return (t.data_ptr(), rows, cols, row_stride, col_stride, _DTYPE_CODES[t.dtype], _DEVICE_CODES[device.type],
            device.index or 0)


def dtype_code(dtype: torch.dtype) -> int:
    """The core's code of a torch dtype (also what ranks exchange to compare dtypes)."""
    return _DTYPE_CODES[dtype]


#: torch.get_float32_matmul_precision() -> the core's MatmulPrecision code (pcmekit/pairwise.h).
MATMUL_PRECISION_CODES = {"highest": 0, "high": 1, "medium": 2}


def matmul_precision_code() -> int:
    """The core's code for torch's current float32 matmul precision.

    "highest" (torch's default) keeps float32 distances on CUDA at full float32 accuracy; "high"
    and "medium" let them run on TF32 tensor cores (docs/design.md, "CUDA tensor cores and the
    matmul precision"). The CPU kernels ignore it.
    """
    return MATMUL_PRECISION_CODES[torch.get_float32_matmul_precision()]


def stream_handle(device: torch.device) -> int:
    """The raw CUDA stream pcmekit must launch on (0 on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


# ---------------------------------------------------------------------------------------------
# The compiled entry points, one per kernel (typed in _C.pyi). pcmekit.ops.<op> builds the views
# and calls them from here.

pairwise_forward = _C.pairwise_forward
pairwise_backward = _C.pairwise_backward
match_prob_forward = _C.match_prob_forward
match_prob_backward = _C.match_prob_backward
topk_workspace_bytes = _C.topk_workspace_bytes
topk = _C.topk
topk_prepared_layout = _C.topk_prepared_layout
topk_prepare_gallery = _C.topk_prepare_gallery
distance_bce = _C.distance_bce
pairwise_bce = _C.pairwise_bce
adamp_kernel = _C.adamp_step
fma_peak = _C.fma_peak
supported_isas = _C.supported_isas


@functools.lru_cache(maxsize=None)
def _build_config() -> Dict[str, Any]:
    return dict(_C.build_config())


def adamp_step(*args: Any, **kwargs: Any) -> List[str]:
    """The fused AdamP / SGDP step over tensors: :func:`pcmekit.ops.adamp.adamp_step` (the
    optimizers call it through this name)."""
    from .ops.adamp import adamp_step as step

    return step(*args, **kwargs)
