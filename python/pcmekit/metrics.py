"""Retrieval metrics of the field, from top-k indices and sparse ground truth (ECCV Caption's definitions).

Every function takes the ranked gallery indices of each query, ``indices [Q, k]`` (row q lists
gallery items best first, as :func:`pcmekit.topk` returns them; a numpy array or a tensor of
integers), and the ground truth as **sparse positive sets**, in one of two forms:

* a sequence with one iterable of gallery indices per row of ``indices``, or
* a mapping ``{query row: iterable of gallery indices}``: only the queries it names are evaluated
  (ECCV Caption evaluates a subset of COCO's queries this way).

With R the number of positives of a query and rel(r) = 1 when the item at rank r is a positive
(docs/design.md, "Retrieval metrics"):

* ``R@K`` = 1 if any positive is in the top K;
* ``R-P`` (R-Precision) = (positives in the top R) / R;
* ``mAP@R`` = 1/R * sum_{r <= R} rel(r) * precision@r;
* ``RSUM`` = R@1 + R@5 + R@10, image-to-text plus text-to-image;
* ``PMRP`` = R-Precision where the positives are the plausible matches: gallery items whose
  multi-hot label code is within Hamming distance t of the query's, averaged over t in {0, 1, 2}.

All values are **percentages** (0..100), means over the evaluated queries, as the papers' tables
print them (the ``eccv_caption`` package returns the same numbers as fractions).

Rules, each enforced with a ValueError that names the query and the numbers:

* R@K needs K items per row, unless the row holds the whole gallery (``num_gallery == k``);
* R-Precision, mAP@R and PMRP need k >= R for every evaluated query (a truncated list cannot say
  how many of the top R are positives): retrieve with a larger k, up to the whole gallery;
* ground truth may not name a query that ``indices`` does not have, nor a gallery item outside
  ``[0, num_gallery)``; a query with an empty positive set is an error (its metrics are undefined);
* a row of ``indices`` may not repeat an item.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "Positives",
    "coco_category_codes",
    "coco_plausible_matches",
    "contiguous_folds",
    "eccv_caption_eval",
    "eccv_caption_ids",
    "map_at_r",
    "n_fold_recalls",
    "pmrp",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
    "rsum",
    "spearman",
    "uncertainty_analysis",
]

Positives = Union[Sequence[Iterable[int]], Mapping[int, Iterable[int]]]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Sequence[int]]]

# Rows processed at a time where a [rows, k] or [rows, N] temporary is formed.
_CHUNK_ROWS = 2048


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _as_indices(indices: ArrayLike, num_gallery: Optional[int], name: str = "indices") -> np.ndarray:
    """``indices`` as a C-contiguous int64 ``[Q, k]`` array, checked."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {indices.dtype}")
        arr = indices.detach().cpu().numpy()
    else:
        arr = np.asarray(indices)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [Q, k] (ranked gallery indices per query), got {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if num_gallery is not None:
        _check_count("num_gallery", num_gallery)
        if arr.shape[1] > num_gallery:
            raise ValueError(f"{name} has k = {arr.shape[1]} columns, more than num_gallery = {num_gallery}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (num_gallery is not None and hi >= num_gallery):
            bad = lo if lo < 0 else hi
            row = int(np.argwhere(arr == bad)[0, 0])
            limit = f"[0, {num_gallery})" if num_gallery is not None else ">= 0"
            raise ValueError(f"{name} row {row} holds gallery index {bad}; indices must be {limit}")
        if arr.shape[1] > 1:
            srt = np.sort(arr, axis=1)
            dup = np.argwhere(srt[:, 1:] == srt[:, :-1])
            if len(dup):
                row, col = int(dup[0, 0]), int(dup[0, 1])
                raise ValueError(f"{name} row {row} repeats gallery item {int(srt[row, col])}; "
                                 "the items of a ranked row must be distinct")
    return arr


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


@dataclasses.dataclass
class _Truth:
    """Sparse ground truth for the evaluated queries, in CSR form."""

    queries: np.ndarray   # [E] int64, rows of `indices` evaluated, ascending
    offsets: np.ndarray   # [E + 1] int64
    items: np.ndarray     # [sum R] int64, each query's positives, sorted and unique

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _as_truth(positives: Positives, num_queries: int, num_gallery: Optional[int],
              name: str = "positives") -> _Truth:
    if isinstance(positives, (str, bytes)) or positives is None:
        raise TypeError(f"{name} must be a sequence (one positive set per query) or a mapping "
                        f"{{query: positives}}, got {type(positives).__name__}")
    if isinstance(positives, Mapping):
        pairs = []
        for q, items in positives.items():
            if isinstance(q, bool) or not isinstance(q, (int, np.integer)):
                raise TypeError(f"{name} keys must be int query rows, got {q!r}")
            if not 0 <= q < num_queries:
                raise ValueError(f"{name} names query {q}, but indices has {num_queries} rows "
                                 f"(queries 0..{num_queries - 1})")
            pairs.append((int(q), items))
        pairs.sort(key=lambda p: p[0])
    else:
        if isinstance(positives, (np.ndarray, torch.Tensor)) and positives.ndim == 2 and positives.dtype in (
                np.bool_, torch.bool):
            raise TypeError(f"{name} must be sparse positive sets; convert a dense boolean matrix "
                            "with [row.nonzero() ...] first")
        if len(positives) != num_queries:
            raise ValueError(f"{name} has {len(positives)} entries but indices has {num_queries} rows; "
                             "give one positive set per query, or a mapping {query: positives}")
        pairs = list(enumerate(positives))
    queries = np.fromiter((q for q, _ in pairs), dtype=np.int64, count=len(pairs))
    offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    chunks: List[np.ndarray] = []
    for e, (q, items) in enumerate(pairs):
        if isinstance(items, torch.Tensor):
            items = items.detach().cpu().numpy()
        arr = np.unique(np.asarray(list(items) if not isinstance(items, np.ndarray) else items).reshape(-1))
        if arr.size == 0:
            raise ValueError(f"{name} of query {q} is empty; a query needs at least one positive "
                             "(leave it out of a mapping to skip it)")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} of query {q} must be int gallery indices, got dtype {arr.dtype}")
        if arr[0] < 0 or (num_gallery is not None and arr[-1] >= num_gallery):
            bad = int(arr[0] if arr[0] < 0 else arr[-1])
            limit = f"the gallery has {num_gallery} items" if num_gallery is not None else "indices must be >= 0"
            raise ValueError(f"{name} of query {q} names gallery item {bad}, but {limit}")
        chunks.append(arr.astype(np.int64))
        offsets[e + 1] = offsets[e] + arr.size
    items_all = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return _Truth(queries, offsets, items_all)


def _relevance(ranked: np.ndarray, truth: _Truth, width: int) -> np.ndarray:
    """``[E, width]`` bool: whether ranked[query_e, r] is a positive of query e."""
    rows = ranked[truth.queries, :width]
    span = int(max(rows.max(initial=-1), truth.items.max(initial=-1))) + 1
    qid = np.repeat(np.arange(len(truth.queries), dtype=np.int64), truth.counts)
    keys = qid * span + truth.items               # sorted: queries ascending, items sorted within
    probe = np.arange(len(truth.queries), dtype=np.int64)[:, None] * span + rows
    pos = np.searchsorted(keys, probe)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    return keys[pos] == probe if len(keys) else np.zeros(probe.shape, dtype=bool)


def _need_k_for_r(truth: _Truth, k: int, what: str) -> None:
    counts = truth.counts
    if len(counts) and counts.max() > k:
        e = int(np.argmax(counts > k))
        raise ValueError(
            f"{what} needs k >= R for every query: query {int(truth.queries[e])} has R = {int(counts[e])} "
            f"positives but indices has only k = {k} columns (retrieve with k >= {int(counts.max())}, "
            "up to the whole gallery)")


def _check_ks(ks: Sequence[int], k: Optional[int], num_gallery: Optional[int]) -> List[int]:
    ks = list(ks)
    if not ks:
        raise ValueError("ks must name at least one K")
    for K in ks:
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
            raise ValueError(f"every K in ks must be an int >= 1, got {K!r}")
        if k is not None and K > k and num_gallery != k:
            raise ValueError(f"R@{K} needs at least {K} ranked items per query, but indices has k = {k} "
                             "columns (and is not the whole gallery: pass num_gallery when it is)")
    return [int(K) for K in ks]


# --------------------------------------------------------------------------------------------
# Per-query metrics
# --------------------------------------------------------------------------------------------


def _per_query(ranked: np.ndarray, truth: _Truth, ks: Sequence[int], with_rp: bool) -> Dict[str, np.ndarray]:
    """Per-query values (percent) for the evaluated queries, chunked over queries."""
    k = ranked.shape[1]
    counts = truth.counts
    out: Dict[str, List[np.ndarray]] = {f"R@{K}": [] for K in ks}
    if with_rp:
        out["R-P"], out["mAP@R"] = [], []
    width = min(k, max(max(ks), int(counts.max(initial=0)) if with_rp else 0))
    for start in range(0, len(truth.queries), _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, len(truth.queries))
        part = _Truth(truth.queries[start:stop], truth.offsets[start:stop + 1] - truth.offsets[start],
                      truth.items[truth.offsets[start]:truth.offsets[stop]])
        rel = _relevance(ranked, part, width)
        for K in ks:
            out[f"R@{K}"].append(np.asarray(100.0 * rel[:, :K].any(axis=1)))
        if with_rp:
            r = counts[start:stop]
            hits = np.cumsum(rel, axis=1, dtype=np.int64)
            rows = np.arange(stop - start)
            out["R-P"].append(100.0 * hits[rows, r - 1] / r)
            rank = np.arange(1, width + 1, dtype=np.float64)
            within = rank[None, :] <= r[:, None]
            ap = (np.where(rel & within, hits / rank[None, :], 0.0)).sum(axis=1) / r
            out["mAP@R"].append(100.0 * ap)
    return {key: (np.concatenate(v) if v else np.zeros(0)) for key, v in out.items()}


def retrieval_metrics(
    indices: ArrayLike,
    positives: Positives,
    *,
    ks: Sequence[int] = (1, 5, 10),
    num_gallery: Optional[int] = None,
    precision: bool = True,
    per_query: bool = False,
) -> Dict[str, Any]:
    """Recall@K for each K in ``ks``, and (``precision=True``) R-Precision and mAP@R.

    Args:
        indices: ``[Q, k]`` ranked gallery indices per query (best first).
        positives: sparse ground truth (see the module docstring).
        ks: the K of Recall@K.
        num_gallery: the gallery size N, to check indices and ground truth against it, and to
            allow R@K with K > k when the rows hold the whole gallery (k == N).
        precision: also compute ``R-P`` and ``mAP@R`` (they need k >= R per query).
        per_query: add ``"per_query"``: a dict of ``[E]`` float arrays (percent) in the order
            of ``"queries"`` (``[E]`` int64 rows evaluated).

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "R-P": ..., "mAP@R": ..., "n_queries": E}``,
        means in percent.
    """
    ranked = _as_indices(indices, num_gallery)
    ks = _check_ks(ks, ranked.shape[1], num_gallery)
    truth = _as_truth(positives, ranked.shape[0], num_gallery)
    if precision:
        _need_k_for_r(truth, ranked.shape[1], "R-Precision / mAP@R")
    values = _per_query(ranked, truth, ks, precision)
    result: Dict[str, Any] = {key: _mean(v) for key, v in values.items()}
    result["n_queries"] = int(len(truth.queries))
    if per_query:
        result["per_query"] = values
        result["queries"] = truth.queries
    return result


def recall_at_k(indices: ArrayLike, positives: Positives, ks: Sequence[int] = (1, 5, 10), *,
                num_gallery: Optional[int] = None) -> Dict[str, float]:
    """``{"R@K": percent}`` for each K in ``ks`` (see :func:`retrieval_metrics`)."""
    res = retrieval_metrics(indices, positives, ks=ks, num_gallery=num_gallery, precision=False)
    return {f"R@{K}": res[f"R@{K}"] for K in ks}


def r_precision(indices: ArrayLike, positives: Positives, *, num_gallery: Optional[int] = None) -> float:
    """Mean R-Precision in percent: positives among the top R, over R (needs k >= R)."""
    return retrieval_metrics(indices, positives, ks=(1,), num_gallery=num_gallery)["R-P"]


def map_at_r(indices: ArrayLike, positives: Positives, *, num_gallery: Optional[int] = None) -> float:
    """Mean mAP@R in percent: 1/R sum_{r<=R} rel(r) precision@r (needs k >= R)."""
    return retrieval_metrics(indices, positives, ks=(1,), num_gallery=num_gallery)["mAP@R"]


def rsum(i2t: Mapping[str, float], t2i: Mapping[str, float]) -> float:
    """R@1 + R@5 + R@10 of both directions (dicts as :func:`retrieval_metrics` returns)."""
    missing = [f"{side}[{key!r}]" for side, m in (("i2t", i2t), ("t2i", t2i))
               for key in ("R@1", "R@5", "R@10") if key not in m]
    if missing:
        raise ValueError(f"rsum needs R@1, R@5 and R@10 of both directions; missing {', '.join(missing)}")
    return float(sum(m[key] for m in (i2t, t2i) for key in ("R@1", "R@5", "R@10")))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# --------------------------------------------------------------------------------------------
# PMRP
# --------------------------------------------------------------------------------------------


def _as_codes(codes: ArrayLike, name: str) -> torch.Tensor:
    t = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [n, C] (multi-hot label codes), got {list(t.shape)}")
    t = t.detach().cpu()
    if t.is_floating_point():
        if not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} must be multi-hot (0/1 values)")
    elif t.dtype != torch.bool and t.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{name} must be multi-hot (0/1 values)")
    return t.to(torch.float32)


def pmrp(
    indices: ArrayLike,
    query_codes: ArrayLike,
    gallery_codes: ArrayLike,
    thresholds: Sequence[int] = (0, 1, 2),
    *,
    per_query: bool = False,
) -> Dict[str, Any]:
    """Plausible-Match R-Precision (PCME; ECCV Caption), in percent.

    For each threshold t, a query's positives are the gallery items whose label code is within
    Hamming distance t of the query's code; ``PMRP@t`` is the mean R-Precision with those
    positives, and ``PMRP`` the mean over ``thresholds``. A query with no plausible match at some
    t (possible when query and gallery codes come from different sets) is left out of that t's
    mean and counted in ``n_skipped``.

    Args:
        indices: ``[Q, k]`` ranked gallery indices; k must be >= every query's R at every t
            (retrieving the whole gallery always is).
        query_codes: ``[Q, C]`` multi-hot (0/1) codes, one per row of ``indices``.
        gallery_codes: ``[N, C]`` codes of the gallery items.
        thresholds: Hamming distances t (non-negative ints).
        per_query: add ``"per_query"``: ``{t: [Q] float array}`` (NaN where skipped).

    Returns:
        ``{"PMRP": mean over t, "PMRP@0": ..., "PMRP@1": ..., "n_queries": Q, "n_skipped": {t: n}}``.
    """
    qc = _as_codes(query_codes, "query_codes")
    gc = _as_codes(gallery_codes, "gallery_codes")
    ranked = _as_indices(indices, gc.shape[0])
    if qc.shape[0] != ranked.shape[0]:
        raise ValueError(f"query_codes has {qc.shape[0]} rows but indices has {ranked.shape[0]}; "
                         "give one code per query")
    if qc.shape[1] != gc.shape[1]:
        raise ValueError(f"query_codes has {qc.shape[1]} bits per code but gallery_codes has {gc.shape[1]}")
    thresholds = list(thresholds)
    if not thresholds:
        raise ValueError("thresholds must name at least one Hamming distance")
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"every threshold must be an int >= 0, got {t!r}")
    k = ranked.shape[1]
    q = ranked.shape[0]
    per_t = {int(t): np.full(q, np.nan) for t in thresholds}
    g_ones = gc.sum(dim=1)
    ranked_t = torch.from_numpy(ranked)
    for start in range(0, q, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, q)
        qpart = qc[start:stop]
        # Hamming distance between 0/1 codes: |a| + |b| - 2 a.b (exact in float32 for any C < 2^24).
        ham = qpart.sum(dim=1, keepdim=True) + g_ones[None, :] - 2.0 * (qpart @ gc.t())
        ham_ranked = torch.gather(ham, 1, ranked_t[start:stop])
        for t in per_t:
            r = (ham <= t).sum(dim=1)
            if k < ham.shape[1] and bool((r > k).any()):
                e = int((r > k).nonzero()[0, 0])
                raise ValueError(
                    f"PMRP at t = {t} needs k >= R for every query: query {start + e} has R = {int(r[e])} "
                    f"plausible matches but indices has only k = {k} columns (retrieve with k >= "
                    f"{int(r.max())}, up to the whole gallery)")
            hits = torch.cumsum((ham_ranked <= t).to(torch.int64), dim=1)
            ok = r > 0
            rp = torch.full((stop - start,), float("nan"), dtype=torch.float64)
            if bool(ok.any()):
                rows = ok.nonzero().flatten()
                rp[rows] = 100.0 * hits[rows, r[rows] - 1].double() / r[rows].double()
            per_t[t][start:stop] = rp.numpy()
    result: Dict[str, Any] = {}
    for t, values in per_t.items():
        valid = values[~np.isnan(values)]
        result[f"PMRP@{t}"] = _mean(valid)
    result["PMRP"] = float(np.mean([result[f"PMRP@{t}"] for t in per_t]))
    result["n_queries"] = int(q)
    result["n_skipped"] = {t: int(np.isnan(v).sum()) for t, v in per_t.items()}
    if per_query:
        result["per_query"] = per_t
    return result


# --------------------------------------------------------------------------------------------
# COCO 1K: the 5-fold protocol
# --------------------------------------------------------------------------------------------


def contiguous_folds(n: int, n_folds: int = 5) -> np.ndarray:
    """``[n]`` int64 fold ids 0..n_folds-1 in contiguous blocks (COCO 5K -> 5 x 1K by order)."""
    _check_count("n", n)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 1:
        raise ValueError(f"n_folds must be an int >= 1, got {n_folds!r}")
    return (np.arange(n, dtype=np.int64) * n_folds) // max(n, 1)


def _fold_recalls(ranked: np.ndarray, truth: _Truth, gallery_fold: np.ndarray, fold: int,
                  ks: Sequence[int], full_gallery: bool, what: str) -> Dict[str, float]:
    """Recall@K over `truth`'s queries with the ranked lists restricted to gallery items of `fold`."""
    rows = ranked[truth.queries]
    in_fold = gallery_fold[rows] == fold
    rank_in_fold = np.cumsum(in_fold, axis=1) - 1          # position among the fold's items
    rel = _relevance(ranked, truth, ranked.shape[1]) & in_fold
    n_in_fold = in_fold.sum(axis=1)
    fold_size = int((gallery_fold == fold).sum())
    out = {}
    for K in ks:
        need = min(K, fold_size)
        if not full_gallery and len(n_in_fold) and n_in_fold.min() < need:
            e = int(np.argmin(n_in_fold))
            raise ValueError(
                f"{what} fold {fold}: query {int(truth.queries[e])} has only {int(n_in_fold[e])} items of the "
                f"fold among its k = {ranked.shape[1]} ranked items, but R@{K} needs {need}; retrieve with a "
                "larger k (the whole gallery always suffices)")
        hit = (rel & (rank_in_fold < K)).any(axis=1)
        out[f"R@{K}"] = _mean(100.0 * hit)
    return out


def n_fold_recalls(
    i2t_indices: ArrayLike,
    t2i_indices: ArrayLike,
    i2t_positives: Positives,
    t2i_positives: Positives,
    image_fold: ArrayLike,
    caption_fold: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
) -> Dict[str, Any]:
    """The COCO-1K protocol: Recall@K averaged over folds, each fold retrieving only within itself.

    COCO's 5K test images (25K captions) are cut into 5 folds of 1K images and their 5K captions;
    within fold f, an image query ranks only fold f's captions and a caption query only fold f's
    images; R@K is averaged over the queries of each fold and then over the folds. Here it is
    computed from rankings over the whole gallery by dropping other folds' items from each ranked
    list (the order of the remaining items is the fold's own ranking), as ECCV Caption's
    ``coco_1k_recalls`` does.

    Args:
        i2t_indices: ``[N_img, k]`` captions ranked for each image (a row per image).
        t2i_indices: ``[N_cap, k']`` images ranked for each caption.
        i2t_positives / t2i_positives: sparse ground truth (sequence or mapping). A query's fold is
            its own fold id.
        image_fold: ``[N_img]`` fold id per image; ``caption_fold``: ``[N_cap]`` fold id per caption
            (for COCO 1K: :func:`contiguous_folds` over the test order, or the eccv_caption ids).
        ks: the K of Recall@K.

    Each ranked row needs at least K items of its own fold (always true when rows hold the whole
    gallery). Returns ``{"i2t": {"R@1", ...}, "t2i": {...}, "RSUM": ..., "folds": [...]}``.
    """
    img_fold = np.asarray(image_fold, dtype=np.int64).reshape(-1)
    cap_fold = np.asarray(caption_fold, dtype=np.int64).reshape(-1)
    i2t = _as_indices(i2t_indices, len(cap_fold), "i2t_indices")
    t2i = _as_indices(t2i_indices, len(img_fold), "t2i_indices")
    if i2t.shape[0] != len(img_fold):
        raise ValueError(f"i2t_indices has {i2t.shape[0]} rows but image_fold has {len(img_fold)} images")
    if t2i.shape[0] != len(cap_fold):
        raise ValueError(f"t2i_indices has {t2i.shape[0]} rows but caption_fold has {len(cap_fold)} captions")
    ks = _check_ks(ks, None, None)  # per-fold sufficiency is checked in _fold_recalls
    i2t_truth = _as_truth(i2t_positives, i2t.shape[0], len(cap_fold), "i2t_positives")
    t2i_truth = _as_truth(t2i_positives, t2i.shape[0], len(img_fold), "t2i_positives")
    folds = sorted(set(img_fold.tolist()) | set(cap_fold.tolist()))
    per_fold = []
    for f in folds:
        res = {}
        for what, ranked, truth, q_fold, g_fold in (
            ("i2t", i2t, i2t_truth, img_fold, cap_fold),
            ("t2i", t2i, t2i_truth, cap_fold, img_fold),
        ):
            sel = q_fold[truth.queries] == f
            sub = _subset(truth, sel)
            if len(sub.queries) == 0:
                raise ValueError(f"{what}: fold {f} has no query with ground truth")
            res[what] = _fold_recalls(ranked, sub, g_fold, f, ks, ranked.shape[1] == len(g_fold), what)
        per_fold.append(res)
    out: Dict[str, Any] = {
        side: {f"R@{K}": float(np.mean([r[side][f"R@{K}"] for r in per_fold])) for K in ks}
        for side in ("i2t", "t2i")
    }
    if all(K in ks for K in (1, 5, 10)):
        out["RSUM"] = rsum(out["i2t"], out["t2i"])
    out["folds"] = per_fold
    return out


def _subset(truth: _Truth, keep: np.ndarray) -> _Truth:
    counts = truth.counts[keep]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    starts = truth.offsets[:-1][keep]
    items = np.concatenate([truth.items[s:s + c] for s, c in zip(starts, counts)]) if len(counts) else \
        np.zeros(0, dtype=np.int64)
    return _Truth(truth.queries[keep], offsets, items)


# --------------------------------------------------------------------------------------------
# Uncertainty analysis
# --------------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    avg = starts + (counts + 1) / 2.0
    return avg[inverse.reshape(-1)]


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation of two ``[n]`` arrays (ties get average ranks); NaN when
    either is constant. Same value as ``scipy.stats.spearmanr(x, y).statistic``."""
    xa = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"spearman: x and y must have the same length, got {xa.size} and {ya.size}")
    if xa.size < 2:
        raise ValueError(f"spearman needs at least 2 pairs, got {xa.size}")
    if np.isnan(xa).any() or np.isnan(ya).any():
        raise ValueError("spearman: x and y must not contain NaN")
    rx, ry = _ranks(xa), _ranks(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    den = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def uncertainty_analysis(uncertainty: ArrayLike, values: ArrayLike, n_bins: int = 10) -> Dict[str, Any]:
    """PCME's uncertainty plot: queries sorted by uncertainty into ``n_bins`` bins of (nearly)
    equal size, the mean metric per bin, and how it correlates with the bin's uncertainty level.

    Args:
        uncertainty: ``[Q]`` per-query uncertainty (e.g. :meth:`ProbEmbedding.uncertainty`).
        values: ``[Q]`` per-query metric (e.g. the ``per_query["R@1"]`` of
            :func:`retrieval_metrics`).
        n_bins: number of bins (10 in PCME / PCME++); ties in uncertainty are split by query
            order (a stable sort).

    Returns:
        ``{"bin_uncertainty": [n_bins] mean uncertainty per bin, "bin_value": [n_bins] mean
        value, "bin_count": [n_bins], "spearman": rank correlation of bin level (1..n_bins) with
        bin_value, "spearman_queries": rank correlation of uncertainty with value over queries}``.
    """
    u = np.asarray(uncertainty.detach().cpu() if isinstance(uncertainty, torch.Tensor) else uncertainty,
                   dtype=np.float64).reshape(-1)
    v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                   dtype=np.float64).reshape(-1)
    if u.shape != v.shape:
        raise ValueError(f"uncertainty has {u.size} entries but values has {v.size}; give one per query")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    if u.size < n_bins:
        raise ValueError(f"uncertainty_analysis needs at least n_bins = {n_bins} queries, got {u.size}")
    order = np.argsort(u, kind="stable")
    bins = np.array_split(order, n_bins)
    bin_u = np.array([u[b].mean() for b in bins])
    bin_v = np.array([v[b].mean() for b in bins])
    return {
        "bin_uncertainty": bin_u.tolist(),
        "bin_value": bin_v.tolist(),
        "bin_count": [int(len(b)) for b in bins],
        "spearman": spearman(np.arange(n_bins), bin_v),
        "spearman_queries": spearman(u, v),
    }


# --------------------------------------------------------------------------------------------
# ECCV Caption, CxC and COCO 1K / 5K in one call (the eccv-caption package's ground truth)
# --------------------------------------------------------------------------------------------

# The ground truths eccv-caption ships (data/<name>_image_to_caption.json, _caption_to_image.json)
# and the one it reads from a folder the user downloads (Plausible Matches, > 140 MB).
_ECCV_SHIPPED = ("original", "cxc", "eccv")
_ECCV_PM = "pm"


def _eccv_caption_data_dir() -> str:
    """The folder of the installed eccv-caption package's ground-truth files (not imported:
    its import warns when tqdm / ujson are missing)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("eccv_caption")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("eccv_caption_eval needs the eccv-caption package (pure Python, ships the COCO 5K "
                          "ids and the ECCV Caption / CxC positives): pip install eccv-caption==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _load_gt_pair(folder: str, name: str) -> Dict[str, Dict[int, List[int]]]:
    """``{"i2t": {image id: [caption ids]}, "t2i": {caption id: [image ids]}}`` in file order
    (the order the package averages in)."""
    import json
    import os

    out: Dict[str, Dict[int, List[int]]] = {}
    for side, stem in (("i2t", "image_to_caption"), ("t2i", "caption_to_image")):
        path = os.path.join(folder, f"{name}_{stem}.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"eccv_caption_eval: ground-truth file {path} not found")
        with open(path) as f:
            raw = json.load(f)
        out[side] = {int(k): [int(x) for x in v] for k, v in raw.items()}
    return out


def _ranked_ids(topk: Any, ids: np.ndarray, num_gallery: int, name: str) -> np.ndarray:
    """``[Q, k]`` gallery ids of a top-k index matrix (or a ``(values, indices)`` pair)."""
    if isinstance(topk, tuple) and len(topk) == 2:
        topk = topk[1]
    rows = _as_indices(topk, num_gallery, name)
    return ids[rows]


def _as_ids(ids: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(ids.detach().cpu() if isinstance(ids, torch.Tensor) else ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of int COCO ids, got shape {list(arr.shape)} "
                         f"and dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} repeats COCO id {int(uniq[counts > 1][0])}; every row needs its own id")
    return arr


class _Ranked:
    """Ranked gallery ids of one direction, looked up by query id."""

    def __init__(self, ranked_ids: np.ndarray, query_ids: np.ndarray, what: str) -> None:
        self.ids = ranked_ids
        self.what = what
        self._order = np.argsort(query_ids, kind="stable")
        self._sorted = query_ids[self._order]

    def rows(self, queries: np.ndarray, gt_name: str) -> np.ndarray:
        pos = np.searchsorted(self._sorted, queries)
        pos = np.minimum(pos, max(len(self._sorted) - 1, 0))
        found = self._sorted[pos] == queries if len(self._sorted) else np.zeros(len(queries), dtype=bool)
        if not found.all():
            missing = queries[~found]
            raise ValueError(
                f"eccv_caption_eval: {len(missing)} {self.what} queries of the {gt_name} ground truth have no "
                f"row (first: COCO id {int(missing[0])}); the rankings must cover every query it evaluates "
                "(all 5K test images and 25K captions)")
        return self._order[pos]


def _gt_relevance(ranked: np.ndarray, gt: Sequence[Sequence[int]]) -> np.ndarray:
    """``[Q, k]`` bool: whether ranked[q, r] is among gt[q] (both COCO ids)."""
    counts = np.fromiter((len(g) for g in gt), dtype=np.int64, count=len(gt))
    items = np.fromiter((x for g in gt for x in g), dtype=np.int64, count=int(counts.sum()))
    qid = np.repeat(np.arange(len(gt), dtype=np.int64), counts)
    span = int(max(ranked.max(initial=-1), items.max(initial=-1))) + 1
    keys = np.unique(qid * span + items)
    probe = np.arange(len(gt), dtype=np.int64)[:, None] * span + ranked
    if not len(keys):
        return np.zeros(probe.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return keys[pos] == probe


def _recall_values(rel: np.ndarray, K: int, what: str, gt_name: str) -> float:
    if K == 1 and rel.shape[1] == 0:
        raise ValueError(f"eccv_caption_eval: {gt_name} {what} R@1 needs at least one ranked item per query")
    # The mean of per-query 0/1 values: an integer count over Q, as np.mean of the package's list.
    return float(np.mean(rel[:, :K].any(axis=1).astype(np.int64)))


def _rprecision_values(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-query R-Precision as the package computes it: 1 - |top R - gt| / |top R|."""
    k = rel.shape[1]
    n = np.minimum(r, k)
    hits = np.cumsum(rel, axis=1, dtype=np.int64)[np.arange(len(r)), n - 1]
    return 1 - (n - hits) / n


COCO_NUM_CATEGORY_IDS = 90   # COCO's category ids run 1..90 (80 of them used)


def coco_category_codes(instances: Union[str, Mapping[str, Any]], image_ids: ArrayLike) -> np.ndarray:
    """``[N, 90]`` uint8 multi-hot codes: bit ``category_id - 1`` is set when the image has an
    instance of that category, from a COCO instances annotation (the dict of
    ``instances_val2014.json``, or its path; the user's file, nothing is downloaded). Rows follow
    ``image_ids``; an image without annotations gets an all-zero code. These are the label codes
    of :func:`pmrp` (PCME's PMRP) and of ECCV Caption's Plausible Matches."""
    if isinstance(instances, str):
        import json

        with open(instances) as f:
            instances = json.load(f)
    if not isinstance(instances, Mapping) or "annotations" not in instances:
        raise ValueError("instances must be a COCO instances annotation: a dict with an 'annotations' list")
    ids = _as_ids(image_ids, "image_ids")
    row = {int(i): r for r, i in enumerate(ids.tolist())}
    codes = np.zeros((len(ids), COCO_NUM_CATEGORY_IDS), dtype=np.uint8)
    for ann in instances["annotations"]:
        r = row.get(int(ann["image_id"]))
        if r is None:
            continue
        c = int(ann["category_id"])
        if not 1 <= c <= COCO_NUM_CATEGORY_IDS:
            raise ValueError(f"category_id {c} of image {int(ann['image_id'])} is outside COCO's 1..90")
        codes[r, c - 1] = 1
    return codes


def coco_plausible_matches(
    instances: Union[str, Mapping[str, Any]],
    image_to_captions: Mapping[int, Sequence[int]],
    threshold: int = 0,
    *,
    omit_original: bool = False,
) -> Tuple[Dict[int, List[int]], Dict[int, List[int]]]:
    """ECCV Caption's Plausible Match ground truth from COCO instance annotations:
    ``(i2t {image id: [caption ids]}, t2i {caption id: [image ids]})``.

    Two images match plausibly when the Hamming distance of their :func:`coco_category_codes` is
    at most ``threshold``. Only images of ``image_to_captions`` with at least one instance
    annotation take part (as in ECCV Caption's ``plausible_matching_func.py``). An image's
    positives are the captions of its plausible images; each of its captions gets those images.
    ``omit_original`` leaves the image itself out of its own plausible set; queries left with no
    positive are dropped (a metric over no positive is undefined). Pass the result to
    :func:`eccv_caption_eval` as ``pm_gt``, or write each dict with ``json.dump`` as
    ``pm_image_to_caption.json`` / ``pm_caption_to_image.json``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or threshold < 0:
        raise ValueError(f"threshold must be an int >= 0, got {threshold!r}")
    candidates = np.array(list(image_to_captions), dtype=np.int64)
    codes = coco_category_codes(instances, candidates)
    has = codes.any(axis=1)
    ids, codes = candidates[has], codes[has].astype(np.int64)
    ones = codes.sum(axis=1)
    ham = ones[:, None] + ones[None, :] - 2 * (codes @ codes.T)
    i2t: Dict[int, List[int]] = {}
    t2i: Dict[int, List[int]] = {}
    for r, iid in enumerate(ids.tolist()):
        pm = [int(j) for j in ids[ham[r] <= threshold].tolist() if not (omit_original and j == iid)]
        if not pm:
            continue
        i2t[iid] = sorted({int(c) for j in pm for c in image_to_captions[j]})
        for c in image_to_captions[iid]:
            t2i.setdefault(int(c), [])
            t2i[int(c)] = sorted(set(t2i[int(c)]) | set(pm))
    return i2t, t2i


def eccv_caption_ids() -> Tuple[np.ndarray, np.ndarray]:
    """``(image_ids [5000], caption_ids [25000])``: the COCO 5K test ids the eccv-caption package
    ships, captions in its ``coco_test_ids.npy`` order (the order its COCO 1K folds cut) and images
    in the order their first caption appears there. Use them when features are stored in another
    order only to map rows to ids; :func:`eccv_caption_eval` takes any order."""
    folder = _eccv_caption_data_dir()
    caption_ids = np.load(f"{folder}/coco_test_ids.npy").astype(np.int64)
    t2i = _load_gt_pair(folder, "original")["t2i"]
    image_ids = np.array(list(dict.fromkeys(t2i[int(c)][0] for c in caption_ids)), dtype=np.int64)
    return image_ids, caption_ids


def eccv_caption_eval(
    i2t_topk: Any,
    t2i_topk: Any,
    image_ids: ArrayLike,
    caption_ids: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    pm_dir: Optional[str] = None,
    pm_gt: Optional[Tuple[Mapping[int, Sequence[int]], Mapping[int, Sequence[int]]]] = None,
) -> Dict[str, Dict[str, float]]:
    """Every COCO-test retrieval metric of the eccv-caption package, from top-k index matrices.

    Maps the rows and entries of ``i2t_topk`` / ``t2i_topk`` to COCO ids and evaluates them on each
    ground truth the package supports: COCO's original captions (5K and the 5-fold 1K), CxC, ECCV
    Caption, and Plausible Matches when ``pm_dir`` holds its files. The numbers **equal**
    ``eccv_caption.Metrics().compute_all_metrics`` on the same rankings (the same per-query values
    averaged in the same order; tests/test_eccv_caption_eval.py checks the dicts for equality), so
    they are **fractions** in [0, 1] like the package's, not the percentages of the rest of this
    module.

    Args:
        i2t_topk: ``[N_img, k]`` caption rows ranked for each image (row i is the image
            ``image_ids[i]``), as :func:`pcmekit.topk` returns them (its ``(values, indices)``
            pair is accepted too).
        t2i_topk: ``[N_cap, k']`` image rows ranked for each caption (row j is ``caption_ids[j]``).
        image_ids: ``[N_img]`` COCO image ids, distinct.
        caption_ids: ``[N_cap]`` COCO caption ids, distinct. Two ECCV Caption positives (caption
            ids 144675 and 467259) are not among the 25K test captions; without them in the gallery
            they count as positives that are never retrieved, exactly as in the package.
        ks: the K of every R@K.
        pm_dir: a folder with ``pm_image_to_caption.json`` and ``pm_caption_to_image.json`` (ECCV
            Caption's Plausible Match ground truth, downloaded separately); adds ``"pmrp"``.
        pm_gt: instead of ``pm_dir``, the Plausible Match ground truth as ``(i2t, t2i)`` dicts
            ``{image id: [caption ids]}``, ``{caption id: [image ids]}`` (as
            :func:`coco_plausible_matches` builds them); queries are averaged in dict order, the
            order the package reads its files in.

    Returns:
        ``{name: {"i2t": value, "t2i": value}}`` with names ``coco_1k_r{K}``, ``coco_5k_r{K}``,
        ``cxc_r{K}``, ``eccv_r{K}`` for each K, ``eccv_map_at_r``, ``eccv_rprecision`` and, with
        ``pm_dir``, ``pmrp``. ``compute_all_metrics`` gives each of them (``eccv_r5`` / ``eccv_r10``
        only when asked for ``eccv_recalls`` without ``eccv_map_at_r``; ``pmrp`` as its top-level
        ``"i2t"`` / ``"t2i"`` keys).

    The package's own rules hold on short lists: R@K scores a list shorter than K over what it
    has, COCO 1K drops other folds' items before taking the top K (R@1 needs one item of the
    query's fold), and R-Precision divides by ``min(R, k)``. mAP@R needs k >= R for every ECCV
    query (at most 48 for i2t, 19 for t2i): a ValueError says which. Every query of a ground truth
    needs a row.
    """
    img = _as_ids(image_ids, "image_ids")
    cap = _as_ids(caption_ids, "caption_ids")
    ks = _check_ks(ks, None, None)
    i2t = _Ranked(_ranked_ids(i2t_topk, cap, len(cap), "i2t_topk"), img, "image")
    t2i = _Ranked(_ranked_ids(t2i_topk, img, len(img), "t2i_topk"), cap, "caption")
    if i2t.ids.shape[0] != len(img):
        raise ValueError(f"i2t_topk has {i2t.ids.shape[0]} rows but image_ids has {len(img)} ids; one row per image")
    if t2i.ids.shape[0] != len(cap):
        raise ValueError(f"t2i_topk has {t2i.ids.shape[0]} rows but caption_ids has {len(cap)} ids; one row per caption")
    folder = _eccv_caption_data_dir()
    gts = {name: _load_gt_pair(folder, name) for name in _ECCV_SHIPPED}
    if pm_dir is not None and pm_gt is not None:
        raise ValueError("eccv_caption_eval: give pm_dir or pm_gt, not both")
    if pm_dir is not None:
        gts[_ECCV_PM] = _load_gt_pair(pm_dir, _ECCV_PM)
    elif pm_gt is not None:
        if not (isinstance(pm_gt, tuple) and len(pm_gt) == 2 and all(isinstance(g, Mapping) for g in pm_gt)):
            raise TypeError("eccv_caption_eval: pm_gt must be a pair of dicts (i2t, t2i)")
        gts[_ECCV_PM] = {side: {int(q): [int(x) for x in v] for q, v in g.items()}
                         for side, g in zip(("i2t", "t2i"), pm_gt)}
    sides = (("i2t", i2t), ("t2i", t2i))
    out: Dict[str, Dict[str, float]] = {}

    def per_gt(name: str, label: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        res = {}
        for side, ranked in sides:
            gt = gts[name][side]
            queries = np.fromiter(gt.keys(), dtype=np.int64, count=len(gt))
            ids = ranked.ids[ranked.rows(queries, label)]
            lists = [sorted(set(v)) for v in gt.values()]
            res[side] = (_gt_relevance(ids, lists), np.array([len(v) for v in lists], dtype=np.int64))
        return res

    # COCO 1K: fold f holds the captions coco_ids[f * N/5 : (f + 1) * N/5] in the package's test
    # order and the images of those captions (their first ground-truth image).
    coco_ids = np.load(f"{folder}/coco_test_ids.npy").astype(np.int64)
    coco = gts["original"]
    n_fold = len(coco_ids) // 5
    fold_recalls: Dict[str, Dict[int, List[float]]] = {"i2t": {K: [] for K in ks}, "t2i": {K: [] for K in ks}}
    for f in range(5):
        fold_caps = coco_ids[f * n_fold:(f + 1) * n_fold]
        fold_imgs = list(dict.fromkeys(coco["t2i"][int(c)][0] for c in fold_caps))
        for side, ranked, queries, members in (("i2t", i2t, np.array(fold_imgs, dtype=np.int64), fold_caps),
                                               ("t2i", t2i, fold_caps, np.array(fold_imgs, dtype=np.int64))):
            ids = ranked.ids[ranked.rows(queries, "COCO 1K")]
            in_fold = np.isin(ids, members)
            rank = np.cumsum(in_fold, axis=1) - 1
            rel = _gt_relevance(ids, [coco[side][int(q)] for q in queries]) & in_fold
            for K in ks:
                if K == 1 and not in_fold.any(axis=1).all():
                    q = int(queries[int(np.argmin(in_fold.any(axis=1)))])
                    raise ValueError(f"eccv_caption_eval: COCO 1K {side} query {q} has no item of its fold "
                                     "among its ranked items; R@1 needs one (retrieve with a larger k)")
                hit = (rel & (rank < K)).any(axis=1).astype(np.int64)
                fold_recalls[side][K].append(float(np.mean(hit)))
    for K in ks:
        out[f"coco_1k_r{K}"] = {side: float(np.mean(fold_recalls[side][K])) for side in ("i2t", "t2i")}

    for name, key in (("original", "coco_5k"), ("cxc", "cxc"), ("eccv", "eccv")):
        rels = per_gt(name, key)
        for K in ks:
            out[f"{key}_r{K}"] = {side: _recall_values(rels[side][0], K, side, key) for side in rels}
        if name == "eccv":
            maps: Dict[str, float] = {}
            rps: Dict[str, float] = {}
            for side, (rel, r) in rels.items():
                if len(r) and r.max() > rel.shape[1]:
                    e = int(np.argmax(r > rel.shape[1]))
                    raise ValueError(
                        f"eccv_caption_eval: ECCV Caption mAP@R needs k >= R for every query: {side} query "
                        f"{e} (in the ground truth's order) has R = {int(r[e])} but the rankings have k = "
                        f"{rel.shape[1]} (retrieve with k >= {int(r.max())})")
                hits = np.cumsum(rel, axis=1, dtype=np.int64)
                ranks = np.arange(1, rel.shape[1] + 1, dtype=np.int64)
                prec = np.where(rel, 1 - (ranks - hits) / ranks, 0.0)
                # One np.mean per query over its R values, as the package averages them.
                maps[side] = float(np.mean([np.mean(prec[q, :r[q]]) for q in range(len(r))]))
                rps[side] = float(np.mean(_rprecision_values(rel, r)))
            out["eccv_map_at_r"] = maps
            out["eccv_rprecision"] = rps
    if _ECCV_PM in gts:
        rels = per_gt(_ECCV_PM, "Plausible Match")
        out["pmrp"] = {side: float(np.mean(_rprecision_values(rel, r))) for side, (rel, r) in rels.items()}
    return out
