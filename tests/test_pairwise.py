"""pcmekit.pairwise_distance against the pure-PyTorch oracle (pcmekit.reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pcmekit
from pcmekit.reference import pairwise_distance_fast, pairwise_distance_naive

from _helpers import METRICS, gaussians

SIZES = [(1, 1, 1), (3, 17, 5), (17, 3, 8), (33, 29, 17), (257, 5, 3), (7, 13, 257)]


def pair(n, m, d, *, dtype=torch.float64, device="cpu", seed=0):
    a_mean, a_logvar = gaussians(n, d, dtype=dtype, device=device, seed=seed)
    b_mean, b_logvar = gaussians(m, d, dtype=dtype, device=device, seed=seed + 1)
    return a_mean, a_logvar, b_mean, b_logvar


def oracle(a_mean, a_logvar, b_mean, b_logvar, metric):
    f64 = [t.double().cpu() for t in (a_mean, a_logvar, b_mean, b_logvar)]
    return pairwise_distance_naive(*f64, metric)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_forward_float64_matches_oracle(metric, n, m, d, device):
    inputs = pair(n, m, d, device=device)
    out = pcmekit.pairwise_distance(*inputs, metric=metric)
    assert out.shape == (n, m) and out.dtype == torch.float64 and out.device.type == device
    torch.testing.assert_close(out.cpu(), oracle(*inputs, metric), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("metric", METRICS)
def test_forward_float32_error_within_policy(metric, device):
    # Policy: our float32 error vs the float64 oracle is at most twice that of PyTorch's own
    # fastest float32 form (plus a floor for results that both get essentially exact).
    inputs64 = pair(300, 200, 67, device=device, seed=3)
    inputs32 = [t.float() for t in inputs64]
    truth = oracle(*inputs64, metric)
    ours = pcmekit.pairwise_distance(*inputs32, metric=metric).double().cpu()
    torch_err = (pairwise_distance_fast(*inputs32, metric).double().cpu() - truth).abs().max().item()
    our_err = (ours - truth).abs().max().item()
    assert our_err <= 2 * torch_err + 1e-5 * truth.abs().max().item(), (our_err, torch_err)


def test_large_rows_and_column_counts(device):
    inputs = pair(1031, 1029, 19, device=device, seed=5)
    for metric in ("csd", "elk"):
        out = pcmekit.pairwise_distance(*inputs, metric=metric)
        torch.testing.assert_close(out.cpu(), oracle(*inputs, metric), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(metric, device):
    inputs = [t.requires_grad_() for t in pair(4, 5, 3, device=device, seed=7)]
    assert torch.autograd.gradcheck(
        lambda *x: pcmekit.pairwise_distance(*x, metric=metric), inputs, eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,m,d", [(33, 29, 17), (1, 40, 5), (300, 1, 9)])
def test_backward_matches_oracle(metric, n, m, d, device):
    inputs = pair(n, m, d, device=device, seed=11)
    weight = torch.randn(n, m, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = [t.clone().requires_grad_() for t in inputs]
    ref = [t.detach().cpu().clone().requires_grad_() for t in inputs]
    (pcmekit.pairwise_distance(*ours, metric=metric).cpu() * weight).sum().backward()
    (pairwise_distance_naive(*ref, metric) * weight).sum().backward()
    for mine, theirs in zip(ours, ref):
        if mine.grad is None:  # l2 does not use the logvars: autograd leaves their grad unset
            assert metric == "l2" and (theirs.grad is None or torch.all(theirs.grad == 0))
            continue
        torch.testing.assert_close(mine.grad.cpu(), theirs.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("metric", METRICS)
def test_backward_float32_error_within_policy(metric, device):
    # The float32 gradients against the float64 oracle: at most twice the error of autograd
    # through PyTorch's own fastest float32 form, plus a floor.
    inputs64 = pair(130, 70, 45, device=device, seed=13)
    weight = torch.randn(130, 70, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def grads(fn, inputs):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (fn(*leaves).double().cpu() * weight).sum().backward()
        return [t.grad.double().cpu() if t.grad is not None else None for t in leaves]

    truth = grads(lambda *x: pairwise_distance_naive(*x, metric), [t.cpu() for t in inputs64])
    inputs32 = [t.float() for t in inputs64]
    ours = grads(lambda *x: pcmekit.pairwise_distance(*x, metric=metric), inputs32)
    base = grads(lambda *x: pairwise_distance_fast(*x, metric), inputs32)
    for mine, theirs, exact in zip(ours, base, truth):
        if exact is None or mine is None:
            continue
        our_err = (mine - exact).abs().max().item()
        torch_err = (theirs - exact).abs().max().item()
        assert our_err <= 2 * torch_err + 1e-5 * exact.abs().max().item(), (our_err, torch_err)


def test_float32_logvar_gradient_is_exp_within_one_ulp():
    # With one incoming gradient of 1 per row, d csd / d a_logvar is exp(a_logvar) times exactly
    # 1, so this reads the CPU kernel's vectorised exp off directly: across the whole range where
    # float32 exp is normal, plus the edges it hands to the C library (subnormal, overflow, NaN).
    grid = torch.linspace(-87.0, 88.0, 250_000, dtype=torch.float64)
    edges = torch.tensor([-150.0, -103.0, -87.5, -87.01, 88.01, 88.7, 88.8, 200.0, float("inf"),
                          float("-inf"), float("nan"), 0.0, -0.0, 1e-30])
    logvar = torch.cat([grid, edges]).float()
    d = 50
    logvar = torch.cat([logvar, logvar.new_zeros((-len(logvar)) % d)]).view(-1, d)
    a_logvar = logvar.clone().requires_grad_()
    a_mean = torch.zeros_like(logvar)
    b_mean, b_logvar = torch.zeros(1, d), torch.zeros(1, d)
    out = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric="csd")
    (grad,) = torch.autograd.grad(out, [a_logvar], torch.ones_like(out))
    exact = logvar.double().exp().float()  # exp in float64, rounded once
    assert torch.equal(torch.isnan(grad), torch.isnan(exact))
    finite = torch.isfinite(exact) & (exact != 0)
    assert torch.equal(grad[~finite & ~torch.isnan(exact)], exact[~finite & ~torch.isnan(exact)])
    ulps = (grad[finite].view(torch.int32).long() - exact[finite].view(torch.int32).long()).abs()
    assert ulps.max().item() <= 1, ulps.max().item()


@pytest.mark.parametrize("metric", ["csd", "kl", "elk"])
def test_only_requested_gradients(metric):
    a_mean, a_logvar, b_mean, b_logvar = pair(6, 4, 3)
    a_mean.requires_grad_()
    b_logvar.requires_grad_()
    pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric=metric).sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in (a_mean, b_logvar)]
    pairwise_distance_naive(ref[0], a_logvar, b_mean, ref[1], metric).sum().backward()
    torch.testing.assert_close(a_mean.grad, ref[0].grad)
    torch.testing.assert_close(b_logvar.grad, ref[1].grad)
    assert a_logvar.grad is None and b_mean.grad is None


@pytest.mark.parametrize("metric", METRICS)
def test_non_contiguous_inputs(metric, device):
    base = pair(9, 7, 12, device=device, seed=13)
    # transposed storage, and every other column of a wider tensor
    transposed = [t.T.contiguous().T for t in base[:2]]
    strided = [torch.stack([t, t], 2).reshape(t.shape[0], -1)[:, ::2] for t in base[2:]]
    inputs = transposed + strided
    assert not any(t.is_contiguous() for t in inputs)
    leaves = [t.detach().requires_grad_() for t in inputs]
    views = [leaf.T.contiguous().T if i < 2 else leaf[:, :] for i, leaf in enumerate(leaves)]
    out = pcmekit.pairwise_distance(*views, metric=metric)
    torch.testing.assert_close(out.cpu(), oracle(*base, metric), rtol=1e-10, atol=1e-10)
    out.sum().backward()
    ref = [t.detach().cpu().clone().requires_grad_() for t in base]
    pairwise_distance_naive(*ref, metric).sum().backward()
    for leaf, r in zip(leaves, ref):
        if leaf.grad is None:
            assert metric == "l2" and (r.grad is None or torch.all(r.grad == 0))
            continue
        torch.testing.assert_close(leaf.grad.cpu(), r.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n,m,d", [(0, 5, 3), (4, 0, 3), (0, 0, 3), (4, 5, 0)])
def test_empty_inputs(metric, n, m, d, device):
    inputs = [t.requires_grad_() for t in pair(n, m, d, device=device)]
    out = pcmekit.pairwise_distance(*inputs, metric=metric)
    assert out.shape == (n, m)
    torch.testing.assert_close(out.cpu(), oracle(*inputs, metric).detach())
    out.sum().backward()
    for i, t in enumerate(inputs):
        if t.grad is None:
            assert metric == "l2" and i in (1, 3)
            continue
        assert t.grad.shape == t.shape
        assert torch.all(t.grad == 0)


def test_l2_ignores_logvar():
    a_mean, a_logvar, b_mean, b_logvar = pair(5, 6, 4)
    without = pcmekit.pairwise_distance(a_mean, None, b_mean, None, metric="l2")
    with_lv = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric="l2")
    torch.testing.assert_close(without, with_lv)
    torch.testing.assert_close(without, torch.cdist(a_mean, b_mean) ** 2)


def test_prob_embedding_form_and_metric_default():
    a_mean, a_logvar, b_mean, b_logvar = pair(5, 6, 4)
    a, b = pcmekit.ProbEmbedding(a_mean, a_logvar), pcmekit.ProbEmbedding(b_mean, b_logvar)
    expected = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar)
    torch.testing.assert_close(pcmekit.pairwise_distance(a, b), expected)
    torch.testing.assert_close(pcmekit.pairwise_distance(a, b, metric="csd"), expected)
    torch.testing.assert_close(pcmekit.pairwise_distance(a, b, "kl"), oracle(a_mean, a_logvar, b_mean, b_logvar, "kl"))


def test_numpy_in_numpy_out():
    inputs = [t.float().numpy() for t in pair(8, 9, 5)]
    out = pcmekit.pairwise_distance(*inputs, metric="w2")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (8, 9)
    expected = oracle(*[torch.from_numpy(x) for x in inputs], "w2").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_numpy_inputs_are_not_copied(monkeypatch):
    # The kernel must read the caller's numpy buffers themselves: the views pcmekit hands the
    # core point into the arrays' own memory.
    from pcmekit import _core

    a_mean, a_logvar, b_mean, b_logvar = (np.ascontiguousarray(t.numpy()) for t in pair(4, 5, 3))
    seen = []
    real = _core.pairwise_forward

    def spy(metric, am, al, bm, bl, *rest):
        seen.extend(view[0] for view in (am, al, bm, bl))
        return real(metric, am, al, bm, bl, *rest)

    monkeypatch.setattr(_core, "pairwise_forward", spy)
    out = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric="w2")
    assert isinstance(out, np.ndarray)
    assert seen == [x.ctypes.data for x in (a_mean, a_logvar, b_mean, b_logvar)]


@pytest.mark.parametrize("metric", ["csd", "l2", "bhattacharyya"])
def test_opcheck(metric, device):
    inputs = [t.requires_grad_() for t in pair(5, 4, 3, device=device)]
    if metric == "l2":
        inputs[1] = inputs[3] = None
    torch.library.opcheck(torch.ops.pcmekit.pairwise_distance.default, (*inputs, metric))


def test_torch_compile_fullgraph():
    inputs = [t.float().requires_grad_() for t in pair(16, 12, 8)]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(am, al, bm, bl):
        d = pcmekit.pairwise_distance(am, al, bm, bl, metric="csd")
        return torch.nn.functional.softplus(d - 3.0).mean()

    loss = loss_fn(*inputs)
    loss.backward()
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    ref_loss = torch.nn.functional.softplus(pairwise_distance_naive(*ref, "csd") - 3.0).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    for mine, theirs in zip(inputs, ref):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_inclusion_is_antisymmetric():
    # inclusion(a, b) = -inclusion(b, a): the measure is a difference of the two directions.
    a_mean, a_logvar, b_mean, b_logvar = pair(6, 9, 11, seed=19)
    ab = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric="inclusion")
    ba = pcmekit.pairwise_distance(b_mean, b_logvar, a_mean, a_logvar, metric="inclusion")
    torch.testing.assert_close(ab, -ba.T, rtol=1e-12, atol=1e-12)


def test_inclusion_direction():
    # A narrow Gaussian inside a wide one with the same mean: negative (included) one way,
    # positive the other; identical Gaussians give exactly 0.
    d = 4
    mean = torch.randn(1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    narrow, wide = torch.full((1, d), -3.0, dtype=torch.float64), torch.full((1, d), 1.0, dtype=torch.float64)
    inside = pcmekit.pairwise_distance(mean, narrow, mean, wide, metric="inclusion").item()
    outside = pcmekit.pairwise_distance(mean, wide, mean, narrow, metric="inclusion").item()
    same = pcmekit.pairwise_distance(mean, wide, mean, wide, metric="inclusion").item()
    assert inside < 0 < outside and same == 0.0
    # With equal means only the log-variance terms remain: per dimension
    # lv_a - lv_b + 1/2 log((var_a + 2 var_b) / (2 var_a + var_b)).
    va, vb = math.exp(-3.0), math.exp(1.0)
    expected = d * (-4.0 + 0.5 * math.log((va + 2 * vb) / (2 * va + vb)))
    assert inside == pytest.approx(expected, rel=1e-12)


def test_nan_propagates_to_its_row():
    a_mean, a_logvar, b_mean, b_logvar = pair(4, 5, 3)
    a_mean[2, 1] = float("nan")
    out = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric="elk")
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()


# ---------------------------------------------------------------------------------------------
# Bad input: clear exceptions naming the argument, expected and actual.


def _good():
    return pair(4, 5, 3)


@pytest.mark.parametrize(
    "mutate,exc,pattern",
    [
        (lambda a: (a[0][0], a[1], a[2], a[3]), ValueError, r"a_mean must have shape \[N, D\] \(2-D\), got \[3\]"),
        (lambda a: (a[0], a[1], a[2][:, :2], a[3][:, :2]), ValueError, r"b_mean must have shape \[M, D\] with D == a_mean's D \(3\), got \[5, 2\]"),
        (lambda a: (a[0], a[1][:3], a[2], a[3]), ValueError, r"a_logvar must have the shape of a_mean \[4, 3\], got \[3, 3\]"),
        (lambda a: (a[0].long(), a[1], a[2], a[3]), TypeError, r"a_mean must be floating point .* got torch.int64"),
        (lambda a: (a[0], a[1], a[2].float(), a[3]), TypeError, r"b_mean has dtype torch.float32 but a_mean has torch.float64"),
        (lambda a: (a[0], a[1], a[2], None), ValueError, r"metric 'csd' needs a_logvar and b_logvar, but b_logvar is None"),
        (lambda a: (a[0].half(), a[1].half(), a[2].half(), a[3].half()), TypeError, r"a_mean has dtype torch.float16, which pcmekit supports on CUDA only"),
        (lambda a: (a[0], a[1], a[2].to("meta"), a[3]), ValueError, r"b_mean must be on a cpu or cuda device, got meta"),
        (lambda a: ([[1.0]], a[1], a[2], a[3]), TypeError, r"a_mean must be a torch.Tensor or numpy.ndarray, got list"),
        (lambda a: (None, a[1], a[2], a[3]), TypeError, r"a_mean must be a torch.Tensor or numpy.ndarray, got NoneType"),
    ],
)
def test_bad_inputs(mutate, exc, pattern):
    with pytest.raises(exc, match=pattern):
        pcmekit.pairwise_distance(*mutate(_good()), metric="csd")


def test_unknown_metric():
    with pytest.raises(
        ValueError, match=r"metric must be one of csd, w2, l2, kl, bhattacharyya, elk, inclusion; got 'cosine'"
    ):
        pcmekit.pairwise_distance(*_good(), metric="cosine")


def test_inclusion_needs_logvars_and_names_them():
    a = _good()
    with pytest.raises(ValueError, match=r"metric 'inclusion' needs a_logvar and b_logvar, but a_logvar is None"):
        pcmekit.pairwise_distance(a[0], None, a[2], a[3], metric="inclusion")


def test_mixed_numpy_and_torch():
    a = _good()
    with pytest.raises(TypeError, match="not a mix"):
        pcmekit.pairwise_distance(a[0].numpy(), a[1], a[2], a[3])


def test_core_rejects_cuda_views_without_cuda_support():
    from pcmekit import _C
    from pcmekit._core import matrix_view

    if pcmekit.build_info()["cuda_compiled"]:
        pytest.skip("this build has CUDA support")
    a = torch.randn(2, 3)
    out = torch.empty(2, 2)
    cuda_view = matrix_view(a)[:6] + (1, 0)  # same memory, labelled as a CUDA array
    with pytest.raises(ValueError, match="pcmekit was built without CUDA support"):
        _C.pairwise_forward(0, cuda_view, cuda_view, cuda_view, cuda_view, matrix_view(out)[:6] + (1, 0), 1, 0)


def test_core_checks_shapes_itself():
    from pcmekit import _C
    from pcmekit._core import matrix_view

    a, b = torch.randn(2, 3), torch.randn(4, 5)
    out = torch.empty(2, 4)
    with pytest.raises(ValueError, match=r"b_mean must have shape \[M, D\] = \[4, 3\], got \[4, 5\]"):
        _C.pairwise_forward(0, matrix_view(a), matrix_view(a), matrix_view(b), matrix_view(b), matrix_view(out), 1, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_half_precision_on_cuda(metric, dtype):
    # 16-bit inputs, float32 accumulation and output; error policy: at most twice PyTorch's own
    # error when it computes the same formula from the same 16-bit inputs in float32.
    inputs = [t.to(dtype) for t in pair(70, 50, 40, device="cuda", seed=17)]
    out = pcmekit.pairwise_distance(*inputs, metric=metric)
    assert out.dtype == torch.float32
    truth = oracle(*inputs, metric)
    torch_err = (pairwise_distance_naive(*[t.float() for t in inputs], metric).double().cpu() - truth).abs().max()
    assert (out.double().cpu() - truth).abs().max() <= 2 * torch_err + 1e-4 * truth.abs().max()
    leaves = [t.detach().requires_grad_() for t in inputs]
    pcmekit.pairwise_distance(*leaves, metric=metric).sum().backward()
    ref = [t.detach().double().cpu().requires_grad_() for t in inputs]
    pairwise_distance_naive(*ref, metric).sum().backward()
    for leaf, r in zip(leaves, ref):
        if leaf.grad is None:
            assert metric == "l2"
            continue
        assert leaf.grad.dtype == dtype
        scale = r.grad.abs().max().item()
        torch.testing.assert_close(leaf.grad.double().cpu(), r.grad, rtol=2e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["csd", "w2", "kl"])
def test_a_few_rows_give_the_bits_of_the_whole_matrix(metric, dtype):
    # Products of fewer rows than the micro-kernel's tile run on smaller tiles (cpu/gemm_kernels.cpp),
    # one and two rows on several panels of B at once; each entry must still be the same chain of
    # FMAs, over several K blocks (D = 600 > kc). 301 columns: 10 panels of 32 on AVX-512 (19 of 16
    # on AVX2), so the multi-panel kernels run with a remainder of single panels.
    g = torch.Generator().manual_seed(40)
    a_mean, a_logvar = torch.randn(13, 600, generator=g, dtype=dtype), torch.randn(13, 600, generator=g, dtype=dtype) * 0.3
    b_mean, b_logvar = torch.randn(301, 600, generator=g, dtype=dtype), torch.randn(301, 600, generator=g, dtype=dtype) * 0.3
    whole = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, metric)
    for rows in (slice(0, 1), slice(3, 5), slice(2, 5), slice(4, 8), slice(0, 9), slice(1, 13)):
        part = pcmekit.pairwise_distance(a_mean[rows], a_logvar[rows], b_mean, b_logvar, metric)
        assert torch.equal(part, whole[rows]), rows
        values, indices = pcmekit.topk(a_mean[rows], a_logvar[rows], b_mean, b_logvar, 5, metric)
        ref_values, ref_indices = pcmekit.topk(a_mean, a_logvar, b_mean, b_logvar, 5, metric)
        assert torch.equal(indices, ref_indices[rows]) and torch.equal(values, ref_values[rows]), rows


@pytest.mark.parametrize("d", [1, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 96, 97, 130])
def test_csd_row_terms_at_every_block_size_and_with_out_of_range_log_variances(d):
    # The vectorised sum of squares + variances works in blocks of 64, 32, 16 and 8 lanes with a
    # scalar tail, and sends a block holding a log-variance outside the polynomial's range to the
    # C library's exp: every one of those paths, against float64.
    g = torch.Generator().manual_seed(d)
    a_mean, a_logvar = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g) - 2
    b_mean, b_logvar = torch.randn(5, d, generator=g), torch.randn(5, d, generator=g) - 2
    a_logvar[1, d // 2] = -95.0  # exp is subnormal
    b_logvar[2, d - 1] = 60.0  # far above the rest, still finite
    ours = pcmekit.pairwise_distance(a_mean, a_logvar, b_mean, b_logvar, "csd")
    ref = pairwise_distance_naive(a_mean.double(), a_logvar.double(), b_mean.double(), b_logvar.double(), "csd")
    torch.testing.assert_close(ours.double(), ref, rtol=2e-6, atol=1e-5)
