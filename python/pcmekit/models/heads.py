"""Probabilistic heads: encoder features -> :class:`~pcmekit.ProbEmbedding` (mean, logvar).

* :class:`GPOPool` -- VSE-infinity's generalized pooling operator, which PCME++'s heads use.
* :class:`ProbHead` -- PCME++'s head: a linear map per token, GPO pooling, L2-normalised mean; a
  second linear + GPO branch gives the log-variance (fed, in PCME++, by a parallel copy of the
  encoder's last block: :class:`UncertaintyBlock`).
* :class:`PIEHead` -- PCME's head: the pooled feature plus a residual from single-head
  self-attention over the local features (PIE-Net), and a log-variance from attention-pooled
  local features plus the pooled feature.
* :class:`UncertaintyBlock` -- wraps a transformer block; runs it and a parallel copy of it.
* :class:`AdapterHead` -- a probabilistic adapter on one frozen feature vector per sample (the
  ProbVLM pattern; docs/design.md, "Frozen-feature adapters").

Features are a set per sample: ``[B, L, C]`` with ``lengths`` ``[B]`` (valid positions are a
prefix), or a single vector ``[B, C]``.

**Log-variance bias at initialisation.** Both references start the log-variance head's bias at
0: PCME++ fills the std head's bias with ``bias_init`` whose default is 0 (its "-4 / -10 to
prevent too large std" lines are commented out), and PCME's uncertainty modules set
``nn.init.constant_(fc.bias, 0)``. So ``logvar_bias_init = 0.0`` here: every dimension starts at
variance ~1, far above the spread of L2-normalised means, and the loss shrinks it. The bias is
an argument for models with very different embedding sizes.
"""

from __future__ import annotations

import copy
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..embedding import ProbEmbedding

__all__ = ["AdapterHead", "GPOPool", "PIEHead", "ProbHead", "UncertaintyBlock", "lengths_to_mask", "positional_encoding"]

#: The references' log-variance bias at initialisation (see the module docstring).
LOGVAR_BIAS_INIT = 0.0


def positional_encoding(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]`` sinusoidal positional encoding (Vaswani et al.); ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"positional_encoding needs an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def lengths_to_mask(lengths: Optional[torch.Tensor], batch: int, max_len: int, device: torch.device) -> torch.Tensor:
    """``[B, L]`` bool, True at valid positions (all True when ``lengths`` is None)."""
    if lengths is None:
        return torch.ones(batch, max_len, dtype=torch.bool, device=device)
    return torch.arange(max_len, device=device)[None, :] < lengths.to(device)[:, None]


def _check_set(features: torch.Tensor, lengths: Optional[torch.Tensor], owner: str, in_dim: int) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{owner}: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() not in (2, 3) or features.shape[-1] != in_dim:
        raise ValueError(f"{owner}: features must have shape [B, L, {in_dim}] or [B, {in_dim}], "
                         f"got {list(features.shape)}")
    if lengths is not None:
        if features.dim() != 3:
            raise ValueError(f"{owner}: lengths is only meaningful with [B, L, C] features")
        if lengths.shape != (features.shape[0],):
            raise ValueError(f"{owner}: lengths must have shape [{features.shape[0]}], got {list(lengths.shape)}")
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]):
            raise ValueError(f"{owner}: lengths must be in [1, {features.shape[1]}], got "
                             f"[{int(lengths.min())}, {int(lengths.max())}]")


class GPOPool(nn.Module):
    """Generalized pooling operator (Chen et al., "Learning the Best Pooling Strategy for Visual
    Semantic Embedding", CVPR 2021), as PCME++'s image and text heads use it.

    For each of the D feature dimensions the n values of a set are sorted in descending order and
    summed with weights ``w_1..w_n`` that depend only on n: a bidirectional GRU reads the
    sinusoidal encodings of positions 0..n-1, the two directions are averaged, a linear layer
    scores each position, and ``w = softmax(scores / temperature)``. It can learn max pooling
    (all weight on position 0), mean pooling, or anything between.

    ``forward(features [B, L, D], lengths [B] or None) -> [B, D]``; ``weights(lengths, L)`` gives
    the ``[B, L]`` pooling weights (0 beyond each length).
    """

    def __init__(self, d_pe: int = 32, d_hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        if d_pe % 2:
            raise ValueError(f"GPOPool d_pe must be even (sin/cos pairs), got {d_pe}")
        if not temperature > 0:
            raise ValueError(f"GPOPool temperature must be > 0, got {temperature}")
        self.d_pe = d_pe
        self.temperature = float(temperature)
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)

    def weights(self, lengths: Optional[torch.Tensor], batch: int, max_len: int,
                device: Optional[torch.device] = None) -> torch.Tensor:
        """``[B, L]`` pooling weights for sets of the given lengths (None: all of length L)."""
        device = device if device is not None else self.score.weight.device
        if lengths is None:
            unique = torch.tensor([max_len])
            inverse = torch.zeros(batch, dtype=torch.long)
        else:
            unique, inverse = torch.unique(lengths.cpu(), return_inverse=True)
        n_max = int(unique.max())
        pe = positional_encoding(n_max, self.d_pe).to(device=device, dtype=self.score.weight.dtype)
        # One GRU call over the distinct lengths (the weights depend on nothing else).
        seqs = pe.unsqueeze(0).expand(len(unique), n_max, self.d_pe)
        packed = pack_padded_sequence(seqs, unique, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=n_max)
        half = out.shape[-1] // 2
        scores = self.score((out[..., :half] + out[..., half:]) / 2).squeeze(-1)     # [U, n_max]
        valid = torch.arange(n_max)[None, :] < unique[:, None]
        scores = scores.masked_fill(~valid.to(device), float("-inf"))
        w = torch.softmax(scores / self.temperature, dim=1)
        if n_max < max_len:
            w = F.pad(w, (0, max_len - n_max))
        return w[inverse.to(device)]

    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"GPOPool: features must have shape [B, L, D], got {list(features.shape)}")
        b, n, _ = features.shape
        valid = lengths_to_mask(lengths, b, n, features.device)
        w = self.weights(lengths, b, n, features.device).to(features.dtype)
        ordered = features.masked_fill(~valid[..., None], float("-inf")).sort(dim=1, descending=True).values
        # Sorting puts the -inf padding last, so the valid values fill the same prefix.
        ordered = ordered.masked_fill(~valid[..., None], 0.0)
        return (ordered * w[..., None]).sum(dim=1)


def _masked_mean(features: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    if features.dim() == 2:
        return features
    if lengths is None:
        return features.mean(dim=1)
    valid = lengths_to_mask(lengths, features.shape[0], features.shape[1], features.device)
    return (features * valid[..., None]).sum(1) / lengths.to(features.device, features.dtype)[:, None]


def _pool(kind: str, gpo: Optional[GPOPool], features: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    if features.dim() == 2:
        return features
    if kind == "gpo":
        assert gpo is not None
        return gpo(features, lengths)
    if kind == "mean":
        return _masked_mean(features, lengths)
    valid = lengths_to_mask(lengths, features.shape[0], features.shape[1], features.device)
    return features.masked_fill(~valid[..., None], float("-inf")).max(dim=1).values


class ProbHead(nn.Module):
    """PCME++'s probabilistic head.

    ``mean = normalize(pool(x W_mu + b_mu))`` and ``logvar = pool(u W_v + b_v)``: a linear map of
    every token, then pooling over the set (GPO by default, as PCME++; "mean" or "max" too), with
    a separate pooling operator per branch. ``u`` is ``unc_features`` when given (PCME++ feeds
    the output of a parallel copy of the encoder's last block, :class:`UncertaintyBlock`), else
    the same features. ``b_v`` starts at ``logvar_bias_init`` (0, as both references; see the
    module docstring).

    Args:
        in_dim: C, the feature size. embed_dim: D, the embedding size.
        pool: "gpo", "mean" or "max" (ignored for ``[B, C]`` inputs).
        normalize_mean: L2-normalise the mean (PCME++ and PCME do).
        logvar_bias_init: initial bias of the log-variance layer.

    ``forward(features [B, L, C] or [B, C], lengths [B] = None, unc_features = None)`` returns a
    ``ProbEmbedding`` of ``[B, D]`` mean and logvar.
    """

    def __init__(self, in_dim: int, embed_dim: int, pool: str = "gpo", normalize_mean: bool = True,
                 logvar_bias_init: float = LOGVAR_BIAS_INIT) -> None:
        super().__init__()
        if pool not in ("gpo", "mean", "max"):
            raise ValueError(f"ProbHead pool must be 'gpo', 'mean' or 'max', got {pool!r}")
        self.in_dim, self.embed_dim, self.pool = in_dim, embed_dim, pool
        self.normalize_mean = normalize_mean
        self.mean_fc = nn.Linear(in_dim, embed_dim)
        self.logvar_fc = nn.Linear(in_dim, embed_dim)
        self.mean_pool = GPOPool() if pool == "gpo" else None
        self.logvar_pool = GPOPool() if pool == "gpo" else None
        for fc in (self.mean_fc, self.logvar_fc):
            nn.init.xavier_uniform_(fc.weight)  # as VSE-infinity / PCME++ initialise their fc
        nn.init.zeros_(self.mean_fc.bias)
        nn.init.constant_(self.logvar_fc.bias, float(logvar_bias_init))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, embed_dim={self.embed_dim}, pool={self.pool!r}"

    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                unc_features: Optional[torch.Tensor] = None) -> ProbEmbedding:
        _check_set(features, lengths, "ProbHead", self.in_dim)
        if unc_features is None:
            unc_features = features
        elif unc_features.shape != features.shape:
            raise ValueError(f"ProbHead: unc_features must have the shape of features {list(features.shape)}, "
                             f"got {list(unc_features.shape)}")
        mean = _pool(self.pool, self.mean_pool, self.mean_fc(features), lengths)
        logvar = _pool(self.pool, self.logvar_pool, self.logvar_fc(unc_features), lengths)
        if self.normalize_mean:
            mean = F.normalize(mean, dim=-1)
        return ProbEmbedding(mean, logvar)


class _AttentionPool(nn.Module):
    """Single-head self-attentive pooling (Lin et al., ICLR 2017), PCME / PVSE's attention:
    ``a = softmax_L(w2 tanh(w1 x))``, output ``sum_L a x``."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(in_dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.w1.weight)
        nn.init.xavier_uniform_(self.w2.weight)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        scores = self.w2(torch.tanh(self.w1(x))).squeeze(-1)                     # [B, L]
        valid = lengths_to_mask(lengths, x.shape[0], x.shape[1], x.device)
        attn = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        return torch.bmm(attn.unsqueeze(1), x).squeeze(1)


class PIEHead(nn.Module):
    """PCME's probabilistic head (Chun et al., CVPR 2021; PIE-Net from Song & Soleymani, CVPR 2019).

    With local features ``x [B, L, C]`` and a pooled feature ``g [B, C_g]`` (the masked mean of
    ``x`` unless given):

        mean   = normalize(LayerNorm(fc(g) + dropout(sigmoid(fc_r(attn(x))))))
        logvar = fc_u(attn_u(u)) + fc_g(g)

    where ``attn`` / ``attn_u`` are single-head self-attentive pooling over the set and ``u`` is
    ``unc_features`` when given, else ``x``. PCME's text branch adds a GRU over the words instead
    of ``fc_g(g)``; here both modalities use the pooled feature. ``fc_u`` starts with xavier
    weights and bias ``logvar_bias_init`` (0, as PCME); ``fc_g`` has no bias, so the
    log-variance's bias is exactly ``logvar_bias_init`` at initialisation.

    ``forward(features [B, L, C], lengths [B] = None, unc_features = None, global_features = None)``
    returns a ``ProbEmbedding`` of ``[B, D]``.
    """

    def __init__(self, in_dim: int, embed_dim: int, attn_hidden: int = 0, global_dim: Optional[int] = None,
                 dropout: float = 0.0, normalize_mean: bool = True,
                 logvar_bias_init: float = LOGVAR_BIAS_INIT) -> None:
        super().__init__()
        attn_hidden = attn_hidden or in_dim // 2 or 1
        global_dim = global_dim or in_dim
        self.in_dim, self.embed_dim, self.global_dim = in_dim, embed_dim, global_dim
        self.normalize_mean = normalize_mean
        self.fc = nn.Linear(global_dim, embed_dim)
        self.attention = _AttentionPool(in_dim, attn_hidden)
        self.fc_residual = nn.Linear(in_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.unc_attention = _AttentionPool(in_dim, attn_hidden)
        self.fc_u = nn.Linear(in_dim, embed_dim)
        self.fc_g = nn.Linear(global_dim, embed_dim, bias=False)
        for fc in (self.fc, self.fc_residual, self.fc_u):
            nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(self.fc.bias)
        nn.init.zeros_(self.fc_residual.bias)
        nn.init.constant_(self.fc_u.bias, float(logvar_bias_init))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, embed_dim={self.embed_dim}, global_dim={self.global_dim}"

    def forward(self, features: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                unc_features: Optional[torch.Tensor] = None,
                global_features: Optional[torch.Tensor] = None) -> ProbEmbedding:
        _check_set(features, lengths, "PIEHead", self.in_dim)
        if features.dim() != 3:
            raise ValueError(f"PIEHead needs a set of local features [B, L, {self.in_dim}], got {list(features.shape)}")
        g = _masked_mean(features, lengths) if global_features is None else global_features
        if g.shape != (features.shape[0], self.global_dim):
            raise ValueError(f"PIEHead: global_features must have shape [{features.shape[0]}, {self.global_dim}], "
                             f"got {list(g.shape)}")
        u = features if unc_features is None else unc_features
        if u.shape != features.shape:
            raise ValueError(f"PIEHead: unc_features must have the shape of features {list(features.shape)}, "
                             f"got {list(u.shape)}")
        residual = self.dropout(torch.sigmoid(self.fc_residual(self.attention(features, lengths))))
        mean = self.layer_norm(self.fc(g) + residual)
        if self.normalize_mean:
            mean = F.normalize(mean, dim=-1)
        logvar = self.fc_u(self.unc_attention(u, lengths)) + self.fc_g(g)
        return ProbEmbedding(mean, logvar)


class UncertaintyBlock(nn.Module):
    """PCME++'s uncertainty module: the encoder's last block and a parallel copy of it.

    The mean path runs ``block``; the copy reads the *same input* and its output feeds the
    log-variance head, so the uncertainty gets a block of its own without a second encoder.
    ``init="copy"`` starts the copy from the block's weights (the two paths begin as the same
    function, which matters when the block is pretrained); ``"reset"`` re-initialises the copy
    (calls ``reset_parameters`` of every submodule that has one).

    ``forward(x, *args, **kwargs) -> (block(x, ...), copy(x, ...))``.
    """

    def __init__(self, block: nn.Module, init: str = "copy") -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"UncertaintyBlock: block must be an nn.Module, got {type(block).__name__}")
        if init not in ("copy", "reset"):
            raise ValueError(f"UncertaintyBlock init must be 'copy' or 'reset', got {init!r}")
        self.block = block
        self.uncertainty = copy.deepcopy(block)
        if init == "reset":
            for m in self.uncertainty.modules():
                reset = getattr(m, "reset_parameters", None)
                if m is not self.uncertainty and callable(reset):
                    reset()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.block(x, *args, **kwargs), self.uncertainty(x, *args, **kwargs)


class AdapterHead(nn.Module):
    """A probabilistic adapter on frozen features (docs/design.md, "Frozen-feature adapters").

    For one pre-extracted feature vector per sample ``x [B, C]`` (CLIP's image or text
    embedding, say):

        x      = normalize(x)                                 (when ``normalize_input``)
        mean   = normalize(S x + W2 gelu(W1 x + b1))          S: [D, C], no bias
        logvar = V2 gelu(V1 x + c1) + c2

    ``S`` starts as the identity when ``C == D`` (else xavier) and ``W2`` at zero, so an untrained
    adapter on features of the embedding size returns the frozen features themselves (unit
    length): training starts from the frozen model's retrieval, as ProbVLM's adapters do, and
    the residual MLP learns a correction. ``V2`` starts at zero and ``c2`` at
    ``logvar_bias_init``, so every sample starts with the same variance and the loss decides
    which samples get more.

    Args:
        in_dim: C. embed_dim: D. hidden: width of both MLPs.
        normalize_input: L2-normalise ``x`` first (frozen CLIP features are compared by cosine;
            their norms carry no meaning there).
        logvar_bias_init: the starting log-variance of every dimension.

    ``forward(features [B, C]) -> ProbEmbedding [B, D]``.
    """

    def __init__(self, in_dim: int, embed_dim: int, hidden: int = 512, normalize_input: bool = True,
                 logvar_bias_init: float = LOGVAR_BIAS_INIT) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("embed_dim", embed_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdapterHead {name} must be an int >= 1, got {value!r}")
        self.in_dim, self.embed_dim, self.hidden = in_dim, embed_dim, hidden
        self.normalize_input = bool(normalize_input)
        self.skip = nn.Linear(in_dim, embed_dim, bias=False)
        self.mean_hidden = nn.Linear(in_dim, hidden)
        self.mean_out = nn.Linear(hidden, embed_dim)
        self.logvar_hidden = nn.Linear(in_dim, hidden)
        self.logvar_out = nn.Linear(hidden, embed_dim)
        with torch.no_grad():
            if in_dim == embed_dim:
                self.skip.weight.copy_(torch.eye(embed_dim))
            else:
                nn.init.xavier_uniform_(self.skip.weight)
            nn.init.zeros_(self.mean_out.weight)
            nn.init.zeros_(self.mean_out.bias)
            nn.init.zeros_(self.logvar_out.weight)
            nn.init.constant_(self.logvar_out.bias, float(logvar_bias_init))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, embed_dim={self.embed_dim}, hidden={self.hidden}, "
                f"normalize_input={self.normalize_input}")

    def forward(self, features: torch.Tensor) -> ProbEmbedding:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"AdapterHead: features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"AdapterHead: features must have shape [B, {self.in_dim}], got {list(features.shape)}")
        x = F.normalize(features, dim=-1) if self.normalize_input else features
        mean = F.normalize(self.skip(x) + self.mean_out(F.gelu(self.mean_hidden(x))), dim=-1)
        return ProbEmbedding(mean, self.logvar_out(F.gelu(self.logvar_hidden(x))))
