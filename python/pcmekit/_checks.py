"""Argument checks shared by the public ops.

Every message names the argument and says what was expected and what arrived. The compiled core
checks again (it must never trust its caller), but users see these first.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ._core import cuda_compiled
from .embedding import ProbEmbedding

METRICS: Tuple[str, ...] = ("csd", "w2", "l2", "kl", "bhattacharyya", "elk")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def as_tensor(x: Any, name: str) -> Tuple[torch.Tensor, bool]:
    """Returns (tensor, came_from_numpy). numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (float32 or float64), got numpy {x.dtype}")
        return torch.from_numpy(x), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_float_matrix(t: torch.Tensor, name: str, doc: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape {doc} (2-D), got {list(t.shape)} ({t.dim()}-D)")
    if t.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be floating point (float32 or float64; float16/bfloat16 on CUDA), got {t.dtype}"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a cpu or cuda device, got {t.device}")
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} has dtype {t.dtype}, which pcmekit supports on CUDA only; use float32 or float64 on the CPU")
    if t.device.type == "cuda" and not cuda_compiled():
        raise ValueError(
            f"{name} is a CUDA tensor, but pcmekit was built without CUDA support; rebuild with nvcc "
            "on PATH (PCMEKIT_CUDA=ON) or move the inputs to the CPU"
        )


def check_metric(metric: Any, allowed: Sequence[str] = METRICS) -> str:
    if not isinstance(metric, str) or metric not in allowed:
        raise ValueError(f"metric must be one of {', '.join(allowed)}; got {metric!r}")
    return metric


def check_gaussians(
    mean: torch.Tensor,
    logvar: Optional[torch.Tensor],
    mean_name: str,
    logvar_name: str,
    rows: str,
) -> None:
    """One side: mean [rows, D] and an optional logvar of the same shape, dtype and device."""
    check_float_matrix(mean, mean_name, f"[{rows}, D]")
    if logvar is None:
        return
    check_float_matrix(logvar, logvar_name, f"[{rows}, D]")
    if logvar.shape != mean.shape:
        raise ValueError(
            f"{logvar_name} must have the shape of {mean_name} {list(mean.shape)}, got {list(logvar.shape)}"
        )


def check_same(tensors: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> None:
    """All present tensors share the first one's dtype and device."""
    present = [(n, t) for n, t in tensors if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; all inputs must share one dtype"
            )
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; all inputs must be on one device"
            )


def unpack_pair(
    a_mean: Any, a_logvar: Any, b_mean: Any, b_logvar: Any
) -> Tuple[Any, Any, Any, Any, Optional[Any]]:
    """Accepts (a, b) ProbEmbeddings in the first two slots; returns the four arrays and any leftover
    third positional value (which the caller may treat as its next argument)."""
    if isinstance(a_mean, ProbEmbedding):
        a, b = a_mean, a_logvar
        if not isinstance(b, ProbEmbedding):
            raise TypeError(
                f"with a ProbEmbedding as the first argument the second must be one too, got {type(b).__name__}"
            )
        return a.mean, a.logvar, b.mean, b.logvar, b_mean
    if b_mean is None:
        raise TypeError("b_mean is required (or pass two ProbEmbeddings)")
    return a_mean, a_logvar, b_mean, b_logvar, None


def prepare_pair(
    a_mean: Any,
    a_logvar: Any,
    b_mean: Any,
    b_logvar: Any,
    needs_logvar: bool,
    metric: str,
    sides: Tuple[str, str] = ("a", "b"),
    rows: Tuple[str, str] = ("N", "M"),
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], bool]:
    """Converts and validates the two sides of a pairwise op. Returns the tensors and whether the
    inputs were numpy arrays (so the result should be too). ``sides`` and ``rows`` name the two
    sides in messages (``("q", "g")`` and ``("Q", "N")`` for top-k)."""
    a, b = sides
    names = (f"{a}_mean", f"{a}_logvar", f"{b}_mean", f"{b}_logvar")
    converted: List[Optional[torch.Tensor]] = []
    numpy_flags = []
    for name, x in zip(names, (a_mean, a_logvar, b_mean, b_logvar)):
        if x is None and name.endswith("logvar"):  # a missing mean is as_tensor's TypeError
            converted.append(None)
            continue
        t, was_numpy = as_tensor(x, name)
        converted.append(t)
        numpy_flags.append(was_numpy)
    am, alv, bm, blv = converted
    assert am is not None and bm is not None
    if needs_logvar and (alv is None or blv is None):
        missing = names[1] if alv is None else names[3]
        raise ValueError(f"metric '{metric}' needs {names[1]} and {names[3]}, but {missing} is None")
    check_gaussians(am, alv, names[0], names[1], rows[0])
    check_gaussians(bm, blv, names[2], names[3], rows[1])
    if bm.shape[1] != am.shape[1]:
        raise ValueError(
            f"{names[2]} must have shape [{rows[1]}, D] with D == {names[0]}'s D ({am.shape[1]}), got {list(bm.shape)}"
        )
    check_same(list(zip(names, converted)))
    if any(numpy_flags) and not all(numpy_flags):
        raise TypeError("pass either all numpy arrays or all torch tensors, not a mix")
    return am, alv, bm, blv, bool(numpy_flags) and all(numpy_flags)
