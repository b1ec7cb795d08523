"""pcmekit.train: a tiny run learns, checkpoints round-trip and resume, the CLI and demo run."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("sklearn")

from pcmekit import cli  # noqa: E402
from pcmekit.data.digits import load_digits_captions  # noqa: E402
from pcmekit.models import build_digits_model  # noqa: E402
from pcmekit.train import _Progress, evaluate, fit, load_checkpoint, random_baseline, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return load_digits_captions()


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: one thread is much faster on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_model(data, seed=0):
    return build_digits_model(len(data.vocab), embed_dim=16, width=16, heads=2, seed=seed)


def _subset(split, n_images):
    """The first n images of a split and their captions (a faster training set)."""
    import dataclasses

    keep = split.caption_image < n_images
    return dataclasses.replace(
        split, images=split.images[:n_images], caption_image=split.caption_image[keep],
        tokens=split.tokens[keep], lengths=split.lengths[keep])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A small model trained for a few seconds (InfoNCE: the fastest to leave chance level from
    scratch), checkpointed; shared by several tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("ckpt") / "model.pt"
        result = fit(_small_model(data), data.train, loss="infonce", epochs=5, lr=3e-3, checkpoint=path,
                     progress=False)
    finally:
        torch.set_num_threads(threads)
    return result, path


def test_tiny_training_decreases_loss_and_beats_random(data, trained):
    result, _ = trained
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.5
    res = evaluate(result.model, data.test, metric="l2", criterion=result.criterion, uncertainty=False)
    rnd = random_baseline(data.test)
    # Random rankings score PMRP ~6.6 and plausible R-Precision ~30; this run measured PMRP ~18-19,
    # R-P ~51 and an original-GT RSUM of ~46 against ~5.6.
    assert rnd["pmrp"]["t2i"]["PMRP"] < 10 and rnd["plausible"]["t2i"]["R-P"] < 35
    assert res["pmrp"]["t2i"]["PMRP"] > rnd["pmrp"]["t2i"]["PMRP"] + 6
    assert res["pmrp"]["i2t"]["PMRP"] > rnd["pmrp"]["i2t"]["PMRP"] + 6
    assert res["plausible"]["t2i"]["R-P"] > rnd["plausible"]["t2i"]["R-P"] + 8
    assert res["original"]["RSUM"] > 2 * rnd["original"]["RSUM"]
    assert set(res["pmrp"]["i2t"]) >= {"PMRP", "PMRP@0", "PMRP@1", "PMRP@2"}


def test_pcmepp_training_decreases_loss_and_reports_uncertainty(data):
    result = fit(_small_model(data), _subset(data.train, 256), loss="pcmepp", epochs=3, lr=3e-3, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] and all(k in result.history[0] for k in ("bce", "pp", "vib", "scale"))
    res = evaluate(result.model, data.test, metric="csd", criterion=result.criterion)
    u = res["uncertainty"]
    assert len(u["caption_uncertainty"]) == data.test.num_captions
    assert -1 <= u["spearman_caption_uncertainty_vs_plausible_images"] <= 1
    assert len(u["t2i_bins_original"]["bin_value"]) == 10 and sum(u["t2i_bins_plausible"]["bin_count"]) == 2695


def test_save_load_evaluate_gives_the_same_metrics(data, trained):
    result, path = trained
    before = evaluate(result.model, data.test, metric="l2", criterion=result.criterion, uncertainty=False)
    model, criterion, state = load_checkpoint(path)
    assert state["epoch"] == 5 and state["loss"] == "infonce"
    after = evaluate(model, data.test, metric="l2", criterion=criterion, uncertainty=False)
    assert after == before


def test_resume_continues_the_same_run(data, tmp_path):
    sub = _subset(data.train, 128)
    straight = fit(_small_model(data), sub, loss="infonce", epochs=2, batch_size=64, progress=False)
    path = tmp_path / "r.pt"
    fit(_small_model(data), sub, loss="infonce", epochs=1, batch_size=64, checkpoint=path, progress=False)
    resumed = fit(_small_model(data, seed=5), sub, loss="infonce", epochs=2, batch_size=64, checkpoint=path,
                  resume=True, progress=False)
    assert resumed.steps == straight.steps == 4
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history])
    with pytest.raises(ValueError, match="trained with loss 'infonce', not 'pcmepp'"):
        fit(_small_model(data), sub, loss="pcmepp", epochs=3, checkpoint=path, resume=True, progress=False)


def test_pcme_loss_and_match_prob_ranking(data):
    result = fit(_small_model(data), _subset(data.train, 64), loss="pcme", epochs=1, batch_size=32, progress=False)
    res = evaluate(result.model, data.test, metric="match_prob", criterion=result.criterion, uncertainty=False)
    assert res["metric"] == "match_prob" and 0 <= res["plausible"]["t2i"]["R@1"] <= 100
    with pytest.raises(ValueError, match="needs the PCME loss module"):
        evaluate(result.model, data.test, metric="match_prob")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": "x", "v": 1})
    real_save = torch.save

    def failing_save(obj, f):
        real_save(obj, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "x", "v": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["v"] == 1          # the old file survives intact
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]                # and no temporary is left behind
    with pytest.raises(ValueError, match="not a pcmekit training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_fit_rejects_bad_inputs(data):
    model = _small_model(data)
    with pytest.raises(ValueError, match="loss must be one of"):
        fit(model, data.train, loss="triplet", epochs=1)
    with pytest.raises(TypeError, match="object has no 'images'"):
        fit(model, object(), epochs=1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        fit(model, data.train, epochs=1, batch_size=1)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        fit(model, data.train, epochs=1, resume=True)


def test_progress_bar_only_on_terminals(capsys):
    import io

    stream = io.StringIO()
    bar = _Progress(3, "x", stream=stream)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""                     # not a terminal: silent
    bar = _Progress(2, "train", enabled=True, stream=stream)
    bar.update(1, "loss 1.0")
    bar.update(1, "loss 0.5")
    bar.close()
    assert "train [" in stream.getvalue() and "2/2" in stream.getvalue()


def test_cli_train_eval_demo(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert cli.main(["train", "--out", str(ckpt), "--loss", "infonce", "--epochs", "1", "--width", "16",
                     "--embed-dim", "8", "--no-progress"]) == 0
    assert cli.main(["eval", str(ckpt), "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "| InfoNCE | plausible |" in out
    assert json.loads((tmp_path / "e.json").read_text())["plausible"]["RSUM"] > 0
    assert cli.main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert cli.main(["demo", "--quick", "--losses", "pcmepp", "--out", str(tmp_path / "demo")]) == 0
    readme = (tmp_path / "demo" / "README.md").read_text()
    assert "| PCME++ | original |" in readme and "Spearman" in readme
    assert (tmp_path / "demo" / "uncertainty_vs_plausible.png").stat().st_size > 1000
    assert "## Zero-shot classification with uncertainty" in readme and "![Zero-shot accuracy" in readme
    assert (tmp_path / "demo" / "zeroshot_uncertainty.png").stat().st_size > 1000
    report = json.loads((tmp_path / "demo" / "results.json").read_text())["results"]["pcmepp"]
    assert report["plausible"]["RSUM"] > 0
    assert 0 <= report["zeroshot"]["accuracy_filtered"] <= 100 and report["zeroshot"]["dropped"] == 10
    assert cli.main(["demo", "--quick", "--losses", "svm", "--out", str(tmp_path / "d2")]) == 2
