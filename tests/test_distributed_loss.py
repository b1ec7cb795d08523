"""Losses with gather=True: 2 gloo processes on loopback against one process on the whole batch.

The contract (pcmekit/losses/_distributed.py): every rank returns the single-process loss of the
concatenated batch; a rank's own embeddings receive world_size x the single-process gradient, so
that after DistributedDataParallel's gradient averaging every parameter (encoders and the loss's
own) has exactly the single-process gradient.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pcmekit import ProbEmbedding
from pcmekit.losses import InfoNCELoss, PCMEPPLoss, PPCLLoss, mix_images

from _helpers import leave_process_group

WORLD = 2
F64 = torch.float64


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Encoder(torch.nn.Module):
    """A linear head producing a Gaussian: mean and logvar from one projection."""

    def __init__(self, din: int, d: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(din, 2 * d, dtype=F64)
        self.d = d

    def forward(self, x: torch.Tensor) -> ProbEmbedding:
        out = self.proj(x)
        mean, logvar = out[:, : self.d], out[:, self.d :] - 2.0
        mean.retain_grad()
        logvar.retain_grad()
        return ProbEmbedding(mean, logvar)


def _block_diag(blocks, b_img, b_txt):
    if all(m is None for m in blocks):
        return None
    full = [torch.eye(bi, dtype=F64) if m is None else m for m, bi in zip(blocks, b_img)]
    return torch.block_diag(*full)


def _check_case(rank, make_loss, b_img, b_txt, blocks, *, d=6, din=7, seed=0):
    """One rank's check: loss, parts, own-embedding gradients, DDP-averaged parameter gradients."""
    g = torch.Generator().manual_seed(seed)
    x_img = torch.randn(sum(b_img), din, generator=g, dtype=F64)
    x_txt = torch.randn(sum(b_txt), din, generator=g, dtype=F64)
    torch.manual_seed(seed)
    encoders = torch.nn.ModuleList([_Encoder(din, d), _Encoder(din, d)])

    # The single process on the concatenated batch (every rank computes it, identically).
    single_enc = copy.deepcopy(encoders)
    single_loss_fn = make_loss(False).double()
    img_s, txt_s = single_enc[0](x_img), single_enc[1](x_txt)
    loss_s, parts_s = single_loss_fn(img_s, txt_s, _block_diag(blocks, b_img, b_txt))
    loss_s.backward()

    # This rank's share, gathered.
    dist_enc = copy.deepcopy(encoders)
    dist_loss_fn = make_loss(True).double()
    i0, t0 = sum(b_img[:rank]), sum(b_txt[:rank])
    img_rows, txt_rows = slice(i0, i0 + b_img[rank]), slice(t0, t0 + b_txt[rank])
    img_d, txt_d = dist_enc[0](x_img[img_rows]), dist_enc[1](x_txt[txt_rows])
    loss_d, parts_d = dist_loss_fn(img_d, txt_d, blocks[rank])
    loss_d.backward()

    torch.testing.assert_close(loss_d, loss_s, rtol=1e-12, atol=1e-14)
    assert set(parts_d) == set(parts_s)
    for name in parts_s:
        torch.testing.assert_close(parts_d[name], parts_s[name], rtol=1e-12, atol=1e-14, msg=name)
    # Own embeddings: world_size x the single-process gradient (the all-reduce sums W copies).
    for mine, single, rows in (
        (img_d.mean, img_s.mean, img_rows),
        (img_d.logvar, img_s.logvar, img_rows),
        (txt_d.mean, txt_s.mean, txt_rows),
        (txt_d.logvar, txt_s.logvar, txt_rows),
    ):
        if single.grad is None:  # InfoNCE does not use the logvars
            assert mine.grad is None
            continue
        torch.testing.assert_close(mine.grad, WORLD * single.grad[rows], rtol=1e-10, atol=1e-13)
    # DDP averages gradients over ranks: then every parameter matches the single process.
    dist_params = list(dist_enc.parameters()) + list(dist_loss_fn.parameters())
    single_params = list(single_enc.parameters()) + list(single_loss_fn.parameters())
    assert len(dist_params) == len(single_params) > 4
    for p_d, p_s in zip(dist_params, single_params):
        grad = p_d.grad.clone()
        dist.all_reduce(grad)
        torch.testing.assert_close(grad / WORLD, p_s.grad, rtol=1e-10, atol=1e-13)


def _mixed_block(b, seed):
    return mix_images(torch.randn(b, 1, 4, 4, dtype=F64), batch_ratio=0.5, generator=torch.Generator().manual_seed(seed))[1]


def _worker(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        pcmepp = lambda gather: PCMEPPLoss(gather=gather)  # noqa: E731
        heavy = lambda gather: PCMEPPLoss(init_scale=1.5, init_shift=0.5, vib_weight=0.3, pp_weight=0.6, gather=gather)  # noqa: E731
        infonce = lambda gather: InfoNCELoss(init_temperature=0.3, gather=gather)  # noqa: E731

        # identity, equal local batches
        _check_case(rank, pcmepp, [5, 5], [5, 5], [None, None], seed=1)
        # unequal local batches, soft (mixed) rows, every term weighted heavily
        _check_case(rank, heavy, [3, 6], [3, 6], [_mixed_block(3, 0), _mixed_block(6, 1)], seed=2)
        # one rank with duplicates, the other with the identity default
        dup = torch.eye(4, dtype=F64)
        dup[0, 1] = dup[1, 0] = 1
        _check_case(rank, heavy, [4, 3], [4, 3], [dup, None], seed=3)
        # rectangular blocks: one image with two captions
        rect = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=F64)
        _check_case(rank, heavy, [2, 2], [4, 4], [rect, rect], seed=4)
        # the CLIP baseline, hard and soft targets
        _check_case(rank, infonce, [4, 4], [4, 4], [None, None], seed=5)
        _check_case(rank, infonce, [5, 3], [5, 3], [_mixed_block(5, 2), None], seed=6)
        # ProLIP's PPCL: unequal local batches; one rank with duplicates
        ppcl = lambda gather: PPCLLoss(init_scale=1.5, init_bias=-0.5, gather=gather)  # noqa: E731
        _check_case(rank, ppcl, [3, 6], [3, 6], [None, None], seed=7)
        _check_case(rank, ppcl, [4, 3], [4, 3], [dup, None], seed=8)

        # A rank that rejects its inputs makes every rank raise instead of leaving one waiting.
        bad = torch.eye(3) * (2.0 if rank == 1 else 1.0)
        expected = (ValueError, r"values in \[0, 1\]") if rank == 1 else (RuntimeError, r"rank\(s\) \[1\] rejected")
        with pytest.raises(expected[0], match=expected[1]):
            PCMEPPLoss(gather=True)(_emb(3, 4), _emb(3, 4), bad)
        # Ranks disagreeing on D fail together too.
        with pytest.raises(ValueError, match="all ranks must pass embeddings of one D"):
            PCMEPPLoss(gather=True)(_emb(3, 4 + rank), _emb(3, 4 + rank))
        # ... and the group is still in step afterwards.
        token = torch.tensor([rank + 1.0])
        dist.all_reduce(token)
        assert token.item() == 3.0
    finally:
        leave_process_group()


def _emb(b, d):
    return ProbEmbedding(torch.randn(b, d), torch.randn(b, d))


def test_gather_matches_single_process_two_gloo_ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
