"""pcmekit.metrics: hand-computed cases, the PyPI package eccv-caption on its real COCO ids, errors."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from pcmekit import metrics


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------

# Two queries over a gallery of 6. Query 0: positives {0, 1, 2}, ranked 3 1 4 0 5 2, so
# rel = 0 1 0 1 0 1: R@1 = 0, R@5 = 1, R-P = |{3,1,4} & P| / 3 = 1/3, mAP@R = (0 + 1/2 + 0) / 3 = 1/6.
# Query 1: positive {2} ranked first: everything 1.
HAND_INDICES = [[3, 1, 4, 0, 5, 2], [2, 0, 1, 5, 3, 4]]
HAND_POSITIVES = [[1, 0, 2], [2]]


def test_hand_computed_metrics():
    res = metrics.retrieval_metrics(HAND_INDICES, HAND_POSITIVES, ks=(1, 2, 5), per_query=True)
    assert res["R@1"] == pytest.approx(50.0)
    assert res["R@2"] == pytest.approx(100.0)
    assert res["R@5"] == pytest.approx(100.0)
    assert res["R-P"] == pytest.approx((100 / 3 + 100) / 2)
    assert res["mAP@R"] == pytest.approx((100 / 6 + 100) / 2)
    np.testing.assert_allclose(res["per_query"]["mAP@R"], [100 / 6, 100])
    assert res["n_queries"] == 2


def test_hand_computed_map_orders_matter():
    # R = 2, positives at ranks 1 and 2 -> 1; at ranks 2 and 1 of R... only rank order within top R counts.
    assert metrics.map_at_r([[0, 1, 2]], [[0, 1]]) == pytest.approx(100.0)
    # positives at ranks 1 and 3 (R = 2): (1/1 + 0) / 2 = 0.5 ; R-P = 1/2
    assert metrics.map_at_r([[0, 2, 1]], [[0, 1]]) == pytest.approx(50.0)
    assert metrics.r_precision([[0, 2, 1]], [[0, 1]]) == pytest.approx(50.0)
    # positives at ranks 2 and 3 of 3 with R = 3 (positives {a, b, c}, c at rank 1): all hit -> 1.
    assert metrics.map_at_r([[2, 1, 0]], [[0, 1, 2]]) == pytest.approx(100.0)
    # rank 2 only, R = 2: (0 + 1/2) / 2
    assert metrics.map_at_r([[5, 1, 0]], [[1, 3]]) == pytest.approx(25.0)


def test_mapping_ground_truth_evaluates_only_named_queries():
    res = metrics.retrieval_metrics(HAND_INDICES, {1: [2]}, ks=(1,))
    assert res["n_queries"] == 1 and res["R@1"] == 100.0 and res["mAP@R"] == 100.0


def test_full_gallery_allows_k_larger_than_gallery_recall():
    # Gallery of 3, all retrieved: R@10 is defined (the whole gallery was ranked).
    res = metrics.recall_at_k([[2, 0, 1]], [[1]], ks=(1, 10), num_gallery=3)
    assert res == {"R@1": 0.0, "R@10": 100.0}


def test_rsum():
    i2t = {"R@1": 10.0, "R@5": 20.0, "R@10": 30.0}
    t2i = {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0}
    assert metrics.rsum(i2t, t2i) == 66.0
    with pytest.raises(ValueError, match="R@10"):
        metrics.rsum({"R@1": 1, "R@5": 2}, t2i)


def test_pmrp_hand_computed():
    # Codes: query 0 = 110, gallery = [110, 100, 011, 111]; Hamming = 0, 1, 2, 1.
    qc = [[1, 1, 0]]
    gc = [[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]]
    ranked = [[1, 0, 2, 3]]
    res = metrics.pmrp(ranked, qc, gc, per_query=True)
    # t=0: positives {0}, R=1, top-1 = 1 -> 0.   t=1: {0,1,3}, R=3, top-3 {1,0,2} -> 2/3.
    # t=2: everything, R=4 -> 1.
    assert res["PMRP@0"] == pytest.approx(0.0)
    assert res["PMRP@1"] == pytest.approx(200 / 3)
    assert res["PMRP@2"] == pytest.approx(100.0)
    assert res["PMRP"] == pytest.approx((0 + 200 / 3 + 100) / 3)
    assert res["n_skipped"] == {0: 0, 1: 0, 2: 0}


def test_pmrp_matches_pcme_style_brute_force():
    rng = np.random.default_rng(1)
    q, n, c = 40, 60, 8
    qc = rng.random((q, c)) < 0.3
    gc = rng.random((n, c)) < 0.3
    ranked = np.stack([rng.permutation(n) for _ in range(q)])
    res = metrics.pmrp(ranked, qc.astype(np.uint8), torch.from_numpy(gc), per_query=True)
    for t in (0, 1, 2):
        expect = []
        for i in range(q):
            # PCME's evaluate_plausible_metrics: distances along the full ranked list.
            dist = np.abs(gc[ranked[i]].astype(int) - qc[i].astype(int)).sum(1)
            matched = dist <= t
            r = matched.sum()
            if r:
                expect.append(matched[:r].sum() / r)
        assert res[f"PMRP@{t}"] == pytest.approx(100 * np.mean(expect))
        assert res["n_skipped"][t] == q - len(expect)


def _naive_average_ranks(x):
    # rank_i = 1 + #(x_j < x_i) + (#(x_j == x_i) - 1) / 2
    x = np.asarray(x, dtype=float)
    return 1 + (x[None, :] < x[:, None]).sum(1) + ((x[None, :] == x[:, None]).sum(1) - 1) / 2


def test_spearman_is_pearson_of_average_ranks():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    expect = np.corrcoef(_naive_average_ranks(x), _naive_average_ranks(y))[0, 1]
    assert metrics.spearman(x, y) == pytest.approx(expect, abs=1e-12)
    assert metrics.spearman(torch.arange(5), torch.tensor([5.0, 4, 3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_uncertainty_analysis_bins():
    u = np.arange(100, dtype=float)[::-1]      # query 0 most uncertain
    v = np.where(np.arange(100) >= 50, 100.0, 0.0)  # the 50 least uncertain all hit
    res = metrics.uncertainty_analysis(u, v, n_bins=10)
    assert res["bin_count"] == [10] * 10
    assert res["bin_value"] == [100.0] * 5 + [0.0] * 5
    assert res["bin_uncertainty"][0] == pytest.approx(4.5)
    assert res["spearman"] < -0.8
    with pytest.raises(ValueError, match="at least n_bins"):
        metrics.uncertainty_analysis(u[:5], v[:5])
    with pytest.raises(ValueError, match="one per query"):
        metrics.uncertainty_analysis(u, v[:3])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_error_unknown_query():
    with pytest.raises(ValueError, match=r"names query 5, but indices has 2 rows"):
        metrics.retrieval_metrics(HAND_INDICES, {5: [1]}, ks=(1,))


def test_error_k_smaller_than_r():
    with pytest.raises(ValueError, match=r"query 0 has R = 3 positives but indices has only k = 2"):
        metrics.retrieval_metrics([[0, 1], [1, 0]], [[0, 1, 2], [1]], ks=(1,))
    # Recall alone is fine with k < R.
    assert metrics.recall_at_k([[0, 1], [1, 0]], [[0, 1, 2], [1]], ks=(1, 2))["R@1"] == 100.0
    with pytest.raises(ValueError, match=r"PMRP at t = 1 needs k >= R"):
        metrics.pmrp([[0]], [[1, 0]], [[1, 0], [0, 0], [1, 1]])


def test_error_k_smaller_than_recall_k():
    with pytest.raises(ValueError, match=r"R@10 needs at least 10 ranked items"):
        metrics.recall_at_k(HAND_INDICES, HAND_POSITIVES, ks=(1, 10))


def test_error_bad_inputs():
    with pytest.raises(ValueError, match="has 1 entries but indices has 2 rows"):
        metrics.retrieval_metrics(HAND_INDICES, [[1]], ks=(1,))
    with pytest.raises(ValueError, match="query 1 is empty"):
        metrics.retrieval_metrics(HAND_INDICES, [[1], []], ks=(1,))
    with pytest.raises(ValueError, match="names gallery item 9, but the gallery has 6"):
        metrics.retrieval_metrics(HAND_INDICES, [[9], [1]], ks=(1,), num_gallery=6)
    with pytest.raises(ValueError, match="row 0 repeats gallery item 1"):
        metrics.retrieval_metrics([[1, 1, 0]], [[0]], ks=(1,))
    with pytest.raises(ValueError, match=r"shape \[Q, k\]"):
        metrics.retrieval_metrics([1, 2, 3], [[0]], ks=(1,))
    with pytest.raises(TypeError, match="integers"):
        metrics.retrieval_metrics(torch.zeros(2, 3), HAND_POSITIVES, ks=(1,))
    with pytest.raises(ValueError, match="holds gallery index 7"):
        metrics.retrieval_metrics([[7, 0]], [[0]], ks=(1,), num_gallery=6)
    with pytest.raises(ValueError, match="K in ks"):
        metrics.recall_at_k(HAND_INDICES, HAND_POSITIVES, ks=(0,))
    with pytest.raises(ValueError, match="multi-hot"):
        metrics.pmrp([[0]], [[2]], [[1]])
    with pytest.raises(ValueError, match="bits per code"):
        metrics.pmrp([[0]], [[1, 0]], [[1]])


# --------------------------------------------------------------------------------------------
# Against the PyPI package eccv-caption, on its shipped COCO annotation ids
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eccv():
    with warnings.catch_warnings():
        # eccv_caption warns at import when tqdm / ujson are missing; neither matters here.
        warnings.simplefilter("ignore")
        eccv_caption = pytest.importorskip("eccv_caption")
        m = eccv_caption.Metrics()
    return m


def _noisy_ranking(rng, positives, pool, k, p_hit=0.5):
    """A ranked list of k distinct items: some positives placed at random ranks, the rest drawn
    from `pool`, so metrics land away from 0 and 1."""
    pos = [p for p in positives if rng.random() < p_hit]
    chosen = list(dict.fromkeys(pos))
    taken = set(chosen)
    while len(chosen) < k:
        item = int(pool[rng.integers(len(pool))])
        if item not in taken:
            taken.add(item)
            chosen.append(item)
    chosen = chosen[:k]
    rng.shuffle(chosen)
    return chosen


def test_eccv_metrics_match_eccv_caption(eccv):
    rng = np.random.default_rng(0)
    image_ids = sorted(eccv.coco_gts["i2t"])
    caption_ids = [int(c) for c in eccv.coco_ids]
    # Two ECCV positives (caption ids 144675, 467259) are not among the 25K test captions; they
    # join the gallery so that both implementations can rank them.
    named = {c for v in eccv.eccv_gts["i2t"].values() for c in v}
    caption_ids += sorted(named - set(caption_ids))
    img_pos = {iid: i for i, iid in enumerate(image_ids)}
    cap_pos = {cid: j for j, cid in enumerate(caption_ids)}
    for side, gts, g_pos, g_ids in (("i2t", eccv.eccv_gts["i2t"], cap_pos, caption_ids),
                                    ("t2i", eccv.eccv_gts["t2i"], img_pos, image_ids)):
        queries = sorted(gts)
        k = max(len(v) for v in gts.values()) + 5
        rows, truth, retrieved = [], {}, {}
        for row, qid in enumerate(queries):
            ranked = _noisy_ranking(rng, gts[qid], g_ids, k)
            retrieved[qid] = ranked
            rows.append([g_pos[x] for x in ranked])
            truth[row] = [g_pos[x] for x in gts[qid]]
        ours = metrics.retrieval_metrics(np.array(rows), truth, ks=(1, 5, 10), num_gallery=len(g_ids))
        ref = eccv.eccv_metrics({side: retrieved}, side)
        assert ours["R@1"] == pytest.approx(100 * ref["eccv_r1"][side], abs=1e-9)
        assert ours["R-P"] == pytest.approx(100 * ref["eccv_rprecision"][side], abs=1e-9)
        assert ours["mAP@R"] == pytest.approx(100 * ref["eccv_map_at_r"][side], abs=1e-9)
        for K in (5, 10):
            assert ours[f"R@{K}"] == pytest.approx(100 * eccv.eccv_recalls({side: retrieved}, side, K=K)[side])
        assert 5 < ours["mAP@R"] < 95 and 5 < ours["R@1"] < 95  # a non-trivial comparison


def _fold_rankings(rng, q_fold, g_fold, truth, k):
    """[Q, k] distinct gallery rows per query: half from the query's fold, half from the others,
    shuffled; with probability 1/2 the first positive is moved to the front."""
    n_q = len(q_fold)
    members = [np.flatnonzero(g_fold == f) for f in range(5)]
    others = [np.flatnonzero(g_fold != f) for f in range(5)]
    rows = np.empty((n_q, k), dtype=np.int64)
    half = k // 2
    for f in range(5):
        sel = np.flatnonzero(q_fold == f)
        own, rest = members[f], others[f]
        a = (rng.integers(len(own), size=len(sel))[:, None] + np.arange(half)) % len(own)
        b = (rng.integers(len(rest), size=len(sel))[:, None] + np.arange(k - half)) % len(rest)
        rows[sel] = np.concatenate([own[a], rest[b]], axis=1)
    rows = np.take_along_axis(rows, np.argsort(rng.random(rows.shape), axis=1), axis=1)
    for q in np.flatnonzero(rng.random(n_q) < 0.5):
        p = truth[q][0]
        if p not in rows[q]:
            rows[q, 1:] = rows[q, :-1].copy()
            rows[q, 0] = p
        else:
            j = int(np.flatnonzero(rows[q] == p)[0])
            rows[q, [0, j]] = rows[q, [j, 0]]
    return rows


def test_coco_1k_matches_eccv_caption(eccv):
    rng = np.random.default_rng(1)
    caption_ids = [int(c) for c in eccv.coco_ids]
    t2i_gt, i2t_gt = eccv.coco_gts["t2i"], eccv.coco_gts["i2t"]
    caption_fold = metrics.contiguous_folds(len(caption_ids), 5)
    # eccv_caption: fold f's images are the images of fold f's captions.
    fold_of_image = {}
    for cid, f in zip(caption_ids, caption_fold):
        for iid in t2i_gt[cid]:
            assert fold_of_image.setdefault(iid, int(f)) == f
    image_ids = sorted(fold_of_image)
    img_pos = {iid: i for i, iid in enumerate(image_ids)}
    cap_pos = {cid: j for j, cid in enumerate(caption_ids)}
    image_fold = np.array([fold_of_image[i] for i in image_ids])

    k = 30
    i2t_truth = [[cap_pos[c] for c in i2t_gt[iid]] for iid in image_ids]
    t2i_truth = [[img_pos[i] for i in t2i_gt[cid]] for cid in caption_ids]
    i2t_rows = _fold_rankings(rng, image_fold, caption_fold, i2t_truth, k)
    t2i_rows = _fold_rankings(rng, caption_fold, image_fold, t2i_truth, k)
    i2t_ret = {iid: [caption_ids[j] for j in row] for iid, row in zip(image_ids, i2t_rows.tolist())}
    t2i_ret = {cid: [image_ids[j] for j in row] for cid, row in zip(caption_ids, t2i_rows.tolist())}

    ours = metrics.n_fold_recalls(np.array(i2t_rows), np.array(t2i_rows), i2t_truth, t2i_truth,
                                  image_fold, caption_fold)
    for K in (1, 5, 10):
        ref = eccv.coco_1k_recalls({"i2t": i2t_ret, "t2i": t2i_ret}, "all", K=K)
        assert ours["i2t"][f"R@{K}"] == pytest.approx(100 * ref["i2t"], abs=1e-9)
        assert ours["t2i"][f"R@{K}"] == pytest.approx(100 * ref["t2i"], abs=1e-9)
    assert 10 < ours["t2i"]["R@1"] < 90 and 10 < ours["i2t"]["R@1"] < 90
    assert ours["RSUM"] == pytest.approx(sum(ours[s][f"R@{K}"] for s in ("i2t", "t2i") for K in (1, 5, 10)))


def test_n_fold_needs_enough_fold_items():
    # Gallery of 4 captions in 2 folds; image 0 (fold 0) ranked only fold-1 items -> cannot score R@1.
    with pytest.raises(ValueError, match=r"fold 0: query 0 has only 0 items of the fold"):
        metrics.n_fold_recalls([[2, 3], [2, 3]], [[0], [0], [1], [1]], [[0], [2]], [[0], [0], [1], [1]],
                               image_fold=[0, 1], caption_fold=[0, 0, 1, 1], ks=(1,))
