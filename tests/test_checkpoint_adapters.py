"""ProbEmbedding.from_output: the checkpoint conventions of PCME v1, PCME++ and ProLIP
(docs/design.md, "Checkpoint conventions"), on hand-written output dicts."""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import ProbEmbedding


def _sigma_table():
    # Two Gaussians in D = 3 with known standard deviations.
    mean = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.5, 1.0, 2.0], [0.1, 0.2, 0.4]], dtype=torch.float64)
    return mean, sigma


def test_pcme_v1_logsigma_is_doubled():
    mean, sigma = _sigma_table()
    out = {"embedding": mean, "logsigma": sigma.log(), "attention": None}
    emb = ProbEmbedding.from_output(out, "pcme")
    torch.testing.assert_close(emb.mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(emb.variance, sigma**2, rtol=1e-15, atol=0)
    torch.testing.assert_close(emb.logvar, 2 * sigma.log(), rtol=0, atol=0)


@pytest.mark.parametrize("convention", ["pcmepp", "prolip"])
def test_pcmepp_and_prolip_std_is_log_variance(convention):
    mean, sigma = _sigma_table()
    out = {"mean": mean, "std": (sigma**2).log()}  # "std" holds log sigma^2
    emb = ProbEmbedding.from_output(out, convention)
    assert emb.logvar is out["std"] and emb.mean is out["mean"]  # no copy, no conversion
    torch.testing.assert_close(emb.variance, sigma**2, rtol=1e-15, atol=0)


def test_the_conventions_agree_on_one_gaussian():
    mean, sigma = _sigma_table()
    a = ProbEmbedding.from_output({"embedding": mean, "logsigma": sigma.log()}, "pcme")
    b = ProbEmbedding.from_output({"mean": mean, "std": 2 * sigma.log()}, "pcmepp")
    c = ProbEmbedding.from_output({"mean": mean, "std": 2 * sigma.log()}, "prolip")
    for e in (b, c):
        torch.testing.assert_close(e.logvar, a.logvar, rtol=0, atol=0)
    d = pcmekit.pairwise_distance(a.mean, a.logvar, b.mean, b.logvar, "csd")
    # CSD of a Gaussian with itself: 2 * sum(sigma^2)
    torch.testing.assert_close(d.diagonal(), 2 * (sigma**2).sum(1), rtol=1e-12, atol=1e-12)


def test_key_overrides_pcme_model_level_dict():
    mean, sigma = _sigma_table()
    out = {"image_features": mean, "image_logsigma": sigma.log(),
           "caption_features": mean.flip(0), "caption_logsigma": sigma.flip(0).log()}
    img = ProbEmbedding.from_output(out, "pcme", mean_key="image_features", var_key="image_logsigma")
    cap = ProbEmbedding.from_output(out, "pcme", mean_key="caption_features", var_key="caption_logsigma")
    torch.testing.assert_close(img.logvar, 2 * sigma.log(), rtol=0, atol=0)
    torch.testing.assert_close(cap.logvar, 2 * sigma.flip(0).log(), rtol=0, atol=0)


def test_unknown_convention_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown convention 'clip'.*'pcme', 'pcmepp', 'prolip'"):
        ProbEmbedding.from_output({"mean": torch.zeros(1, 2), "std": torch.zeros(1, 2)}, "clip")


@pytest.mark.parametrize("convention,out,missing", [
    ("pcme", {"embedding": torch.zeros(2, 3)}, "logsigma"),
    ("pcme", {"mean": torch.zeros(2, 3), "logsigma": torch.zeros(2, 3)}, "embedding"),
    ("pcmepp", {"mean": torch.zeros(2, 3), "logvar": torch.zeros(2, 3)}, "std"),
    ("prolip", {"std": torch.zeros(2, 3)}, "mean"),
])
def test_missing_key_is_named(convention, out, missing):
    with pytest.raises(ValueError, match=rf"no key '{missing}' \(present: \["):
        ProbEmbedding.from_output(out, convention)


def test_bad_values_are_rejected():
    with pytest.raises(TypeError, match=r"output\['std'\] must be a torch.Tensor"):
        ProbEmbedding.from_output({"mean": torch.zeros(2, 3), "std": [[0.0] * 3] * 2}, "pcmepp")
    with pytest.raises(ValueError, match=r"output\['embedding'\] must have shape \[N, D\], got \[2, 7, 3\]"):
        ProbEmbedding.from_output({"embedding": torch.zeros(2, 7, 3), "logsigma": torch.zeros(2, 3)}, "pcme")
    with pytest.raises(TypeError, match="output must be a dict"):
        ProbEmbedding.from_output([torch.zeros(2, 3)], "pcmepp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="logvar must have the shape of mean"):
        ProbEmbedding.from_output({"mean": torch.zeros(2, 3), "std": torch.zeros(2, 4)}, "prolip")


def test_gradients_flow_through_the_conversion():
    ls = torch.full((1, 4), math.log(0.5), dtype=torch.float64, requires_grad=True)
    emb = ProbEmbedding.from_output({"embedding": torch.zeros(1, 4, dtype=torch.float64), "logsigma": ls}, "pcme")
    emb.variance.sum().backward()
    # d/d(log sigma) of sigma^2 = 2 sigma^2
    torch.testing.assert_close(ls.grad, torch.full((1, 4), 0.5, dtype=torch.float64))
