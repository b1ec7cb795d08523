"""distance_bce_with_logits: the fused BCE over ``shift - scale * distance`` against torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pcmekit
from _helpers import DEVICES, gaussians, run_under_capabilities
from pcmekit import reference

SHAPES = [(1, 1), (3, 17), (17, 3), (33, 33), (257, 40), (1030, 9)]


def _distances(n, m, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, m, generator=g, dtype=torch.float64) * 3).to(device=device, dtype=dtype)


def _soft_target(n, m, *, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g, dtype=torch.float64)


def _torch_loss_and_grads(distance, target, scale, shift, reduction):
    """torch's composite in float64: loss and the gradients w.r.t. distance, scale and shift."""
    d = distance.detach().double().requires_grad_()
    s = torch.tensor(float(scale), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(float(shift), dtype=torch.float64, requires_grad=True)
    y = torch.eye(*d.shape, dtype=torch.float64) if target is None else target.double()
    loss = F.binary_cross_entropy_with_logits(-s * d + t, y.to(d.device), reduction=reduction)
    loss.backward()
    return loss.detach(), d.grad, s.grad, t.grad


def _ours(distance, target, scale, shift, reduction):
    d = distance.detach().clone().requires_grad_()
    s = torch.tensor(float(scale), dtype=distance.dtype, device=distance.device, requires_grad=True)
    t = torch.tensor(float(shift), dtype=distance.dtype, device=distance.device, requires_grad=True)
    loss = pcmekit.distance_bce_with_logits(d, target, scale=s, shift=t, reduction=reduction)
    loss.backward()
    return loss.detach(), d.grad, s.grad, t.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("soft", [False, True], ids=["identity", "soft-target"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_torch_float64(device, dtype, shape, soft, reduction):
    distance = _distances(*shape, dtype=dtype, device=device)
    target = _soft_target(*shape).to(device=device, dtype=dtype) if soft else None
    ours = _ours(distance, target, 4.5, 5.5, reduction)
    truth = _torch_loss_and_grads(distance, target, 4.5, 5.5, reduction)
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    for mine, exact, what in zip(ours, truth, ("loss", "grad distance", "grad scale", "grad shift")):
        assert mine.dtype == dtype, what
        err = (mine.double().cpu() - exact.cpu()).abs().max().item()
        assert err <= rtol * (exact.abs().max().item() + 1e-30) + 1e-30, (what, err)


def test_every_element_of_the_float32_gradient_is_within_a_few_ulp():
    """Against the exact sigmoid of the float32 logit (rounded as torch rounds it): the polynomial
    exp and the division cost a few ulp, nothing more."""
    # The logits span ~[-33, 3]: exp(-|x|) runs over much of its reduced range.
    distance = _distances(300, 301, dtype=torch.float32, seed=3) * 1.7
    scale, shift = 7.0, 3.0
    _, grad, _, _ = _ours(distance, None, scale, shift, "sum")
    logit = (distance * -scale + shift).double()  # float32 roundings, then exact from here
    exact = (torch.sigmoid(logit) - torch.eye(*distance.shape, dtype=torch.float64)) * -scale
    off = ~torch.eye(*distance.shape, dtype=torch.bool)
    ulp = torch.finfo(torch.float32).eps * exact.abs()
    assert ((grad.double() - exact).abs()[off] / ulp[off]).max().item() <= 4
    # On the diagonal sigmoid(x) - 1 cancels: there the error is measured against scale * 1.
    diag = (grad.double() - exact).diagonal().abs().max().item()
    assert diag <= 2 * torch.finfo(torch.float32).eps * scale


def test_gradcheck_float64():
    d = _distances(7, 5).requires_grad_()
    target = _soft_target(7, 5)
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    for tgt, reduction in ((None, "mean"), (target, "sum")):
        assert torch.autograd.gradcheck(
            lambda d, s, t: pcmekit.distance_bce_with_logits(d, tgt, scale=s, shift=t, reduction=reduction),
            (d, s, t),
        )


def test_non_contiguous_inputs():
    base = _distances(40, 62, dtype=torch.float32)
    distance = base[::2, 1::2].t()  # [31, 20], neither rows nor columns contiguous
    target = _soft_target(20, 31).float().t()  # [31, 20], columns strided
    assert not distance.is_contiguous() and not target.is_contiguous()
    for tgt in (None, target):
        mine = _ours(distance, tgt, 5.0, 5.0, "mean")
        dense = _ours(distance.contiguous(), None if tgt is None else tgt.contiguous(), 5.0, 5.0, "mean")
        for a, b in zip(mine, dense):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_matrix():
    for shape in ((0, 5), (4, 0), (0, 0)):
        d = torch.zeros(shape, requires_grad=True)
        s = torch.tensor(5.0, requires_grad=True)
        mean = pcmekit.distance_bce_with_logits(d, scale=s)
        assert torch.isnan(mean)  # like torch's mean over no elements
        total = pcmekit.distance_bce_with_logits(d, scale=s, reduction="sum")
        assert total.item() == 0.0
        total.backward()
        assert d.grad.shape == shape and s.grad.item() == 0.0


def test_extreme_logits_stay_finite_and_exact():
    # |x| of 1000: exp(-|x|) underflows; the loss is then max(x, 0) - x y and sigmoid 0 or 1.
    distance = torch.tensor([[201.0, -199.0, 1.0], [0.5, 201.0, -199.0]], dtype=torch.float32)
    target = torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.0]])
    mine = _ours(distance, target, 5.0, 5.0, "sum")
    truth = _torch_loss_and_grads(distance, target, 5.0, 5.0, "sum")
    for a, b in zip(mine, truth):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_far_negative_logits_give_zero_gradients_not_subnormal_ones(reduction):
    # Unnormalised embeddings: distances ~2000, logits ~ -10000. The true sigmoid there is far
    # below float32's range; the kernel once kept exp(-87) ~ 1.6e-38 for it, so that every
    # scaled gradient entry was subnormal and the distance's backward ran ~100x slower on them.
    distance = (torch.rand(64, 300, generator=torch.Generator().manual_seed(5)) + 1.0) * 2000.0
    distance.requires_grad_(True)
    loss = pcmekit.distance_bce_with_logits(distance, reduction=reduction)
    loss.backward()
    g = distance.grad
    off_diagonal = ~torch.eye(64, 300, dtype=torch.bool)
    assert bool((g[off_diagonal] == 0).all()), g[off_diagonal].abs().max()
    tiny = (g != 0) & (g.abs() < torch.finfo(torch.float32).tiny)
    assert not bool(tiny.any())
    ref = distance.detach().clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(-5.0 * ref + 5.0, torch.eye(64, 300), reduction=reduction).backward()
    torch.testing.assert_close(g, ref.grad, rtol=1e-6, atol=0.0)


def test_nan_distance_propagates_to_its_element_only():
    distance = _distances(5, 19, dtype=torch.float32)
    distance[2, 11] = float("nan")
    loss, grad, _, _ = _ours(distance, None, 5.0, 5.0, "mean")
    assert torch.isnan(loss)
    nan = torch.isnan(grad)
    assert nan[2, 11] and nan.sum().item() == 1


def test_result_does_not_depend_on_the_thread_count():
    distance = _distances(301, 515, dtype=torch.float32)
    before = pcmekit.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            pcmekit.set_num_threads(threads)
            results.append(_ours(distance, None, 5.0, 5.0, "mean"))
    finally:
        pcmekit.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_generic_instruction_set_agrees():
    """PCMEKIT_CPU_CAPABILITY=generic (the C library's exp and log1p) against the AVX2 polynomials."""
    script = r"""
import json, torch, pcmekit
g = torch.Generator().manual_seed(0)
d = (torch.rand(67, 45, generator=g) * 3).requires_grad_()
y = torch.rand(67, 45, generator=g)
out = []
for tgt in (None, y):
    loss = pcmekit.distance_bce_with_logits(d, tgt, scale=6.0, shift=4.0)
    (grad,) = torch.autograd.grad(loss, d)
    out.append([loss.item(), grad.flatten().tolist()])
print(json.dumps(out))
"""
    for (loss_a, grad_a), (loss_b, grad_b) in zip(*run_under_capabilities(script)):
        assert loss_a == pytest.approx(loss_b, rel=1e-6)
        a, b = torch.tensor(grad_a), torch.tensor(grad_b)
        # A few float32 ulp of each element; sigmoid(x) - y cancels, so also of the largest.
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


def test_pcmepp_style_training_step_matches_the_reference():
    """With pairwise_distance, the gradients reach the means and log-variances as torch's do."""
    leaves = [t.requires_grad_() for t in (*gaussians(9, 6, seed=1), *gaussians(9, 6, seed=2))]
    loss = pcmekit.distance_bce_with_logits(pcmekit.pairwise_distance(*leaves, metric="csd"))
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref = reference.pcmepp_style_loss(reference.pairwise_distance_naive(*ref_leaves, "csd"))
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_opcheck():
    d = _distances(6, 4).requires_grad_()
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    op = torch.ops.pcmekit.distance_bce_with_logits.default
    torch.library.opcheck(op, (d, None, s, t, True))
    torch.library.opcheck(op, (d, _soft_target(6, 4), s, t, False))


def test_torch_compile_fullgraph():
    leaves = [t.float().requires_grad_() for t in (*gaussians(12, 8, seed=3), *gaussians(12, 8, seed=4))]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(am, al, bm, bl):
        return pcmekit.distance_bce_with_logits(pcmekit.pairwise_distance(am, al, bm, bl, metric="csd"))

    loss = step(*leaves)
    loss.backward()
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref = reference.pcmepp_style_loss(reference.pairwise_distance_naive(*ref_leaves, "csd"))
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda d: pcmekit.distance_bce_with_logits(d.numpy()), TypeError, "distance must be a torch.Tensor"),
        (lambda d: pcmekit.distance_bce_with_logits(d.long()), TypeError, "distance must be floating point"),
        (lambda d: pcmekit.distance_bce_with_logits(d[0]), ValueError, r"distance must be 2-D \[N, M\], got shape \(4,\)"),
        (lambda d: pcmekit.distance_bce_with_logits(d, torch.eye(4)), ValueError, r"target must have the distance's shape \(3, 4\), got \(4, 4\)"),
        (lambda d: pcmekit.distance_bce_with_logits(d, torch.zeros(3, 4, requires_grad=True)), ValueError, "target requires grad"),
        (lambda d: pcmekit.distance_bce_with_logits(d, reduction="none"), ValueError, r"reduction must be one of \('mean', 'sum'\), got 'none'"),
        (lambda d: pcmekit.distance_bce_with_logits(d, scale="5"), TypeError, "scale must be a number or a one-element tensor, got str"),
        (lambda d: pcmekit.distance_bce_with_logits(d, shift=torch.ones(2)), ValueError, r"shift must be a number or a one-element tensor, got shape \(2,\)"),
        (lambda d: pcmekit.distance_bce_with_logits(d, scale=float("inf")), ValueError, "scale must be finite, got inf"),
        (lambda d: pcmekit.distance_bce_with_logits(d, shift=float("nan")), ValueError, "shift must be finite, got nan"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.rand(3, 4))


def test_op_outputs_and_the_empty_mean():
    """The op's four outputs (loss and the gradients it formed for an upstream 1) equal torch's
    composite in float64; a mean over no pairs is NaN, as torch's. (CUDA tensors run the same
    formulas in cuda/bce.cu: tests/test_cuda_emu_bce.py.)"""
    from pcmekit.losses.bce import _bce_op

    distance = _distances(37, 29)
    s = torch.tensor(4.0, dtype=torch.float64)
    t = torch.tensor(6.0, dtype=torch.float64)
    for target, mean in ((None, True), (_soft_target(37, 29), False)):
        loss, grad, g_scale, g_shift = _bce_op(distance, target, s, t, mean)
        truth = _torch_loss_and_grads(distance, target, 4.0, 6.0, "mean" if mean else "sum")
        for a, b in zip((loss, grad, g_scale, g_shift), truth):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert torch.isnan(_bce_op(empty, None, s, t, True)[0])


def test_kernel_may_overwrite_the_distance_with_its_gradient():
    """_C.distance_bce accepts grad == distance (one buffer; bce.h)."""
    from pcmekit import _C
    from pcmekit._core import matrix_view

    for n in (5, 40, 67):  # remainders of the 8- and 32-wide blocks
        distance = _distances(7, n, dtype=torch.float32)
        grad = torch.empty_like(distance)
        expected = _C.distance_bce(matrix_view(distance), None, matrix_view(grad), 5.0, 5.0, True, 2)
        in_place = distance.clone()
        got = _C.distance_bce(matrix_view(in_place), None, matrix_view(in_place), 5.0, 5.0, True, 2)
        assert got == expected
        assert torch.equal(in_place, grad)


# ------------------------------------------------------------------------------------------------
# pairwise_bce_loss: distance and BCE in one op
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["csd", "l2", "w2", "kl", "elk"])
@pytest.mark.parametrize("shape", [(1, 1, 3), (9, 7, 6), (40, 33, 17)])
@pytest.mark.parametrize("soft", [False, True], ids=["identity", "soft-target"])
def test_pairwise_bce_loss_matches_the_two_step_reference(device, metric, shape, soft):
    n, m, d = shape
    a = [t.requires_grad_() for t in gaussians(n, d, seed=5, device=device)]
    b = [t.requires_grad_() for t in gaussians(m, d, seed=6, device=device)]
    s = torch.tensor(3.0, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor(2.0, dtype=torch.float64, device=device, requires_grad=True)
    target = _soft_target(n, m).to(device) if soft else None
    leaves = [*a, *b, s, t]
    loss = pcmekit.pairwise_bce_loss(tuple(a), tuple(b), target, metric=metric, scale=s, shift=t, reduction="sum")
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)  # l2 leaves the logvars out
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    distance = reference.pairwise_distance_naive(*ref_leaves[:4], metric)
    y = torch.eye(n, m, dtype=torch.float64, device=device) if target is None else target
    ref = F.binary_cross_entropy_with_logits(-ref_leaves[4] * distance + ref_leaves[5], y, reduction="sum")
    ref_grads = torch.autograd.grad(ref, ref_leaves, allow_unused=True)
    torch.testing.assert_close(loss, ref)
    for mine, theirs in zip(grads, ref_grads):
        if theirs is None or mine is None:
            assert metric == "l2" and (mine is None or not mine.any())
            continue
        torch.testing.assert_close(mine, theirs)


def test_pairwise_bce_loss_float32_step_and_probembedding_form():
    a = pcmekit.ProbEmbedding(*(x.float() for x in gaussians(65, 40, seed=1)))
    b = pcmekit.ProbEmbedding(*(x.float() for x in gaussians(65, 40, seed=2)))
    leaves = [a.mean.requires_grad_(), a.logvar.requires_grad_(), b.mean.requires_grad_(), b.logvar.requires_grad_()]
    loss = pcmekit.pairwise_bce_loss(a, b)
    grads = torch.autograd.grad(loss * 3.0, leaves)  # an upstream gradient other than 1
    two_step = pcmekit.distance_bce_with_logits(pcmekit.pairwise_distance(*leaves, metric="csd"))
    ref_grads = torch.autograd.grad(two_step * 3.0, leaves)
    assert torch.equal(loss, two_step)  # the same kernels, the same order
    for mine, theirs in zip(grads, ref_grads):
        # The upstream 3 scales the gradients here and G there: a rounding apart, relative to
        # the largest element (2 (mu s - G mu') cancels in places).
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6 * theirs.abs().max().item())


def test_pairwise_bce_loss_gradcheck_float64():
    leaves = [t.requires_grad_() for t in (*gaussians(5, 3, seed=7), *gaussians(4, 3, seed=8))]
    s = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    target = _soft_target(5, 4)
    assert torch.autograd.gradcheck(
        lambda am, al, bm, bl, s, t: pcmekit.pairwise_bce_loss((am, al), (bm, bl), target, scale=s, shift=t),
        (*leaves, s, t),
    )


def test_pairwise_bce_loss_empty_and_non_contiguous():
    a = gaussians(0, 4, seed=1)
    b = gaussians(3, 4, seed=2)
    assert torch.isnan(pcmekit.pairwise_bce_loss(a, b))
    assert pcmekit.pairwise_bce_loss(a, b, reduction="sum").item() == 0.0
    wide_a = gaussians(6, 10, seed=3)
    wide_b = gaussians(5, 10, seed=4)
    strided = [x[:, ::2] for x in (*wide_a, *wide_b)]
    dense = [x.contiguous() for x in strided]
    torch.testing.assert_close(
        pcmekit.pairwise_bce_loss(strided[:2], strided[2:]), pcmekit.pairwise_bce_loss(dense[:2], dense[2:]), rtol=0, atol=0
    )


def test_pairwise_bce_loss_opcheck_and_compile():
    leaves = [t.requires_grad_() for t in (*gaussians(6, 4, seed=1), *gaussians(5, 4, seed=2))]
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    op = torch.ops.pcmekit.pairwise_bce_with_logits.default
    torch.library.opcheck(op, (*leaves, None, s, t, "csd", True))
    torch.library.opcheck(op, (*leaves, _soft_target(6, 5), s, t, "w2", False))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(am, al, bm, bl):
        return pcmekit.pairwise_bce_loss((am, al), (bm, bl))

    loss = step(*leaves)
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [x.detach().clone().requires_grad_() for x in leaves]
    ref = reference.pcmepp_style_loss(reference.pairwise_distance_naive(*ref_leaves, "csd"))
    torch.testing.assert_close(loss, ref)
    for mine, theirs in zip(grads, torch.autograd.grad(ref, ref_leaves)):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda a, b: pcmekit.pairwise_bce_loss(a[0], b), TypeError, "a must be a ProbEmbedding or a \\(mean, logvar\\) pair, got Tensor"),
        (lambda a, b: pcmekit.pairwise_bce_loss(a, (b[0][:, :2], b[1][:, :2])), ValueError, "b_mean must have shape \\[M, D\\] with D == a_mean's D"),
        (lambda a, b: pcmekit.pairwise_bce_loss(a, b, metric="cosine"), ValueError, "metric must be one of"),
        (lambda a, b: pcmekit.pairwise_bce_loss((a[0], None), b), ValueError, "metric 'csd' needs a_logvar and b_logvar"),
        (lambda a, b: pcmekit.pairwise_bce_loss(a, b, torch.eye(3)), ValueError, r"target must have the distance's shape \(3, 4\), got \(3, 3\)"),
        (lambda a, b: pcmekit.pairwise_bce_loss(tuple(x.numpy() for x in a), tuple(x.numpy() for x in b)), TypeError, "takes torch tensors"),
        (lambda a, b: pcmekit.pairwise_bce_loss(a, b, reduction="none"), ValueError, "reduction must be one of"),
        (lambda a, b: pcmekit.pairwise_bce_loss(a, b, scale=None), TypeError, "scale must be a number"),
    ],
)
def test_pairwise_bce_loss_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(gaussians(3, 5, seed=1), gaussians(4, 5, seed=2))


def test_pairwise_bce_loss_upstream_gradient_scales_the_gradients():
    # The backward skips its multiply when the upstream gradient is exactly 1 (ops/bce.py,
    # _is_one): any other upstream gradient must still scale every gradient, bit for bit as
    # multiplying the unit-gradient result.
    leaves = [t.requires_grad_() for t in (*gaussians(7, 5, seed=3), *gaussians(6, 5, seed=4))]
    s = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    unit = torch.autograd.grad(pcmekit.pairwise_bce_loss((leaves[0], leaves[1]), (leaves[2], leaves[3]), scale=s),
                               [*leaves, s])
    for factor in (3.0, -0.25, 0.0):
        loss = pcmekit.pairwise_bce_loss((leaves[0], leaves[1]), (leaves[2], leaves[3]), scale=s)
        scaled = torch.autograd.grad(loss * factor, [*leaves, s])
        for mine, base in zip(scaled, unit):
            assert torch.equal(mine, base * factor), factor
    # The loss beside another use of the same leaves: only the loss's output carries a gradient.
    loss = pcmekit.pairwise_bce_loss((leaves[0], leaves[1]), (leaves[2], leaves[3]), scale=s)
    both = torch.autograd.grad(loss + leaves[0].sum(), leaves[0])[0]
    torch.testing.assert_close(both, unit[0] + 1, rtol=0, atol=1e-15)
