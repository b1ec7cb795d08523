"""pcmekit.losses: PCMEPPLoss against the pure-PyTorch oracle, InfoNCE against a hand-written CLIP
loss, mix_images, and argument checking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pcmekit
from pcmekit import ProbEmbedding
from pcmekit.losses import InfoNCELoss, PCMEPPLoss, mix_images
from pcmekit.reference import pairwise_distance_naive
from pcmekit.reference_loss import pcmepp_loss_reference

from _helpers import gaussians

PARTS = ("bce", "vib", "pp", "kl_img", "kl_txt", "vib_dropped", "n_pseudo_positives", "scale", "shift")


def embeddings(b_img, b_txt, d, *, dtype=torch.float64, device="cpu", seed=0, spread=0.4):
    im, il = gaussians(b_img, d, dtype=dtype, device=device, seed=seed, spread=spread)
    tm, tl = gaussians(b_txt, d, dtype=dtype, device=device, seed=seed + 100, spread=spread)
    return im, il, tm, tl


def soft_matched(b, seed=0):
    """Mixed rows as mix_images makes them, plus one image mixed with itself (odd B)."""
    images = torch.randn(b, 1, 4, 4, dtype=torch.float64)
    return mix_images(images, batch_ratio=0.6, generator=torch.Generator().manual_seed(seed))[1]


def duplicate_matched(b):
    """Images 0, 1, 2 are one picture: each of their rows has three 1s."""
    m = torch.eye(b, dtype=torch.float64)
    m[:3, :3] = 1
    return m


def random_matched(b_img, b_txt, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b_img, b_txt, generator=g, dtype=torch.float64)
    return m * (m > 0.6)


MATCHED = {
    "identity": lambda: (None, 9, 9),
    "explicit-identity": lambda: (torch.eye(9, dtype=torch.float64), 9, 9),
    "soft-mix": lambda: (soft_matched(9), 9, 9),
    "duplicates": lambda: (duplicate_matched(9), 9, 9),
    "random-soft": lambda: (random_matched(9, 9), 9, 9),
    "rectangular": lambda: (random_matched(5, 12, seed=3), 5, 12),
}


def run_ours(inputs, matched, *, device="cpu", **kwargs):
    scale = kwargs.pop("scale", 5.0)
    shift = kwargs.pop("shift", 5.0)
    loss_fn = PCMEPPLoss(init_scale=scale, init_shift=shift, **kwargs).to(device=device, dtype=torch.float64)
    with torch.no_grad():  # the float32 parameters rounded 0.7; the oracle gets the exact value
        loss_fn.scale.fill_(scale)
        loss_fn.shift.fill_(shift)
    leaves = [t.detach().clone().to(device).requires_grad_() for t in inputs]
    m = None if matched is None else matched.to(device)
    loss, parts = loss_fn(ProbEmbedding(leaves[0], leaves[1]), ProbEmbedding(leaves[2], leaves[3]), m)
    loss.backward()
    grads = [t.grad.cpu() for t in leaves] + [loss_fn.scale.grad.cpu(), loss_fn.shift.grad.cpu()]
    return loss.detach().cpu(), {k: v.cpu() for k, v in parts.items()}, grads


def run_reference(inputs, matched, **kwargs):
    scale = torch.tensor(float(kwargs.pop("scale", 5.0)), dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(float(kwargs.pop("shift", 5.0)), dtype=torch.float64, requires_grad=True)
    leaves = [t.detach().clone().cpu().requires_grad_() for t in inputs]
    loss, parts = pcmepp_loss_reference(*leaves, scale, shift, matched, naive=True, **kwargs)
    loss.backward()
    return loss.detach(), parts, [t.grad for t in leaves] + [scale.grad, shift.grad]


def assert_matches_reference(inputs, matched, *, device="cpu", rtol=1e-10, atol=1e-12, **kwargs):
    loss, parts, grads = run_ours(inputs, matched, device=device, **dict(kwargs))
    ref_loss, ref_parts, ref_grads = run_reference(inputs, matched, **dict(kwargs))
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    assert set(parts) == set(PARTS) and set(ref_parts) == set(PARTS)
    for name in PARTS:
        torch.testing.assert_close(parts[name], ref_parts[name].to(parts[name].dtype), rtol=rtol, atol=atol, msg=name)
    names = ("img.mean", "img.logvar", "txt.mean", "txt.logvar", "scale", "shift")
    for name, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=f"gradient w.r.t. {name}")
    return parts


# ---------------------------------------------------------------------------------------------
# PCMEPPLoss against the oracle (float64, naive CSD)


@pytest.mark.parametrize("kind", list(MATCHED))
@pytest.mark.parametrize(
    "weights",
    [dict(), dict(vib_weight=0.5, pp_weight=0.7), dict(vib_weight=0.0, pp_weight=0.0), dict(vib_weight=0.3, pp_weight=0.0)],
    ids=["defaults", "heavy", "bce-only", "no-pp"],
)
def test_pcmepp_matches_reference(kind, weights, device):
    matched, b_img, b_txt = MATCHED[kind]()
    inputs = embeddings(b_img, b_txt, 6, device=device, seed=1)
    parts = assert_matches_reference(inputs, matched, device=device, **weights)
    if weights.get("pp_weight", 0.1):
        assert parts["n_pseudo_positives"] > 0  # the case exercises the pseudo-positive path


@pytest.mark.parametrize("scale,shift", [(5.0, 5.0), (0.7, -2.0), (23.0, 40.0)])
def test_pcmepp_scale_shift_values(scale, shift, device):
    # Different operating points: mostly-negative logits, mixed, and saturated positives.
    inputs = embeddings(11, 11, 4, device=device, seed=2)
    assert_matches_reference(inputs, soft_matched(11, seed=4), device=device, scale=scale, shift=shift, vib_weight=0.2, pp_weight=0.5)


def test_pcmepp_large_batch_and_odd_sizes(device):
    inputs = embeddings(257, 257, 17, device=device, seed=5, spread=0.15)
    assert_matches_reference(inputs, None, device=device, rtol=1e-9, atol=1e-11)
    inputs = embeddings(1, 1, 3, device=device, seed=6)
    assert_matches_reference(inputs, None, device=device)


def test_pcmepp_float32_close_to_float64(device):
    inputs = embeddings(64, 64, 32, device=device, seed=7, spread=0.2)
    loss32, parts32, grads32 = run_ours([t.float() for t in inputs], None, device=device)
    loss64, parts64, grads64 = run_reference(inputs, None)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-6)
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4 * g64.abs().max().item())


def test_pcmepp_float32_accurate_when_well_separated(device):
    # A trained model's regime: positives at logit ~ +10, negatives ~ -20. The loss is then a sum
    # of tiny terms, which a softplus(x) - x*y formulation gets wrong by ~1% in float32.
    b = 48
    txt_mean = 3**0.5 * torch.eye(b, dtype=torch.float64)
    img_mean = txt_mean + 1e-3 * torch.randn(b, b, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logvar = torch.full((b, b), -20.0, dtype=torch.float64)
    inputs = (img_mean, logvar, txt_mean, logvar)
    for matched in (None, torch.eye(b, dtype=torch.float64)):
        loss32, parts32, _ = run_ours([t.float() for t in inputs], matched, device=device, shift=10.0, vib_weight=0.0)
        loss64, parts64, _ = run_reference(inputs, matched, shift=10.0, vib_weight=0.0)
        assert parts64["bce"].item() < 1e-5  # the regime the test is about
        torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=0)
        torch.testing.assert_close(parts32["pp"].double(), parts64["pp"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pcmepp_extreme_logits(dtype, device):
    # Logits from about -2000 to +190: the capped exp(-|x|) terms (see _PCMEPPObjective) and
    # saturated sigmoids must not move the loss or the gradients beyond float tolerance.
    inputs = embeddings(12, 12, 5, seed=21, spread=2.0)
    matched = soft_matched(12, seed=5)
    kwargs = dict(scale=40.0, shift=200.0, vib_weight=0.0, pp_weight=0.5)
    loss, parts, grads = run_ours([t.to(dtype) for t in inputs], matched, device=device, **kwargs)
    ref_loss, ref_parts, ref_grads = run_reference(inputs, matched, **kwargs)
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=0)
    for name in ("bce", "pp"):
        torch.testing.assert_close(parts[name].double(), ref_parts[name], rtol=rtol, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=rtol, atol=rtol * r.abs().max().item())


def test_pcmepp_gradcheck():
    inputs = embeddings(4, 5, 3, seed=8)
    matched = random_matched(4, 5, seed=1)
    matched[:, 0] = 1  # every row has a positive
    loss_fn = PCMEPPLoss(vib_weight=0.3, pp_weight=0.4).double()
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)

    def f(im, il, tm, tl, s, t):
        params = {"scale": s, "shift": t}
        args = (ProbEmbedding(im, il), ProbEmbedding(tm, tl), matched)
        return torch.func.functional_call(loss_fn, params, args)[0]

    leaves = [t.requires_grad_() for t in inputs] + [scale, shift]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_pcmepp_non_contiguous_inputs():
    inputs = embeddings(6, 6, 5, seed=9)
    strided = [torch.stack([t, t], 2).reshape(6, -1)[:, ::2] for t in inputs]
    assert not any(t.is_contiguous() for t in strided)
    loss, _, grads = run_ours(strided, None)
    ref_loss, _, ref_grads = run_reference(inputs, None)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_pcmepp_terms_add_up():
    inputs = embeddings(7, 7, 4, seed=10)
    loss_fn = PCMEPPLoss(vib_weight=0.25, pp_weight=0.5).double()
    loss, parts = loss_fn(ProbEmbedding(*inputs[:2]), ProbEmbedding(*inputs[2:]))
    torch.testing.assert_close(loss.detach(), parts["bce"] + 0.25 * parts["vib"] + 0.5 * parts["pp"])
    torch.testing.assert_close(parts["vib"], parts["kl_img"] + parts["kl_txt"])
    # bce is the mean BCE over the B x B pairs, counted for i2t and t2i
    csd = pairwise_distance_naive(*inputs, "csd")
    bce = F.binary_cross_entropy_with_logits(-5 * csd + 5, torch.eye(7, dtype=torch.float64))
    torch.testing.assert_close(parts["bce"], 2 * bce)
    assert all(not v.requires_grad for v in parts.values())


def hand_built_logits():
    """1-D means, variances ~1e-12: CSD is the squared distance between the means.

    images at 0, 1, 5; captions at 0.9, 0.2, 5. Distances (rows: images):
        [[0.81, 0.04, 25.  ],
         [0.01, 0.64, 16.  ],
         [16.81, 23.04, 0. ]]
    """
    tiny = math.log(1e-12)
    img = ProbEmbedding(torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64), torch.full((3, 1), tiny, dtype=torch.float64))
    txt = ProbEmbedding(torch.tensor([[0.9], [0.2], [5.0]], dtype=torch.float64), torch.full((3, 1), tiny, dtype=torch.float64))
    logits = -5 * pairwise_distance_naive(img.mean, img.logvar, txt.mean, txt.logvar, "csd") + 5
    return img, txt, logits


def test_pseudo_positives_hand_built_identity():
    img, txt, logits = hand_built_logits()
    # i2t: image 0's caption 1 (0.04) is closer than its own (0.81); image 1's caption 0 (0.01)
    # beats its own (0.64). t2i: caption 0's image 1 (0.01) beats image 0 (0.81); caption 1's
    # image 0 (0.04) beats image 1 (0.64). Nothing for image/caption 2.
    pp_i2t = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    pp_t2i = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)  # rows: captions
    expected = F.binary_cross_entropy_with_logits(logits, pp_i2t) + F.binary_cross_entropy_with_logits(logits.T, pp_t2i)
    _, parts = PCMEPPLoss(vib_weight=0.0).double()(img, txt)
    assert parts["n_pseudo_positives"].item() == 4
    torch.testing.assert_close(parts["pp"], expected, rtol=1e-12, atol=0)


def test_pseudo_positives_hand_built_soft_row():
    img, txt, logits = hand_built_logits()
    matched = torch.tensor([[0.3, 0, 0.7], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    # Row 0's argmax is caption 2 (label 0.7), the farthest: every caption is >= it -> all 0.7.
    # Column 0's argmax is image 0 (label 0.3): image 1 is closer -> 0.3; column 2's argmax is
    # image 2 (distance 0): nobody else qualifies, image 0 keeps its 0.7.
    pp_i2t = torch.tensor([[0.7, 0.7, 0.7], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    pp_t2i = torch.tensor([[0.3, 0.3, 0], [1, 1, 0], [0.7, 0, 1]], dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(logits, pp_i2t) + F.binary_cross_entropy_with_logits(logits.T, pp_t2i)
    _, parts = PCMEPPLoss(vib_weight=0.0).double()(img, txt, matched)
    assert parts["n_pseudo_positives"].item() == 5  # i2t: 2 + 1, t2i: 1 + 1
    torch.testing.assert_close(parts["pp"], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["bce"], 2 * F.binary_cross_entropy_with_logits(logits, matched), rtol=1e-12, atol=0)


@pytest.mark.parametrize("logvar_value,dropped", [(9.90, False), (9.92, True)])
def test_vib_explosion_rule(logvar_value, dropped, device):
    # With mean 0 and a constant logvar c, KL = (exp(c) - c - 1) / 2: 9959 at 9.90, 10161 at 9.92.
    im, il, tm, tl = embeddings(5, 5, 4, seed=11)
    im = torch.zeros_like(im)
    il = torch.full_like(il, logvar_value)
    kl = (math.exp(logvar_value) - logvar_value - 1) / 2
    parts = assert_matches_reference((im, il, tm, tl), None, device=device, vib_weight=0.01)
    torch.testing.assert_close(parts["kl_img"].item(), kl, rtol=1e-12, atol=0)
    assert parts["vib_dropped"].item() == int(dropped)
    expected_vib = parts["kl_txt"] + (0 if dropped else parts["kl_img"])
    torch.testing.assert_close(parts["vib"], expected_vib)
    # The dropped term also carries no gradient: the img.logvar gradient is the one without VIB.
    _, _, grads = run_ours((im, il, tm, tl), None, device=device, vib_weight=0.01)
    _, _, grads_no_vib = run_ours((im, il, tm, tl), None, device=device, vib_weight=0.0)
    same = torch.allclose(grads[1], grads_no_vib[1], rtol=1e-12, atol=0)
    assert same == dropped


def test_parameters_are_learnable():
    loss_fn = PCMEPPLoss(init_scale=3.0, init_shift=-1.0)
    assert isinstance(loss_fn.scale, torch.nn.Parameter) and isinstance(loss_fn.shift, torch.nn.Parameter)
    assert {n for n, _ in loss_fn.named_parameters()} == {"scale", "shift"}
    assert loss_fn.scale.item() == 3.0 and loss_fn.shift.item() == -1.0
    inputs = [t.float() for t in embeddings(8, 8, 4, seed=12)]
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    loss, parts = loss_fn(ProbEmbedding(*inputs[:2]), ProbEmbedding(*inputs[2:]))
    loss.backward()
    opt.step()
    assert loss_fn.scale.item() != 3.0 and loss_fn.shift.item() != -1.0
    assert parts["scale"].item() == 3.0  # the parts are a snapshot
    assert "scale=" in repr(loss_fn)


def test_gradients_only_where_needed():
    im, il, tm, tl = embeddings(6, 6, 3, seed=13)
    im.requires_grad_()
    loss_fn = PCMEPPLoss().double().requires_grad_(False)
    loss, _ = loss_fn(ProbEmbedding(im, il), ProbEmbedding(tm, tl))
    loss.backward()
    assert im.grad is not None and il.grad is None and loss_fn.scale.grad is None


# ---------------------------------------------------------------------------------------------
# InfoNCE


def clip_loss(img_mean, txt_mean, logit_scale):
    """CLIP's training loss, as written in its paper's pseudo-code."""
    i = img_mean / img_mean.norm(dim=1, keepdim=True)
    t = txt_mean / txt_mean.norm(dim=1, keepdim=True)
    logits = logit_scale.exp() * i @ t.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("temperature", [0.07, 1.0, 0.5])
def test_infonce_matches_clip(temperature, device):
    im, il, tm, tl = embeddings(10, 10, 8, seed=14, spread=1.0)
    loss_fn = InfoNCELoss(init_temperature=temperature).double().to(device)
    a, b = im.clone().to(device).requires_grad_(), tm.clone().to(device).requires_grad_()
    loss, parts = loss_fn(ProbEmbedding(a, il.to(device)), ProbEmbedding(b, tl.to(device)))
    loss.backward()
    loss, parts = loss.cpu(), {k: v.cpu() for k, v in parts.items()}
    a, b = a.grad.cpu(), b.grad.cpu()
    ls = loss_fn.logit_scale.detach().cpu().clone().requires_grad_()  # log(1/T), rounded to float32 at init
    assert ls.item() == pytest.approx(math.log(1 / temperature), rel=1e-7)
    a2, b2 = im.clone().requires_grad_(), tm.clone().requires_grad_()
    ref = clip_loss(a2, b2, ls)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(a, a2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, b2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_fn.logit_scale.grad.cpu(), ls.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts["temperature"].item(), temperature, rtol=1e-7, atol=0)
    torch.testing.assert_close((parts["i2t"] + parts["t2i"]) / 2, loss.detach())


def test_infonce_soft_targets():
    im, _, tm, _ = embeddings(9, 9, 5, seed=15, spread=1.0)
    matched = soft_matched(9, seed=2)
    matched[0, 4] = 1  # a duplicate too
    loss_fn = InfoNCELoss(init_temperature=0.2).double()
    loss, parts = loss_fn(im, tm, matched)
    logits = (F.normalize(im, dim=1) @ F.normalize(tm, dim=1).T) * loss_fn.logit_scale.detach().exp()
    q_rows = matched / matched.sum(1, keepdim=True)
    q_cols = matched / matched.sum(0, keepdim=True)
    i2t = -(q_rows * logits.log_softmax(1)).sum(1).mean()
    t2i = -(q_cols * logits.log_softmax(0)).sum(0).mean()
    torch.testing.assert_close(parts["i2t"], i2t, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts["t2i"], t2i, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss, (i2t + t2i) / 2, rtol=1e-12, atol=0)
    # identity given explicitly == default hard targets
    hard, _ = InfoNCELoss().double()(im, tm, torch.eye(9, dtype=torch.float64))
    torch.testing.assert_close(hard, InfoNCELoss().double()(im, tm)[0])


def test_infonce_scale_clamped_at_100():
    im, _, tm, _ = embeddings(6, 6, 4, seed=16, spread=1.0)
    loss_fn = InfoNCELoss(init_temperature=0.001).double()  # scale 1000 -> 100
    loss, parts = loss_fn(im, tm)
    loss.backward()
    assert parts["logit_scale"].item() == 100.0
    assert loss_fn.logit_scale.grad.item() == 0.0
    torch.testing.assert_close(loss.detach(), clip_loss(im, tm, torch.tensor(math.log(100.0), dtype=torch.float64)))


def test_infonce_fixed_temperature():
    loss_fn = InfoNCELoss(init_temperature=0.1, learnable=False)
    assert list(loss_fn.parameters()) == [] and "logit_scale" in dict(loss_fn.named_buffers())


# ---------------------------------------------------------------------------------------------
# mix_images


def numbered_images(b, h=16, w=12, dtype=torch.float64):
    """Image i is the constant i + 1 (so every pixel says where it came from)."""
    return (torch.arange(b, dtype=dtype) + 1).view(b, 1, 1, 1).expand(b, 3, h, w).clone()


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "both"])
@pytest.mark.parametrize("b,ratio", [(8, 0.25), (9, 0.25), (7, 1.0), (4, 0.5)])
def test_mix_images_matched_structure(mode, b, ratio):
    images = numbered_images(b)
    original = images.clone()
    mixed, matched = mix_images(images, mode=mode, batch_ratio=ratio, generator=torch.Generator().manual_seed(b))
    torch.testing.assert_close(images, original)  # input untouched
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert matched.shape == (b, b) and matched.dtype == torch.float64
    n = round(ratio * b)
    torch.testing.assert_close(matched.sum(1), torch.ones(b, dtype=torch.float64))
    for i in range(b):
        j = b - 1 - i
        if i >= n:
            torch.testing.assert_close(matched[i], torch.eye(b, dtype=torch.float64)[i])
            torch.testing.assert_close(mixed[i], images[i])
            continue
        lam = matched[i, i].item()
        if i == j:  # the middle image of an odd batch, mixed with itself
            assert lam == 1.0
            continue
        others = matched[i].clone()
        others[[i, j]] = 0
        assert torch.all(others == 0) and 0 <= lam <= 1
        # pixels: lam of image i and 1 - lam of image j (in value for mixup, in area for cutmix)
        if mode == "mixup" or not torch.all((mixed[i] == i + 1) | (mixed[i] == j + 1)):
            torch.testing.assert_close(mixed[i], images[i] * lam + images[j] * (1 - lam))
        else:
            kept = (mixed[i] == i + 1).double().mean().item()
            assert kept == pytest.approx(lam, abs=1e-12)  # lambda corrected to the box area


def test_mix_images_reproducible_with_generator():
    images = torch.randn(16, 3, 8, 8)
    for mode in ("mixup", "cutmix", "both"):
        a = mix_images(images, mode=mode, generator=torch.Generator().manual_seed(7))
        b = mix_images(images, mode=mode, generator=torch.Generator().manual_seed(7))
        c = mix_images(images, mode=mode, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
        assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_images_same_on_every_device(mode, device):
    images = torch.randn(10, 3, 6, 5, dtype=torch.float64)
    cpu = mix_images(images, mode=mode, batch_ratio=0.5, generator=torch.Generator().manual_seed(3))
    dev = mix_images(images.to(device), mode=mode, batch_ratio=0.5, generator=torch.Generator().manual_seed(3))
    assert dev[0].device.type == device and dev[1].device.type == device
    torch.testing.assert_close(dev[0].cpu(), cpu[0], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(dev[1].cpu(), cpu[1], rtol=0, atol=0)


def test_mix_images_both_uses_both_modes():
    images = numbered_images(4)
    seen = set()
    for seed in range(20):
        mixed, matched = mix_images(images, mode="both", batch_ratio=0.25, generator=torch.Generator().manual_seed(seed))
        pure = bool(torch.all((mixed[0] == 1) | (mixed[0] == 4)))
        if matched[0, 0] not in (0.0, 1.0):
            seen.add("cutmix" if pure else "mixup")
    assert seen == {"cutmix", "mixup"}


def test_mix_images_lambda_distribution():
    images = torch.zeros(400, 1, 2, 2)
    _, m = mix_images(images, alpha=1.0, batch_ratio=1.0, generator=torch.Generator().manual_seed(0))
    lam = m.diagonal()[:200].double()  # first half: rows that are not the partner of another
    assert abs(lam.mean().item() - 0.5) < 0.06 and abs(lam.var().item() - 1 / 12) < 0.02  # Uniform(0, 1)
    _, m = mix_images(images, alpha=0.2, batch_ratio=1.0, generator=torch.Generator().manual_seed(0))
    lam = m.diagonal()[:200].double()
    assert ((lam < 0.1) | (lam > 0.9)).double().mean().item() > 0.6  # Beta(0.2, 0.2) piles at 0 and 1


def test_mix_images_cutmix_area_correction():
    # 5x5 images: any box is a whole number of pixels, so lambda must be a multiple of 1/25.
    images = numbered_images(20, h=5, w=5)
    mixed, matched = mix_images(images, mode="cutmix", batch_ratio=0.5, generator=torch.Generator().manual_seed(1))
    lam = matched.diagonal()[:10]
    torch.testing.assert_close(lam * 25, torch.round(lam * 25))
    kept = (mixed[:10] == images[:10]).double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(kept, lam)


def test_mix_images_zero_ratio_and_empty():
    images = torch.randn(6, 3, 4, 4)
    mixed, matched = mix_images(images, batch_ratio=0.0)
    torch.testing.assert_close(mixed, images)
    torch.testing.assert_close(matched, torch.eye(6))
    mixed, matched = mix_images(torch.randn(0, 3, 4, 4))
    assert mixed.shape == (0, 3, 4, 4) and matched.shape == (0, 0)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(images=torch.randn(4, 4, 4)), ValueError, r"images must have shape \[B, C, H, W\].*\[4, 4, 4\]"),
        (dict(images=torch.zeros(4, 3, 4, 4, dtype=torch.uint8)), TypeError, "images must be floating point.*uint8"),
        (dict(images=[1, 2]), TypeError, "images must be a torch.Tensor.*list"),
        (dict(alpha=0.0), ValueError, "alpha must be finite and > 0.*0.0"),
        (dict(alpha=float("nan")), ValueError, "alpha"),
        (dict(alpha="1"), TypeError, "alpha must be a real number.*str"),
        (dict(mode="mix"), ValueError, "mode must be one of mixup, cutmix, both; got 'mix'"),
        (dict(batch_ratio=1.5), ValueError, r"batch_ratio must be in \[0, 1\], got 1.5"),
        (dict(batch_ratio=-0.1), ValueError, "batch_ratio"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator or None, got int"),
    ],
)
def test_mix_images_bad_arguments(kwargs, error, pattern):
    args = dict(images=torch.randn(4, 3, 4, 4))
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        mix_images(**args)


# ---------------------------------------------------------------------------------------------
# Bad input to the losses


def emb(b, d=4, dtype=torch.float32):
    return ProbEmbedding(torch.randn(b, d, dtype=dtype), torch.randn(b, d, dtype=dtype))


@pytest.mark.parametrize("loss_cls", [PCMEPPLoss, InfoNCELoss])
@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda: (emb(4), emb(4), torch.eye(3)), ValueError, r"matched must have shape \[B_img, B_txt\] = \[4, 4\], got \[3, 3\]"),
        (lambda: (emb(4), emb(4), torch.eye(4) * 1.5), ValueError, r"matched must have values in \[0, 1\], got 1.5 at \[0, 0\]"),
        (lambda: (emb(4), emb(4), -torch.eye(4)), ValueError, r"values in \[0, 1\], got -1.0"),
        (lambda: (emb(4), emb(4), torch.eye(4).index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(float("nan")))),
         ValueError, r"values in \[0, 1\], got nan at \[1, 2\]"),
        (lambda: (emb(4), emb(4), torch.eye(4, device="meta")), ValueError, "matched is on meta but the embeddings are on cpu"),
        (lambda: (emb(4), emb(4), [[1]]), TypeError, "matched must be a torch.Tensor.*list"),
        (lambda: (emb(4), emb(5), None), ValueError, "B_img must equal B_txt; got B_img=4, B_txt=5"),
        (lambda: (emb(4, 3), emb(4, 5), None), ValueError, r"txt.mean must have shape \[B_txt, D\] with D == img.mean's D \(3\), got \[4, 5\]"),
        (lambda: (emb(4), emb(4, dtype=torch.float64), None), TypeError, "txt has dtype torch.float64 but img has torch.float32"),
        (lambda: ((torch.randn(4, 3),), emb(4), None), TypeError, "img must be a pcmekit.ProbEmbedding"),
        (lambda: (emb(0), emb(0), None), ValueError, "at least one image and one caption"),
    ],
)
def test_losses_reject_bad_input(loss_cls, make, error, pattern):
    img, txt, matched = make()
    with pytest.raises(error, match=pattern):
        loss_cls()(img, txt, matched)


def test_pcmepp_needs_logvars():
    with pytest.raises(TypeError, match="img must be a pcmekit.ProbEmbedding, got Tensor"):
        PCMEPPLoss()(torch.randn(3, 4), emb(3))


def test_integer_and_bool_matched_accepted():
    img, txt = emb(5), emb(5)
    ref, _ = PCMEPPLoss()(img, txt, torch.eye(5))
    for m in (torch.eye(5, dtype=torch.bool), torch.eye(5, dtype=torch.int64)):
        torch.testing.assert_close(PCMEPPLoss()(img, txt, m)[0], ref)


def test_infonce_needs_a_positive_per_row_and_column():
    m = torch.eye(4)
    m[2, 2] = 0
    with pytest.raises(ValueError, match="every row \\(image\\) of matched needs a positive, but row 2 sums to 0"):
        InfoNCELoss()(emb(4), emb(4), m)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(init_scale=0.0), ValueError, "init_scale must be > 0, got 0.0"),
        (dict(init_scale=-5), ValueError, "init_scale must be > 0"),
        (dict(init_shift=float("inf")), ValueError, "init_shift must be finite"),
        (dict(vib_weight=-1e-4), ValueError, "vib_weight must be >= 0"),
        (dict(pp_weight="0.1"), TypeError, "pp_weight must be a real number, got str"),
        (dict(gather=1), TypeError, "gather must be a bool, got int"),
    ],
)
def test_pcmepp_bad_constructor_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        PCMEPPLoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs,error,pattern",
    [
        (dict(init_temperature=0.0), ValueError, "init_temperature must be finite and > 0, got 0.0"),
        (dict(init_temperature=None), TypeError, "init_temperature must be a real number, got NoneType"),
        (dict(learnable="yes"), TypeError, "learnable must be a bool"),
    ],
)
def test_infonce_bad_constructor_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        InfoNCELoss(**kwargs)


@pytest.mark.parametrize("loss_cls", [PCMEPPLoss, InfoNCELoss])
def test_gather_without_process_group_raises(loss_cls):
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match=r"gather=True\) needs an initialised torch.distributed process group"):
        loss_cls(gather=True)(emb(3), emb(3))


def test_package_exports():
    import pcmekit.losses as losses

    assert {"PCMEPPLoss", "InfoNCELoss", "mix_images"} <= set(losses.__all__)
    assert hasattr(pcmekit, "ProbEmbedding")
