"""The CPU kernels' threads (csrc/cpu/parallel.cpp: torch's OpenMP runtime, or pcmekit's own pool)
and run-time SIMD dispatch: results must not depend on the thread count, the executor, concurrent
callers, a fork, or the instruction set."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import pcmekit
from pcmekit.reference import pairwise_distance_naive

from _helpers import gaussians


def _inputs(n=203, m=151, d=67, seed=0, dtype=torch.float32):
    a = gaussians(n, d, dtype=dtype, seed=seed)
    b = gaussians(m, d, dtype=dtype, seed=seed + 1)
    return (*a, *b)


@pytest.fixture
def threads():
    yield pcmekit.set_num_threads
    pcmekit.set_num_threads(None)


def test_results_do_not_depend_on_thread_count(threads):
    inputs = _inputs()
    outs = []
    for n in (1, 2, 3, 7):
        threads(n)
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = pcmekit.pairwise_distance(*leaves, metric="csd")
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        _, top = pcmekit.topk(*inputs, k=5)
        outs.append((out.detach(), *grads, top))
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            # Each element is computed by one thread in a fixed order; only the split of G's
            # column sums into per-thread partials may round differently.
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-5)


def test_concurrent_callers_get_correct_results(threads):
    # Several Python threads in the kernels at once (the GIL is released): one gets the pool,
    # the others fall back to threads of their own; every result must still be right.
    threads(2)
    inputs = [_inputs(seed=s, dtype=torch.float64) for s in range(6)]
    expected = [pairwise_distance_naive(*x, "csd") for x in inputs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = pcmekit.pairwise_distance(*inputs[i], metric="csd")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors and len(results) == len(inputs)
    for i, exp in enumerate(expected):
        torch.testing.assert_close(results[i], exp, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernels_work_in_a_forked_child(threads):
    # The parent's pool threads do not exist in a forked child (DataLoader workers fork): the
    # child must start its own pool rather than wait forever on the parent's.
    threads(2)
    inputs = _inputs(dtype=torch.float64)
    expected = pairwise_distance_naive(*inputs, "csd")
    pcmekit.pairwise_distance(*inputs, metric="csd")  # the parent's pool is running now
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the kernel ran and was right
        code = 1
        try:
            out = pcmekit.pairwise_distance(*inputs, metric="csd")
            code = 0 if torch.allclose(out, expected, rtol=1e-10, atol=1e-10) else 2
        finally:
            os._exit(code)
    for _ in range(600):  # up to 60 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung in the kernel")
    assert os.waitstatus_to_exitcode(status) == 0


_PATH_SCRIPT = """
import json, torch, pcmekit
from pcmekit.reference import pairwise_distance_naive, topk_naive
torch.manual_seed(0)
pcmekit.set_num_threads(3)  # more parts than cores: every worker has work
report = {"simd": pcmekit.build_info()["cpu_simd"], "threads": pcmekit.build_info()["cpu_threading"]}
for dtype in (torch.float32, torch.float64):
    x = [torch.randn(37, 21, dtype=dtype), torch.randn(37, 21, dtype=dtype) * 0.5,
         torch.randn(29, 21, dtype=dtype), torch.randn(29, 21, dtype=dtype) * 0.5]
    leaves = [t.clone().requires_grad_() for t in x]
    ref = [t.double().clone().requires_grad_() for t in x]
    for metric in ("csd", "w2", "kl", "elk"):
        out = pcmekit.pairwise_distance(*leaves, metric=metric)
        exp = pairwise_distance_naive(*ref, metric)
        g = torch.autograd.grad(out, leaves, torch.ones_like(out))
        ge = torch.autograd.grad(exp, ref, torch.ones_like(exp))
        err = max([((out.double() - exp).abs() / (1 + exp.abs())).max().item()]
                  + [((a.double() - b).abs() / (1 + b.abs())).max().item() for a, b in zip(g, ge)])
        report[f"{metric}/{dtype}"] = err
    _, top = pcmekit.topk(*x, k=4, metric="csd")
    _, naive = topk_naive(*[t.double() for t in x], k=4, metric="csd")
    report[f"topk/{dtype}"] = bool(torch.equal(top, naive))
print(json.dumps(report))
"""


def test_threads_run_on_torchs_openmp_runtime():
    # torch's Linux wheels use GNU OpenMP; sharing its threads is the point (parallel.cpp).
    backend = pcmekit.build_info()["cpu_threading"]
    if not torch.__config__.parallel_info().count("OpenMP") or sys.platform != "linux":
        pytest.skip("torch here does not run on OpenMP")
    assert backend.startswith("openmp ("), backend


@pytest.mark.parametrize(
    "capability,threads", [("generic", "pool"), ("avx2", "pool"), ("avx2", "openmp")]
)
def test_every_simd_path_and_executor_matches_the_oracle(capability, threads):
    # PCMEKIT_CPU_CAPABILITY caps the run-time choice, so the portable micro-kernels (and the
    # scalar exp) are checked on this machine too; PCMEKIT_THREADS=pool forces pcmekit's own
    # thread pool. Each in a fresh process.
    import json

    env = dict(os.environ, PCMEKIT_CPU_CAPABILITY=capability)
    env.pop("PCMEKIT_THREADS", None)
    if threads == "pool":
        env["PCMEKIT_THREADS"] = "pool"
    proc = subprocess.run([sys.executable, "-c", _PATH_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if capability == "avx2" and report["simd"] == "generic":
        pytest.skip("this CPU has no AVX2")
    assert report["simd"] == capability
    assert (report["threads"] == "pcmekit pool") == (threads == "pool"), report["threads"]
    for key, value in report.items():
        if key.startswith("topk/"):
            assert value, key
        elif key not in ("simd", "threads"):
            tol = 1e-4 if "float32" in key else 1e-10
            assert value < tol, (key, value)
