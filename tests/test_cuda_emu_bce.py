"""The CUDA BCE (csrc/cuda/bce.cu and the fused epilogue of csrc/cuda/pairwise_tc.cu), run by the
emulator (tests/cuemu, docs/design.md "CUDA emulator").

Same skip logic as tests/test_cuda_emu.py: only the emulation build runs these, and with
PCMEKIT_REQUIRE_CUEMU=1 a missing emulation build is an error. The core is called directly with
views labelled CUDA (``_C.distance_bce`` / ``_C.pairwise_bce`` with a ``sums`` view), so every
launch goes through the real dispatch.

Tolerances (docs/design.md, "Tolerances", where each is justified):
  * the loss and the two scalar gradients are sums over N M terms; their error is measured
    against the sum of the terms' magnitudes (``w * sum |term|``, ``w * sum |q|``,
    ``w * sum |q d|``), which is what rounding scales with: float64 1e-12, float32 and 16-bit
    distances (computed in float32) 1e-6;
  * the gradient w.r.t. the distance, element by element against max|ref|: float64 1e-12,
    float32 1e-6, 16-bit gradients their format's rounding (2^-11, 2^-8) on top;
  * against the CPU back end (float32, float64), the same bounds;
  * the fused pairwise form: its gradient bit for bit what the distance kernel plus the BCE pass
    give at the same precision, its sums to 1e-12 of theirs (the same terms, added in another
    fixed order); against the float64 reference end to end, the distances' own error carried
    through (s * |dq/dd| <= s / 4 per unit of distance);
  * determinism: two runs give the same bits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pcmekit
from pcmekit import _C, _core
from pcmekit.reference import pairwise_distance_naive

from _helpers import (
    HIGH,
    HIGHEST,
    INNER,
    METRIC_CODE,
    ROUNDING,
    emulated_cuda_view,
    gaussians,
    rel_err,
    require_cuda_emulation,
)

require_cuda_emulation()

SUMS_ROWS = pcmekit.build_info()["cuda_bce_sums_rows"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

cu = emulated_cuda_view


def cpu(t):
    return _core.matrix_view(t)


def tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_sums() -> torch.Tensor:
    return torch.full((SUMS_ROWS, 3), float("nan"), dtype=torch.float64)


def distances(n, m, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, m, generator=g, dtype=torch.float64) * 3).to(dtype)


def soft_target(n, m, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g, dtype=torch.float64).to(dtype)


def run_cuda(d, target, scale, shift, mean, grad=None):
    """(loss, grad_scale, grad_shift) from row 0 of the sums, and the gradient."""
    if grad is None:
        grad = torch.full(d.shape, float("nan"), dtype=d.dtype)
    sums = new_sums()
    out = _C.distance_bce(cu(d), cu(target), cu(grad), scale, shift, mean, 1, 0, cu(sums))
    assert out == (0.0, 0.0, 0.0)  # on CUDA the results are in `sums`
    return sums[0].clone(), grad


def run_cpu(d, target, scale, shift, mean):
    grad = torch.full(d.shape, float("nan"), dtype=d.dtype)
    loss, g_scale, g_shift = _C.distance_bce(cpu(d), cpu(target), cpu(grad), scale, shift, mean, 1)
    return torch.tensor([loss, g_scale, g_shift], dtype=torch.float64), grad


def reference(d, target, scale, shift, mean):
    """float64 composite on the distances as given (16-bit ones exactly), with the scale and
    shift rounded as the kernel rounds them. Returns (loss, grad_scale, grad_shift), the gradient
    w.r.t. the distance, and the magnitudes (w sum |term|, w sum |q d|, w sum |q|) the scalar
    errors are measured against."""
    c = compute_dtype(d.dtype)
    s = torch.tensor(torch.tensor(scale, dtype=c).item(), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(torch.tensor(shift, dtype=c).item(), dtype=torch.float64, requires_grad=True)
    dd = d.detach().double().clone().requires_grad_()
    y = torch.eye(*d.shape, dtype=torch.float64) if target is None else target.double()
    x = -s * dd + t
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="mean" if mean else "sum")
    loss.backward()
    w = 1.0 / max(d.numel(), 1) if mean else 1.0
    with torch.no_grad():
        terms = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        q = torch.sigmoid(x) - y
        mags = [w * terms.abs().sum().item(), w * (q * dd).abs().sum().item(), w * q.abs().sum().item()]
    scalars = torch.tensor([loss.item(), s.grad.item(), t.grad.item()], dtype=torch.float64)
    return scalars, dd.grad, mags


def check_scalars(got, ref, mags, bound, label):
    for k, name in enumerate(("loss", "grad_scale", "grad_shift")):
        err = abs(got[k].item() - ref[k].item())
        assert err <= bound * mags[k] + 1e-300, f"{label} {name}: {got[k].item()!r} vs {ref[k].item()!r} ({err:.3g})"


# ---------------------------------------------------------------------------------------------
# distance_bce: the pass over a distance matrix


SHAPES = [(1, 1), (3, 17), (17, 3), (33, 33), (257, 40), (1030, 9), (65, 130)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("soft", [False, True], ids=["identity", "soft-target"])
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
def test_distance_bce_against_float64(dtype, shape, soft, mean):
    d = distances(*shape, dtype)
    target = soft_target(*shape, dtype) if soft else None
    got, grad = run_cuda(d, target, 4.5, 5.5, mean)
    ref, ref_grad, mags = reference(d, target, 4.5, 5.5, mean)
    check_scalars(got, ref, mags, tol(dtype), f"{dtype} {shape}")
    assert grad.dtype == dtype
    bound = tol(dtype) + ROUNDING.get(dtype, 0.0)
    assert rel_err(grad, ref_grad) <= bound, f"{dtype} {shape} grad: {rel_err(grad, ref_grad):.3g}"
    if dtype in (torch.float32, torch.float64):
        on_cpu, cpu_grad = run_cpu(d, target, 4.5, 5.5, mean)
        check_scalars(got, on_cpu, mags, tol(dtype), f"{dtype} {shape} vs CPU")
        assert rel_err(grad, cpu_grad) <= tol(dtype), f"vs CPU grad: {rel_err(grad, cpu_grad):.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_distance_bce_extreme_logits(dtype):
    """Logits far below -87 (sigmoid 0 there, as the CPU kernel holds it) and far above 0."""
    d = torch.tensor([[0.0, 0.5, 10.0, 40.0], [60.0, 100.0, 0.25, 1.0]], dtype=torch.float64).to(dtype)
    target = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64).to(dtype)
    for mean in (False, True):
        got, grad = run_cuda(d, target, 3.0, 2.0, mean)
        ref, ref_grad, mags = reference(d, target, 3.0, 2.0, mean)
        check_scalars(got, ref, mags, tol(dtype), str(dtype))
        assert rel_err(grad, ref_grad) <= tol(dtype) + ROUNDING.get(dtype, 0.0)
        if dtype == torch.float32:
            # The mean's weight 1/8 would make the held exp(-87) subnormal once scaled: the CPU
            # kernel's reason for sigmoid = 0 there (a subnormal gradient slows its backward).
            assert not torch.any((grad != 0) & (grad.abs() < torch.finfo(torch.float32).tiny)), "subnormal"


def test_distance_bce_non_contiguous_and_in_place():
    base = distances(70, 90, torch.float32, seed=4)
    d = base.t()  # [90, 70], transposed storage
    target = soft_target(180, 70, torch.float32)[::2]  # every other row
    assert not d.is_contiguous() and not target.is_contiguous()
    for mean in (True, False):
        ref, ref_grad, mags = reference(d, target, 2.0, 1.0, mean)
        got, grad = run_cuda(d, target, 2.0, 1.0, mean)
        check_scalars(got, ref, mags, tol(torch.float32), "strided")
        assert rel_err(grad, ref_grad) <= tol(torch.float32)
    # grad == distance (the same view): overwritten with its gradient, as on the CPU.
    buffer = distances(33, 47, torch.float32, seed=5)
    ref, ref_grad, mags = reference(buffer.clone(), None, 5.0, 5.0, True)
    got, _ = run_cuda(buffer, None, 5.0, 5.0, True, grad=buffer)
    check_scalars(got, ref, mags, tol(torch.float32), "in place")
    assert rel_err(buffer, ref_grad) <= tol(torch.float32)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_distance_bce_empty(shape, dtype):
    d = torch.zeros(shape, dtype=dtype)
    got, _ = run_cuda(d, None, 5.0, 5.0, True)
    assert math.isnan(got[0].item()) and got[1].item() == 0.0 and got[2].item() == 0.0
    got, _ = run_cuda(d, None, 5.0, 5.0, False)
    assert got.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_distance_bce_is_deterministic(dtype):
    """Two runs, the same bits: the per-block partials and their final sum have a fixed order
    (the emulator runs the threads of each run in another shuffled order)."""
    d = distances(300, 257, dtype, seed=6)
    target = soft_target(300, 257, dtype)
    first, g1 = run_cuda(d, target, 4.0, 3.0, True)
    second, g2 = run_cuda(d, target, 4.0, 3.0, True)
    assert torch.equal(first, second) and torch.equal(g1, g2)


def test_distance_bce_more_elements_than_the_grid():
    """N M above kBceMaxPartials blocks of 256 x 8 elements: the grid-stride loop wraps."""
    n, m = 1500, 1450  # 2.18M elements > 2048 * 256 * 4 ... and the grid is capped
    d = distances(n, m, torch.float32, seed=7)
    got, grad = run_cuda(d, None, 5.0, 5.0, True)
    ref, ref_grad, mags = reference(d, None, 5.0, 5.0, True)
    check_scalars(got, ref, mags, tol(torch.float32), "large")
    assert rel_err(grad, ref_grad) <= tol(torch.float32)


def test_distance_bce_refuses_bad_views():
    d = distances(4, 5, torch.float32)
    grad = torch.empty_like(d)
    with pytest.raises(ValueError, match="sums must have shape"):
        _C.distance_bce(cu(d), None, cu(grad), 1.0, 0.0, True, 1, 0, cu(torch.zeros(3, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="sums is missing"):
        _C.distance_bce(cu(d), None, cu(grad), 1.0, 0.0, True, 1, 0, None)
    with pytest.raises(TypeError, match="sums must have dtype float64"):
        _C.distance_bce(cu(d), None, cu(grad), 1.0, 0.0, True, 1, 0, cu(torch.zeros(SUMS_ROWS, 3)))
    with pytest.raises(TypeError, match="CUDA only"):
        h = d.half()
        _C.distance_bce(cpu(h), None, cpu(torch.empty_like(h)), 1.0, 0.0, True, 1)
    with pytest.raises(ValueError, match="scale must be finite"):
        _C.distance_bce(cu(d), None, cu(grad), float("inf"), 0.0, True, 1, 0, cu(new_sums()))


# ---------------------------------------------------------------------------------------------
# pairwise_bce: the distance kernel and the BCE in one call (fused on the tensor-core engine)


def gauss(n, m, d, dtype, seed=0):
    a_mu, a_lv = gaussians(n, d, seed=seed)
    b_mu, b_lv = gaussians(m, d, seed=seed + 1)
    return [t.to(dtype) for t in (a_mu, a_lv, b_mu, b_lv)]


def run_pairwise_bce(metric, args, target, scale, shift, mean, precision, device="cuda"):
    a_mu, a_lv, b_mu, b_lv = args
    view = cu if device == "cuda" else cpu
    lv = (lambda t: None) if metric == "l2" else view
    out = torch.full((a_mu.shape[0], b_mu.shape[0]), float("nan"), dtype=compute_dtype(a_mu.dtype))
    if device == "cpu":
        r = _C.pairwise_bce(METRIC_CODE[metric], view(a_mu), lv(a_lv), view(b_mu), lv(b_lv), view(out),
                            view(target), scale, shift, mean, 1)
        return torch.tensor(r, dtype=torch.float64), out
    sums = new_sums()
    _C.pairwise_bce(METRIC_CODE[metric], view(a_mu), lv(a_lv), view(b_mu), lv(b_lv), view(out), view(target),
                    scale, shift, mean, 1, 0, precision, view(sums))
    return sums[0].clone(), out


def run_unfused(metric, args, target, scale, shift, mean, precision):
    """The distance kernel, then the BCE pass over its output, at the same precision."""
    a_mu, a_lv, b_mu, b_lv = args
    lv = (lambda t: None) if metric == "l2" else cu
    out = torch.full((a_mu.shape[0], b_mu.shape[0]), float("nan"), dtype=compute_dtype(a_mu.dtype))
    _C.pairwise_forward(METRIC_CODE[metric], cu(a_mu), lv(a_lv), cu(b_mu), lv(b_lv), cu(out), 1, 0, precision)
    distance = out.clone()
    sums, grad = run_cuda(out, target, scale, shift, mean, grad=out)
    return sums, grad, distance


def logit_params(ref_d: torch.Tensor):
    """scale and shift (float32 numbers) that put the logits of these distances around N(0, 2^2),
    where the BCE's gradient is neither saturated at 0 nor at -y."""
    if ref_d.numel() < 2:
        return 0.7, 2.0
    scale = 2.0 / max(ref_d.std().item(), 1e-3)
    shift = scale * ref_d.mean().item()
    return torch.tensor(scale).item(), torch.tensor(shift).item()


PAIR_SHAPES = [(1, 1, 1), (3, 17, 5), (65, 70, 33), (130, 67, 40), (7, 5, 0)]


@pytest.mark.parametrize("metric", INNER + ["bhattacharyya"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precision", [HIGHEST, HIGH])
@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pairwise_bce_fused_equals_unfused(metric, dtype, precision, shape):
    """Where the tensor-core engine runs (csd/w2/l2/kl under high, 16-bit csd/l2 always) the BCE
    is in its epilogue; elsewhere the call is the distance kernel plus the pass. Either way the
    gradient is what the two separate kernels give, bit for bit."""
    n, m, d = shape
    args = gauss(n, m, d, dtype, seed=11)
    target = soft_target(n, m, compute_dtype(dtype)) if n % 2 else None
    scale, shift = logit_params(pairwise_distance_naive(*[t.double() for t in args], metric))
    fused, grad = run_pairwise_bce(metric, args, target, scale, shift, True, precision)
    unfused, unfused_grad, distance = run_unfused(metric, args, target, scale, shift, True, precision)
    assert torch.equal(grad, unfused_grad), f"max diff {(grad - unfused_grad).abs().max().item():.3g}"
    _, _, mags = reference(distance, target, scale, shift, True)
    check_scalars(fused, unfused, mags, 1e-12, "fused vs unfused")


@pytest.mark.parametrize("metric", INNER)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precision", [HIGHEST, HIGH])
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
def test_pairwise_bce_against_float64(metric, dtype, precision, mean):
    """End to end against the float64 reference: the BCE of the exact distances. The distance
    error e (its own test's bound: 2e-6 sqrt(D) of max d for float32 accuracy, 2^-9 of max d
    under TF32) moves each logit by s e, so the scalars by at most s e times their weight (the
    loss by w sum |q| s e, grad_shift by w N M s e / 4, grad_scale by w sum (|q| + |d| / 4) s e),
    and each gradient entry by s^2 w e / 4."""
    n, m, dim = 65, 70, 33
    args = gauss(n, m, dim, dtype, seed=13)
    target = soft_target(n, m, compute_dtype(dtype)) if mean else None
    ref_d = pairwise_distance_naive(*[t.double() for t in args], metric)
    scale, shift = logit_params(ref_d)
    got, grad = run_pairwise_bce(metric, args, target, scale, shift, mean, precision)
    ref, ref_grad, mags = reference(ref_d, target, scale, shift, mean)
    tf32 = precision == HIGH and (dtype == torch.float32 or metric in ("w2", "kl"))
    e = (2.0**-9 if tf32 else 2e-6 * math.sqrt(dim)) * ref_d.abs().max().item()
    if dtype == torch.float64:
        e = 1e-12 * ref_d.abs().max().item()
    w = 1.0 / (n * m) if mean else 1.0
    with torch.no_grad():
        y = torch.eye(n, m, dtype=torch.float64) if target is None else target.double()
        q = (torch.sigmoid(-scale * ref_d + shift) - y).abs()
        carried = [w * q.sum().item() * scale * e,
                   w * (q + ref_d.abs() / 4).sum().item() * scale * e,
                   w * n * m * scale * e / 4]
    b = tol(dtype)
    for k, name in enumerate(("loss", "grad_scale", "grad_shift")):
        err = abs(got[k].item() - ref[k].item())
        assert err <= b * mags[k] + carried[k], f"{metric} {dtype} p{precision} {name}: {err:.3g}"
    grad_err = (grad.double() - ref_grad).abs().max().item()
    assert grad_err <= b * ref_grad.abs().max().item() + scale * scale * w * e / 4, grad_err


@pytest.mark.parametrize("metric", ["csd", "l2"])
def test_pairwise_bce_matches_cpu_backend(metric):
    args = gauss(45, 80, 40, torch.float32, seed=14)
    target = soft_target(45, 80, torch.float32)
    ref_d = pairwise_distance_naive(*[t.double() for t in args], metric)
    scale, shift = logit_params(ref_d)
    got, grad = run_pairwise_bce(metric, args, target, scale, shift, False, HIGHEST)
    on_cpu, cpu_grad = run_pairwise_bce(metric, args, target, scale, shift, False, HIGHEST, device="cpu")
    _, _, mags = reference(ref_d, target, scale, shift, False)
    # Both distances are within 2e-6 sqrt(D) max d of the truth; 1e-5 covers that and the BCE.
    check_scalars(got, on_cpu, mags, 1e-5, f"{metric} vs CPU")
    assert rel_err(grad, cpu_grad) <= 1e-5


@pytest.mark.parametrize("metric", ["csd", "kl"])
def test_pairwise_bce_high_differs_from_highest(metric):
    """The precision reaches the fused path: TF32 distances give other gradients than FP32."""
    args = gauss(40, 70, 64, torch.float32, seed=15)
    ref_d = pairwise_distance_naive(*[t.double() for t in args], metric)
    scale, shift = logit_params(ref_d)
    _, highest = run_pairwise_bce(metric, args, None, scale, shift, True, HIGHEST)
    _, high = run_pairwise_bce(metric, args, None, scale, shift, True, HIGH)
    _, ref_grad, _ = reference(ref_d, None, scale, shift, True)
    err_highest, err_high = rel_err(highest, ref_grad), rel_err(high, ref_grad)
    assert err_high > 20 * err_highest and err_high > 2.0**-20, (err_high, err_highest)


def test_pairwise_bce_deterministic_and_strided():
    """The fused path twice: the same bits; strided (transposed) inputs and target."""
    a_mu, a_lv, b_mu, b_lv = gauss(130, 150, 24, torch.float32, seed=16)
    args = [a_mu.t().contiguous().t(), a_lv.t().contiguous().t(), b_mu, b_lv]
    target = soft_target(150, 130, torch.float32).t()
    assert not args[0].is_contiguous() and not target.is_contiguous()
    first, g1 = run_pairwise_bce("csd", args, target, 0.6, 1.0, True, HIGH)
    second, g2 = run_pairwise_bce("csd", args, target, 0.6, 1.0, True, HIGH)
    assert torch.equal(first, second) and torch.equal(g1, g2)
    unfused, unfused_grad, _ = run_unfused("csd", args, target.contiguous(), 0.6, 1.0, True, HIGH)
    assert torch.equal(g1, unfused_grad)


def test_pairwise_bce_more_tiles_than_the_grid():
    """More 64 x 64 tiles than kBceMaxPartials blocks: each block sums several tiles."""
    args = gauss(46 * 64 + 3, 46 * 64, 3, torch.float16, seed=17)  # 47 x 46 = 2162 tiles
    got, grad = run_pairwise_bce("l2", args, None, 0.4, 2.0, True, HIGHEST)
    unfused, unfused_grad, distance = run_unfused("l2", args, None, 0.4, 2.0, True, HIGHEST)
    assert torch.equal(grad, unfused_grad)
    _, _, mags = reference(distance, None, 0.4, 2.0, True)
    check_scalars(got, unfused, mags, 1e-12, "many tiles")


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3)])
def test_pairwise_bce_empty(shape):
    n, m, d = shape
    args = gauss(n, m, d, torch.float32)
    got, _ = run_pairwise_bce("csd", args, None, 1.0, 0.0, True, HIGH)
    assert math.isnan(got[0].item()) and got[1].item() == 0.0 and got[2].item() == 0.0
    got, _ = run_pairwise_bce("csd", args, None, 1.0, 0.0, False, HIGH)
    assert got.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# The Python layer's CUDA branch (ops/bce.py), run on CPU tensors whose views are labelled CUDA


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_python_cuda_branch_of_distance_bce(monkeypatch, dtype):
    """_bce_cuda as the custom op calls it for CUDA tensors: the outputs' dtypes and values (the
    fake's contract) and the results read from the device sums."""
    from pcmekit.ops import bce as bce_op

    monkeypatch.setattr(bce_op, "matrix_view", cu)
    d = distances(37, 29, dtype, seed=20)
    target = soft_target(37, 29, dtype)
    c = compute_dtype(dtype)
    s, t = torch.tensor(4.0, dtype=c), torch.tensor(6.0, dtype=c)
    loss, grad, g_scale, g_shift = bce_op._bce_cuda(d, target, torch.empty_like(d), s, t, True)
    assert (loss.dtype, grad.dtype, g_scale.dtype, g_shift.dtype) == (c, dtype, c, c)
    assert loss.shape == () and g_scale.shape == () and g_shift.shape == ()
    ref, ref_grad, mags = reference(d, target, 4.0, 6.0, True)
    check_scalars(torch.stack([loss, g_scale, g_shift]).double(), ref, mags,
                  tol(dtype) + (2.0**-24 if c == torch.float32 else 0.0), "python branch")
    assert rel_err(grad, ref_grad) <= tol(dtype) + ROUNDING.get(dtype, 0.0)


@pytest.mark.parametrize("metric,dtype,precision", [("csd", torch.float32, HIGH), ("l2", torch.float16, HIGHEST),
                                                    ("kl", torch.float32, HIGHEST)])
def test_python_cuda_branch_of_pairwise_bce(monkeypatch, metric, dtype, precision):
    from pcmekit.ops import bce as bce_op

    monkeypatch.setattr(bce_op, "matrix_view", cu)
    monkeypatch.setattr(bce_op._core, "matmul_precision_code", lambda: precision)
    args = gauss(40, 33, 17, dtype, seed=21)
    lv = (None, None) if metric == "l2" else (args[1], args[3])
    s, t = torch.tensor(0.3), torch.tensor(1.0)
    loss, grad, g_scale, g_shift = bce_op._pairwise_bce_cuda(args[0], lv[0], args[2], lv[1], None, s, t, metric, False)
    assert (loss.dtype, grad.dtype) == (torch.float32, torch.float32)
    want, want_grad = run_pairwise_bce(metric, args, None, 0.3, 1.0, False, precision)
    assert torch.equal(grad, want_grad)
    assert torch.equal(torch.stack([loss, g_scale, g_shift]), want.float())
