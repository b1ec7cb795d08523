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
import os

import pytest
import torch

import pcmekit
from pcmekit import _C, _core
from pcmekit.reference import pairwise_distance_naive

from _helpers import gaussians

EMULATED = bool(pcmekit.build_info().get("cuda_emulated"))
if not EMULATED and os.environ.get("PCMEKIT_REQUIRE_CUEMU") == "1":
    raise RuntimeError(f"PCMEKIT_REQUIRE_CUEMU=1 but {pcmekit.__file__} is not the emulation build")
if not EMULATED:  # one skip for the module, not one per case
    pytest.skip("needs the CUDA emulation build (make cuda-emu)", allow_module_level=True)

METRIC_CODE = {"csd": 0, "w2": 1, "l2": 2, "kl": 3, "bhattacharyya": 4, "elk": 5}
INNER = ["csd", "w2", "l2", "kl"]
HIGHEST, HIGH, MEDIUM = 0, 1, 2
TF32_UNIT = 2.0**-11  # TF32 rounding: 10 explicit mantissa bits, round to nearest


def cu(t: torch.Tensor | None):
    """The core's view of CPU tensor ``t``, labelled as CUDA memory: the emulator's device."""
    if t is None:
        return None
    v = list(_core.matrix_view(t))
    v[6] = 1
    return tuple(v)


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


def magnitude(metric, a_mu, a_lv, b_mu, b_lv):
    """|alpha| * sum_d |f_a,d| |f_b,d|: the size of the inner product the tensor cores compute."""
    am, al, bm, bl = (t.double() for t in (a_mu, a_lv, b_mu, b_lv))
    if metric == "kl":
        va, vb = al.exp(), bl.exp()
        return (va + am**2) @ (0.5 / vb).T + am.abs() @ (bm.abs() / vb).T
    mag = am.abs() @ bm.abs().T
    if metric == "w2":
        mag = mag + (0.5 * al).exp() @ (0.5 * bl).exp().T
    return 2.0 * mag


def float_bound(ref, d):
    return 2e-6 * math.sqrt(max(d, 1)) * (ref.abs().max().item() if ref.numel() else 0.0)


def check_tf32(got, ref, mag, d):
    """TF32: elementwise |got - ref| <= 2 * 2^-11 * 1.05 * mag + the float32 bound."""
    if ref.numel() == 0:
        return
    err = (got.double() - ref).abs()
    bound = 2 * TF32_UNIT * 1.05 * mag + float_bound(ref, d) + 1e-30  # D = 0: all exact zeros
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3g} x the TF32 bound"


def rel_err(got, ref):
    if ref.numel() == 0:
        return 0.0
    return (got.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-300)


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
    mag = magnitude(metric, *args)
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
            check_tf32(got, ref, magnitude(metric, *args), d)


@pytest.mark.parametrize("metric", INNER)
def test_near_duplicates_clamp_at_zero(metric):
    """Identical rows: the expanded form cancels to about 0 and may dip below; the epilogue clamps."""
    a_mu, a_lv = gaussians(33, 40, seed=3)
    args = [t.float() for t in (a_mu, a_lv, a_mu.clone(), a_lv.clone())]
    got = run(metric, *args, HIGH)
    assert (got >= 0).all()
    ref = reference(metric, *args)
    check_tf32(got, ref, magnitude(metric, *args), 40)


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
    check_tf32(got, reference(metric, *args), magnitude(metric, *args), 48)
    contiguous = run(metric, *args, HIGH)
    assert torch.equal(got, contiguous)  # the same arithmetic, whichever load path


def test_row_stride_not_a_multiple_of_16_bytes():
    """D = 5 contiguous: rows start 20 bytes apart, so no 16-byte loads."""
    args = inputs(70, 66, 5, torch.float32, seed=2)
    for metric in INNER:
        check_tf32(run(metric, *args, HIGH), reference(metric, *args), magnitude(metric, *args), 5)


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
    for metric in ("bhattacharyya", "elk"):
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
