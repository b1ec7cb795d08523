"""Mixed-sample augmentation for image-text batches (PCME++'s MixUp / CutMix recipe)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["mix_images"]

MODES = ("mixup", "cutmix", "both")


def mix_images(
    images: torch.Tensor,
    alpha: float = 1.0,
    mode: str = "mixup",
    batch_ratio: float = 0.25,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mixes image i with image B-1-i for the first ``round(batch_ratio * B)`` images.

    As in PCME++ (timm's per-element mixing, partner = the mirrored index), each mixed image i
    draws its own lambda ~ Beta(alpha, alpha) and is mixed with the *original* image B-1-i:

    * ``"mixup"``: ``lambda * x_i + (1 - lambda) * x_{B-1-i}``;
    * ``"cutmix"``: a box of side ``sqrt(1 - lambda)`` times the image's, centred at a uniform
      random pixel and clipped to the image, is pasted from x_{B-1-i}; lambda is then corrected to
      the area actually kept, ``1 - box_area / (H * W)``;
    * ``"both"``: one of the two, chosen with probability 1/2 per call.

    Args:
        images: ``[B, C, H, W]`` floating-point tensor (not modified).
        alpha: Beta concentration (> 0); 1 gives a uniform lambda.
        mode: ``"mixup"``, ``"cutmix"`` or ``"both"``.
        batch_ratio: fraction of the batch that is mixed, in [0, 1]; the count is
            ``round(batch_ratio * B)`` (Python's rounding).
        generator: a ``torch.Generator`` for reproducible draws (on the CPU or on the images'
            device); random numbers are drawn on the generator's device (the CPU by default).

    Returns:
        ``(mixed_images, matched)``: the mixed batch (a new tensor) and the ``[B, B]`` match
        matrix for the losses: ``matched[i, i] = lambda_i`` and ``matched[i, B-1-i] = 1 -
        lambda_i`` for mixed rows (their sum is 1; an image mixed with itself, the middle of an
        odd batch, keeps 1), the identity elsewhere. Its dtype is the images' (float32 for
        16-bit images), on their device.
    """
    _check_args(images, alpha, mode, batch_ratio, generator)
    b = images.shape[0]
    n = round(batch_ratio * b)
    matched_dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    matched = torch.eye(b, dtype=matched_dtype, device=images.device)
    mixed = images.clone()
    if n == 0:
        return mixed, matched

    rng = generator.device if generator is not None else torch.device("cpu")
    use_cutmix = mode == "cutmix"
    if mode == "both":
        use_cutmix = bool(torch.rand((), generator=generator, device=rng) < 0.5)
    # Beta(alpha, alpha) as the first coordinate of a Dirichlet(alpha, alpha): torch's own sampler
    # for Beta, and one that accepts a generator.
    concentration = torch.full((n, 2), float(alpha), dtype=torch.float64, device=rng)
    lam = torch._sample_dirichlet(concentration, generator=generator)[:, 0]

    rows = torch.arange(n, device=images.device)
    partners = b - 1 - rows
    if use_cutmix:
        lam, box = _cutmix_boxes(lam, images.shape[-2], images.shape[-1], generator, rng)
        box = box.to(images.device)[:, None]  # [n, 1, H, W]
        mixed[rows] = torch.where(box, images[partners], images[rows])
    else:
        w = lam.to(device=images.device, dtype=images.dtype).view(n, 1, 1, 1)
        mixed[rows] = images[rows] * w + images[partners] * (1 - w)

    lam = lam.to(device=images.device, dtype=matched_dtype)
    matched[rows, rows] = lam
    matched.index_put_((rows, partners), 1 - lam, accumulate=True)
    return mixed, matched


def _cutmix_boxes(
    lam: torch.Tensor, h: int, w: int, generator: Optional[torch.Generator], rng: torch.device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boxes covering about 1 - lam of the image, and lam corrected to the clipped box's area.

    Returns ``(lam_corrected [n], box [n, H, W] bool)`` (on ``rng``'s device)."""
    n = lam.shape[0]
    ratio = torch.sqrt(1 - lam)
    cut_h = torch.floor(h * ratio).to(torch.int64)
    cut_w = torch.floor(w * ratio).to(torch.int64)
    cy = torch.randint(0, h, (n,), generator=generator, device=rng)
    cx = torch.randint(0, w, (n,), generator=generator, device=rng)
    y0 = (cy - cut_h // 2).clamp(0, h)
    y1 = (cy - cut_h // 2 + cut_h).clamp(0, h)
    x0 = (cx - cut_w // 2).clamp(0, w)
    x1 = (cx - cut_w // 2 + cut_w).clamp(0, w)
    ys = torch.arange(h, device=rng)[None, :, None]
    xs = torch.arange(w, device=rng)[None, None, :]
    box = (
        (ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    )
    area = ((y1 - y0) * (x1 - x0)).to(torch.float64)
    return 1 - area / (h * w), box


def _check_args(images, alpha, mode, batch_ratio, generator) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape [B, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, C, H, W] (4-D), got {list(images.shape)} ({images.dim()}-D)")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be floating point (convert uint8 images first), got {images.dtype}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0 (the Beta(alpha, alpha) concentration), got {alpha}")
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(batch_ratio, bool) or not isinstance(batch_ratio, (int, float)):
        raise TypeError(f"batch_ratio must be a real number in [0, 1], got {type(batch_ratio).__name__}")
    if not 0 <= batch_ratio <= 1:
        raise ValueError(f"batch_ratio must be in [0, 1], got {batch_ratio}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
