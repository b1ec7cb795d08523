"""Helpers shared by the tests: device list, metric list, random inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import pcmekit

DEVICES = ["cpu"] + (["cuda"] if pcmekit.cuda_available() else [])
METRICS = ["csd", "w2", "l2", "kl", "bhattacharyya", "elk", "inclusion"]


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


def emulated_cuda_view(t):
    """The core's view of CPU tensor ``t``, labelled as CUDA memory: the device of the CUDA
    emulation build (tests/cuemu; None stays None)."""
    from pcmekit import _core

    if t is None:
        return None
    view = list(_core.matrix_view(t))
    view[6] = 1  # device code: CUDA
    return tuple(view)


def leave_process_group() -> None:
    """Ends a test worker's torch.distributed group with both ranks in step: a rank that tears
    gloo down while its peer still finishes the last collective aborts the peer ("terminate
    called without an active exception", about half the runs of the two-rank tests)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
