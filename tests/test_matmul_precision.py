"""The float32 matmul precision reaches the core (docs/design.md, "CUDA tensor cores and the
matmul precision"); what each mode computes on CUDA is tested under the emulator
(tests/test_cuda_emu_tc.py)."""

from __future__ import annotations

import pytest
import torch

import pcmekit
from pcmekit import _core

from _helpers import gaussians


@pytest.fixture
def restore_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def precision_codes_seen(monkeypatch, entry: str) -> list:
    """Replaces _core.<entry> by a spy that records the precision code (its last argument)."""
    seen: list = []
    real = getattr(_core, entry)

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(_core, entry, spy)
    return seen


@pytest.mark.parametrize("mode,code", [("highest", 0), ("high", 1), ("medium", 2)])
def test_pairwise_passes_torch_matmul_precision(monkeypatch, restore_precision, mode, code):
    seen = precision_codes_seen(monkeypatch, "pairwise_forward")
    torch.set_float32_matmul_precision(mode)
    a_mu, a_lv = gaussians(5, 7, dtype=torch.float32)
    d = pcmekit.pairwise_distance(a_mu, a_lv, a_mu, a_lv)
    assert seen == [code]
    # The CPU kernels ignore the mode: the same bits in every mode.
    torch.set_float32_matmul_precision("highest")
    assert torch.equal(d, pcmekit.pairwise_distance(a_mu, a_lv, a_mu, a_lv))


@pytest.mark.parametrize("mode,code", [("highest", 0), ("high", 1)])
def test_pairwise_backward_passes_torch_matmul_precision(monkeypatch, restore_precision, mode, code):
    seen = precision_codes_seen(monkeypatch, "pairwise_backward")
    torch.set_float32_matmul_precision(mode)
    a_mu, a_lv = gaussians(5, 7, dtype=torch.float32)
    a_mu.requires_grad_(True)
    pcmekit.pairwise_distance(a_mu, a_lv, a_mu.detach(), a_lv).sum().backward()
    assert seen == [code]


def test_unknown_precision_code_is_refused():
    a = torch.randn(3, 4)
    out = torch.empty(3, 3)
    v = _core.matrix_view
    with pytest.raises(ValueError, match="unknown matmul precision code 7"):
        _core.pairwise_forward(0, v(a), v(a), v(a), v(a), v(out), 1, 0, 7)


@pytest.mark.parametrize("mode,code", [("highest", 0), ("high", 1), ("medium", 2)])
def test_match_prob_passes_torch_matmul_precision(monkeypatch, restore_precision, mode, code):
    forward = precision_codes_seen(monkeypatch, "match_prob_forward")
    backward = precision_codes_seen(monkeypatch, "match_prob_backward")
    torch.set_float32_matmul_precision(mode)
    a_mu, a_lv = gaussians(5, 7, dtype=torch.float32)
    a_mu.requires_grad_(True)
    def run():
        gen = torch.Generator().manual_seed(0)
        return pcmekit.match_logprob(
            a_mu, a_lv, a_mu.detach(), a_lv, scale=2.0, shift=1.0, num_samples=3, generator=gen
        )

    log_p, _ = run()
    log_p.sum().backward()
    assert forward == [code] and backward == [code]
    # The CPU kernels ignore the mode: the same bits in every mode.
    torch.set_float32_matmul_precision("highest")
    assert torch.equal(log_p, run()[0])
