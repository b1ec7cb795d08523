"""Prepared galleries (GalleryIndex(prepare=True), the default on the CPU): a search against the
gallery's cached column terms and packed GEMM operand gives pcmekit.topk's bits, on every SIMD
path, and the cache follows the gallery (add, load). Bad preparations are refused."""

from __future__ import annotations


import pytest
import torch

import pcmekit
from _helpers import gaussians, run_under_capabilities
from pcmekit import _core
from pcmekit.ops.topk import PREPARABLE_METRICS, prepare_gallery, topk_prepared
from pcmekit.retrieval import GalleryIndex

# N around the panel widths (8, 16, 32 columns on the generic, AVX2 and AVX-512 paths), D around
# the K blocks (kc = 192 floats on AVX-512, 256 on AVX2; w2 and kl have 2 D features); Q = 1 and 2
# run on the multi-panel kernels, 5 and 13 on the others.
SHAPES = [(1, 1, 3), (1, 97, 64), (2, 300, 130), (5, 33, 1), (13, 1027, 200), (40, 129, 17)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", PREPARABLE_METRICS)
def test_prepared_search_gives_the_bits_of_topk(metric, dtype):
    for q, n, d in SHAPES:
        gm, gl = gaussians(n, d, seed=n, dtype=dtype)
        qm, ql = gaussians(q, d, seed=q + 1000, dtype=dtype)
        index = GalleryIndex(metric, dtype=dtype)
        index.add(gm, gl)
        for k in sorted({1, min(7, n), n}):
            values, indices = index.search(qm, ql, k)
            assert index._prepared is not None  # the search went through the prepared gallery
            ref_values, ref_indices = pcmekit.topk(qm, ql, gm, gl, k, metric)
            assert torch.equal(indices, ref_indices), (q, n, d, k)
            assert torch.equal(values, ref_values), (q, n, d, k)
        # Several batches (and their copies into the result) give the same bits.
        values, indices = index.search(qm, ql, min(7, n), batch_size=3)
        ref_values, ref_indices = pcmekit.topk(qm, ql, gm, gl, min(7, n), metric)
        assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prepared_search_is_the_same_on_any_thread_count(threads):
    # The gallery is cut into shards on whole panels when it is prepared; the bits must not care.
    gm, gl = gaussians(5000, 48, seed=3, dtype=torch.float32)
    qm, ql = gaussians(200, 48, seed=4, dtype=torch.float32)
    index = GalleryIndex("csd")
    index.add(gm, gl)
    before = pcmekit.get_num_threads()
    pcmekit.set_num_threads(threads)
    try:
        values, indices = index.search(qm, ql, 9)
        ref_values, ref_indices = pcmekit.topk(qm, ql, gm, gl, 9)
    finally:
        pcmekit.set_num_threads(before)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)


def test_every_simd_path_prepares_what_it_reads():
    # The packed layout is the SIMD path's (panel width, K block); each path must read its own.
    script = """
import json, torch, pcmekit
from pcmekit.retrieval import GalleryIndex
g = torch.Generator().manual_seed(5)
out = {}
for metric in ("csd", "w2", "l2", "kl"):
    for q, n, d in ((1, 301, 600), (2, 77, 9), (20, 130, 65)):
        gm, gl = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 0.3
        qm, ql = torch.randn(q, d, generator=g), torch.randn(q, d, generator=g) * 0.3
        index = GalleryIndex(metric)
        index.add(gm, gl)
        v, i = index.search(qm, ql, 5)
        rv, ri = pcmekit.topk(qm, ql, gm, gl, 5, metric)
        out[f"{metric} {q} {n} {d}"] = bool(torch.equal(v, rv) and torch.equal(i, ri))
print(json.dumps(out))
"""
    for result in run_under_capabilities(script, ("generic", "avx2", "avx512")):
        assert all(result.values()), result


def test_the_preparation_follows_the_gallery(tmp_path):
    gm, gl = gaussians(300, 20, seed=6, dtype=torch.float32)
    qm, ql = gaussians(4, 20, seed=7, dtype=torch.float32)
    index = GalleryIndex("w2")
    index.add(gm[:100], gl[:100])
    index.search(qm, ql, 3)
    first = index._prepared
    assert first is not None and first.rows == 100
    index.add(gm[100:], gl[100:])  # grows the storage: the old packing is of other rows
    assert index._prepared is None
    values, indices = index.search(qm, ql, 3)
    assert index._prepared is not None and index._prepared.rows == 300
    ref = pcmekit.topk(qm, ql, gm, gl, 3, "w2")
    assert torch.equal(values, ref[0]) and torch.equal(indices, ref[1])
    path = tmp_path / "w2.npz"
    index.save(path)
    loaded = GalleryIndex.load(path)
    assert loaded._prepared is None
    values, indices = loaded.search(qm, ql, 3)
    assert torch.equal(values, ref[0]) and torch.equal(indices, ref[1])


def test_prepare_false_and_metrics_without_the_form_prepare_nothing():
    gm, gl = gaussians(50, 8, seed=8, dtype=torch.float32)
    qm, ql = gaussians(3, 8, seed=9, dtype=torch.float32)
    for index in (GalleryIndex("csd", prepare=False), GalleryIndex("elk"), GalleryIndex("csd", dtype=torch.float64, prepare=False)):
        index.add(gm, gl)
        values, indices = index.search(qm.to(index.dtype), ql.to(index.dtype), 4)
        assert index._prepared is None
        ref = pcmekit.topk(qm.to(index.dtype), ql.to(index.dtype), gm.to(index.dtype), gl.to(index.dtype), 4, index.metric)
        assert torch.equal(values, ref[0]) and torch.equal(indices, ref[1])
    with pytest.raises(TypeError, match="prepare must be a bool, got str"):
        GalleryIndex("csd", prepare="yes")


@pytest.mark.parametrize("metric", PREPARABLE_METRICS)
def test_nan_queries_of_a_prepared_search_are_refused_with_their_row(metric):
    # A one-batch CPU search leaves the NaN check to the kernel: same message, same row.
    gm, gl = gaussians(40, 6, seed=10, dtype=torch.float32)
    qm, ql = gaussians(5, 6, seed=11, dtype=torch.float32)
    index = GalleryIndex(metric)
    index.add(gm, gl)
    bad = qm.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"q_mean contains NaN \(first in row 3\)"):
        index.search(bad, ql, 2)
    with pytest.raises(ValueError, match=r"q_mean contains NaN \(first in row 3\)"):
        index.search(bad, ql, 2, batch_size=2)  # several batches: Python's check, global rows
    if metric != "l2":
        bad = ql.clone()
        bad[4, 0] = float("nan")
        with pytest.raises(ValueError, match=r"q_logvar contains NaN \(first in row 4\)"):
            index.search(qm, bad, 2)


def test_bad_preparations_are_refused():
    gm, gl = gaussians(70, 10, seed=12, dtype=torch.float32)
    qm, ql = gaussians(2, 10, seed=13, dtype=torch.float32)
    prepared = prepare_gallery(gm, gl, "kl")
    ok = topk_prepared(qm, ql, prepared, 3)
    ref = pcmekit.topk(qm, ql, gm, gl, 3, "kl")
    assert torch.equal(ok[0], ref[0]) and torch.equal(ok[1], ref[1])
    with pytest.raises(ValueError, match="metric must be one of csd, w2, l2, kl; got 'elk'"):
        prepare_gallery(gm, gl, "elk")
    with pytest.raises(ValueError, match="a prepared gallery serves csd, w2, l2 and kl, not elk"):
        _core.topk_prepared_layout(5, _core.dtype_code(torch.float32), 70, 10)
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        _core.topk_prepared_layout(0, _core.dtype_code(torch.float16), 70, 10)
    nan = gm.clone()
    nan[5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"g_mean contains NaN \(first in row 5\)"):
        prepare_gallery(nan, gl, "csd")
    # Another layout (another SIMD path or metric) is not a packing the kernel can read.
    wrong_tag = type(prepared)(**{**prepared.__dict__, "layout_tag": prepared.layout_tag + 1})
    with pytest.raises(ValueError, match="layout tag .* prepare the gallery again"):
        topk_prepared(qm, ql, wrong_tag, 3)
    # A packing of the wrong size, and one that is not 64-byte aligned.
    short = torch.empty((1, prepared.packed.shape[1] - 1))
    views = list(prepared.views)
    views[2] = _core.matrix_view(short)
    with pytest.raises(ValueError, match=r"g_packed must have shape \[1, packed elements\]"):
        topk_prepared(qm, ql, type(prepared)(**{**prepared.__dict__, "views": tuple(views)}), 3)
    unaligned = torch.empty((1, prepared.packed.shape[1] + 1))[:, 1:]
    views[2] = _core.matrix_view(unaligned)
    with pytest.raises(ValueError, match="g_packed must be contiguous and 64-byte aligned"):
        topk_prepared(qm, ql, type(prepared)(**{**prepared.__dict__, "views": tuple(views)}), 3)
    # Terms in a strided column: the kernel reads them as one array.
    views = list(prepared.views)
    strided = torch.empty((70, 2))[:, :1]
    strided.copy_(prepared.terms)
    views[3] = _core.matrix_view(strided)
    with pytest.raises(ValueError, match="g_terms must be contiguous .* got row stride 2"):
        topk_prepared(qm, ql, type(prepared)(**{**prepared.__dict__, "views": tuple(views)}), 3)
    with pytest.raises(ValueError, match="k must be between 1 and the gallery size N = 70, got 71"):
        topk_prepared(qm, ql, prepared, 71)
