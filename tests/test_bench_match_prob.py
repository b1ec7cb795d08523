"""The match_prob benchmark suite's top-k case: its agreement check, its KeOps contender
(:class:`pcmekit.bench._keops.KeOpsMatchProb`) and the rows it writes.

KeOps compiles its formula (one per D, J and k) with g++ on first use, about 10-25 s, and caches
it under ``pcmekit.bench._keops.cache_folder()``; the tests keep to one small formula.
"""

from __future__ import annotations

import pytest
import torch

from pcmekit.bench import BenchConfig, _keops
from pcmekit.bench import match_prob as suite

J, D = 2, 8  # the formula these tests compile: J^2 = 4 terms


def _keops_available() -> bool:
    return _keops.load()[0] is not None


def _inputs(q: int, n: int, seed: int = 0):
    return suite.make_inputs(q, n, D, J, "cpu", seed=seed)


def _ours(inputs, k):
    return suite._topk_ours(*inputs, k=k)


def test_agreement_accepts_equal_results_and_reports_identical_indices():
    inputs = _inputs(5, 60)
    ours = _ours(inputs, 4)
    base = suite._topk_base(*inputs, k=4)
    note = suite.check_topk_agreement({"pcmekit": ours, "torch": base}, inputs)
    assert "torch: 100.0% identical indices" in note


def test_agreement_refuses_values_that_are_not_the_pairs_probabilities():
    inputs = _inputs(5, 60)
    values, indices = _ours(inputs, 4)
    wrong = values.clone()
    wrong[2, 1] *= 1.01
    with pytest.raises(AssertionError, match="values differ from the float64 match probability"):
        suite.check_topk_agreement({"pcmekit": (wrong, indices)}, inputs)


def test_agreement_refuses_a_worse_set_of_pairs_and_repeated_items():
    inputs = _inputs(5, 60)
    values, indices = _ours(inputs, 4)
    # The k least probable items instead: their own probabilities are right, but not the best.
    worst = suite._true_match_prob(inputs, torch.arange(56, 60).repeat(5, 1))
    with pytest.raises(AssertionError, match="found pairs whose float64 probabilities differ"):
        suite.check_topk_agreement({"pcmekit": (values, indices),
                                    "bad": (worst.float(), torch.arange(56, 60).repeat(5, 1))}, inputs)
    twice = indices.clone()
    twice[0, 1] = twice[0, 0]
    with pytest.raises(AssertionError, match="returned a gallery item twice"):
        suite.check_topk_agreement({"pcmekit": (values, twice)}, inputs)


def test_keops_match_prob_checks_shapes():
    inputs = _inputs(3, 20)
    _, _, bm, bl, _, eb = inputs
    with pytest.raises(ValueError, match=r"eps_g must have shape \[N, J, D\]"):
        _keops.KeOpsMatchProb(None, bm, bl, eb[:5], 3, suite.SCALE, suite.SHIFT)
    with pytest.raises(ValueError, match=r"k must be in \[1, N=20\]"):
        _keops.KeOpsMatchProb(None, bm, bl, eb, 21, suite.SCALE, suite.SHIFT)


def test_formula_names_tell_the_formulas_apart():
    assert _keops.formula_name((64, "torch.float32", "cpu", 10)) == "keops formula D=64"
    assert _keops.formula_name((64, "torch.float32", "cpu", 10, "match_prob J=7")) == "keops formula match_prob J=7 D=64"


@pytest.mark.skipif(not _keops_available(), reason="pykeops is not installed")
def test_keops_match_prob_topk_agrees_with_pcmekit():
    inputs = _inputs(6, 300, seed=2)
    am, al, bm, bl, ea, eb = inputs
    lazy, _ = _keops.load()
    kmp = _keops.KeOpsMatchProb(lazy, bm, bl, eb, 5, suite.SCALE, suite.SHIFT)
    values, indices = kmp(am, al, ea)
    ref_values, ref_indices = _ours(inputs, 5)
    assert indices.dtype == torch.int64 and values.shape == (6, 5)
    assert (values[:, :-1] >= values[:, 1:]).all()  # descending, like pcmekit.topk
    torch.testing.assert_close(values, ref_values, rtol=1e-4, atol=1e-12)
    suite.check_topk_agreement({"pcmekit": (ref_values, ref_indices), "keops": (values, indices)}, inputs)
    with pytest.raises(ValueError, match=r"eps_q must have shape \[Q, J, D\]"):
        kmp(am, al, ea[:, :1])


def test_topk_case_rows_without_keops(monkeypatch):
    monkeypatch.setattr(_keops, "load", lambda: (None, "pykeops not installed (pip install pykeops): test"))
    monkeypatch.setattr(suite, "J", J)
    rows = suite._topk_case(BenchConfig(quick=True, repeats=1, warmup=0), 4, 50, D)
    by_impl = {r["impl"]: r for r in rows}
    assert set(by_impl) == {"pcmekit", "torch (chunked)"}
    assert by_impl["torch (chunked)"]["baseline"] and not by_impl["pcmekit"]["baseline"]
    assert rows[0]["case"] == f"top-10 match_prob Q=4 N=50 D={D} J={J} fp32"
    assert "pykeops not installed" in by_impl["pcmekit"]["notes"]
    assert all(r["median_ms"] > 0 and r["queries_per_s"] > 0 for r in rows)


@pytest.mark.skipif(not _keops_available(), reason="pykeops is not installed")
def test_topk_case_adds_keops_within_its_budget(monkeypatch):
    monkeypatch.setattr(suite, "J", J)
    inputs = suite.make_inputs(8, 300, D, J, "cpu")
    contenders: dict = {}
    note, _ = suite._add_keops(contenders, inputs, 10, BenchConfig(repeats=1, warmup=0))
    assert "keops LazyTensor" in contenders and f"keops formula match_prob J={J} D={D}" in note
    monkeypatch.setattr(suite, "KEOPS_BUDGET_S", 0.0)
    contenders = {}
    note, _ = suite._add_keops(contenders, inputs, 10, BenchConfig(repeats=1, warmup=0))
    assert not contenders and note.startswith("keops skipped")
