"""Helpers shared by the tests: device list, metric list, random inputs."""

from __future__ import annotations

import torch

import pcmekit

DEVICES = ["cpu"] + (["cuda"] if pcmekit.cuda_available() else [])
METRICS = ["csd", "w2", "l2", "kl", "bhattacharyya", "elk"]


def gaussians(n: int, d: int, *, dtype=torch.float64, device="cpu", seed=0, spread=1.0):
    """Random mean [n, d] and logvar [n, d] (log-variances around -1, so variances are O(0.4))."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, d, generator=g, dtype=torch.float64) * spread
    logvar = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    return mean.to(device=device, dtype=dtype), logvar.to(device=device, dtype=dtype)
