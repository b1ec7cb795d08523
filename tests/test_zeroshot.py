"""pcmekit.zeroshot on synthetic Gaussians whose right answers are known by construction."""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import ProbEmbedding, zeroshot

D = 8
C = 4


def _basis(c):
    e = torch.zeros(D, dtype=torch.float64)
    e[c] = 1.0
    return e


def test_prototypes_average_means_renormalise_and_average_variances():
    mean = torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    var = torch.tensor([[[0.1, 0.3], [0.5, 0.7]], [[1e-30, 2.0], [3e-30, 4.0]]], dtype=torch.float64)
    proto = zeroshot.class_prototypes(mean, var.log())
    torch.testing.assert_close(proto.mean, torch.tensor([[1.5, 0.5], [1.0, 1.0]], dtype=torch.float64)
                               / torch.tensor([[math.hypot(1.5, 0.5)], [math.sqrt(2.0)]], dtype=torch.float64))
    torch.testing.assert_close(proto.variance, var.mean(dim=1), rtol=1e-14, atol=0)  # no underflow at 1e-30
    raw = zeroshot.class_prototypes(mean, var.log(), normalize=False)
    torch.testing.assert_close(raw.mean, mean.mean(dim=1))
    keep = torch.tensor([[True, False], [False, True]])
    sub = zeroshot.class_prototypes(mean, var.log(), keep, normalize=False)
    torch.testing.assert_close(sub.mean, torch.stack([mean[0, 0], mean[1, 1]]))
    torch.testing.assert_close(sub.variance, torch.stack([var[0, 0], var[1, 1]]), rtol=1e-14, atol=0)


def test_uncertainty_is_the_mean_variance_and_matches_probembedding():
    lv = torch.randn(3, 5, D, dtype=torch.float64)
    u = zeroshot.prompt_uncertainty(lv)
    torch.testing.assert_close(u, lv.exp().mean(-1))
    torch.testing.assert_close(u[1], ProbEmbedding(torch.zeros(5, D, dtype=torch.float64), lv[1]).uncertainty())


def _noisy_prompts(n_good=2, n_bad=3):
    """Class c: n_good confident prompts at e_c, n_bad uncertain prompts at e_{c+1}."""
    g = torch.Generator().manual_seed(0)
    means, logvars = [], []
    for c in range(C):
        good = _basis(c) + 0.01 * torch.randn(n_good, D, generator=g, dtype=torch.float64)
        bad = _basis((c + 1) % C) + 0.01 * torch.randn(n_bad, D, generator=g, dtype=torch.float64)
        means.append(torch.cat([good, bad]))
        logvars.append(torch.cat([torch.full((n_good, D), math.log(1e-3)), torch.full((n_bad, D), math.log(0.5))])
                       .to(torch.float64) + 0.01 * torch.randn(n_good + n_bad, D, generator=g, dtype=torch.float64))
    return torch.stack(means), torch.stack(logvars)


def _images(n_per_class=5):
    g = torch.Generator().manual_seed(1)
    mu = torch.cat([_basis(c) + 0.05 * torch.randn(n_per_class, D, generator=g, dtype=torch.float64)
                    for c in range(C)])
    labels = torch.arange(C).repeat_interleave(n_per_class)
    return ProbEmbedding(mu, torch.full_like(mu, math.log(1e-2))), labels


def test_filtering_drops_the_uncertain_prompts_and_fixes_the_classifier():
    mean, logvar = _noisy_prompts()
    images, labels = _images()
    mask = zeroshot.filter_prompts(logvar, 3)
    assert mask.tolist() == [[True, True, False, False, False]] * C   # exactly the uncertain ones
    assert torch.equal(zeroshot.filter_prompts(logvar, 0.6), mask)    # 60 % of 5 prompts = 3
    # Unfiltered, class c's prototype leans towards e_{c+1} (3 of 5 prompts), so an image of class c
    # is nearest to class c - 1's prototype, whose majority sits at e_c: every prediction is wrong.
    unfiltered = zeroshot.class_prototypes(mean, logvar)
    pred = zeroshot.csd_logits(images, unfiltered).argmax(-1)
    assert torch.equal(pred, (labels - 1) % C)
    protos, kept = zeroshot.zeroshot_classifier(mean, logvar, drop=3)
    assert torch.equal(kept, mask)
    assert torch.equal(zeroshot.csd_logits(images, protos).argmax(-1), labels)
    assert bool((protos.uncertainty() < unfiltered.uncertainty()).all())


def test_csd_logits_are_the_closed_form():
    images, _ = _images(2)
    protos, _ = zeroshot.zeroshot_classifier(*_noisy_prompts(), drop=3)
    logits = zeroshot.csd_logits(images, protos, scale=5.0, shift=2.0)
    delta = images.mean[:, None, :] - protos.mean[None, :, :]
    csd = (delta**2).sum(-1) + images.variance.sum(-1)[:, None] + protos.variance.sum(-1)[None, :]
    torch.testing.assert_close(logits, -5.0 * csd + 2.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, -5.0 * pcmekit.pairwise_distance(images, protos) + 2.0)


def test_point_logits_loglik_is_the_gaussian_density_and_prefers_the_broad_class_far_away():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(3, D, generator=g, dtype=torch.float64)
    lv = torch.randn(3, D, generator=g, dtype=torch.float64)
    x = torch.randn(6, D, generator=g, dtype=torch.float64)
    classes = ProbEmbedding(mu, lv)
    ref = torch.distributions.Normal(mu[None], (lv / 2).exp()[None]).log_prob(x[:, None]).sum(-1)
    torch.testing.assert_close(zeroshot.point_logits(x, classes, "loglik"), ref, rtol=1e-10, atol=1e-10)
    csd = zeroshot.point_logits(x, classes, "csd")
    torch.testing.assert_close(csd, -(((x[:, None] - mu[None]) ** 2).sum(-1) + lv.exp().sum(-1)[None]))
    # Two classes with one mean, one narrow and one broad: near the mean the narrow class has the
    # higher density, far from it the broad class; CSD always prefers the narrow one.
    two = ProbEmbedding(torch.zeros(2, D, dtype=torch.float64),
                        torch.stack([torch.full((D,), math.log(0.1)), torch.full((D,), math.log(4.0))]).double())
    pts = torch.stack([torch.full((D,), 0.01), torch.full((D,), 3.0)]).double()
    assert zeroshot.point_logits(pts, two, "loglik").argmax(-1).tolist() == [0, 1]
    assert zeroshot.point_logits(pts, two, "csd").argmax(-1).tolist() == [0, 0]


def test_errors():
    mean, logvar = _noisy_prompts()
    with pytest.raises(ValueError, match="at least one of the P = 5"):
        zeroshot.filter_prompts(logvar, 5)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        zeroshot.filter_prompts(logvar, 1.0)
    with pytest.raises(TypeError, match="drop must be"):
        zeroshot.filter_prompts(logvar, "3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \[C, P, D\]"):
        zeroshot.class_prototypes(mean[0], logvar[0])
    with pytest.raises(ValueError, match="keeps no prompt of class 2"):
        m = torch.ones(C, 5, dtype=torch.bool)
        m[2] = False
        zeroshot.class_prototypes(mean, logvar, m)
    with pytest.raises(ValueError, match="kind must be"):
        zeroshot.point_logits(mean[:, 0], zeroshot.class_prototypes(mean, logvar), "kl")
    with pytest.raises(ValueError, match="x must be a tensor"):
        zeroshot.point_logits(mean[:, 0, :3], zeroshot.class_prototypes(mean, logvar))
