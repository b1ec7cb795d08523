"""ShardedIndex: 2 gloo processes on loopback against one GalleryIndex over the concatenated gallery.

Every rank generates the whole gallery from a shared seed, adds its own slice (shard), searches
collectively, and compares with the single-process search it runs itself on the whole gallery.
"""

from __future__ import annotations

import datetime
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _helpers import gaussians, leave_process_group
from pcmekit.retrieval import GalleryIndex, ShardedIndex

WORLD = 2
F64 = torch.float64
MATCH = {"scale": 3.0, "shift": 2.0, "num_samples": 3}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard(rank, sizes, *tensors):
    start = sum(sizes[:rank])
    return [t[start : start + sizes[rank]] for t in tensors]


def _check_same(got, expected):
    """Identical: pcmekit.topk's score of a pair does not depend on the rest of the gallery, so
    a shard's values are bit for bit those of the whole gallery, and the merge must keep them.
    (Plain torch.equal, not torch.testing.assert_close: under a process group that imports
    torch.distributed.tensor, seconds of start-up per process.)"""
    values, indices = (torch.as_tensor(x) for x in got)
    ref_values, ref_indices = (torch.as_tensor(x) for x in expected)
    assert indices.dtype == torch.int64 and values.dtype == ref_values.dtype
    assert torch.equal(values, ref_values), (values, ref_values)
    assert torch.equal(indices, ref_indices), (indices, ref_indices)


def _case(rank, sizes, ks, *, metric="csd", dtype=F64, d=7, q=9, seed=0, batch_size=None):
    """One sharded gallery of shard sizes ``sizes`` against the single-process index."""
    total = sum(sizes)
    gm, gl = gaussians(total, d, seed=seed, dtype=dtype)
    qm, ql = gaussians(q, d, seed=seed + 100, dtype=dtype)
    sharded = ShardedIndex(metric, dtype=dtype)
    my_mean, my_logvar = _shard(rank, sizes, gm, gl)
    if sizes[rank]:  # a rank with an empty shard never calls add()
        sharded.add(my_mean[:2], my_logvar[:2])
        sharded.add(my_mean[2:], my_logvar[2:])
    assert len(sharded) == sizes[rank]
    assert sharded.shard_sizes() == list(sizes) and sharded.global_size() == total
    single = GalleryIndex(metric, dtype=dtype)
    single.add(gm, gl)
    for k in ks:
        _check_same(sharded.search(qm, ql, k, batch_size=batch_size), single.search(qm, ql, k))
    return sharded, single, qm, ql


def _worker(rank: int, port: int, tmpdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        # Both shards populated; k above rank 1's shard size (4), up to the global size.
        _case(rank, [13, 4], [1, 3, 10, 17], seed=1, batch_size=4)
        # One rank holds an empty shard (it never saw an embedding, so it does not even know D).
        _case(rank, [0, 9], [1, 5, 9], seed=2)
        _case(rank, [7, 0], [2, 7], metric="kl", seed=3)
        # float32, numpy queries in -> numpy out.
        sharded, single, qm, ql = _case(rank, [20, 15], [6], metric="w2", dtype=torch.float32, seed=4)
        got = sharded.search(qm.numpy(), ql.numpy(), 6)
        assert isinstance(got[0], np.ndarray) and got[1].dtype == np.int64
        _check_same(got, single.search(qm, ql, 6))
        _check_same(sharded.search(qm[:0], ql[:0], 6), single.search(qm[:0], ql[:0], 6))  # no queries

        # Exact ties across shards: rank 1's shard is a copy of rank 0's. Integer means and unit
        # variances make every distance an exact integer; the lower global index must come first.
        g = torch.Generator().manual_seed(5)
        base = torch.randint(-2, 3, (10, 4), generator=g).to(F64)
        queries = torch.randint(-2, 3, (5, 4), generator=g).to(F64)
        tied = ShardedIndex("csd", dtype=F64)
        tied.add(base, torch.zeros_like(base))
        single = GalleryIndex("csd", dtype=F64)
        single.add(torch.cat([base, base]), torch.zeros(20, 4, dtype=F64))
        values, indices = tied.search(queries, torch.zeros_like(queries), 20)
        _check_same((values, indices), single.search(queries, torch.zeros_like(queries), 20))
        assert torch.equal(values[:, 0::2], values[:, 1::2])  # every value at least twice
        key = values * 100 + indices  # integer values: (value, then lower index) strictly ascends
        assert bool((key[:, 1:] > key[:, :-1]).all())

        # match_prob: each rank's gallery noise is its own; the single process gets their
        # concatenation and the same seed (hence the same query noise).
        gm, gl = gaussians(17, 5, seed=6)
        qm, ql = gaussians(6, 5, seed=7)
        sizes = [11, 6]
        mp_index = ShardedIndex("match_prob", dtype=F64, seed=8, **MATCH)
        mp_index.add(*_shard(rank, sizes, gm, gl))
        noises = [None] * WORLD
        dist.all_gather_object(noises, mp_index.noise)
        assert not torch.equal(noises[0][:6], noises[1])  # independent streams per rank
        single = GalleryIndex("match_prob", dtype=F64, seed=8, **MATCH)
        single.add(gm, gl, eps=torch.cat(noises))
        for k in (1, 8, 17):
            _check_same(mp_index.search(qm, ql, k, batch_size=4), single.search(qm, ql, k))

        # A shard saved and loaded searches the same.
        path = os.path.join(tmpdir, f"shard{rank}.idx")
        mp_index.save(path)
        loaded = ShardedIndex.load(path)
        assert isinstance(loaded, ShardedIndex) and torch.equal(loaded.noise, mp_index.noise)
        _check_same(loaded.search(qm, ql, 8), single.search(qm, ql, 8))

        _check_errors(rank)
    finally:
        leave_process_group()


def _check_errors(rank: int) -> None:
    gm, gl = gaussians(6, 3, seed=9)
    index = ShardedIndex("csd", dtype=F64)
    with pytest.raises(ValueError, match="shards are all empty"):
        index.search(gm, gl, 1)
    index.add(gm[: 2 + rank], gl[: 2 + rank])  # shards of 2 and 3
    with pytest.raises(ValueError, match=r"k must be <= the number of gallery items over all shards \(5\), got 6"):
        index.search(gm, gl, 6)
    # One rank's bad argument: it raises its own error, the other one a RuntimeError, no hang.
    bad_k = 0 if rank == 1 else 2
    expected = (ValueError, "k must be >= 1") if rank == 1 else (RuntimeError, r"rank\(s\) \[1\] rejected")
    with pytest.raises(expected[0], match=expected[1]):
        index.search(gm, gl, bad_k)
    with pytest.raises(ValueError, match="ranks disagree on Q per rank"):
        index.search(gm[: 3 + rank], gl[: 3 + rank], 1)
    with pytest.raises(ValueError, match="ranks disagree on metric, metric arguments or seed"):
        other = ShardedIndex("csd" if rank == 0 else "w2", dtype=F64)
        other.add(gm, gl)
        other.search(gm, gl, 1)
    # ... and the group is still in step afterwards.
    token = torch.tensor([rank + 1.0])
    dist.all_reduce(token)
    assert token.item() == 3.0


def test_sharded_search_matches_single_process_two_gloo_ranks(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)


def test_sharded_index_needs_a_process_group():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ShardedIndex("csd")
