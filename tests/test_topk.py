"""pcmekit.topk against the oracle (full score matrix + stable sort, pcmekit.reference.topk_naive).

Policy (docs/design.md, "Tolerances" and "Ties"): values equal the oracle's in float64 (to rounding) and within
tolerance in float32; indices may differ from the oracle's only where the two items' true scores
tie; no duplicate indices; ties go to the lower gallery index.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pcmekit
from pcmekit.reference import topk_naive, topk_scores

from _helpers import DEVICES, METRICS, gaussians

ALL_METRICS = METRICS + ["match_prob"]


def problem(q, n, d, *, dtype=torch.float64, device="cpu", seed=0, j=3):
    q_mean, q_logvar = gaussians(q, d, dtype=dtype, device=device, seed=seed)
    g_mean, g_logvar = gaussians(n, d, dtype=dtype, device=device, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    kwargs = dict(
        eps_q=torch.randn(q, j, d, generator=gen, dtype=dtype).to(device),
        eps_g=torch.randn(n, j, d, generator=gen, dtype=dtype).to(device),
        scale=2.0,
        shift=3.0,
    )
    return (q_mean, q_logvar, g_mean, g_logvar), kwargs


def run_topk(inputs, k, metric, match_kwargs):
    if metric == "match_prob":
        return pcmekit.topk(*inputs, k, metric, num_samples=match_kwargs["eps_q"].shape[1], **match_kwargs)
    return pcmekit.topk(*inputs, k, metric)


def oracle_scores(inputs, metric, match_kwargs):
    f64 = [t.detach().double().cpu() for t in inputs]
    kw = {key: (v.double().cpu() if isinstance(v, torch.Tensor) else v) for key, v in match_kwargs.items()}
    return topk_scores(*f64, metric, **kw) if metric == "match_prob" else topk_scores(*f64, metric)


def assert_topk(values, indices, scores, k, metric, *, rtol, atol):
    """values/indices against the float64 score matrix: the policy of the module docstring."""
    values, indices = values.double().cpu(), indices.cpu()
    q, n = scores.shape
    assert values.shape == (q, k) and indices.shape == (q, k) and indices.dtype == torch.int64
    assert bool(((indices >= 0) & (indices < n)).all())
    for row in indices:
        assert len(set(row.tolist())) == k, f"duplicate indices in {row.tolist()}"
    ref_v, ref_i = topk_naive(None, None, None, None, k, metric, scores=scores)
    tol = atol + rtol * ref_v.abs().nan_to_num(posinf=0.0)
    # Best first, and each value is the score of its index.
    same = torch.gather(scores, 1, indices)
    torch.testing.assert_close(values, same, rtol=rtol, atol=atol, equal_nan=True)
    finite = torch.isfinite(ref_v)
    assert torch.equal(torch.isfinite(values), finite)
    assert bool(((values - ref_v).abs()[finite] <= tol[finite]).all()), (values - ref_v).abs().max()
    # Indices may differ only where the two items tie (within tolerance).
    differ = indices != ref_i
    if bool(differ.any()):
        gap = (same - torch.gather(scores, 1, ref_i)).abs()
        assert bool((gap[differ & finite] <= 2 * tol[differ & finite]).all()), "indices differ beyond ties"


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("q,n,d,k", [(1, 1, 1, 1), (3, 17, 5, 4), (17, 3, 8, 3), (50, 1033, 17, 10), (130, 2100, 9, 7)])
def test_float64_matches_oracle(metric, q, n, d, k, device):
    inputs, kw = problem(q, n, d, device=device, seed=q + n)
    values, indices = run_topk(inputs, k, metric, kw)
    assert values.device.type == device and values.dtype == torch.float64
    assert_topk(values, indices, oracle_scores(inputs, metric, kw), k, metric, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_float32_within_tolerance(metric, device):
    inputs, kw = problem(70, 3001, 33, dtype=torch.float32, device=device, seed=11)
    values, indices = run_topk(inputs, 9, metric, kw)
    assert values.dtype == torch.float32
    scores = oracle_scores(inputs, metric, kw)
    # float32 rounding of the inner-product form: ~1e-7 of the squared norms (csd ~ 2 D here).
    assert_topk(values, indices, scores, 9, metric, rtol=2e-5, atol=2e-5 * d_scale(inputs))


def d_scale(inputs):
    return float(inputs[0].double().pow(2).sum(1).max() + inputs[2].double().pow(2).sum(1).max())


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_k_equals_gallery_size_is_a_full_sort(metric, device):
    inputs, kw = problem(5, 37, 6, device=device, seed=4)
    values, indices = run_topk(inputs, 37, metric, kw)
    assert sorted(indices[0].tolist()) == list(range(37))
    assert_topk(values, indices, oracle_scores(inputs, metric, kw), 37, metric, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("metric", ["csd", "l2", "w2", "kl", "bhattacharyya"])
def test_exact_ties_go_to_the_lower_index(metric, device):
    # Small integer means and zero log-variances: every score is exact in float64 in both the
    # kernel and the oracle, so ties are real ties and the indices must match exactly.
    gen = torch.Generator().manual_seed(1)
    base = torch.randint(-2, 3, (60, 5), generator=gen).double()
    gallery = torch.cat([base, base[:40], base[5:25]])[torch.randperm(120, generator=gen)]
    queries = torch.randint(-2, 3, (30, 5), generator=gen).double()
    inputs = [t.to(device) for t in (queries, torch.zeros_like(queries), gallery, torch.zeros_like(gallery))]
    for k in (1, 8, 33, 120):
        values, indices = pcmekit.topk(*inputs, k, metric)
        ref_v, ref_i = topk_naive(*[t.cpu() for t in inputs], k, metric)
        assert torch.equal(indices.cpu(), ref_i)
        assert torch.equal(values.cpu(), ref_v)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_duplicated_gallery_rows_keep_index_order(metric, device):
    inputs, kw = problem(20, 300, 7, device=device, seed=8)
    q_mean, q_logvar, g_mean, g_logvar = inputs
    dup = torch.arange(300) % 60  # every row 5 times
    inputs = (q_mean, q_logvar, g_mean[dup], g_logvar[dup])
    kw["eps_g"] = kw["eps_g"][dup]
    values, indices = run_topk(inputs, 25, metric, kw)
    for row in indices.cpu().tolist():
        kept = set(row)
        for i in row:  # an earlier copy of a returned row must be returned too
            earlier = [j for j in range(i % 60, i, 60)]
            assert all(j in kept for j in earlier), (i, earlier)


def test_same_result_for_any_thread_count():
    inputs, _ = problem(300, 5000, 24, dtype=torch.float32, seed=2)  # rows split between threads
    few, _ = problem(7, 5000, 24, dtype=torch.float32, seed=3)        # gallery split into shards
    results = {}
    try:
        for threads in (1, 2, 3):
            pcmekit.set_num_threads(threads)
            results[threads] = [pcmekit.topk(*x, 12, m) for x in (inputs, few) for m in ("csd", "elk")]
    finally:
        pcmekit.set_num_threads(None)
    for threads in (2, 3):
        for (v1, i1), (v2, i2) in zip(results[1], results[threads]):
            assert torch.equal(i1, i2) and torch.equal(v1, v2)


def test_huge_logvars_rank_infinities_by_index(device):
    inputs, _ = problem(6, 40, 4, device=device, seed=9)
    q_mean, q_logvar, g_mean, g_logvar = (t.clone() for t in inputs)
    g_logvar[::3, 0] = 1000.0  # var = inf for every third item
    q_logvar[1, 2] = 1000.0    # and for a whole query
    # (w2's inner-product form, in the kernel and in the torch baseline alike, is inf - inf there.)
    for metric in ("csd", "bhattacharyya", "elk"):
        values, indices = pcmekit.topk(q_mean, q_logvar, g_mean, g_logvar, 40, metric)
        ref_v, ref_i = topk_naive(q_mean.cpu(), q_logvar.cpu(), g_mean.cpu(), g_logvar.cpu(), 40, metric)
        assert torch.equal(torch.isinf(values.cpu()), torch.isinf(ref_v))
        inf_rows = torch.isinf(ref_v)
        assert torch.equal(indices.cpu()[inf_rows], ref_i[inf_rows])  # infinities in index order


def test_large_means(device):
    inputs, _ = problem(9, 200, 5, device=device, seed=10)
    q_mean, q_logvar, g_mean, g_logvar = inputs
    inputs = (q_mean * 1e6, q_logvar, g_mean * 1e6, g_logvar)
    values, indices = pcmekit.topk(*inputs, 6, "csd")
    assert_topk(values, indices, oracle_scores(inputs, "csd", {}), 6, "csd", rtol=1e-9, atol=1e-9 * d_scale(inputs))


def test_non_contiguous_inputs(device):
    inputs, kw = problem(40, 700, 16, device=device, seed=12)
    strided = [torch.stack([t, t], 2)[:, :, 0] for t in inputs]        # column stride 2
    transposed = [t.t().contiguous().t() for t in inputs]              # column-major
    expected = pcmekit.topk(*inputs, 5, "csd")
    for variant in (strided, transposed):
        for metric in ("csd", "kl", "bhattacharyya"):
            v, i = pcmekit.topk(*variant, 5, metric)
            ev, ei = pcmekit.topk(*inputs, 5, metric)
            torch.testing.assert_close(v, ev, rtol=1e-12, atol=1e-12)
            assert torch.equal(i, ei)
    eps_q = kw["eps_q"].transpose(0, 1).contiguous().transpose(0, 1)
    v, i = pcmekit.topk(*inputs, 5, "match_prob", scale=2.0, shift=3.0, num_samples=3, eps_q=eps_q, eps_g=kw["eps_g"])
    ev, ei = pcmekit.topk(*inputs, 5, "match_prob", scale=2.0, shift=3.0, num_samples=3, eps_q=kw["eps_q"], eps_g=kw["eps_g"])
    torch.testing.assert_close(v, ev, rtol=1e-12, atol=1e-15)
    assert torch.equal(i, ei)
    assert expected[0].shape == (40, 5)


def test_empty_queries_and_zero_dimensions(device):
    inputs, _ = problem(0, 10, 4, device=device)
    values, indices = pcmekit.topk(*inputs, 3, "csd")
    assert values.shape == (0, 3) and indices.shape == (0, 3)
    inputs, _ = problem(4, 10, 0, device=device)
    values, indices = pcmekit.topk(*inputs, 3, "elk")
    assert torch.equal(indices.cpu(), torch.arange(3).expand(4, 3))  # all tie: lowest indices


def test_numpy_and_probembedding_forms():
    inputs, _ = problem(6, 50, 8, seed=13)
    v, i = pcmekit.topk(*inputs, 4, "w2")
    nv, ni = pcmekit.topk(*[t.numpy() for t in inputs], 4, "w2")
    assert isinstance(nv, np.ndarray) and isinstance(ni, np.ndarray) and ni.dtype == np.int64
    np.testing.assert_array_equal(ni, i.numpy())
    q, g = pcmekit.ProbEmbedding(*inputs[:2]), pcmekit.ProbEmbedding(*inputs[2:])
    for result in (pcmekit.topk(q, g, 4, "w2"), pcmekit.topk(q, g, k=4, metric="w2"), pcmekit.retrieval.topk(q, g, 4, "w2")):
        assert torch.equal(result[1], i)
    lv, li = pcmekit.topk(inputs[0], None, inputs[2], None, 4, "l2")
    assert torch.equal(li, pcmekit.topk(*inputs, 4, "l2")[1])


def test_match_prob_draws_noise_from_the_generator():
    inputs, _ = problem(5, 60, 6, seed=14)
    a = pcmekit.topk(*inputs, 5, "match_prob", scale=1.0, shift=1.0, generator=torch.Generator().manual_seed(3))
    b = pcmekit.topk(*inputs, 5, "match_prob", scale=1.0, shift=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert bool((a[0][:, :-1] >= a[0][:, 1:]).all())  # largest first


def test_values_do_not_track_gradients():
    inputs, _ = problem(4, 30, 5, seed=15)
    inputs = [t.requires_grad_() for t in inputs]
    values, indices = pcmekit.topk(*inputs, 3, "csd")
    assert not values.requires_grad and not indices.requires_grad


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: pcmekit.topk(*x, 0), ValueError, "k must be between 1 and the gallery size N = 20, got 0"),
        (lambda x: pcmekit.topk(*x, 21), ValueError, "k must be between 1 and the gallery size N = 20, got 21"),
        (lambda x: pcmekit.topk(*x, 2.0), TypeError, "k must be an int"),
        (lambda x: pcmekit.topk(*x, True), TypeError, "k must be an int"),
        (lambda x: pcmekit.topk(*x[:2], x[2][:, :3], x[3][:, :3], 2), ValueError, r"g_mean must have shape \[N, D\] with D == q_mean's D \(4\)"),
        (lambda x: pcmekit.topk(x[0][0], x[1][0], *x[2:], 2), ValueError, r"q_mean must have shape \[Q, D\] \(2-D\)"),
        (lambda x: pcmekit.topk(x[0].long(), x[1], *x[2:], 2), TypeError, "q_mean must be floating point"),
        (lambda x: pcmekit.topk(x[0].float(), *x[1:], 2), TypeError, "dtype"),
        (lambda x: pcmekit.topk(*x, 2, "cosine"), ValueError, "metric must be one of"),
        (lambda x: pcmekit.topk(x[0], None, x[2], None, 2, "csd"), ValueError, "needs q_logvar and g_logvar"),
        (lambda x: pcmekit.topk(*x, 2, "match_prob"), ValueError, "needs scale and shift"),
        (lambda x: pcmekit.topk(*x, 2, "csd", scale=1.0), ValueError, "match_prob arguments"),
        (lambda x: pcmekit.topk(*x, 2, "match_prob", scale=1.0, shift=0.0, num_samples=2, eps_q=torch.zeros(5, 3, 4, dtype=torch.float64)), ValueError, "eps_q has J = 3"),
        (lambda x: pcmekit.topk(*x, 2, "match_prob", scale=float("inf"), shift=0.0), ValueError, "scale must be finite"),
        (lambda x: pcmekit.topk(*x), TypeError, "k is required"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, match):
    inputs, _ = problem(5, 20, 4, seed=16)
    with pytest.raises(error, match=match):
        call(inputs)


def test_opposite_infinities_are_not_mistaken_for_nan():
    inputs, _ = problem(5, 20, 4, seed=17)
    g_mean = inputs[2].clone()
    g_mean[0, 0], g_mean[1, 0] = float("inf"), -float("inf")  # their sum is NaN, no element is
    values, _ = pcmekit.topk(inputs[0], inputs[1], g_mean, inputs[3], 20, "csd")
    assert bool(torch.isinf(values[:, -2:]).all())


# (metric, input) pairs where the metric reads the input: l2 has no log-variances, and only
# match_prob takes noise.
NAN_CASES = [
    (metric, where)
    for metric in ("csd", "l2", "w2", "kl", "bhattacharyya", "elk", "match_prob")
    for where in range(6)
    if not (metric == "l2" and where in (1, 3)) and (metric == "match_prob" or where < 4)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric, where", NAN_CASES)
def test_nan_inputs_raise_naming_the_tensor_and_its_first_nan_row(where, metric, dtype):
    # The CPU kernel finds NaN itself: through the row / column terms for csd and l2, by a scan for
    # the others. A later tensor's NaN must not hide an earlier one's, nor a later row an earlier.
    inputs, kw = problem(7, 600, 5, seed=17, dtype=dtype)
    tensors = [t.clone() for t in inputs] + [kw["eps_q"].clone(), kw["eps_g"].clone()]
    name = ["q_mean", "q_logvar", "g_mean", "g_logvar", "eps_q", "eps_g"][where]
    tensors[where][(5, 2) if where < 4 else (5, 1, 2)] = float("nan")
    tensors[where][(3, 4) if where < 4 else (3, 2, 0)] = float("nan")
    tensors[5][(1, 0, 1)] = float("nan")  # a NaN in a tensor after it in the order: not the one named
    if where == 5:
        tensors[5][(1, 0, 1)] = 0.0
    kwargs = dict(eps_q=tensors[4], eps_g=tensors[5], scale=2.0, shift=3.0, num_samples=3) if metric == "match_prob" else {}
    with pytest.raises(ValueError, match=rf"{name} contains NaN \(first in row 3\)"):
        pcmekit.topk(*tensors[:4], 3, metric, **kwargs)


def test_nan_check_reads_strided_views():
    inputs, _ = problem(6, 40, 8, seed=18)
    g_mean = inputs[2].t().contiguous().t()  # column-major
    g_mean[11, 6] = float("nan")
    with pytest.raises(ValueError, match=r"g_mean contains NaN \(first in row 11\)"):
        pcmekit.topk(inputs[0], inputs[1], g_mean, inputs[3], 3, "csd")
    with pytest.raises(ValueError, match=r"g_mean contains NaN \(first in row 11\)"):
        pcmekit.topk(inputs[0], inputs[1], g_mean, inputs[3], 3, "bhattacharyya")


def test_core_rejects_bad_views_itself():
    # The compiled front end re-checks what the Python layer checked (it must not trust callers).
    from pcmekit import _C
    from pcmekit._core import matrix_view

    q, g = torch.randn(3, 4), torch.randn(5, 4)
    values, indices = torch.empty(3, 2), torch.empty(3, 2, dtype=torch.int64)
    args = lambda k, idx: (0, 0, matrix_view(q), matrix_view(q), matrix_view(g), matrix_view(g), None, None, 1, 1.0, 0.0, False, k, matrix_view(values), matrix_view(idx), 0, 0, 1, 0)
    with pytest.raises(ValueError, match="k must be between 1 and the gallery size N = 5, got 6"):
        _C.topk(*args(6, indices))
    with pytest.raises(TypeError, match="indices must have dtype int64, got float32"):
        _C.topk(*args(2, values))


@pytest.mark.parametrize("metric", ["csd", "elk", "match_prob"])
def test_opcheck(metric, device):
    inputs, kw = problem(4, 30, 5, device=device, seed=18)
    eps = (kw["eps_q"], kw["eps_g"]) if metric == "match_prob" else (None, None)
    torch.library.opcheck(torch.ops.pcmekit.topk.default, (*inputs, *eps, 3, metric, 2.0, 3.0, False))


def test_works_under_torch_compile_fullgraph():
    inputs, _ = problem(6, 40, 5, dtype=torch.float32, seed=19)

    # The public function, with its argument handling, compiles without a graph break.
    @torch.compile(fullgraph=True, backend="eager")
    def retrieve(q_mean, q_logvar, g_mean, g_logvar):
        return pcmekit.topk(q_mean, q_logvar, g_mean, g_logvar, 4, "csd")

    values, indices = retrieve(*inputs)
    ev, ei = pcmekit.topk(*inputs, 4, "csd")
    assert torch.equal(indices, ei) and torch.equal(values, ev)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA device")
def test_cuda_k_limit():
    inputs, _ = problem(2, 1100, 4, device="cuda")
    with pytest.raises(ValueError, match="at most 1024 on CUDA"):
        pcmekit.topk(*inputs, 1025, "csd")
