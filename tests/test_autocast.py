"""torch.autocast with pcmekit's ops (docs/design.md, "Autocast"): they compute in float32.

Under autocast a model's outputs arrive in the autocast dtype (here CPU bfloat16, the CPU's
autocast default), and the two sides of a pairwise op may differ (one tower in bfloat16, a cached
gallery in float32). Without a rule the ops refused them (16-bit tensors on the CPU, mixed
dtypes). The rule, the one torch applies to its own cdist and binary_cross_entropy_with_logits:
16-bit floating inputs are cast to float32, float32 and float64 pass unchanged, and the op runs
as it would on those float32 values, its result float32; gradients flow back to the 16-bit
inputs in their dtype. Each check below compares with the same op called outside autocast on the
float32 copies, which must give the same bits.
"""

from __future__ import annotations

import pytest
import torch

import pcmekit
from _helpers import METRICS, gaussians

BF16 = torch.bfloat16


def pair(n=6, m=9, d=8, seed=0):
    a_mu, a_lv = gaussians(n, d, seed=seed, dtype=torch.float32)
    b_mu, b_lv = gaussians(m, d, seed=seed + 1, dtype=torch.float32)
    return a_mu, a_lv, b_mu, b_lv


def autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_bf16_inputs_run_in_float32(metric):
    a_mu, a_lv, b_mu, b_lv = pair()
    a16 = a_mu.to(BF16).requires_grad_()
    with autocast():
        got = pcmekit.pairwise_distance(a16, a_lv.to(BF16), b_mu, b_lv, metric=metric)
    want = pcmekit.pairwise_distance(a16.detach().float(), a_lv.to(BF16).float(), b_mu, b_lv, metric=metric)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    got.sum().backward()
    assert a16.grad is not None and a16.grad.dtype == BF16


def test_direct_custom_op_calls_follow_the_same_rule():
    """torch.ops.pcmekit.* (what a compiled graph calls) go through torch.library's autocast
    registration, which skips the public functions' cast."""
    a_mu, a_lv, b_mu, b_lv = (t.to(BF16) for t in pair())
    with autocast():
        got = torch.ops.pcmekit.pairwise_distance(a_mu, a_lv, b_mu, b_lv, "csd")
        loss = torch.ops.pcmekit.pairwise_bce_with_logits(
            a_mu, a_lv, b_mu[:6], b_lv[:6], None, torch.tensor(5.0), torch.tensor(5.0), "csd", True
        )[0]
    assert got.dtype == torch.float32 and loss.dtype == torch.float32
    want = pcmekit.pairwise_distance(a_mu.float(), a_lv.float(), b_mu.float(), b_lv.float())
    assert torch.equal(got, want)


def test_float64_and_float32_pass_unchanged():
    a_mu, a_lv, b_mu, b_lv = (t.double() for t in pair())
    with autocast():
        got = pcmekit.pairwise_distance(a_mu, a_lv, b_mu, b_lv)
        got32 = pcmekit.pairwise_distance(a_mu.float(), a_lv.float(), b_mu.float(), b_lv.float())
    assert got.dtype == torch.float64 and got32.dtype == torch.float32
    assert torch.equal(got, pcmekit.pairwise_distance(a_mu, a_lv, b_mu, b_lv))


def test_a_linear_layer_feeding_the_loss():
    """The case autocast is for: a bf16 projection feeding pcmekit's BCE, trained end to end."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 8)
    a_mu, a_lv, b_mu, b_lv = pair(n=6, m=6)
    scale = torch.tensor(5.0, requires_grad=True)
    shift = torch.tensor(5.0, requires_grad=True)
    with autocast():
        mu = proj(a_mu)
        assert mu.dtype == BF16
        loss = pcmekit.pairwise_bce_loss((mu, a_lv), (b_mu, b_lv), scale=scale, shift=shift)
    assert loss.dtype == torch.float32
    want = pcmekit.pairwise_bce_loss((mu.detach().float(), a_lv), (b_mu, b_lv), scale=5.0, shift=5.0)
    assert torch.equal(loss.detach(), want)
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()
    assert scale.grad is not None and shift.grad is not None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_distance_bce_with_bf16_distances_and_target(reduction):
    g = torch.Generator().manual_seed(3)
    d = (torch.rand(7, 5, generator=g) * 3).to(BF16).requires_grad_()
    target = torch.rand(7, 5, generator=g).to(BF16)
    with autocast():
        got = pcmekit.distance_bce_with_logits(d, target, scale=4.0, shift=5.0, reduction=reduction)
    want = pcmekit.distance_bce_with_logits(d.detach().float(), target.float(), scale=4.0, shift=5.0, reduction=reduction)
    assert got.dtype == torch.float32 and torch.equal(got.detach(), want)
    got.backward()
    assert d.grad is not None and d.grad.dtype == BF16


def test_match_prob_and_logprob():
    a_mu, a_lv, b_mu, b_lv = pair()
    eps_a = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(4))
    eps_b = torch.randn(9, 3, 8, generator=torch.Generator().manual_seed(5))
    args16 = [t.to(BF16) for t in (a_mu, a_lv, b_mu, b_lv)]
    kw = dict(scale=2.0, shift=1.0, num_samples=3, eps_a=eps_a.to(BF16), eps_b=eps_b)
    with autocast():
        p = pcmekit.match_prob(*args16, **kw)
        log_p, log_q = pcmekit.match_logprob(*args16, **kw)
    want = pcmekit.match_prob(*[t.float() for t in args16], **{**kw, "eps_a": eps_a.to(BF16).float()})
    assert p.dtype == torch.float32 and log_p.dtype == torch.float32 and log_q.dtype == torch.float32
    assert torch.equal(p, want)


def test_pcmepp_loss_under_autocast():
    torch.manual_seed(1)
    loss_fn = pcmekit.losses.PCMEPPLoss()
    a_mu, a_lv, b_mu, b_lv = pair(n=6, m=6)
    proj = torch.nn.Linear(8, 8)
    with autocast():
        img = pcmekit.ProbEmbedding(proj(a_mu), a_lv.to(BF16))
        txt = pcmekit.ProbEmbedding(b_mu, b_lv)
        out = loss_fn(img, txt)
    loss = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(proj.weight.grad).all()


@pytest.mark.parametrize("metric", ["csd", "l2", "match_prob"])
def test_topk_bf16_inputs_search_in_float32(metric):
    """Outside autocast the CPU refuses 16-bit inputs; under it they are searched as float32."""
    a_mu, a_lv, b_mu, b_lv = pair(n=5, m=40)
    kwargs = {}
    if metric == "match_prob":
        g = torch.Generator().manual_seed(4)
        kwargs = dict(scale=5.0, shift=2.0, num_samples=3, eps_q=torch.randn(5, 3, 8, generator=g).to(BF16),
                      eps_g=torch.randn(40, 3, 8, generator=g))
    q16 = a_mu.to(BF16)
    with pytest.raises(TypeError):
        pcmekit.topk(q16, a_lv, b_mu, b_lv, 4, metric=metric, **kwargs)
    with autocast():
        values, indices = pcmekit.topk(q16, a_lv.to(BF16), b_mu, b_lv, 4, metric=metric, **kwargs)
        direct = torch.ops.pcmekit.topk(q16, a_lv.to(BF16), b_mu, b_lv, kwargs.get("eps_q"), kwargs.get("eps_g"),
                                        4, metric, kwargs.get("scale", 0.0), kwargs.get("shift", 0.0), False)
    float_kwargs = {key: (v.float() if isinstance(v, torch.Tensor) else v) for key, v in kwargs.items()}
    want = pcmekit.topk(q16.float(), a_lv.to(BF16).float(), b_mu, b_lv, 4, metric=metric, **float_kwargs)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    for got in ((values, indices), direct):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
