"""The topk benchmark suite's own logic: the faiss reduction of CSD and the agreement check."""

from __future__ import annotations

import pytest
import torch

from pcmekit.bench import format_table, row
from pcmekit.bench import topk as suite


def test_agreement_check_accepts_correct_and_rejects_wrong_results():
    inputs = suite.make_inputs(40, 300, 16)
    with torch.no_grad():
        ours = suite.ours(*inputs)
        base = suite.baseline(*inputs)
    note = suite.check_agreement({"pcmekit": ours, "torch": base}, inputs)
    assert "checked on 40 queries" in note
    wrong_indices = ours[1].clone()
    wrong_indices[:, -1] = (wrong_indices[:, -1] + 1) % 300  # a non-neighbour in last place
    with pytest.raises(AssertionError):
        suite.check_agreement({"pcmekit": ours, "wrong": (ours[0], wrong_indices)}, inputs)
    with pytest.raises(AssertionError, match="duplicate"):
        suite.check_agreement({"dup": (ours[0], ours[1][:, :1].expand(-1, suite.K))}, inputs)


def test_faiss_l2_reduction_is_csd():
    faiss = suite.faiss_module()
    if faiss is None:
        pytest.skip("faiss-cpu is not installed")
    qm, ql, gm, gl = suite.make_inputs(30, 500, 16)
    values, indices = suite.FaissCSD(faiss, gm, gl)(qm, ql)
    ref_values, ref_indices = suite.ours(qm, ql, gm, gl)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)
    suite.check_agreement({"pcmekit": (ref_values, ref_indices), "faiss": (values, indices)}, (qm, ql, gm, gl))


def test_table_shows_queries_per_second_when_present():
    table = format_table([row("topk", "c", "pcmekit", 0.5, queries_per_s=1000.0, flops=1e9)])
    assert "queries/s" in table.splitlines()[0] and "1000" in table
    assert "queries/s" not in format_table([row("pairwise", "c", "pcmekit", 0.5)])
