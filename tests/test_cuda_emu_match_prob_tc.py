"""The match probability's forward on TF32 tensor cores (csrc/cuda/match_prob_tc.cu), run by the
emulator's wmma stand-in (docs/design.md, "CUDA tensor cores and the matmul precision", "The match
probability on tensor cores").

Under the matmul precisions high and medium, float32 sample distances come from the GEMM form
|z_a|^2 + |z_b|^2 - 2 <z_a, z_b> on samples rounded to TF32; under highest the direct FP32 kernel
(match_prob.cu) runs, as before. The error bound of the TF32 path, per sample pair (s, t):
  * the kernel takes the norms from the same rounded samples z~ = z + dz, |dz| <= u |z| (u = 2^-11),
    so it computes |z~_a - z~_b|^2, which differs from |z_a - z_b|^2 by
    sum_d 2 (z_a - z_b)(dz_a - dz_b) + (dz_a - dz_b)^2 <= 2 u sum_d |z_a - z_b| (|z_a| + |z_b|)
    + u^2 sum_d (|z_a| + |z_b|)^2 (never more than the 4 u sum_d |z_a z_b| + O(u^2) of a plain
    GEMM form whose norms are exact, where the samples differ little), plus float32 accumulation
    of the three terms, 2e-6 sqrt(D) (|z_a|^2 + |z_b|^2);
  * the distance sqrt(x + 1e-6) moves by at most that over sqrt(x + 1e-6) (|sqrt A - sqrt B| <=
    |A - B| / sqrt A), the squared distance by that itself; the logit by scale times it;
  * log p = logsumexp log sigmoid(l_st) - 2 log J moves by sum_st w_st sigmoid(-l_st) dl_st (w the
    softmax weights), so by at most max_st |dl_st| (log q likewise; the one computed as
    log1p(-exp(.)) of the other moves less), the sigmoid slope scale p (1 - p) for p itself.
The tests check each pair against that bound plus the float32 bound of tests/test_cuda_emu.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from pcmekit import _C, _core
from pcmekit.ops.match_prob import match_prob_op
from pcmekit.reference import match_logprob_naive

from _helpers import HIGH, HIGHEST, MEDIUM, ROUNDING, emulated_cuda_view, rel_err, require_cuda_emulation

require_cuda_emulation()

TF32_UNIT = 2.0**-11
MAX_J = 64  # csrc/cuda/match_prob_tc.h, kMatchTcMaxSamples: larger J runs on the direct kernel

cu = emulated_cuda_view


def cpu(t):
    return None if t is None else _core.matrix_view(t)


def match_inputs(n, m, d, j, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    a_lv = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    b_mu = torch.randn(m, d, generator=g, dtype=torch.float64)
    b_lv = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    eps_a = torch.randn(n * j, d, generator=g, dtype=torch.float64)
    eps_b = torch.randn(m * j, d, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (a_mu, a_lv, b_mu, b_lv, eps_a, eps_b)]


def run(args, j, scale, shift, squared, precision, device="cuda", outs=None):
    view = cu if device == "cuda" else cpu
    if outs is None:
        shape = (args[0].shape[0], args[2].shape[0])
        outs = [torch.full(shape, float("nan"), dtype=args[0].dtype) for _ in range(2)]
    log_p, log_q = outs
    _C.match_prob_forward(
        *[view(t) for t in args], j, scale, shift, squared, view(log_p), view(log_q), 1, 0, precision
    )
    return log_p, log_q


def reference(args, j, scale, shift, squared):
    a_mu, a_lv, b_mu, b_lv, eps_a, eps_b = [t.double() for t in args]
    n, d = a_mu.shape
    m = b_mu.shape[0]
    return match_logprob_naive(
        a_mu, a_lv, b_mu, b_lv, eps_a.reshape(n, j, d), eps_b.reshape(m, j, d), scale, shift, squared
    )


def samples(mu, lv, eps, j):
    mu, lv, eps = mu.double(), lv.double(), eps.double()
    return mu.repeat_interleave(j, 0) + (0.5 * lv).exp().repeat_interleave(j, 0) * eps


def tf32_bound(args, j, scale, squared):
    """[N, M]: the bound on |d log p| and |d log q| of each pair from the TF32 sample GEMM (the
    module docstring's derivation)."""
    a_mu, a_lv, b_mu, b_lv, eps_a, eps_b = args
    n, d = a_mu.shape
    m = b_mu.shape[0]
    za, zb = samples(a_mu, a_lv, eps_a, j), samples(b_mu, b_lv, eps_b, j)
    if n == 0 or m == 0:
        return torch.zeros(n, m, dtype=torch.float64)
    diff = (za[:, None, :] - zb[None, :, :]).abs()
    size = za.abs()[:, None, :] + zb.abs()[None, :, :]
    x = (diff**2).sum(-1)
    err_x = 1.05 * (2 * TF32_UNIT * (diff * size).sum(-1) + TF32_UNIT**2 * (size**2).sum(-1))
    err_x = err_x + 2e-6 * math.sqrt(max(d, 1)) * ((za**2).sum(-1)[:, None] + (zb**2).sum(-1)[None, :])
    err_d = err_x if squared else err_x / (x + 1e-6).sqrt()
    err_l = abs(scale) * err_d
    return err_l.reshape(n, j, m, j).amax(dim=(1, 3))


def float32_tol(ref):
    """tests/test_cuda_emu.py's float32 bound on the match probability (the direct kernel's)."""
    return 2e-5 * max(1.0, ref.abs().max().item()) if ref.numel() else 0.0


def check_tf32(got, ref, bound):
    err = (got.double() - ref).abs()
    assert bool(torch.isfinite(got).all())
    assert bool((err <= bound + float32_tol(ref)).all()), (err - bound).max().item()


SCALES = {False: (2.0, 4.0), True: (0.3, 1.5)}  # (scale, shift): logits across the sigmoid's range

# (N, M, D, J): J = 1 with both sides over a 64-row tile; J = 2 over 32 items; J = 7 (9 items a
# tile, 1 padding row); J = 64 and 33 (one item a tile, G = 32 lanes a pair); D = 1, odd D and
# D over several 16-dimension chunks.
TC_CASES = [
    (1, 1, 1, 1),
    (70, 65, 33, 1),
    (40, 37, 19, 2),
    (20, 23, 17, 7),
    (11, 10, 1, 7),
    (3, 2, 5, MAX_J),
    (2, 3, 24, 33),
]


def case_id(c):
    return "x".join(map(str, c))


@pytest.mark.parametrize("precision", [HIGH, MEDIUM])
@pytest.mark.parametrize("case", TC_CASES, ids=case_id)
@pytest.mark.parametrize("squared", [False, True])
def test_high_is_within_the_tf32_bound(precision, case, squared):
    n, m, d, j = case
    args = match_inputs(n, m, d, j, seed=n + m + d + j)
    scale, shift = SCALES[squared]
    log_p, log_q = run(args, j, scale, shift, squared, precision)
    ref_p, ref_q = reference(args, j, scale, shift, squared)
    bound = tf32_bound(args, j, scale, squared)
    check_tf32(log_p, ref_p, bound)
    check_tf32(log_q, ref_q, bound)
    # The CPU back end ignores the precision (float32 accuracy): within the same bound of it.
    cpu_p, cpu_q = run(args, j, scale, shift, squared, precision, device="cpu")
    check_tf32(log_p, cpu_p.double(), bound + float32_tol(ref_p))
    check_tf32(log_q, cpu_q.double(), bound + float32_tol(ref_q))


@pytest.mark.parametrize("case", TC_CASES + [(4, 3, 0, 3)], ids=case_id)
@pytest.mark.parametrize("squared", [False, True])
def test_highest_keeps_float32_accuracy(case, squared):
    n, m, d, j = case
    args = match_inputs(n, m, d, j, seed=n + m + d + j)
    scale, shift = SCALES[squared]
    log_p, log_q = run(args, j, scale, shift, squared, HIGHEST)
    ref_p, ref_q = reference(args, j, scale, shift, squared)
    assert (log_p.double() - ref_p).abs().max().item() <= float32_tol(ref_p)
    assert (log_q.double() - ref_q).abs().max().item() <= float32_tol(ref_q)
    # highest is the direct kernel of before: the binding's default gives the same bits
    shape = (n, m)
    outs = [torch.full(shape, float("nan")) for _ in range(2)]
    _C.match_prob_forward(*[cu(t) for t in args], j, scale, shift, squared, cu(outs[0]), cu(outs[1]), 1, 0)
    assert torch.equal(outs[0], log_p) and torch.equal(outs[1], log_q)


@pytest.mark.parametrize("squared", [False, True])
def test_high_is_less_accurate_than_highest(squared):
    """Proves which path ran: TF32 samples carry ~2^-11 of relative error, float32 ~2^-24."""
    n, m, d, j = 24, 20, 64, 4
    args = match_inputs(n, m, d, j, seed=5)
    scale, shift = (0.5, 6.0) if not squared else (0.05, 3.0)
    ref_p, ref_q = reference(args, j, scale, shift, squared)
    hp, hq = run(args, j, scale, shift, squared, HIGH)
    fp, fq = run(args, j, scale, shift, squared, HIGHEST)
    for high, highest, ref in ((hp, fp, ref_p), (hq, fq, ref_q)):
        e_high, e_highest = rel_err(high, ref), rel_err(highest, ref)
        assert e_high >= 2.0**-20 and e_high >= 20 * e_highest, (e_high, e_highest)


def test_medium_is_high():
    args = match_inputs(20, 23, 17, 7, seed=3)
    high = run(args, 7, 2.0, 4.0, False, HIGH)
    medium = run(args, 7, 2.0, 4.0, False, MEDIUM)
    assert torch.equal(high[0], medium[0]) and torch.equal(high[1], medium[1])


def test_direct_kernel_where_tensor_cores_do_not_apply():
    """J > 64 and float64 ignore the precision: the direct kernel, the same bits as highest."""
    args = match_inputs(2, 3, 7, MAX_J + 1, seed=8)
    high = run(args, MAX_J + 1, 2.0, 4.0, False, HIGH)
    highest = run(args, MAX_J + 1, 2.0, 4.0, False, HIGHEST)
    assert torch.equal(high[0], highest[0]) and torch.equal(high[1], highest[1])
    args64 = match_inputs(9, 33, 19, 9, dtype=torch.float64, seed=9)
    high = run(args64, 9, 2.0, 4.0, False, HIGH)
    highest = run(args64, 9, 2.0, 4.0, False, HIGHEST)
    assert torch.equal(high[0], highest[0]) and torch.equal(high[1], highest[1])


@pytest.mark.parametrize("nmdj", [(0, 5, 8, 3), (5, 0, 8, 3), (0, 0, 4, 1), (4, 3, 0, 3), (1, 70, 0, 1)],
                         ids=case_id)
def test_empty(nmdj):
    n, m, d, j = nmdj
    args = match_inputs(n, m, d, j, seed=1)
    log_p, log_q = run(args, j, 2.0, 4.0, False, HIGH)
    assert log_p.shape == (n, m)
    ref_p, ref_q = reference(args, j, 2.0, 4.0, False)
    # D = 0: every sample distance is sqrt(1e-6), exact in either path
    assert rel_err(log_p, ref_p) <= 1e-6 and rel_err(log_q, ref_q) <= 1e-6


def test_strided_views_and_repeatability():
    """Transposed inputs, strided noise and transposed outputs give the contiguous run's bits."""
    n, m, d, j = 20, 23, 17, 7
    args = match_inputs(n, m, d, j, seed=21)
    want = run(args, j, 2.0, 4.0, False, HIGH)
    again = run(args, j, 2.0, 4.0, False, HIGH)
    assert torch.equal(want[0], again[0]) and torch.equal(want[1], again[1])
    a_mu, a_lv, b_mu, b_lv, eps_a, eps_b = args
    transposed = [t.t().contiguous().t() for t in (a_mu, a_lv, b_mu, b_lv)]
    wide_a = torch.zeros(n * j, 2 * d)
    wide_a[:, ::2] = eps_a
    wide_b = torch.zeros(2 * m * j, d)
    wide_b[::2] = eps_b
    outs = [torch.full((m, n), float("nan")).t() for _ in range(2)]
    got = run([*transposed, wide_a[:, ::2], wide_b[::2]], j, 2.0, 4.0, False, HIGH, outs=outs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("squared", [False, True])
def test_16bit_inputs(half, squared):
    """The Python layer computes on float32 copies of 16-bit CUDA inputs; the samples are float32
    products, so high follows the TF32 bound and highest keeps float32's."""
    n, m, d, j = 20, 23, 17, 7
    args = [t.to(half).float() for t in match_inputs(n, m, d, j, seed=31)]
    scale, shift = SCALES[squared]
    ref_p, ref_q = reference(args, j, scale, shift, squared)
    log_p, log_q = run(args, j, scale, shift, squared, HIGH)
    bound = tf32_bound(args, j, scale, squared)
    check_tf32(log_p, ref_p, bound)
    check_tf32(log_q, ref_q, bound)
    log_p, log_q = run(args, j, scale, shift, squared, HIGHEST)
    assert (log_p.double() - ref_p).abs().max().item() <= float32_tol(ref_p)
    assert ROUNDING[half] > 0  # inputs rounded to the 16-bit grid, exact in float32


@pytest.mark.parametrize("case", [(3, 17, 5, 7), (9, 33, 19, 9), (40, 37, 19, 2)], ids=case_id)
@pytest.mark.parametrize("squared", [False, True])
def test_backward_after_a_tf32_forward(case, squared):
    """The backward (direct kernel in every mode) fed with the TF32 forward's log p, log q. Its
    weights are sigmoid(l) sigmoid(-l) / S with S = exp(log p + 2 log J) from the forward, so the
    gradient it computes is exactly, up to float32, the float64 autograd gradient with each pair's
    incoming gradient scaled by exp(log p_ref - log p_got) (and likewise for q): checked to the
    float32 bound of tests/test_cuda_emu.py. Against the plain reference it is off by about the
    forward's relative error of S (measured 1.5e-4 .. 2.3e-3 of max|ref| here)."""
    n, m, d, j = case
    args = match_inputs(n, m, d, j, seed=12)
    scale, shift = SCALES[squared]
    g = torch.Generator().manual_seed(13)
    grad_p = torch.randn(n, m, generator=g, dtype=torch.float64).float()
    grad_q = torch.randn(n, m, generator=g, dtype=torch.float64).float()
    log_p, log_q = run(args, j, scale, shift, squared, HIGH)
    outs = [torch.full_like(t, float("nan")) for t in args[:4]]
    gss = torch.full((1, 2), float("nan"))
    _C.match_prob_backward(
        cu(grad_p), cu(grad_q), cu(log_p), cu(log_q), *[cu(t) for t in args], j, scale, shift, squared,
        *[cu(o) for o in outs], cu(gss), 1, 0, HIGH,
    )
    leaves = [t.detach().double().requires_grad_(True) for t in args[:4]]
    sc = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    sh = torch.tensor(shift, dtype=torch.float64, requires_grad=True)
    ref_p, ref_q = reference([*leaves, args[4], args[5]], j, sc, sh, squared)
    gp = grad_p.double() * (ref_p.detach() - log_p.double()).exp()
    gq = grad_q.double() * (ref_q.detach() - log_q.double()).exp()
    ref = torch.autograd.grad((ref_p * gp).sum() + (ref_q * gq).sum(), [*leaves, sc, sh])
    for name, got, want in zip(("a_mean", "a_logvar", "b_mean", "b_logvar"), outs, ref[:4]):
        assert rel_err(got, want) <= 5e-5, name
    assert rel_err(gss, torch.stack([ref[4], ref[5]]).reshape(1, 2)) <= 5e-5


@pytest.mark.parametrize("code", [3, -1, 100])
def test_bad_precision_code(code):
    args = match_inputs(3, 4, 5, 2, seed=2)
    with pytest.raises(ValueError, match=f"matmul precision code {code}"):
        run(args, 2, 2.0, 4.0, False, code)
    with pytest.raises(ValueError, match=f"matmul precision code {code}"):
        run(args, 2, 2.0, 4.0, False, code, device="cpu")
    log_p, log_q = run(args, 2, 2.0, 4.0, False, HIGHEST, device="cpu")
    grads = [torch.empty_like(t) for t in args[:4]]
    with pytest.raises(ValueError, match=f"matmul precision code {code}"):
        _C.match_prob_backward(
            cu(log_p), None, cu(log_p), cu(log_q), *[cu(t) for t in args], 2, 2.0, 4.0, False,
            *[cu(o) for o in grads], None, 1, 0, code,
        )


def test_python_layer_passes_the_precision_when_the_op_runs(monkeypatch):
    """ops/match_prob.py reads the code at each call (a code the core refuses reaches it) and the
    CPU back end ignores a valid one."""
    n, m, d, j = 3, 4, 5, 2
    a_mu, a_lv, b_mu, b_lv, eps_a, eps_b = match_inputs(n, m, d, j, seed=4)
    eps_a, eps_b = eps_a.reshape(n, j, d), eps_b.reshape(m, j, d)
    call = lambda: match_prob_op(  # noqa: E731
        a_mu, a_lv, b_mu, b_lv, eps_a, eps_b, torch.tensor(2.0), torch.tensor(4.0), False
    )
    before = call()
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert _core.matmul_precision_code() == HIGH
        high = call()
    finally:
        torch.set_float32_matmul_precision(old)
    assert torch.equal(before[0], high[0]) and torch.equal(before[1], high[1])
    monkeypatch.setattr(_core, "matmul_precision_code", lambda: 7)
    with pytest.raises(ValueError, match="matmul precision code 7"):
        call()
