"""GalleryIndex: add/search against pcmekit.topk on the concatenated gallery, growth, batching,
numpy, save/load (round trip, atomic write, truncated/corrupt/foreign files), bad arguments."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch

import pcmekit
from _helpers import gaussians
from pcmekit.retrieval import GalleryIndex, topk
from pcmekit.retrieval.index import FORMAT_NAME, IndexFormatError

F64 = torch.float64
MATCH = {"scale": 3.0, "shift": 2.0, "num_samples": 3}


def assert_same_topk(values, indices, ref_values, ref_indices):
    """Identical results: the index runs pcmekit.topk on the same data, and a pair's score does
    not depend on the query batch or on the other gallery rows."""
    values, indices, ref_values, ref_indices = (
        torch.as_tensor(x) for x in (values, indices, ref_values, ref_indices)
    )
    assert indices.dtype == torch.int64 and values.dtype == ref_values.dtype
    assert torch.equal(values, ref_values), (values, ref_values)
    assert torch.equal(indices, ref_indices), (indices, ref_indices)


@pytest.mark.parametrize("metric", ["csd", "w2", "l2", "kl", "bhattacharyya", "elk"])
def test_search_equals_topk_on_concatenated_gallery(metric, device):
    gm, gl = gaussians(203, 17, seed=1, device=device)
    qm, ql = gaussians(29, 17, seed=2, device=device)
    index = GalleryIndex(metric, device=device, dtype=F64)
    for start, stop in ((0, 50), (50, 51), (51, 51), (51, 203)):  # includes an empty add
        index.add(gm[start:stop], gl[start:stop])
    assert len(index) == 203 and index.dim == 17
    for k in (1, 7, 203):
        values, indices = index.search(qm, ql, k)
        assert values.shape == indices.shape == (29, k)
        assert values.device == qm.device
        ref = topk(qm, ql, gm, None if metric == "l2" else gl, k, metric)
        assert_same_topk(values, indices, *ref)


def test_match_prob_is_deterministic_and_equals_topk():
    gm, gl = gaussians(61, 8, seed=3)
    qm, ql = gaussians(13, 8, seed=4)
    index = GalleryIndex("match_prob", dtype=F64, seed=5, **MATCH)
    index.add(gm[:20], gl[:20])
    index.add(gm[20:], gl[20:])
    assert index.noise.shape == (61, 3, 8)
    first = index.search(qm, ql, 6)
    assert_same_topk(*index.search(qm, ql, 6), *first)  # the same noise every time
    assert_same_topk(*index.search(qm, ql, 6, batch_size=4), *first)
    assert bool((first[0][:, :-1] >= first[0][:, 1:]).all())  # largest first
    eps_q = torch.randn(13, 3, 8, dtype=F64, generator=torch.Generator().manual_seed(9))
    ours = index.search(qm, ql, 6, eps_q=eps_q)
    ref = topk(qm, ql, gm, gl, 6, "match_prob", eps_q=eps_q, eps_g=index.noise, **MATCH)
    assert_same_topk(*ours, *ref)
    # Another seed draws other gallery noise.
    other = GalleryIndex("match_prob", dtype=F64, seed=6, **MATCH)
    other.add(gm, gl)
    assert not torch.equal(other.noise, index.noise)


def test_growth_by_many_small_adds():
    gm, gl = gaussians(1000, 5, seed=6)
    qm, ql = gaussians(11, 5, seed=7)
    one = GalleryIndex(dtype=F64)
    one.add(gm, gl)
    many = GalleryIndex(dtype=F64)
    reallocations, capacity = 0, 0
    start, step = 0, 1
    while start < 1000:
        stop = min(1000, start + step)
        many.add(gm[start:stop], gl[start:stop])
        if many._mean.shape[0] != capacity:  # doubling: O(log N) reallocations
            reallocations, capacity = reallocations + 1, many._mean.shape[0]
        start, step = stop, step % 3 + 1
    assert len(many) == 1000 and reallocations <= 8 and capacity < 2 * 1000
    assert torch.equal(many.mean, gm) and torch.equal(many.logvar, gl)
    assert_same_topk(*many.search(qm, ql, 10), *one.search(qm, ql, 10))


@pytest.mark.parametrize("metric", ["csd", "match_prob"])
def test_batch_size_does_not_change_results(metric):
    gm, gl = gaussians(150, 9, seed=8)
    qm, ql = gaussians(37, 9, seed=9)
    kwargs = MATCH if metric == "match_prob" else {}
    index = GalleryIndex(metric, dtype=F64, **kwargs)
    index.add(gm, gl)
    whole = index.search(qm, ql, 12, batch_size=1000)
    for batch_size in (1, 5, 36, 37):
        assert_same_topk(*index.search(qm, ql, 12, batch_size=batch_size), *whole)


def test_exact_ties_go_to_the_lower_index():
    # Integer means and unit variances: every distance is an exact integer, so ties are exact.
    g = torch.Generator().manual_seed(10)
    gm = torch.randint(-2, 3, (40, 4), generator=g).to(F64)
    gm = torch.cat([gm, gm[:10]])  # exact duplicates at 40..49
    gl = torch.zeros_like(gm)
    qm = torch.randint(-2, 3, (6, 4), generator=g).to(F64)
    index = GalleryIndex("csd", dtype=F64)
    for start in range(0, 50, 3):
        index.add(gm[start : start + 3], gl[start : start + 3])
    values, indices = index.search(qm, torch.zeros_like(qm), 50)
    ref_values, ref_indices = pcmekit.reference.topk_naive(qm, torch.zeros_like(qm), gm, gl, 50, "csd")
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
    for row_v, row_i in zip(values, indices):  # within a run of equal values, indices ascend
        same = row_v[1:] == row_v[:-1]
        assert bool((row_i[1:][same] > row_i[:-1][same]).all())


def test_numpy_in_numpy_out_and_dtype_conversion():
    gm, gl = (t.numpy() for t in gaussians(80, 6, seed=11))
    qm, ql = (t.numpy() for t in gaussians(9, 6, seed=12))
    index = GalleryIndex("w2")  # float32: float64 inputs are rounded on the way in
    index.add(gm, gl)
    assert index.mean.dtype == torch.float32
    values, indices = index.search(qm, ql, 5)
    assert isinstance(values, np.ndarray) and isinstance(indices, np.ndarray)
    assert values.dtype == np.float32 and indices.dtype == np.int64 and values.shape == (9, 5)
    ref_v, ref_i = topk(*(torch.from_numpy(x).float() for x in (qm, ql, gm, gl)), 5, "w2")
    torch.testing.assert_close(torch.from_numpy(values), ref_v)
    assert np.array_equal(indices, ref_i.numpy())
    none_v, none_i = index.search(qm[:0], ql[:0], 5)  # no queries: empty results of the right shape
    assert none_v.shape == none_i.shape == (0, 5) and none_i.dtype == np.int64


def test_prob_embedding_and_l2_without_logvar():
    gm, gl = gaussians(30, 4, seed=13)
    qm, ql = gaussians(5, 4, seed=14)
    index = GalleryIndex(dtype=F64)
    index.add(pcmekit.ProbEmbedding(gm, gl))
    assert_same_topk(*index.search(pcmekit.ProbEmbedding(qm, ql), 3), *index.search(qm, ql, 3))
    l2 = GalleryIndex("l2", dtype=F64)
    l2.add(gm)  # no logvar needed (and none stored)
    assert l2.logvar is None
    assert_same_topk(*l2.search(qm, None, 4), *topk(qm, None, gm, None, 4, "l2"))


def test_progress_bar_on_stderr(capsys):
    gm, gl = gaussians(20, 3, seed=15)
    index = GalleryIndex(dtype=F64)
    index.add(gm, gl)
    index.search(gm, gl, 2, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "100.0%" in err and "20/20 queries" in err and err.endswith("\n")
    index.search(gm, gl, 2, batch_size=4)  # stderr is not a terminal under pytest: off
    index.search(gm, gl, 2, batch_size=4, progress=False)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("metric,dtype", [("csd", torch.float32), ("kl", F64), ("l2", F64), ("match_prob", F64)])
def test_save_load_round_trip(tmp_path, metric, dtype):
    kwargs = MATCH if metric == "match_prob" else {}
    gm, gl = gaussians(70, 6, seed=16, dtype=dtype)
    qm, ql = gaussians(8, 6, seed=17, dtype=dtype)
    index = GalleryIndex(metric, dtype=dtype, seed=3, **kwargs)
    index.add(gm[:40], gl[:40])
    path = tmp_path / "gallery.idx"
    index.save(path)
    assert sorted(os.listdir(tmp_path)) == ["gallery.idx"]  # no temporary file left behind
    loaded = GalleryIndex.load(path)
    assert (loaded.metric, loaded.dtype, loaded.metric_kwargs, loaded.seed, len(loaded), loaded.dim) == (
        metric, dtype, index.metric_kwargs, 3, 40, 6)
    assert_same_topk(*loaded.search(qm, ql, 5), *index.search(qm, ql, 5))
    if metric == "match_prob":
        assert torch.equal(loaded.noise, index.noise)
    # Adding after a load continues exactly where the saved index was (noise generator included).
    index.add(gm[40:], gl[40:])
    loaded.add(gm[40:], gl[40:])
    assert_same_topk(*loaded.search(qm, ql, 5), *index.search(qm, ql, 5))
    # Saving over an existing file replaces it.
    index.save(path)
    assert len(GalleryIndex.load(path)) == 70 and sorted(os.listdir(tmp_path)) == ["gallery.idx"]


def test_file_format_is_documented_npz(tmp_path):
    gm, gl = gaussians(10, 3, seed=18)
    index = GalleryIndex("match_prob", dtype=F64, **MATCH)
    index.add(gm, gl)
    index.save(tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz", allow_pickle=False) as npz:
        header = json.loads(str(npz["header"]))
        assert set(npz.files) == {"header", "mean", "logvar", "eps", "rng_state"}
        assert np.array_equal(npz["mean"], gm.numpy()) and npz["eps"].shape == (10, 3, 3)
    assert header["format"] == FORMAT_NAME and header["version"] == 1
    assert (header["metric"], header["dtype"], header["count"], header["dim"]) == ("match_prob", "float64", 10, 3)
    assert header["metric_kwargs"] == {"scale": 3.0, "shift": 2.0, "num_samples": 3, "squared": False}


def test_empty_index_round_trip(tmp_path):
    GalleryIndex("elk").save(tmp_path / "empty")
    loaded = GalleryIndex.load(tmp_path / "empty")
    assert len(loaded) == 0 and loaded.dim is None and loaded.metric == "elk"


def test_failed_save_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    gm, gl = gaussians(10, 3, seed=19)
    index = GalleryIndex(dtype=F64)
    index.add(gm, gl)
    path = tmp_path / "g.idx"
    index.save(path)
    before = path.read_bytes()
    index.add(gm, gl)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash while writing")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        index.save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["g.idx"]


@pytest.fixture
def saved(tmp_path):
    gm, gl = gaussians(50, 4, seed=20)
    index = GalleryIndex(dtype=F64)
    index.add(gm, gl)
    path = tmp_path / "good.idx"
    index.save(path)
    return path


def _expect_load_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        GalleryIndex.load(path)
    assert isinstance(info.value, IndexFormatError) and str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_file_raises_clear_error(saved, tmp_path, keep):
    data = saved.read_bytes()
    bad = tmp_path / "truncated.idx"
    bad.write_bytes(data[: int(len(data) * keep)])
    _expect_load_error(bad, "corrupt or truncated" if keep > 0 else "not an npz")


def test_corrupted_bytes_raise_clear_error(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the mean array: the zip CRC catches it
    bad = tmp_path / "flipped.idx"
    bad.write_bytes(bytes(data))
    _expect_load_error(bad, "corrupt or truncated")


def test_foreign_files_raise_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not an index\n")
    _expect_load_error(text, "not an npz")
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    _expect_load_error(plain, "not an npz")
    random_npz = tmp_path / "random.npz"
    np.savez(random_npz, a=np.random.rand(3, 4), b=np.arange(5))
    _expect_load_error(random_npz, "no 'header' entry.*a, b")
    zipped = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "a zip, but not an npz")
    _expect_load_error(zipped, "header")


def _rewrite(saved, tmp_path, name, header_change=None, **array_changes):
    with np.load(saved, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(str(arrays["header"]))
    if header_change:
        header.update(header_change)
    arrays["header"] = np.array(json.dumps(header))
    arrays.update(array_changes)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_inconsistent_files_raise_clear_errors(saved, tmp_path):
    mean = np.load(saved)["mean"]
    _expect_load_error(_rewrite(saved, tmp_path, "a.npz", {"format": "someone.else"}), "format is 'someone.else'")
    _expect_load_error(_rewrite(saved, tmp_path, "b.npz", {"version": 99}), "newer pcmekit")
    _expect_load_error(_rewrite(saved, tmp_path, "c.npz", {"metric": "cosine"}), "metric must be one of")
    _expect_load_error(_rewrite(saved, tmp_path, "d.npz", {"count": 51}), r"'mean' must have shape \[51, 4\]")
    _expect_load_error(_rewrite(saved, tmp_path, "e.npz", mean=mean.astype(np.float32)), "'mean' must have dtype float64")
    _expect_load_error(_rewrite(saved, tmp_path, "f.npz", logvar=mean[:, :3]), r"'logvar' must have shape \[50, 4\]")
    no_logvar = tmp_path / "g.npz"
    np.savez(no_logvar, header=np.load(saved)["header"], mean=mean)
    _expect_load_error(no_logvar, "lacks it")
    bad_json = tmp_path / "h.npz"
    np.savez(bad_json, header=np.array("{not json"), mean=mean)
    _expect_load_error(bad_json, "not valid JSON")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        GalleryIndex.load(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------------------------
# bad arguments


def test_bad_arguments_raise_clear_errors():
    gm, gl = gaussians(10, 4, seed=21)
    index = GalleryIndex(dtype=F64)
    with pytest.raises(ValueError, match="empty GalleryIndex"):
        index.search(gm, gl, 1)
    index.add(gm, gl)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        index.search(gm, gl, 0)
    with pytest.raises(ValueError, match=r"k must be <= the number of gallery items \(10\), got 11"):
        index.search(gm, gl, 11)
    with pytest.raises(TypeError, match="k must be an int"):
        index.search(gm, gl, 2.0)
    with pytest.raises(TypeError, match="k is required"):
        index.search(gm, gl)
    with pytest.raises(ValueError, match=r"q_mean must have shape \[Q, D\] with D == the index's D \(4\), got \[3, 5\]"):
        index.search(torch.zeros(3, 5, dtype=F64), torch.zeros(3, 5, dtype=F64), 1)
    with pytest.raises(ValueError, match=r"mean must have shape \[n, D\] with D == the index's D \(4\), got \[2, 3\]"):
        index.add(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logvar must have the shape of mean"):
        index.add(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="needs logvar"):
        index.add(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="needs q_logvar"):
        index.search(gm, None, 1)
    with pytest.raises(ValueError, match=r"q_mean must have shape \[Q, D\] \(2-D\)"):
        index.search(gm[0], gl[0], 1)
    with pytest.raises(TypeError, match="mean must be floating point"):
        index.add(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="mean must be a torch.Tensor or numpy.ndarray, got list"):
        index.add([[0.0] * 4], [[0.0] * 4])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        index.search(gm, gl, 1, batch_size=0)
    with pytest.raises(ValueError, match="q_mean contains NaN"):
        index.search(torch.full((1, 4), float("nan"), dtype=F64), gl[:1], 1)
    bad = gl.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="logvar contains NaN .*row 3"):
        index.add(gm, bad)
    assert len(index) == 10  # the failed add added nothing
    with pytest.raises(ValueError, match="eps .* only used by metric 'match_prob'"):
        index.add(gm, gl, eps=torch.zeros(10, 7, 4))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="metric must be one of"):
        GalleryIndex("cosine")
    with pytest.raises(TypeError, match="metric 'csd' takes no metric arguments, got scale"):
        GalleryIndex("csd", scale=1.0)
    with pytest.raises(ValueError, match="'match_prob' needs scale"):
        GalleryIndex("match_prob", shift=1.0)
    with pytest.raises(TypeError, match="unknown argument.*temperature"):
        GalleryIndex("match_prob", scale=1.0, shift=1.0, temperature=2.0)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        GalleryIndex("match_prob", scale=1.0, shift=1.0, num_samples=0)
    with pytest.raises(TypeError, match="supported on CUDA only"):
        GalleryIndex(dtype=torch.float16)
    with pytest.raises(TypeError, match="dtype must be one of"):
        GalleryIndex(dtype=torch.int32)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        GalleryIndex("match_prob", scale=1.0, shift=1.0, seed=-1)
    if not pcmekit.build_info()["cuda_compiled"]:
        with pytest.raises(ValueError, match="built without CUDA support"):
            GalleryIndex(device="cuda")
