"""pcmekit.losses' ProLIP losses (PPCL, inclusion, VIB, all three) against the pure-PyTorch oracles
of pcmekit.reference (docs/design.md, "The losses"), gradcheck, and argument checking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pcmekit
from pcmekit import ProbEmbedding
from pcmekit.losses import InclusionLoss, PPCLLoss, ProLIPLoss, ProLIPVIBLoss, inclusion_logits
from pcmekit.losses.pcmepp import vib_kl
from pcmekit.reference import (
    inclusion_logit_naive,
    inclusion_loss_reference,
    ppcl_loss_reference,
    ppcl_prolip_form_reference,
    prolip_loss_reference,
    prolip_vib_reference,
)

from _helpers import gaussians


def embeddings(b_img, b_txt, d, *, dtype=torch.float64, seed=0, spread=0.4):
    im, il = gaussians(b_img, d, dtype=dtype, seed=seed, spread=spread)
    tm, tl = gaussians(b_txt, d, dtype=dtype, seed=seed + 100, spread=spread)
    return [im, il, tm, tl]


def duplicates(b):
    m = torch.eye(b, dtype=torch.float64)
    m[:3, :3] = 1
    return m


def rectangular(b_img, b_txt, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b_img, b_txt, generator=g, dtype=torch.float64) > 0.7).double()


MATCHED = {
    "identity": lambda: (None, 9, 9),
    "duplicates": lambda: (duplicates(9), 9, 9),
    "rectangular": lambda: (rectangular(5, 12, seed=3), 5, 12),
}


def leaves_of(inputs, device="cpu"):
    return [t.detach().clone().to(device).requires_grad_() for t in inputs]


# ---------------------------------------------------------------------------------------------
# PPCL


def run_ppcl(inputs, matched, scale, bias, device="cpu"):
    loss_fn = PPCLLoss(init_scale=scale, init_bias=bias).to(device=device, dtype=inputs[0].dtype)
    with torch.no_grad():  # the float32 constructor rounded them; compare at the exact values
        loss_fn.scale.fill_(scale)
        loss_fn.bias.fill_(bias)
    x = leaves_of(inputs, device)
    m = None if matched is None else matched.to(device)
    loss, parts = loss_fn(ProbEmbedding(x[0], x[1]), ProbEmbedding(x[2], x[3]), m)
    loss.backward()
    grads = [t.grad.cpu() for t in x] + [loss_fn.scale.grad.cpu(), loss_fn.bias.grad.cpu()]
    return loss.detach().cpu(), parts, grads


def run_ppcl_reference(inputs, matched, scale, bias):
    s = torch.tensor(float(scale), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(float(bias), dtype=torch.float64, requires_grad=True)
    x = leaves_of([t.double().cpu() for t in inputs])
    loss = ppcl_loss_reference(*x, s, b, matched)
    loss.backward()
    return loss.detach(), [t.grad for t in x] + [s.grad, b.grad]


@pytest.mark.parametrize("kind", list(MATCHED))
@pytest.mark.parametrize("scale,bias", [(5.0, 0.0), (0.7, -2.0), (12.0, 30.0)])
def test_ppcl_matches_reference(kind, scale, bias, device):
    matched, b_img, b_txt = MATCHED[kind]()
    inputs = embeddings(b_img, b_txt, 6, seed=1)
    loss, parts, grads = run_ppcl(inputs, matched, scale, bias, device)
    ref, ref_grads = run_ppcl_reference(inputs, matched, scale, bias)
    torch.testing.assert_close(loss, ref, rtol=1e-11, atol=0)
    torch.testing.assert_close(parts["ppcl"].cpu(), ref, rtol=1e-11, atol=0)
    assert parts["scale"].item() == scale and parts["bias"].item() == bias
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12 * max(1.0, r.abs().max().item()))


def test_ppcl_equals_prolip_parametrisation_on_unit_means():
    # ProLIP: s (mu_i . mu_t - sum var / 2) + b on L2-normalised means, s = 10, b = -10 at the
    # start; the CSD form with scale = s / 2, bias = b + s is the same function of the raw
    # (pre-normalisation) means and of the log-variances, so values and gradients agree.
    raw = embeddings(10, 10, 7, seed=4)
    for s, b in ((10.0, -10.0), (3.0, 1.5)):
        x = leaves_of(raw)
        ours, _ = PPCLLoss(init_scale=s / 2, init_bias=b + s).double()(
            ProbEmbedding(F.normalize(x[0], dim=1), x[1]), ProbEmbedding(F.normalize(x[2], dim=1), x[3])
        )
        ours.backward()
        y = leaves_of(raw)
        theirs = ppcl_prolip_form_reference(F.normalize(y[0], dim=1), y[1], F.normalize(y[2], dim=1), y[3], s, b)
        theirs.backward()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        for g, r in zip(x, y):
            torch.testing.assert_close(g.grad, r.grad, rtol=1e-10, atol=1e-13)
    assert PPCLLoss().scale.item() == 5.0 and PPCLLoss().bias.item() == 0.0  # = ProLIP's (10, -10)


def test_ppcl_is_siglip_sum_over_pairs_divided_by_b_img():
    # By hand, on a 2 x 3 batch: sum of -log sigmoid(+-logit) over the 6 pairs, / B_img = 2.
    inputs = embeddings(2, 3, 4, seed=5)
    matched = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    csd = pcmekit.pairwise_distance(*inputs, metric="csd")
    logits = -1.5 * csd + 0.5
    expected = sum(
        -F.logsigmoid((1 if matched[i, j] else -1) * logits[i, j]) for i in range(2) for j in range(3)
    ) / 2
    loss, _ = PPCLLoss(1.5, 0.5).double()(ProbEmbedding(*inputs[:2]), ProbEmbedding(*inputs[2:]), matched)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_ppcl_gradcheck():
    inputs = [t.requires_grad_() for t in embeddings(4, 5, 3, seed=6)]
    matched = rectangular(4, 5, seed=2)
    loss_fn = PPCLLoss().double()
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)

    def f(im, il, tm, tl, s, b):
        args = (ProbEmbedding(im, il), ProbEmbedding(tm, tl), matched)
        return torch.func.functional_call(loss_fn, {"scale": s, "bias": b}, args)[0]

    assert torch.autograd.gradcheck(f, inputs + [scale, bias], eps=1e-6, atol=1e-7)


def test_ppcl_float32_close_to_float64(device):
    inputs = embeddings(64, 64, 32, seed=7, spread=0.2)
    loss32, _, grads32 = run_ppcl([t.float() for t in inputs], None, 5.0, 0.0, device)
    loss64, grads64 = run_ppcl_reference(inputs, None, 5.0, 0.0)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=0)
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4 * g64.abs().max().item())


# ---------------------------------------------------------------------------------------------
# Inclusion


def masked_of(inputs, n, seed):
    """Masked versions of the first n rows: the same means moved a little, larger variances."""
    g = torch.Generator().manual_seed(seed)
    mean = inputs[0][:n] + 0.05 * torch.randn(n, inputs[0].shape[1], generator=g, dtype=torch.float64)
    logvar = inputs[1][:n] + 0.3 + 0.2 * torch.randn(n, inputs[0].shape[1], generator=g, dtype=torch.float64)
    return [mean.to(inputs[0].dtype), logvar.to(inputs[0].dtype)]


def run_inclusion(inputs, matched, masked_img, masked_txt, device="cpu", **kwargs):
    x = leaves_of(inputs, device)
    mi = leaves_of(masked_img, device) if masked_img is not None else None
    mt = leaves_of(masked_txt, device) if masked_txt is not None else None
    loss, parts = InclusionLoss(**kwargs)(
        ProbEmbedding(x[0], x[1]),
        ProbEmbedding(x[2], x[3]),
        None if matched is None else matched.to(device),
        masked_img=None if mi is None else ProbEmbedding(*mi),
        masked_txt=None if mt is None else ProbEmbedding(*mt),
    )
    loss.backward()
    grads = [t.grad.cpu() if t.grad is not None else torch.zeros_like(t).cpu() for t in x + (mi or []) + (mt or [])]
    return loss.detach().cpu(), {k: v.cpu() for k, v in parts.items()}, grads


def run_inclusion_reference(inputs, matched, masked_img, masked_txt, **kwargs):
    x = leaves_of([t.double() for t in inputs])
    mi = leaves_of([t.double() for t in masked_img]) if masked_img is not None else None
    mt = leaves_of([t.double() for t in masked_txt]) if masked_txt is not None else None
    loss, parts = inclusion_loss_reference(*x, matched, masked_img=mi, masked_txt=mt, **kwargs)
    if loss.requires_grad:
        loss.backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in x + (mi or []) + (mt or [])]
    return loss.detach(), parts, grads


INCLUSION_SETTINGS = {
    "prolip": dict(),
    "weights-1": dict(image_text_weight=1.0, masked_weight=1.0),
    "eps0-scale10": dict(image_text_weight=0.5, masked_weight=2.0, eps=0.0, scale=10.0),
    "longprolip": dict(image_text_weight=1.0, masked_weight=1.0, eps=-100.0, scale=10.0),
}


@pytest.mark.parametrize("kind", list(MATCHED))
@pytest.mark.parametrize("setting", list(INCLUSION_SETTINGS))
def test_inclusion_matches_reference(kind, setting, device):
    matched, b_img, b_txt = MATCHED[kind]()
    inputs = embeddings(b_img, b_txt, 6, seed=2)
    masked_img, masked_txt = masked_of(inputs, 3, seed=1), masked_of(inputs[2:], 4, seed=2)
    kwargs = INCLUSION_SETTINGS[setting]
    loss, parts, grads = run_inclusion(inputs, matched, masked_img, masked_txt, device, **kwargs)
    ref, ref_parts, ref_grads = run_inclusion_reference(inputs, matched, masked_img, masked_txt, **kwargs)
    torch.testing.assert_close(loss, ref, rtol=1e-11, atol=0)
    for key in ("img_in_txt", "img_in_masked", "txt_in_masked", "dropped"):
        torch.testing.assert_close(parts[key], ref_parts[key].to(parts[key].dtype), rtol=1e-11, atol=0)
    assert parts["img_in_txt"] > 0 and parts["img_in_masked"] > 0 and parts["txt_in_masked"] > 0
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * max(1.0, r.abs().max().item()))


def test_inclusion_absent_masked_inputs_give_zero_terms():
    inputs = embeddings(5, 5, 4, seed=3)
    loss, parts, _ = run_inclusion(inputs, None, None, None, image_text_weight=1.0)
    ref, _, _ = run_inclusion_reference(inputs, None, None, None, image_text_weight=1.0)
    assert parts["img_in_masked"] == 0 and parts["txt_in_masked"] == 0
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, parts["img_in_txt"], rtol=1e-12, atol=0)


def test_inclusion_logits_match_prolip_form_and_the_metric():
    # The rewritten logit equals ProLIP's literal quadratic form at every eps, and at eps = 0 its
    # sum over the dimensions is minus the `inclusion` metric of the pair.
    mu1, lv1 = gaussians(7, 9, seed=4)
    mu2, lv2 = gaussians(7, 9, seed=5)
    for eps in (-10.0, -3.0, 0.0, 2.0):
        torch.testing.assert_close(
            inclusion_logits(mu1, lv1, mu2, lv2, eps), inclusion_logit_naive(mu1, lv1, mu2, lv2, eps),
            rtol=1e-11, atol=1e-11,
        )
    metric = pcmekit.pairwise_distance(mu1, lv1, mu2, lv2, metric="inclusion")
    torch.testing.assert_close(-inclusion_logits(mu1, lv1, mu2, lv2, 0.0).sum(1), metric.diagonal(), rtol=1e-12, atol=1e-12)
    # eps only scales the mean difference: eps = e is eps = 0 on means scaled by exp(e / 2).
    c = torch.exp(torch.tensor(-10.0 / 2, dtype=torch.float64))
    scaled = pcmekit.pairwise_distance(c * mu1, lv1, c * mu2, lv2, metric="inclusion")
    torch.testing.assert_close(-inclusion_logits(mu1, lv1, mu2, lv2, -10.0).sum(1), scaled.diagonal(), rtol=1e-12, atol=1e-12)


def test_inclusion_prefers_image_inside_caption():
    # A narrow image inside a wide caption at the same place costs (almost) nothing; the reverse
    # costs a lot.
    mean = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    narrow, wide = torch.full_like(mean, -3.0), torch.full_like(mean, 0.0)
    loss_fn = InclusionLoss(image_text_weight=1.0, scale=10.0)
    inside, _ = loss_fn(ProbEmbedding(mean, narrow), ProbEmbedding(mean, wide))
    outside, _ = loss_fn(ProbEmbedding(mean, wide), ProbEmbedding(mean, narrow))
    assert inside < 1e-6 < 10.0 < outside


def test_inclusion_gradcheck():
    inputs = [t.requires_grad_() for t in embeddings(4, 4, 3, seed=7)]
    masked = [t.detach().requires_grad_() for t in masked_of(inputs, 2, seed=3)]
    loss_fn = InclusionLoss(image_text_weight=0.7, masked_weight=1.3, eps=-1.0, scale=3.0)

    def f(im, il, tm, tl, mm, ml):
        return loss_fn(ProbEmbedding(im, il), ProbEmbedding(tm, tl), masked_img=ProbEmbedding(mm, ml),
                       masked_txt=ProbEmbedding(mm, ml))[0]

    assert torch.autograd.gradcheck(f, inputs + masked, eps=1e-6, atol=1e-7)


def test_inclusion_explosion_rule():
    # An image logvar of 10 against captions of -100: l ~ -110 per dimension, softplus(1000 * 110)
    # > 1e5, so ProLIP's guard drops the image-caption term (0 and no gradient); masked terms stay.
    mean, _ = gaussians(3, 4, seed=8)
    img = ProbEmbedding(mean.clone().requires_grad_(), torch.full((3, 4), 10.0, dtype=torch.float64, requires_grad=True))
    txt = ProbEmbedding(mean.clone(), torch.full((3, 4), -100.0, dtype=torch.float64))
    masked = ProbEmbedding(mean[:2].clone(), torch.full((2, 4), 9.99, dtype=torch.float64))  # l ~ -0.01
    loss, parts = InclusionLoss()(img, txt, masked_img=masked)
    ref, ref_parts = inclusion_loss_reference(img.mean, img.logvar, txt.mean, txt.logvar, masked_img=(masked.mean, masked.logvar))
    assert parts["dropped"].item() == 1 == ref_parts["dropped"].item()
    assert parts["img_in_txt"] > 1e5 and 1 < parts["img_in_masked"] < 100
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, 1e-3 * parts["img_in_masked"], rtol=1e-12, atol=0)
    loss.backward()
    assert torch.isfinite(img.logvar.grad).all() and img.logvar.grad[2].abs().max() == 0  # row 2: image-caption only


def test_inclusion_float32_close_to_float64(device):
    inputs = embeddings(64, 64, 32, seed=9)
    masked = masked_of(inputs, 16, seed=4)
    kwargs = dict(image_text_weight=1.0, masked_weight=1.0)
    loss32, _, grads32 = run_inclusion([t.float() for t in inputs], None, [t.float() for t in masked], None, device, **kwargs)
    loss64, _, grads64 = run_inclusion_reference(inputs, None, masked, None, **kwargs)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=0)
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4 * g64.abs().max().item())


# ---------------------------------------------------------------------------------------------
# VIB


@pytest.mark.parametrize("weight", [1e-4, 0.3])
def test_prolip_vib_matches_reference(weight, device):
    inputs = embeddings(6, 6, 5, seed=10)
    x = leaves_of(inputs, device)
    loss, parts = ProLIPVIBLoss(weight)(ProbEmbedding(x[0], x[1]), ProbEmbedding(x[2], x[3]))
    loss.backward()
    y = leaves_of(inputs)
    ref, ref_parts = prolip_vib_reference(*y, weight)
    ref.backward()
    torch.testing.assert_close(loss.cpu(), ref, rtol=1e-12, atol=0)
    for key in ("vib", "kl_img", "kl_txt", "vib_dropped"):
        torch.testing.assert_close(parts[key].cpu(), ref_parts[key].to(parts[key].dtype), rtol=1e-12, atol=0)
    for g, r in zip(x, y):
        torch.testing.assert_close(g.grad.cpu(), r.grad, rtol=1e-11, atol=1e-16)


def test_prolip_vib_is_pcmepp_kl_at_half_the_logvar():
    # The one difference from PCME++'s VIB: sigma where PCME++ has sigma^2. Same minimum at
    # (0, 0); a different value (and pull) elsewhere.
    mean, logvar = gaussians(5, 6, seed=11)
    img = ProbEmbedding(mean, logvar)
    _, parts = ProLIPVIBLoss(1.0)(img, img)
    torch.testing.assert_close(parts["kl_img"], vib_kl(mean, logvar / 2), rtol=1e-14, atol=0)
    assert abs(parts["kl_img"].item() - vib_kl(mean, logvar).item()) > 1e-3
    zero = torch.zeros(3, 4, dtype=torch.float64)
    assert ProLIPVIBLoss(1.0)(ProbEmbedding(zero, zero), ProbEmbedding(zero, zero))[0].item() == 0.0


def test_prolip_vib_explosion_rule():
    mean, _ = gaussians(3, 4, seed=12)
    big = ProbEmbedding(mean, torch.full((3, 4), 30.0, dtype=torch.float64))  # exp(15) / 2 >> 1e4
    fine = ProbEmbedding(mean, torch.zeros(3, 4, dtype=torch.float64))
    loss, parts = ProLIPVIBLoss(1.0)(big, fine)
    ref, ref_parts = prolip_vib_reference(big.mean, big.logvar, fine.mean, fine.logvar, 1.0)
    assert parts["vib_dropped"].item() == 1 == ref_parts["vib_dropped"].item() and parts["kl_img"] > 1e4
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, parts["kl_txt"], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# All three


def test_prolip_loss_is_the_sum_of_its_terms():
    inputs = embeddings(9, 9, 6, seed=13)
    masked_img, masked_txt = masked_of(inputs, 3, seed=5), masked_of(inputs[2:], 3, seed=6)
    x = leaves_of(inputs)
    loss_fn = ProLIPLoss(ppcl_weight=0.8, vib_weight=0.01, inclusion_weight=0.1, masked_inclusion_weight=0.2).double()
    loss, parts = loss_fn(ProbEmbedding(x[0], x[1]), ProbEmbedding(x[2], x[3]), duplicates(9),
                          masked_img=ProbEmbedding(*masked_img), masked_txt=ProbEmbedding(*masked_txt))
    loss.backward()
    y = leaves_of(inputs)
    ref = prolip_loss_reference(*y, 5.0, 0.0, duplicates(9), masked_img=masked_img, masked_txt=masked_txt,
                                ppcl_weight=0.8, vib_weight=0.01, inclusion_weight=0.1, masked_inclusion_weight=0.2)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-11, atol=0)
    for g, r in zip(x, y):
        torch.testing.assert_close(g.grad, r.grad, rtol=1e-9, atol=1e-12)
    assert {"ppcl", "scale", "bias", "img_in_txt", "img_in_masked", "txt_in_masked", "dropped", "vib", "kl_img",
            "kl_txt", "vib_dropped"} == set(parts)
    assert {n for n, _ in loss_fn.named_parameters()} == {"ppcl.scale", "ppcl.bias"}


# ---------------------------------------------------------------------------------------------
# Bad input


def emb(b, d=3, dtype=torch.float32):
    return ProbEmbedding(torch.randn(b, d, dtype=dtype), torch.randn(b, d, dtype=dtype))


@pytest.mark.parametrize("loss_cls", [PPCLLoss, InclusionLoss, ProLIPVIBLoss, ProLIPLoss])
@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda: (emb(4), emb(5), None), ValueError, "B_img must equal B_txt; got B_img=4, B_txt=5"),
        (lambda: (emb(4, 3), emb(4, 5), None), ValueError, r"txt.mean must have shape \[B_txt, D\] with D == img.mean's D \(3\), got \[4, 5\]"),
        (lambda: (emb(4), emb(4, dtype=torch.float64), None), TypeError, "txt has dtype torch.float64 but img has torch.float32"),
        (lambda: (torch.randn(4, 3), emb(4), None), TypeError, "img must be a pcmekit.ProbEmbedding, got Tensor"),
        (lambda: (emb(4), emb(4), torch.eye(3)), ValueError, r"matched must have shape \[B_img, B_txt\] = \[4, 4\], got \[3, 3\]"),
        (lambda: (emb(0), emb(0), None), ValueError, "at least one image and one caption"),
    ],
)
def test_losses_reject_bad_input(loss_cls, make, error, pattern):
    img, txt, matched = make()
    with pytest.raises(error, match=pattern):
        loss_cls()(img, txt, matched)


@pytest.mark.parametrize("loss_cls", [PPCLLoss, InclusionLoss, ProLIPVIBLoss, ProLIPLoss])
def test_errors_name_the_loss_called(loss_cls):
    with pytest.raises(ValueError, match=rf"^{loss_cls.__name__}: without `matched`"):
        loss_cls()(emb(4), emb(5))
    with pytest.raises(ValueError, match=rf"^{loss_cls.__name__} needs at least one image"):
        loss_cls()(emb(0), emb(0))


@pytest.mark.parametrize(
    "masked,error,pattern",
    [
        (emb(2, 5), ValueError, r"masked_img.mean must have shape \[n, D\] with n <= 4 and D == 3, got \[2, 5\]"),
        (emb(6), ValueError, r"masked_img.mean must have shape \[n, D\] with n <= 4 and D == 3, got \[6, 3\]"),
        (torch.randn(2, 3), TypeError, "masked_img must be a pcmekit.ProbEmbedding, got Tensor"),
    ],
)
def test_inclusion_rejects_bad_masked_input(masked, error, pattern):
    with pytest.raises(error, match=pattern):
        InclusionLoss()(emb(4), emb(4), masked_img=masked)


@pytest.mark.parametrize(
    "loss_cls,kwargs,error,pattern",
    [
        (PPCLLoss, dict(init_scale=0.0), ValueError, "init_scale must be > 0, got 0.0"),
        (PPCLLoss, dict(init_bias=float("nan")), ValueError, "init_bias must be finite"),
        (PPCLLoss, dict(gather=1), TypeError, "gather must be a bool, got int"),
        (InclusionLoss, dict(scale=-1.0), ValueError, "scale must be > 0"),
        (InclusionLoss, dict(masked_weight=-1e-3), ValueError, "masked_weight must be >= 0"),
        (InclusionLoss, dict(eps="-10"), TypeError, "eps must be a real number, got str"),
        (ProLIPVIBLoss, dict(weight=-1.0), ValueError, "weight must be >= 0"),
        (ProLIPLoss, dict(ppcl_weight=None), TypeError, "ppcl_weight must be a real number, got NoneType"),
    ],
)
def test_bad_constructor_arguments(loss_cls, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        loss_cls(**kwargs)


def test_ppcl_gather_without_process_group_raises():
    with pytest.raises(RuntimeError, match=r"gather=True\) needs an initialised torch.distributed process group"):
        PPCLLoss(gather=True)(emb(3), emb(3))
