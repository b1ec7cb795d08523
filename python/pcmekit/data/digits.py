"""Handwritten digits with captions whose truth is measured on the pixels (the ``pcmekit demo`` data).

The images are scikit-learn's bundled copy of the UCI optical-recognition digits (1 797 greyscale
images of 8 x 8 pixels, values 0..16, ten classes; ``sklearn.datasets.load_digits``, no download).
Every image is described by four facts, all computed from its pixels except the digit itself:

* ``digit`` -- its class, 0..9 (the dataset's label).
* ``ink`` -- ``bold`` when its total ink (sum of pixel values) is above the median of its digit
  class, else ``thin``.
* ``slant`` -- the shear of the ink from the image moments, ``-mu11 / mu02`` (x grows to the right,
  y downwards; positive when the top leans right). Handwritten sevens lean right and sixes left by
  their shape, so the slant is judged against the image's own digit class: the lowest third of a
  class ``slanting left``, the highest third ``slanting right``, the rest ``upright``.
* ``width`` -- ``wide`` when the horizontal spread of the ink, ``sqrt(mu20 / m00)``, is above the
  median of its digit class, else ``narrow``. (The dataset normalised every digit to the full
  8-pixel height, so width is the size that varies.)

A caption is a *predicate* over these facts, at one of twelve levels of generality
(:data:`CAPTION_KINDS`, most general first): "a digit", "an even digit", "a digit larger than
five", "a bold digit", "a digit slanting left", "a narrow digit", "a seven", "a thin seven",
"a wide seven", "a seven slanting left", "a thin seven slanting left", "a wide thin seven slanting
left". Every image gets ``captions_per_image`` captions of distinct kinds, chosen at random
(seeded) among the kinds that describe it, worded with its own facts. Because a caption's truth
can be decided for *every* image, the full image x caption plausibility matrix is exact:

* the **original** annotation is one-to-one as in COCO: a caption's positive is the image it was
  written for; an image's positives are its own captions;
* the **plausible** annotation (ECCV Caption's corrected ground truth, here complete) marks every
  (image, caption) pair whose predicate holds: "a digit" matches every image.

Label codes (for PMRP) are 14-bit multi-hot vectors: the digit one-hot (10), ``bold``,
``slanting left``, ``slanting right``, ``wide``. As PCME does with COCO's instance labels, a
caption carries the code of the image it was written for.

The train/test split is stratified by digit and seeded (default: 30 % of each class for test).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .vocab import WordVocab, tokenize

__all__ = [
    "CAPTION_KINDS",
    "DIGIT_NAMES",
    "PROMPT_KINDS",
    "class_prompts",
    "DigitsCaptions",
    "DigitsSplit",
    "Predicate",
    "describe",
    "label_codes",
    "load_digits_captions",
    "measure_facts",
    "plausibility",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
INK_WORDS = ("thin", "bold")
SLANT_WORDS = ("left", "upright", "right")  # "slanting left", "upright", "slanting right"
WIDTH_WORDS = ("narrow", "wide")

#: Caption kinds, most general first. "magnitude" does not describe a five.
CAPTION_KINDS = (
    "digit",            # a digit
    "parity",           # an even digit
    "magnitude",        # a digit larger than five / smaller than five
    "ink",              # a bold digit
    "slant",            # a digit slanting left / an upright digit
    "width",            # a narrow digit
    "name",             # a seven
    "ink_name",         # a thin seven
    "width_name",       # a wide seven
    "slant_name",       # a seven slanting left
    "ink_slant_name",   # a thin seven slanting left
    "full",             # a wide thin seven slanting left
)

ALL_DIGITS = (1 << 10) - 1
EVEN_DIGITS = sum(1 << d for d in (0, 2, 4, 6, 8))
ODD_DIGITS = ALL_DIGITS ^ EVEN_DIGITS
ABOVE_FIVE = sum(1 << d for d in (6, 7, 8, 9))
BELOW_FIVE = sum(1 << d for d in (0, 1, 2, 3, 4))

CODE_BITS = ("digit=0", "digit=1", "digit=2", "digit=3", "digit=4", "digit=5", "digit=6", "digit=7",
             "digit=8", "digit=9", "bold", "slanting left", "slanting right", "wide")


@dataclasses.dataclass(frozen=True)
class Predicate:
    """What a caption asserts: the digit is in ``digits`` (a bit mask over 0..9) and, unless -1,
    ``ink`` (0 thin, 1 bold), ``slant`` (0 left, 1 upright, 2 right), ``width`` (0 narrow, 1 wide)."""

    digits: int = ALL_DIGITS
    ink: int = -1
    slant: int = -1
    width: int = -1

    def holds(self, digit: np.ndarray, ink: np.ndarray, slant: np.ndarray, width: np.ndarray) -> np.ndarray:
        """Boolean ``[N]``: whether the predicate is true of each of N images with these facts."""
        ok = ((self.digits >> np.asarray(digit)) & 1).astype(bool)
        for want, have in ((self.ink, ink), (self.slant, slant), (self.width, width)):
            if want >= 0:
                ok &= np.asarray(have) == want
        return ok

    @staticmethod
    def from_text(text: str) -> "Predicate":
        """Parses a caption of this dataset's grammar ("a thin seven slanting left", "an even
        digit", ...). Raises ValueError naming the first word it cannot place."""
        words = tokenize(text)
        digits, ink, slant, width = ALL_DIGITS, -1, -1, -1
        i = 0
        if words and words[0] in ("a", "an"):
            i = 1
        named = False
        while i < len(words):
            w = words[i]
            if w in DIGIT_NAMES:
                digits, named = 1 << DIGIT_NAMES.index(w), True
            elif w == "digit":
                pass
            elif w == "even":
                digits = EVEN_DIGITS
            elif w == "odd":
                digits = ODD_DIGITS
            elif w in ("larger", "smaller") and words[i + 1: i + 3] == ["than", "five"]:
                digits = ABOVE_FIVE if w == "larger" else BELOW_FIVE
                i += 2
            elif w in INK_WORDS:
                ink = INK_WORDS.index(w)
            elif w in WIDTH_WORDS:
                width = WIDTH_WORDS.index(w)
            elif w == "upright":
                slant = 1
            elif w == "slanting" and i + 1 < len(words) and words[i + 1] in ("left", "right"):
                slant = SLANT_WORDS.index(words[i + 1])
                i += 1
            else:
                raise ValueError(f"Predicate.from_text: cannot parse word {w!r} in caption {text!r}")
            i += 1
        if not words or (not named and "digit" not in words):
            raise ValueError(f"Predicate.from_text: caption {text!r} names neither a digit nor 'digit'")
        return Predicate(digits, ink, slant, width)


def _article(rest: str) -> str:
    return ("an " if rest[0] in "aeiou" else "a ") + rest


def describe(kind: str, digit: int, ink: int, slant: int, width: int) -> Optional[str]:
    """The caption of ``kind`` (see :data:`CAPTION_KINDS`) for an image with these facts, or None
    when the kind does not describe it (only "magnitude" for a five)."""
    name = DIGIT_NAMES[digit]
    ink_w, width_w = INK_WORDS[ink], WIDTH_WORDS[width]

    def slanted(noun: str, adjectives: str = "") -> str:
        # "a thin seven slanting left" / "an upright thin seven"
        adj = (adjectives + " ") if adjectives else ""
        if slant == 1:
            return _article(f"upright {adj}{noun}")
        return _article(f"{adj}{noun} slanting {SLANT_WORDS[slant]}")

    if kind == "digit":
        return "a digit"
    if kind == "parity":
        return "an even digit" if digit % 2 == 0 else "an odd digit"
    if kind == "magnitude":
        if digit == 5:
            return None
        return "a digit larger than five" if digit > 5 else "a digit smaller than five"
    if kind == "ink":
        return _article(f"{ink_w} digit")
    if kind == "slant":
        return slanted("digit")
    if kind == "width":
        return _article(f"{width_w} digit")
    if kind == "name":
        return _article(name)
    if kind == "ink_name":
        return _article(f"{ink_w} {name}")
    if kind == "width_name":
        return _article(f"{width_w} {name}")
    if kind == "slant_name":
        return slanted(name)
    if kind == "ink_slant_name":
        return slanted(name, ink_w)
    if kind == "full":
        return slanted(name, f"{width_w} {ink_w}")
    raise ValueError(f"describe: kind must be one of {', '.join(CAPTION_KINDS)}, got {kind!r}")


def measure_facts(images: np.ndarray, digits: np.ndarray) -> Dict[str, np.ndarray]:
    """Facts of each image: ``ink`` (0/1), ``slant`` (0/1/2), ``width`` (0/1) as int64 ``[N]``,
    and the raw measurements ``ink_amount``, ``shear``, ``spread`` (float64 ``[N]``).

    ``images`` is ``[N, 8, 8]`` (any non-negative intensities), ``digits`` ``[N]`` in 0..9. Class
    thresholds (medians, terciles) are taken over the images given, per digit class.
    """
    x = np.asarray(images, dtype=np.float64)
    digits = np.asarray(digits)
    if x.ndim != 3 or digits.shape != (x.shape[0],):
        raise ValueError(f"measure_facts: images must be [N, H, W] and digits [N], got {list(x.shape)} and "
                         f"{list(digits.shape)}")
    h, w = x.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    m00 = x.sum(axis=(1, 2))
    if np.any(m00 <= 0):
        raise ValueError("measure_facts: every image needs some ink (a positive pixel)")
    cx = (x * xx).sum(axis=(1, 2)) / m00
    cy = (x * yy).sum(axis=(1, 2)) / m00
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    mu11 = (x * dx * dy).sum(axis=(1, 2))
    mu02 = (x * dy * dy).sum(axis=(1, 2))
    mu20 = (x * dx * dx).sum(axis=(1, 2))
    shear = -mu11 / mu02          # > 0: the top of the digit leans right
    spread = np.sqrt(mu20 / m00)  # horizontal standard deviation of the ink, in pixels

    ink = np.zeros(len(x), dtype=np.int64)
    slant = np.ones(len(x), dtype=np.int64)
    width = np.zeros(len(x), dtype=np.int64)
    for d in np.unique(digits):
        sel = digits == d
        ink[sel] = m00[sel] > np.median(m00[sel])
        width[sel] = spread[sel] > np.median(spread[sel])
        lo, hi = np.quantile(shear[sel], [1 / 3, 2 / 3])
        slant[sel & (shear < lo)] = 0
        slant[sel & (shear > hi)] = 2
    return {"ink": ink, "slant": slant, "width": width, "ink_amount": m00, "shear": shear, "spread": spread}


def label_codes(digit: np.ndarray, ink: np.ndarray, slant: np.ndarray, width: np.ndarray) -> np.ndarray:
    """``[N, 14]`` uint8 multi-hot label codes (bits named in :data:`CODE_BITS`)."""
    n = len(digit)
    codes = np.zeros((n, len(CODE_BITS)), dtype=np.uint8)
    codes[np.arange(n), np.asarray(digit)] = 1
    codes[:, 10] = np.asarray(ink) == 1
    codes[:, 11] = np.asarray(slant) == 0
    codes[:, 12] = np.asarray(slant) == 2
    codes[:, 13] = np.asarray(width) == 1
    return codes


def plausibility(predicates: Sequence[Predicate], digit: np.ndarray, ink: np.ndarray, slant: np.ndarray,
                 width: np.ndarray) -> np.ndarray:
    """``[N_images, N_captions]`` bool: whether caption j's predicate holds for image i."""
    out = np.zeros((len(digit), len(predicates)), dtype=bool)
    cache: Dict[Predicate, np.ndarray] = {}
    for j, p in enumerate(predicates):
        if p not in cache:
            cache[p] = p.holds(digit, ink, slant, width)
        out[:, j] = cache[p]
    return out


def _rows_nonzero(matrix: np.ndarray) -> List[List[int]]:
    rows, cols = np.nonzero(matrix)
    bounds = np.searchsorted(rows, np.arange(matrix.shape[0] + 1))
    return [cols[bounds[i]:bounds[i + 1]].tolist() for i in range(matrix.shape[0])]


@dataclasses.dataclass
class DigitsSplit:
    """One split: N images and M captions (``captions_per_image`` per image), with exact ground truth.

    Attributes:
        images: ``[N, 1, 8, 8]`` float32 in [0, 1] (pixel / 16).
        source_index: ``[N]`` int64, row of each image in ``sklearn.datasets.load_digits()``.
        digit, ink, slant, width: ``[N]`` int64 facts (see the module docstring).
        captions: the M caption texts; ``caption_kind`` their kinds; ``predicates`` their meaning.
        caption_image: ``[M]`` int64, the image (row of ``images``) each caption was written for.
        tokens, lengths: ``[M, L]`` / ``[M]`` int64 word ids (see :class:`WordVocab`).
        plausible: ``[N, M]`` bool, caption j is true of image i.
        image_codes, caption_codes: ``[N, 14]`` / ``[M, 14]`` uint8 label codes for PMRP.
    """

    images: torch.Tensor
    source_index: torch.Tensor
    digit: torch.Tensor
    ink: torch.Tensor
    slant: torch.Tensor
    width: torch.Tensor
    captions: List[str]
    caption_kind: List[str]
    predicates: List[Predicate]
    caption_image: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    plausible: torch.Tensor
    image_codes: torch.Tensor
    caption_codes: torch.Tensor

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    # Ground truth as sparse positive sets, one list per query (the format of pcmekit.metrics).
    def original_i2t(self) -> List[List[int]]:
        """Image i -> its own captions."""
        out: List[List[int]] = [[] for _ in range(self.num_images)]
        for j, i in enumerate(self.caption_image.tolist()):
            out[i].append(j)
        return out

    def original_t2i(self) -> List[List[int]]:
        """Caption j -> the image it was written for."""
        return [[i] for i in self.caption_image.tolist()]

    def plausible_i2t(self) -> List[List[int]]:
        """Image i -> every caption true of it."""
        return _rows_nonzero(self.plausible.numpy())

    def plausible_t2i(self) -> List[List[int]]:
        """Caption j -> every image it is true of."""
        return _rows_nonzero(self.plausible.numpy().T)

    def num_plausible_images(self) -> torch.Tensor:
        """``[M]`` int64: how many images of this split each caption is true of."""
        return self.plausible.sum(dim=0)


@dataclasses.dataclass
class DigitsCaptions:
    """The dataset: ``train`` and ``test`` splits sharing one ``vocab``."""

    train: DigitsSplit
    test: DigitsSplit
    vocab: WordVocab
    captions_per_image: int
    seed: int
    test_fraction: float


#: The caption kinds zero-shot prompts are made of: every kind but "magnitude" (which says nothing
#: of a five), so every class gets the same number of prompts.
PROMPT_KINDS = tuple(k for k in CAPTION_KINDS if k != "magnitude")

#: Kinds whose captions name the digit; the others ("a digit", "an odd digit", "a bold digit", ...)
#: are true of other classes too.
NAMING_KINDS = ("name", "ink_name", "width_name", "slant_name", "ink_slant_name", "full")


def class_prompts() -> Tuple[List[List[str]], List[str]]:
    """Zero-shot prompts for the ten digit classes: ``(prompts, kinds)``, where ``prompts[c]``
    lists every caption of :data:`PROMPT_KINDS` that is true of some image of digit ``c`` (35
    per class: 26 that name the digit, from "a seven" to "a wide thin seven slanting left", and 9
    that do not, such as "a digit" or "an odd digit", which several classes share) and
    ``kinds[p]`` is the kind of prompt ``p`` (the same order for every class)."""
    prompts: List[List[str]] = []
    kinds: List[str] = []
    for d in range(10):
        texts: Dict[str, str] = {}
        for kind in PROMPT_KINDS:
            for ink in range(2):
                for slant in range(3):
                    for width in range(2):
                        text = describe(kind, d, ink, slant, width)
                        assert text is not None
                        texts.setdefault(text, kind)
        prompts.append(list(texts))
        if d == 0:
            kinds = list(texts.values())
        elif list(texts.values()) != kinds:  # pragma: no cover - the grammar gives every class one layout
            raise AssertionError("class_prompts: the classes' prompt kinds differ")
    return prompts, kinds


def _all_caption_texts() -> List[str]:
    texts = set()
    for d in range(10):
        for ink in range(2):
            for slant in range(3):
                for width in range(2):
                    for kind in CAPTION_KINDS:
                        t = describe(kind, d, ink, slant, width)
                        if t is not None:
                            texts.add(t)
    return sorted(texts)


def default_vocab() -> WordVocab:
    """The vocabulary of every caption this grammar can produce (independent of the seed)."""
    return WordVocab.build(_all_caption_texts())


def _load_sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pcmekit.data.digits needs scikit-learn (it ships the digit images); "
            "install it with `pip install scikit-learn` or `pip install pcmekit[demo]`"
        ) from err
    data = load_digits()
    return np.asarray(data.images, dtype=np.float64), np.asarray(data.target, dtype=np.int64)


def load_digits_captions(captions_per_image: int = 5, test_fraction: float = 0.3, seed: int = 0) -> DigitsCaptions:
    """Builds the dataset (about 0.1 s; nothing is downloaded).

    Args:
        captions_per_image: captions per image, each of a different kind (1..11: a five has 11
            applicable kinds).
        test_fraction: share of each digit class in the test split, in (0, 1).
        seed: seeds the split and the choice of caption kinds.
    """
    if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, int) \
            or not 1 <= captions_per_image <= len(CAPTION_KINDS) - 1:
        raise ValueError(f"captions_per_image must be an int in 1..{len(CAPTION_KINDS) - 1}, got {captions_per_image!r}")
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    images, digits = _load_sklearn_digits()
    facts = measure_facts(images, digits)
    rng = np.random.default_rng(seed)

    test_mask = np.zeros(len(digits), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(digits == d)
        n_test = int(round(test_fraction * len(idx)))
        test_mask[rng.permutation(idx)[:n_test]] = True

    # Caption kinds per image, drawn once for the whole dataset (so a split does not change them).
    kinds_per_image: List[List[str]] = []
    for i in range(len(digits)):
        kinds = [k for k in CAPTION_KINDS if not (k == "magnitude" and digits[i] == 5)]
        pick = rng.choice(len(kinds), size=captions_per_image, replace=False)
        kinds_per_image.append([kinds[p] for p in sorted(pick)])

    vocab = default_vocab()

    def make_split(rows: np.ndarray) -> DigitsSplit:
        d, ink, slant, width = (digits[rows], facts["ink"][rows], facts["slant"][rows], facts["width"][rows])
        captions, kinds, owner = [], [], []
        for local, row in enumerate(rows):
            for kind in kinds_per_image[row]:
                text = describe(kind, int(digits[row]), int(facts["ink"][row]), int(facts["slant"][row]),
                                int(facts["width"][row]))
                assert text is not None
                captions.append(text)
                kinds.append(kind)
                owner.append(local)
        predicates = [Predicate.from_text(t) for t in captions]
        plaus = plausibility(predicates, d, ink, slant, width)
        owner_arr = np.asarray(owner, dtype=np.int64)
        # Every caption is true of the image it was written for (checked, it is cheap).
        assert plaus[owner_arr, np.arange(len(owner))].all()
        codes = label_codes(d, ink, slant, width)
        tokens, lengths = vocab.encode(captions)
        return DigitsSplit(
            images=torch.from_numpy(images[rows] / 16.0).float().unsqueeze(1),
            source_index=torch.from_numpy(rows.astype(np.int64)),
            digit=torch.from_numpy(d.copy()),
            ink=torch.from_numpy(ink.copy()),
            slant=torch.from_numpy(slant.copy()),
            width=torch.from_numpy(width.copy()),
            captions=captions,
            caption_kind=kinds,
            predicates=predicates,
            caption_image=torch.from_numpy(owner_arr),
            tokens=tokens,
            lengths=lengths,
            plausible=torch.from_numpy(plaus),
            image_codes=torch.from_numpy(codes),
            caption_codes=torch.from_numpy(codes[owner_arr]),
        )

    return DigitsCaptions(
        train=make_split(np.flatnonzero(~test_mask)),
        test=make_split(np.flatnonzero(test_mask)),
        vocab=vocab,
        captions_per_image=captions_per_image,
        seed=seed,
        test_fraction=float(test_fraction),
    )
