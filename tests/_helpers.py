"""Helpers shared by the tests: device list, metric list, random inputs, the CUDA emulation guard."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import pcmekit

DEVICES = ["cpu"] + (["cuda"] if pcmekit.cuda_available() else [])
METRICS = ["csd", "w2", "l2", "kl", "bhattacharyya", "elk", "inclusion"]
METRIC_CODE = {m: i for i, m in enumerate(METRICS)}  # the core's metric codes
INNER = METRICS[:4]  # the metrics with an inner-product form (the GEMM and tensor-core engines)
# Unit roundoff of the 16-bit storage types.
ROUNDING = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# The core's matmul precision codes (torch.get_float32_matmul_precision()'s three modes).
HIGHEST, HIGH, MEDIUM = 0, 1, 2


def gaussians(n: int, d: int, *, dtype=torch.float64, device="cpu", seed=0, spread=1.0):
    """Random mean [n, d] and logvar [n, d] (log-variances around -1, so variances are O(0.4))."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, d, generator=g, dtype=torch.float64) * spread
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    return mean.to(device=device, dtype=dtype), logvar.to(device=device, dtype=dtype)


def run_under_capabilities(script: str, capabilities=("generic", "avx2")) -> list:
    """Runs ``script`` in a fresh Python once per PCMEKIT_CPU_CAPABILITY value (the SIMD path is
    chosen once per process) and returns what each printed, parsed as JSON."""
    results = []
    for cap in capabilities:
        env = {**os.environ, "PCMEKIT_CPU_CAPABILITY": cap}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(run.stdout))
    return results


def require_cuda_emulation() -> None:
    """Call at the top of a CUDA emulator test module: skips the whole module unless pcmekit is
    the CUDA emulation build (tests/cuemu, ``make cuda-emu``), and with PCMEKIT_REQUIRE_CUEMU=1
    (set by ``make cuda-emu`` and ``make sanitize``) raises instead, so that a wrong build on the
    path cannot pass by skipping everything."""
    if pcmekit.build_info().get("cuda_emulated"):
        return
    if os.environ.get("PCMEKIT_REQUIRE_CUEMU") == "1":
        raise RuntimeError(f"PCMEKIT_REQUIRE_CUEMU=1 but {pcmekit.__file__} is not the emulation build")
    pytest.skip("needs the CUDA emulation build (make cuda-emu)", allow_module_level=True)


def emulated_cuda_view(t):
    """The core's view of CPU tensor ``t``, labelled as CUDA memory: the device of the CUDA
    emulation build (tests/cuemu; None stays None)."""
    from pcmekit import _core

    if t is None:
        return None
    view = list(_core.matrix_view(t))
    view[6] = 1  # device code: CUDA
    return tuple(view)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| in float64 (the absolute error when ref is all zero; 0 for
    empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    scale = ref.abs().max().item()
    return (got.double() - ref.double()).abs().max().item() / (scale if scale > 0 else 1.0)


def leave_process_group() -> None:
    """Ends a test worker's torch.distributed group with both ranks in step: a rank that tears
    gloo down while its peer still finishes the last collective aborts the peer ("terminate
    called without an active exception", about half the runs of the two-rank tests)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def tc_magnitude(metric, a_mu, a_lv, b_mu, b_lv):
    """|alpha| * sum_d |f_a,d| |f_b,d|: the size of the inner product the tensor cores compute for
    csd / w2 / l2 / kl (docs/design.md, "Precision convention"), float64 [N, M]."""
    am, al, bm, bl = (t.double() for t in (a_mu, a_lv, b_mu, b_lv))
    if metric == "kl":
        va, vb = al.exp(), bl.exp()
        return (va + am**2) @ (0.5 / vb).T + am.abs() @ (bm.abs() / vb).T
    mag = am.abs() @ bm.abs().T
    if metric == "w2":
        mag = mag + (0.5 * al).exp() @ (0.5 * bl).exp().T
    return 2.0 * mag


def float_bound(ref, d):
    """The float32 bound of the direct engine: 2e-6 sqrt(D) of max|ref|."""
    return 2e-6 * math.sqrt(max(d, 1)) * (ref.abs().max().item() if ref.numel() else 0.0)
