"""The tensor-core forward engine (csrc/cuda/pairwise_tc.cu), run by the emulator's wmma stand-in.

Same skip logic as tests/test_cuda_emu.py: only the emulation build runs these, and with
PCMEKIT_REQUIRE_CUEMU=1 a missing emulation build is an error.

The matmul precision follows torch.get_float32_matmul_precision() (docs/design.md, "CUDA tensor cores and the matmul precision"):
  * 0 "highest": float32 keeps full float32 accuracy (the direct FP32 engine): the float32 bound
    of tests/test_cuda_emu.py, 2e-6 * sqrt(D) of max|ref|;
  * 1 "high", 2 "medium": TF32 tensor cores. Each operand is rounded to 11 significant bits
    (relative error <= 2^-11), so a product is off by at most about 2^-10 of itself, and the
    distance by 2^-10 * |alpha| * sum_d |f_a,d f_b,d| (its inner product's magnitude, "mag"
    below), times a small factor, plus float32 accumulation;
  * float16/bfloat16 inputs, csd and l2: half/bfloat16 tensor cores in every mode. The features
    are the inputs, so the products are exact and the float32 bound holds; w2 and kl on 16-bit
    inputs compute their features in float32, so they follow the mode like float32 does.
Every result is compared with the float64 reference on the (rounded) inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import _C
from pcmekit.reference import pairwise_distance_naive

from _helpers import (
    HIGH,
    HIGHEST,
    INNER,
    MEDIUM,
    METRIC_CODE,
    ROUNDING,
    emulated_cuda_view,
    float_bound,
    gaussians,
    rel_err,
    require_cuda_emulation,
    tc_magnitude,
)

require_cuda_emulation()

TF32_UNIT = 2.0**-11  # TF32 rounding: 10 explicit mantissa bits, round to nearest


cu = emulated_cuda_view


def run(metric, a_mu, a_lv, b_mu, b_lv, precision, out=None):
    if out is None:
        dtype = torch.float64 if a_mu.dtype == torch.float64 else torch.float32
        out = torch.full((a_mu.shape[0], b_mu.shape[0]), float("nan"), dtype=dtype)
    lv = (lambda t: None) if metric == "l2" else cu
    _C.pairwise_forward(METRIC_CODE[metric], cu(a_mu), lv(a_lv), cu(b_mu), lv(b_lv), cu(out), 1, 0, precision)
    return out


def inputs(n, m, d, dtype, seed=0):
    a_mu, a_lv = gaussians(n, d, seed=seed)
    b_mu, b_lv = gaussians(m, d, seed=seed + 1)
    return [t.to(dtype) for t in (a_mu, a_lv, b_mu, b_lv)]


def reference(metric, a_mu, a_lv, b_mu, b_lv):
    return pairwise_distance_naive(a_mu.double(), a_lv.double(), b_mu.double(), b_lv.double(), metric)


def check_tf32(got, ref, mag, d):
    """TF32: elementwise |got - ref| <= 2 * 2^-11 * 1.05 * mag + the float32 bound."""
    if ref.numel() == 0:
        return
    err = (got.double() - ref).abs()
    bound = 2 * TF32_UNIT * 1.05 * mag + float_bound(ref, d) + 1e-30  # D = 0: all exact zeros
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3g} x the TF32 bound"


# Odd sizes crossing every tile boundary: 64-row tiles, 16-row fragments, 32-feature chunks
# (16 dims for w2/kl, 32 for csd/l2), 8/16-wide k-steps.
SHAPES = [(1, 1, 1), (3, 17, 5), (17, 3, 7), (65, 66, 33), (64, 64, 64), (257, 65, 17), (1030, 70, 19),
          (40, 70, 100), (5, 7, 0)]


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_high_is_tf32_and_within_its_bound(metric, shape):
    n, m, d = shape
    args = inputs(n, m, d, torch.float32)
    ref = reference(metric, *args)
    mag = tc_magnitude(metric, *args)
    for precision in (HIGH, MEDIUM):
        got = run(metric, *args, precision)
        assert not got.isnan().any()
        check_tf32(got, ref, mag, d)
    highest = run(metric, *args, HIGHEST)
    assert rel_err(highest, ref) <= 2e-6 * math.sqrt(max(d, 1))


@pytest.mark.parametrize("metric", INNER)
def test_high_is_less_accurate_than_highest(metric):
    """Random data, D = 100: TF32's error is ~2^-11 of the magnitude, float32's ~2^-24, so the
    TF32 path must be visibly taken under "high" and never under "highest"."""
    args = inputs(70, 90, 100, torch.float32, seed=7)
    ref = reference(metric, *args)
    e_highest = rel_err(run(metric, *args, HIGHEST), ref)
    e_high = rel_err(run(metric, *args, HIGH), ref)
    assert e_highest <= 2e-6 * math.sqrt(100)
    assert e_high >= 2.0**-16, f"high's error {e_high:.3g} is float32's: TF32 not used"
    assert e_high >= 20 * e_highest, (e_high, e_highest)


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 5), (65, 257, 33), (1030, 70, 17), (40, 70, 100), (5, 7, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_16bit_inputs(metric, dtype, shape):
    n, m, d = shape
    args = inputs(n, m, d, dtype)
    ref = reference(metric, *args)
    for precision in (HIGHEST, HIGH):
        got = run(metric, *args, precision)
        assert got.dtype == torch.float32
        if metric in ("csd", "l2") or precision == HIGHEST:
            # csd/l2: exact 16-bit products on half/bfloat16 tensor cores; w2/kl under highest:
            # the direct float32 engine.
            assert rel_err(got, ref) <= 2e-6 * math.sqrt(max(d, 1)), (precision, rel_err(got, ref))
        else:
            check_tf32(got, ref, tc_magnitude(metric, *args), d)


@pytest.mark.parametrize("metric", INNER)
def test_near_duplicates_clamp_at_zero(metric):
    """Identical rows: the expanded form cancels to about 0 and may dip below; the epilogue clamps."""
    a_mu, a_lv = gaussians(33, 40, seed=3)
    args = [t.float() for t in (a_mu, a_lv, a_mu.clone(), a_lv.clone())]
    got = run(metric, *args, HIGH)
    assert (got >= 0).all()
    ref = reference(metric, *args)
    check_tf32(got, ref, tc_magnitude(metric, *args), 40)


@pytest.mark.parametrize("metric", INNER)
def test_strided_unaligned_inputs_and_output(metric):
    """Non-contiguous, transposed and 4-byte-offset inputs, and a transposed output: the kernel
    reads through the strides and uses 16-byte loads only where they are aligned."""
    a_mu, a_lv, b_mu, b_lv = inputs(37, 70, 48, torch.float32, seed=5)
    a_mu_t, a_lv_t = a_mu.t().contiguous().t(), a_lv.t().contiguous().t()
    b_mu_s = torch.stack([b_mu, torch.zeros_like(b_mu)], dim=2).reshape(70, 96)[:, ::2]
    # Row-contiguous but one element (4 bytes) past an aligned start: no vector loads.
    b_lv_o = torch.zeros(70 * 48 + 1)[1:].view(70, 48)
    b_lv_o.copy_(b_lv)
    out = torch.full((70, 37), float("nan")).t()
    assert not a_mu_t.is_contiguous() and not b_mu_s.is_contiguous() and b_lv_o.data_ptr() % 16 != 0
    got = run(metric, a_mu_t, a_lv_t, b_mu_s, b_lv_o, HIGH, out=out)
    args = (a_mu, a_lv, b_mu, b_lv)
    check_tf32(got, reference(metric, *args), tc_magnitude(metric, *args), 48)
    contiguous = run(metric, *args, HIGH)
    assert torch.equal(got, contiguous)  # the same arithmetic, whichever load path


def test_row_stride_not_a_multiple_of_16_bytes():
    """D = 5 contiguous: rows start 20 bytes apart, so no 16-byte loads."""
    args = inputs(70, 66, 5, torch.float32, seed=2)
    for metric in INNER:
        check_tf32(run(metric, *args, HIGH), reference(metric, *args), tc_magnitude(metric, *args), 5)


def test_empty_inputs():
    for n, m in ((0, 5), (5, 0), (0, 0)):
        args = inputs(n, m, 8, torch.float32)
        for metric in INNER:
            got = run(metric, *args, HIGH)
            assert got.shape == (n, m)
        args16 = inputs(n, m, 8, torch.bfloat16)
        assert run("csd", *args16, HIGHEST).shape == (n, m)


def test_float64_and_direct_metrics_ignore_the_precision():
    args = inputs(20, 30, 9, torch.float64)
    for metric in METRIC_CODE:
        ref = reference(metric, *args)
        assert rel_err(run(metric, *args, HIGH), ref) <= 1e-12
    args = inputs(20, 30, 9, torch.float32)
    for metric in ("bhattacharyya", "elk", "inclusion"):
        assert torch.equal(run(metric, *args, HIGH), run(metric, *args, HIGHEST))


def test_unknown_precision_is_refused():
    args = inputs(2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="matmul precision"):
        run("csd", *args, 3)
    with pytest.raises(ValueError, match="matmul precision"):
        run("csd", *args, -1)


def test_default_precision_is_highest():
    args = inputs(30, 40, 64, torch.float32)
    out = torch.full((30, 40), float("nan"))
    _C.pairwise_forward(0, cu(args[0]), cu(args[1]), cu(args[2]), cu(args[3]), cu(out), 1, 0)
    assert torch.equal(out, run("csd", *args, HIGHEST))


# ---------------------------------------------------------------------------------------------
# Backward (pairwise_tc.cu, pairwise_backward_tc_kernel): the two products g @ F_b and g^T @ F_a
# on TF32 tensor cores, the chain rule and the row / column sums of g in the epilogue.
#
# Error bound, element by element, for each gradient x of a side (docs/design.md): the products
# p_k = sum_q g[., q] F_k[q, .] have both operands rounded to TF32, so
#   |dp_k| <= 2.1 * 2^-11 * P_k,   P_k = |g| @ |F_k|   (P_k: the product's magnitude),
# and the chain rule carries it into the gradient with the own side's values:
#   csd, l2, w2: d mu: 2 |dp0|;  w2 d lv: sigma |dp1|;  csd d lv = var * s has no product (exact s)
#   kl, a side:  d mu: |mu| |dp0| + |dp1|;  d lv: var |dp0| / 2
#   kl, b side:  d mu: |dp0| / var;  d lv: (|dp1| + 2 |mu| |dp0|) / (2 var)
# plus the float32 bound of tests/test_cuda_emu.py (2e-6 sqrt(Q) of max|ref|) and, for 16-bit
# gradients, that format's rounding of the value. Under highest float32 runs on the direct
# engine (the float32 bound); 16-bit csd / l2 split g into two TF32 parts (2xTF32) with exact
# 16-bit features, so they meet the float32 bound in every mode.


def run_backward(metric, grad_out, a_mu, a_lv, b_mu, b_lv, precision, want=(True, True, True, True), outs=None):
    if outs is None:
        outs = [torch.full_like(t, float("nan")) if w else None for t, w in zip((a_mu, a_lv, b_mu, b_lv), want)]
    lv = (lambda t: None) if metric == "l2" else cu
    _C.pairwise_backward(METRIC_CODE[metric], cu(grad_out), cu(a_mu), lv(a_lv), cu(b_mu), lv(b_lv),
                         *[cu(o) for o in outs], 1, 0, precision)
    return outs


def reference_grads(metric, grad_out, a_mu, a_lv, b_mu, b_lv):
    leaves = [t.detach().double().requires_grad_(True) for t in (a_mu, a_lv, b_mu, b_lv)]
    ref = pairwise_distance_naive(*leaves, metric)
    grads = torch.autograd.grad(ref, leaves, grad_out.double(), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def tf32_grad_bounds(metric, grad_out, a_mu, a_lv, b_mu, b_lv):
    """The TF32 part of the bound above, [bound of d a_mu, d a_lv, d b_mu, d b_lv]."""
    g = grad_out.double().abs()
    am, al, bm, bl = (t.double() for t in (a_mu, a_lv, b_mu, b_lv))
    va, vb = al.exp(), bl.exp()
    unit = 2.1 * TF32_UNIT
    if metric in ("csd", "l2"):
        da = 2 * unit * (g @ bm.abs())
        db = 2 * unit * (g.T @ am.abs())
        return [da, torch.zeros_like(al), db, torch.zeros_like(bl)]
    if metric == "w2":
        sa, sb = (0.5 * al).exp(), (0.5 * bl).exp()
        return [2 * unit * (g @ bm.abs()), sa * unit * (g @ sb), 2 * unit * (g.T @ am.abs()), sb * unit * (g.T @ sa)]
    # kl: a side from F_b = (1/var_b, mu_b/var_b), b side from F_a = (mu_a, var_a + mu_a^2)
    p0a, p1a = unit * (g @ (1 / vb)), unit * (g @ (bm.abs() / vb))
    p0b, p1b = unit * (g.T @ am.abs()), unit * (g.T @ (va + am**2))
    return [am.abs() * p0a + p1a, 0.5 * va * p0a, p0b / vb, 0.5 * (p1b + 2 * bm.abs() * p0b) / vb]


def check_grads(got, refs, bounds, q_rows, dtype, label):
    """Element by element: |got - ref| <= bound + the float32 bound (+ 16-bit rounding)."""
    names = ("a_mean", "a_logvar", "b_mean", "b_logvar")
    for name, g, r, b, q in zip(names, got, refs, bounds, q_rows):
        if g is None or r.numel() == 0:
            continue
        assert g.dtype == dtype
        assert not g.isnan().any(), f"{label} {name}: NaN (not written)"
        total = b + float_bound(r, q) + 1e-30
        total = total + ROUNDING.get(dtype, 0.0) * (r.abs() + total)
        worst = ((g.double() - r).abs() / total).max().item()
        assert worst <= 1.0, f"{label} grad {name}: error {worst:.3g} x its bound"


def zeros_like_bounds(refs):
    return [torch.zeros_like(r) for r in refs]


def l2_refs(metric, refs):
    if metric == "l2":  # l2 has no logvar: its logvar gradients are written as 0
        refs[1], refs[3] = torch.zeros_like(refs[1]), torch.zeros_like(refs[3])
    return refs


def grad_inputs(n, m, d, dtype, seed=0):
    args = inputs(n, m, d, dtype, seed=seed)
    grad_out = torch.randn(n, m, generator=torch.Generator().manual_seed(seed + 100))
    return grad_out, args


BW_SHAPES = [(1, 1, 1), (3, 17, 5), (17, 3, 7), (65, 66, 33), (64, 64, 64), (257, 65, 17), (40, 70, 100),
             (33, 257, 3), (5, 7, 0)]


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("shape", BW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backward_float32_high_is_tf32_and_within_its_bound(metric, shape):
    n, m, d = shape
    grad_out, args = grad_inputs(n, m, d, torch.float32, seed=n + m + d)
    refs = l2_refs(metric, reference_grads(metric, grad_out, *args))
    bounds = tf32_grad_bounds(metric, grad_out, *args)
    for precision in (HIGH, MEDIUM):
        got = run_backward(metric, grad_out, *args, precision)
        check_grads(got, refs, bounds, (m, m, n, n), torch.float32, f"{metric} {shape} p{precision}")
    highest = run_backward(metric, grad_out, *args, HIGHEST)
    check_grads(highest, refs, zeros_like_bounds(refs), (m, m, n, n), torch.float32, f"{metric} {shape} highest")


@pytest.mark.parametrize("metric", INNER)
def test_backward_high_is_less_accurate_than_highest(metric):
    """The mean gradients go through the products: TF32's ~2^-12 of the magnitude against
    float32's ~2^-22 shows which engine ran."""
    grad_out, args = grad_inputs(70, 90, 100, torch.float32, seed=7)
    refs = reference_grads(metric, grad_out, *args)
    highest = run_backward(metric, grad_out, *args, HIGHEST)
    high = run_backward(metric, grad_out, *args, HIGH)
    for k in (0, 2):  # d a_mean, d b_mean
        e_highest, e_high = rel_err(highest[k], refs[k]), rel_err(high[k], refs[k])
        assert e_highest <= 2e-6 * math.sqrt(90)
        assert e_high >= 2.0**-16, f"high's error {e_high:.3g} is float32's: TF32 not used"
        assert e_high >= 20 * e_highest, (k, e_high, e_highest)


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 5), (65, 257, 33), (130, 70, 17), (40, 70, 100), (5, 7, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_backward_16bit_inputs(metric, dtype, shape):
    n, m, d = shape
    grad_out, args = grad_inputs(n, m, d, dtype, seed=3)
    refs = l2_refs(metric, reference_grads(metric, grad_out, *args))
    results = {}
    for precision in (HIGHEST, HIGH):
        got = results[precision] = run_backward(metric, grad_out, *args, precision)
        if metric in ("csd", "l2") or precision == HIGHEST:
            # csd / l2: 2xTF32 on tensor cores with exact features; w2 / kl under highest: direct.
            bounds = zeros_like_bounds(refs)
        else:
            bounds = tf32_grad_bounds(metric, grad_out, *args)
        check_grads(got, refs, bounds, (m, m, n, n), dtype, f"{metric} {dtype} {shape} p{precision}")
    if metric in ("csd", "l2"):  # the same tensor-core kernel in both modes
        for x, y in zip(results[HIGHEST], results[HIGH]):
            assert torch.equal(x, y)


def test_backward_16bit_split_is_float32_accurate():
    """csd / l2 on float16: g split into two TF32 parts keeps the products to float32's accuracy,
    checked before the 16-bit rounding could hide it: against the float64 gradient rounded to
    float16, at most one float16 ulp off wherever the value is not tiny."""
    grad_out, args = grad_inputs(90, 300, 40, torch.float16, seed=4)
    for metric in ("csd", "l2"):
        refs = l2_refs(metric, reference_grads(metric, grad_out, *args))
        got = run_backward(metric, grad_out, *args, HIGH)
        for k in (0, 2):
            r = refs[k]
            close = (got[k].double() - r).abs() <= 2.0**-11 * r.abs() + float_bound(r, 300)
            assert close.all(), metric


@pytest.mark.parametrize("metric", INNER)
def test_backward_strided_inputs_grad_out_and_gradients(metric):
    """Transposed, sliced and offset inputs, a transposed grad_out, and transposed / sliced
    gradient outputs: read and written through their strides, with the same arithmetic."""
    grad_out, (a_mu, a_lv, b_mu, b_lv) = grad_inputs(37, 70, 48, torch.float32, seed=5)
    a_mu_t, a_lv_t = a_mu.t().contiguous().t(), a_lv.t().contiguous().t()
    b_mu_s = torch.stack([b_mu, torch.zeros_like(b_mu)], dim=2).reshape(70, 96)[:, ::2]
    b_lv_o = torch.zeros(70 * 48 + 1)[1:].view(70, 48)
    b_lv_o.copy_(b_lv)
    g_t = grad_out.t().contiguous().t()
    outs = [torch.full((48, 37), float("nan")).t(), torch.full((37, 96), float("nan"))[:, ::2],
            torch.full((48, 70), float("nan")).t(), torch.full((70, 48 * 3), float("nan"))[:, 1::3]]
    assert not g_t.is_contiguous() and not any(o.is_contiguous() for o in outs)
    got = run_backward(metric, g_t, a_mu_t, a_lv_t, b_mu_s, b_lv_o, HIGH, outs=outs)
    args = (a_mu, a_lv, b_mu, b_lv)
    contiguous = run_backward(metric, grad_out, *args, HIGH)
    for x, y in zip(got, contiguous):
        assert torch.equal(x, y)
    refs = l2_refs(metric, reference_grads(metric, grad_out, *args))
    check_grads(got, refs, tf32_grad_bounds(metric, grad_out, *args), (70, 70, 37, 37), torch.float32, metric)


@pytest.mark.parametrize("metric", INNER)
def test_backward_one_side_only(metric):
    grad_out, args = grad_inputs(45, 66, 20, torch.float32, seed=6)
    full = run_backward(metric, grad_out, *args, HIGH)
    for want in ((True, False, False, False), (False, True, False, True), (False, False, True, False),
                 (True, True, False, False), (False, False, True, True)):
        got = run_backward(metric, grad_out, *args, HIGH, want=want)
        for w, x, y in zip(want, got, full):
            assert (x is None) == (not w)
            if w:
                assert torch.equal(x, y), want


def test_backward_empty_inputs():
    for n, m, d in ((0, 5, 8), (5, 0, 8), (0, 0, 8), (5, 7, 0)):
        grad_out, args = grad_inputs(n, m, d, torch.float32)
        for metric in INNER:
            got = run_backward(metric, grad_out, *args, HIGH)
            for x, t in zip(got, args):
                assert x.shape == t.shape
                if m == 0 and t.shape[0] == n:  # nothing summed: the a side's gradients are zeros
                    assert (x == 0).all()
        args16 = inputs(n, m, d, torch.bfloat16)
        got = run_backward("csd", grad_out, *args16, HIGHEST)
        assert [x.shape for x in got] == [t.shape for t in args16]


def test_backward_float64_and_direct_metrics_ignore_the_precision():
    grad_out, args = grad_inputs(20, 30, 9, torch.float64)
    grad_out = grad_out.double()
    for metric in METRIC_CODE:
        refs = l2_refs(metric, reference_grads(metric, grad_out, *args))
        for g, r in zip(run_backward(metric, grad_out, *args, HIGH), refs):
            assert rel_err(g, r) <= 1e-12
    grad_out, args = grad_inputs(20, 30, 9, torch.float32)
    for metric in ("bhattacharyya", "elk", "inclusion"):
        for x, y in zip(run_backward(metric, grad_out, *args, HIGH), run_backward(metric, grad_out, *args, HIGHEST)):
            assert torch.equal(x, y)


def test_backward_unknown_precision_is_refused_and_default_is_highest():
    grad_out, args = grad_inputs(2, 3, 4, torch.float32)
    for bad in (3, -1):
        with pytest.raises(ValueError, match="matmul precision"):
            run_backward("csd", grad_out, *args, bad)
    grad_out, args = grad_inputs(30, 40, 64, torch.float32)
    outs = [torch.full_like(t, float("nan")) for t in args]
    _C.pairwise_backward(0, cu(grad_out), *[cu(t) for t in args], *[cu(o) for o in outs], 1, 0)
    for x, y in zip(outs, run_backward("csd", grad_out, *args, HIGHEST)):
        assert torch.equal(x, y)
