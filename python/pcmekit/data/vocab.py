"""A word-level tokenizer and vocabulary for short captions."""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple

import torch

__all__ = ["WordVocab", "tokenize"]

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> List[str]:
    """Lower-cased words (runs of ``[a-z0-9]``); punctuation and spacing are dropped."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize: text must be a str, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordVocab:
    """Maps words to ids: ``0`` is padding (``<pad>``), ``1`` an unknown word (``<unk>``), then
    the known words in the order given (sorted by :meth:`build`, so a vocabulary built from the
    same captions is the same on every machine).

    ``encode(texts)`` returns ``(tokens [N, L] int64, lengths [N] int64)``, padded with 0 on the
    right to the longest caption (or to ``max_len``); an empty caption becomes the single token
    ``<unk>`` so that every sequence has length >= 1.
    """

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        for w in words:
            if not isinstance(w, str) or not w:
                raise ValueError(f"WordVocab words must be non-empty strings, got {w!r}")
        if len(set(words)) != len(words):
            raise ValueError("WordVocab words must be unique")
        if self.PAD in words or self.UNK in words:
            raise ValueError(f"WordVocab words must not contain the reserved {self.PAD!r} / {self.UNK!r}")
        self.itos: List[str] = [self.PAD, self.UNK] + words
        self.stoi: Dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> "WordVocab":
        """The vocabulary of every word in ``texts``, sorted."""
        return cls(sorted({w for t in texts for w in tokenize(t)}))

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordVocab) and other.itos == self.itos

    def __repr__(self) -> str:
        return f"WordVocab({len(self)} ids)"

    def ids(self, text: str) -> List[int]:
        """Token ids of one caption (unknown words -> 1)."""
        return [self.stoi.get(w, 1) for w in tokenize(text)] or [1]

    def encode(self, texts: Sequence[str], max_len: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [N, L] int64, lengths [N] int64)``; ``max_len > 0`` truncates/pads to it."""
        seqs = [self.ids(t) for t in texts]
        if max_len < 0:
            raise ValueError(f"max_len must be >= 0, got {max_len}")
        if max_len:
            seqs = [s[:max_len] for s in seqs]
        width = max_len or max((len(s) for s in seqs), default=1)
        tokens = torch.zeros(len(seqs), width, dtype=torch.int64)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.tensor(s, dtype=torch.int64)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        return tokens, lengths

    def decode(self, tokens: Sequence[int]) -> str:
        """Words of a token sequence, padding dropped."""
        return " ".join(self.itos[int(t)] for t in tokens if int(t) != 0)

    def state_dict(self) -> Dict[str, List[str]]:
        return {"words": self.itos[2:]}

    @classmethod
    def from_state_dict(cls, state: Dict[str, List[str]]) -> "WordVocab":
        return cls(state["words"])
