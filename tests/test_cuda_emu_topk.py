"""The CUDA top-k fused into the tensor-core engine (csrc/cuda/topk_tc.cu), run by the emulator.

Where the engine applies (docs/design.md's precision table: float32 csd/w2/l2/kl under "high" /
"medium", 16-bit csd/l2 always, 16-bit w2/kl under high/medium) and k <= 64, the scores are
ranked in the engine's epilogue. They are computed exactly as pairwise_forward's tensor-core
path computes them, so the fused result must be, bit for bit, a stable sort of that matrix
(values and indices: ties to the lower index). Against the float64 reference the TF32 bound of
tests/test_cuda_emu_tc.py applies under high, the float32 bound under highest (the unchanged
tile path). Which path ran shows in the workspace size: the fused path needs [Q, splits, k]
(int64 + float) only when the gallery is split, the tile path a score tile.
"""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import _C, _core
from pcmekit.reference import pairwise_distance_naive

from _helpers import (
    HIGH,
    HIGHEST,
    INNER,
    MEDIUM,
    METRIC_CODE,
    emulated_cuda_view,
    float_bound,
    gaussians,
    rel_err,
    require_cuda_emulation,
    tc_magnitude,
)

require_cuda_emulation()

TF32_UNIT = 2.0**-11
FUSED_MAX_K = 64
TILE_COLS = 8192  # topk.cu's kChunkCols: the tile path's workspace is rows x min(N, 8192) floats

cu = emulated_cuda_view


def views(metric, q_mu, q_lv, g_mu, g_lv):
    lv = (lambda t: None) if metric == "l2" else cu
    return cu(q_mu), lv(q_lv), cu(g_mu), lv(g_lv)


def workspace_bytes(metric, args, k, precision):
    return _C.topk_workspace_bytes(0, METRIC_CODE[metric], *views(metric, *args), 1, k, precision)


def run(metric, args, k, precision, values=None, indices=None):
    """_C.topk on the emulated device; returns (values, indices, workspace bytes)."""
    q = args[0].shape[0]
    if values is None:
        values = torch.full((q, k), float("nan"), dtype=torch.float32)
    if indices is None:
        indices = torch.full((q, k), -1, dtype=torch.int64)
    need = workspace_bytes(metric, args, k, precision)
    workspace = torch.full((max(need, 1),), 0xFF, dtype=torch.uint8)  # garbage, not zeros
    _C.topk(
        0, METRIC_CODE[metric], *views(metric, *args), None, None, 1, 1.0, 0.0, False, k,
        cu(values), cu(indices), workspace.data_ptr() if need else 0, need, 1, 0, precision=precision,
    )
    return values, indices, need


def run_cpu(metric, args, k):
    from pcmekit._core import matrix_view as mv

    lv = (lambda t: None) if metric == "l2" else mv
    q = args[0].shape[0]
    values = torch.empty((q, k), dtype=args[0].dtype)
    indices = torch.empty((q, k), dtype=torch.int64)
    q_mu, q_lv, g_mu, g_lv = args
    _C.topk(0, METRIC_CODE[metric], mv(q_mu), lv(q_lv), mv(g_mu), lv(g_lv), None, None, 1, 1.0, 0.0, False, k,
            mv(values), mv(indices), 0, 0, 1, 0)
    return values, indices


def pairwise(metric, args, precision):
    """pairwise_forward on the emulated device (its tensor-core path where the rule says so)."""
    q_mu, _, g_mu, _ = args
    out = torch.full((q_mu.shape[0], g_mu.shape[0]), float("nan"), dtype=torch.float32)
    _C.pairwise_forward(METRIC_CODE[metric], *views(metric, *args), cu(out), 1, 0, precision)
    return out


def stable_topk(scores, k):
    values, indices = torch.sort(scores, dim=1, stable=True)
    return values[:, :k], indices[:, :k]


def inputs(q, n, d, dtype=torch.float32, seed=0):
    q_mu, q_lv = gaussians(q, d, seed=seed)
    g_mu, g_lv = gaussians(n, d, seed=seed + 1)
    return [t.to(dtype) for t in (q_mu, q_lv, g_mu, g_lv)]


def reference(metric, args):
    return pairwise_distance_naive(*(t.double() for t in args), metric)


def check_against_reference(values, indices, ref, bound):
    """Every index carries its reference score within its elementwise bound, the indices of a row
    are distinct, and the sorted values are the reference's k best within the row's largest
    bound (two items whose scores are within it may swap, docs/design.md "Ties")."""
    q, k = values.shape
    for row in range(q):
        assert len(set(indices[row].tolist())) == k
    own = ref.gather(1, indices)
    assert ((values.double() - own).abs() <= bound.gather(1, indices)).all()
    ref_best = torch.sort(ref, dim=1).values[:, :k]
    row_bound = bound.max(dim=1, keepdim=True).values
    assert ((values.double() - ref_best).abs() <= row_bound).all()


def tile_workspace(q, n):
    return q * min(n, TILE_COLS) * 4


def fused_splits(need, q, k):
    """The number of gallery splits a fused run used (1: no workspace)."""
    return 1 if need == 0 else need // (q * k * 12)


# ---------------------------------------------------------------------------------------------
# Bit for bit the stable sort of the pairwise tensor-core matrix.

# Odd sizes: Q and N across 64-row tiles, D across 32-feature chunks, D = 1; N = 1000 and 1200
# split the gallery (16 / 19 tiles: 4 / 5 splits of 3-4 tiles), N <= 256 is one split.
CASES = [(1, 1, 1, 1), (3, 17, 5, 17), (3, 17, 5, 4), (65, 70, 33, 10), (70, 130, 1, 64), (5, 1000, 19, 10),
         (3, 1200, 7, 64), (130, 257, 64, 16), (2, 300, 40, 33)]


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_high_is_the_stable_sort_of_the_pairwise_tc_matrix(metric, case):
    q, n, d, k = case
    args = inputs(q, n, d)
    scores = pairwise(metric, args, HIGH)
    want_v, want_i = stable_topk(scores, k)
    for precision in (HIGH, MEDIUM):
        values, indices, need = run(metric, args, k, precision)
        assert need != tile_workspace(q, n) or need == 0  # the fused path ran
        assert torch.equal(indices, want_i)
        assert torch.equal(values, want_v)


def test_the_gallery_is_split_and_merged():
    """N = 1200 (19 tiles): 5 splits, the merge sees every one of them; N = 200: a single split
    writes the outputs directly (no workspace)."""
    args = inputs(3, 1200, 7)
    for k in (1, 10, 64):
        _, _, need = run("csd", args, k, HIGH)
        assert fused_splits(need, 3, k) == 5
    assert workspace_bytes("csd", inputs(3, 200, 7), 10, HIGH) == 0


# ---------------------------------------------------------------------------------------------
# Accuracy: the TF32 bound under high, the float32 bound (and the tile path) under highest.


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("case", [(5, 1000, 19, 10), (65, 70, 33, 64), (4, 300, 100, 1)],
                         ids=lambda c: "x".join(map(str, c)))
def test_float32_high_within_the_tf32_bound_and_highest_unchanged(metric, case):
    q, n, d, k = case
    args = inputs(q, n, d)
    ref = reference(metric, args)
    tf32 = 2 * TF32_UNIT * 1.05 * tc_magnitude(metric, *args) + float_bound(ref, d)
    values, indices, _ = run(metric, args, k, HIGH)
    check_against_reference(values, indices, ref, tf32)
    cpu_v, cpu_i = run_cpu(metric, args, k)
    assert ((values.double() - cpu_v.double()).abs() <= tf32.max(dim=1, keepdim=True).values).all()

    values, indices, need = run(metric, args, k, HIGHEST)
    assert need == tile_workspace(q, n)  # the tile path, as before
    check_against_reference(values, indices, ref, torch.full_like(ref, float_bound(ref, d)))
    assert rel_err(values, cpu_v) <= 2e-6 * math.sqrt(d)


@pytest.mark.parametrize("metric", INNER)
def test_high_is_measurably_less_accurate_than_highest(metric):
    """D = 100, all k = 64 values of each row: TF32 is ~2^-12 of the magnitude, float32 ~2^-23,
    so the two runs prove which engine scored."""
    args = inputs(20, 300, 100, seed=3)
    ref = reference(metric, args)
    v_high, idx_high, _ = run(metric, args, FUSED_MAX_K, HIGH)
    v_highest, idx_highest, _ = run(metric, args, FUSED_MAX_K, HIGHEST)
    err_high = rel_err(v_high, ref.gather(1, idx_high))
    err_highest = rel_err(v_highest, ref.gather(1, idx_highest))
    assert err_high >= 2.0**-16
    assert err_high >= 20 * err_highest


# ---------------------------------------------------------------------------------------------
# 16-bit inputs: csd / l2 fused in every mode (exact products), w2 / kl only under high / medium.


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", INNER)
def test_16bit_inputs(metric, dtype):
    q, n, d, k = 5, 1000, 37, 10
    args = inputs(q, n, d, dtype)
    ref = reference(metric, args)
    for precision in (HIGHEST, HIGH):
        values, indices, need = run(metric, args, k, precision)
        fused = metric in ("csd", "l2") or precision != HIGHEST
        assert (need != tile_workspace(q, n)) == fused
        scores = pairwise(metric, args, precision)
        want_v, want_i = stable_topk(scores, k)
        assert torch.equal(indices, want_i)
        assert torch.equal(values, want_v)
        if metric in ("csd", "l2"):
            bound = torch.full_like(ref, float_bound(ref, d))  # the features are the inputs: exact
        else:
            bound = 2 * TF32_UNIT * 1.05 * tc_magnitude(metric, *args) + float_bound(ref, d)
        check_against_reference(values, indices, ref, bound)


# ---------------------------------------------------------------------------------------------
# Ties, k at the limits, empty queries, strided views, the precision code.


@pytest.mark.parametrize("metric", INNER)
def test_duplicated_gallery_rows_go_to_the_lower_index(metric):
    """Every gallery row appears 3 times (at j, j + 400, j + 800: other splits) and the queries
    are gallery rows (l2 / csd distances of a row to itself clamp near 0): equal scores must
    come out in index order, across splits."""
    base = inputs(4, 400, 9, seed=5)
    g_mu = base[2].repeat(3, 1)
    g_lv = base[3].repeat(3, 1)
    args = [g_mu[[3, 250, 399, 7]], g_lv[[3, 250, 399, 7]], g_mu, g_lv]
    k = 30
    values, indices, need = run(metric, args, k, HIGH)
    assert fused_splits(need, 4, k) > 1
    want_v, want_i = stable_topk(pairwise(metric, args, HIGH), k)
    assert torch.equal(indices, want_i)
    assert torch.equal(values, want_v)
    for row in range(4):
        for s in range(0, k - 2, 3):  # the three copies are adjacent, lowest first
            trio = indices[row, s : s + 3].tolist()
            if values[row, s] == values[row, s + 1] == values[row, s + 2]:
                assert trio == sorted(trio)
                assert trio[1] - trio[0] == 400 and trio[2] - trio[1] == 400


@pytest.mark.parametrize("k", [1, 64, 65])
def test_k_at_the_limit_of_the_fused_path(k):
    """k = 64 is fused, k = 65 goes to the tile path, which now scores its tiles on the tensor
    cores under high: both are the stable sort of the same matrix."""
    q, n, d = 3, 700, 21
    args = inputs(q, n, d, seed=7)
    values, indices, need = run("w2", args, k, HIGH)
    assert (need == tile_workspace(q, n)) == (k > FUSED_MAX_K)
    want_v, want_i = stable_topk(pairwise("w2", args, HIGH), k)
    assert torch.equal(indices, want_i)
    assert torch.equal(values, want_v)


def test_empty_queries():
    args = inputs(0, 100, 8)
    assert workspace_bytes("csd", args, 5, HIGH) == 0
    values, indices, _ = run("csd", args, 5, HIGH)
    assert values.shape == (0, 5) and indices.shape == (0, 5)


@pytest.mark.parametrize("metric", ["csd", "kl"])
def test_strided_views(metric):
    """Transposed (column-major) and sliced inputs take the element loads; transposed outputs
    are written through their strides. The same bits as contiguous inputs."""
    q, n, d, k = 6, 500, 24, 12
    args = inputs(q, n, d, seed=9)
    want_v, want_i, _ = run(metric, args, k, HIGH)
    q_mu = args[0].t().contiguous().t()
    q_lv = torch.stack([args[1], torch.zeros_like(args[1])], dim=2).reshape(q, 2 * d)[:, ::2]  # col stride 2
    g_mu = torch.cat([torch.zeros(n, 1), args[2]], dim=1)[:, 1:]  # offset base
    g_lv = args[3].t().contiguous().t()
    assert torch.equal(q_lv, args[1]) and torch.equal(g_mu, args[2])
    assert not q_mu.is_contiguous() and not g_lv.is_contiguous() and q_lv.stride(1) == 2
    values = torch.full((k, q), float("nan")).t()
    indices = torch.full((k, q), -1, dtype=torch.int64).t()
    got_v, got_i, _ = run(metric, [q_mu, q_lv, g_mu, g_lv], k, HIGH, values, indices)
    assert torch.equal(got_i, want_i)
    assert torch.equal(got_v, want_v)


def test_bad_precision_code_is_refused():
    args = inputs(3, 50, 4)
    for code in (3, -1):
        with pytest.raises(ValueError, match=f"matmul precision code {code}"):
            run("csd", args, 5, code)
        with pytest.raises(ValueError, match=f"matmul precision code {code}"):
            workspace_bytes("csd", args, 5, code)


def test_ops_topk_passes_the_torch_precision(monkeypatch):
    """pcmekit.topk reads torch.get_float32_matmul_precision() when it runs and hands its code to
    the core (the CPU ignores it, so only the call is checked)."""
    seen = []
    real = _core.topk

    def spy(*args, **kwargs):
        seen.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_core, "topk", spy)
    q_mu, q_lv, g_mu, g_lv = inputs(3, 20, 4)
    old = torch.get_float32_matmul_precision()
    try:
        for mode, code in (("high", HIGH), ("medium", MEDIUM), ("highest", HIGHEST)):
            torch.set_float32_matmul_precision(mode)
            pcmekit.topk(q_mu, q_lv, g_mu, g_lv, k=3, metric="csd")
            assert seen[-1] == code
    finally:
        torch.set_float32_matmul_precision(old)
