"""The sweep benchmark suite: its grid, its timing loop, its summary, the KeOps contender, and a
--quick run through the CLI.

KeOps compiles each formula (one per D) with g++ the first time it is used, about 15 s each, and
caches it under ``pcmekit.bench._keops.cache_folder()`` (a tmp folder); the first run of this file
on a machine is therefore slower than the next ones.
"""

from __future__ import annotations

import csv
import json
import time

import pytest
import torch

from pcmekit import cli
from pcmekit.bench import BenchConfig, FIELDS, SUITES, _keops, row
from pcmekit.bench import sweep
from pcmekit.bench import topk as topk_suite


def _keops_available() -> bool:
    return _keops.load()[0] is not None


# ---------------------------------------------------------------------------------------------
# The grid.


def test_parse_grid_reads_keys_and_values():
    grid = sweep.parse_grid(["Q=16,1", "n=2000", "D=64,32,64", "op=topk"])
    assert grid == {"Q": [1, 16], "N": [2000], "D": [32, 64], "op": ["topk"]}


@pytest.mark.parametrize(
    "items, message",
    [
        (["Q"], "expected KEY=V1,V2"),
        (["X=1"], "expected KEY=V1,V2"),
        (["sweep"], "expected KEY=V1,V2"),
        (["Q=1,a"], "positive integers, got 'a'"),
        (["D=0"], "positive integers, got 0"),
        (["Q="], "no values"),
        (["Q=1", "q=2"], "given twice"),
        (["op=topk,knn"], "got knn"),
        (["N=5"], "at least k = 10"),
    ],
)
def test_parse_grid_rejects_bad_items(items, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_grid(items)


def test_resolve_grid_replaces_only_the_given_keys():
    full = sweep.resolve_grid(BenchConfig())
    assert full == sweep.FULL_GRID
    quick = sweep.resolve_grid(sweep.SweepConfig(quick=True, grid={"D": [128]}))
    assert quick == {**sweep.QUICK_GRID, "D": [128]}


def test_cells_keep_pairwise_within_memory():
    plan = sweep.cells(sweep.FULL_GRID)
    topk_cells = [c for c in plan if c[0] == "topk"]
    pairwise_cells = [c for c in plan if c[0] == "pairwise"]
    assert len(topk_cells) == 4 * 3 * 5 and len(pairwise_cells) == 4 * 2 * 5
    assert max(c[2] for c in pairwise_cells) == sweep.PAIRWISE_MAX_N
    assert len(set(plan)) == len(plan)


def test_sweep_is_registered_and_its_fields_are_csv_columns():
    assert SUITES["sweep"] == "pcmekit.bench.sweep"
    assert {"op", "q", "n", "d", "repeats", "compile_s"} <= set(FIELDS)


# ---------------------------------------------------------------------------------------------
# Timing.


def test_interleaved_adaptive_times_each_function_at_least_three_times():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.03)

    (t_fast, n_fast), (t_slow, n_slow) = sweep.interleaved_adaptive([fast, slow], [1e-6, 0.03], "cpu", target_s=0.1)
    assert n_slow >= sweep.MIN_SAMPLES and n_fast > n_slow  # the fast one is batched
    assert calls["slow"] == n_slow + 1 and calls["fast"] == n_fast + 1  # + one warm-up each
    assert t_slow >= 0.03 and t_fast < t_slow / 10


def test_estimates_follow_the_slower_of_compute_and_streaming():
    speed = sweep.Speed(gflops=10.0, gbps=1.0)
    compute_bound = sweep.estimate_call_s(speed, "topk", 5000, 16000, 512)
    assert compute_bound == pytest.approx(2 * 5000 * 16000 * 512 / 10e9)
    stream_bound = sweep.estimate_call_s(speed, "topk", 1, 200000, 512)
    assert stream_bound == pytest.approx(2 * 200000 * 512 * 4 / 1e9)
    assert sweep.estimate_measurement_s(10.0, 5000) >= 3 * 10.0  # at least three timed calls


# ---------------------------------------------------------------------------------------------
# Summary.


def _rows(op, q, n, d, times):
    out = []
    for impl, ms in times.items():
        r = row("sweep", f"{op} {q} {n} {d}", impl, ms / 1e3, baseline=impl.startswith("torch"))
        r.update(op=op, q=q, n=n, d=d)
        out.append(r)
    return out


def test_summary_marks_cells_where_pcmekit_is_not_ahead():
    rows = _rows("topk", 1, 2000, 32, {"pcmekit": 1.0, "torch (chunked)": 3.0, "faiss IndexFlatL2": 0.5})
    rows += _rows("topk", 16, 2000, 32, {"pcmekit": 1.0, "torch (chunked)": 2.0, "faiss IndexFlatL2": 4.0})
    rows += _rows("pairwise", 1, 2000, 32, {"pcmekit": 2.0, "torch (GEMM form)": 1.0})
    text = sweep.format_summary(rows)
    lines = text.splitlines()
    behind = [line for line in lines if line.startswith("    1    2000    32")]
    ahead = [line for line in lines if line.startswith("   16    2000    32")]
    assert len(behind) == 2 and all(line.endswith("<") for line in behind)
    assert "0.50x" in behind[0] and "3.00x" in behind[0]
    assert ahead and not ahead[0].endswith("<") and "4.00x" in ahead[0]
    assert "keops" not in text  # no column for a peer that never ran
    assert "pcmekit ahead of every peer in 1 of 2 cells" in text


def test_summary_pairs_faiss_and_keops_with_the_prepared_index_and_torch_with_topk():
    # faiss and KeOps build gallery-side state before the timing, as GalleryIndex does; torch and
    # pcmekit.topk start from raw tensors. Each ratio is against its partner.
    rows = _rows("topk", 1, 2000, 32, {"pcmekit": 2.0, "GalleryIndex (pcmekit, prepared)": 0.5,
                                       "torch (chunked)": 3.0, "faiss IndexFlatL2": 1.0, "keops LazyTensor": 4.0})
    rows += _rows("topk", 16, 2000, 32, {"pcmekit": 1.0, "GalleryIndex (pcmekit, prepared)": 2.0,
                                        "torch (chunked)": 0.5, "faiss IndexFlatL2": 4.0})
    table = sweep._speedups(rows)
    assert table[("topk", 1, 2000, 32)] == {"pcmekit": 2.0, "GalleryIndex": 0.5, "torch": 1.5, "faiss": 2.0, "keops": 8.0}
    assert table[("topk", 16, 2000, 32)]["faiss"] == 2.0 and table[("topk", 16, 2000, 32)]["torch"] == 0.5
    text = sweep.format_summary(rows)
    assert "index ms" in text and "against GalleryIndex" in text
    line = next(x for x in text.splitlines() if x.startswith("    1    2000    32"))
    assert "0.500" in line and not line.endswith("<")
    assert next(x for x in text.splitlines() if x.startswith("   16    2000    32")).endswith("<")  # torch 0.5x
    assert "pcmekit ahead of every peer in 1 of 2 cells" in text


def test_plot_grid_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = []
    for d, ratio in ((32, 0.5), (64, 2.0)):
        rows += _rows("topk", 1, 2000, d, {"pcmekit": 1.0, "torch (chunked)": ratio})
    path = tmp_path / "grid.png"
    assert sweep.plot_grid(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep._ratio_ticks(0.3, 3.0) == [0.5, 1.0, 2.0]  # labels inside one decade too
    assert sweep._ratio_ticks(0.01, 100.0) == [0.01, 0.1, 1.0, 10.0, 100.0]


# ---------------------------------------------------------------------------------------------
# KeOps.


@pytest.mark.skipif(not _keops_available(), reason="pykeops is not installed")
@pytest.mark.parametrize("q", [1, 20])
def test_keops_csd_topk_agrees_with_pcmekit(q):
    inputs = topk_suite.make_inputs(q, 500, 32, seed=3)  # D = 32: the quick sweep's formula
    lazy, _ = _keops.load()
    kcsd = _keops.KeOpsCSD(lazy, inputs[2], inputs[3], topk_suite.K)
    values, indices = kcsd(inputs[0], inputs[1])
    ref_values, ref_indices = topk_suite.ours(*inputs)
    assert indices.dtype == torch.int64 and values.shape == (q, topk_suite.K)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-5)
    topk_suite.check_agreement({"pcmekit": (ref_values, ref_indices), "keops": (values, indices)}, inputs)
    with pytest.raises(ValueError, match="D == gallery D"):
        kcsd(inputs[0][:, :16], inputs[1][:, :16])


def test_keops_cache_is_not_in_the_home_directory(monkeypatch):
    monkeypatch.delenv("KEOPS_CACHE_FOLDER", raising=False)
    monkeypatch.delenv("PCMEKIT_KEOPS_CACHE", raising=False)
    import os
    import tempfile

    folder = _keops.cache_folder()
    assert folder.startswith(tempfile.gettempdir()) and not folder.startswith(os.path.expanduser("~") + os.sep)
    monkeypatch.setenv("PCMEKIT_KEOPS_CACHE", "/some/where")
    assert _keops.cache_folder() == "/some/where"


@pytest.mark.skipif(not _keops_available(), reason="pykeops is not installed")
def test_topk_suite_adds_keops_within_its_budget(monkeypatch):
    inputs = topk_suite.make_inputs(20, 400, 32)
    contenders: dict = {}
    note, _ = topk_suite._add_keops(contenders, inputs, BenchConfig(repeats=1, warmup=0))
    assert "keops LazyTensor" in contenders and "keops formula D=32" in note
    monkeypatch.setattr(topk_suite, "KEOPS_BUDGET_S", 0.0)
    contenders = {}
    note, _ = topk_suite._add_keops(contenders, inputs, BenchConfig(repeats=1, warmup=0))
    assert not contenders and note.startswith("keops skipped")


# ---------------------------------------------------------------------------------------------
# A peer that is missing, fails or is too slow: the sweep goes on and says why.

TINY = {"Q": [4], "N": [2000], "D": [32], "op": ["topk"]}


def _run_tiny(**kwargs):
    rows = sweep.run(sweep.SweepConfig(quick=True, grid=dict(TINY), **kwargs))
    return {r["impl"]: r for r in rows}


def test_sweep_runs_without_keops_and_says_why(monkeypatch):
    monkeypatch.setattr(_keops, "load", lambda: (None, "pykeops not installed (pip install pykeops): test"))
    rows = _run_tiny()
    assert "keops LazyTensor" not in rows and {"pcmekit", "torch (chunked)"} <= set(rows)
    assert "pykeops not installed" in rows["pcmekit"]["notes"]


@pytest.mark.skipif(not _keops_available(), reason="pykeops is not installed")
def test_sweep_drops_a_failing_keops_call_with_the_reason(monkeypatch):
    def broken(self, q_mean, q_logvar):
        raise RuntimeError("formula did not compile")

    monkeypatch.setattr(_keops.KeOpsCSD, "__call__", broken)
    rows = _run_tiny()
    assert "keops LazyTensor" not in rows
    assert "keops failed: RuntimeError: formula did not compile" in rows["pcmekit"]["notes"]


def test_sweep_skips_a_peer_estimated_over_max_call_s_but_never_pcmekit_or_torch(monkeypatch):
    # (pcmekit's GalleryIndex is never skipped either: it is pcmekit)
    peers = [p for p, ok in (("faiss", topk_suite.faiss_module() is not None), ("keops", _keops_available())) if ok]
    if not peers:
        pytest.skip("neither faiss-cpu nor pykeops is installed")
    real = sweep.calibrate

    def all_slow(op, grid, device):
        return {peer: sweep.Speed(gflops=1e-6, gbps=1e-6) for peer in real(op, grid, device)}  # hours per call

    monkeypatch.setattr(sweep, "calibrate", all_slow)
    rows = _run_tiny(max_call_s=5.0)
    assert set(rows) == {"pcmekit", "torch (chunked)", "GalleryIndex (pcmekit, prepared)"}
    notes = rows["pcmekit"]["notes"]
    for peer in peers:
        assert f"{peer} skipped: estimated" in notes and "max_call_s 5" in notes


# ---------------------------------------------------------------------------------------------
# End to end through the CLI.


def test_quick_sweep_through_the_cli_writes_every_output(tmp_path, capsys):
    assert cli.main(["bench", "sweep", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[sweep] 8 cells" in out and "estimated" in out
    assert "sweep summary, top-10 CSD" in out and "sweep summary, CSD matrix" in out
    for name in ("sweep.csv", "sweep.json", "sweep.png", "sweep_grid.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    results = json.loads((tmp_path / "sweep.json").read_text())["results"]
    expected = {"pcmekit", "torch (chunked)", "GalleryIndex (pcmekit, prepared)"}
    if topk_suite.faiss_module() is not None:
        expected.add("faiss IndexFlatL2")
    if _keops_available():
        expected.add("keops LazyTensor")
    for q in sweep.QUICK_GRID["Q"]:
        for d in sweep.QUICK_GRID["D"]:
            cell = [r for r in results if (r["op"], r["q"], r["n"], r["d"]) == ("topk", q, 2000, d)]
            assert {r["impl"] for r in cell} == expected, (q, d)
            assert sum(r["baseline"] for r in cell) == 1
            assert all(r["repeats"] >= sweep.MIN_SAMPLES and r["median_ms"] > 0 for r in cell)
            assert all(r["gflops"] == pytest.approx(2 * q * 2000 * d / (r["median_ms"] * 1e6)) for r in cell)
            pair = [r for r in results if (r["op"], r["q"], r["n"], r["d"]) == ("pairwise", q, 2000, d)]
            assert {r["impl"] for r in pair} == {"pcmekit", "torch (GEMM form)"}
    with open(tmp_path / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(results) and {"q", "n", "d"} <= set(table[0])


def test_cli_grid_restricts_the_sweep(tmp_path, capsys):
    argv = ["bench", "sweep", "--quick", "--grid", "Q=3", "D=32", "op=pairwise", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "sweep.json").read_text())["results"]
    assert {(r["op"], r["q"], r["n"], r["d"]) for r in results} == {("pairwise", 3, 2000, 32)}
    config = json.loads((tmp_path / "sweep.json").read_text())["config"]
    assert config["grid"] == {"Q": [3], "D": [32], "op": ["pairwise"]}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "sweep", "--grid", "Z=1"], "expected KEY=V1,V2"),
        (["bench", "pairwise", "--grid", "Q=1"], "apply to the sweep suite only"),
        (["bench", "sweep", "--max-call-s", "0"], "--max-call-s must be positive"),
    ],
)
def test_cli_rejects_bad_sweep_options(argv, message, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
