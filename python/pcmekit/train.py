"""Training and evaluation of image-caption models: ``fit``, ``evaluate``, checkpoints.

* :func:`fit` trains a :class:`~pcmekit.models.ProbVLModel` with AdamP and one of the losses
  (PCME++, PCME, InfoNCE), saving checkpoints atomically after every epoch and resuming from one.
* :func:`evaluate` encodes a split, ranks each gallery with top-k retrieval and computes the
  ECCV Caption metrics against the original and the plausible ground truth, PMRP, and the
  uncertainty analysis.
* :func:`save_checkpoint` / :func:`load_checkpoint`.
* :func:`fit_adapters` / :func:`evaluate_features` -- probabilistic adapters on frozen,
  pre-extracted features (:mod:`pcmekit.data.features`; docs/design.md, "Frozen-feature adapters"),
  through the same :func:`fit`.

Training data is any object with ``images [N, ...]``, ``tokens [M, L]``, ``lengths [M]`` and
``caption_image [M]`` (the image each caption was written for), like
:class:`pcmekit.data.digits.DigitsSplit`. An epoch visits every image once in a seeded random
order, each with one of its captions drawn at random (COCO-style); the match matrix of a batch is
the identity (the one-to-one annotation), as in PCME++'s training.

Determinism: the order, the caption choice and PCME's Monte-Carlo noise of epoch e come from
generators seeded with ``(seed, e)``, so a run resumed from a checkpoint takes the same steps as
one that was not interrupted.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import metrics as M
from ._io import atomic_write
from ._progress import Progress
from .embedding import ProbEmbedding
from .losses import InfoNCELoss, PCMELoss, PCMEPPLoss
from .optim import AdamP

__all__ = ["FitResult", "LOSSES", "coco_test_status", "encode_split", "evaluate", "evaluate_features", "fit",
           "fit_adapters", "load_checkpoint", "random_baseline", "save_checkpoint"]

LOSSES: Dict[str, Callable[..., nn.Module]] = {"pcmepp": PCMEPPLoss, "pcme": PCMELoss, "infonce": InfoNCELoss}

#: How each loss's model ranks a gallery by default: PCME++ by its closed-form sampled distance,
#: PCME by its Monte-Carlo match probability, InfoNCE by the cosine of the means (l2 on unit means).
DEFAULT_METRIC = {"pcmepp": "csd", "pcme": "match_prob", "infonce": "l2"}

CHECKPOINT_FORMAT = "pcmekit.train/1"


# --------------------------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------------------------


#: The package's progress bar (``pcmekit._progress``), under the name this module always used.
_Progress = Progress


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> None:
    """Writes ``state`` with torch.save to a temporary file next to ``path`` and renames it over
    ``path`` (``os.replace``, atomic on POSIX and Windows): a crash leaves the old checkpoint or
    the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))


def _read_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a pcmekit training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _make_loss(name: str, kwargs: Optional[Dict[str, Any]]) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name](**(kwargs or {}))


def load_checkpoint(path: Union[str, Path]) -> Tuple[nn.Module, nn.Module, Dict[str, Any]]:
    """``(model, loss module, state)`` from a checkpoint written by :func:`fit`; the model is
    rebuilt from the config stored with it and put in eval mode."""
    from .models import build_model

    state = _read_checkpoint(path)
    model = build_model(state["model_config"])
    model.load_state_dict(state["model"])
    criterion = _make_loss(state["loss"], state.get("loss_kwargs"))
    criterion.load_state_dict(state["criterion"])
    model.eval()
    return model, criterion, state


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the trained model and loss module, per-epoch ``history`` (dicts
    with ``epoch``, ``loss``, the loss's parts, ``seconds``), and the number of optimizer steps."""

    model: nn.Module
    criterion: nn.Module
    history: List[Dict[str, float]]
    steps: int


def _check_data(data: Any, name: str = "data") -> None:
    for attr in ("images", "tokens", "lengths", "caption_image"):
        if not hasattr(data, attr):
            raise TypeError(f"{name} must have images, tokens, lengths and caption_image (like "
                            f"pcmekit.data.digits.DigitsSplit); {type(data).__name__} has no {attr!r}")
    n, m = data.images.shape[0], data.tokens.shape[0]
    if data.lengths.shape != (m,) or data.caption_image.shape != (m,):
        raise ValueError(f"{name}: lengths and caption_image must have shape [{m}] (one per caption), got "
                         f"{list(data.lengths.shape)} and {list(data.caption_image.shape)}")
    if m and (int(data.caption_image.min()) < 0 or int(data.caption_image.max()) >= n):
        raise ValueError(f"{name}: caption_image must index the {n} images")
    counts = torch.bincount(data.caption_image, minlength=n)
    if n == 0 or bool((counts == 0).any()):
        raise ValueError(f"{name}: every image needs at least one caption "
                         f"({int((counts == 0).sum())} of {n} have none)")


def _epoch_batches(data: Any, batch_size: int, seed: int, epoch: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Pairs (image rows, caption rows) of every batch of an epoch: a seeded shuffle of the images,
    each with one of its captions drawn at random. A last batch of a single image is dropped (a
    contrastive batch needs two)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = data.images.shape[0]
    order = torch.argsort(data.caption_image, stable=True)       # captions grouped by image
    counts = torch.bincount(data.caption_image, minlength=n)
    offsets = torch.cumsum(counts, 0) - counts
    perm = torch.randperm(n, generator=g)
    pick = (torch.rand(n, generator=g) * counts[perm]).long().clamp(max=counts[perm] - 1)
    captions = order[offsets[perm] + pick]
    out = []
    for start in range(0, n, batch_size):
        img, cap = perm[start:start + batch_size], captions[start:start + batch_size]
        if len(img) >= 2:
            out.append((img, cap))
    return out


def fit(
    model: nn.Module,
    data: Any,
    *,
    loss: str = "pcmepp",
    loss_kwargs: Optional[Dict[str, Any]] = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    grad_clip: Optional[float] = 2.0,
    seed: int = 0,
    checkpoint: Optional[Union[str, Path]] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> FitResult:
    """Trains ``model`` on ``data`` (see the module docstring) for ``epochs`` epochs.

    Args:
        model: a :class:`~pcmekit.models.ProbVLModel` (``model(images, tokens, lengths)`` returns
            two ProbEmbeddings).
        data: the training split.
        loss: "pcmepp" (:class:`~pcmekit.losses.PCMEPPLoss`), "pcme" (:class:`~pcmekit.losses.PCMELoss`)
            or "infonce" (:class:`~pcmekit.losses.InfoNCELoss`); ``loss_kwargs`` go to its constructor.
            The loss's own parameters (scale/shift, temperature) are trained with the model.
        epochs: total epochs (a resumed run continues up to this number).
        batch_size: images (and captions) per step.
        lr, weight_decay: AdamP's (:class:`pcmekit.optim.AdamP`); PCME++ uses 5e-4 / 1e-4 on COCO.
        grad_clip: clip the global gradient norm (PCME++: 2); None to disable.
        seed: seeds the batch order, caption choice and Monte-Carlo noise (not the model's
            initialisation: build the model with a seed for that).
        checkpoint: file to save after every epoch (atomically). With ``resume=True`` and an
            existing file, training continues from it (its loss must match).
        progress: show a progress bar on stderr (default: when stderr is a terminal).
        log: called with one line per epoch (e.g. ``print``).
        extra: saved in the checkpoint under ``"extra"`` (e.g. how to rebuild the data).

    Returns:
        :class:`FitResult`.
    """
    _check_data(data)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 2):
            raise ValueError(f"{name} must be an int >= {0 if name == 'epochs' else 2}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    criterion = _make_loss(loss, loss_kwargs)
    params = list(model.parameters()) + list(criterion.parameters())
    optimizer = AdamP(params, lr=lr, weight_decay=weight_decay)
    history: List[Dict[str, float]] = []
    start_epoch, steps = 0, 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = _read_checkpoint(checkpoint)
        if state["loss"] != loss:
            raise ValueError(f"checkpoint {str(checkpoint)!r} was trained with loss {state['loss']!r}, not {loss!r}")
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, steps, history = int(state["epoch"]), int(state["steps"]), list(state["history"])
        if log:
            log(f"resumed from {checkpoint} at epoch {start_epoch}")

    device = next(model.parameters()).device
    for epoch in range(start_epoch, epochs):
        model.train()
        batches = _epoch_batches(data, batch_size, seed, epoch)
        noise = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
        bar = _Progress(len(batches), f"{loss} epoch {epoch + 1}/{epochs}", progress)
        sums: Dict[str, float] = {}
        t0 = time.perf_counter()
        for img_rows, cap_rows in batches:
            images = data.images[img_rows].to(device)
            tokens = data.tokens[cap_rows].to(device)
            lengths = data.lengths[cap_rows].to(device)
            img, txt = model(images, tokens, lengths)
            if loss == "pcme":
                value, parts = criterion(img, txt, generator=noise)
            else:
                value, parts = criterion(img, txt)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            steps += 1
            v = float(value.detach())
            if not math.isfinite(v):
                raise FloatingPointError(f"{loss} loss became {v} at epoch {epoch + 1}, step {steps}")
            sums["loss"] = sums.get("loss", 0.0) + v
            for key in ("bce", "pp", "vib", "scale", "shift", "i2t", "t2i", "temperature"):
                if key in parts:
                    sums[key] = sums.get(key, 0.0) + float(parts[key])
            bar.update(1, f"loss {v:.4f}")
        bar.close()
        record = {k: s / max(len(batches), 1) for k, s in sums.items()}
        record.update(epoch=float(epoch + 1), seconds=time.perf_counter() - t0)
        history.append(record)
        if log:
            log(f"{loss} epoch {epoch + 1}/{epochs}: loss {record.get('loss', float('nan')):.4f} "
                f"({record['seconds']:.1f} s)")
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "format": CHECKPOINT_FORMAT,
                "model_config": getattr(model, "config", None),
                "model": model.state_dict(),
                "loss": loss,
                "loss_kwargs": dict(loss_kwargs or {}),
                "criterion": criterion.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "steps": steps,
                "history": history,
                "fit": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                        "grad_clip": grad_clip, "seed": seed},
                "extra": dict(extra or {}),
            })
    model.eval()
    return FitResult(model, criterion, history, steps)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _retrieve(query: ProbEmbedding, gallery: ProbEmbedding, k: int, metric: str,
              **match_kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """The one place evaluation ranks a gallery: ``(values [Q, k], indices [Q, k] int64)``, ties
    to the lower index; distances ascending, match probabilities descending (the fused top-k)."""
    from .retrieval import topk

    values, indices = topk(query.mean, query.logvar, gallery.mean, gallery.logvar, k, metric, **match_kwargs)
    return torch.as_tensor(values), torch.as_tensor(indices)


def _metrics_of_rankings(split: Any, i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int],
                         pmrp_thresholds: Sequence[int]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    n_img, n_cap = i2t.shape[0], t2i.shape[0]
    out: Dict[str, Any] = {}
    per_query: Dict[str, Dict[str, Any]] = {}
    for gt in ("original", "plausible"):
        res_i = M.retrieval_metrics(i2t, getattr(split, f"{gt}_i2t")(), ks=ks, num_gallery=n_cap, per_query=True)
        res_t = M.retrieval_metrics(t2i, getattr(split, f"{gt}_t2i")(), ks=ks, num_gallery=n_img, per_query=True)
        per_query[gt] = {"i2t": res_i.pop("per_query"), "t2i": res_t.pop("per_query")}
        res_i.pop("queries")
        res_t.pop("queries")
        entry: Dict[str, Any] = {"i2t": res_i, "t2i": res_t}
        if all(K in ks for K in (1, 5, 10)):
            entry["RSUM"] = M.rsum(res_i, res_t)
        out[gt] = entry
    if hasattr(split, "image_codes") and hasattr(split, "caption_codes"):
        out["pmrp"] = {"i2t": M.pmrp(i2t, split.image_codes, split.caption_codes, pmrp_thresholds),
                       "t2i": M.pmrp(t2i, split.caption_codes, split.image_codes, pmrp_thresholds)}
    return out, per_query


def random_baseline(split: Any, *, seed: int = 0, ks: Sequence[int] = (1, 5, 10),
                    pmrp_thresholds: Sequence[int] = (0, 1, 2)) -> Dict[str, Any]:
    """The metrics of :func:`evaluate` for uniformly random rankings (one seeded permutation of the
    gallery per query): what a model has to beat. With many plausible matches it is far from 0."""
    g = torch.Generator().manual_seed(seed)
    n_img, n_cap = split.images.shape[0], split.tokens.shape[0]
    i2t = torch.argsort(torch.rand(n_img, n_cap, generator=g), dim=1)
    t2i = torch.argsort(torch.rand(n_cap, n_img, generator=g), dim=1)
    out, _ = _metrics_of_rankings(split, i2t, t2i, ks, pmrp_thresholds)
    out.update(metric="random", num_images=n_img, num_captions=n_cap)
    return out


@torch.no_grad()
def encode_split(model: Any, split: Any, batch_size: int = 1024) -> Tuple[ProbEmbedding, ProbEmbedding]:
    """``(images, captions)`` ProbEmbeddings of a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    imgs = [model.encode_image(split.images[s:s + batch_size].to(device))
            for s in range(0, split.images.shape[0], batch_size)]
    txts = [model.encode_text(split.tokens[s:s + batch_size].to(device), split.lengths[s:s + batch_size].to(device))
            for s in range(0, split.tokens.shape[0], batch_size)]
    model.train(was_training)
    return ProbEmbedding.cat(imgs).detach(), ProbEmbedding.cat(txts).detach()


def _ranked(q: ProbEmbedding, g: ProbEmbedding, metric: str, criterion: Optional[nn.Module],
            num_samples: int, seed: int) -> torch.Tensor:
    kwargs: Dict[str, Any] = {}
    if metric == "match_prob":
        if criterion is None or not hasattr(criterion, "scale"):
            raise ValueError("metric='match_prob' needs the PCME loss module (its scale and shift)")
        gen = torch.Generator().manual_seed(seed)
        loss_module: Any = criterion
        kwargs = dict(scale=float(loss_module.scale.detach()), shift=float(loss_module.shift.detach()),
                      eps_q=torch.randn(len(q), num_samples, q.dim, generator=gen, dtype=q.dtype),
                      eps_g=torch.randn(len(g), num_samples, g.dim, generator=gen, dtype=g.dtype))
    _, indices = _retrieve(q, g, len(g), metric, **kwargs)
    return indices


def evaluate(
    model: nn.Module,
    split: Any,
    *,
    metric: str = "csd",
    criterion: Optional[nn.Module] = None,
    ks: Sequence[int] = (1, 5, 10),
    pmrp_thresholds: Sequence[int] = (0, 1, 2),
    n_bins: int = 10,
    num_samples: int = 7,
    seed: int = 0,
    uncertainty: bool = True,
) -> Dict[str, Any]:
    """Retrieval metrics of ``model`` on ``split`` (a :class:`~pcmekit.data.digits.DigitsSplit` or
    anything with its ground-truth methods), both directions, whole gallery ranked.

    Args:
        metric: how to rank: a distance of :func:`pcmekit.pairwise_distance` ("csd", "l2", ...)
            or "match_prob" (needs ``criterion``, the PCME loss, for scale and shift; its noise is
            drawn from ``seed`` with ``num_samples`` samples).
        ks: the K of Recall@K.
        pmrp_thresholds: Hamming distances t of PMRP (needs ``image_codes``/``caption_codes``).
        n_bins: bins of the uncertainty analysis.
        uncertainty: include the uncertainty analysis (meaningless for a model whose variance
            head was not trained, e.g. with InfoNCE).

    Returns a dict: ``"original"`` and ``"plausible"`` -> ``{"i2t": {...}, "t2i": {...}, "RSUM"}``
    (R@K, R-P, mAP@R in percent; see :mod:`pcmekit.metrics`), ``"pmrp"`` -> ``{"i2t", "t2i"}``,
    and ``"uncertainty"`` (caption uncertainty vs number of plausible images, Spearman; R@1 per
    uncertainty bin for caption and image queries).
    """
    img, txt = encode_split(model, split)
    i2t = _ranked(img, txt, metric, criterion, num_samples, seed)
    t2i = _ranked(txt, img, metric, criterion, num_samples, seed + 1)
    n_img, n_cap = len(img), len(txt)
    out, per_query = _metrics_of_rankings(split, i2t, t2i, ks, pmrp_thresholds)
    out.update(metric=metric, num_images=n_img, num_captions=n_cap)
    if uncertainty:
        cap_u = txt.uncertainty().double()
        img_u = img.uncertainty().double()
        n_plausible = split.num_plausible_images().double() if hasattr(split, "num_plausible_images") else None
        unc: Dict[str, Any] = {
            "caption_uncertainty": cap_u.tolist(),
            "image_uncertainty": img_u.tolist(),
        }
        if n_plausible is not None:
            unc["num_plausible_images"] = n_plausible.long().tolist()
            unc["spearman_caption_uncertainty_vs_plausible_images"] = M.spearman(cap_u, n_plausible)
            # Identical captions have identical embeddings: also over distinct texts, once each.
            texts = getattr(split, "captions", None)
            if texts is not None:
                first: Dict[str, int] = {}
                for j, t in enumerate(texts):
                    first.setdefault(t, j)
                rows = torch.tensor(sorted(first.values()))
                unc["spearman_distinct_captions"] = M.spearman(cap_u[rows], n_plausible[rows])
                unc["num_distinct_captions"] = int(len(rows))
        for gt in ("original", "plausible"):
            unc[f"t2i_bins_{gt}"] = M.uncertainty_analysis(cap_u, per_query[gt]["t2i"]["R@1"], n_bins)
            unc[f"i2t_bins_{gt}"] = M.uncertainty_analysis(img_u, per_query[gt]["i2t"]["R@1"], n_bins)
        out["uncertainty"] = unc
    return out


# --------------------------------------------------------------------------------------------
# Frozen features: probabilistic adapters (docs/design.md, "Frozen-feature adapters")
# --------------------------------------------------------------------------------------------


def _coco_test_ids() -> Tuple[np.ndarray, np.ndarray, Dict[int, List[int]]]:
    """The eccv-caption package's COCO 5K test ``(image ids, caption ids, caption id -> [image id])``."""
    image_ids, caption_ids = M.eccv_caption_ids()
    t2i = M._load_gt_pair(M._eccv_caption_data_dir(), "original")["t2i"]
    return image_ids, caption_ids, t2i


def coco_test_status(split: Any) -> Tuple[bool, str]:
    """Whether :func:`evaluate_features` can score ``split`` with :func:`pcmekit.metrics.eccv_caption_eval`:
    ``(True, note)`` when its ids are exactly the COCO 5K test set the eccv-caption package ships
    (all 5 000 images and 25 000 captions, each caption paired with its COCO image), else
    ``(False, why not)``.

    Raises ValueError when the ids are COCO test ids but a pair joins a caption to an image COCO
    does not give it: the ECCV Caption metrics would then score against other matches than the
    pairs say (docs/design.md, "Frozen-feature adapters")."""
    image_ids, caption_ids = getattr(split, "image_ids", None), getattr(split, "caption_ids", None)
    if image_ids is None or caption_ids is None:
        missing = " and ".join(n for n, v in (("image_ids", image_ids), ("caption_ids", caption_ids)) if v is None)
        return False, f"pairs.json gives no {missing}"
    try:
        coco_img, coco_cap, coco_t2i = _coco_test_ids()
    except ImportError:
        return False, "the eccv-caption package is not installed (pip install eccv-caption==0.1.0)"
    img_known = np.isin(image_ids, coco_img)
    cap_known = np.isin(caption_ids, coco_cap)
    if not img_known.any() and not cap_known.any():
        return False, "the test ids are not COCO 5K test ids"
    for t, pos in enumerate(split.positives_t2i):
        cid = int(caption_ids[t])
        if cid not in coco_t2i:
            continue
        for i in pos:
            iid = int(image_ids[i])
            if iid not in coco_t2i[cid]:
                raise ValueError(
                    f"pairs.json pairs COCO caption id {cid} (text row {int(split.text_rows[t])}) with image id {iid} "
                    f"(image row {int(split.image_rows[i])}), but COCO's annotation gives that caption to image "
                    f"{coco_t2i[cid][0]}: the image_ids / caption_ids do not match the rows of the features")
    if not (img_known.all() and cap_known.all()):
        return False, (f"{int(img_known.sum())} of the {len(image_ids)} test images and {int(cap_known.sum())} of the "
                       f"{len(caption_ids)} test captions are COCO 5K test ids; ECCV Caption needs the test split to be "
                       "exactly that set")
    if len(image_ids) != len(coco_img) or len(caption_ids) != len(coco_cap):
        return False, (f"the test split has {len(image_ids)} of the {len(coco_img)} COCO 5K test images and "
                       f"{len(caption_ids)} of its {len(coco_cap)} captions; ECCV Caption evaluates all of them")
    return True, "test split = the COCO 5K test set: ECCV Caption, CxC and COCO 1K/5K metrics (eccv-caption)"


def fit_adapters(
    features: Any,
    *,
    embed_dim: Optional[int] = None,
    hidden: int = 512,
    normalize_input: bool = True,
    loss: str = "pcmepp",
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    checkpoint: Optional[Union[str, Path]] = None,
    resume: bool = False,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
) -> FitResult:
    """Trains probabilistic adapters on frozen features (the ProbVLM pattern; docs/design.md,
    "Frozen-feature adapters"): :func:`pcmekit.models.build_adapter_model` on
    ``features.train``, through :func:`fit` (same loss, optimiser, checkpoints and resume).

    Args:
        features: a :class:`pcmekit.data.features.FeaturePairs` (:func:`~pcmekit.data.features.load_feature_pairs`).
        embed_dim: D of the embeddings; default the features' size when image and text features
            have the same size (an untrained adapter then returns the frozen features), else 256.
        hidden: width of each adapter's MLPs. normalize_input: L2-normalise the frozen features.
        loss, epochs, batch_size, lr, weight_decay, seed, checkpoint, resume, progress, log:
            as :func:`fit`; ``seed`` also seeds the adapters' initialisation.

    Returns:
        :class:`FitResult`; evaluate it with :func:`evaluate_features` on ``features.test``.
    """
    from .models import build_adapter_model

    for name in ("train", "test", "image_dim", "text_dim"):
        if not hasattr(features, name):
            raise TypeError(f"features must be a pcmekit.data.features.FeaturePairs (load_feature_pairs); "
                            f"{type(features).__name__} has no {name!r}")
    if embed_dim is None:
        embed_dim = features.image_dim if features.image_dim == features.text_dim else 256
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
    coco_test_status(features.test)  # a pairs / ids mismatch fails before training, not after
    model = build_adapter_model(features.image_dim, features.text_dim, embed_dim, hidden=hidden,
                                normalize_input=normalize_input, seed=seed)
    return fit(model, features.train, loss=loss, epochs=epochs, batch_size=batch_size, lr=lr,
               weight_decay=weight_decay, seed=seed, checkpoint=checkpoint, resume=resume, progress=progress,
               log=log, extra={"dataset": "features", "image_dim": features.image_dim,
                               "text_dim": features.text_dim, **getattr(features, "source", {})})


def _ranked_topk(q: ProbEmbedding, g: ProbEmbedding, k: int, metric: str, criterion: Optional[nn.Module],
                 num_samples: int, seed: int, bar: Any, chunk: int) -> torch.Tensor:
    """``[Q, k]`` gallery rows per query by ``metric``, queries in chunks (the bar advances per chunk)."""
    kwargs: Dict[str, Any] = {}
    eps_q = None
    if metric == "match_prob":
        if criterion is None or not hasattr(criterion, "scale"):
            raise ValueError("metric='match_prob' needs the PCME loss module (its scale and shift)")
        gen = torch.Generator().manual_seed(seed)
        loss_module: Any = criterion
        eps_q = torch.randn(len(q), num_samples, q.dim, generator=gen, dtype=q.dtype)
        kwargs = dict(scale=float(loss_module.scale.detach()), shift=float(loss_module.shift.detach()),
                      eps_g=torch.randn(len(g), num_samples, g.dim, generator=gen, dtype=g.dtype))
    parts = []
    for start in range(0, len(q), chunk):
        stop = min(start + chunk, len(q))
        if eps_q is not None:
            kwargs["eps_q"] = eps_q[start:stop]
        parts.append(_retrieve(q[start:stop], g, k, metric, **kwargs)[1])
        bar.update(stop - start)
    return torch.cat(parts) if parts else torch.zeros(0, k, dtype=torch.int64)


@torch.no_grad()
def evaluate_features(
    model: nn.Module,
    split: Any,
    *,
    metric: str = "csd",
    criterion: Optional[nn.Module] = None,
    ks: Sequence[int] = (1, 5, 10),
    k: Optional[int] = None,
    eccv: Union[bool, str] = "auto",
    n_bins: int = 10,
    num_samples: int = 7,
    seed: int = 0,
    progress: Optional[bool] = None,
    chunk: int = 1024,
) -> Dict[str, Any]:
    """Retrieval metrics of adapters (or any model with ``encode_image`` / ``encode_text`` on
    features) on a :class:`pcmekit.data.features.FeatureSplit`: the pairs are the ground truth.

    Each direction ranks its gallery with :func:`pcmekit.topk` and keeps the best ``k`` per query
    (default: the larger of 100, max(ks) and the most positives of any query, at most the gallery;
    100 covers ECCV Caption's largest R, 48).

    Args:
        metric, criterion, num_samples, seed: how to rank, as :func:`evaluate`.
        ks: the K of Recall@K.
        eccv: "auto" adds :func:`pcmekit.metrics.eccv_caption_eval`'s numbers when the split is the
            COCO 5K test set (:func:`coco_test_status`); True requires it (ValueError otherwise);
            False never.
        n_bins: bins of the uncertainty analysis (skipped when a direction has fewer queries).
        progress: a progress bar over the queries on stderr (default: when stderr is a terminal).

    Returns:
        ``{"i2t": {R@K, R-P, mAP@R, n_queries}, "t2i": {...}, "RSUM", "metric", "k" (per direction), "num_images",
        "num_captions", "uncertainty": {"i2t_bins", "t2i_bins"}, "eccv_caption_note"}`` (percent, as
        :func:`pcmekit.metrics.retrieval_metrics`), and ``"eccv_caption"`` (fractions, as the
        eccv-caption package returns them) when it applies.
    """
    from types import SimpleNamespace

    if eccv not in ("auto", True, False):
        raise ValueError(f"eccv must be 'auto', True or False, got {eccv!r}")
    for name in ("images", "texts", "positives_i2t", "positives_t2i"):
        if not hasattr(split, name):
            raise TypeError(f"split must be a pcmekit.data.features.FeatureSplit; {type(split).__name__} has no {name!r}")
    use_eccv, note = coco_test_status(split) if eccv is not False else (False, "eccv=False")
    if eccv is True and not use_eccv:
        raise ValueError(f"eccv=True, but the split cannot be scored with eccv_caption_eval: {note}")
    gallery = SimpleNamespace(images=split.images, tokens=split.texts,
                              lengths=torch.ones(len(split.texts), dtype=torch.int64))
    img, txt = encode_split(model, gallery)
    n_img, n_cap = len(img), len(txt)
    most = max([len(p) for p in split.positives_i2t] + [len(p) for p in split.positives_t2i] + [1])
    want = k if k is not None else max(100, max(ks), most)
    if isinstance(want, bool) or not isinstance(want, int) or want < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    bar = Progress(n_img + n_cap, f"evaluate ({metric})", progress, unit="queries")
    i2t = _ranked_topk(img, txt, min(want, n_cap), metric, criterion, num_samples, seed, bar, chunk)
    t2i = _ranked_topk(txt, img, min(want, n_img), metric, criterion, num_samples, seed + 1, bar, chunk)
    bar.close()
    out: Dict[str, Any] = {"metric": metric, "k": {"i2t": int(i2t.shape[1]), "t2i": int(t2i.shape[1])},
                           "num_images": n_img, "num_captions": n_cap}
    per_query: Dict[str, Any] = {}
    for side, ranked, truth, n_gallery in (("i2t", i2t, split.positives_i2t, n_cap),
                                           ("t2i", t2i, split.positives_t2i, n_img)):
        res = M.retrieval_metrics(ranked, truth, ks=ks, num_gallery=n_gallery, per_query=True)
        per_query[side] = res.pop("per_query")
        res.pop("queries")
        out[side] = res
    if all(K in ks for K in (1, 5, 10)):
        out["RSUM"] = M.rsum(out["i2t"], out["t2i"])
    unc: Dict[str, Any] = {}
    for side, emb in (("i2t", img), ("t2i", txt)):
        if len(emb) >= n_bins:
            unc[f"{side}_bins"] = M.uncertainty_analysis(emb.uncertainty().double(), per_query[side][f"R@{ks[0]}"],
                                                         n_bins)
    out["uncertainty"] = unc
    out["eccv_caption_note"] = note
    if use_eccv:
        out["eccv_caption"] = M.eccv_caption_eval(i2t, t2i, split.image_ids, split.caption_ids, ks=ks)
    return out
