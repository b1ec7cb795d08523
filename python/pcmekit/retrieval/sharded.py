"""A gallery sharded over the ranks of a torch.distributed group: :class:`ShardedIndex`."""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

from .._core import dtype_code
from .._distributed import all_gather, collective_device, exchange_metadata, exchange_status, process_group_info
from .._progress import stderr_is_terminal
from ..ops._args import out_dtype
from .index import Array, GalleryIndex, PreparedSearch

__all__ = ["ShardedIndex"]


class ShardedIndex(GalleryIndex):
    """A gallery sharded over the ranks of a torch.distributed process group.

    ``ShardedIndex(metric="csd", device="cpu", dtype=torch.float32, *, group=None, seed=0, prepare=True,
    **metric_kwargs)`` (``prepare`` as in :class:`GalleryIndex`)

    Each rank holds one shard: the rows of its own :meth:`add` calls (a shard may stay empty).
    Global indices number the shards in rank order: rank r's local row ``i`` is global index
    ``sum(len of shards of ranks < r) + i``, so the global gallery is the concatenation of the
    shards of ranks 0, 1, ...

    :meth:`search` is a *collective*: every rank of ``group`` (default: the default group) calls
    it with the same queries and ``k``, and every rank gets the same ``(values [Q, k],
    indices [Q, k])``, identical to a :class:`GalleryIndex` search over the concatenated gallery.
    Each rank searches its shard for ``min(k, shard size)`` results, adds its offset, pads to
    ``k`` and all-gathers values and indices (two tensor ``all_gather`` calls: on CUDA tensors for
    NCCL, CPU tensors for gloo); the lists are merged by a stable sort on the values in rank
    order, which keeps the lower global index first among ties. Shard sizes, ``Q``, ``k``, D,
    dtype and the index configuration are exchanged (and checked to agree) first; when a rank
    rejects its arguments, every rank raises instead of leaving the others waiting.

    ``len(index)`` is this rank's shard size (no communication); :meth:`shard_sizes` and
    :meth:`global_size` are collectives. ``match_prob``: rank r draws its gallery noise from a
    stream seeded from ``(seed, r)``; query noise comes from ``seed`` alone, so ranks must share
    the seed (checked). :meth:`save` writes this rank's shard; :meth:`load` reads one (call it on
    every rank with that rank's file).
    """

    def __init__(
        self,
        metric: str = "csd",
        device: Union[str, torch.device] = "cpu",
        dtype: Union[torch.dtype, str] = torch.float32,
        *,
        group: Any = None,
        seed: int = 0,
        prepare: bool = True,
        **metric_kwargs: Any,
    ) -> None:
        self._group = group
        self._rank, self._world_size = process_group_info(
            "ShardedIndex", group, alternative=", or use GalleryIndex in one process"
        )
        super().__init__(metric, device, dtype, seed=seed, prepare=prepare, **metric_kwargs)
        # Queries are checked where a failure can still be announced to every rank.
        self._kernel_checks_nan = False

    def _noise_rank(self) -> int:
        return self._rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def group(self) -> Any:
        return self._group

    def _all_gather(self, local: torch.Tensor) -> List[torch.Tensor]:
        return all_gather(local, self._group)

    def _exchange(self, values: Sequence[int]) -> List[List[int]]:
        return exchange_metadata(values, collective_device(self._device, self._group), self._group)

    def shard_sizes(self) -> List[int]:
        """Every rank's shard size, in rank order (collective)."""
        return [m[0] for m in self._exchange([self._n])]

    def global_size(self) -> int:
        """The number of items over all shards (collective)."""
        return sum(self.shard_sizes())

    def _config_checksum(self) -> int:
        config = json.dumps([self._metric, self._metric_kwargs, self._seed], sort_keys=True)
        return zlib.crc32(config.encode())

    def _search(self, prepare: Callable[[], PreparedSearch], progress: Optional[bool]) -> Tuple[Array, Array]:
        """The collective :meth:`search` (the class docstring): ``(values [Q, k], indices [Q, k])``
        with global indices, the same on every rank. ``progress=None`` shows the bar of rank 0
        only (when its stderr is a terminal).

        Raises (on every rank): ValueError when any rank's arguments are bad, ranks disagree on
        Q, k, D, dtype or configuration, every shard is empty, or ``k`` exceeds the global size.
        """
        error: Optional[BaseException] = None
        try:
            qm, ql, k_, batch_size_, eps, to_numpy = prepare()
            meta = [self._n, -1 if self._dim is None else self._dim, qm.shape[0], qm.shape[1], k_,
                    dtype_code(self._dtype), self._config_checksum()]
        except (TypeError, ValueError) as err:
            error = err
            meta = [0, -1, 0, 0, 0, 0, 0]
        metas = exchange_status(meta, error, collective_device(self._device, self._group),
                                "ShardedIndex.search", "arguments", self._group)
        self._check_agreement(metas)
        sizes = [m[0] for m in metas]
        total = sum(sizes)
        if total == 0:
            raise ValueError("cannot search a ShardedIndex whose shards are all empty: add() embeddings first")
        if k_ > total:
            raise ValueError(f"k must be <= the number of gallery items over all shards ({total}), got {k_}")

        q = qm.shape[0]
        value_dtype = out_dtype(self._dtype)
        if q == 0:  # every rank knows Q == 0: no data to exchange
            empty = torch.empty((0, k_), dtype=value_dtype, device=self._device)
            return self._deliver(empty, empty.long(), qm.device, to_numpy)
        offset = sum(sizes[: self._rank])
        k_local = min(k_, self._n)
        descending = self._metric == "match_prob"
        comm = collective_device(self._device, self._group)
        pad_values = torch.full((q, k_), -math.inf if descending else math.inf, dtype=value_dtype, device=comm)
        pad_indices = torch.full((q, k_), -1, dtype=torch.int64, device=comm)
        if k_local > 0:
            show = progress if progress is not None else (
                self._rank == 0 and stderr_is_terminal() and q > batch_size_
            )
            v, i = self._search_local(qm, ql, k_local, batch_size_, bool(show), eps)
            pad_values[:, :k_local] = v
            pad_indices[:, :k_local] = i + offset
        all_values = self._all_gather(pad_values)
        all_indices = self._all_gather(pad_indices)
        # Rank order = ascending global indices, and each rank's list has ties in index order:
        # a stable sort of the concatenation keeps the lower global index first among ties.
        counts = [min(k_, s) for s in sizes]
        merged_v = torch.cat([v[:, :c] for v, c in zip(all_values, counts)], dim=1)
        merged_i = torch.cat([i[:, :c] for i, c in zip(all_indices, counts)], dim=1)
        order = torch.sort(merged_v, dim=1, descending=descending, stable=True).indices[:, :k_]
        values = torch.gather(merged_v, 1, order)
        indices = torch.gather(merged_i, 1, order)
        return self._deliver(values, indices, qm.device, to_numpy)

    def _check_agreement(self, metas: List[List[int]]) -> None:
        def column(c: int) -> List[int]:
            return [m[c] for m in metas]

        dims = {d for d in column(1) if d >= 0} | set(column(3))
        problems = []
        if len(set(column(2))) > 1:
            problems.append(f"Q per rank {column(2)}")
        if len(set(column(4))) > 1:
            problems.append(f"k per rank {column(4)}")
        if len(dims) > 1:
            problems.append(f"shard D per rank {column(1)} (-1: empty) and query D per rank {column(3)}")
        if len(set(column(5))) > 1:
            problems.append(f"dtype codes per rank {column(5)}")
        if len(set(column(6))) > 1:
            problems.append("metric, metric arguments or seed")
        if problems:
            raise ValueError(
                "ShardedIndex.search: every rank must pass the same queries and k to an index of the same "
                "configuration; ranks disagree on " + "; ".join(problems)
            )

    @classmethod
    def load(  # type: ignore[override]
        cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", *, group: Any = None
    ) -> "ShardedIndex":
        """Reads one rank's shard written by :meth:`save` (or any GalleryIndex file) into a
        ShardedIndex of ``group``. Not a collective; errors as :meth:`GalleryIndex.load`."""
        return cls._load(path, device, {"group": group})
