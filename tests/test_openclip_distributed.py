"""OpenCLIPPCMEPPLoss over 2 gloo ranks against one process on the concatenated batch.

The contract (docs/design.md, "Distributed"; pcmekit/losses/openclip.py):

* gather=True: every rank returns the single-process loss;
* gather=True, local_loss=True: each rank returns world_size x its share, so the mean over ranks
  is the single-process loss;
* in both, a rank's own embeddings receive world_size x the single-process gradient, so that
  after DistributedDataParallel's gradient averaging every parameter -- the encoders', the
  model's logit_scale / logit_bias, the loss's own shift -- has the single-process gradient;
* last_parts are the global batch's diagnostics on every rank.

The model returns open_clip's output dict and the loss is called as open_clip's training loop
calls it: ``sum(loss(**model_out, output_dict=True).values())``.
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

from pcmekit.losses import OpenCLIPPCMEPPLoss, mix_images

from _helpers import leave_process_group

WORLD = 2
F64 = torch.float64


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ProbCLIP(torch.nn.Module):
    """Linear image and text towers with (mean, log sigma^2) heads, open_clip's logit_scale
    (a log, passed exponentiated) and optionally a logit_bias."""

    def __init__(self, din: int, d: int, bias: bool) -> None:
        super().__init__()
        self.visual = torch.nn.Linear(din, 2 * d, dtype=F64)
        self.text = torch.nn.Linear(din, 2 * d, dtype=F64)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.2, dtype=F64))
        self.logit_bias = torch.nn.Parameter(torch.tensor(0.7, dtype=F64)) if bias else None
        self.d = d

    def _head(self, tower, x):
        out = tower(x)
        mean, logvar = out[:, : self.d], out[:, self.d :] - 2.0
        mean.retain_grad()
        logvar.retain_grad()
        return {"mean": mean, "std": logvar}

    def forward(self, images, texts):
        out = {"image_features": self._head(self.visual, images), "text_features": self._head(self.text, texts),
               "logit_scale": self.logit_scale.exp()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        return out


def _block_diag(blocks, b_img):
    if all(m is None for m in blocks):
        return None
    return torch.block_diag(*[torch.eye(bi, dtype=F64) if m is None else m for m, bi in zip(blocks, b_img)])


def _check_case(rank, make_loss, b_img, b_txt, blocks, *, bias, d=6, din=7, seed=0, report=None):
    g = torch.Generator().manual_seed(seed)
    x_img = torch.randn(sum(b_img), din, generator=g, dtype=F64)
    x_txt = torch.randn(sum(b_txt), din, generator=g, dtype=F64)
    torch.manual_seed(seed)
    model = _ProbCLIP(din, d, bias)

    single_model, single_loss_fn = copy.deepcopy(model), make_loss(False, False).double()
    out_s = single_model(x_img, x_txt)
    loss_s = sum(single_loss_fn(**out_s, matched=_block_diag(blocks, b_img), output_dict=True).values())
    loss_s.backward()

    i0, t0 = sum(b_img[:rank]), sum(b_txt[:rank])
    img_rows, txt_rows = slice(i0, i0 + b_img[rank]), slice(t0, t0 + b_txt[rank])
    for local in (False, True):
        dist_model, dist_loss_fn = copy.deepcopy(model), make_loss(True, local).double()
        out_d = dist_model(x_img[img_rows], x_txt[txt_rows])
        loss_d = sum(dist_loss_fn(**out_d, matched=blocks[rank], output_dict=True).values())
        loss_d.backward()

        mean_loss = loss_d.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= WORLD
        if not local:
            torch.testing.assert_close(loss_d, loss_s, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(mean_loss, loss_s.detach(), rtol=1e-12, atol=1e-14)
        assert set(dist_loss_fn.last_parts) == set(single_loss_fn.last_parts)
        for name, value in single_loss_fn.last_parts.items():
            torch.testing.assert_close(dist_loss_fn.last_parts[name], value, rtol=1e-12, atol=1e-14, msg=name)
        worst = 0.0
        for modality, rows in (("image_features", img_rows), ("text_features", txt_rows)):
            for key in ("mean", "std"):
                mine, single = out_d[modality][key].grad, out_s[modality][key].grad[rows]
                torch.testing.assert_close(mine, WORLD * single, rtol=1e-10, atol=1e-13)
                worst = max(worst, float((mine - WORLD * single).abs().max()))
        dist_params = list(dist_model.parameters()) + list(dist_loss_fn.parameters())
        single_params = list(single_model.parameters()) + list(single_loss_fn.parameters())
        assert len(dist_params) == len(single_params) >= 6
        for p_d, p_s in zip(dist_params, single_params):
            grad = p_d.grad.clone()
            dist.all_reduce(grad)
            torch.testing.assert_close(grad / WORLD, p_s.grad, rtol=1e-10, atol=1e-13)
            worst = max(worst, float((grad / WORLD - p_s.grad).abs().max()))
        if report is not None:
            report.append((seed, local, float((mean_loss - loss_s.detach()).abs()), worst))


def _mixed_block(b, seed):
    return mix_images(torch.randn(b, 1, 4, 4, dtype=F64), batch_ratio=0.5, generator=torch.Generator().manual_seed(seed))[1]


def _worker(rank: int, port: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    report = []
    try:
        # model-owned scale, loss-owned shift (open_clip's CLIP); PCME++'s default weights
        default = lambda gather, local: OpenCLIPPCMEPPLoss(gather=gather, local_loss=local)  # noqa: E731
        # model-owned scale and bias (SigLIP-style), every term weighted heavily
        heavy = lambda gather, local: OpenCLIPPCMEPPLoss(  # noqa: E731
            init_shift=None, vib_weight=0.3, pp_weight=0.6, gather=gather, local_loss=local)
        no_pp = lambda gather, local: OpenCLIPPCMEPPLoss(  # noqa: E731
            init_shift=None, vib_weight=0.0, pp_weight=0.0, gather=gather, local_loss=local)

        _check_case(rank, default, [5, 5], [5, 5], [None, None], bias=False, seed=1, report=report)
        _check_case(rank, heavy, [3, 6], [3, 6], [_mixed_block(3, 0), _mixed_block(6, 1)], bias=True, seed=2, report=report)
        dup = torch.eye(4, dtype=F64)
        dup[0, 1] = dup[1, 0] = 1
        _check_case(rank, heavy, [4, 3], [4, 3], [dup, None], bias=True, seed=3, report=report)
        rect = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=F64)
        _check_case(rank, heavy, [2, 2], [4, 4], [rect, rect], bias=True, seed=4, report=report)
        _check_case(rank, no_pp, [4, 4], [4, 4], [None, None], bias=True, seed=5, report=report)

        # A rank that rejects its inputs makes every rank raise, in local mode too.
        bad = torch.eye(3) * (2.0 if rank == 1 else 1.0)
        expected = (ValueError, r"values in \[0, 1\]") if rank == 1 else (RuntimeError, r"rank\(s\) \[1\] rejected")
        feats = {"mean": torch.randn(3, 4), "std": torch.randn(3, 4)}
        with pytest.raises(expected[0], match=expected[1]):
            OpenCLIPPCMEPPLoss(gather=True, local_loss=True)(feats, feats, torch.tensor(5.0), matched=bad)
        token = torch.tensor([rank + 1.0])
        dist.all_reduce(token)
        assert token.item() == 3.0
        if rank == 0 and os.environ.get("PCMEKIT_REPORT_DIFFS"):
            for seed, local, loss_diff, grad_diff in report:
                print(f"case seed={seed} local_loss={local}: |mean loss - single| = {loss_diff:.2e}, "
                      f"max |grad - single| = {grad_diff:.2e}", flush=True)
    finally:
        leave_process_group()


def test_openclip_loss_gather_and_local_loss_match_single_process_two_gloo_ranks():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
