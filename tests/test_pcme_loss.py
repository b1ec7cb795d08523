"""pcmekit.losses.PCMELoss against a pure-PyTorch transcription of the same formula."""

from __future__ import annotations

import copy
import datetime
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pcmekit import ProbEmbedding
from pcmekit.losses.pcme import PCMELoss
from pcmekit.reference_match import match_logprob_naive, sample_gaussians

from _helpers import gaussians, leave_process_group


def batch(b_img, b_txt, d, j, *, seed=0, dtype=torch.float64):
    img = gaussians(b_img, d, seed=seed, dtype=dtype, spread=0.3)
    txt = gaussians(b_txt, d, seed=seed + 1, dtype=dtype, spread=0.3)
    g = torch.Generator().manual_seed(seed + 2)
    eps_img = torch.randn(b_img, j, d, generator=g, dtype=torch.float64).to(dtype)
    eps_txt = torch.randn(b_txt, j, d, generator=g, dtype=torch.float64).to(dtype)
    return img, txt, eps_img, eps_txt


def reference_loss(img, txt, eps_img, eps_txt, matched, scale, shift, vib_weight):
    """The documented formula, in plain PyTorch on the naive oracle."""
    log_p, log_q = match_logprob_naive(*img, *txt, eps_img, eps_txt, scale, shift)
    nll = -(matched * log_p + (1 - matched) * log_q).sum()
    kl = sum(-0.5 * (1 + lv - mu * mu - lv.exp()).sum() for mu, lv in (img, txt))
    return 2 * nll + vib_weight * kl, nll, kl


@pytest.mark.parametrize("soft", [False, True])
def test_loss_and_gradients_match_reference(soft):
    b, d, j = 6, 5, 3
    img, txt, eps_img, eps_txt = batch(b, b, d, j, seed=1)
    matched = torch.eye(b, dtype=torch.float64)
    if soft:
        matched = torch.rand(b, b, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss_fn = PCMELoss(num_samples=j, init_scale=2.0, init_shift=1.5, vib_weight=0.1).double()
    leaves = [t.clone().requires_grad_() for t in (*img, *txt)]
    loss, parts = loss_fn(ProbEmbedding(*leaves[:2]), ProbEmbedding(*leaves[2:]),
                          matched if soft else None, eps_img=eps_img, eps_txt=eps_txt)
    loss.backward()

    ref_leaves = [t.clone().requires_grad_() for t in (*img, *txt)]
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    ref, ref_nll, ref_kl = reference_loss(ref_leaves[:2], ref_leaves[2:], eps_img, eps_txt, matched, scale, shift, 0.1)
    ref.backward()

    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["i2t_loss"], ref_nll.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["t2i_loss"], ref_nll.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["pos_loss"] + parts["neg_loss"], ref_nll.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["vib"], ref_kl.detach(), rtol=1e-10, atol=1e-10)
    for mine, theirs in zip([*leaves, loss_fn.scale, loss_fn.shift], [*ref_leaves, scale, shift]):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-8, atol=1e-10)
    assert all(not v.requires_grad for v in parts.values())


def test_rectangular_batch():
    img, txt, eps_img, eps_txt = batch(4, 7, 3, 2, seed=3)
    matched = (torch.arange(7)[None, :] % 4 == torch.arange(4)[:, None]).double()  # captions 0, 4 -> image 0, ...
    loss_fn = PCMELoss(num_samples=2, init_scale=3.0, init_shift=2.0).double()
    loss, _ = loss_fn(ProbEmbedding(*img), ProbEmbedding(*txt), matched, eps_img=eps_img, eps_txt=eps_txt)
    ref, _, _ = reference_loss(img, txt, eps_img, eps_txt, matched, 3.0, 2.0, 1e-5)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"PCMELoss: without `matched` the batch must pair img i with txt i"):
        loss_fn(ProbEmbedding(*img), ProbEmbedding(*txt), eps_img=eps_img, eps_txt=eps_txt)


def test_pcme_v1_convention():
    # PCME v1's code: s = -a d + b and p = mean_k exp(s_k) / (exp(s_k) + exp(-s_k)), with
    # NLL = log K^2 - logsumexp_k(m s_k - logsumexp(s_k, -s_k)), m = +1 / -1, summed over pairs
    # for i2t and again for t2i. Its a = b = 15 are our scale = shift = 30 (the defaults).
    b, d, j = 5, 4, 3
    img, txt, eps_img, eps_txt = batch(b, b, d, j, seed=7, dtype=torch.float32)
    img = (img[0] * 0.1, img[1] - 3)  # distances ~ 1, where a = b = 15 gives p in (0, 1)
    txt = (txt[0] * 0.1, txt[1] - 3)
    loss_fn = PCMELoss(num_samples=j, vib_weight=0.0)
    assert loss_fn.scale.item() == 30.0 and loss_fn.shift.item() == 30.0
    loss, parts = loss_fn(ProbEmbedding(*img), ProbEmbedding(*txt), eps_img=eps_img, eps_txt=eps_txt)

    za, zb = sample_gaussians(*img, eps_img), sample_gaussians(*txt, eps_txt)  # [B, K, D]
    dist_ = torch.sqrt(((za[:, None, :, None] - zb[None, :, None, :]) ** 2).sum(-1) + 1e-6).flatten(2)
    s = -15.0 * dist_ + 15.0  # [B, B, K^2]
    matched = 2 * torch.eye(b)[:, :, None] - 1
    nll = math.log(j * j) - torch.logsumexp(s * matched - torch.logsumexp(torch.stack([s, -s]), 0), -1)
    torch.testing.assert_close(parts["i2t_loss"], nll.sum(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, 2 * nll.sum(), rtol=1e-4, atol=1e-4)


def test_generator_reproducible_and_float32_default_params():
    img, txt, _, _ = batch(8, 8, 16, 7, seed=4, dtype=torch.float32)
    img, txt = ProbEmbedding(*img), ProbEmbedding(*txt)
    loss_fn = PCMELoss()
    first, _ = loss_fn(img, txt, generator=torch.Generator().manual_seed(0))
    again, _ = loss_fn(img, txt, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and torch.isfinite(first)
    first.backward()
    assert loss_fn.scale.grad is not None and torch.isfinite(loss_fn.scale.grad)


def test_bad_arguments():
    img, txt, eps_img, eps_txt = batch(3, 3, 2, 2, seed=5)
    img, txt = ProbEmbedding(*img), ProbEmbedding(*txt)
    loss_fn = PCMELoss(num_samples=2).double()
    with pytest.raises(ValueError, match=r"matched must have values in \[0, 1\]"):
        loss_fn(img, txt, 2 * torch.eye(3, dtype=torch.float64), eps_img=eps_img, eps_txt=eps_txt)
    with pytest.raises(ValueError, match=r"matched must have shape \[B_img, B_txt\] = \[3, 3\], got \[3, 2\]"):
        loss_fn(img, txt, torch.ones(3, 2, dtype=torch.float64), eps_img=eps_img, eps_txt=eps_txt)
    with pytest.raises(TypeError, match=r"img must be a pcmekit.ProbEmbedding"):
        loss_fn(img.mean, txt)
    with pytest.raises(ValueError, match=r"eps_txt must be noise \[B, J, D\] = \[3, 3, 2\] \(torch.float64 on cpu\), got \[3, 2, 2\]"):
        PCMELoss(num_samples=3).double()(img, txt, eps_img=torch.zeros(3, 3, 2, dtype=torch.float64), eps_txt=eps_txt)
    with pytest.raises(ValueError, match=r"num_samples must be an int >= 1, got 0"):
        PCMELoss(num_samples=0)
    with pytest.raises(ValueError, match=r"init_scale must be finite"):
        PCMELoss(init_scale=float("inf"))
    with pytest.raises(RuntimeError, match=r"needs an initialised torch.distributed process group"):
        PCMELoss(num_samples=2, gather=True).double()(img, txt, eps_img=eps_img, eps_txt=eps_txt)


# ---------------------------------------------------------------------------------------------
# gather=True: 2 gloo ranks on loopback against one process on the whole batch, with the same
# noise (the convention of pcmekit/losses/_distributed.py: every rank computes the single-process
# loss; a rank's own embeddings receive world_size x the single-process gradient).

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        b_img, b_txt, d, j = [3, 5], [3, 5], 4, 3
        img, txt, eps_img, eps_txt = batch(sum(b_img), sum(b_txt), d, j, seed=11)
        single_fn = PCMELoss(num_samples=j, init_scale=2.0, init_shift=1.0, vib_weight=0.2).double()
        dist_fn = copy.deepcopy(single_fn)
        dist_fn.gather = True
        single = [t.clone().requires_grad_() for t in (*img, *txt)]
        loss_s, parts_s = single_fn(ProbEmbedding(*single[:2]), ProbEmbedding(*single[2:]),
                                    eps_img=eps_img, eps_txt=eps_txt)
        loss_s.backward()
        i0, t0 = sum(b_img[:rank]), sum(b_txt[:rank])
        rows_i, rows_t = slice(i0, i0 + b_img[rank]), slice(t0, t0 + b_txt[rank])
        mine = [t[r].clone().requires_grad_() for t, r in zip((*img, *txt), (rows_i, rows_i, rows_t, rows_t))]
        loss_d, parts_d = dist_fn(ProbEmbedding(*mine[:2]), ProbEmbedding(*mine[2:]),
                                  eps_img=eps_img[rows_i], eps_txt=eps_txt[rows_t])
        loss_d.backward()
        torch.testing.assert_close(loss_d, loss_s, rtol=1e-12, atol=1e-13)
        for name in parts_s:
            torch.testing.assert_close(parts_d[name], parts_s[name], rtol=1e-12, atol=1e-13, msg=name)
        for m, s, r in zip(mine, single, (rows_i, rows_i, rows_t, rows_t)):
            torch.testing.assert_close(m.grad, WORLD * s.grad[r], rtol=1e-10, atol=1e-12)
        for p_d, p_s in zip(dist_fn.parameters(), single_fn.parameters()):
            grad = p_d.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad / WORLD, p_s.grad, rtol=1e-10, atol=1e-12)
        # Malformed noise on one rank: every rank raises, none hangs.
        bad = eps_img[rows_i][:, :2] if rank == 1 else eps_img[rows_i]
        expected = (ValueError, r"eps_img must be this rank's noise") if rank == 1 else (RuntimeError, r"rank\(s\) \[1\]")
        with pytest.raises(expected[0], match=expected[1]):
            dist_fn(ProbEmbedding(*mine[:2]), ProbEmbedding(*mine[2:]), eps_img=bad, eps_txt=eps_txt[rows_t])
        token = torch.tensor([rank + 1.0])
        dist.all_reduce(token)
        assert token.item() == 3.0
    finally:
        leave_process_group()


def test_gather_matches_single_process_two_gloo_ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_distributed_worker, args=(_free_port(),), nprocs=WORLD, join=True)
