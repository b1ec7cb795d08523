"""AdamP and SGDP: Adam and SGD that stop the weight norm of scale-invariant weights from growing.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
ICLR 2021. A weight followed by a normalisation layer (a conv or linear weight before BatchNorm /
LayerNorm) is scale-invariant: the loss does not change when the weight is scaled, so its gradient
is orthogonal to it. Momentum then makes the update acquire a radial component, the weight norm
grows, and the effective step size shrinks. AdamP / SGDP detect such weights and remove the radial
component of the update:

1. Compute the usual update ``u`` (Adam: ``m_hat / (sqrt(v_hat) + eps)``; SGD: the momentum
   buffer, or the Nesterov look-ahead).
2. For a weight ``w`` with more than one dimension, compare the raw gradient ``g`` with ``w``:
   first per output channel (each ``w[i]`` flattened, the *channel view*), then for the whole
   tensor (the *layer view*). If every ``|cos(g_row, w_row)|`` in a view is below
   ``delta / sqrt(row length)`` the weight is taken to be scale-invariant in that view, and ``u``
   is projected onto the tangent space of ``w``: ``u -= w_n * <w_n, u>`` per row, with
   ``w_n = w / (||w_row|| + eps)``. Only the first view that passes is used.
3. Decoupled weight decay ``w *= 1 - lr * weight_decay * r`` (SGDP: divided by ``1 - momentum``),
   with ``r = wd_ratio`` when the projection fired and ``1`` otherwise, *before* the update
   ``w -= step_size * u``.

Parameters with one dimension or fewer (biases, norm scales) are never projected and behave like
AdamW / SGD with decoupled weight decay.

These classes reproduce the reference implementation (the PyPI package ``adamp`` 0.3.0) bit for
bit in float64, including its quirks: the test uses the raw gradient, not the update; the channel
view is tried before the layer view; the threshold comparison is strict; ``eps`` is added to the
norm (not clamped) in the projection; SGDP without Nesterov projects its momentum buffer in place
(the buffer *is* the update). Optimizer state uses the same keys (``step``, ``exp_avg``,
``exp_avg_sq`` for AdamP; ``momentum`` for SGDP), so state dicts move freely between the two.

Differences from the reference are in speed only:

* The scale-invariance test is decided from per-row sums ``<g, w>``, ``|g|^2``, ``|w|^2``
  instead of materialising normalised copies for each view. Where that estimate lies so close
  to the threshold that rounding could change the answer, the reference's own
  cosine-similarity formula decides, so the decision, and therefore every number, is the
  reference's.
* ``foreach=True`` (the default on CPU and CUDA) runs the element-wise arithmetic as torch
  ``_foreach_*`` multi-tensor ops over parameters grouped by device and dtype, with the same
  sequence of roundings as the per-tensor path.
* On CPU a large parameter is processed in two passes over cache-sized row blocks (moments,
  update and test sums; then projection, weight decay and step), with its temporaries in a reused
  buffer, instead of a dozen passes over memory and fresh multi-megabyte allocations. Every
  element goes through the reference's operations in the reference's order; cutting a tensor
  into blocks does not change any bit as long as torch's CPU kernels round an element the same
  way wherever it sits (their vectorised body and scalar tail agree). That is checked once per
  dtype at first use (:func:`_position_independent`); where it fails, whole tensors are used.

Fused step (``fused=True``; off by default, which keeps the bit-for-bit contract above): one call
into pcmekit's C++ core (csrc/cpu/adamp.cpp) steps every dense CPU float32/float64 parameter of a
group: a first pass updates the moments and sums, per row and per tensor, ``<g, w>``, ``|g|^2``,
``|w|^2`` and ``<w, u>``; the test is decided from those sums; a second pass projects, decays and
steps. It moves about 40 bytes per float32 element of AdamP per step instead of the
multi-tensor path's dozen passes. What it guarantees, against ``adamp`` 0.3.0 on the same inputs:

* the same algorithm, with the reference's element-wise operations in the reference's order and
  dtype (an FMA exactly where torch's CPU kernels use one): ``exp_avg``, ``exp_avg_sq`` and SGDP's
  momentum buffer (with Nesterov, or for a parameter that is never projected) are identical, and
  so is every SGDP parameter of dimension <= 1;
* not bit for bit elsewhere, for two reasons: the sums are accumulated in double (the reference
  sums in the parameter's dtype, in torch's order), and the square root in Adam's denominator is
  IEEE's (torch 2.13's CPU ``sqrt`` is off by one ulp for about one float32 value in six). Measured
  over 100 steps of the test models: largest difference relative to the tensor's largest value
  1e-7 (AdamP) and 2.3e-6 (SGDP) in float32, 7e-15 in float64 (up to ~10^4 ulps on elements
  near zero); against a float64 run of the reference, the fused float32 error is the reference's
  own float32 error (ratio 1.00-1.10);
* the same projection decisions except when a cosine lies within about 1e-4 (relative) of its
  threshold in float32, where the reference's float32 cosine is itself that inaccurate (measured
  on rows of 4608: no disagreement at 1e-3, about 1 in 100 at 1e-4, a third below 1e-6); in
  float64 none were seen down to 1e-10;
* results independent of the thread count and of the instruction set (AVX2 or portable).

Parameters on CUDA, 16-bit ones, tensor subclasses, and parameters whose gradient or state is not
laid out like them (contiguous, or channels_last for all) go through the multi-tensor path
without an error, as with ``fused=False``; ``fused=True`` together with ``foreach=True`` is
rejected. State dicts keep the reference's layout either way.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.optimizer import Optimizer

from . import _core

_required: Any  # the sentinel torch uses for "this hyper-parameter has no default"
try:
    from torch.optim.optimizer import required as _required
except ImportError:  # pragma: no cover - very old / very new torch
    _required = object()

__all__ = ["AdamP", "SGDP", "param_groups"]

Params = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]

#: On CPU the multi-tensor path batches consecutive parameters up to this many elements, so that a
#: batch's parameters, gradients, state and temporaries stay in the last-level cache across the
#: dozen passes of a step. A larger parameter goes on its own through the blocked single-tensor
#: path (two passes over cache-sized row blocks).
_CPU_BATCH_NUMEL = 1 << 18

#: Scales the band around the threshold inside which the reference formula decides (see
#: :func:`_decision_margin`). ``math.inf`` makes every decision use the reference formula and
#: ``0.0`` none; tests use both. Not a tuning knob: values below 1 can change results.
_MARGIN_SCALE = 1.0

# Names of the projection outcomes reported in ``last_projection``.
CHANNEL, LAYER, NONE = "channel", "layer", "none"


# --------------------------------------------------------------------------------------------
# The scale-invariance test
# --------------------------------------------------------------------------------------------


def _ceil_log2(n: int) -> int:
    return max(0, (max(1, n) - 1).bit_length())


def _cascade_error(n: int) -> int:
    """Error bound, in units of ``u * sum|terms|``, of torch's cascaded sum of ``n`` terms.

    On CPU the sum runs per SIMD lane (and 4-way interleaved) over ``size <= n / 16`` vectors in
    four levels: three of at most ``L = 2**max(4, ceil(log2 size) // 4)`` additions and a top one
    of ``size / L**3``; then the lanes, the interleave and the threads are combined (``+ 40``).
    CUDA's tree reductions are tighter.
    """
    size = max(1, n // 16)
    level = 1 << max(4, _ceil_log2(size) // 4)
    return 3 * level + -(-size // level**3) + 40


def _decision_margin(n: int, k: int, threshold: float, dtype: torch.dtype) -> float:
    """Half-width of the band around ``threshold`` inside which our cosine does not decide.

    The reference computes ``|cos|`` of rows of length ``n`` as ``sum((g/|g|) * (w/|w|))``: three
    roundings per term and a cascaded sum of ``n`` terms whose magnitudes add up to at most 1. We
    compute ``|<g, w>| / (|g| |w|)`` from per-row sums of length ``k`` (``k = n`` in the channel
    view; combined in float64 for the layer view): one rounding per term and a cascaded sum of
    ``k``. The norms (``linalg.vector_norm`` on both sides) are relatively accurate to ``n/8 * u``
    and ``k/8 * u`` at worst, which moves a cosine near the threshold by that fraction of it, as
    does the rounding of the threshold to the parameter's dtype. Outside the band both
    computations land on the same side of the threshold.
    """
    u = torch.finfo(dtype).eps / 2.0
    absolute = (_cascade_error(n) + _cascade_error(k) + 8) * u
    relative = ((n + k) / 4.0 + 4.0) * u
    return _MARGIN_SCALE * (absolute + relative * threshold)


def _cosine_in(x1: Tensor, x2: Tensor, eps: float, scratch: Tensor) -> Tensor:
    """``F.cosine_similarity(x1, x2, dim=1, eps=eps)`` for same-shaped 2-D inputs, spelled out
    with its own operations (norms clamped at ``eps``, both inputs divided by them, the product
    summed) so that the two tensor-sized intermediates go to ``scratch`` (``2 * x1.numel()``
    elements) instead of fresh allocations. :func:`_cosine_matches_torch` checks it is the same."""
    n = x1.numel()
    norm1 = torch.linalg.vector_norm(x1, 2, dim=1, keepdim=True).clamp_min_(eps)
    norm2 = torch.linalg.vector_norm(x2, 2, dim=1, keepdim=True).clamp_min_(eps)
    a = torch.div(x1, norm1, out=scratch[:n].view(x1.shape))
    b = torch.div(x2, norm2, out=scratch[n : 2 * n].view(x1.shape))
    return torch.mul(a, b, out=a).sum(dim=1)


_COSINE_MATCHES: Dict[torch.dtype, bool] = {}


def _cosine_matches_torch(dtype: torch.dtype) -> bool:
    """Whether :func:`_cosine_in` reproduces this torch's ``F.cosine_similarity`` bit for bit."""
    known = _COSINE_MATCHES.get(dtype)
    if known is None:
        gen = torch.Generator().manual_seed(99)
        known = True
        for shape in ((7, 33), (1, 1000), (3, 5)):
            x1, x2 = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
            x1[-1] *= 1e-12  # a row whose norm is clamped
            scratch = torch.empty(2 * x1.numel(), dtype=dtype)
            known = known and torch.equal(_cosine_in(x1, x2, 1e-8, scratch), F.cosine_similarity(x1, x2, 1, 1e-8))
        _COSINE_MATCHES[dtype] = known
    return known


def _reference_fires(
    grad: Tensor, param: Tensor, rows: int, eps: float, threshold: float, scratch: Optional[Tensor] = None
) -> bool:
    """The reference's test, verbatim: max |cos| over the rows of the view below the threshold.

    With ``scratch`` (CPU, ``2 * param.numel()`` elements) the cosine is computed there.
    """
    g2, p2 = grad.reshape(rows, -1), param.reshape(rows, -1)
    if scratch is not None and _cosine_matches_torch(param.dtype):
        cos = _cosine_in(g2, p2, eps, scratch).abs_()
    else:
        cos = F.cosine_similarity(g2, p2, dim=1, eps=eps).abs_()
    return bool(cos.max() < threshold)


#: Below this many elements the reference's test itself is cheaper than ours (it is a few small
#: ops either way), and whole-tensor operations cost no more than blocked ones.
_SMALL = 1 << 14


def _reference_kind(grad: Tensor, param: Tensor, delta: float, eps: float) -> str:
    """The reference's test on both views, in its order (for small parameters)."""
    rows, n = param.shape[0], param.numel()
    if _reference_fires(grad, param, rows, eps, delta / math.sqrt(n // rows)):
        return CHANNEL
    if _reference_fires(grad, param, 1, eps, delta / math.sqrt(n)):
        return LAYER
    return NONE


def _block_stats(gb: Tensor, wb: Tensor, tmp: Tensor, out: Tensor) -> None:
    """``out[:, i]`` = ``<g_i, w_i>``, ``|g_i|``, ``|w_i|`` for the rows of a [r, width] block."""
    torch.sum(torch.mul(gb, wb, out=tmp), dim=1, out=out[0])
    torch.linalg.vector_norm(gb, dim=1, out=out[1])
    torch.linalg.vector_norm(wb, dim=1, out=out[2])


def _row_stats(grad: Tensor, param: Tensor, scratch: Optional[Tensor]) -> Tensor:
    """``[3, rows]``: per output channel ``<g, w>`` (a cascaded sum), ``|g|``, ``|w|``."""
    rows = param.shape[0]
    g2 = grad.reshape(rows, -1)
    w2 = param.reshape(rows, -1)
    out = torch.empty(3, rows, dtype=param.dtype, device=param.device)
    if scratch is None:
        scratch = torch.empty(param.numel(), dtype=param.dtype, device=param.device)
    step = max(1, _SLICE // max(1, g2.shape[1]))  # on CPU the product stays in cache
    for a in range(0, rows, step):
        gb, wb = g2[a : a + step], w2[a : a + step]
        _block_stats(gb, wb, scratch[: gb.numel()].view(gb.shape), out[:, a : a + step])
    return out


_EPS_AS: Dict[Tuple[float, torch.dtype], float] = {}


def _eps_as(eps: float, dtype: torch.dtype) -> float:
    """``eps`` rounded to ``dtype``, as the reference's ``clamp_min(eps)`` on such a tensor sees it."""
    key = (eps, dtype)
    if key not in _EPS_AS:
        _EPS_AS[key] = torch.tensor(eps, dtype=dtype).item()
    return _EPS_AS[key]


def _decide_from_stats(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    stats: Sequence[Tensor],
    delta: float,
    eps: float,
    scratch: Optional[Callable[[Tensor, int], Tensor]] = None,
) -> List[str]:
    """Which view passes the test, per parameter: ``"channel"``, ``"layer"`` or ``"none"``.

    ``params`` are >1-D, non-empty, on one device with one dtype; ``stats`` their
    :func:`_row_stats`. One host transfer for all of them. ``scratch(param, numel)`` lends a
    CPU buffer to the reference formula where it has to decide.
    """
    table = stats[0] if len(stats) == 1 else torch.cat(list(stats), dim=1)
    if table.dtype == torch.bfloat16:  # numpy has no bfloat16; the conversion is exact
        table = table.float()
    t = table.cpu().numpy().astype(np.float64, copy=True)  # a copy: the caller keeps its stats
    eps_c = _eps_as(eps, params[0].dtype)
    with np.errstate(all="ignore"):
        row_cos = np.abs(t[0]) / np.maximum(t[1], eps_c) / np.maximum(t[2], eps_c)
        t[1:] *= t[1:]  # squared row norms, summed for the layer view
        # one entry per parameter, as lists for one parameter and arrays for several
        finite: Union[List[bool], np.ndarray]
        channel: Union[List[Any], np.ndarray]
        if len(params) == 1:
            dot, gg, ww = t.sum(axis=1).tolist()  # an overflow or NaN anywhere shows in the sums
            finite = [math.isfinite(gg) and math.isfinite(ww)]
            channel = [row_cos.max()]
            layer = [abs(dot) / max(math.sqrt(gg), eps_c) / max(math.sqrt(ww), eps_c)]
        else:
            starts = np.cumsum([0] + [p.shape[0] for p in params[:-1]])
            sums = np.add.reduceat(t, starts, axis=1)
            finite = np.isfinite(sums[1]) & np.isfinite(sums[2])
            channel = np.maximum.reduceat(row_cos, starts)
            layer_norms = np.maximum(np.sqrt(sums[1:]), eps_c)
            layer = np.abs(sums[0]) / layer_norms[0] / layer_norms[1]

    kinds: List[str] = []
    for i, (p, g) in enumerate(zip(params, grads)):
        rows, n = p.shape[0], p.numel()
        kind = NONE
        # Channel view first, then layer view; the first that passes decides. Where a sum
        # overflowed (or is NaN) the reference decides.
        for view, view_rows, width, cos in ((CHANNEL, rows, n // rows, channel[i]), (LAYER, 1, n, layer[i])):
            threshold = delta / math.sqrt(width)
            margin = _decision_margin(width, n // rows, threshold, p.dtype)
            cos = float(cos)
            if finite[i] and math.isfinite(cos) and abs(cos - threshold) > margin:
                fires = cos < threshold
            else:  # too close to call (or not finite): the reference's own formula decides
                buf = scratch(p, 2 * n) if scratch is not None and p.device.type == "cpu" else None
                fires = _reference_fires(g, p, view_rows, eps, threshold, buf)
            if fires:
                kind = view
                break
        kinds.append(kind)
    return kinds


def _decide(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    delta: float,
    eps: float,
    scratch: Optional[Tensor] = None,
    fallback_scratch: Optional[Callable[[Tensor, int], Tensor]] = None,
) -> List[str]:
    """:func:`_decide_from_stats` on freshly computed sums."""
    stats = [_row_stats(g, p, scratch) for p, g in zip(params, grads)]
    return _decide_from_stats(params, grads, stats, delta, eps, fallback_scratch)


# --------------------------------------------------------------------------------------------
# The projection
# --------------------------------------------------------------------------------------------


def _project_(update: Tensor, param: Tensor, kind: str, eps: float, scratch: Optional[Tensor] = None) -> None:
    """Removes the component of ``update`` along ``param``, per row (channel) or for the whole tensor.

    The reference's operations in the reference's order (``w_n = w / (|w| + eps)``,
    ``u -= w_n * sum(w_n * u)``), so the roundings are the same. With ``scratch`` (``2 * numel``
    elements, same dtype and device) the two tensor-sized intermediates go there.
    """
    expand = [-1] + [1] * (param.dim() - 1)
    rows = param.shape[0] if kind == CHANNEL else 1
    # The reference's p.view(rows, -1).norm(dim=1), which is this reduction.
    scale = torch.linalg.vector_norm(param.reshape(rows, -1), dim=1).view(expand).add_(eps)
    if scratch is None:
        unit = param / scale
        coef = (unit * update).reshape(rows, -1).sum(dim=1).view(expand)
        update.sub_(unit * coef)
        return
    n = param.numel()
    unit = torch.div(param, scale, out=scratch[:n].view(param.shape))
    prod = torch.mul(unit, update, out=scratch[n : 2 * n].view(param.shape))
    coef = prod.reshape(rows, -1).sum(dim=1).view(expand)
    update.sub_(torch.mul(unit, coef, out=prod))


def _project_rows_(ub: Tensor, pb: Tensor, norms: Tensor, eps: float, t1: Tensor, t2: Tensor) -> None:
    """:func:`_project_` (channel view) for a [r, width] row block, intermediates in ``t1, t2``.

    ``norms`` are ``linalg.vector_norm(pb, dim=1)`` (taken in the first pass). Each row's norm and
    sum are computed on their own, as in the whole-tensor reduction, as long as the block has two
    rows or more (see :func:`_row_blocks`).
    """
    scale = norms.view(-1, 1).add(eps)
    unit = torch.div(pb, scale, out=t1)
    coef = torch.mul(unit, ub, out=t2).sum(dim=1).view(-1, 1)
    ub.sub_(torch.mul(unit, coef, out=t2))


# --------------------------------------------------------------------------------------------
# Cache blocking on CPU
# --------------------------------------------------------------------------------------------

#: On CPU a parameter larger than this many elements is processed in row blocks of about this
#: size, so that each block's operands stay in cache across the operations of a pass.
_SLICE = 1 << 18

_POSITION_INDEPENDENT: Dict[torch.dtype, bool] = {}


def _position_independent(dtype: torch.dtype) -> bool:
    """Whether torch's CPU kernels for our operations round an element the same wherever it is.

    TensorIterator runs the bulk of a range through a vectorised loop and the last few elements
    through scalar code. For the single-rounding operations (``*``, ``/``, ``sqrt``, ``+``) the
    two agree by IEEE 754; for the fused ones (``add_`` with ``alpha`` and ``addcmul_``, an FMA
    in the vectorised loop) only if the compiler contracted the scalar code the same way. The
    check puts the same random operands in the vectorised body and in the scalar tail (of every
    SIMD width up to 32 lanes) and compares the results bit for bit.
    """
    known = _POSITION_INDEPENDENT.get(dtype)
    if known is not None:
        return known
    body, tail = 4096, 63
    gen = torch.Generator().manual_seed(1234)
    ok = True
    for _ in range(4):
        x, y, z = (torch.randn(body + tail, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
        for t in (x, y, z):
            t[body:] = t[:tail]
        y.abs_().add_(0.5)
        results = [
            x.clone().add_(z, alpha=0.1),
            x.clone().add_(z, alpha=-0.0123456789),
            x.clone().add_(z),
            x.clone().addcmul_(z, z, value=0.001),
            x.clone().addcmul_(y, z, value=0.7),
            x.clone().mul_(0.9),
            x.clone().div_(y),
            x.clone().sub_(z),
            torch.sqrt(y),
        ]
        ok = ok and all(torch.equal(r[:tail], r[body:]) for r in results)
    _POSITION_INDEPENDENT[dtype] = ok
    return ok


def _row_blocks(rows: int, width: int) -> List[Tuple[int, int]]:
    """Row ranges of about ``_SLICE`` elements, none of a single row (unless ``rows == 1``).

    A row reduction over two or more rows sums each row on its own, in one thread, whatever the
    other rows are; over a single row torch splits the row between threads. Keeping every block
    at two rows or more keeps the per-row norms and sums bit-identical to the whole-tensor ones.
    """
    step = max(2, _SLICE // max(1, width))
    starts = list(range(0, rows, step))
    if len(starts) > 1 and rows - starts[-1] == 1:
        starts.pop()
    return [(a, starts[i + 1] if i + 1 < len(starts) else rows) for i, a in enumerate(starts)]


class _Blocks:
    """A CPU parameter and its same-shaped companions viewed as [rows, width], cut in row blocks.

    ``update`` is a [rows, width] view of a reused buffer; ``temps(a, b)`` three reused
    [b - a, width] buffers for intermediates of one block.
    """

    def __init__(self, param: Tensor, width: int, blocks: List[Tuple[int, int]], buffer: Tensor, span: int) -> None:
        self.rows = param.shape[0] if param.dim() > 1 else param.numel()
        self.width = width
        self.blocks = blocks
        n = param.numel()
        self.update = buffer[:n].view(self.rows, width)
        self._temps = [buffer[n + i * span : n + (i + 1) * span] for i in range(3)]

    def view(self, t: Tensor) -> Tensor:
        return t.view(self.rows, self.width)

    def temps(self, a: int, b: int) -> List[Tensor]:
        return [t[: (b - a) * self.width].view(b - a, self.width) for t in self._temps]


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _dense_layout(t: Tensor) -> Optional[str]:
    """``"contiguous"`` or ``"channels_last"`` when every ``t[i]`` is a block of consecutive
    elements in one of those memory orders; ``None`` for any other layout."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def _fusable(p: Tensor, grad: Tensor, state: Sequence[Tensor]) -> bool:
    """Whether the fused kernel takes this parameter: a dense CPU float32/float64 tensor whose
    gradient and state tensors share its dtype, shape and memory order. (Called for every
    parameter at every step, so it is written for speed.)"""
    if type(p) not in _PLAIN_TENSORS or not p.is_cpu or p.dtype not in _FUSED_DTYPES or p.is_sparse:
        return False
    layout = _dense_layout(p)
    if layout is None:
        return False
    dtype, shape = p.dtype, p.shape
    for t in (grad, *state):
        if t.dtype != dtype or not t.is_cpu or t.is_sparse or t.shape != shape:
            return False
        same_order = t.is_contiguous() if layout == "contiguous" else _dense_layout(t) == layout
        if not same_order:
            return False
    return True


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)
_FUSED_DTYPES = (torch.float32, torch.float64)


def _check_fused_flags(name: str, foreach: Optional[bool], fused: Optional[bool]) -> None:
    if fused and foreach:
        raise ValueError(f"{name}: fused=True and foreach=True cannot be set together (fused=True runs the "
                         "fused kernel and sends the parameters it cannot take to the foreach path)")


def _supports_foreach(params: Iterable[Tensor]) -> bool:
    return all(
        type(p) in (Tensor, torch.nn.Parameter) and p.device.type in ("cpu", "cuda") and not p.is_sparse
        for p in params
    )


def _batches(tensors: Sequence[Tensor], limit: int) -> List[List[int]]:
    """Consecutive index batches of at most ``limit`` elements (a larger tensor stands alone)."""
    out: List[List[int]] = []
    cur: List[int] = []
    size = 0
    for i, t in enumerate(tensors):
        n = t.numel()
        if cur and size + n > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    if cur:
        out.append(cur)
    return out


def _div_scalars_(tensors: Union[List[Tensor], Tuple[Tensor, ...]], divisors: List[float]) -> None:
    """``t /= d`` for each pair with the rounding of ``t / d`` as a single-tensor op.

    torch's CUDA kernel divides by a Python scalar as ``t * (1 / d)`` with the reciprocal taken in
    the op-math type; the CPU kernel divides. The foreach kernels always divide, so on CUDA we
    multiply by the same reciprocal to stay identical to the per-tensor path.
    """
    if tensors[0].device.type == "cuda":
        opmath = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
        inv = [torch.tensor(1.0, dtype=opmath).div(torch.tensor(d, dtype=opmath)).item() for d in divisors]
        torch._foreach_mul_(tensors, inv)
    else:
        torch._foreach_div_(tensors, divisors)


class _ProjectedOptimizer(Optimizer):
    """Parameter bookkeeping shared by AdamP and SGDP."""

    def __init__(self, params: Params, defaults: Dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._buffers: Dict[Tuple[Any, ...], Tensor] = {}
        #: Outcome of the scale-invariance test at the last step, per group and parameter:
        #: ``"channel"``, ``"layer"`` or ``"none"`` (never projected or not scale-invariant),
        #: ``None`` for parameters that had no gradient.
        self.last_projection: List[List[Optional[str]]] = []

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
        self.__dict__.setdefault("_buffers", {})
        self.__dict__.setdefault("last_projection", [])

    def _use_foreach(self, group: Dict[str, Any], params: List[Tensor]) -> bool:
        flag = group.get("foreach")
        return _supports_foreach(params) if flag is None else bool(flag)

    def _buffer(self, like: Tensor, numel: int) -> Tensor:
        """A reused flat CPU buffer of at least ``numel`` elements (not optimizer state).

        A fresh multi-megabyte temporary costs its page faults on every step, more than the
        arithmetic done in it.
        """
        key = (like.device, like.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, device=like.device, dtype=like.dtype)
            self._buffers[key] = buf
        return buf

    def _fallback_buffer(self, like: Tensor, numel: int) -> Tensor:
        """A second reused CPU buffer, for the reference formula when it has to decide."""
        key = ("fallback", like.device, like.dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, device=like.device, dtype=like.dtype)
            self._buffers[key] = buf
        return buf

    def _blocks(self, param: Tensor, *others: Tensor) -> Optional[_Blocks]:
        """Row blocks of a CPU parameter, or ``None`` to use whole-tensor operations."""
        if param.device.type != "cpu" or param.numel() < _SMALL or not _position_independent(param.dtype):
            return None
        if not all(t.is_contiguous() and t.shape == param.shape for t in (param,) + others):
            return None
        if param.dim() > 1:
            rows, width = param.shape[0], param.numel() // param.shape[0]
        else:
            rows, width = param.numel(), 1
        blocks = _row_blocks(rows, width) if param.numel() > _SLICE else [(0, rows)]
        span = max(b - a for a, b in blocks) * width
        return _Blocks(param, width, blocks, self._buffer(param, param.numel() + 3 * span), span)

    def _collect(self, group: Dict[str, Any], name: str) -> Tuple[List[int], List[Tensor], List[Tensor]]:
        index, params, grads = [], [], []
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{name} does not support sparse gradients (parameter {i} of its group)")
            if p.is_complex():
                raise TypeError(f"{name} supports real floating-point parameters; parameter {i} is {p.dtype}")
            index.append(i)
            params.append(p)
            grads.append(p.grad)
        return index, params, grads

    def _decide_multi(self, params: List[Tensor], grads: List[Tensor], delta: float, eps: float) -> List[str]:
        """Projection outcome for each parameter of one device/dtype batch (1-D ones: "none")."""
        kinds: List[str] = [NONE] * len(params)
        multi = [i for i, p in enumerate(params) if p.dim() > 1 and p.numel() > 0]
        if multi:
            ps = [params[i] for i in multi]
            scratch = None
            if ps[0].device.type == "cpu":
                scratch = self._buffer(ps[0], max(p.numel() for p in ps))
            decided = _decide(ps, [grads[i] for i in multi], delta, eps, scratch, self._fallback_buffer)
            for i, kind in zip(multi, decided):
                kinds[i] = kind
        return kinds

    def _decide_one(self, p: Tensor, grad: Tensor, delta: float, eps: float) -> str:
        """The test for one >1-D parameter on the whole-tensor path."""
        if p.numel() < _SMALL:
            return _reference_kind(grad, p, delta, eps)
        return _decide([p], [grad], delta, eps, None, self._fallback_buffer)[0]

    def _batches_of(self, params: List[Tensor]) -> List[List[int]]:
        """Indices grouped by (device, dtype); on CPU consecutive small ones batched, large alone."""
        groups: Dict[Tuple[torch.device, torch.dtype], List[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        out: List[List[int]] = []
        for (device, _), idx in groups.items():
            if device.type == "cpu":
                out += [[idx[j] for j in b] for b in _batches([params[i] for i in idx], _CPU_BATCH_NUMEL)]
            else:
                out.append(idx)
        return out

    def _record(self, group_index: int, group: Dict[str, Any], index: List[int], kinds: List[str]) -> None:
        while len(self.last_projection) <= group_index:
            self.last_projection.append([])
        record: List[Optional[str]] = [None] * len(group["params"])
        for i, kind in zip(index, kinds):
            record[i] = kind
        self.last_projection[group_index] = record

    def _run(self, name: str, closure: Optional[Callable[[], Any]], init: Callable[[Tensor], Any]) -> Any:
        """The outer loop of ``step``: per group the fused kernel for the parameters it takes,
        then per batch the single- or multi-tensor path for the others."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            index, all_params, all_grads = self._collect(group, name)
            all_states = [init(p) for p in all_params]
            kinds: List[str] = [NONE] * len(all_params)
            rest = list(range(len(all_params)))
            if group.get("fused") and all_params:
                rest = self._run_fused(group, all_params, all_grads, all_states, kinds)
            params = [all_params[i] for i in rest]
            grads = [all_grads[i] for i in rest]
            states = [all_states[i] for i in rest]
            if params:
                out_kinds: List[str] = [NONE] * len(params)
                if self._use_foreach(group, params):
                    for batch in self._batches_of(params):
                        ps = [params[i] for i in batch]
                        if len(batch) == 1 and ps[0].device.type == "cpu":
                            # A large tensor on its own: the blocked single-tensor path.
                            out = [self._step_single(group, ps[0], grads[batch[0]], states[batch[0]])]
                        else:
                            out = self._step_multi(group, ps, [grads[i] for i in batch], [states[i] for i in batch])
                        for i, kind in zip(batch, out):
                            out_kinds[i] = kind
                else:
                    out_kinds = [self._step_single(group, p, g, s) for p, g, s in zip(params, grads, states)]
                for i, kind in zip(rest, out_kinds):
                    kinds[i] = kind
            self._record(gi, group, index, kinds)
        return loss

    def _run_fused(
        self,
        group: Dict[str, Any],
        params: List[Tensor],
        grads: List[Tensor],
        states: List[Dict[str, Any]],
        kinds: List[str],
    ) -> List[int]:
        """The fused kernel, one call per dtype, for the parameters it takes (see :func:`_fusable`);
        their outcomes go to ``kinds``. Returns the indices of the others."""
        by_dtype: Dict[torch.dtype, List[int]] = {}
        rest: List[int] = []
        for i, (p, g, s) in enumerate(zip(params, grads, states)):
            if _fusable(p, g, self._state_tensors(s)):
                by_dtype.setdefault(p.dtype, []).append(i)
            else:
                rest.append(i)
        for idx in by_dtype.values():
            out = self._step_fused(group, [params[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx])
            for i, kind in zip(idx, out):
                kinds[i] = kind
        return rest

    def _state_tensors(self, state: Dict[str, Any]) -> List[Tensor]:
        raise NotImplementedError

    def _step_fused(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        raise NotImplementedError

    def _step_single(self, group: Dict[str, Any], p: Tensor, grad: Tensor, state: Dict[str, Any]) -> str:
        raise NotImplementedError

    def _step_multi(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        raise NotImplementedError

    def _finish_blocked(
        self,
        blk: _Blocks,
        p: Tensor,
        update: Tensor,
        kind: str,
        stats: Optional[Tensor],
        eps: float,
        decay: Optional[float],
        step_size: float,
    ) -> None:
        """Second pass of the blocked path: projection, weight decay, step (reference order).

        ``stats[2]`` holds the weight's row norms from the first pass, the same reductions over
        the same rows as the projection's.
        """
        scratch = self._fallback_buffer(p, 2 * p.numel()) if kind == LAYER else None
        if kind == LAYER:  # needs whole-tensor sums: done on its own before the pass
            _project_(update.view(p.shape), p, LAYER, eps, scratch)
        p2, u2 = blk.view(p), update
        for a, b in blk.blocks:
            pb, ub = p2[a:b], u2[a:b]
            if kind == CHANNEL and stats is not None:
                _, t1, t2 = blk.temps(a, b)
                _project_rows_(ub, pb, stats[2, a:b], eps, t1, t2)
            if decay is not None:
                pb.mul_(decay)
            pb.add_(ub, alpha=-step_size)


# --------------------------------------------------------------------------------------------
# AdamP
# --------------------------------------------------------------------------------------------


class AdamP(_ProjectedOptimizer):
    r"""Adam with decoupled weight decay and projection of updates of scale-invariant weights.

    Per parameter ``w`` with gradient ``g`` at step ``t``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        u = m / (sqrt(v) / sqrt(1 - beta2**t) + eps)        # nesterov: (beta1*m + (1-beta1)*g) / ...
        if w.dim() > 1 and g is (nearly) orthogonal to w:   # channel view first, then layer view
            u = u - w_n * <w_n, u>,  r = wd_ratio           # else r = 1
        w = w * (1 - lr * weight_decay * r)
        w = w - lr / (1 - beta1**t) * u

    It differs from :class:`torch.optim.AdamW` in the projection and the reduced weight decay of
    scale-invariant weights, in adding ``eps`` after the bias correction of ``sqrt(v)``, and in
    applying the weight decay only when ``weight_decay > 0``. Identical, bit for bit in float64,
    to ``adamp.AdamP`` 0.3.0 (see the module docstring for the rules it follows).

    Args:
        params: parameters or parameter groups (dicts) to optimise.
        lr: learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator of the update, and to the norms in the projection; also the
            norm floor of the cosine similarity.
        weight_decay: decoupled weight decay (the weight is multiplied by ``1 - lr * weight_decay``,
            scaled by ``wd_ratio`` for projected parameters); ``0`` disables it.
        delta: threshold of the scale-invariance test: a view is scale-invariant when every
            ``|cos(gradient row, weight row)|`` is below ``delta / sqrt(row length)``.
        wd_ratio: factor on the weight decay of parameters whose update was projected.
        nesterov: use the Nesterov look-ahead ``beta1 * m + (1 - beta1) * g`` in the update.
        foreach: use multi-tensor (``torch._foreach_*``) ops for parameters processed together:
            on CUDA all parameters of one device and dtype; on CPU runs of small ones (a large
            one goes through the blocked single-tensor path either way, since torch's CPU
            foreach ops are loops over single-tensor kernels). ``None`` (default) chooses it
            when every parameter is a dense CPU or CUDA tensor. On CPU both settings give
            identical numbers; on CUDA the multi-tensor kernels may round a few ulps differently
            from the single-tensor ones, which the per-tensor path uses as the reference does.
        fused: ``True`` runs pcmekit's fused C++ kernel for the dense CPU float32/float64
            parameters (about 3x faster than the multi-tensor path on a ResNet-50, but close to
            the reference rather than bit for bit: see the module docstring for what it
            guarantees); the others take the path ``foreach`` selects. ``None`` (default) and
            ``False``: not fused. Cannot be combined with ``foreach=True``.

    State per parameter (as in the reference): ``step`` (int), ``exp_avg``, ``exp_avg_sq``.
    ``last_projection`` reports which view fired for each parameter at the last step. On CPU the
    optimizer keeps a scratch buffer a little larger than its largest parameter (not state).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"AdamP: lr must be >= 0, got {lr}")
        _check_fused_flags("AdamP", foreach, fused)
        if not eps >= 0.0:
            raise ValueError(f"AdamP: eps must be >= 0, got {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamP: betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdamP: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta,
            wd_ratio=wd_ratio, nesterov=nesterov, foreach=foreach, fused=fused,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> Dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] = int(state["step"]) + 1
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Performs one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        return self._run("AdamP", closure, self._init_state)

    def _state_tensors(self, state: Dict[str, Any]) -> List[Tensor]:
        return [state["exp_avg"], state["exp_avg_sq"]]

    def _step_fused(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        beta1, beta2 = group["betas"]
        return _core.adamp_step(
            0, ps, gs, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], delta=group["delta"], wd_ratio=group["wd_ratio"],
            nesterov=group["nesterov"],
        )

    def _step_single(self, group: Dict[str, Any], p: Tensor, grad: Tensor, state: Dict[str, Any]) -> str:
        beta1, beta2 = group["betas"]
        lr, eps, wd, nesterov = group["lr"], group["eps"], group["weight_decay"], group["nesterov"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        root_bc2 = math.sqrt(bias_correction2)
        tested = p.dim() > 1 and p.numel() > 0
        blk = self._blocks(p, grad, exp_avg, exp_avg_sq)

        if blk is None:  # the reference's sequence on whole tensors
            kind = self._decide_one(p, grad, group["delta"], eps) if tested else NONE
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / root_bc2).add_(eps)
            if nesterov:
                update = (beta1 * exp_avg + (1 - beta1) * grad) / denom
            else:
                update = exp_avg / denom
            if kind != NONE:
                _project_(update, p, kind, eps)
            if wd > 0:
                p.mul_(1 - lr * wd * (group["wd_ratio"] if kind != NONE else 1))
            p.add_(update, alpha=-(lr / bias_correction1))
            return kind

        # Pass 1, per row block: the test's sums (weight and raw gradient before any change),
        # the moments and the update.
        g2, m2, v2, u2 = blk.view(grad), blk.view(exp_avg), blk.view(exp_avg_sq), blk.update
        p2 = blk.view(p)
        stats = torch.empty(3, blk.rows, dtype=p.dtype) if tested else None
        for a, b in blk.blocks:
            gb, mb, vb, ub = g2[a:b], m2[a:b], v2[a:b], u2[a:b]
            t0, t1, _ = blk.temps(a, b)
            if stats is not None:
                _block_stats(gb, p2[a:b], t0, stats[:, a:b])
            mb.mul_(beta1).add_(gb, alpha=1 - beta1)
            vb.mul_(beta2).addcmul_(gb, gb, value=1 - beta2)
            if nesterov:
                denom = torch.sqrt(vb, out=t0).div_(root_bc2).add_(eps)
                torch.mul(mb, beta1, out=ub).add_(torch.mul(gb, 1 - beta1, out=t1)).div_(denom)
            else:
                torch.sqrt(vb, out=ub).div_(root_bc2).add_(eps)
                torch.div(mb, ub, out=ub)
        kind = NONE
        if stats is not None:
            kind = _decide_from_stats([p], [grad], [stats], group["delta"], eps, self._fallback_buffer)[0]
        # Pass 2: projection, weight decay, step.
        decay = 1 - lr * wd * (group["wd_ratio"] if kind != NONE else 1) if wd > 0 else None
        self._finish_blocked(blk, p, u2, kind, stats, eps, decay, lr / bias_correction1)
        return kind

    def _step_multi(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        ms = [s["exp_avg"] for s in states]
        vs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        kinds = self._decide_multi(ps, gs, group["delta"], eps)

        torch._foreach_mul_(ms, beta1)
        torch._foreach_add_(ms, gs, alpha=1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        denom = torch._foreach_sqrt(vs)
        _div_scalars_(denom, [math.sqrt(1 - beta2**s) for s in steps])
        torch._foreach_add_(denom, eps)
        if group["nesterov"]:
            update = torch._foreach_mul(ms, beta1)
            torch._foreach_add_(update, torch._foreach_mul(gs, 1 - beta1))
            torch._foreach_div_(update, denom)
        else:
            update = torch._foreach_div(ms, denom)
        del denom

        for u, p, kind in zip(update, ps, kinds):
            if kind != NONE:
                _project_(u, p, kind, eps)
        if wd > 0:
            torch._foreach_mul_(ps, [1 - lr * wd * (group["wd_ratio"] if k != NONE else 1) for k in kinds])
        # One call per distinct step size (parameters skipped on some steps have other counts).
        by_size: Dict[float, List[int]] = {}
        for j, s in enumerate(steps):
            by_size.setdefault(lr / (1 - beta1**s), []).append(j)
        for step_size, js in by_size.items():
            torch._foreach_add_([ps[j] for j in js], [update[j] for j in js], alpha=-step_size)
        return kinds


# --------------------------------------------------------------------------------------------
# SGDP
# --------------------------------------------------------------------------------------------


class SGDP(_ProjectedOptimizer):
    r"""SGD with momentum, decoupled weight decay and projection of scale-invariant updates.

    Per parameter ``w`` with gradient ``g``::

        b = momentum * b + (1 - dampening) * g              # b starts at zero
        u = g + momentum * b if nesterov else b             # without nesterov u *is* b
        if w.dim() > 1 and g is (nearly) orthogonal to w:   # channel view first, then layer view
            u = u - w_n * <w_n, u>,  r = wd_ratio           # in place: projects b too
        w = w * (1 - lr * weight_decay * r / (1 - momentum))
        w = w - lr * u

    Unlike :class:`torch.optim.SGD`, the momentum buffer starts at zero (so the first step is
    ``(1 - dampening) * lr * g``), weight decay is decoupled and scaled by ``1 / (1 - momentum)``,
    and updates of scale-invariant weights are projected. Identical, bit for bit in float64, to
    ``adamp.SGDP`` 0.3.0.

    Args:
        params: parameters or parameter groups (dicts) to optimise.
        lr: learning rate (required).
        momentum: momentum factor.
        dampening: dampening of the gradient's contribution to the momentum buffer.
        weight_decay: decoupled weight decay (see above); ``0`` disables it.
        nesterov: use the Nesterov look-ahead ``g + momentum * b`` as the update.
        eps: added to the weight norms in the projection; also the norm floor of the cosine.
        delta: threshold of the scale-invariance test (``delta / sqrt(row length)``).
        wd_ratio: factor on the weight decay of parameters whose update was projected.
        foreach: multi-tensor ops (see :class:`AdamP`).
        fused: the fused C++ kernel (see :class:`AdamP`).

    State per parameter (as in the reference): ``momentum``.
    """

    def __init__(
        self,
        params: Params,
        lr: float = _required,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ) -> None:
        if lr is not _required and not lr >= 0.0:
            raise ValueError(f"SGDP: lr must be >= 0, got {lr}")
        _check_fused_flags("SGDP", foreach, fused)
        if not momentum >= 0.0:
            raise ValueError(f"SGDP: momentum must be >= 0, got {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"SGDP: weight_decay must be >= 0, got {weight_decay}")
        if weight_decay > 0 and momentum == 1:
            raise ValueError("SGDP: weight decay is scaled by 1 / (1 - momentum); momentum must be < 1")
        if not eps >= 0.0:
            raise ValueError(f"SGDP: eps must be >= 0, got {eps}")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio, foreach=foreach, fused=fused,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor) -> Dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            state["momentum"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Performs one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        return self._run("SGDP", closure, self._init_state)

    @staticmethod
    def _weight_factor(group: Dict[str, Any], kind: str) -> float:
        ratio = group["wd_ratio"] if kind != NONE else 1
        return 1 - group["lr"] * group["weight_decay"] * ratio / (1 - group["momentum"])

    def _state_tensors(self, state: Dict[str, Any]) -> List[Tensor]:
        return [state["momentum"]]

    def _step_fused(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        return _core.adamp_step(
            1, ps, gs, [s["momentum"] for s in states], None, [1] * len(ps), lr=group["lr"],
            momentum=group["momentum"], dampening=group["dampening"], eps=group["eps"],
            weight_decay=group["weight_decay"], delta=group["delta"], wd_ratio=group["wd_ratio"],
            nesterov=group["nesterov"],
        )

    def _step_single(self, group: Dict[str, Any], p: Tensor, grad: Tensor, state: Dict[str, Any]) -> str:
        momentum, dampening, eps = group["momentum"], group["dampening"], group["eps"]
        nesterov, wd = group["nesterov"], group["weight_decay"]
        buf = state["momentum"]
        tested = p.dim() > 1 and p.numel() > 0
        blk = self._blocks(p, grad, buf)

        if blk is None:  # the reference's sequence on whole tensors
            kind = self._decide_one(p, grad, group["delta"], eps) if tested else NONE
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            update = grad + momentum * buf if nesterov else buf  # the reference's aliasing
            if kind != NONE:
                _project_(update, p, kind, eps)
            if wd > 0:
                p.mul_(self._weight_factor(group, kind))
            p.add_(update, alpha=-group["lr"])
            return kind

        g2, b2, p2 = blk.view(grad), blk.view(buf), blk.view(p)
        # Without Nesterov the update is the momentum buffer itself: projecting it projects the
        # buffer, as in the reference.
        u2 = blk.update if nesterov else b2
        stats = torch.empty(3, blk.rows, dtype=p.dtype) if tested else None
        for a, b in blk.blocks:
            gb, bb = g2[a:b], b2[a:b]
            t0, _, _ = blk.temps(a, b)
            if stats is not None:
                _block_stats(gb, p2[a:b], t0, stats[:, a:b])
            bb.mul_(momentum).add_(gb, alpha=1 - dampening)
            if nesterov:
                torch.add(gb, torch.mul(bb, momentum, out=t0), out=u2[a:b])
        kind = NONE
        if stats is not None:
            kind = _decide_from_stats([p], [grad], [stats], group["delta"], eps, self._fallback_buffer)[0]
        decay = self._weight_factor(group, kind) if wd > 0 else None
        self._finish_blocked(blk, p, u2, kind, stats, eps, decay, group["lr"])
        return kind

    def _step_multi(
        self, group: Dict[str, Any], ps: List[Tensor], gs: List[Tensor], states: List[Dict[str, Any]]
    ) -> List[str]:
        momentum, eps = group["momentum"], group["eps"]
        bufs = [s["momentum"] for s in states]
        kinds = self._decide_multi(ps, gs, group["delta"], eps)
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, gs, alpha=1 - group["dampening"])
        update: Union[List[Tensor], Tuple[Tensor, ...]]
        if group["nesterov"]:
            update = torch._foreach_add(gs, torch._foreach_mul(bufs, momentum))
        else:
            update = bufs  # aliasing, as above
        for u, p, kind in zip(update, ps, kinds):
            if kind != NONE:
                _project_(u, p, kind, eps)
        if group["weight_decay"] > 0:
            torch._foreach_mul_(ps, [self._weight_factor(group, k) for k in kinds])
        torch._foreach_add_(ps, update, alpha=-group["lr"])
        return kinds


# --------------------------------------------------------------------------------------------
# Parameter groups (docs/design.md, "Parameter groups")
# --------------------------------------------------------------------------------------------

#: Modules whose parameters are never weight-decayed: their weights are scales and shifts of a
#: normalised activation, not directions in input space (the same reason AdamP never projects
#: tensors of dimension <= 1).
_NORM_TYPES: Tuple[type, ...] = tuple(
    t for t in (
        torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm,
        torch.nn.modules.batchnorm._NormBase, getattr(torch.nn, "RMSNorm", None),
    ) if isinstance(t, type)
)

#: Parameter names (the last component) that are never weight-decayed: open_clip's temperature and
#: bias, and the scale and shift of pcmekit's losses (0-dim, so excluded by the ndim rule too).
DEFAULT_NO_DECAY: Tuple[str, ...] = ("logit_scale", "logit_bias")


def _positive_number(name: str, value: Any, *, upper: Optional[float] = None, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"param_groups: {name} must be a real number, got {type(value).__name__}")
    ok = math.isfinite(value) and (value >= 0 if zero else value > 0) and (upper is None or value <= upper)
    if not ok:
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"param_groups: {name} must be finite and {bound}{'' if upper is None else f' and <= {upper:g}'}, got {value}")
    return float(value)


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    *,
    lr: float,
    layer_decay: Optional[float] = None,
    block_pattern: str = r"resblocks\.(\d+)\.",
    lr_scale: Optional[Dict[str, float]] = None,
    no_decay: Iterable[str] = DEFAULT_NO_DECAY,
) -> List[Dict[str, Any]]:
    r"""Parameter groups for :class:`AdamP` / :class:`SGDP` (or any torch optimizer): which
    parameters are weight-decayed, and each one's learning rate (docs/design.md, "Parameter groups").

    Weight decay ``weight_decay`` applies to every trainable parameter except: those of dimension
    < 2 (biases, norm scales, scalars such as a loss's ``scale`` and ``shift``), those named
    ``bias``, those of normalisation layers (LayerNorm, GroupNorm, BatchNorm / InstanceNorm,
    LocalResponseNorm, RMSNorm and their subclasses, such as open_clip's LayerNorm), and those
    whose last name component is in ``no_decay`` (default ``logit_scale``, ``logit_bias``).

    Learning rate: ``lr`` times the ``lr_scale`` of the longest prefix of the parameter's name
    found in it (1 if none; PCME++ scales its image and text backbones by 0.01 and 0.1), times,
    with ``layer_decay``, ``layer_decay ** (L - b)`` for a parameter of block ``b`` of a tower of
    ``L`` blocks -- PCME++'s layer-wise decay (its ``layerwise_lr_decay``, 0.7): the last block
    gets ``layer_decay``, the first ``layer_decay ** L``. A block is what ``block_pattern``
    matches in the name, its index the pattern's one group (default ``resblocks.<b>.``, open_clip's
    and CLIP's transformers); a tower is everything with the same name before the match (so
    ``visual.transformer.resblocks.*`` and ``transformer.resblocks.*`` are two towers), and ``L``
    is its largest block index + 1, counting frozen parameters too. Parameters outside blocks
    (embeddings, final norms, projections, heads) get no layer decay, as in PCME++.

    Args:
        model: the module whose parameters to group; put the loss in it too when the loss has
            parameters (e.g. ``torch.nn.ModuleDict({"model": model, "loss": loss})``).
        weight_decay: the decay of the decayed parameters (>= 0).
        lr: the base learning rate (> 0).
        layer_decay: in (0, 1], or ``None`` for no layer-wise decay.
        block_pattern: a regular expression with one group, the block index.
        lr_scale: ``{name prefix: factor > 0}``; every prefix must match some parameter.
        no_decay: last name components never decayed.

    Returns a list of dicts ``{"params", "param_names", "lr", "weight_decay"}``, one per distinct
    ``(lr, weight_decay)`` in order of first appearance; frozen parameters
    (``requires_grad=False``) are left out, and a parameter shared by two modules appears once.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"param_groups: model must be a torch.nn.Module, got {type(model).__name__}")
    weight_decay = _positive_number("weight_decay", weight_decay, zero=True)
    lr = _positive_number("lr", lr)
    if layer_decay is not None:
        layer_decay = _positive_number("layer_decay", layer_decay, upper=1.0)
    if not isinstance(block_pattern, str):
        raise TypeError(f"param_groups: block_pattern must be a str, got {type(block_pattern).__name__}")
    try:
        block_re = re.compile(block_pattern)
    except re.error as err:
        raise ValueError(f"param_groups: block_pattern {block_pattern!r} is not a valid regular expression: {err}") from None
    if block_re.groups != 1:
        raise ValueError(f"param_groups: block_pattern must have exactly one group (the block index), "
                         f"{block_pattern!r} has {block_re.groups}")
    if isinstance(no_decay, str):
        raise TypeError(f"param_groups: no_decay must be an iterable of names, not a str ({no_decay!r})")
    skip = set(no_decay)
    scales = dict(lr_scale or {})
    for prefix, factor in scales.items():
        if not isinstance(prefix, str):
            raise TypeError(f"param_groups: lr_scale keys must be name prefixes (str), got {type(prefix).__name__}")
        _positive_number(f"lr_scale[{prefix!r}]", factor)

    named = list(model.named_parameters())
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)
    }
    unmatched = [prefix for prefix in scales if not any(name.startswith(prefix) for name, _ in named)]
    if unmatched:
        raise ValueError(f"param_groups: lr_scale prefixes {unmatched} match no parameter of the model "
                         f"(names look like {[name for name, _ in named[:3]]})")

    def block_of(name: str) -> Optional[Tuple[str, int]]:
        match = block_re.search(name)
        if match is None:
            return None
        try:
            return name[: match.start()], int(match.group(1))
        except ValueError:
            raise ValueError(f"param_groups: block_pattern's group must match an integer, got "
                             f"{match.group(1)!r} in {name!r}") from None

    depth: Dict[str, int] = {}
    for name, _ in named:
        found = block_of(name)
        if found is not None:
            depth[found[0]] = max(depth.get(found[0], 0), found[1] + 1)

    groups: Dict[Tuple[float, float], Dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        decayed = not (p.ndim < 2 or leaf == "bias" or leaf in skip or id(p) in norm_params)
        factor = 1.0
        matches = [prefix for prefix in scales if name.startswith(prefix)]
        if matches:
            factor = scales[max(matches, key=len)]
        p_lr = lr * factor
        found = block_of(name)
        if layer_decay is not None and found is not None:
            p_lr *= layer_decay ** (depth[found[0]] - found[1])
        key = (p_lr, weight_decay if decayed else 0.0)
        group = groups.setdefault(key, {"params": [], "param_names": [], "lr": key[0], "weight_decay": key[1]})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())
