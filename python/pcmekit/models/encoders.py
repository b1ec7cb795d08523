"""Small encoders for the demo: a CNN for 8x8 digit images and a transformer over caption words.

Both return an :class:`EncoderOutput`: a set of token features ``[B, L, C]`` with ``lengths``
(None when every set is full), and, when built with ``uncertainty_block=True``, the output of
PCME++'s parallel copy of the last block (:class:`~pcmekit.models.UncertaintyBlock`) for the
log-variance head.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .heads import UncertaintyBlock, lengths_to_mask

__all__ = ["CaptionEncoder", "DigitImageEncoder", "EncoderOutput", "FrozenFeatures", "TransformerBlock"]


class FrozenFeatures(nn.Module):
    """The "encoder" of pre-extracted features: passes ``[B, C]`` float rows through unchanged
    (``lengths``, which a text encoder is called with, is ignored). It has no parameters, so
    :class:`~pcmekit.models.ProbVLModel` trains only the heads on top of it."""

    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        del lengths
        return features


class EncoderOutput(NamedTuple):
    tokens: torch.Tensor                   # [B, L, C]
    lengths: Optional[torch.Tensor]        # [B] int64, or None when all L positions are valid
    unc_tokens: Optional[torch.Tensor]     # [B, L, C] from the uncertainty block, or None


class TransformerBlock(nn.Module):
    """A pre-norm transformer encoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    ``forward(x [B, L, C], valid [B, L] bool or None) -> [B, L, C]`` (padding is not attended to).
    """

    def __init__(self, width: int, heads: int = 4, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"TransformerBlock width ({width}) must be divisible by heads ({heads})")
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm1(x)
        pad = None if valid is None else ~valid
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _Blocks(nn.Module):
    """Pre-norm transformer blocks and the final LayerNorm (one more for the uncertainty path)."""

    def __init__(self, width: int, n_blocks: int, heads: int, uncertainty_block: bool, owner: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(width)
        self.unc_norm: Optional[nn.LayerNorm] = None
        if uncertainty_block:
            if n_blocks < 1:
                raise ValueError(f"{owner}: uncertainty_block needs n_blocks >= 1")
            self.blocks[-1] = UncertaintyBlock(self.blocks[-1])
            self.unc_norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor]):
        unc = None
        for block in self.blocks:
            if isinstance(block, UncertaintyBlock):
                x, unc = block(x, valid)
            else:
                x = block(x, valid)
        if unc is not None and self.unc_norm is not None:
            unc = self.unc_norm(unc)
        return self.norm(x), unc


class DigitImageEncoder(nn.Module):
    """A small CNN for ``[B, 1, H, W]`` images (8x8 digits), then transformer blocks over its grid.

    ``conv3x3(1 -> width/2) - BN - ReLU - conv3x3(-> width) - BN - ReLU - maxpool 2x2`` turns an
    8x8 image into a 4x4 grid of ``width``-dimensional local features; with a learned position
    embedding they are 16 tokens for ``n_blocks`` pre-norm transformer blocks and a final
    LayerNorm. ``uncertainty_block=True`` wraps the last block in :class:`UncertaintyBlock`
    (PCME++); its output gets a LayerNorm of its own.

    ``forward(images [B, 1, H, W]) -> EncoderOutput(tokens [B, H*W/4, width], None, unc_tokens)``.
    """

    def __init__(self, width: int = 64, n_blocks: int = 1, heads: int = 4, image_size: int = 8,
                 uncertainty_block: bool = False) -> None:
        super().__init__()
        if image_size % 2:
            raise ValueError(f"DigitImageEncoder image_size must be even, got {image_size}")
        self.width, self.image_size = width, image_size
        # BatchNorm after each conv: without it the ReLU features of different digits are so
        # alike at initialisation that the embeddings start collapsed (squared distances ~0.05
        # between unit means), where a squared-distance loss such as PCME++'s has no gradient.
        self.cnn = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        n_tokens = (image_size // 2) ** 2
        self.position = nn.Parameter(torch.randn(n_tokens, width) * 0.02)
        self.blocks = _Blocks(width, n_blocks, heads, uncertainty_block, "DigitImageEncoder")

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        if images.dim() != 4 or images.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"DigitImageEncoder: images must have shape [B, 1, {self.image_size}, "
                             f"{self.image_size}], got {list(images.shape)}")
        grid = self.cnn(images)                                    # [B, C, H/2, W/2]
        x = grid.flatten(2).transpose(1, 2) + self.position        # [B, L, C]
        x, unc = self.blocks(x, None)
        return EncoderOutput(x, None, unc)


class CaptionEncoder(nn.Module):
    """Word embeddings plus learned positions, then pre-norm transformer blocks and a final
    LayerNorm (a small text encoder).

    ``uncertainty_block=True`` wraps the last block in :class:`UncertaintyBlock` (PCME++).

    ``forward(tokens [B, L] int64, lengths [B] int64) -> EncoderOutput(tokens [B, L, width], lengths,
    unc_tokens)``; token id 0 is padding.
    """

    def __init__(self, vocab_size: int, width: int = 64, n_blocks: int = 1, heads: int = 4, max_len: int = 16,
                 uncertainty_block: bool = False) -> None:
        super().__init__()
        self.width, self.max_len, self.vocab_size = width, max_len, vocab_size
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = _Blocks(width, n_blocks, heads, uncertainty_block, "CaptionEncoder")

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> EncoderOutput:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"CaptionEncoder: tokens must be int64 [B, L], got {tokens.dtype} {list(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"CaptionEncoder: captions of up to max_len = {self.max_len} tokens, got L = {tokens.shape[1]}")
        if lengths is None:
            lengths = (tokens != 0).sum(dim=1).clamp(min=1)
        if lengths.shape != (tokens.shape[0],):
            raise ValueError(f"CaptionEncoder: lengths must have shape [{tokens.shape[0]}], got {list(lengths.shape)}")
        # Trim padding columns no caption of this batch uses.
        width = int(lengths.max()) if lengths.numel() else 1
        tokens = tokens[:, :width]
        valid = lengths_to_mask(lengths, tokens.shape[0], width, tokens.device)
        x = self.embed(tokens) + self.position[:width]
        x, unc = self.blocks(x, valid)
        return EncoderOutput(x, lengths, unc)
