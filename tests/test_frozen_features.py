"""Probabilistic adapters on frozen features (pcmekit.data.features, train.fit_adapters /
evaluate_features, `pcmekit train --features`), on synthetic features the tests generate: image
and text features are two different random linear views of one latent code plus noise, so the
raw features do not align (R@1 near chance) and only trained adapters can match them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from pcmekit import cli, metrics
from pcmekit.data.features import load_feature_pairs
from pcmekit.models import build_adapter_model
from pcmekit.train import coco_test_status, evaluate_features, fit_adapters, load_checkpoint

LATENT = 8


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _views(rng, latent, image_dim=24, text_dim=16, noise=0.3):
    """Image features ``z A + noise`` and a text-feature function ``(z + noise) B`` of one latent."""
    A = rng.standard_normal((LATENT, image_dim))
    B = rng.standard_normal((LATENT, text_dim))
    images = latent @ A + noise * rng.standard_normal((len(latent), image_dim))

    def texts(z):
        return (z + noise * rng.standard_normal(z.shape)) @ B

    return images.astype(np.float32), texts


def _write(folder, images, texts, pairs, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "image.npy", folder / "text.npy", folder / "pairs.json"]
    np.save(paths[0], images)
    np.save(paths[1], texts)
    paths[2].write_text(json.dumps({"pairs": pairs, **extra}))
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """400 images with 2 captions each (pairs [i, 2i], [i, 2i + 1]); no ids, no explicit split."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, LATENT))
    images, texts = _views(rng, z)
    txt = texts(np.repeat(z, 2, axis=0)).astype(np.float32)
    pairs = [[i, 2 * i + c] for i in range(400) for c in range(2)]
    return _write(tmp_path_factory.mktemp("synthetic"), images, txt, pairs)


def test_split_follows_the_pairs(synthetic):
    f = load_feature_pairs(*synthetic)
    assert (f.image_dim, f.text_dim) == (24, 16)
    assert f.test.num_images == 80 and f.train.num_images == 320              # test_fraction 0.2
    assert f.test.num_captions == 160 and f.train.tokens.shape == (640, 16)
    assert set(f.test.image_rows.tolist()).isdisjoint(f.train.image_rows.tolist())
    for i, caps in enumerate(f.test.positives_i2t):                            # ground truth = the pairs
        row = int(f.test.image_rows[i])
        assert sorted(int(f.test.text_rows[c]) for c in caps) == [2 * row, 2 * row + 1]
    torch.testing.assert_close(f.test.texts, f.text_features[f.test.text_rows])
    again = load_feature_pairs(*synthetic)
    assert torch.equal(again.test.image_rows, f.test.image_rows)              # seeded
    assert not torch.equal(load_feature_pairs(*synthetic, seed=1).test.image_rows, f.test.image_rows)


def test_adapters_learn_to_match_unaligned_features(synthetic):
    f = load_feature_pairs(*synthetic)
    untrained = evaluate_features(fit_adapters(f, epochs=0, hidden=64, progress=False).model, f.test)
    result = fit_adapters(f, epochs=5, hidden=64, lr=3e-3, batch_size=64, progress=False)
    trained = evaluate_features(result.model, f.test)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # 80 test images, 160 texts: chance R@1 is ~1.3 % (t2i) and ~2.5 % (i2t); measured R@1 i2t / t2i
    # before training 2.5 / 1.25 (RSUM 52.5), after 5 epochs 88.75 / 87.5 (RSUM 575).
    for side in ("i2t", "t2i"):
        assert untrained[side]["R@1"] < 10
        assert trained[side]["R@1"] > 60
    assert trained["RSUM"] > untrained["RSUM"] + 300
    assert trained["num_images"] == 80 and trained["num_captions"] == 160 and trained["k"] == {"i2t": 100, "t2i": 80}
    assert len(trained["uncertainty"]["t2i_bins"]["bin_value"]) == 10
    assert "eccv_caption" not in trained and "no image_ids" in trained["eccv_caption_note"]


def test_untrained_adapter_returns_the_frozen_features_when_sizes_agree():
    model = build_adapter_model(12, 12, 12, hidden=8, seed=3)
    x = torch.randn(5, 12)
    img, txt = model(x, 2 * x)
    torch.testing.assert_close(img.mean, torch.nn.functional.normalize(x, dim=1))
    torch.testing.assert_close(txt.mean, img.mean)
    torch.testing.assert_close(img.logvar, torch.full((5, 12), float(np.log(0.1 / 12))))


def test_cli_trains_reports_and_evaluates_the_checkpoint(synthetic, tmp_path, capsys):
    ckpt, out = tmp_path / "adapters.pt", tmp_path / "eval.json"
    assert cli.main(["train", "--features", *synthetic, "--out", str(ckpt), "--epochs", "3", "--hidden", "32",
                     "--lr", "3e-3", "--batch-size", "64", "--no-progress", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| untrained |" in printed and "| trained |" in printed and "ECCV Caption metrics: not computed" in printed
    res = json.loads(out.read_text())
    assert res["trained"]["RSUM"] > res["untrained"]["RSUM"] + 100
    model, _, state = load_checkpoint(ckpt)
    assert state["extra"]["dataset"] == "features" and model.config["builder"] == "adapters"
    again = tmp_path / "again.json"
    assert cli.main(["eval", str(ckpt), "--features", *synthetic, "--json", str(again)]) == 0
    assert json.loads(again.read_text())["trained"]["i2t"] == res["trained"]["i2t"]     # same split, same model
    capsys.readouterr()
    assert cli.main(["eval", str(ckpt)]) == 2
    assert "give the features to evaluate on with --features" in capsys.readouterr().err


def test_texts_matching_several_images_stay_in_one_split(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((30, LATENT))
    images, texts = _views(rng, z)
    txt = texts(z).astype(np.float32)
    # text 0 is true of images 0, 1 and 2; every image also has its own text.
    pairs = [[i, i] for i in range(30)] + [[1, 0], [2, 0]]
    files = _write(tmp_path / "a", images, txt, pairs)
    for seed in range(5):
        f = load_feature_pairs(*files, seed=seed)
        test = set(f.test.image_rows.tolist())
        assert {0, 1, 2} <= test or not {0, 1, 2} & test
        assert f.train.tokens.shape[0] + sum(len(p) for p in f.test.positives_i2t) == len(pairs)
    with pytest.raises(ValueError, match=r"'test_images': text row 0 matches train image 0 and test image 1"):
        load_feature_pairs(*_write(tmp_path / "b", images, txt, pairs, test_images=[1, 5]))


def _coco_files(tmp_path, n_train=400, test_caption_rows=None, swap=False):
    """Train images with made-up ids (< 0) and the COCO 5K test set (or the captions
    ``test_caption_rows`` of it and their images), captions from their own image's latent."""
    image_ids, caption_ids = metrics.eccv_caption_ids()
    t2i = metrics._load_gt_pair(metrics._eccv_caption_data_dir(), "original")["t2i"]
    if test_caption_rows is not None:
        caption_ids = caption_ids[test_caption_rows]
        image_ids = np.array(list(dict.fromkeys(t2i[int(c)][0] for c in caption_ids)), dtype=np.int64)
    row = {int(i): n_train + r for r, i in enumerate(image_ids)}
    owner = np.concatenate([np.repeat(np.arange(n_train), 5), [row[t2i[int(c)][0]] for c in caption_ids]])
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n_train + len(image_ids), LATENT))
    images, texts = _views(rng, z, 16, 16, noise=0.2)
    pairs = [[int(i), j] for j, i in enumerate(owner)]
    if swap:   # two test captions of different images swap their ids
        a, b = 5 * n_train, 5 * n_train + 5
        caption_ids = caption_ids.copy()
        caption_ids[[0, 5]] = caption_ids[[5, 0]]
        assert owner[a] != owner[b]
    return _write(tmp_path, images, texts(z[owner]).astype(np.float32), pairs,
                  image_ids=[-1 - i for i in range(n_train)] + image_ids.tolist(),
                  caption_ids=[-1 - i for i in range(5 * n_train)] + caption_ids.tolist(),
                  test_images=list(range(n_train, n_train + len(image_ids))))


def test_coco_5k_test_ids_get_the_eccv_caption_metrics(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("eccv_caption")
    f = load_feature_pairs(*_coco_files(tmp_path, n_train=800))
    assert (f.test.num_images, f.test.num_captions) == (5000, 25000)
    assert coco_test_status(f.test)[0]
    result = fit_adapters(f, epochs=4, hidden=32, lr=5e-3, batch_size=64, progress=False)
    res = evaluate_features(result.model, f.test, eccv=True)
    scores = res["eccv_caption"]
    assert {"coco_1k_r1", "coco_5k_r10", "cxc_r5", "eccv_map_at_r", "eccv_rprecision"} <= set(scores)
    # The pairs are COCO's own annotation, so COCO 5K R@K (eccv-caption, fractions) is our R@K.
    for side in ("i2t", "t2i"):
        for K in (1, 5, 10):
            assert scores[f"coco_5k_r{K}"][side] == pytest.approx(res[side][f"R@{K}"] / 100, abs=1e-12)
    # Chance: R@10 0.2 % in the 5 000-image gallery; measured after 4 epochs: t2i R@1 11.1, R@10 65.3.
    assert res["t2i"]["R@10"] > 30 and res["t2i"]["R@1"] > 5


def test_coco_ids_that_do_not_cover_the_5k_set_fall_back_to_the_pairs(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("eccv_caption")
    f = load_feature_pairs(*_coco_files(tmp_path, n_train=20, test_caption_rows=np.arange(0, 250)))
    ok, note = coco_test_status(f.test)
    assert not ok and f"{f.test.num_images} of the 5000 COCO 5K test images" in note
    model = build_adapter_model(16, 16, 16, hidden=8, seed=0)
    res = evaluate_features(model, f.test)
    assert "eccv_caption" not in res and res["eccv_caption_note"] == note and res["t2i"]["n_queries"] == 250
    with pytest.raises(ValueError, match="eccv=True, but the split cannot be scored"):
        evaluate_features(model, f.test, eccv=True)


def test_pairs_that_contradict_coco_ids_are_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("eccv_caption")
    f = load_feature_pairs(*_coco_files(tmp_path, n_train=20, test_caption_rows=np.arange(0, 50), swap=True))
    with pytest.raises(ValueError, match=r"pairs COCO caption id \d+ \(text row 100\) with image id \d+ .*"
                                         "do not match the rows of the features"):
        coco_test_status(f.test)
    with pytest.raises(ValueError, match="do not match the rows of the features"):
        fit_adapters(f, epochs=1, hidden=8, progress=False)


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.standard_normal((6, 4)).astype(np.float32)
    texts = rng.standard_normal((8, 3)).astype(np.float32)
    pairs = [[i, i] for i in range(6)] + [[0, 6], [1, 7]]
    return tmp_path, images, texts, pairs


def _expect(files, match, error=ValueError, **kwargs):
    with pytest.raises(error, match=match):
        load_feature_pairs(*files, **kwargs)


def test_bad_feature_files_name_the_file_and_what_arrived(small):
    tmp, images, texts, pairs = small
    _expect(_write(tmp / "a", images[0], texts, pairs), r"image features file '.*image.npy': expected a \[rows, "
            r"dims\] array .*got shape \[4\]")
    _expect(_write(tmp / "b", images, texts.astype(np.int64), pairs), r"text features file '.*text.npy': "
            "expected floating-point features, got dtype int64")
    bad = texts.copy()
    bad[2, 1] = np.nan
    _expect(_write(tmp / "c", images, bad, pairs), "text features .* expected finite features, got nan at row 2, "
            "column 1")
    files = _write(tmp / "d", images, texts, pairs)
    (tmp / "d" / "image.npy").write_text("not numpy")
    _expect(files, r"image features file '.*': expected a .npy array of floats")
    _expect([str(tmp / "nope.npy"), *files[1:]], "image features file '.*nope.npy' does not exist", FileNotFoundError)


def test_bad_pairs_json_names_the_key_expected_and_got(small):
    tmp, images, texts, pairs = small
    cases = [
        ({"pairs": pairs + [[6, 0]]}, r"'pairs'\[8\] = \[6, 0\]: image row 6 is out of range; image features "
                                      r"'.*image.npy' has 6 rows \(0..5\)"),
        ({"pairs": pairs + [[0, 8]]}, r"'pairs'\[8\] = \[0, 8\]: text row 8 is out of range; text features "
                                      r"'.*text.npy' has 8 rows"),
        ({"pairs": pairs + [[0, 0]]}, r"'pairs' repeats the pair \[0, 0\] \(at positions \[0, 8\]\)"),
        ({"pairs": pairs + [[0, 1.5]]}, r"'pairs'\[8\] must be \[image_row, text_row\] \(two ints\), got \[0, 1.5\]"),
        ({"pairs": pairs, "image_ids": [1, 2, 3]}, r"'image_ids' must have one id per row of '.*image.npy' \(6\), "
                                                   "got 3 ids"),
        ({"pairs": pairs, "caption_ids": [1, 2, 3, 4, 5, 6, 7, 7]}, r"'caption_ids' must be distinct, got id 7 at "
                                                                    r"rows \[6, 7\]"),
        ({"pairs": pairs, "test_images": [9]}, r"'test_images' names image row 9, out of range"),
        ({"pairs": pairs[:5], "test_images": [5]}, "'test_images': image row 5 is in no pair"),
        ({"pairs": pairs, "test_images": [0, 1, 2, 3, 4]}, "'test_images' leaves 1 paired image"),
        ({"pairs": pairs, "split": "x"}, r"unknown key\(s\) \['split'\]"),
        ({"images": []}, "expected a 'pairs' list of \\[image_row, text_row\\], got keys \\['images'\\]"),
        ({"pairs": []}, r"'pairs' must list at least one \[image_row, text_row\] pair, got an empty list"),
        ({"pairs": {"0": 0}}, r"'pairs' must be a list of \[image_row, text_row\], got dict"),
    ]
    for k, (content, match) in enumerate(cases):
        files = _write(tmp / f"case{k}", images, texts, [])
        (tmp / f"case{k}" / "pairs.json").write_text(json.dumps(content))
        _expect(files, r"pairs file '.*pairs.json': " + match)
    (tmp / "case0" / "pairs.json").write_text(json.dumps(pairs))        # a bare list is the pairs
    assert load_feature_pairs(*files[:2], str(tmp / "case0" / "pairs.json")).pairs.tolist() == pairs
    (tmp / "case0" / "pairs.json").write_text("{not json")
    _expect(files[:2] + [str(tmp / "case0" / "pairs.json")], "pairs file '.*': expected JSON, got a parse error")


def test_cli_reports_bad_files_without_a_traceback(small, capsys):
    tmp, images, texts, pairs = small
    files = _write(tmp / "x", images, texts, pairs + [[6, 0]])
    assert cli.main(["train", "--features", *files, "--out", str(tmp / "m.pt"), "--epochs", "1"]) == 2
    assert "pcmekit train: pairs file" in capsys.readouterr().err
