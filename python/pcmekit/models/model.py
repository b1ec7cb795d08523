"""`ProbVLModel`: an image encoder, a text encoder and a probabilistic head for each."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..embedding import ProbEmbedding
from .encoders import CaptionEncoder, DigitImageEncoder, EncoderOutput, FrozenFeatures
from .heads import AdapterHead, PIEHead, ProbHead

__all__ = ["ProbVLModel", "build_adapter_model", "build_digits_model", "build_model"]


def _encode(encoder: nn.Module, head: nn.Module, *inputs: Any) -> ProbEmbedding:
    out = encoder(*inputs)
    if isinstance(out, EncoderOutput):
        return head(out.tokens, out.lengths, unc_features=out.unc_tokens)
    if isinstance(out, torch.Tensor):
        return head(out)
    raise TypeError(f"ProbVLModel: an encoder must return an EncoderOutput or a feature tensor, got {type(out).__name__}")


class ProbVLModel(nn.Module):
    """Image and text encoders, each followed by a probabilistic head returning a ProbEmbedding.

    Args:
        image_encoder: ``images -> EncoderOutput`` (or a ``[B, C]`` / ``[B, L, C]`` tensor).
        text_encoder: ``(tokens, lengths) -> EncoderOutput`` (or a tensor).
        heads: ``(image_head, text_head)`` or ``{"image": ..., "text": ...}``; each is called as
            ``head(features, lengths, unc_features=...)`` (:class:`ProbHead`, :class:`PIEHead`).

    ``forward(images, tokens, lengths=None) -> (image ProbEmbedding [B_img, D], text ProbEmbedding
    [B_txt, D])``; ``encode_image`` / ``encode_text`` run one side.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module,
                 heads: Union[Sequence[nn.Module], Mapping[str, nn.Module]]) -> None:
        super().__init__()
        if isinstance(heads, Mapping):
            missing = {"image", "text"} - set(heads)
            if missing:
                raise ValueError(f"ProbVLModel heads mapping needs keys 'image' and 'text', missing {sorted(missing)}")
            image_head, text_head = heads["image"], heads["text"]
        else:
            heads = list(heads)
            if len(heads) != 2:
                raise ValueError(f"ProbVLModel heads must be (image_head, text_head), got {len(heads)} modules")
            image_head, text_head = heads
        for name, m in (("image_encoder", image_encoder), ("text_encoder", text_encoder),
                        ("image head", image_head), ("text head", text_head)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"ProbVLModel {name} must be an nn.Module, got {type(m).__name__}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = image_head
        self.text_head = text_head
        #: How to rebuild this model (set by builders such as build_digits_model; saved in checkpoints).
        self.config: Optional[Dict[str, Any]] = None

    def encode_image(self, images: torch.Tensor) -> ProbEmbedding:
        return _encode(self.image_encoder, self.image_head, images)

    def encode_text(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> ProbEmbedding:
        return _encode(self.text_encoder, self.text_head, tokens, lengths)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor,
                lengths: Optional[torch.Tensor] = None) -> Tuple[ProbEmbedding, ProbEmbedding]:
        return self.encode_image(images), self.encode_text(tokens, lengths)


def build_digits_model(vocab_size: int, embed_dim: int = 32, width: int = 64, n_blocks: int = 1, heads: int = 4,
                       head: str = "gpo", uncertainty_block: bool = True, max_len: int = 16,
                       logvar_bias_init: Optional[float] = None, seed: Optional[int] = None) -> ProbVLModel:
    """The demo model: :class:`DigitImageEncoder` + :class:`CaptionEncoder` (``width`` channels,
    ``n_blocks`` transformer blocks each, the last one doubled by an UncertaintyBlock when
    ``uncertainty_block``), and a ``head`` per modality: "gpo" (:class:`ProbHead`, PCME++) or "pie"
    (:class:`PIEHead`, PCME). ``seed`` makes the initialisation reproducible. The arguments are
    stored in ``model.config`` so a checkpoint can rebuild the model.

    ``logvar_bias_init`` defaults to ``log(0.1 / embed_dim)`` here, not to the references' 0
    (:data:`LOGVAR_BIAS_INIT`): they start from pretrained encoders whose positive pairs are already
    close. Trained from scratch with D = 32, variance 1 per dimension puts the CSD's variance term
    (sum over D of var_a + var_b = 64) far above the squared distance of two unit means (<= 4):
    every logit ``-5 CSD + 5`` saturates near -300, only the matching pairs get a gradient, and the
    means collapse onto one point within about ten steps (measured), where CSD's gradient vanishes.
    ``log(0.1 / D)`` makes the variance term 0.2 at the start, a tenth of the typical squared
    distance between unit means, so the means are learned first and the variances after.
    """
    if head not in ("gpo", "pie"):
        raise ValueError(f"build_digits_model head must be 'gpo' or 'pie', got {head!r}")
    if logvar_bias_init is None:
        logvar_bias_init = math.log(0.1 / embed_dim)
    config = dict(vocab_size=vocab_size, embed_dim=embed_dim, width=width, n_blocks=n_blocks, heads=heads, head=head,
                  uncertainty_block=uncertainty_block, max_len=max_len, logvar_bias_init=logvar_bias_init, seed=seed)
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else _nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        image_encoder = DigitImageEncoder(width, n_blocks, heads, uncertainty_block=uncertainty_block)
        text_encoder = CaptionEncoder(vocab_size, width, n_blocks, heads, max_len=max_len,
                                      uncertainty_block=uncertainty_block)
        hs: List[nn.Module]
        if head == "gpo":
            hs = [ProbHead(width, embed_dim, logvar_bias_init=logvar_bias_init) for _ in range(2)]
        else:
            hs = [PIEHead(width, embed_dim, logvar_bias_init=logvar_bias_init) for _ in range(2)]
        model = ProbVLModel(image_encoder, text_encoder, hs)
    model.config = {"builder": "digits", **config}
    return model


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def build_adapter_model(image_dim: int, text_dim: int, embed_dim: int, hidden: int = 512,
                        normalize_input: bool = True, logvar_bias_init: Optional[float] = None,
                        seed: Optional[int] = None) -> ProbVLModel:
    """Probabilistic adapters on frozen features (docs/design.md, "Frozen-feature adapters"): a
    :class:`ProbVLModel` whose encoders are :class:`FrozenFeatures` (no parameters) and whose heads
    are one :class:`AdapterHead` per modality, ``image_dim -> embed_dim`` and ``text_dim ->
    embed_dim``. ``logvar_bias_init`` defaults to ``log(0.1 / embed_dim)`` for the reason
    :func:`build_digits_model` gives (the variance term of the CSD starts at a tenth of a typical
    squared distance between unit means). ``seed`` makes the initialisation reproducible; the
    arguments are kept in ``model.config`` so a checkpoint can rebuild the model."""
    if logvar_bias_init is None:
        logvar_bias_init = math.log(0.1 / embed_dim) if isinstance(embed_dim, int) and embed_dim > 0 else 0.0
    config = dict(image_dim=image_dim, text_dim=text_dim, embed_dim=embed_dim, hidden=hidden,
                  normalize_input=normalize_input, logvar_bias_init=logvar_bias_init, seed=seed)
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else _nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        heads = [AdapterHead(dim, embed_dim, hidden, normalize_input=normalize_input,
                             logvar_bias_init=logvar_bias_init) for dim in (image_dim, text_dim)]
        model = ProbVLModel(FrozenFeatures(), FrozenFeatures(), heads)
    model.config = {"builder": "adapters", **config}
    return model


_BUILDERS: Dict[str, Callable[..., ProbVLModel]] = {"digits": build_digits_model, "adapters": build_adapter_model}


def build_model(config: Mapping[str, Any]) -> ProbVLModel:
    """Rebuilds a model from its ``config`` (as stored in a checkpoint)."""
    config = dict(config)
    builder = config.pop("builder", None)
    if builder not in _BUILDERS:
        raise ValueError(f"unknown model builder {builder!r} in the model config; expected one of "
                         f"{', '.join(repr(b) for b in _BUILDERS)}")
    return _BUILDERS[builder](**config)
