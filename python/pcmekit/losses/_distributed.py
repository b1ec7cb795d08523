"""Batch preparation for the losses: argument checks and, with ``gather=True``, the global batch.

:func:`prepare_batch` validates one rank's ``(img, txt, matched)`` and, under torch.distributed,
all-gathers the embeddings with gradients (:func:`pcmekit._distributed.gather_rows`, one
collective for all of them; ranks may hold different batch sizes) and assembles the
block-diagonal global ``matched``.

Contract (what "matching gradients" means here). Every rank gathers the embeddings of all ranks
and computes the *same* global loss L on the concatenated batch. In the backward pass each rank
holds dL/dX for the whole gathered batch; the gather's backward all-reduces (sums) it and keeps
the rows the rank owns. A rank's own embeddings therefore receive ``world_size * dL/dX_own``, and
after the gradient *averaging* that DistributedDataParallel (and FSDP) perform, every parameter
gradient -- the encoders' as well as the loss's own ``scale``/``shift``, which get dL/dscale on
every rank -- equals the single-process gradient of L on the concatenated batch. This is the
convention of PCME++'s and open_clip's gather-with-grad (a sum-reduce to the owner).

Collectives must be entered by every rank, so a rank that rejects its own inputs does not raise
before the first collective: its status travels in the metadata exchange and then *every* rank
raises (the offending one with its own message), instead of the others hanging.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

import torch

from .. import _distributed
from .._core import dtype_code
from .._distributed import collective_device, exchange_status, gather_rows
from ..embedding import ProbEmbedding
from ..ops._args import autocast_float32, check_float_matrix, gaussians_of, out_dtype

__all__ = ["Batch", "LocalBatch", "prepare_batch", "prepare_local_batch", "process_group_info", "compute_dtype"]


def process_group_info(owner: str) -> Tuple[int, int]:
    """(rank, world_size) of the default process group for a loss with ``gather=True``."""
    return _distributed.process_group_info(
        f"{owner}(gather=True)", alternative=", or use gather=False for a single-process loss"
    )


# ---------------------------------------------------------------------------------------------
# Batch preparation shared by the losses: validate, then (with gather=True) build the global batch.


class Batch(NamedTuple):
    """The batch a loss computes on (this rank's, or all ranks' with ``gather=True``).

    ``matched`` is ``None`` for the identity (so losses can take a sparse fast path), else a
    ``[B_img, B_txt]`` tensor in ``compute_dtype`` with values in [0, 1]."""

    img_mean: torch.Tensor
    img_logvar: Optional[torch.Tensor]
    txt_mean: torch.Tensor
    txt_logvar: Optional[torch.Tensor]
    matched: Optional[torch.Tensor]


#: Losses on 16-bit embeddings compute in float32 (the CSD op returns float32 for them).
compute_dtype = out_dtype


def _validate_local(
    owner: str, img: Any, txt: Any, matched: Any, need_logvar: bool, positive_lines: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    img_mean, img_logvar = gaussians_of(img, "img", means=not need_logvar)
    txt_mean, txt_logvar = gaussians_of(txt, "txt", means=not need_logvar)
    # Under torch.autocast the losses, like the ops they call, compute in float32.
    img_mean, img_logvar, txt_mean, txt_logvar = autocast_float32(img_mean, img_logvar, txt_mean, txt_logvar)
    check_float_matrix(img_mean, "img.mean", "[B_img, D]")
    check_float_matrix(txt_mean, "txt.mean", "[B_txt, D]")
    if txt_mean.shape[1] != img_mean.shape[1]:
        raise ValueError(
            f"txt.mean must have shape [B_txt, D] with D == img.mean's D ({img_mean.shape[1]}), "
            f"got {list(txt_mean.shape)}"
        )
    if txt_mean.dtype != img_mean.dtype:
        raise TypeError(f"txt has dtype {txt_mean.dtype} but img has {img_mean.dtype}; they must match")
    if txt_mean.device != img_mean.device:
        raise ValueError(f"txt is on {txt_mean.device} but img is on {img_mean.device}; they must be on one device")
    b_img, b_txt = img_mean.shape[0], txt_mean.shape[0]
    if matched is None:
        if b_img != b_txt:
            raise ValueError(
                f"{owner}: without `matched` the batch must pair img i with txt i, so B_img must equal "
                f"B_txt; got B_img={b_img}, B_txt={b_txt} (pass matched of shape [B_img, B_txt])"
            )
        return img_mean, img_logvar, txt_mean, txt_logvar, None
    if not isinstance(matched, torch.Tensor):
        raise TypeError(f"matched must be a torch.Tensor of shape [B_img, B_txt] or None, got {type(matched).__name__}")
    if matched.dtype.is_complex:
        raise TypeError(f"matched must be real (float, int or bool), got {matched.dtype}")
    if tuple(matched.shape) != (b_img, b_txt):
        raise ValueError(f"matched must have shape [B_img, B_txt] = [{b_img}, {b_txt}], got {list(matched.shape)}")
    if matched.device != img_mean.device:
        raise ValueError(f"matched is on {matched.device} but the embeddings are on {img_mean.device}; they must be on one device")
    m = matched.detach().to(compute_dtype(img_mean.dtype))
    if m.numel():
        bad = ~((m >= 0) & (m <= 1))  # NaN fails both comparisons
        if bool(bad.any()):
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"matched must have values in [0, 1], got {m[i, j].item()} at [{i}, {j}]")
        if positive_lines:
            for dim, what in ((1, "row (image)"), (0, "column (caption)")):
                sums = m.sum(dim)
                if bool((sums <= 0).any()):
                    k = int((sums <= 0).nonzero()[0])
                    raise ValueError(
                        f"{owner}: every {what} of matched needs a positive, but {what.split()[0]} {k} sums to 0"
                    )
    return img_mean, img_logvar, txt_mean, txt_logvar, m


def prepare_batch(
    owner: str,
    img: Any,
    txt: Any,
    matched: Any,
    *,
    gather: bool,
    need_logvar: bool = True,
    positive_lines: bool = False,
) -> Batch:
    """Validates one rank's inputs and, with ``gather``, returns the global batch.

    Global batch: embeddings of rank 0, then rank 1, ...; ``matched`` block-diagonal with each
    rank's ``[B_img_r, B_txt_r]`` block (the identity where a rank passed ``None``); ``None`` when
    every rank passed ``None`` (the global identity). ``positive_lines`` requires every row and
    column of ``matched`` to have a positive sum (soft cross-entropy needs it).
    """
    if not gather:
        batch = Batch(*_validate_local(owner, img, txt, matched, need_logvar, positive_lines))
        _check_not_empty(owner, batch.img_mean.shape[0], batch.txt_mean.shape[0])
        return batch

    rank, local, b_img, b_txt, any_matched = _exchange_local(owner, img, txt, matched, need_logvar, positive_lines)
    img_mean, img_logvar, txt_mean, txt_logvar, m = local
    g_img_mean, g_img_logvar, g_txt_mean, g_txt_logvar = _gather_embeddings(local, b_img, b_txt, rank, need_logvar)

    g_matched = None
    if any_matched:
        if m is None:  # this rank's block is the identity (it is square: checked above)
            m = torch.eye(b_img[rank], dtype=compute_dtype(img_mean.dtype), device=img_mean.device)
        with torch.no_grad():
            flat = gather_rows([m.reshape(-1, 1)], [[bi * bt] for bi, bt in zip(b_img, b_txt)], rank)[0]
        blocks, offset = [], 0
        for bi, bt in zip(b_img, b_txt):
            blocks.append(flat[offset : offset + bi * bt].view(bi, bt))
            offset += bi * bt
        g_matched = torch.block_diag(*blocks)
    return Batch(g_img_mean, g_img_logvar, g_txt_mean, g_txt_logvar, g_matched)


class LocalBatch(NamedTuple):
    """What a ``local_loss`` rank computes on: its own rows and every rank's embeddings.

    ``img_mean`` ... ``txt_logvar`` are this rank's ``[b_img, D]`` / ``[b_txt, D]`` tensors (its
    rows of the global matrices), ``all_*`` the global batch (rank 0's rows first; gradients flow
    back to their owners), ``img_offset`` / ``txt_offset`` where this rank's rows start in it, and
    ``matched`` this rank's ``[b_img, b_txt]`` block (``None`` for the identity): the global match
    matrix is block-diagonal, so row i of it is this block's row placed at ``txt_offset``."""

    img_mean: torch.Tensor
    img_logvar: torch.Tensor
    txt_mean: torch.Tensor
    txt_logvar: torch.Tensor
    all_img_mean: torch.Tensor
    all_img_logvar: torch.Tensor
    all_txt_mean: torch.Tensor
    all_txt_logvar: torch.Tensor
    img_offset: int
    txt_offset: int
    matched: Optional[torch.Tensor]


def prepare_local_batch(owner: str, img: Any, txt: Any, matched: Any) -> LocalBatch:
    """Validates one rank's inputs and all-gathers the embeddings (with gradients) for a loss that
    computes only this rank's rows against the global columns (``local_loss``). ``matched`` is
    not gathered: a rank's rows of the block-diagonal global matrix are its own block."""
    rank, local, b_img, b_txt, _ = _exchange_local(owner, img, txt, matched, True, False)
    img_mean, img_logvar, txt_mean, txt_logvar, m = local
    assert img_logvar is not None and txt_logvar is not None  # _validate_local checked
    g = _gather_embeddings(local, b_img, b_txt, rank, True)
    assert g[1] is not None and g[3] is not None
    return LocalBatch(
        img_mean, img_logvar, txt_mean, txt_logvar, g[0], g[1], g[2], g[3], sum(b_img[:rank]), sum(b_txt[:rank]), m
    )


def _exchange_local(
    owner: str, img: Any, txt: Any, matched: Any, need_logvar: bool, positive_lines: bool
) -> Tuple[int, Tuple[Any, ...], List[int], List[int], bool]:
    """Validates this rank's inputs and exchanges (rows, D, dtype, status) with every rank; raises
    on every rank when any rank rejected its inputs. Returns (rank, local tensors, per-rank image
    rows, per-rank caption rows, whether any rank passed a ``matched``)."""
    rank, _ = process_group_info(owner)
    error: Optional[Exception] = None
    local: Optional[Tuple[Any, ...]]
    try:
        local = _validate_local(owner, img, txt, matched, need_logvar, positive_lines)
    except (TypeError, ValueError) as err:
        error, local = err, None
    if local is None:
        hint = None
        for x in (img, txt):
            t = x.mean if isinstance(x, ProbEmbedding) else x
            if isinstance(t, torch.Tensor):
                hint = t.device
                break
        meta = [0, 0, 0, 0, -1]
    else:
        img_mean, _, txt_mean, _, m = local
        hint = img_mean.device
        meta = [img_mean.shape[0], txt_mean.shape[0], img_mean.shape[1], int(m is not None),
                dtype_code(img_mean.dtype)]
    metas = exchange_status(meta, error, collective_device(hint), f"{owner}(gather=True)")
    assert local is not None  # exchange_status raised otherwise
    dims = {mt[2] for mt in metas}
    dtypes = {mt[4] for mt in metas}
    if len(dims) > 1 or len(dtypes) > 1:
        raise ValueError(
            f"{owner}(gather=True): all ranks must pass embeddings of one D and dtype; got D per rank "
            f"{[mt[2] for mt in metas]} and dtype codes {[mt[4] for mt in metas]}"
        )
    b_img = [mt[0] for mt in metas]
    b_txt = [mt[1] for mt in metas]
    _check_not_empty(owner, sum(b_img), sum(b_txt))
    return rank, local, b_img, b_txt, any(mt[3] for mt in metas)


def _gather_embeddings(
    local: Tuple[Any, ...], b_img: List[int], b_txt: List[int], rank: int, need_logvar: bool
) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """The global (img_mean, img_logvar, txt_mean, txt_logvar), in one collective."""
    img_mean, img_logvar, txt_mean, txt_logvar, _ = local
    if need_logvar:
        tensors = [img_mean, img_logvar, txt_mean, txt_logvar]
        rows = [[bi, bi, bt, bt] for bi, bt in zip(b_img, b_txt)]
        gi, gv, gt, gw = gather_rows(tensors, rows, rank)
        return gi, gv, gt, gw
    rows = [[bi, bt] for bi, bt in zip(b_img, b_txt)]
    gi, gt = gather_rows([img_mean, txt_mean], rows, rank)
    return gi, None, gt, None


def _check_not_empty(owner: str, b_img: int, b_txt: int) -> None:
    if b_img == 0 or b_txt == 0:
        raise ValueError(f"{owner} needs at least one image and one caption, got B_img={b_img}, B_txt={b_txt}")
