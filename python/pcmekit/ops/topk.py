"""The top-k op: the k best gallery items for every query, from a fused streaming kernel
(csrc: include/pcmekit/topk.h, core/topk.cpp, cpu/topk.cpp, cuda/topk.cu).

The custom op ``pcmekit::topk`` wraps the compiled kernel (with a fake implementation, so it works
under ``torch.compile`` and ``torch.library.opcheck``); :func:`topk` checks what only Python can
(types, numpy, ProbEmbedding, NaN) and leaves k's range and the CUDA limit to the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from .. import _core
from .._core import get_num_threads, matrix_view, stream_handle
from ._args import (
    HALF,
    METRICS,
    as_int,
    autocast_float32,
    check_bool,
    check_eps,
    check_metric,
    check_no_nan,
    check_num_samples,
    compiling,
    draw_eps,
    out_dtype,
    prepare_pair,
    register_autocast_float32,
    unpack_pair,
)
from .match_prob import match_prob_scalar

__all__ = ["topk", "topk_op", "TOPK_METRICS", "PreparedGallery", "PREPARABLE_METRICS", "prepare_gallery", "topk_prepared"]

Array = Union[torch.Tensor, np.ndarray]

#: Every score :func:`topk` ranks by: the distances (smallest first) and ``match_prob`` (largest first).
TOPK_METRICS: Tuple[str, ...] = METRICS + ("match_prob",)
_SCORE_DISTANCE, _SCORE_MATCH = 0, 1


def _codes(metric: str) -> Tuple[int, int]:
    if metric == "match_prob":
        return _SCORE_MATCH, 0
    return _SCORE_DISTANCE, METRICS.index(metric)


def _topk_kernel(
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
    # A k outside 1..N is the core's error (it checks k before the outputs), not an allocation's.
    rows, cols = q_mean.shape[0], min(max(k, 0), g_mean.shape[0])
    values = q_mean.new_empty((rows, cols), dtype=out_dtype(q_mean.dtype))
    indices = q_mean.new_empty((rows, cols), dtype=torch.int64)
    j = 1 if eps_q is None else eps_q.shape[1]
    flat_q = None if eps_q is None else eps_q.reshape(-1, eps_q.shape[2])  # referenced until the call returns
    flat_g = None if eps_g is None else eps_g.reshape(-1, eps_g.shape[2])
    views = (matrix_view(q_mean), matrix_view(q_logvar), matrix_view(g_mean), matrix_view(g_logvar))
    workspace = None
    precision = _core.matmul_precision_code()  # read when the op runs, as pairwise does
    need = 0 if q_mean.device.type == "cpu" else _core.topk_workspace_bytes(score, metric_code, *views, j, k, precision)
    if need > 0:
        workspace = torch.empty(need, dtype=torch.uint8, device=q_mean.device)
    _core.topk(
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
        precision=precision,
    )
    return values, indices


# The custom op is what torch.compile, export and the dispatcher's modes see. An eager call on plain
# tensors needs none of that, and the dispatcher's round trip costs ~50 us, more than the kernel of
# a small search: eager calls run the kernel function itself (``_eager``). topk has no autograd
# formula either way (it returns indices).
topk_op = torch.library.custom_op("pcmekit::topk", _topk_kernel, mutates_args=())
register_autocast_float32(topk_op)


def _eager(tensors: Tuple[Optional[torch.Tensor], ...]) -> bool:
    return not compiling() and all(t is None or type(t) is torch.Tensor for t in tensors)


@topk_op.register_fake
def _(q_mean, q_logvar, g_mean, g_logvar, eps_q, eps_g, k, metric, scale, shift, squared):
    rows = q_mean.shape[0]
    values = q_mean.new_empty((rows, k), dtype=out_dtype(q_mean.dtype))
    return values, q_mean.new_empty((rows, k), dtype=torch.int64)


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

    On CUDA, float32 inputs follow ``torch.get_float32_matmul_precision()`` as
    :func:`pcmekit.pairwise_distance` does (read when the search runs): "highest" keeps full
    float32 accuracy, "high"/"medium" score csd, w2, l2 and kl on TF32 tensor cores (16-bit csd
    and l2 use them in every mode); there, for k <= 64, the ranking is fused into the tensor-core
    kernel and the values are exactly ``pairwise_distance``'s entries.

    The gallery is streamed through the kernel in tiles; the ``[Q, N]`` score matrix is never
    stored (extra memory is ``O(threads * Q * k)`` plus tiles on the CPU). k may be anything from
    1 to N on the CPU and up to ``pcmekit.build_info()["cuda_max_topk"]`` (1024) on CUDA. Not
    differentiable: it returns indices; compute the scores of the returned pairs with
    :func:`pcmekit.pairwise_distance` if you need gradients. numpy inputs give numpy outputs.

    Raises:
        ValueError: k < 1 or k > N (or above the CUDA limit on CUDA), wrong ndim, mismatched D,
            mixed devices, unknown metric, missing logvar or match-probability arguments, NaN in any input (not
            checked inside torch.compile, where the scan would break the graph).
        TypeError: non-floating or mixed dtypes, 16-bit dtypes on the CPU (outside autocast),
            non-int k.

    Under ``torch.autocast`` 16-bit inputs are searched as float32, like the other ops' (docs/design.md,
    "Autocast"): a CPU autocast search then runs, and a CUDA one ranks the float32 distances.
    """
    q_mean, q_logvar, g_mean, g_logvar, (k_slot, metric_slot) = unpack_pair(
        q_mean, q_logvar, g_mean, g_logvar, b_name="g_mean"
    )
    q_mean, q_logvar, g_mean, g_logvar, eps_q, eps_g = autocast_float32(q_mean, q_logvar, g_mean, g_logvar, eps_q, eps_g)
    # topk(queries, gallery, k, metric): the positional slots of g_mean and g_logvar hold k and metric.
    if k_slot is not None:
        if k is not None:
            raise TypeError("topk(queries, gallery, k, metric): k given twice")
        k = k_slot
    if metric_slot is not None:
        if not isinstance(metric_slot, str):
            raise TypeError(f"topk(queries, gallery, k, metric): metric must be a str, got {type(metric_slot).__name__}")
        metric = metric_slot
    if k is None:
        raise TypeError("k is required")
    metric = check_metric(metric, TOPK_METRICS)
    match = metric == "match_prob"
    qm, ql, gm, gl, to_numpy = prepare_pair(
        q_mean, q_logvar, g_mean, g_logvar, metric != "l2", metric, sides=("q", "g"), rows=("Q", "N")
    )
    k = as_int(k, "k")  # its range (1..N, and the CUDA limit) is the core's check

    eq = eg = None
    scale_f = shift_f = 0.0
    if match:
        if scale is None or shift is None:
            raise ValueError("metric 'match_prob' needs scale and shift (logit = -scale * d + shift)")
        scale_f = float(match_prob_scalar(scale, "scale"))
        shift_f = float(match_prob_scalar(shift, "shift"))
        j, d = check_num_samples(num_samples), qm.shape[1]
        check_bool(squared, "squared")
        eq = None if eps_q is None else check_eps(eps_q, "eps_q", qm.shape[0], "Q", d, j, qm)
        eg = None if eps_g is None else check_eps(eps_g, "eps_g", gm.shape[0], "N", d, j, qm)
        if eq is None:
            eq = draw_eps(qm.shape[0], j, d, qm, generator)
        if eg is None:
            eg = draw_eps(gm.shape[0], j, d, qm, generator)
        if qm.dtype in HALF:
            assert ql is not None and gl is not None  # needs_logvar
            qm, ql, gm, gl, eq, eg = (t.float() for t in (qm, ql, gm, gl, eq, eg))
    elif any(x is not None for x in (scale, shift, eps_q, eps_g)):
        raise ValueError(f"scale, shift and eps_q / eps_g are match_prob arguments; metric is '{metric}'")

    # NaN inputs are refused (docs/design.md "Validation"): the CPU kernel checks where it reads
    # the data anyway; on CUDA a scan here does (skipped under torch.compile, where reading the data
    # would break the graph).
    if qm.device.type == "cuda" and not compiling():
        inputs = (("q_mean", qm), ("q_logvar", ql), ("g_mean", gm), ("g_logvar", gl))
        check_no_nan(inputs + (("eps_q", eq), ("eps_g", eg)))
    op = _topk_kernel if _eager((qm, ql, gm, gl, eq, eg)) else topk_op
    values, indices = op(
        qm.detach(),
        None if ql is None else ql.detach(),
        gm.detach(),
        None if gl is None else gl.detach(),
        eq, eg, k, metric, scale_f, shift_f, squared,
    )
    if to_numpy:
        return values.numpy(), indices.numpy()
    return values, indices


# -- prepared galleries (GalleryIndex) ------------------------------------------------------------

#: The metrics whose CPU search can use a prepared gallery: the inner-product form's.
PREPARABLE_METRICS: Tuple[str, ...] = ("csd", "w2", "l2", "kl")


@dataclass(frozen=True)
class PreparedGallery:
    """A CPU gallery made ready for many searches (docs/design.md, "Performance"): its column
    terms of the inner-product form and its GEMM operand in the micro-kernels' packed layout.

    Made by :func:`prepare_gallery` for one ``(g_mean, g_logvar, metric)``; valid only while those
    tensors are unchanged and only in the process (SIMD path) that made it. Memory: one copy of
    the means (csd, l2) or twice that (w2, kl: two feature vectors per row), plus N scalars.
    """

    metric: str
    packed: torch.Tensor  # [1, elements], the packed operand
    terms: torch.Tensor  # [N, 1], the column terms
    layout_tag: int
    rows: int
    dim: int
    # The core's views of (g_mean, g_logvar, packed, terms), made once: a search of a few queries
    # takes ~10 us in the kernel, and every view costs ~1.5 us.
    views: Tuple[Any, ...]


def prepare_gallery(g_mean: torch.Tensor, g_logvar: Optional[torch.Tensor], metric: str) -> PreparedGallery:
    """Prepares a CPU float32/float64 gallery ``g_mean [N, D]``, ``g_logvar [N, D]`` (None for
    l2) for :func:`topk_prepared` with ``metric`` in :data:`PREPARABLE_METRICS`.

    Raises:
        ValueError: another metric, a non-CPU gallery, NaN in the gallery, shapes that disagree.
        TypeError: a dtype other than float32 / float64.
    """
    metric = check_metric(metric, PREPARABLE_METRICS)
    if g_mean.device.type != "cpu":
        raise ValueError(f"prepare_gallery: g_mean must be on the CPU, got {g_mean.device}")
    n, d = g_mean.shape
    code = METRICS.index(metric)
    elements, tag = _core.topk_prepared_layout(code, _core.dtype_code(g_mean.dtype), n, d)
    packed = torch.empty((1, elements), dtype=g_mean.dtype)
    terms = torch.empty((n, 1), dtype=g_mean.dtype)
    logvar = None if metric == "l2" else g_logvar
    _core.topk_prepare_gallery(
        code, matrix_view(g_mean), matrix_view(logvar), matrix_view(packed), matrix_view(terms), get_num_threads()
    )
    views = (matrix_view(g_mean), matrix_view(logvar), matrix_view(packed), matrix_view(terms))
    return PreparedGallery(metric, packed, terms, tag, n, d, views)


def topk_prepared(
    q_mean: torch.Tensor, q_logvar: Optional[torch.Tensor], prepared: PreparedGallery, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk` of CPU queries against the gallery that ``prepared`` was made from (which
    must be unchanged since): the same values and indices bit for bit, without taking exp of the
    gallery's log-variances or packing it on every call. The queries must already be what
    :func:`topk` would pass on (tensors of the gallery's dtype); the core checks shapes, k, NaN
    in the queries and the preparation's layout."""
    metric = prepared.metric
    rows, cols = q_mean.shape[0], min(max(k, 0), prepared.rows)
    values = torch.empty((rows, cols), dtype=out_dtype(q_mean.dtype))
    indices = torch.empty((rows, cols), dtype=torch.int64)
    g_view, g_lv_view, packed_view, terms_view = prepared.views
    _core.topk(
        _SCORE_DISTANCE,
        METRICS.index(metric),
        matrix_view(q_mean),
        None if metric == "l2" else matrix_view(q_logvar),
        g_view,
        g_lv_view,
        None,
        None,
        1,
        0.0,
        0.0,
        False,
        k,
        matrix_view(values),
        matrix_view(indices),
        0,
        0,
        get_num_threads(),
        0,
        packed_view,
        terms_view,
        prepared.layout_tag,
    )
    return values, indices
