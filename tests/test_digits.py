"""pcmekit.data.digits: facts measured on hand-checked images, exact plausibility, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from pcmekit.data import WordVocab  # noqa: E402
from pcmekit.data.digits import (  # noqa: E402
    CAPTION_KINDS,
    Predicate,
    describe,
    label_codes,
    load_digits_captions,
    measure_facts,
)


@pytest.fixture(scope="module")
def raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


@pytest.fixture(scope="module")
def dataset():
    return load_digits_captions()


# Hand-checked rows of sklearn's load_digits (pixel art printed and inspected):
#  row 0, a zero: ink 294 < its class median 313.5 -> thin; shear +0.029 above the zeros' upper
#         tercile -0.001 -> slanting right; horizontal spread 1.544 > median 1.467 -> wide.
#  row 7, a seven whose top is far right of its foot: ink 290 < 303 -> thin; shear 0.316 (sevens'
#         upper tercile 0.168) -> slanting right; spread 1.357 > 1.197 -> wide.
#  row 17, a seven drawn almost vertically: ink 330 > 303 -> bold; shear 0.002, below the sevens'
#         lower tercile 0.109 -> slanting left (for a seven); spread 1.191 < 1.197 -> narrow.
HAND = {
    0: dict(digit=0, ink=0, slant=2, width=1, ink_amount=294.0),
    7: dict(digit=7, ink=0, slant=2, width=1, ink_amount=290.0),
    17: dict(digit=7, ink=1, slant=0, width=0, ink_amount=330.0),
}


def test_facts_of_hand_checked_images(raw):
    images, digits = raw
    facts = measure_facts(images, digits)
    for row, want in HAND.items():
        assert digits[row] == want["digit"]
        assert images[row].sum() == want["ink_amount"]
        for key in ("ink", "slant", "width"):
            assert facts[key][row] == want[key], (row, key)
    # Class-relative attributes split each class about evenly.
    for d in range(10):
        sel = digits == d
        assert abs(facts["ink"][sel].mean() - 0.5) < 0.05
        assert np.bincount(facts["slant"][sel], minlength=3).min() >= sel.sum() // 3 - 1


@pytest.mark.parametrize("text,row0,row7,row17", [
    ("a digit", True, True, True),
    ("an even digit", True, False, False),
    ("an odd digit", False, True, True),
    ("a digit larger than five", False, True, True),
    ("a digit smaller than five", True, False, False),
    ("a thin digit", True, True, False),
    ("a digit slanting right", True, True, False),
    ("a zero", True, False, False),
    ("a seven", False, True, True),
    ("a thin seven", False, True, False),
    ("a bold seven slanting left", False, False, True),
    ("a narrow bold seven slanting left", False, False, True),
    ("a wide thin seven slanting right", False, True, False),
    ("an upright seven", False, False, False),
    ("a wide thin zero slanting right", True, False, False),
])
def test_plausibility_on_hand_checked_images(raw, text, row0, row7, row17):
    images, digits = raw
    facts = measure_facts(images, digits)
    rows = np.array([0, 7, 17])
    got = Predicate.from_text(text).holds(digits[rows], facts["ink"][rows], facts["slant"][rows], facts["width"][rows])
    assert got.tolist() == [row0, row7, row17]


def test_split_ground_truth_is_exact(dataset):
    for split in (dataset.train, dataset.test):
        n, m = split.num_images, split.num_captions
        assert split.plausible.shape == (n, m) and m == 5 * n
        # Each caption is true of its own image, and the plausible matrix is the predicate.
        assert split.plausible[split.caption_image, torch.arange(m)].all()
        facts = (split.digit.numpy(), split.ink.numpy(), split.slant.numpy(), split.width.numpy())
        for j in range(0, m, 97):
            assert np.array_equal(split.plausible[:, j].numpy(), Predicate.from_text(split.captions[j]).holds(*facts))
        general = [j for j, t in enumerate(split.captions) if t == "a digit"]
        assert general and split.plausible[:, general].all()
        # Ground-truth lists agree with the matrix and contain the original annotation.
        t2i = split.plausible_t2i()
        orig = split.original_t2i()
        n_plausible = split.num_plausible_images()
        for j in range(0, m, 101):
            assert orig[j][0] in t2i[j]
            assert len(t2i[j]) == int(n_plausible[j])
        i2t = split.original_i2t()
        assert sorted(len(v) for v in i2t) == [5] * n
        # Captions carry their image's label code.
        assert torch.equal(split.caption_codes, split.image_codes[split.caption_image])
        assert (split.image_codes[:, :10].sum(1) == 1).all()


def test_split_is_deterministic_and_stratified(dataset):
    again = load_digits_captions()
    assert torch.equal(again.test.source_index, dataset.test.source_index)
    assert again.test.captions == dataset.test.captions
    assert set(dataset.train.source_index.tolist()).isdisjoint(dataset.test.source_index.tolist())
    assert dataset.train.num_images + dataset.test.num_images == 1797
    counts = torch.bincount(dataset.test.digit, minlength=10)
    assert counts.min() >= 52 and counts.max() <= 55   # 30 % of 174..183 per class
    other = load_digits_captions(seed=1)
    assert not torch.equal(other.test.source_index, dataset.test.source_index)


def test_caption_kinds_cover_generality(dataset):
    split = dataset.test
    kinds = set(split.caption_kind)
    assert kinds == set(CAPTION_KINDS)
    n_plausible = split.num_plausible_images().float()
    by_kind = {k: n_plausible[[j for j, kk in enumerate(split.caption_kind) if kk == k]].mean().item()
               for k in CAPTION_KINDS}
    assert by_kind["digit"] == split.num_images
    assert by_kind["digit"] > by_kind["parity"] > by_kind["name"] > by_kind["ink_name"] > by_kind["full"]


def test_describe_and_parse_round_trip():
    for d in range(10):
        for ink in range(2):
            for slant in range(3):
                for width in range(2):
                    for kind in CAPTION_KINDS:
                        text = describe(kind, d, ink, slant, width)
                        if text is None:
                            assert kind == "magnitude" and d == 5
                            continue
                        p = Predicate.from_text(text)
                        assert p.holds(np.array([d]), np.array([ink]), np.array([slant]), np.array([width]))[0], text
    assert describe("slant_name", 8, 0, 1, 0) == "an upright eight"
    assert describe("full", 7, 0, 0, 1) == "a wide thin seven slanting left"
    with pytest.raises(ValueError, match="cannot parse word 'purple'"):
        Predicate.from_text("a purple seven")
    with pytest.raises(ValueError, match="kind must be one of"):
        describe("colour", 1, 0, 0, 0)


def test_label_codes():
    codes = label_codes(np.array([7, 0]), np.array([1, 0]), np.array([0, 2]), np.array([0, 1]))
    assert codes[0].tolist() == [0] * 7 + [1] + [0] * 2 + [1, 1, 0, 0]
    assert codes[1].tolist() == [1] + [0] * 9 + [0, 0, 1, 1]


def test_vocab_round_trip(dataset):
    vocab = dataset.vocab
    tokens, lengths = vocab.encode(["a thin seven", "an even digit slanting left"])
    assert tokens.shape == (2, 5) and lengths.tolist() == [3, 5]
    assert vocab.decode(tokens[0]) == "a thin seven"
    assert vocab.ids("a purple seven")[1] == 1  # <unk>
    assert WordVocab.from_state_dict(vocab.state_dict()) == vocab
    with pytest.raises(ValueError, match="unique"):
        WordVocab(["a", "a"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="captions_per_image"):
        load_digits_captions(captions_per_image=0)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_captions(test_fraction=1.5)
    with pytest.raises(ValueError, match=r"images must be \[N, H, W\]"):
        measure_facts(np.zeros((3, 8)), np.zeros(3))


def test_class_prompts_are_true_of_their_class():
    from pcmekit.data.digits import NAMING_KINDS, class_prompts

    prompts, kinds = class_prompts()
    assert len(prompts) == 10 and all(len(row) == len(kinds) == 35 for row in prompts)
    assert sum(k not in NAMING_KINDS for k in kinds) == 9
    for d, row in enumerate(prompts):
        assert len(set(row)) == 35
        for text, kind in zip(row, kinds):
            p = Predicate.from_text(text)
            assert (p.digits >> d) & 1, text                          # true of some image of digit d
            assert (p.digits == 1 << d) == (kind in NAMING_KINDS), text


class _StubModel(torch.nn.Module):
    """Gaussians with known answers for pcmekit.demo.digits_zeroshot. Prompt p of class c (the
    class-major order in which digits_zeroshot encodes them): a digit-naming prompt sits at e_c
    with variance 0.01; a prompt that does not name the digit sits at 10 e_{c+1} with variance 1,
    so averaging every prompt pulls each class onto the next one. Images sit at e_digit
    (variance 0.01), except every 4th, which sits at e_{digit+5} with variance 1."""

    def __init__(self, split, kinds):
        super().__init__()
        from pcmekit.data.digits import NAMING_KINDS

        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.split = split
        self.general = torch.tensor([k not in NAMING_KINDS for k in kinds])

    def encode_text(self, tokens, lengths):
        from pcmekit import ProbEmbedding

        n_prompts = len(self.general)
        rows = torch.arange(len(tokens))
        cls, p = rows // n_prompts, rows % n_prompts
        general = self.general[p]
        target = torch.where(general, (cls + 1) % 10, cls)
        mean = torch.nn.functional.one_hot(target, 10).double() * torch.where(general, 10.0, 1.0)[:, None].double()
        logvar = torch.where(general, 0.0, math.log(0.01))[:, None].double().expand(-1, 10)
        return ProbEmbedding(mean, logvar)

    def encode_image(self, images):
        from pcmekit import ProbEmbedding

        assert images is self.split.images
        digit = self.split.digit
        odd_one = torch.arange(len(digit)) % 4 == 0
        target = torch.where(odd_one, (digit + 5) % 10, digit)
        logvar = torch.where(odd_one, 0.0, math.log(0.01))[:, None].double().expand(-1, 10)
        return ProbEmbedding(torch.nn.functional.one_hot(target, 10).double(), logvar)


def test_demo_zeroshot_filters_the_uncertain_prompts(dataset):
    from pcmekit.data.digits import class_prompts
    from pcmekit.demo import digits_zeroshot

    split = dataset.test
    model = _StubModel(split, class_prompts()[1])
    z = digits_zeroshot(model, split, dataset.vocab, drop=0.3, random_repeats=3)
    good = 100.0 * float((torch.arange(split.num_images) % 4 != 0).double().mean())
    assert z["dropped"] == 10 and z["prompts_per_class"] == 35 and z["images"] == split.num_images
    assert z["accuracy_all"] == 0.0                    # every class is pulled onto the next
    assert z["accuracy_filtered"] == pytest.approx(good)
    assert z["dropped_general"] == pytest.approx(0.9)  # the 9 vague prompts and 1 naming prompt of each class
    assert z["curve"]["uncertainty"][9:] == [pytest.approx(good)] * 26
    assert z["accuracy_random_drop"] < 40
    assert z["prompt_uncertainty_by_kind"]["digit"] == pytest.approx(1.0)
    assert z["prompt_uncertainty_by_kind"]["full"] == pytest.approx(0.01)
    bins = z["bins_filtered"]                          # the uncertain images are the wrong ones
    assert bins["bin_value"][0] == 100.0 and bins["bin_value"][-1] == 0.0 and bins["spearman"] < -0.8
