"""The CUDA back end, run on the CPU by the emulator (tests/cuemu, docs/design.md "CUDA emulator").

Only the emulation build (``make cuda-emu``: ``build_info()["cuda_emulated"]``) runs these; other
builds skip them, and with PCMEKIT_REQUIRE_CUEMU=1 (set by ``make cuda-emu``) a missing emulation
build is an error instead. The compiled core's functions are called directly with views whose
device is CUDA but whose memory is CPU memory, so every launch goes through the real dispatch
(core front end -> csrc/cuda/*.cu -> kernels) and the launch-check macro.

Every result is compared with the float64 reference (pcmekit.reference) and, where the CPU back
end computes the same thing, with the CPU back end. Tolerance policy (docs/design.md,
"Tolerances"): an error is measured against the magnitude of the whole result tensor,
``max|got - ref| <= tol * max|ref|``, never element by element:
  * float64: 1e-12;
  * float32, and float16/bfloat16 inputs (computed in float32, distances returned in float32):
    2e-6 * sqrt(summed terms), and never worse than twice the CPU back end's own error;
  * gradients stored in float16/bfloat16: the format's rounding (2^-11, 2^-8) on top.
"""

from __future__ import annotations

import math

import pytest
import torch

import pcmekit
from pcmekit import _C, _core
from pcmekit.reference import match_logprob_naive, pairwise_distance_naive

from _helpers import (
    METRICS,
    METRIC_CODE,
    ROUNDING,
    emulated_cuda_view,
    gaussians,
    rel_err,
    require_cuda_emulation,
)

require_cuda_emulation()


cu = emulated_cuda_view


def cpu(t: torch.Tensor | None):
    return _core.matrix_view(t)


def tol(dtype: torch.dtype, terms: int) -> float:
    if dtype == torch.float64:
        return 1e-12
    return 2e-6 * math.sqrt(max(terms, 1))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def inputs(n: int, m: int, d: int, dtype: torch.dtype, seed: int = 0):
    a_mu, a_lv = gaussians(n, d, seed=seed)
    b_mu, b_lv = gaussians(m, d, seed=seed + 1)
    return [t.to(dtype) for t in (a_mu, a_lv, b_mu, b_lv)]


# ---------------------------------------------------------------------------------------------
# pairwise


def run_pairwise(metric: str, a_mu, a_lv, b_mu, b_lv, device: str = "cuda", out=None):
    view = cu if device == "cuda" else cpu
    if out is None:
        out = torch.full((a_mu.shape[0], b_mu.shape[0]), float("nan"), dtype=acc_dtype(a_mu.dtype))
    lv = (lambda t: None) if metric == "l2" else (lambda t: view(t))
    _C.pairwise_forward(METRIC_CODE[metric], view(a_mu), lv(a_lv), view(b_mu), lv(b_lv), view(out), 1, 0)
    return out


SHAPES = [(1, 1, 1), (3, 17, 5), (65, 257, 33), (1030, 70, 17), (64, 64, 64), (40, 70, 512), (7, 5, 0)]
# The CUDA error may exceed the CPU back end's by this much of the magnitude (about an ulp).
SLACK = {torch.float32: 1e-7, torch.float64: 1e-15}


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pairwise_forward(metric, dtype, shape):
    n, m, d = shape
    a_mu, a_lv, b_mu, b_lv = inputs(n, m, d, dtype)
    got = run_pairwise(metric, a_mu, a_lv, b_mu, b_lv)
    ref = pairwise_distance_naive(a_mu.double(), a_lv.double(), b_mu.double(), b_lv.double(), metric)
    assert got.dtype == acc_dtype(dtype)
    err = rel_err(got, ref)
    assert err <= tol(dtype, d), f"{metric} {dtype} {shape}: error {err:.3g}"
    if dtype in (torch.float32, torch.float64):
        cpu_err = rel_err(run_pairwise(metric, a_mu, a_lv, b_mu, b_lv, device="cpu"), ref)
        assert err <= 2 * cpu_err + SLACK[dtype], f"CUDA error {err:.3g} vs the CPU's {cpu_err:.3g}"


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_forward_float32_near_duplicates(metric):
    """Distances far below the norms (near-duplicate embeddings): the inner-product form of the
    CPU cancels here, and the CUDA engine must be no less accurate."""
    a_mu, a_lv = gaussians(40, 64, seed=3, spread=30.0)
    b_mu = torch.cat([a_mu[:20] + 1e-3 * torch.randn(20, 64, dtype=torch.float64), gaussians(13, 64, seed=4)[0]])
    b_lv = torch.cat([a_lv[:20], gaussians(13, 64, seed=4)[1]])
    ref = pairwise_distance_naive(a_mu, a_lv, b_mu, b_lv, metric)
    f32 = [t.float() for t in (a_mu, a_lv, b_mu, b_lv)]
    # Against the float64 reference on the float32-rounded inputs: only the kernel's error counts.
    ref32 = pairwise_distance_naive(*[t.double() for t in f32], metric)
    got = run_pairwise(metric, *f32)
    on_cpu = run_pairwise(metric, *f32, device="cpu")
    err, cpu_err = rel_err(got, ref32), rel_err(on_cpu, ref32)
    assert err <= max(2 * cpu_err, 1e-6), (err, cpu_err)
    assert ref.shape == got.shape


def test_pairwise_forward_strided_inputs_and_output():
    a_mu, a_lv, b_mu, b_lv = inputs(37, 70, 48, torch.float32, seed=5)
    # Transposed storage for the a side, every other column for the b side, a transposed output.
    a_mu_t, a_lv_t = a_mu.t().contiguous().t(), a_lv.t().contiguous().t()
    b_mu_s = torch.stack([b_mu, torch.zeros_like(b_mu)], dim=2).reshape(70, 96)[:, ::2]
    b_lv_s = torch.stack([b_lv, torch.zeros_like(b_lv)], dim=2).reshape(70, 96)[:, ::2]
    out = torch.full((70, 37), float("nan")).t()
    assert not a_mu_t.is_contiguous() and not b_mu_s.is_contiguous() and not out.is_contiguous()
    for metric in METRICS:
        got = run_pairwise(metric, a_mu_t, a_lv_t, b_mu_s, b_lv_s, out=out)
        ref = pairwise_distance_naive(a_mu.double(), a_lv.double(), b_mu.double(), b_lv.double(), metric)
        assert rel_err(got, ref) <= tol(torch.float32, 48), metric


def reference_grads(metric, a_mu, a_lv, b_mu, b_lv, grad_out):
    leaves = [t.detach().double().requires_grad_(True) for t in (a_mu, a_lv, b_mu, b_lv)]
    ref = pairwise_distance_naive(*leaves, metric)
    grads = torch.autograd.grad(ref, leaves, grad_out.double(), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


def run_pairwise_backward(metric, grad_out, a_mu, a_lv, b_mu, b_lv, device="cuda", want=(True, True, True, True)):
    view = cu if device == "cuda" else cpu
    outs = [torch.full_like(t, float("nan")) if w else None for t, w in zip((a_mu, a_lv, b_mu, b_lv), want)]
    lv = (lambda t: None) if metric == "l2" else view
    _C.pairwise_backward(
        METRIC_CODE[metric], view(grad_out), view(a_mu), lv(a_lv), view(b_mu), lv(b_lv),
        *[view(o) for o in outs], 1, 0,
    )
    return outs


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 5), (65, 130, 70), (7, 5, 0), (0, 4, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_pairwise_backward(metric, dtype, shape):
    n, m, d = shape
    a_mu, a_lv, b_mu, b_lv = inputs(n, m, d, dtype, seed=7)
    grad_out = torch.randn(n, m, dtype=torch.float64, generator=torch.Generator().manual_seed(8)).to(acc_dtype(dtype))
    got = run_pairwise_backward(metric, grad_out, a_mu, a_lv, b_mu, b_lv)
    refs = reference_grads(metric, a_mu, a_lv, b_mu, b_lv, grad_out)
    if metric == "l2":
        refs[1] = torch.zeros_like(refs[1])
        refs[3] = torch.zeros_like(refs[3])
    for name, g, r, other in zip(("a_mean", "a_logvar", "b_mean", "b_logvar"), got, refs, (m, m, n, n)):
        assert g.dtype == dtype
        bound = tol(dtype, other) + 2 * ROUNDING.get(dtype, 0.0)
        err = rel_err(g, r)
        assert err <= bound, f"{metric} {dtype} {shape} grad {name}: error {err:.3g} > {bound:.3g}"


def test_pairwise_backward_one_side_only():
    a_mu, a_lv, b_mu, b_lv = inputs(20, 33, 9, torch.float64, seed=9)
    grad_out = torch.randn(20, 33, dtype=torch.float64)
    refs = reference_grads("csd", a_mu, a_lv, b_mu, b_lv, grad_out)
    got = run_pairwise_backward("csd", grad_out, a_mu, a_lv, b_mu, b_lv, want=(False, True, True, False))
    assert got[0] is None and got[3] is None
    assert rel_err(got[1], refs[1]) <= 1e-12 and rel_err(got[2], refs[2]) <= 1e-12


def test_pairwise_backward_matches_cpu_backend():
    a_mu, a_lv, b_mu, b_lv = inputs(45, 80, 40, torch.float32, seed=10)
    grad_out = torch.randn(45, 80)
    for metric in METRICS:
        refs = reference_grads(metric, a_mu, a_lv, b_mu, b_lv, grad_out)
        on_gpu = run_pairwise_backward(metric, grad_out, a_mu, a_lv, b_mu, b_lv)
        on_cpu = run_pairwise_backward(metric, grad_out, a_mu, a_lv, b_mu, b_lv, device="cpu")
        for g, c, r in zip(on_gpu, on_cpu, refs):
            if metric == "l2" and r.abs().max() == 0:
                continue
            assert rel_err(g, r) <= 2 * rel_err(c, r) + 1e-6, metric


# ---------------------------------------------------------------------------------------------
# match_prob


def match_inputs(n, m, d, j, dtype, seed=0):
    a_mu, a_lv, b_mu, b_lv = inputs(n, m, d, dtype, seed)
    g = torch.Generator().manual_seed(seed + 100)
    eps_a = torch.randn(n * j, d, generator=g, dtype=torch.float64).to(dtype)
    eps_b = torch.randn(m * j, d, generator=g, dtype=torch.float64).to(dtype)
    return a_mu, a_lv, b_mu, b_lv, eps_a, eps_b


def run_match_forward(args, j, scale, shift, squared, device="cuda"):
    view = cu if device == "cuda" else cpu
    a_mu = args[0]
    log_p = torch.full((a_mu.shape[0], args[2].shape[0]), float("nan"), dtype=a_mu.dtype)
    log_q = torch.full_like(log_p, float("nan"))
    _C.match_prob_forward(*[view(t) for t in args], j, scale, shift, squared, view(log_p), view(log_q), 1, 0)
    return log_p, log_q


def match_reference(args, j, scale, shift, squared):
    a_mu, a_lv, b_mu, b_lv, eps_a, eps_b = [t.double() for t in args]
    d = a_mu.shape[1]
    return match_logprob_naive(
        a_mu, a_lv, b_mu, b_lv, eps_a.reshape(a_mu.shape[0], j, d), eps_b.reshape(b_mu.shape[0], j, d), scale, shift,
        squared,
    )


MATCH_CASES = [(1, 1, 1, 1), (3, 17, 5, 7), (9, 33, 19, 9), (17, 65, 40, 2), (4, 3, 0, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", MATCH_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("squared", [False, True])
def test_match_prob_forward(dtype, case, squared):
    n, m, d, j = case
    args = match_inputs(n, m, d, j, dtype, seed=11)
    scale, shift = (0.3, 1.5) if squared else (2.0, 4.0)
    log_p, log_q = run_match_forward(args, j, scale, shift, squared)
    ref_p, ref_q = match_reference(args, j, scale, shift, squared)
    bound = 1e-12 if dtype == torch.float64 else 2e-5
    assert (log_p.double() - ref_p).abs().max().item() <= bound * max(1.0, ref_p.abs().max().item())
    assert (log_q.double() - ref_q).abs().max().item() <= bound * max(1.0, ref_q.abs().max().item())
    cpu_p, _ = run_match_forward(args, j, scale, shift, squared, device="cpu")
    assert (log_p - cpu_p).abs().max().item() <= 2 * bound * max(1.0, ref_p.abs().max().item())


def run_match_backward(args, j, scale, shift, squared, grad_p, grad_q, device="cuda", want_scalars=True):
    view = cu if device == "cuda" else cpu
    log_p, log_q = run_match_forward(args, j, scale, shift, squared, device)
    outs = [torch.full_like(t, float("nan")) for t in args[:4]]
    gss = torch.full((1, 2), float("nan"), dtype=args[0].dtype) if want_scalars else None
    _C.match_prob_backward(
        view(grad_p), view(grad_q), view(log_p), view(log_q), *[view(t) for t in args], j, scale, shift, squared,
        *[view(o) for o in outs], view(gss), 1, 0,
    )
    return outs, gss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [(1, 1, 1, 1), (3, 17, 5, 7), (9, 33, 19, 9), (4, 3, 0, 3)],
                         ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("squared", [False, True])
def test_match_prob_backward(dtype, case, squared):
    n, m, d, j = case
    args = match_inputs(n, m, d, j, dtype, seed=12)
    scale, shift = (0.3, 1.5) if squared else (2.0, 4.0)
    g = torch.Generator().manual_seed(13)
    grad_p = torch.randn(n, m, generator=g, dtype=torch.float64).to(dtype)
    grad_q = torch.randn(n, m, generator=g, dtype=torch.float64).to(dtype)
    outs, gss = run_match_backward(args, j, scale, shift, squared, grad_p, grad_q)

    leaves = [t.detach().double().requires_grad_(True) for t in args[:4]]
    sc = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    sh = torch.tensor(shift, dtype=torch.float64, requires_grad=True)
    ref_p, ref_q = match_reference([*leaves, args[4], args[5]], j, sc, sh, squared)
    ref = torch.autograd.grad(
        (ref_p * grad_p.double()).sum() + (ref_q * grad_q.double()).sum(), [*leaves, sc, sh], allow_unused=True
    )
    bound = 1e-11 if dtype == torch.float64 else 5e-5
    for name, got, want in zip(("a_mean", "a_logvar", "b_mean", "b_logvar"), outs, ref[:4]):
        want = torch.zeros_like(got, dtype=torch.float64) if want is None else want
        assert rel_err(got, want) <= bound, name
    scalars = torch.stack([ref[4], ref[5]]).reshape(1, 2)
    assert rel_err(gss, scalars) <= bound


def test_match_prob_backward_without_scalar_gradient():
    args = match_inputs(5, 40, 12, 4, torch.float64, seed=14)
    grad_p = torch.randn(5, 40, dtype=torch.float64)
    on_gpu, none = run_match_backward(args, 4, 1.0, 2.0, False, grad_p, None, want_scalars=False)
    on_cpu, _ = run_match_backward(args, 4, 1.0, 2.0, False, grad_p, None, device="cpu", want_scalars=False)
    assert none is None
    for g, c in zip(on_gpu, on_cpu):
        assert rel_err(g, c) <= 1e-12


# ---------------------------------------------------------------------------------------------
# topk


def run_topk(q_mu, q_lv, g_mu, g_lv, k, metric="csd", device="cuda", match=None):
    view = cu if device == "cuda" else cpu
    score = 1 if metric == "match_prob" else 0
    code = 0 if metric == "match_prob" else METRIC_CODE[metric]
    lv = (lambda t: None) if metric == "l2" else view
    eps_q, eps_g, j, scale, shift = match if match is not None else (None, None, 1, 1.0, 0.0)
    values = torch.full((q_mu.shape[0], k), float("nan"), dtype=acc_dtype(q_mu.dtype))
    indices = torch.full((q_mu.shape[0], k), -1, dtype=torch.int64)
    ws_bytes = 0
    if device == "cuda":
        ws_bytes = _C.topk_workspace_bytes(score, code, view(q_mu), lv(q_lv), view(g_mu), lv(g_lv), j, k)
    workspace = torch.empty(max(ws_bytes, 1), dtype=torch.uint8)
    _C.topk(
        score, code, view(q_mu), lv(q_lv), view(g_mu), lv(g_lv), view(eps_q), view(eps_g), j, scale, shift, False, k,
        view(values), view(indices), workspace.data_ptr() if ws_bytes else 0, ws_bytes, 1, 0,
    )
    return values, indices


def check_topk(values, indices, scores, descending, bound):
    """Values are the k best of `scores` (to `bound` of the magnitude), indices are distinct and
    each one's score is its value; ties (equal reference scores) are ordered by index."""
    q, k = values.shape
    ref_vals, ref_idx = torch.sort(scores, dim=1, descending=descending, stable=True)
    scale = max(1.0, scores.abs().max().item())
    assert (values.double() - ref_vals[:, :k]).abs().max().item() <= bound * scale
    for row in range(q):
        assert len(set(indices[row].tolist())) == k
        assert (scores[row, indices[row]] - values[row].double()).abs().max().item() <= bound * scale


@pytest.mark.parametrize("metric", ["csd", "l2", "kl", "elk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("qnk", [(3, 65, 1), (3, 65, 65), (2, 1500, 1024), (5, 300, 17)], ids=lambda c: "x".join(map(str, c)))
def test_topk_distances(metric, dtype, qnk):
    q, n, k = qnk
    q_mu, q_lv, g_mu, g_lv = inputs(q, n, 24, dtype, seed=15)
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, k, metric)
    scores = pairwise_distance_naive(q_mu.double(), q_lv.double(), g_mu.double(), g_lv.double(), metric)
    check_topk(values, indices, scores, False, tol(dtype, 24))
    if dtype == torch.float64:
        exact_vals, exact_idx = run_topk(q_mu, q_lv, g_mu, g_lv, k, metric, device="cpu")
        assert torch.equal(indices, exact_idx)


def test_topk_crosses_gallery_chunks():
    # 8192 gallery rows per score tile: the running lists must carry across tiles.
    q_mu, q_lv, g_mu, g_lv = inputs(2, 8300, 3, torch.float64, seed=16)
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, 40, "csd")
    cpu_values, cpu_indices = run_topk(q_mu, q_lv, g_mu, g_lv, 40, "csd", device="cpu")
    assert torch.equal(indices, cpu_indices)
    assert (values - cpu_values).abs().max().item() <= 1e-12 * cpu_values.abs().max().item()


def test_topk_ties_go_to_the_lower_index():
    q_mu, q_lv, g_mu, g_lv = inputs(4, 30, 6, torch.float32, seed=17)
    # Gallery rows 30..89 repeat rows 0..29 twice: each score appears three times, bit for bit.
    g_mu, g_lv = g_mu.repeat(3, 1), g_lv.repeat(3, 1)
    for k in (1, 7, 90):
        values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, k, "csd")
        for row in range(4):
            got = indices[row].tolist()
            for pos, idx in enumerate(got):
                # Every copy of a gallery row with a lower index than a chosen copy is chosen
                # before it, so the copies of one row appear in increasing index order.
                earlier = [c for c in (idx - 30, idx - 60) if c >= 0]
                for c in earlier:
                    assert c in got[:pos], (k, row, got)


def test_topk_nan_and_inf_scores_rank_last():
    q_mu, q_lv, g_mu, g_lv = inputs(2, 20, 5, torch.float32, seed=18)
    g_mu[3, 0] = float("inf")
    g_mu[7, 1] = float("nan")
    g_mu[11, 2] = float("nan")
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, 20, "csd")
    for row in range(2):
        assert indices[row, -2:].tolist() == [7, 11]  # NaN after +inf, by index
        assert torch.isnan(values[row, -2:]).all()
        assert indices[row, -3].item() == 3 and values[row, -3].item() == float("inf")
        finite = values[row, :-3]
        assert torch.all(finite[1:] >= finite[:-1])


def test_topk_empty_and_zero_dim():
    q_mu, q_lv, g_mu, g_lv = inputs(0, 10, 4, torch.float32)
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, 3)
    assert values.shape == (0, 3)
    q_mu, q_lv, g_mu, g_lv = inputs(3, 10, 0, torch.float32)
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, 4)
    assert indices.tolist() == [[0, 1, 2, 3]] * 3  # all scores equal: the lowest indices
    assert torch.all(values == 0)


def test_topk_k_above_the_cuda_limit_is_refused():
    q_mu, q_lv, g_mu, g_lv = inputs(1, 1100, 2, torch.float32)
    with pytest.raises(ValueError, match="1024"):
        run_topk(q_mu, q_lv, g_mu, g_lv, 1025)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("qnk", [(3, 40, 1), (2, 70, 70), (4, 33, 9)], ids=lambda c: "x".join(map(str, c)))
def test_topk_match_prob(dtype, qnk):
    q, n, k = qnk
    j = 3
    q_mu, q_lv, g_mu, g_lv, eps_q, eps_g = match_inputs(q, n, 8, j, dtype, seed=19)
    values, indices = run_topk(q_mu, q_lv, g_mu, g_lv, k, "match_prob", match=(eps_q, eps_g, j, 0.5, 1.0))
    log_p, _ = match_reference((q_mu, q_lv, g_mu, g_lv, eps_q, eps_g), j, 0.5, 1.0, False)
    check_topk(values, indices, log_p.exp(), True, 1e-12 if dtype == torch.float64 else 2e-5)
