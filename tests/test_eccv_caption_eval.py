"""pcmekit.metrics.eccv_caption_eval against the eccv-caption package (0.1.0): the same rankings,
built on the package's own shipped COCO ids, must give dicts that compare equal, value for value."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pcmekit import metrics

KS = (1, 5, 10)


@pytest.fixture(scope="module")
def eccv():
    with warnings.catch_warnings():
        # eccv_caption warns at import when tqdm / ujson are missing; neither matters here.
        warnings.simplefilter("ignore")
        eccv_caption = pytest.importorskip("eccv_caption")
        m = eccv_caption.Metrics()
    return m


def _ranking(rng, must, maybe, pool, k, spread):
    """k distinct COCO ids: `must` and, with probability 0.7 each, `maybe` placed near the front
    (exponential ranks), the rest random fillers from `pool`."""
    chosen = list(dict.fromkeys([*must, *(p for p in maybe if rng.random() < 0.7)]))[:k]
    taken = set(chosen)
    fillers = []
    while len(fillers) < k - len(chosen):
        for item in pool[rng.integers(len(pool), size=k)].tolist():
            if item not in taken and len(fillers) < k - len(chosen):
                taken.add(item)
                fillers.append(item)
    ranks = np.minimum(rng.exponential(spread, size=len(chosen)).astype(np.int64), k - 1)
    out = fillers
    for r, item in sorted(zip(ranks.tolist(), chosen)):
        out.insert(r, item)
    return out[:k]


@pytest.fixture(scope="module")
def rankings(eccv):
    rng = np.random.default_rng(15)
    image_ids = np.array(sorted(eccv.coco_gts["i2t"]), dtype=np.int64)
    caption_ids = [int(c) for c in eccv.coco_ids]
    # Two ECCV positives (caption ids 144675, 467259) are not among the 25K test captions; they join
    # the gallery so that they can be ranked.
    named = {c for v in eccv.eccv_gts["i2t"].values() for c in v}
    caption_ids = np.array(caption_ids + sorted(named - set(caption_ids)), dtype=np.int64)
    cap_row = {int(c): j for j, c in enumerate(caption_ids)}
    img_row = {int(i): j for j, i in enumerate(image_ids)}
    k_i2t, k_t2i = 56, 24   # >= the largest ECCV R of each direction (48, 19)
    i2t_ret, t2i_ret = {}, {}
    for iid in image_ids.tolist():
        coco = eccv.coco_gts["i2t"][iid]
        i2t_ret[iid] = _ranking(rng, [], coco + eccv.eccv_gts["i2t"].get(iid, []), caption_ids, k_i2t, 6.0)
    for cid in caption_ids.tolist():
        coco = eccv.coco_gts["t2i"].get(cid, [])
        t2i_ret[cid] = _ranking(rng, coco, eccv.eccv_gts["t2i"].get(cid, []) + eccv.cxc_gts["t2i"].get(cid, []),
                                image_ids, k_t2i, 2.0)
    i2t_rows = np.array([[cap_row[c] for c in i2t_ret[i]] for i in image_ids.tolist()])
    t2i_rows = np.array([[img_row[i] for i in t2i_ret[c]] for c in caption_ids.tolist()])
    return dict(image_ids=image_ids, caption_ids=caption_ids, i2t_ret=i2t_ret, t2i_ret=t2i_ret,
                i2t_rows=i2t_rows, t2i_rows=t2i_rows)


def _package(eccv, rk, targets, Ks=KS):
    return eccv.compute_all_metrics(rk["i2t_ret"], rk["t2i_ret"], target_metrics=targets, Ks=Ks)


def test_equals_eccv_caption_on_every_metric(eccv, rankings):
    rk = rankings
    ours = metrics.eccv_caption_eval(torch.from_numpy(rk["i2t_rows"]), rk["t2i_rows"], rk["image_ids"],
                                     rk["caption_ids"], ks=KS)
    everything = _package(eccv, rk, ["coco_1k_recalls", "coco_5k_recalls", "cxc_recalls", "eccv_r1",
                                     "eccv_rprecision", "eccv_map_at_r"])
    # The package computes eccv R@5 / R@10 only when mAP@R is not asked for.
    eccv_recalls = _package(eccv, rk, ["eccv_recalls"])
    expected = {**eccv_recalls, **everything}
    assert set(ours) == set(expected)
    assert ours == expected    # exact equality, not approx
    for name, v in ours.items():
        for side in ("i2t", "t2i"):
            assert 0 < v[side] <= 1, (name, side, v[side])  # a non-trivial comparison
            if name.endswith("_r1") or name in ("eccv_map_at_r", "eccv_rprecision"):
                assert v[side] < 1, (name, side, v[side])
        assert 0.05 < ours["eccv_map_at_r"][side] < 0.95 and 0.05 < ours["coco_5k_r1"][side] < 0.95
    # The package's default target metrics: each of them equal.
    default = eccv.compute_all_metrics(rk["i2t_ret"], rk["t2i_ret"])
    assert default and all(ours[name] == default[name] for name in default)


def test_topk_pair_and_other_ks(eccv, rankings):
    rk = rankings
    values = torch.zeros(rk["i2t_rows"].shape)
    ours = metrics.eccv_caption_eval((values, torch.from_numpy(rk["i2t_rows"])), rk["t2i_rows"], rk["image_ids"],
                                     rk["caption_ids"], ks=(2, 20))
    ref = _package(eccv, rk, ["coco_1k_recalls", "coco_5k_recalls", "cxc_recalls", "eccv_recalls"], Ks=(2, 20))
    assert {k: v for k, v in ours.items() if k in ref} == ref


def test_pmrp_equals_eccv_caption_with_a_pm_folder(eccv, rankings, tmp_path):
    # A hand-made Plausible Match ground truth in the package's file format: R from 1 to 300, so some
    # exceed k (the package then divides by k, and so does eccv_caption_eval).
    rk = rankings
    rng = np.random.default_rng(3)
    caps, imgs = rk["caption_ids"], rk["image_ids"]
    pm_i2t = {str(int(i)): sorted(set(rk["i2t_ret"][int(i)][:3]) | set(rng.choice(caps, rng.integers(1, 300)).tolist()))
              for i in rng.choice(imgs, 700, replace=False)}
    pm_t2i = {str(int(c)): sorted(set(rk["t2i_ret"][int(c)][:2]) | set(rng.choice(imgs, rng.integers(1, 40)).tolist()))
              for c in rng.choice(caps, 3000, replace=False)}
    (tmp_path / "pm_image_to_caption.json").write_text(json.dumps({k: [int(x) for x in v] for k, v in pm_i2t.items()}))
    (tmp_path / "pm_caption_to_image.json").write_text(json.dumps({k: [int(x) for x in v] for k, v in pm_t2i.items()}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eccv_caption
        pm = eccv_caption.Metrics(extra_file_dir=str(tmp_path))
    ref = pm.compute_all_metrics(rk["i2t_ret"], rk["t2i_ret"], target_metrics=["pmrp"])
    ours = metrics.eccv_caption_eval(rk["i2t_rows"], rk["t2i_rows"], imgs, caps, pm_dir=str(tmp_path))
    assert ours["pmrp"] == {"i2t": ref["i2t"], "t2i": ref["t2i"]}
    assert 0.01 < ours["pmrp"]["i2t"] < 0.99


def test_errors(rankings):
    rk = rankings
    i2t, t2i, imgs, caps = rk["i2t_rows"], rk["t2i_rows"], rk["image_ids"], rk["caption_ids"]
    with pytest.raises(ValueError, match="queries of the .* ground truth have no row"):
        metrics.eccv_caption_eval(i2t, t2i, np.concatenate([[10**9], imgs[1:]]), caps)
    with pytest.raises(ValueError, match="mAP@R needs k >= R"):
        metrics.eccv_caption_eval(i2t[:, :20], t2i, imgs, caps)
    with pytest.raises(ValueError, match="one row per image"):
        metrics.eccv_caption_eval(i2t[:-1], t2i, imgs, caps)
    with pytest.raises(ValueError, match="repeats COCO id"):
        metrics.eccv_caption_eval(i2t, t2i, np.concatenate([imgs[:-1], imgs[:1]]), caps)
    with pytest.raises(ValueError, match="holds gallery index"):
        metrics.eccv_caption_eval(i2t + len(caps), t2i, imgs, caps)
    with pytest.raises(FileNotFoundError, match="pm_image_to_caption.json"):
        metrics.eccv_caption_eval(i2t, t2i, imgs, caps, pm_dir="/nonexistent")


def test_ids_helper_and_a_topk_pipeline(eccv):
    import pcmekit

    image_ids, caption_ids = metrics.eccv_caption_ids()
    assert len(image_ids) == 5000 and len(caption_ids) == 25000
    assert caption_ids.tolist() == [int(c) for c in eccv.coco_ids]
    assert set(image_ids.tolist()) == set(eccv.coco_gts["i2t"])
    # Embeddings with a signal (each caption near its image), ranked by pcmekit.topk.
    g = torch.Generator().manual_seed(0)
    row = {int(i): j for j, i in enumerate(image_ids)}
    img_mu = torch.randn(5000, 16, generator=g)
    owner = torch.tensor([row[eccv.coco_gts["t2i"][int(c)][0]] for c in caption_ids])
    cap_mu = img_mu[owner] + 0.4 * torch.randn(25000, 16, generator=g)
    lv_i, lv_c = torch.full_like(img_mu, -3.0), torch.full_like(cap_mu, -3.0)
    i2t = pcmekit.topk(img_mu, lv_i, cap_mu, lv_c, k=64)
    t2i = pcmekit.topk(cap_mu, lv_c, img_mu, lv_i, k=64)
    ours = metrics.eccv_caption_eval(i2t, t2i, image_ids, caption_ids)
    i2t_ret = {int(i): caption_ids[r].tolist() for i, r in zip(image_ids, i2t[1].numpy())}
    t2i_ret = {int(c): image_ids[r].tolist() for c, r in zip(caption_ids, t2i[1].numpy())}
    ref = eccv.compute_all_metrics(i2t_ret, t2i_ret, target_metrics=[
        "coco_1k_recalls", "coco_5k_recalls", "cxc_recalls", "eccv_r1", "eccv_rprecision", "eccv_map_at_r"])
    assert {k: v for k, v in ours.items() if k in ref} == ref
    assert ours["coco_5k_r1"]["t2i"] > 0.2


# A hand-written COCO instances file: image i has captions 10 i and 10 i + 1.
_INSTANCES = {"annotations": [
    {"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 2}, {"image_id": 1, "category_id": 2},
    {"image_id": 2, "category_id": 1}, {"image_id": 2, "category_id": 2},
    {"image_id": 3, "category_id": 1},
    {"image_id": 4, "category_id": 3},
    {"image_id": 6, "category_id": 1}, {"image_id": 6, "category_id": 2}, {"image_id": 6, "category_id": 90},
    {"image_id": 7, "category_id": 5},          # not among the images: ignored
]}
_I2C = {i: [10 * i, 10 * i + 1] for i in range(1, 7)}   # image 5 has no annotation


def test_coco_category_codes():
    codes = metrics.coco_category_codes(_INSTANCES, [6, 5, 1])
    assert codes.shape == (3, 90) and codes.dtype == np.uint8
    assert np.flatnonzero(codes[0]).tolist() == [0, 1, 89]
    assert not codes[1].any()
    assert np.flatnonzero(codes[2]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="outside COCO's 1..90"):
        metrics.coco_category_codes({"annotations": [{"image_id": 1, "category_id": 91}]}, [1])
    with pytest.raises(ValueError, match="'annotations' list"):
        metrics.coco_category_codes({"images": []}, [1])


def test_coco_plausible_matches_by_hand(tmp_path):
    i2t, t2i = metrics.coco_plausible_matches(_INSTANCES, _I2C, 0)
    assert i2t == {1: [10, 11, 20, 21], 2: [10, 11, 20, 21], 3: [30, 31], 4: [40, 41], 6: [60, 61]}
    assert t2i[10] == t2i[21] == [1, 2] and t2i[30] == [3] and 50 not in t2i
    # Hamming distance <= 1: codes 1 = 2 = {1, 2}, 3 = {1}, 4 = {3}, 6 = {1, 2, 90}
    i2t, t2i = metrics.coco_plausible_matches(_INSTANCES, _I2C, 1)
    assert i2t[1] == [10, 11, 20, 21, 30, 31, 60, 61] and i2t[3] == [10, 11, 20, 21, 30, 31]
    assert i2t[4] == [40, 41] and i2t[6] == [10, 11, 20, 21, 60, 61]
    assert t2i[10] == [1, 2, 3, 6] and t2i[61] == [1, 2, 6]
    i2t, t2i = metrics.coco_plausible_matches(_INSTANCES, _I2C, 0, omit_original=True)
    assert i2t == {1: [20, 21], 2: [10, 11]} and t2i == {10: [2], 11: [2], 20: [1], 21: [1]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_INSTANCES))
    assert metrics.coco_plausible_matches(str(path), _I2C, 1) == metrics.coco_plausible_matches(_INSTANCES, _I2C, 1)
    with pytest.raises(ValueError, match="threshold must be an int"):
        metrics.coco_plausible_matches(_INSTANCES, _I2C, -1)


def test_built_pm_ground_truth_equals_eccv_caption(eccv, rankings, tmp_path):
    # Synthetic instances for the 5K test images (2 or 3 of 12 categories each: about 17 plausible
    # images and 87 captions per query, more than k for i2t), through the builder,
    # evaluated by eccv_caption_eval (pm_gt=) and by the package (its pm_*.json files).
    rk = rankings
    rng = np.random.default_rng(7)
    anns = [{"image_id": int(i), "category_id": int(c)} for i in rk["image_ids"]
            for c in rng.choice(np.arange(1, 13), rng.integers(2, 4), replace=False)]
    i2t, t2i = metrics.coco_plausible_matches({"annotations": anns}, eccv.coco_gts["i2t"], 0)
    (tmp_path / "pm_image_to_caption.json").write_text(json.dumps(i2t))
    (tmp_path / "pm_caption_to_image.json").write_text(json.dumps(t2i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eccv_caption
        pm = eccv_caption.Metrics(extra_file_dir=str(tmp_path))
    ref = pm.compute_all_metrics(rk["i2t_ret"], rk["t2i_ret"], target_metrics=["pmrp"])
    ours = metrics.eccv_caption_eval(rk["i2t_rows"], rk["t2i_rows"], rk["image_ids"], rk["caption_ids"],
                                     pm_gt=(i2t, t2i))
    assert ours["pmrp"] == {"i2t": ref["i2t"], "t2i": ref["t2i"]}
    assert 0 < ours["pmrp"]["t2i"] < 1
    with pytest.raises(ValueError, match="not both"):
        metrics.eccv_caption_eval(rk["i2t_rows"], rk["t2i_rows"], rk["image_ids"], rk["caption_ids"],
                                  pm_gt=(i2t, t2i), pm_dir=str(tmp_path))
