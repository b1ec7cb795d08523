"""Pre-extracted (frozen) image and text features with their matches: the input of
``pcmekit train --features`` and :func:`pcmekit.train.fit_adapters`.

Three files (docs/design.md, "Frozen-feature adapters"):

* ``image.npy`` -- ``[N, C_img]`` floating-point features, one row per image;
* ``text.npy`` -- ``[M, C_txt]`` floating-point features, one row per caption;
* ``pairs.json`` -- which rows match, and optionally their COCO ids and the test split::

      {
        "pairs": [[0, 0], [0, 1], [1, 2], ...],   # [image row, text row], required
        "image_ids": [391895, ...],               # optional: one id per row of image.npy
        "caption_ids": [770337, ...],             # optional: one id per row of text.npy
        "test_images": [3, 17, ...]               # optional: image rows held out for evaluation
      }

  A bare list is read as ``{"pairs": list}``. Without ``test_images`` a seeded
  ``test_fraction`` of the paired images is held out. The test split is the test images and
  every text row paired with them; the train split the other paired images and their texts.
  Rows that appear in no pair take no part.

:func:`load_feature_pairs` reads and checks the files; every error names the file (or the
argument), what was expected and what arrived.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["FeaturePairs", "FeatureSplit", "load_feature_pairs", "split_feature_pairs"]

PathLike = Union[str, Path]


@dataclasses.dataclass
class FeatureSplit:
    """One split of frozen features, in the form :func:`pcmekit.train.fit` trains on.

    Attributes:
        images: ``[N, C_img]`` float32, the split's images.
        tokens: ``[M, C_txt]`` float32, the split's caption features (named ``tokens`` because
            :func:`~pcmekit.train.fit` feeds this field to the text encoder).
        lengths: ``[M]`` int64 ones (the text encoder of features ignores them).
        caption_image: ``[M]`` int64, the image (row of ``images``) of each caption row: one
            row per pair, so a text that matches several images appears once for each.
        texts: ``[T, C_txt]`` float32, the split's distinct texts (the gallery evaluation ranks),
            in ``text_rows`` order.
        positives_i2t / positives_t2i: ground truth for evaluation, one sorted list per query
            (rows of ``texts`` for an image, rows of ``images`` for a text).
        image_rows / text_rows: ``[N]`` / ``[T]`` int64, the rows of ``image.npy`` / ``text.npy``.
        image_ids / caption_ids: ``[N]`` / ``[T]`` int64 COCO ids, or None when pairs.json has none.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    caption_image: torch.Tensor
    texts: torch.Tensor
    positives_i2t: List[List[int]]
    positives_t2i: List[List[int]]
    image_rows: torch.Tensor
    text_rows: torch.Tensor
    image_ids: Optional[np.ndarray] = None
    caption_ids: Optional[np.ndarray] = None

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_captions(self) -> int:
        """Distinct texts (the evaluation gallery), not the per-pair training rows."""
        return int(self.texts.shape[0])


@dataclasses.dataclass
class FeaturePairs:
    """Everything :func:`load_feature_pairs` read: the two feature matrices, the pairs
    ``[P, 2]`` (image row, text row), the optional ids, and the ``train`` / ``test`` splits."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    pairs: np.ndarray
    image_ids: Optional[np.ndarray]
    caption_ids: Optional[np.ndarray]
    train: FeatureSplit
    test: FeatureSplit
    source: Dict[str, str]

    @property
    def image_dim(self) -> int:
        return int(self.image_features.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.text_features.shape[1])


def _load_matrix(path: PathLike, what: str) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{what} file {str(path)!r}: expected a .npy array of floats, could not read it "
                         f"without pickle ({err})") from None
    except OSError as err:
        raise ValueError(f"{what} file {str(path)!r}: expected a .npy array of floats, got a file numpy "
                         f"cannot read ({err})") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what} file {str(path)!r}: expected a single .npy array, got {type(arr).__name__}")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} file {str(path)!r}: expected a [rows, dims] array with rows, dims >= 1, "
                         f"got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} file {str(path)!r}: expected floating-point features, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{what} file {str(path)!r}: expected finite features, got {arr[bad[0], bad[1]]} at "
                         f"row {int(bad[0])}, column {int(bad[1])}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _int_list(value: Any, where: str) -> List[int]:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of ints, got {type(value).__name__}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{where}[{i}] must be an int, got {v!r}")
    return list(value)


def _ids(value: Any, where: str, rows: int, rows_from: str) -> np.ndarray:
    ids = _int_list(value, where)
    if len(ids) != rows:
        raise ValueError(f"{where} must have one id per row of {rows_from} ({rows}), got {len(ids)} ids")
    arr = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[counts > 1][0])
        raise ValueError(f"{where} must be distinct, got id {dup} at rows "
                         f"{np.flatnonzero(arr == dup)[:2].tolist()}")
    return arr


def _read_pairs_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"pairs file {str(path)!r}: expected JSON, got a parse error ({err})") from None
    if isinstance(raw, list):
        raw = {"pairs": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"pairs file {str(path)!r}: expected an object with 'pairs' (or a list of pairs), "
                         f"got {type(raw).__name__}")
    if "pairs" not in raw:
        raise ValueError(f"pairs file {str(path)!r}: expected a 'pairs' list of [image_row, text_row], got keys "
                         f"{sorted(raw)}")
    known = {"pairs", "image_ids", "caption_ids", "test_images"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"pairs file {str(path)!r}: unknown key(s) {unknown}; expected {sorted(known)}")
    return raw


def _pairs(value: Any, where: str, n_img: int, n_txt: int, image_file: str, text_file: str) -> np.ndarray:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of [image_row, text_row], got {type(value).__name__}")
    if not value:
        raise ValueError(f"{where} must list at least one [image_row, text_row] pair, got an empty list")
    out = np.empty((len(value), 2), dtype=np.int64)
    for p, pair in enumerate(value):
        if (not isinstance(pair, list) or len(pair) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)):
            raise ValueError(f"{where}[{p}] must be [image_row, text_row] (two ints), got {pair!r}")
        i, t = pair
        if not 0 <= i < n_img:
            raise ValueError(f"{where}[{p}] = {pair}: image row {i} is out of range; {image_file} has {n_img} rows "
                             f"(0..{n_img - 1})")
        if not 0 <= t < n_txt:
            raise ValueError(f"{where}[{p}] = {pair}: text row {t} is out of range; {text_file} has {n_txt} rows "
                             f"(0..{n_txt - 1})")
        out[p] = (i, t)
    uniq, first, counts = np.unique(out[:, 0] * n_txt + out[:, 1], return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = out[first[counts > 1][0]].tolist()
        rows = np.flatnonzero((out == dup).all(axis=1))[:2].tolist()
        raise ValueError(f"{where} repeats the pair {dup} (at positions {rows}); each match is listed once")
    return out


def _make_split(images: torch.Tensor, texts: torch.Tensor, pairs: np.ndarray, image_rows: np.ndarray,
                image_ids: Optional[np.ndarray], caption_ids: Optional[np.ndarray]) -> FeatureSplit:
    """The split of ``image_rows``: their pairs, a training view with one caption row per pair,
    and ground truth over the distinct texts."""
    keep = np.isin(pairs[:, 0], image_rows)
    sub = pairs[keep]
    local_img = {int(r): k for k, r in enumerate(image_rows.tolist())}
    text_rows = np.unique(sub[:, 1])
    local_txt = {int(r): k for k, r in enumerate(text_rows.tolist())}
    i2t: List[List[int]] = [[] for _ in range(len(image_rows))]
    t2i: List[List[int]] = [[] for _ in range(len(text_rows))]
    for i, t in sub.tolist():
        i2t[local_img[i]].append(local_txt[t])
        t2i[local_txt[t]].append(local_img[i])
    order = np.argsort(sub[:, 0], kind="stable")   # caption rows grouped by image
    sub = sub[order]
    return FeatureSplit(
        images=images[torch.from_numpy(image_rows)],
        tokens=texts[torch.from_numpy(sub[:, 1].copy())],
        lengths=torch.ones(len(sub), dtype=torch.int64),
        caption_image=torch.tensor([local_img[i] for i in sub[:, 0].tolist()], dtype=torch.int64),
        texts=texts[torch.from_numpy(text_rows.copy())],
        positives_i2t=[sorted(v) for v in i2t],
        positives_t2i=[sorted(v) for v in t2i],
        image_rows=torch.from_numpy(image_rows.copy()),
        text_rows=torch.from_numpy(text_rows.copy()),
        image_ids=None if image_ids is None else image_ids[image_rows],
        caption_ids=None if caption_ids is None else caption_ids[text_rows],
    )


def _close_over_shared_texts(pairs: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``test`` plus every image that shares a text with it, repeated until nothing changes: a
    held-out group never shares a text with the training images."""
    while True:
        texts = np.unique(pairs[np.isin(pairs[:, 0], test), 1])
        grown = np.union1d(test, pairs[np.isin(pairs[:, 1], texts), 0])
        if len(grown) == len(test):
            return test
        test = grown


def split_feature_pairs(image_features: torch.Tensor, text_features: torch.Tensor, pairs: np.ndarray,
                        test_images: Optional[Sequence[int]] = None, *, test_fraction: float = 0.2,
                        seed: int = 0, image_ids: Optional[np.ndarray] = None,
                        caption_ids: Optional[np.ndarray] = None,
                        where: str = "test_images") -> Tuple[FeatureSplit, FeatureSplit]:
    """``(train, test)`` splits of checked features and pairs (see the module docstring).

    ``test_images`` are image rows, each of which must be in a pair; a text row paired with one of
    them and with a training image is then an error (it would be in both galleries). Without
    them a seeded ``test_fraction`` of the paired images (rounded, at least 1) is held out,
    together with every image that shares a text with a held-out one."""
    paired = np.unique(pairs[:, 0])
    if test_images is None:
        if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        if len(paired) < 3:
            raise ValueError(f"pairs name {len(paired)} image(s); holding out a test split needs at least 3")
        n_test = min(max(1, int(round(test_fraction * len(paired)))), len(paired) - 2)
        rng = np.random.default_rng(seed)
        test = _close_over_shared_texts(pairs, np.sort(rng.permutation(paired)[:n_test]))
    else:
        test = np.asarray(list(test_images), dtype=np.int64)
        if len(test) == 0:
            raise ValueError(f"{where} must list at least one image row, got an empty list")
        uniq, counts = np.unique(test, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{where} repeats image row {int(uniq[counts > 1][0])}")
        missing = test[~np.isin(test, paired)]
        if len(missing):
            raise ValueError(f"{where}: image row {int(missing[0])} is in no pair; every test image needs at "
                             "least one matching text (its metrics are undefined otherwise)")
        test = np.sort(test)
    train = np.setdiff1d(paired, test)
    if len(train) < 2:
        if test_images is None:
            raise ValueError(f"holding out test_fraction = {test_fraction} of the images (and the images sharing "
                             f"a text with them) leaves {len(train)} for training; a contrastive batch needs 2 "
                             "(give 'test_images' in pairs.json)")
        raise ValueError(f"{where} leaves {len(train)} paired image(s) for training; a contrastive batch needs 2")
    in_test = np.isin(pairs[:, 0], test)
    shared = np.intersect1d(pairs[in_test, 1], pairs[~in_test, 1])
    if len(shared):
        t = int(shared[0])
        imgs = pairs[pairs[:, 1] == t, 0]
        raise ValueError(f"{where}: text row {t} matches train image {int(imgs[~np.isin(imgs, test)][0])} and test "
                         f"image {int(imgs[np.isin(imgs, test)][0])}; a text must belong to one split")
    return (_make_split(image_features, text_features, pairs, train, image_ids, caption_ids),
            _make_split(image_features, text_features, pairs, test, image_ids, caption_ids))


def load_feature_pairs(image: PathLike, text: PathLike, pairs: PathLike, *, test_fraction: float = 0.2,
                       seed: int = 0) -> FeaturePairs:
    """Reads and checks ``image.npy``, ``text.npy`` and ``pairs.json`` (module docstring) and
    splits them. Raises FileNotFoundError for a missing file and ValueError, naming the file and
    the key, for anything malformed: arrays that are not 2-D floats or hold NaN / inf, rows out
    of range, repeated pairs, id lists of the wrong length or with repeats, bad test rows."""
    image_path, text_path, pairs_path = Path(image), Path(text), Path(pairs)
    img = _load_matrix(image_path, "image features")
    txt = _load_matrix(text_path, "text features")
    raw = _read_pairs_json(pairs_path)
    where = f"pairs file {str(pairs_path)!r}"
    pair_arr = _pairs(raw["pairs"], f"{where}: 'pairs'", img.shape[0], txt.shape[0],
                      f"image features {str(image_path)!r}", f"text features {str(text_path)!r}")
    image_ids = (None if raw.get("image_ids") is None else
                 _ids(raw["image_ids"], f"{where}: 'image_ids'", img.shape[0], f"{str(image_path)!r}"))
    caption_ids = (None if raw.get("caption_ids") is None else
                   _ids(raw["caption_ids"], f"{where}: 'caption_ids'", txt.shape[0], f"{str(text_path)!r}"))
    test_images = raw.get("test_images")
    if test_images is not None:
        test_images = _int_list(test_images, f"{where}: 'test_images'")
        bad = [r for r in test_images if not 0 <= r < img.shape[0]]
        if bad:
            raise ValueError(f"{where}: 'test_images' names image row {bad[0]}, out of range; "
                             f"{str(image_path)!r} has {img.shape[0]} rows")
    if not (isinstance(test_fraction, (int, float)) and math.isfinite(test_fraction)):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    train, test = split_feature_pairs(img, txt, pair_arr, test_images, test_fraction=test_fraction, seed=seed,
                                      image_ids=image_ids, caption_ids=caption_ids,
                                      where=f"{where}: 'test_images'")
    return FeaturePairs(img, txt, pair_arr, image_ids, caption_ids, train, test,
                        source={"image": str(image_path), "text": str(text_path), "pairs": str(pairs_path)})
