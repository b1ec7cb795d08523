"""Measured errors of the CUDA BCE under the emulator (docs/design.md, "The BCE on CUDA").

Usage (after make cuda-emu-build):
    PYTHONPATH=build/cuda-emu/site .venv/bin/python scripts/cuda_emu_bce_errors.py

Prints, for the BCE pass over tests/test_cuda_emu_bce.py's shapes, the worst errors of the
three scalars (against the sums of their terms' magnitudes) and of the gradient (against
max|ref|), against float64 and against the CPU back end; then pairwise_bce end to end at
65 x 70 x 33 under highest (0) and high (1).
"""
import pathlib
import sys

import torch
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import test_cuda_emu_bce as T  # noqa: E402 (after the path)
from pcmekit.reference import pairwise_distance_naive
for dtype in T.DTYPES:
    worst = [0.0]*4; worst_cpu=[0.0]*4
    for shape in T.SHAPES:
        for soft in (False, True):
            for mean in (True, False):
                d = T.distances(*shape, dtype); tg = T.soft_target(*shape, dtype) if soft else None
                got, g = T.run_cuda(d, tg, 4.5, 5.5, mean)
                ref, rg, mags = T.reference(d, tg, 4.5, 5.5, mean)
                for k in range(3): worst[k] = max(worst[k], abs(got[k].item()-ref[k].item())/mags[k])
                worst[3] = max(worst[3], T.rel_err(g, rg))
                if dtype in (torch.float32, torch.float64):
                    c, cg = T.run_cpu(d, tg, 4.5, 5.5, mean)
                    for k in range(3): worst_cpu[k] = max(worst_cpu[k], abs(got[k].item()-c[k].item())/mags[k])
                    worst_cpu[3] = max(worst_cpu[3], T.rel_err(g, cg))
    print("distance_bce", dtype, "vs f64 (loss, gscale, gshift, grad):", ["%.2g" % x for x in worst], "vs CPU:", ["%.2g" % x for x in worst_cpu])
for metric in T.INNER:
    for dtype in T.DTYPES:
        row = []
        for prec in (0, 1):
            n, m, dim = 65, 70, 33
            args = T.gauss(n, m, dim, dtype, seed=13)
            ref_d = pairwise_distance_naive(*[t.double() for t in args], metric)
            s, t = T.logit_params(ref_d)
            got, g = T.run_pairwise_bce(metric, args, None, s, t, True, prec)
            ref, rg, mags = T.reference(ref_d, None, s, t, True)
            row.append("p%d loss %.2g gscale %.2g gshift %.2g grad %.2g" % (prec, *[abs(got[k].item()-ref[k].item())/mags[k] for k in range(3)], T.rel_err(g, rg)))
        print("pairwise_bce", metric, dtype, " | ".join(row))
