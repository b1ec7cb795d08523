"""pcmekit.match_prob / match_logprob against the pure-PyTorch oracle (pcmekit.reference_match)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pcmekit
from pcmekit.reference_match import match_logprob_fast, match_logprob_naive

from _helpers import gaussians, run_under_capabilities

SIZES = [(1, 1, 1, 1), (3, 5, 4, 1), (5, 7, 17, 7), (17, 3, 8, 3), (9, 11, 33, 2), (2, 3, 5, 9)]
SCALE, SHIFT = 1.7, 2.5


def problem(n, m, d, j, *, dtype=torch.float64, device="cpu", seed=0):
    """Means, log-variances and noise; spread so that p covers (0.001, 0.999)."""
    a_mean, a_logvar = gaussians(n, d, dtype=dtype, device=device, seed=seed, spread=0.5)
    b_mean, b_logvar = gaussians(m, d, dtype=dtype, device=device, seed=seed + 1, spread=0.5)
    g = torch.Generator().manual_seed(seed + 2)
    eps_a = torch.randn(n, j, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    eps_b = torch.randn(m, j, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b


def ours(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale=SCALE, shift=SHIFT, squared=False):
    return pcmekit.match_logprob(a_mean, a_logvar, b_mean, b_logvar, scale=scale, shift=shift,
                                 num_samples=eps_a.shape[1], eps_a=eps_a, eps_b=eps_b, squared=squared)


def oracle(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b, scale=SCALE, shift=SHIFT, squared=False):
    f64 = [t.detach().double().cpu() for t in (a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b)]
    return match_logprob_naive(*f64, scale, shift, squared)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("n,m,d,j", SIZES)
def test_forward_float64_matches_oracle(n, m, d, j, squared, device):
    inputs = problem(n, m, d, j, device=device, seed=n + m)
    log_p, log_q = ours(*inputs, squared=squared)
    assert log_p.shape == (n, m) and log_p.dtype == torch.float64 and log_p.device.type == device
    ref_p, ref_q = oracle(*inputs, squared=squared)
    torch.testing.assert_close(log_p.cpu(), ref_p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_q.cpu(), ref_q, rtol=1e-10, atol=1e-10)


def test_many_tiles_and_thread_counts():
    # Enough items for several tiles per side, with 1, 2 and 3 threads (different blockings and,
    # in the backward pass, different Latin-square schedules).
    inputs = problem(151, 230, 19, 3, seed=3)
    ref_p, ref_q = oracle(*inputs)
    weights = torch.randn(2, 151, 230, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref_leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    rp, rq = match_logprob_naive(*ref_leaves, *inputs[4:], SCALE, SHIFT)
    (rp * weights[0] + rq * weights[1]).sum().backward()
    try:
        for threads in (1, 2, 3):
            pcmekit.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in inputs[:4]]
            log_p, log_q = ours(*leaves, *inputs[4:])
            torch.testing.assert_close(log_p, ref_p, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(log_q, ref_q, rtol=1e-10, atol=1e-10)
            (log_p * weights[0] + log_q * weights[1]).sum().backward()
            for mine, theirs in zip(leaves, ref_leaves):
                torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-10)
    finally:
        pcmekit.set_num_threads(None)


def test_forward_float32_error_within_policy(device):
    # Policy: float32 error vs the float64 oracle at most twice that of PyTorch's own fastest
    # float32 form (plus a floor for results both get essentially exact).
    inputs64 = problem(40, 50, 67, 5, device=device, seed=5)
    inputs32 = [t.float() for t in inputs64]
    truth = oracle(*inputs64)
    mine = ours(*inputs32)
    theirs = match_logprob_fast(*[t.cpu() for t in inputs32], SCALE, SHIFT)
    for k in range(2):
        assert mine[k].dtype == torch.float32
        our_err = (mine[k].double().cpu() - truth[k]).abs().max().item()
        torch_err = (theirs[k].double() - truth[k]).abs().max().item()
        assert our_err <= 2 * torch_err + 1e-6, (k, our_err, torch_err)


@pytest.mark.parametrize("squared", [False, True])
def test_gradcheck_float64(squared, device):
    inputs = problem(3, 4, 5, 3, device=device, seed=7)
    leaves = [t.requires_grad_() for t in inputs[:4]]
    scale = torch.tensor(0.8, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)

    def fn(am, al, bm, bl, sc, sh):
        return pcmekit.match_logprob(am, al, bm, bl, scale=sc, shift=sh, num_samples=3,
                                     eps_a=inputs[4], eps_b=inputs[5], squared=squared)

    # (CUDA accumulates with atomics: the summation order, hence the last bits, may vary.)
    assert torch.autograd.gradcheck(fn, (*leaves, scale, shift), eps=1e-6, atol=1e-6, nondet_tol=1e-12)


@pytest.mark.parametrize("n,m,d,j", [(33, 29, 17, 7), (1, 40, 5, 1), (60, 1, 9, 4)])
def test_backward_matches_oracle(n, m, d, j, device):
    inputs = problem(n, m, d, j, device=device, seed=11)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(n, m, dtype=torch.float64, generator=g) for _ in range(2)]
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    scale = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.tensor(SHIFT, dtype=torch.float64, device=device, requires_grad=True)
    log_p, log_q = ours(*leaves, *inputs[4:], scale=scale, shift=shift)
    ((log_p.cpu() * weights[0]).sum() + (log_q.cpu() * weights[1]).sum()).backward()
    ref = [t.detach().cpu().clone().requires_grad_() for t in inputs[:4]]
    ref_scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    ref_shift = torch.tensor(SHIFT, dtype=torch.float64, requires_grad=True)
    rp, rq = match_logprob_naive(*ref, *[t.cpu() for t in inputs[4:]], ref_scale, ref_shift)
    ((rp * weights[0]).sum() + (rq * weights[1]).sum()).backward()
    for mine, theirs in zip([*leaves, scale, shift], [*ref, ref_scale, ref_shift]):
        torch.testing.assert_close(mine.grad.cpu(), theirs.grad, rtol=1e-9, atol=1e-10)


def test_only_requested_gradients():
    inputs = problem(6, 4, 3, 2, seed=2)
    b_logvar = inputs[3].clone().requires_grad_()
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    log_p, _ = pcmekit.match_logprob(inputs[0], inputs[1], inputs[2], b_logvar, scale=scale, shift=SHIFT,
                                     num_samples=2, eps_a=inputs[4], eps_b=inputs[5])
    log_p.sum().backward()
    ref_lv = inputs[3].clone().requires_grad_()
    ref_scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    rp, _ = match_logprob_naive(inputs[0], inputs[1], inputs[2], ref_lv, inputs[4], inputs[5], ref_scale, SHIFT)
    rp.sum().backward()
    torch.testing.assert_close(b_logvar.grad, ref_lv.grad)
    torch.testing.assert_close(scale.grad, ref_scale.grad)


def _extreme(separation, logvar, dtype):
    """Two query/gallery pairs with means `separation` apart along dim 0, variance exp(logvar)."""
    g = torch.Generator().manual_seed(42)
    a_mean = torch.randn(2, 4, generator=g, dtype=torch.float64) * 0.1
    b_mean = a_mean.clone()
    b_mean[:, 0] += separation
    a_logvar = torch.full((2, 4), logvar, dtype=torch.float64)
    eps_a = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    eps_b = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    inputs = (a_mean, a_logvar, b_mean, a_logvar.clone(), eps_a, eps_b)
    return inputs, tuple(t.to(dtype) for t in inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "case,separation,logvar,scale,shift",
    [
        ("p~1e-30", 10.0, -8.0, 7.0, 0.0),          # log p ~ -70: representable, tiny
        ("p~1e-52", 10.0, -8.0, 12.0, 0.0),         # below float32's range, still on the fast path
        ("p~exp(-200)", 10.0, -8.0, 20.0, 0.0),     # underflows float32 and every sigmoid: exact path
        ("1-p~1e-9", 0.0, -20.0, 1.0, 21.0),        # coinciding points, large shift
        ("1-p~exp(-200)", 0.0, -20.0, 1.0, 200.0),  # 1 - p underflows: exact path
    ],
)
def test_log_space_at_extreme_probabilities(case, separation, logvar, scale, shift, dtype, device):
    exact, inputs = _extreme(separation, logvar, dtype)
    inputs = [t.to(device) for t in inputs]
    log_p, log_q = ours(*inputs, scale=scale, shift=shift)
    assert torch.isfinite(log_p).all() and torch.isfinite(log_q).all(), case
    ref_p, ref_q = oracle(*exact, scale=scale, shift=shift)
    # The small side against the oracle; the large side as log(1 - small), which the oracle's
    # log-sum-exp of near-zero terms cannot resolve (it returns ~0).
    small_is_p = ref_p.max() < math.log(0.5)
    small_ref = ref_p if small_is_p else ref_q
    large_ref = torch.log1p(-torch.exp(small_ref))
    small, large = (log_p, log_q) if small_is_p else (log_q, log_p)
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(small.double().cpu(), small_ref, rtol=rtol, atol=0)
    tiny = torch.finfo(dtype).tiny
    torch.testing.assert_close(large.double().cpu(), large_ref, rtol=1e-4, atol=tiny)
    assert (large <= 0).all() and (small < 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_and_exact_paths_mixed_in_one_row(dtype):
    # Gallery items at distances 0.5 .. 20 from each query with scale 15: log p from ~-7 down to
    # ~-300, so one row mixes pairs on the fast path with pairs recomputed in log space.
    g = torch.Generator().manual_seed(7)
    n, m, d, j = 3, 41, 6, 4
    a_mean = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    b_mean = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.1
    b_mean[:, 0] += torch.linspace(0.5, 20.0, m, dtype=torch.float64)
    a_logvar = torch.full((n, d), -6.0, dtype=torch.float64)
    b_logvar = torch.full((m, d), -6.0, dtype=torch.float64)
    eps_a = torch.randn(n, j, d, generator=g, dtype=torch.float64)
    eps_b = torch.randn(m, j, d, generator=g, dtype=torch.float64)
    exact = (a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b)
    log_p, log_q = ours(*[t.to(dtype) for t in exact], scale=15.0, shift=0.0)
    ref_p, _ = oracle(*exact, scale=15.0, shift=0.0)
    assert ref_p.min() < -250 and ref_p.max() > -10
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(log_p.double(), ref_p, rtol=rtol, atol=0)
    torch.testing.assert_close(log_q.double(), torch.log1p(-ref_p.exp()), rtol=1e-4, atol=torch.finfo(dtype).tiny)


# One process per SIMD path (PCMEKIT_CPU_CAPABILITY is read once per process): the row passes are
# compiled per instruction set, so each copy is checked against the float64 oracle, forward and
# backward, in float64 and float32, with pairs on both the fast and the log-space path.
_SIMD_SCRIPT = """
import json, torch, pcmekit
from pcmekit.reference_match import match_logprob_fast, match_logprob_naive
g = torch.Generator().manual_seed(3)
n, m, d, j = 23, 37, 19, 3
x64 = [torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5,
       torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1.0,
       torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5,
       torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5 - 1.0,
       torch.randn(n, j, d, generator=g, dtype=torch.float64),
       torch.randn(m, j, d, generator=g, dtype=torch.float64)]
w = torch.randn(2, n, m, generator=g, dtype=torch.float64)
def run(inputs, fn, scale, shift):
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    lp, lq = fn(*leaves, *inputs[4:], scale, shift)
    (lp.double() * w[0] + lq.double() * w[1]).sum().backward()
    return lp.double().detach(), lq.double().detach(), [t.grad.double() for t in leaves]
def ours(am, al, bm, bl, ea, eb, scale, shift):
    return pcmekit.match_logprob(am, al, bm, bl, scale=scale, shift=shift, num_samples=j, eps_a=ea, eps_b=eb)
def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
report = {"simd": pcmekit.build_info()["cpu_simd"]}
for scale, shift, tag in ((1.7, 2.5, "mid"), (30.0, 0.0, "tail")):  # tail: both float32 paths
    truth = run(x64, match_logprob_naive, scale, shift)
    report[f"{tag}/log_p_range"] = [truth[0].min().item(), truth[0].max().item()]
    for dtype in ("float64", "float32"):
        xs = [t.to(getattr(torch, dtype)) for t in x64]
        mine = run(xs, ours, scale, shift)
        report[f"{tag}/{dtype}/log_p"] = rel(mine[0], truth[0])
        report[f"{tag}/{dtype}/log_q"] = (mine[1] - truth[1]).abs().max().item()
        report[f"{tag}/{dtype}/grad"] = max(rel(a, b) for a, b in zip(mine[2], truth[2]))
        if dtype == "float32" and tag == "mid":  # torch's own float32 GEMM form, for scale
            with torch.no_grad():
                tp, tq = match_logprob_fast(*xs, scale, shift)
            report["mid/torch32/log_p"] = rel(tp.double(), truth[0])
print(json.dumps(report))
"""


def test_every_simd_path_matches_the_oracle():
    paths = ["generic", "avx2", "avx512"]
    results = run_under_capabilities(_SIMD_SCRIPT, paths)
    seen = set()
    for path, r in zip(paths, results):
        if r["simd"] != path:  # capped to what this CPU has
            continue
        seen.add(path)
        low, high = r["tail/log_p_range"]  # the float32 fast path ends near log p = -131
        assert low < -150 and high > -100, r
        # Bounds ~10x over what every path measured (float32: log p 1.2-4.7e-7 relative, log q
        # 4e-8 absolute, gradients 1.8-4.3e-6 relative to their largest entry).
        for tag in ("mid", "tail"):
            assert r[f"{tag}/float64/log_p"] < 1e-12 and r[f"{tag}/float64/log_q"] < 1e-12, (path, r)
            assert r[f"{tag}/float64/grad"] < 1e-11, (path, r)
            assert r[f"{tag}/float32/log_p"] < 5e-6, (path, r)
            assert r[f"{tag}/float32/log_q"] < 1e-6, (path, r)
            assert r[f"{tag}/float32/grad"] < 5e-5, (path, r)
        assert r["mid/float32/log_p"] <= 4 * r["mid/torch32/log_p"] + 1e-6, (path, r)
    assert "generic" in seen, results


@pytest.mark.parametrize(
    "separation,logvar,scale,shift", [(10.0, -8.0, 20.0, 0.0), (0.0, -20.0, 1.0, 200.0), (10.0, -8.0, 7.0, 0.0)]
)
def test_gradients_at_extreme_probabilities(separation, logvar, scale, shift):
    exact, _ = _extreme(separation, logvar, torch.float64)
    leaves = [t.clone().requires_grad_() for t in exact[:4]]
    sc = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    sh = torch.tensor(shift, dtype=torch.float64, requires_grad=True)
    log_p, log_q = ours(*leaves, *exact[4:], scale=sc, shift=sh)
    (log_p.sum() - 0.5 * log_q.sum()).backward()
    ref = [t.clone().requires_grad_() for t in exact[:4]]
    rsc = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    rsh = torch.tensor(shift, dtype=torch.float64, requires_grad=True)
    rp, rq = match_logprob_naive(*ref, *exact[4:], rsc, rsh)
    (rp.sum() - 0.5 * rq.sum()).backward()
    for mine, theirs in zip([*leaves, sc, sh], [*ref, rsc, rsh]):
        assert torch.isfinite(mine.grad).all()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-12)


def test_calls_without_grad_skip_the_custom_op_and_give_its_values(monkeypatch):
    # An eager call that needs no gradient runs the kernel function itself (ops/match_prob.py);
    # one that does goes through the custom op (autograd). Same kernel, so the same bits.
    import importlib

    mp = importlib.import_module("pcmekit.ops.match_prob")  # (the package exports a function of that name)
    inputs = problem(5, 6, 7, 3, dtype=torch.float32, seed=4)
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    with_grad = ours(*leaves, *inputs[4:])
    calls = []
    real = mp.match_prob_op
    monkeypatch.setattr(mp, "match_prob_op", lambda *a: calls.append(1) or real(*a))
    plain = ours(*inputs)
    with torch.no_grad():
        no_grad = ours(*leaves, *inputs[4:])
    assert calls == []
    ours(*leaves, *inputs[4:])
    assert calls == [1]
    scale = torch.tensor(SCALE, requires_grad=True)
    pcmekit.match_logprob(*inputs[:4], scale=scale, shift=SHIFT, num_samples=3, eps_a=inputs[4], eps_b=inputs[5])
    assert calls == [1, 1]  # a scale that needs its gradient takes the op too
    for k in range(2):
        assert torch.equal(plain[k], with_grad[k].detach()) and torch.equal(no_grad[k], plain[k])


def test_match_prob_is_exp_of_log_p_and_differentiable():
    inputs = problem(4, 6, 5, 3, seed=9)
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    p = pcmekit.match_prob(*leaves, scale=SCALE, shift=SHIFT, num_samples=3, eps_a=inputs[4], eps_b=inputs[5])
    ref_p, ref_q = oracle(*inputs)
    torch.testing.assert_close(p, ref_p.exp(), rtol=1e-12, atol=0)
    torch.testing.assert_close(1 - p, ref_q.exp(), rtol=1e-10, atol=1e-15)
    p.sum().backward()
    ref = [t.clone().requires_grad_() for t in inputs[:4]]
    match_logprob_naive(*ref, *inputs[4:], SCALE, SHIFT)[0].exp().sum().backward()
    for mine, theirs in zip(leaves, ref):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-9, atol=1e-12)


def test_same_generator_seed_same_output():
    a_mean, a_logvar = gaussians(5, 8, seed=1)
    b_mean, b_logvar = gaussians(6, 8, seed=2)
    run = lambda seed: pcmekit.match_logprob(  # noqa: E731
        a_mean, a_logvar, b_mean, b_logvar, scale=SCALE, shift=SHIFT,
        generator=torch.Generator().manual_seed(seed))
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    # The noise is torch.randn from the generator, eps_a then eps_b, J = 7 by default.
    g = torch.Generator().manual_seed(0)
    eps_a = torch.randn(5, 7, 8, generator=g, dtype=torch.float64)
    eps_b = torch.randn(6, 7, 8, generator=g, dtype=torch.float64)
    explicit = ours(a_mean, a_logvar, b_mean, b_logvar, eps_a, eps_b)
    assert torch.equal(first[0], explicit[0]) and torch.equal(first[1], explicit[1])


def _exact_match_prob_2d(delta, var, scale, shift, points=1201):
    """E sigmoid(-scale sqrt(|x|^2 + 1e-6) + shift), x ~ N(delta, diag(var)) in 2-D, by quadrature."""
    axes = [torch.linspace(float(dl) - 10 * math.sqrt(v), float(dl) + 10 * math.sqrt(v), points, dtype=torch.float64)
            for dl, v in zip(delta, var)]
    weights = [torch.exp(-0.5 * (ax - float(dl)) ** 2 / float(v)) / math.sqrt(2 * math.pi * float(v)) * (ax[1] - ax[0])
               for ax, dl, v in zip(axes, delta, var)]
    x0, x1 = torch.meshgrid(axes[0], axes[1], indexing="ij")
    f = torch.sigmoid(-scale * torch.sqrt(x0 ** 2 + x1 ** 2 + 1e-6) + shift)
    return float((weights[0][:, None] * weights[1][None, :] * f).sum())


def test_statistical_convergence_to_exact_expectation():
    # The Monte-Carlo estimate is unbiased: over independent noise draws its mean lies within a
    # few standard errors of the exact expectation (2-D quadrature), for every pair.
    a_mean = torch.tensor([[0.0, 0.0], [0.5, -0.3]], dtype=torch.float64)
    a_logvar = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]], dtype=torch.float64)
    b_mean = torch.tensor([[0.3, 0.2], [1.5, 0.0], [-0.4, 0.9]], dtype=torch.float64)
    b_logvar = torch.tensor([[-0.5, -1.5], [-1.0, -1.0], [0.2, -0.7]], dtype=torch.float64)
    scale, shift, draws, j = 3.0, 2.0, 200, 8
    estimates = torch.stack([
        pcmekit.match_prob(a_mean, a_logvar, b_mean, b_logvar, scale=scale, shift=shift, num_samples=j,
                           generator=torch.Generator().manual_seed(seed))
        for seed in range(draws)
    ])
    mean, stderr = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    for i in range(2):
        for k in range(3):
            delta = (a_mean[i] - b_mean[k]).tolist()
            var = (a_logvar[i].exp() + b_logvar[k].exp()).tolist()
            exact = _exact_match_prob_2d(delta, var, scale, shift)
            assert abs(mean[i, k].item() - exact) <= 4 * stderr[i, k].item() + 1e-9, (i, k, mean[i, k].item(), exact)
            assert stderr[i, k].item() < 0.05  # the estimates are not degenerate


def test_opcheck(device):
    inputs = problem(4, 3, 5, 2, device=device, seed=4)
    leaves = [t.requires_grad_() for t in inputs[:4]]
    scale = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.tensor(SHIFT, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.pcmekit.match_logprob.default, (*leaves, *inputs[4:], scale, shift, False))


def test_torch_compile_fullgraph():
    inputs = [t.float() for t in problem(8, 6, 5, 3, seed=6)]
    leaves = [t.clone().requires_grad_() for t in inputs[:4]]
    scale = torch.tensor(SCALE, requires_grad=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(am, al, bm, bl, sc):
        log_p, log_q = pcmekit.match_logprob(am, al, bm, bl, scale=sc, shift=SHIFT, num_samples=3,
                                             eps_a=inputs[4], eps_b=inputs[5])
        return -(log_p.diagonal().sum() + log_q.sum())

    loss = loss_fn(*leaves, scale)
    loss.backward()
    ref = [t.clone().requires_grad_() for t in inputs[:4]]
    ref_scale = torch.tensor(SCALE, requires_grad=True)
    rp, rq = match_logprob_naive(*ref, *inputs[4:], ref_scale, SHIFT)
    ref_loss = -(rp.diagonal().sum() + rq.sum())
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip([*leaves, scale], [*ref, ref_scale]):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-3, atol=1e-4)


def test_empty_inputs(device):
    for n, m, d, j in [(0, 5, 3, 2), (4, 0, 3, 2), (0, 0, 3, 1), (4, 5, 0, 3)]:
        inputs = problem(n, m, d, j, device=device)
        leaves = [t.requires_grad_() for t in inputs[:4]]
        scale = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
        log_p, log_q = ours(*leaves, *inputs[4:], scale=scale)
        assert log_p.shape == (n, m) and log_q.shape == (n, m)
        ref_p, ref_q = oracle(*inputs)
        torch.testing.assert_close(log_p.detach().cpu(), ref_p)
        torch.testing.assert_close(log_q.detach().cpu(), ref_q)
        (log_p.sum() + log_q.sum()).backward()
        for t in leaves:
            assert t.grad.shape == t.shape
        if d == 0:  # every distance is sqrt(1e-6): only scale gets a gradient
            assert all(torch.all(t.grad == 0) for t in leaves)
        else:
            assert all(torch.all(t.grad == 0) for t in leaves) and scale.grad.item() == 0


def test_non_contiguous_inputs():
    base = problem(9, 7, 12, 3, seed=13)
    means = [t.T.contiguous().T for t in base[:4]]  # transposed storage
    # eps with a column stride of 2 (reshapes to a [N J, D] view), and a permuted one (copied).
    wide = torch.stack([base[4], base[4]], 3).reshape(9, 3, 24)[:, :, ::2]
    permuted = base[5].permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not any(t.is_contiguous() for t in (*means, wide, permuted))
    log_p, log_q = ours(*means, wide, permuted)
    ref_p, ref_q = oracle(*base)
    torch.testing.assert_close(log_p, ref_p, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_q, ref_q, rtol=1e-10, atol=1e-10)


def test_prob_embedding_form_and_numpy():
    inputs = problem(5, 6, 4, 2, seed=8)
    a, b = pcmekit.ProbEmbedding(*inputs[:2]), pcmekit.ProbEmbedding(*inputs[2:4])
    expected = ours(*inputs)
    got = pcmekit.match_logprob(a, b, scale=SCALE, shift=SHIFT, num_samples=2, eps_a=inputs[4], eps_b=inputs[5])
    torch.testing.assert_close(got[0], expected[0])
    p = pcmekit.match_prob(a, b, scale=SCALE, shift=SHIFT, num_samples=2, eps_a=inputs[4], eps_b=inputs[5])
    torch.testing.assert_close(p, expected[0].exp())
    arrays = [t.float().numpy() for t in inputs]
    p_np = pcmekit.match_prob(*arrays[:4], scale=SCALE, shift=SHIFT, num_samples=2, eps_a=arrays[4], eps_b=arrays[5])
    assert isinstance(p_np, np.ndarray) and p_np.dtype == np.float32 and p_np.shape == (5, 6)
    np.testing.assert_allclose(p_np, expected[0].exp().numpy(), rtol=1e-4, atol=1e-6)
    lp_np, lq_np = pcmekit.match_logprob(*arrays[:4], scale=SCALE, shift=SHIFT, num_samples=2,
                                         eps_a=arrays[4], eps_b=arrays[5])
    assert isinstance(lq_np, np.ndarray)
    np.testing.assert_allclose(lq_np, expected[1].numpy(), rtol=1e-4, atol=1e-5)


def test_nan_propagates_to_its_row():
    inputs = [t.clone() for t in problem(4, 5, 3, 2, seed=14)]
    inputs[0][2, 1] = float("nan")
    log_p, log_q = ours(*inputs)
    assert torch.isnan(log_p[2]).all() and torch.isnan(log_q[2]).all()
    assert torch.isfinite(log_p[[0, 1, 3]]).all() and torch.isfinite(log_q[[0, 1, 3]]).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_equals_cuda_for_same_eps(dtype):
    inputs = problem(37, 45, 29, 7, dtype=dtype, seed=21)
    cpu = ours(*inputs)
    gpu = ours(*[t.cuda() for t in inputs])
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    for c, g in zip(cpu, gpu):
        torch.testing.assert_close(g.cpu(), c, **tol)
    # Same generator seed on the CPU, inputs on either device: same noise, same result.
    a = pcmekit.match_prob(*inputs[:4], scale=SCALE, shift=SHIFT, generator=torch.Generator().manual_seed(3))
    b = pcmekit.match_prob(*[t.cuda() for t in inputs[:4]], scale=SCALE, shift=SHIFT,
                           generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(b.cpu(), a, **tol)


@pytest.mark.cuda
def test_half_precision_on_cuda():
    inputs = problem(20, 30, 16, 3, dtype=torch.float16, device="cuda", seed=22)
    log_p, log_q = ours(*inputs)
    assert log_p.dtype == torch.float32
    ref_p, ref_q = oracle(*inputs)  # the same 16-bit values, in float64
    torch.testing.assert_close(log_p.double().cpu(), ref_p, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_q.double().cpu(), ref_q, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input: clear exceptions naming the argument, expected and actual.


def _call(**overrides):
    inputs = problem(4, 5, 3, 2)
    kwargs = dict(a_mean=inputs[0], a_logvar=inputs[1], b_mean=inputs[2], b_logvar=inputs[3],
                  scale=SCALE, shift=SHIFT, num_samples=2, eps_a=inputs[4], eps_b=inputs[5])
    kwargs.update(overrides)
    return pcmekit.match_logprob(**kwargs)


@pytest.mark.parametrize(
    "overrides,exc,pattern",
    [
        (dict(eps_a=torch.randn(4, 2, 4, dtype=torch.float64)), ValueError,
         r"eps_a must have shape \[N, J, D\] = \[4, J, 3\], got \[4, 2, 4\]"),
        (dict(eps_b=torch.randn(6, 2, 3, dtype=torch.float64)), ValueError,
         r"eps_b must have shape \[M, J, D\] = \[5, J, 3\], got \[6, 2, 3\]"),
        (dict(eps_a=torch.randn(4, 6, dtype=torch.float64)), ValueError, r"eps_a must have shape \[N, J, D\]"),
        (dict(num_samples=0, eps_a=None, eps_b=None), ValueError, r"num_samples must be an int >= 1, got 0"),
        (dict(num_samples=7), ValueError, r"eps_a has J = 2 samples per embedding but num_samples is 7"),
        (dict(eps_b=torch.randn(5, 3, 3, dtype=torch.float64)), ValueError,
         r"eps_b has J = 3 samples per embedding but eps_a's J is 2"),
        (dict(scale=float("inf")), ValueError, r"scale must be finite, got inf"),
        (dict(shift=torch.tensor(float("nan"))), ValueError, r"shift must be finite, got nan"),
        (dict(scale=torch.ones(2)), ValueError, r"scale must be a Python float or a 0-d tensor"),
        (dict(scale="1"), TypeError, r"scale must be a Python float or a 0-d tensor, got str"),
        (dict(eps_a=torch.randn(4, 2, 3)), TypeError, r"eps_a must have the dtype of the means"),
        (dict(b_logvar=None), ValueError, r"match_prob needs b_logvar"),
        (dict(b_mean=torch.randn(5, 2, dtype=torch.float64), b_logvar=torch.randn(5, 2, dtype=torch.float64)),
         ValueError, r"b_mean must have shape \[M, D\] with D == a_mean's D \(3\), got \[5, 2\]"),
        (dict(squared=1), TypeError, r"squared must be a bool"),
    ],
)
def test_bad_inputs(overrides, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _call(**overrides)


def test_core_checks_its_inputs():
    from pcmekit import _C
    from pcmekit._core import matrix_view

    a, e = torch.randn(2, 3), torch.randn(4, 3)
    out = torch.empty(2, 2)
    views = [matrix_view(t) for t in (a, a, a, a)]
    with pytest.raises(ValueError, match=r"eps_b must have shape \[M \* J, D\] = \[6, 3\], got \[4, 3\]"):
        _C.match_prob_forward(*views, matrix_view(torch.randn(6, 3)), matrix_view(e), 3, 1.0, 0.0, False,
                              matrix_view(out), matrix_view(out), 1, 0)
    with pytest.raises(ValueError, match=r"num_samples must be >= 1, got 0"):
        _C.match_prob_forward(*views, matrix_view(e), matrix_view(e), 0, 1.0, 0.0, False,
                              matrix_view(out), matrix_view(out), 1, 0)
    with pytest.raises(ValueError, match=r"scale must be finite"):
        _C.match_prob_forward(*views, matrix_view(e), matrix_view(e), 2, float("nan"), 0.0, False,
                              matrix_view(out), matrix_view(out), 1, 0)
