"""Probabilistic heads, small encoders and the two-tower model (PCME / PCME++ designs).

* :class:`ProbHead` (PCME++: per-token linear maps, GPO pooling, L2-normalised mean),
  :class:`PIEHead` (PCME: pooled feature + self-attention residual), :class:`GPOPool`,
  :class:`UncertaintyBlock` (PCME++'s parallel copy of the last block for the log-variance).
* :class:`AdapterHead` -- a probabilistic adapter (MLP -> mean, logvar) on frozen features;
  :func:`build_adapter_model` puts two of them on :class:`FrozenFeatures` (the ProbVLM pattern).
* :class:`DigitImageEncoder`, :class:`CaptionEncoder` -- small encoders for the digits demo.
* :class:`ProbVLModel` -- encoders + heads, returning two :class:`~pcmekit.ProbEmbedding`;
  :func:`build_digits_model` assembles the demo's model.
"""

from __future__ import annotations

from .encoders import CaptionEncoder, DigitImageEncoder, EncoderOutput, FrozenFeatures, TransformerBlock
from .heads import LOGVAR_BIAS_INIT, AdapterHead, GPOPool, PIEHead, ProbHead, UncertaintyBlock, positional_encoding
from .model import ProbVLModel, build_adapter_model, build_digits_model, build_model

__all__ = [
    "AdapterHead",
    "FrozenFeatures",
    "build_adapter_model",
    "CaptionEncoder",
    "DigitImageEncoder",
    "EncoderOutput",
    "GPOPool",
    "LOGVAR_BIAS_INIT",
    "PIEHead",
    "ProbHead",
    "ProbVLModel",
    "TransformerBlock",
    "UncertaintyBlock",
    "build_digits_model",
    "build_model",
    "positional_encoding",
]
