"""``pcmekit.topk``: the k best gallery items for every query, from a fused streaming kernel.

The custom op ``pcmekit::topk`` wraps the compiled kernel (with a fake implementation, so it works
under ``torch.compile`` and ``torch.library.opcheck``); :func:`topk` validates the arguments.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from .. import _C
from .._checks import METRICS, prepare_pair
from .._core import get_num_threads, matrix_view, stream_handle
from ..embedding import ProbEmbedding
from ..montecarlo import _check_eps, _draw_eps, _scalar

__all__ = ["topk", "TOPK_METRICS", "CUDA_MAX_K"]

Array = Union[torch.Tensor, np.ndarray]

#: Every score :func:`topk` ranks by: the distances (smallest first) and ``match_prob`` (largest first).
TOPK_METRICS: Tuple[str, ...] = METRICS + ("match_prob",)
#: Largest k the CUDA kernel takes (the CPU takes any k up to the gallery size).
CUDA_MAX_K = 1024

_SCORE_DISTANCE, _SCORE_MATCH = 0, 1


def _codes(metric: str) -> Tuple[int, int]:
    if metric == "match_prob":
        return _SCORE_MATCH, 0
    return _SCORE_DISTANCE, METRICS.index(metric)


def _values_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.custom_op("pcmekit::topk", mutates_args=())
def _topk_op(
    q_mean: torch.Tensor,
    q_logvar: Optional[torch.Tensor],
    g_mean: torch.Tensor,
    g_logvar: Optional[torch.Tensor],
    eps_q: Optional[torch.Tensor],
    eps_g: Optional[torch.Tensor],
    k: int,
    metric: str,
    scale: float,
    shift: float,
    squared: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    score, metric_code = _codes(metric)
    rows = q_mean.shape[0]
    values = q_mean.new_empty((rows, k), dtype=_values_dtype(q_mean.dtype))
    indices = q_mean.new_empty((rows, k), dtype=torch.int64)
    j = 1 if eps_q is None else eps_q.shape[1]
    flat_q = None if eps_q is None else eps_q.reshape(-1, eps_q.shape[2])  # referenced until the call returns
    flat_g = None if eps_g is None else eps_g.reshape(-1, eps_g.shape[2])
    views = (matrix_view(q_mean), matrix_view(q_logvar), matrix_view(g_mean), matrix_view(g_logvar))
    workspace = None
    need = _C.topk_workspace_bytes(score, metric_code, *views, j, k)
    if need > 0:
        workspace = torch.empty(need, dtype=torch.uint8, device=q_mean.device)
    _C.topk(
        score,
        metric_code,
        *views,
        matrix_view(flat_q),
        matrix_view(flat_g),
        j,
        scale,
        shift,
        squared,
        k,
        matrix_view(values),
        matrix_view(indices),
        0 if workspace is None else workspace.data_ptr(),
        need,
        get_num_threads(),
        stream_handle(q_mean.device),
    )
    return values, indices


@_topk_op.register_fake
def _(q_mean, q_logvar, g_mean, g_logvar, eps_q, eps_g, k, metric, scale, shift, squared):
    rows = q_mean.shape[0]
    values = q_mean.new_empty((rows, k), dtype=_values_dtype(q_mean.dtype))
    return values, q_mean.new_empty((rows, k), dtype=torch.int64)


def _check_k(k: Any, n: int, device: torch.device) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if k < 1 or k > n:
        raise ValueError(f"k must be between 1 and the gallery size N = {n}, got {k}")
    if device.type == "cuda" and k > CUDA_MAX_K:
        raise ValueError(f"k must be at most {CUDA_MAX_K} on CUDA, got {k}; search on the CPU or in several passes")
    return k


def _has_nan(t: torch.Tensor) -> bool:
    # A sum is NaN if any element is (or if +inf and -inf meet): one pass with no temporary, where
    # isnan(t).any() would allocate a bool tensor the size of the gallery. Only a NaN sum is
    # looked at element by element, in row blocks.
    if not bool(torch.isnan(t.sum())):
        return False
    step = max(1, (1 << 22) // max(1, t.shape[-1]))
    return any(bool(torch.isnan(t[i : i + step]).any()) for i in range(0, t.shape[0], step))


def _check_finite(tensors: Tuple[Tuple[str, Optional[torch.Tensor]], ...]) -> None:
    for name, t in tensors:
        if t is not None and t.numel() > 0 and _has_nan(t):
            raise ValueError(f"{name} contains NaN; top-k needs comparable scores (drop or fix those rows)")


def topk(
    q_mean: Any,
    q_logvar: Any = None,
    g_mean: Any = None,
    g_logvar: Any = None,
    k: Any = None,
    metric: str = "csd",
    *,
    scale: Any = None,
    shift: Any = None,
    num_samples: int = 7,
    eps_q: Optional[Array] = None,
    eps_g: Optional[Array] = None,
    generator: Optional[torch.Generator] = None,
    squared: bool = False,
) -> Tuple[Array, Array]:
    """The ``k`` best gallery items for every query: ``(values [Q, k], indices [Q, k] int64)``.

    Call it with four arrays ``(q_mean [Q, D], q_logvar [Q, D], g_mean [N, D], g_logvar [N, D], k)``
    or with two :class:`~pcmekit.ProbEmbedding` ``(queries, gallery, k)``. ``metric`` is a
    distance of :func:`pcmekit.pairwise_distance` (``csd``, ``w2``, ``l2``, ``kl``,
    ``bhattacharyya``, ``elk``; smallest first; for ``l2`` the logvars may be ``None``) or
    ``match_prob``, PCME's Monte-Carlo match probability (largest first), which takes the
    arguments of :func:`pcmekit.match_prob`: ``scale``, ``shift``, ``num_samples``, the noise
    ``eps_q [Q, J, D]`` / ``eps_g [N, J, D]`` (each one omitted is drawn from ``generator``, as in
    :func:`pcmekit.match_prob`) and ``squared``.

    ``values[q]`` are sorted best first and ``indices[q]`` are their gallery rows; ties are broken
    by the lower gallery index, so the result is deterministic. The values are the scores the
    pairwise / match-probability ops compute, up to rounding: for csd, w2, l2 and kl the kernel
    ranks without the per-query constant of the inner-product form and adds it to the k survivors
    only, so a value can differ from ``pairwise_distance``'s entry in its last bits.

    The gallery is streamed through the kernel in tiles; the ``[Q, N]`` score matrix is never
    stored (extra memory is ``O(threads * Q * k)`` plus tiles on the CPU). k may be anything from
    1 to N on the CPU and up to 1024 on CUDA. Not differentiable: it returns indices; compute the
    scores of the returned pairs with :func:`pcmekit.pairwise_distance` if you need gradients.
    numpy inputs give numpy outputs.

    Raises:
        ValueError: k < 1 or k > N (or > 1024 on CUDA), wrong ndim, mismatched D, mixed devices,
            unknown metric, missing logvar or match-probability arguments, NaN in any input.
        TypeError: non-floating or mixed dtypes, 16-bit dtypes on the CPU, non-int k.
    """
    if isinstance(q_mean, ProbEmbedding):
        queries, gallery = q_mean, q_logvar
        if not isinstance(gallery, ProbEmbedding):
            raise TypeError(
                f"with a ProbEmbedding as the first argument the second must be one too, got {type(gallery).__name__}"
            )
        # topk(q, g, k, metric): the positional slots of g_mean and g_logvar hold k and metric.
        if g_mean is not None:
            if k is not None:
                raise TypeError("topk(queries, gallery, k, metric): k given twice")
            k = g_mean
        if g_logvar is not None:
            if not isinstance(g_logvar, str):
                raise TypeError(f"topk(queries, gallery, k, metric): metric must be a str, got {type(g_logvar).__name__}")
            metric = g_logvar
        q_mean, q_logvar, g_mean, g_logvar = queries.mean, queries.logvar, gallery.mean, gallery.logvar
    if g_mean is None:
        raise TypeError("g_mean is required (or pass two ProbEmbeddings)")
    if k is None:
        raise TypeError("k is required")
    if not isinstance(metric, str) or metric not in TOPK_METRICS:
        raise ValueError(f"metric must be one of {', '.join(TOPK_METRICS)}; got {metric!r}")
    match = metric == "match_prob"
    needs_logvar = metric != "l2"

    qm, ql, gm, gl, to_numpy = prepare_pair(
        q_mean, q_logvar, g_mean, g_logvar, needs_logvar, metric, sides=("q", "g"), rows=("Q", "N")
    )
    if not needs_logvar:
        ql = gl = None
    k = _check_k(k, gm.shape[0], gm.device)

    eq = eg = None
    scale_f = shift_f = 0.0
    if match:
        if scale is None or shift is None:
            raise ValueError("metric 'match_prob' needs scale and shift (logit = -scale * d + shift)")
        scale_f = float(_scalar(scale, "scale"))
        shift_f = float(_scalar(shift, "shift"))
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        if not isinstance(squared, bool):
            raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
        j, d = int(num_samples), qm.shape[1]
        eq = None if eps_q is None else _check_eps(eps_q, "eps_q", qm.shape[0], "Q", d, qm)
        eg = None if eps_g is None else _check_eps(eps_g, "eps_g", gm.shape[0], "N", d, qm)
        for name, e in (("eps_q", eq), ("eps_g", eg)):
            if e is not None and e.shape[1] != j:
                raise ValueError(f"{name} has J = {e.shape[1]} samples per embedding but num_samples is {j}")
        if eq is None:
            eq = _draw_eps(qm.shape[0], j, d, qm, generator)
        if eg is None:
            eg = _draw_eps(gm.shape[0], j, d, qm, generator)
        if qm.dtype in (torch.float16, torch.bfloat16):
            assert ql is not None and gl is not None  # needs_logvar
            qm, ql, gm, gl, eq, eg = (t.float() for t in (qm, ql, gm, gl, eq, eg))
    elif any(x is not None for x in (scale, shift, eps_q, eps_g)):
        raise ValueError(f"scale, shift and eps_q / eps_g are match_prob arguments; metric is '{metric}'")

    inputs = (("q_mean", qm), ("q_logvar", ql), ("g_mean", gm), ("g_logvar", gl))
    _check_finite(inputs + (("eps_q", eq), ("eps_g", eg)))
    values, indices = _topk_op(
        qm.detach(),
        None if ql is None else ql.detach(),
        gm.detach(),
        None if gl is None else gl.detach(),
        eq, eg, k, metric, scale_f, shift_f, squared,
    )
    if to_numpy:
        return values.numpy(), indices.numpy()
    return values, indices
