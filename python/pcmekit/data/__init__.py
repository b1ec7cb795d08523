"""Datasets for demos and tests.

* :mod:`pcmekit.data.digits` -- scikit-learn's bundled 8x8 handwritten digits paired with captions
  generated from facts measured on each image, so the full image x caption plausibility matrix is
  known exactly (needs scikit-learn: ``pip install pcmekit[demo]``).
* :class:`WordVocab` -- a word-level tokenizer / vocabulary for short captions.
"""

from __future__ import annotations

from .vocab import WordVocab

__all__ = ["WordVocab"]
