"""The CUDA side of the bench harness that runs without a GPU: matmul precision modes (every suite
under each mode, pcmekit and torch alike) and % of the GPU's data-sheet peak for the row's mode."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from pcmekit import bench
from pcmekit.bench import BenchConfig, check_precisions, row, run_suites
from pcmekit.bench.gpu_peak import gpu_peak_tflops, peak_kind
from pcmekit.cli import main


def test_each_dtype_and_mode_has_its_peak():
    assert peak_kind("fp32", "highest") == "fp32"
    assert peak_kind("fp32", "high") == "tf32" and peak_kind("fp32", "medium") == "tf32"
    assert peak_kind("fp64", "high") == "fp64" and peak_kind("bf16", "highest") == "bf16"
    assert gpu_peak_tflops("NVIDIA H200", "fp32", "highest") == ("fp32", 67.0)
    assert gpu_peak_tflops("NVIDIA H200", "fp32", "high") == ("tf32", 494.7)
    # The PCIe H100 is matched before the SXM one, whose name is "NVIDIA H100 80GB HBM3".
    assert gpu_peak_tflops("NVIDIA H100 PCIe", "fp32", "highest") == ("fp32", 51.2)
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "fp16", "highest") == ("fp16", 989.5)
    assert gpu_peak_tflops("NVIDIA GeForce GTX 1080", "fp32", "highest") is None
    with pytest.raises(ValueError, match="mode must be one of highest, high, medium; got 'low'"):
        peak_kind("fp32", "low")
    with pytest.raises(ValueError, match="dtype must be fp32, fp64, fp16 or bf16; got 'int8'"):
        peak_kind("int8", "high")


@pytest.mark.parametrize(
    "modes, device, match",
    [
        ((), "cuda", "at least one"),
        (("highest", "fast"), "cuda", "one of highest, high, medium; got 'fast'"),
        (("high", "high"), "cuda", "must not repeat; got high, high"),
        (("highest", "high"), "cpu", "apply to --device cuda; the CPU kernels always compute in full float32"),
    ],
)
def test_bad_precisions_name_what_was_wrong(modes, device, match):
    with pytest.raises(ValueError, match=match):
        check_precisions(modes, device)


def test_the_cli_refuses_tf32_on_the_cpu(capsys):
    assert main(["bench", "peak", "--precision", "highest,high"]) == 2
    assert "apply to --device cuda" in capsys.readouterr().err


@pytest.fixture
def fake_suite(monkeypatch):
    """A suite that records the matmul precision it ran under, as a baseline and a pcmekit row."""
    seen = []

    def run(config):
        seen.append(torch.get_float32_matmul_precision())
        return [row("fake", "case", "pcmekit", 0.001, flops=67e9),
                row("fake", "case", "torch", 0.002, baseline=True, flops=67e9)]

    module = types.ModuleType("pcmekit_fake_suite")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pcmekit_fake_suite", module)
    monkeypatch.setitem(bench.SUITES, "fake", "pcmekit_fake_suite")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    return seen


def test_every_suite_runs_under_each_mode_with_its_own_baseline_and_peak(fake_suite):
    before = torch.get_float32_matmul_precision()
    lines = []
    rows = run_suites(["fake"], BenchConfig(device="cuda", precisions=("highest", "high")), None, echo=lines.append)
    assert fake_suite == ["highest", "high"]
    assert torch.get_float32_matmul_precision() == before
    assert [(r["case"], r["precision"]) for r in rows] == [
        ("case [highest]", "highest"), ("case [highest]", "highest"), ("case [high]", "high"), ("case [high]", "high")]
    assert [r["speedup"] for r in rows] == pytest.approx([2.0, 1.0, 2.0, 1.0])
    # 67 GFLOP in 1 ms is 67 TFLOP/s: the whole FP32 peak of an H200, an eighth-ish of its TF32 one.
    assert rows[0]["pct_peak"] == pytest.approx(100.0)
    assert rows[2]["pct_peak"] == pytest.approx(100.0 * 67.0 / 494.7)
    assert any("data-sheet peak" in line and "TF32 494.7" in line for line in lines)


def test_one_default_mode_leaves_the_cases_as_they_are(fake_suite, monkeypatch):
    rows = run_suites(["fake"], BenchConfig(device="cuda"), None, echo=lambda line: None)
    assert [r["case"] for r in rows] == ["case", "case"] and {r["precision"] for r in rows} == {"highest"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    lines = []
    rows = run_suites(["fake"], BenchConfig(device="cuda"), None, echo=lines.append)
    assert rows[0]["pct_peak"] is None
    assert any("Some GPU is not in pcmekit.bench.gpu_peak's table" in line for line in lines)
