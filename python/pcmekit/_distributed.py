"""The torch.distributed plumbing shared by the losses (``gather=True``) and :class:`ShardedIndex`.

One process-group check, one rule for the device collectives run on, one metadata exchange and
one all-gather (with and without gradients). Collectives must be entered by every rank, so callers
exchange a status with :func:`exchange_status` before raising: a rank that rejects its inputs
makes every rank raise instead of leaving the others waiting.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

__all__ = [
    "process_group_info",
    "collective_device",
    "all_gather",
    "exchange_metadata",
    "exchange_status",
    "gather_rows",
]


def process_group_info(owner: str, group: Any = None, *, alternative: str = "") -> Tuple[int, int]:
    """(rank, world_size) in ``group`` (the default group for None); a clear error naming
    ``owner`` when torch.distributed is missing or not initialised. ``alternative`` says what to
    use in one process instead."""
    if not dist.is_available():
        raise RuntimeError(f"{owner} needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{owner} needs an initialised torch.distributed process group "
            f"(call torch.distributed.init_process_group first){alternative}"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(f"this process is not a member of the {owner} group")
    return rank, dist.get_world_size(group)


def collective_device(hint: Optional[torch.device], group: Any = None) -> torch.device:
    """The device a collective's tensors live on: the data's device when it is a GPU and the
    backend takes GPU tensors; a GPU when the backend is NCCL alone (its tensors must live on
    one); the CPU otherwise (gloo, or a mixed ``cpu:gloo,cuda:nccl`` backend with CPU data)."""
    backend = str(dist.get_backend(group)).lower()
    if "nccl" not in backend:
        return torch.device("cpu")
    if hint is not None and hint.type == "cuda":
        return hint
    if "gloo" not in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(local: torch.Tensor, group: Any = None) -> List[torch.Tensor]:
    """Every rank's ``local`` (same shape and dtype on every rank), in rank order."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return parts


def exchange_metadata(values: Sequence[int], device: torch.device, group: Any = None) -> List[List[int]]:
    """All-gathers a short list of ints (the same length on every rank); returns one list per rank."""
    local = torch.tensor(list(values), dtype=torch.int64, device=device)
    return [p.tolist() for p in all_gather(local, group)]


def exchange_status(
    meta: Sequence[int],
    error: Optional[BaseException],
    device: torch.device,
    owner: str,
    what: str = "inputs",
    group: Any = None,
) -> List[List[int]]:
    """All-gathers this rank's ``meta`` (ints, the same length on every rank) with whether it
    rejected its ``what`` (``error``), then raises on every rank if any did: ``error`` itself on
    the rank that raised it, a RuntimeError naming the failed ranks on the others. So no rank is
    left waiting in the next collective. Returns every rank's ``meta``."""
    metas = exchange_metadata([int(error is not None), *meta], device, group)
    if error is not None:
        raise error
    failed = [r for r, m in enumerate(metas) if m[0]]
    if failed:
        raise RuntimeError(
            f"{owner}: rank(s) {failed} rejected their {what} (see the error raised there); "
            "every rank stops so that none waits in a collective"
        )
    return [m[1:] for m in metas]


class _AllGatherRows(torch.autograd.Function):
    """Concatenation of every rank's 1-D buffer (``numels[r]`` elements from rank r).

    Forward: pad to the largest buffer, ``all_gather``, trim. Backward: ``all_reduce(SUM)`` of the
    gradient of the concatenation, then this rank's slice (pcmekit/losses/_distributed.py says
    why a sum).
    """

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, numels: Tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.numels = numels
        ctx.rank = rank
        width = max(numels)
        padded = local.new_zeros(width)
        padded[: local.numel()] = local
        parts = all_gather(padded)
        return torch.cat([p[:n] for p, n in zip(parts, numels)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.numels[: ctx.rank])
        return grad[start : start + ctx.numels[ctx.rank]], None, None


def gather_rows(
    tensors: Sequence[torch.Tensor], rows: Sequence[Sequence[int]], rank: int
) -> List[torch.Tensor]:
    """Global versions of K 2-D tensors, rows of rank 0 first, gradients flowing to their owners.

    ``tensors[k]`` is ``[rows[rank][k], width_k]`` on this rank; ``rows[r][k]`` is rank r's row
    count of tensor k (from :func:`exchange_metadata`), and every rank must pass the same widths,
    dtype and device. One data collective for all K tensors.
    """
    widths = [t.shape[1] for t in tensors]
    local = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.empty(0)
    numels = tuple(sum(n * w for n, w in zip(rank_rows, widths)) for rank_rows in rows)
    flat = _AllGatherRows.apply(local, numels, rank)
    pieces: List[List[torch.Tensor]] = [[] for _ in tensors]
    offset = 0
    for rank_rows in rows:
        for k, (n, w) in enumerate(zip(rank_rows, widths)):
            pieces[k].append(flat[offset : offset + n * w].view(n, w))
            offset += n * w
    return [torch.cat(p) for p in pieces]
