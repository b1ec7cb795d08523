"""The README's code for the checkpoint adapters, eccv_caption_eval, pcmekit.zeroshot, the open_clip
drop-in, the frozen-feature adapters and ProLIP's losses runs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(heading: str) -> str:
    text = README.read_text()
    start = text.index("```python", text.index(heading)) + len("```python")
    return text[start:text.index("```", start)]


@pytest.mark.skipif(not README.is_file(), reason="README.md is not next to the tests")
@pytest.mark.parametrize("heading", [
    "#### Model outputs: `ProbEmbedding.from_output",
    "#### ECCV Caption, CxC, COCO 1K/5K in one call",
    "### `pcmekit.zeroshot`",
    "#### open_clip training loops: `losses.OpenCLIPPCMEPPLoss`",
    "### Frozen features: probabilistic adapters",
    "#### ProLIP's losses",
])
def test_readme_block_runs(heading, capsys):
    if "ECCV" in heading:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pytest.importorskip("eccv_caption")
    exec(compile(_block(heading), f"README.md: {heading}", "exec"), {})
    assert capsys.readouterr().out.strip() or "from_output" in heading
