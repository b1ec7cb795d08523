"""The argument rules every public op shares, written once.

What lives here is what only Python can check or decide: the types of the arguments (tensor,
numpy array, ProbEmbedding, number), numpy wrapping, the two sides of a pairwise op agreeing in
torch's terms (ndim, D, dtype, device), the scalars' and num_samples' coercion, the noise, and
the NaN scan of top-k. Ranges and limits (k against N and the CUDA limit, finite scale and
shift, num_samples against the noise) belong to the compiled core (csrc/core/checks.h), which
checks every view it receives. Every message names the argument and says what was expected and
what arrived (docs/design.md, "Validation").
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._core import cuda_compiled
from ..embedding import ProbEmbedding

#: The pairwise distances, in the core's code order (index = ``Metric`` code).
METRICS: Tuple[str, ...] = ("csd", "w2", "l2", "kl", "bhattacharyya", "elk", "inclusion")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# torch.autocast (docs/design.md, "Autocast"): pcmekit's ops compute in float32 under autocast,
# as torch's own cdist and binary_cross_entropy_with_logits do (autocast's float32 list).

#: Device types pcmekit registers its autocast rule for.
AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_float32(*tensors: Any) -> Tuple[Any, ...]:
    """The arguments, with every float16 / bfloat16 tensor cast to float32 when autocast is
    enabled for its device type (float32, float64, None and non-tensors pass unchanged). The
    public functions call it first, so that their argument checks and their eager fast paths,
    which skip the dispatcher, see what the op will compute on."""
    return tuple(
        t.to(torch.float32)
        if isinstance(t, torch.Tensor) and t.dtype in HALF and torch.is_autocast_enabled(t.device.type)
        else t
        for t in tensors
    )


def register_autocast_float32(op: Any) -> None:
    """The same rule for calls of the custom op itself (``torch.ops.pcmekit.*``, compiled
    graphs): torch.library's autocast registration, which casts the op's floating inputs other
    than float64 to float32 and runs it with autocast off."""
    for device_type in AUTOCAST_DEVICES:
        if torch.amp.is_autocast_available(device_type):
            torch.library.register_autocast(op, device_type, torch.float32)


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of every op's floating output for inputs of ``dtype``: 16-bit inputs accumulate, and
    return, in float32 (a sum of D squared terms overflows float16 easily)."""
    return torch.float32 if dtype in HALF else dtype


def embedding_needs(
    needs_input_grad: Sequence[bool], a_logvar: Optional[torch.Tensor], b_logvar: Optional[torch.Tensor]
) -> List[bool]:
    """Which of (a_mean, a_logvar, b_mean, b_logvar), an op's first four inputs, need a gradient."""
    return [
        bool(needs_input_grad[0]),
        bool(needs_input_grad[1]) and a_logvar is not None,
        bool(needs_input_grad[2]),
        bool(needs_input_grad[3]) and b_logvar is not None,
    ]


def empty_grads(like: torch.Tensor, shapes: Sequence[Any], needs: Sequence[bool]) -> Tuple[torch.Tensor, ...]:
    """A backward op's outputs: ``shapes[k]`` where ``needs[k]``, else an empty tensor (not computed)."""
    return tuple(like.new_empty(shape if need else (0,)) for shape, need in zip(shapes, needs))


def compiling() -> bool:
    """True while torch.compile traces (reading a tensor's value would break the graph)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def eager_without_grad(tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """True when a call on ``tensors`` can run its kernel function directly instead of its custom
    op: not tracing, plain tensors (no subclass or mode to dispatch to) and none that needs a
    gradient."""
    if compiling():
        return False
    grad = torch.is_grad_enabled()
    return all(t is None or (type(t) is torch.Tensor and not (grad and t.requires_grad)) for t in tensors)


# ---------------------------------------------------------------------------------------------
# Arrays.


def as_tensor(x: Any, name: str) -> Tuple[torch.Tensor, bool]:
    """Returns (tensor, came_from_numpy). numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (float32 or float64), got numpy {x.dtype}")
        return torch.from_numpy(x), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_device(device: torch.device, name: str) -> None:
    """``name`` lives on a device pcmekit has a back end for."""
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a cpu or cuda device, got {device}")
    if device.type == "cuda" and not cuda_compiled():
        raise ValueError(
            f"{name} is on a CUDA device, but pcmekit was built without CUDA support; rebuild with nvcc "
            "on PATH (PCMEKIT_CUDA=ON) or move the inputs to the CPU"
        )


def check_float_matrix(t: torch.Tensor, name: str, doc: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape {doc} (2-D), got {list(t.shape)} ({t.dim()}-D)")
    if t.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be floating point (float32 or float64; float16/bfloat16 on CUDA), got {t.dtype}"
        )
    device = t.device
    if device.type == "cpu":  # the common case, checked without the general device rules
        if t.dtype in HALF:
            raise TypeError(f"{name} has dtype {t.dtype}, which pcmekit supports on CUDA only; use float32 or float64 on the CPU")
        return
    check_device(device, name)


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


# ---------------------------------------------------------------------------------------------
# ProbEmbedding arguments.


def gaussians_of(x: Any, name: str, *, pairs: bool = False, means: bool = False) -> Tuple[Any, Any]:
    """(mean, logvar) of one set of Gaussians given as a :class:`ProbEmbedding`, or (with
    ``pairs``) a ``(mean, logvar)`` pair, or (with ``means``) a tensor of means (logvar None)."""
    if isinstance(x, ProbEmbedding):
        return x.mean, x.logvar
    if pairs and isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    if means and isinstance(x, torch.Tensor):
        return x, None
    expected = "a ProbEmbedding or a (mean, logvar) pair" if pairs else "a pcmekit.ProbEmbedding"
    if means:
        expected += " or a [B, D] tensor of means"
    raise TypeError(f"{name} must be {expected}, got {type(x).__name__}")


def unpack_pair(
    a_mean: Any, a_logvar: Any, b_mean: Any, b_logvar: Any, b_name: str = "b_mean"
) -> Tuple[Any, Any, Any, Any, Tuple[Any, Any]]:
    """The four arrays of a pairwise call, which may also be made with two ProbEmbeddings
    ``(a, b)`` in the first two slots. Returns them and what the last two slots then hold
    (``(None, None)`` otherwise), which the caller may read as its next arguments."""
    if isinstance(a_mean, ProbEmbedding):
        a, b = a_mean, a_logvar
        if not isinstance(b, ProbEmbedding):
            raise TypeError(
                f"with a ProbEmbedding as the first argument the second must be one too, got {type(b).__name__}"
            )
        return a.mean, a.logvar, b.mean, b.logvar, (b_mean, b_logvar)
    if b_mean is None:
        raise TypeError(f"{b_name} is required (or pass two ProbEmbeddings)")
    return a_mean, a_logvar, b_mean, b_logvar, (None, None)


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
    """Converts and validates the two sides of a pairwise op. Returns the tensors (logvars None
    when the metric does not use them) and whether the inputs were numpy arrays (so the result
    should be too). ``sides`` and ``rows`` name the two sides in messages (``("q", "g")`` and
    ``("Q", "N")`` for top-k)."""
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
    if not needs_logvar:
        alv = blv = None
    return am, alv, bm, blv, bool(numpy_flags) and all(numpy_flags)


# ---------------------------------------------------------------------------------------------
# Scalars, counts and noise.


def as_int(x: Any, name: str) -> int:
    """An int argument (bools and floats are refused); its range is the core's to check."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return int(x)


def check_num_samples(num_samples: Any) -> int:
    """J, the Monte-Carlo samples per Gaussian: Python draws the noise, so Python checks it."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    return int(num_samples)


def check_bool(x: Any, name: str) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return x


def as_scalar(
    x: Any,
    name: str,
    *,
    accepts: str = "a number or a one-element tensor",
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> torch.Tensor:
    """A scale / shift argument as a 0-d tensor: a tensor keeps its autograd graph, a number
    becomes a ``dtype`` tensor on ``device``. ``accepts`` describes the accepted forms in
    messages. Finiteness is the core's check (it reads the value)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be {accepts}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
        return x.reshape(())
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {accepts}, got {type(x).__name__}")
    return torch.tensor(float(x), dtype=dtype, device=device)


def check_eps(eps: Any, name: str, rows: int, rows_name: str, dim: int, j: Optional[int], ref: torch.Tensor) -> torch.Tensor:
    """Given noise ``[rows, J, D]`` of the means' dtype and device (``J == j`` when ``j`` is known)."""
    t, _ = as_tensor(eps, name)
    if t.dim() != 3 or t.shape[0] != rows or t.shape[2] != dim:
        raise ValueError(
            f"{name} must have shape [{rows_name}, J, D] = [{rows}, J, {dim}], got {list(t.shape)}"
        )
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of the means ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the means' device ({ref.device}), got {t.device}")
    if j is not None and t.shape[1] != j:
        raise ValueError(f"{name} has J = {t.shape[1]} samples per embedding but num_samples is {j}")
    return t


def draw_eps(rows: int, j: int, dim: int, ref: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard-normal noise ``[rows, J, D]`` in the means' dtype, on their device."""
    # Drawn on the generator's device (the CPU without one) and moved: a CPU generator with a
    # given seed yields the same noise, hence the same result, whatever the inputs' device.
    device = generator.device if generator is not None else torch.device("cpu")
    eps = torch.randn((rows, j, dim), generator=generator, dtype=ref.dtype, device=device)
    return eps.to(ref.device)


def check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


# ---------------------------------------------------------------------------------------------
# NaN: a ranking needs comparable scores, and only Python can look (the core never reads inputs
# to validate them).


def nan_row(t: torch.Tensor) -> Optional[int]:
    """The first row of ``t`` holding a NaN, or None. One pass with no temporary when there is
    none: a sum is NaN if any element is (or if +inf and -inf meet), where ``isnan(t).any()``
    would allocate a bool tensor the size of the gallery. Only a NaN sum is looked at element by
    element, in row blocks."""
    if t.numel() == 0 or not bool(torch.isnan(t.sum())):
        return None
    flat = t.reshape(t.shape[0], -1)
    step = max(1, (1 << 22) // max(1, flat.shape[1]))
    for start in range(0, flat.shape[0], step):
        rows = torch.isnan(flat[start : start + step]).any(dim=1)
        if bool(rows.any()):
            return start + int(rows.nonzero()[0])
    return None


def check_no_nan(tensors: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> None:
    for name, t in tensors:
        row = None if t is None else nan_row(t)
        if row is not None:
            raise ValueError(
                f"{name} contains NaN (first in row {row}); top-k needs comparable scores (drop or fix those rows)"
            )
