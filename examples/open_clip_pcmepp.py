"""PCME++ on an open_clip model: probabilistic heads, pcmekit's loss and AdamP, pcmekit.topk.

A tiny, randomly initialised open_clip CLIP (a custom config, no pretrained weights, nothing
downloaded) gets a log-variance head on each tower; it is trained for a few steps on synthetic
image-caption pairs with :class:`pcmekit.losses.OpenCLIPPCMEPPLoss`, called the way open_clip's
training loop calls its loss, and :class:`pcmekit.optim.AdamP` over
:func:`pcmekit.optim.param_groups`; retrieval is then evaluated with :func:`pcmekit.topk` on the
closed-form sampled distance. See docs/design.md, "The open_clip drop-in".

Run: ``python examples/open_clip_pcmepp.py [--steps 40] [--seed 0]`` (needs ``open_clip_torch``,
which imports torchvision: a torchvision whose C++ ops load beside the installed torch).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

import pcmekit
from pcmekit.losses import OpenCLIPPCMEPPLoss
from pcmekit.optim import AdamP, param_groups

import open_clip

EMBED_DIM = 16
IMAGE_SIZE = 16
CONTEXT = 8
VOCAB = 24
CLASSES = 8
EOT = VOCAB - 1  # open_clip's text pooling ("argmax") takes the token with the largest id


class ProbCLIP(torch.nn.Module):
    """An open_clip CLIP with a log-variance head on each tower.

    ``forward(images, texts)`` returns open_clip's output dict, with each modality's features a
    ``{"mean", "std"}`` dict (``std`` holds log sigma^2, PCME++'s and ProLIP's convention): the
    means are the L2-normalised CLIP features, the log-variances a linear head on the same
    unnormalised features."""

    def __init__(self, clip: torch.nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.clip = clip
        self.image_logvar = torch.nn.Linear(embed_dim, embed_dim)
        self.text_logvar = torch.nn.Linear(embed_dim, embed_dim)
        for head in (self.image_logvar, self.text_logvar):
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.constant_(head.bias, -4.0)  # start nearly deterministic: sigma^2 ~ 0.02

    def encode(self, images: torch.Tensor, texts: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        f_img = self.clip.encode_image(images)
        f_txt = self.clip.encode_text(texts)
        return {
            "image_features": {"mean": F.normalize(f_img, dim=-1), "std": self.image_logvar(f_img)},
            "text_features": {"mean": F.normalize(f_txt, dim=-1), "std": self.text_logvar(f_txt)},
        }

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.encode(images, texts))
        out["logit_scale"] = self.clip.logit_scale.exp()
        if self.clip.logit_bias is not None:
            out["logit_bias"] = self.clip.logit_bias
        return out


def build_model(seed: int = 0) -> ProbCLIP:
    """A tiny open_clip CLIP (2-block ViT on 16x16 images, 2-block text transformer), random
    weights, logit_scale starting at PCME++'s scale 5."""
    torch.manual_seed(seed)
    clip = open_clip.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg={"layers": 2, "width": 32, "head_width": 16, "patch_size": 4, "image_size": IMAGE_SIZE},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2},
        init_logit_scale=math.log(5.0),
    )
    return ProbCLIP(clip, EMBED_DIM)


def make_pairs(n: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` synthetic (image, caption) pairs of CLASSES classes: an image is its class's fixed
    pattern plus noise; a caption holds its class's word at a random position among filler words
    and ends with EOT. Returns (images [n, 3, 16, 16], texts [n, CONTEXT] int64, labels [n])."""
    patterns = torch.randn(CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    images = patterns[labels] + 0.5 * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    texts = torch.randint(CLASSES + 1, EOT, (n, CONTEXT), generator=generator)  # filler words
    where = torch.randint(0, CONTEXT - 1, (n,), generator=generator)
    texts[torch.arange(n), where] = labels + 1  # the class word
    texts[:, -1] = EOT
    return images, texts, labels


def recall_at_1(model: ProbCLIP, images: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Class-level Recall@1 of image-to-text and text-to-image retrieval by CSD with pcmekit.topk
    (a hit: the nearest item has the query's class), and the mean uncertainty of each side."""
    model.eval()
    with torch.no_grad():
        out = model.encode(images, texts)
    model.train()
    img = pcmekit.ProbEmbedding(out["image_features"]["mean"], out["image_features"]["std"])
    txt = pcmekit.ProbEmbedding(out["text_features"]["mean"], out["text_features"]["std"])
    _, i2t = pcmekit.topk(img, txt, k=1, metric="csd")
    _, t2i = pcmekit.topk(txt, img, k=1, metric="csd")
    return {
        "i2t_r1": float((labels[i2t[:, 0]] == labels).double().mean()),
        "t2i_r1": float((labels[t2i[:, 0]] == labels).double().mean()),
        "img_uncertainty": float(img.uncertainty().mean()),
        "txt_uncertainty": float(txt.uncertainty().mean()),
    }


def run(steps: int = 40, batch_size: int = 32, seed: int = 0, lr: float = 1e-3) -> Dict[str, Any]:
    """Trains for ``steps`` steps and returns the losses and the retrieval before and after."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed)
    model = build_model(seed)
    loss_fn = OpenCLIPPCMEPPLoss()  # the scale is the model's logit_scale; the loss owns the shift
    groups = param_groups(torch.nn.ModuleDict({"model": model, "loss": loss_fn}), 1e-4, lr=lr, layer_decay=0.7)
    optimizer = AdamP(groups, lr=lr, weight_decay=1e-4)

    test = make_pairs(256, torch.Generator().manual_seed(seed + 1))
    before = recall_at_1(model, *test)
    losses: List[float] = []
    for _ in range(steps):
        images, texts, labels = make_pairs(batch_size, data)
        matched = (labels[:, None] == labels[None, :]).float()  # captions of the same class match too
        terms = loss_fn(**model(images, texts), matched=matched, output_dict=True)
        loss = sum(terms.values())  # open_clip's loop: total_loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    after = recall_at_1(model, *test)
    return {"losses": losses, "before": before, "after": after,
            "scale": float(model.clip.logit_scale.detach().exp()), "shift": float(loss_fn.shift.detach()),
            "n_param_groups": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.steps, args.batch_size, args.seed)
    losses = result.pop("losses")
    result["first_loss"], result["last_loss"] = losses[0], losses[-1]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
