"""Every pcmekit custom op under torch.library.opcheck and inside torch.compile(fullgraph=True).

The ops here: ``pcmekit::pairwise_distance``, ``pcmekit::pairwise_distance_backward``,
``pcmekit::match_logprob`` and ``pcmekit::match_logprob_backward`` (test_every_op_is_covered checks
that every registered ``pcmekit::*`` op has an opcheck test somewhere in the suite). opcheck runs torch's own
checks (schema, autograd registration, fake tensor, AOT dispatch with dynamic shapes) on every
device present. The compile tests run the public functions forward and backward in a compiled
region with no graph break and compare with eager results. Shapes are tiny: the cost here is
compilation, not arithmetic.
"""

from __future__ import annotations

import pytest
import torch

import pcmekit
from pcmekit.reference import pairwise_distance_naive
from pcmekit.reference_match import match_logprob_naive

from _helpers import METRICS, gaussians

SCALE, SHIFT = 1.7, 2.5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each test compiles its own functions; without a reset, parametrised tests share one code
    # object and pile up recompilations until dynamo's cache limit falls back to eager.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def pair(n, m, d, *, dtype=torch.float64, device="cpu", seed=0):
    a_mean, a_logvar = gaussians(n, d, dtype=dtype, device=device, seed=seed)
    b_mean, b_logvar = gaussians(m, d, dtype=dtype, device=device, seed=seed + 1)
    return [a_mean, a_logvar, b_mean, b_logvar]


def noise(n, m, d, j, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    eps_a = torch.randn(n, j, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    eps_b = torch.randn(m, j, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return eps_a, eps_b


def scalar(value, device, dtype=torch.float64, requires_grad=False):
    return torch.tensor(value, dtype=dtype, device=device, requires_grad=requires_grad)


def assert_grads_close(mine, theirs, **tol):
    for i, (m, t) in enumerate(zip(mine, theirs)):
        assert (m.grad is None) == (t.grad is None), i
        if m.grad is not None:
            torch.testing.assert_close(m.grad.cpu(), t.grad.cpu(), **tol)


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck on every op.


def _registered_ops():
    """Every op registered in the pcmekit namespace (by importing pcmekit), without the prefix."""
    prefix = "pcmekit::"
    return {name[len(prefix):] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


def _opchecked_ops():
    """The ops some test of the suite passes to torch.library.opcheck: every ``torch.ops.pcmekit.X``
    named inside a test function that calls ``opcheck`` (read from the test files' source)."""
    import ast
    from pathlib import Path

    def chain(node):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(node.id)
        return list(reversed(parts))

    covered = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            chains = [chain(n) for n in ast.walk(fn) if isinstance(n, ast.Attribute)]
            if not any(c[-1:] == ["opcheck"] for c in chains):
                continue
            covered |= {c[3] for c in chains if len(c) > 3 and c[:3] == ["torch", "ops", "pcmekit"]}
    return covered


def test_every_op_is_covered():
    # Every op registered in the pcmekit namespace needs an opcheck test (this file's, or the one
    # next to the op's other tests: pcmekit::topk's live with the top-k tests, the BCE ops' with
    # the BCE tests). The ops are enumerated, not listed here, so a new op without one fails.
    registered = _registered_ops()
    assert {"pairwise_distance", "match_logprob", "topk", "distance_bce_with_logits"} <= registered
    missing = registered - _opchecked_ops()
    assert not missing, f"pcmekit ops without a torch.library.opcheck test: {sorted(missing)}"


@pytest.mark.parametrize("metric", METRICS)
def test_opcheck_pairwise_distance(metric, device):
    inputs = [t.requires_grad_() for t in pair(4, 3, 5, device=device)]
    if metric == "l2":
        inputs[1] = inputs[3] = None
    torch.library.opcheck(torch.ops.pcmekit.pairwise_distance.default, (*inputs, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("which", ["all", "some"])
def test_opcheck_pairwise_distance_backward(metric, which, device):
    inputs = pair(4, 3, 5, device=device, seed=2)
    grad_out = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    needs = [True, True, True, True] if which == "all" else [False, True, True, False]
    if metric == "l2":
        inputs[1] = inputs[3] = None
        needs[1] = needs[3] = False
    torch.library.opcheck(
        torch.ops.pcmekit.pairwise_distance_backward.default, (grad_out, *inputs, metric, needs)
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("squared", [False, True])
def test_opcheck_match_logprob(squared, dtype, device):
    inputs = [t.requires_grad_() for t in pair(4, 3, 5, dtype=dtype, device=device, seed=4)]
    eps = noise(4, 3, 5, 2, dtype=dtype, device=device, seed=5)
    scale = scalar(SCALE, device, dtype, requires_grad=True)
    shift = scalar(SHIFT, device, dtype, requires_grad=True)
    torch.library.opcheck(
        torch.ops.pcmekit.match_logprob.default, (*inputs, *eps, scale, shift, squared)
    )


@pytest.mark.parametrize(
    "needs",
    [[True, True, True, True, True], [False, True, False, True, False], [False, False, False, False, True]],
    ids=["all", "logvars", "scale_shift"],
)
def test_opcheck_match_logprob_backward(needs, device):
    inputs = pair(4, 3, 5, device=device, seed=6)
    eps = noise(4, 3, 5, 3, device=device, seed=7)
    scale, shift = scalar(SCALE, device), scalar(SHIFT, device)
    log_p, log_q = torch.ops.pcmekit.match_logprob(*inputs, *eps, scale, shift, False)
    g = torch.Generator().manual_seed(8)
    grad_p, grad_q = (torch.randn(4, 3, dtype=torch.float64, generator=g).to(device) for _ in range(2))
    torch.library.opcheck(
        torch.ops.pcmekit.match_logprob_backward.default,
        (grad_p, grad_q, log_p, log_q, *inputs, *eps, scale, shift, False, needs),
    )


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): forward and backward, compared with eager.


@pytest.mark.parametrize("metric", METRICS)
def test_compile_pairwise_distance(metric, device):
    inputs = [t.float() for t in pair(6, 5, 4, device=device, seed=9)]
    if metric == "l2":
        inputs[1] = inputs[3] = None
    leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    ref = [None if t is None else t.clone().requires_grad_() for t in inputs]

    def loss_fn(am, al, bm, bl):
        d = pcmekit.pairwise_distance(am, al, bm, bl, metric=metric)
        return torch.nn.functional.softplus(d - 3.0).sum(), d

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss, d = compiled(*leaves)
    loss.backward()
    ref_loss, ref_d = loss_fn(*ref)
    ref_loss.backward()
    torch.testing.assert_close(d, ref_d)
    torch.testing.assert_close(loss, ref_loss)
    assert_grads_close([t for t in leaves if t is not None], [t for t in ref if t is not None])


def test_compile_pairwise_distance_dynamic_shapes(device):
    # One compiled graph serves every N, M, D: the fake implementations take symbolic sizes.
    def fn(am, al, bm, bl):
        return pcmekit.pairwise_distance(am, al, bm, bl, metric="kl").mean()

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, m, d in [(3, 4, 5), (7, 2, 9), (1, 6, 3)]:
        leaves = [t.requires_grad_() for t in pair(n, m, d, device=device, seed=n)]
        ref = [t.detach().clone().requires_grad_() for t in leaves]
        out = compiled(*leaves)
        out.backward()
        expected = pairwise_distance_naive(*ref, "kl").mean()
        expected.backward()
        torch.testing.assert_close(out, expected)
        assert_grads_close(leaves, ref)


def test_compile_pairwise_distance_prob_embedding(device):
    a_mean, a_logvar, b_mean, b_logvar = pair(5, 4, 3, device=device, seed=10)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(a, b):
        return pcmekit.pairwise_distance(a, b, metric="w2")

    out = fn(pcmekit.ProbEmbedding(a_mean, a_logvar), pcmekit.ProbEmbedding(b_mean, b_logvar))
    torch.testing.assert_close(out, pairwise_distance_naive(a_mean, a_logvar, b_mean, b_logvar, "w2"))


@pytest.mark.parametrize("squared", [False, True])
def test_compile_match_logprob(squared, device):
    inputs = [t.float() for t in pair(5, 4, 6, device=device, seed=11)]
    eps = noise(5, 4, 6, 3, dtype=torch.float32, device=device, seed=12)
    leaves = [t.clone().requires_grad_() for t in inputs] + [
        scalar(SCALE, device, torch.float32, True), scalar(SHIFT, device, torch.float32, True)
    ]
    ref = [t.detach().clone().requires_grad_() for t in leaves]

    def loss_fn(am, al, bm, bl, sc, sh):
        log_p, log_q = pcmekit.match_logprob(
            am, al, bm, bl, scale=sc, shift=sh, num_samples=3, eps_a=eps[0], eps_b=eps[1], squared=squared
        )
        return -(log_p.diagonal().sum() + log_q.sum()), log_p, log_q

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss, log_p, log_q = compiled(*leaves)
    loss.backward()
    rp, rq = match_logprob_naive(*ref[:4], *eps, ref[4], ref[5], squared)
    ref_loss = -(rp.diagonal().sum() + rq.sum())
    ref_loss.backward()
    torch.testing.assert_close(log_p, rp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_q, rq, rtol=1e-4, atol=1e-5)
    assert_grads_close(leaves, ref, rtol=1e-3, atol=1e-4)


def test_compile_match_prob_float_scale_and_drawn_noise(device):
    # Python-float scale/shift and noise drawn inside the compiled region (from the default
    # generator): no graph break; the result is a probability matrix with gradients.
    a_mean, a_logvar, b_mean, b_logvar = [t.float().requires_grad_() for t in pair(4, 3, 5, device=device, seed=13)]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(am, al, bm, bl):
        return pcmekit.match_prob(am, al, bm, bl, scale=SCALE, shift=SHIFT, num_samples=2)

    p = fn(a_mean, a_logvar, b_mean, b_logvar)
    assert p.shape == (4, 3) and p.device.type == device
    assert torch.all((p > 0) & (p < 1))
    p.sum().backward()
    for t in (a_mean, a_logvar, b_mean, b_logvar):
        assert t.grad is not None and torch.isfinite(t.grad).all()


# Importing inductor runs torch.jit.script_method, which warns about its own deprecation. slow:
# inductor compiles C++ for the graph (about 30 s on 2 busy cores when its cache is cold).
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_inductor_forward_and_backward(device):
    # The default backend (inductor generates and compiles code around the ops): both ops in
    # one graph, forward and backward, against eager.
    inputs = [t.float() for t in pair(6, 5, 4, device=device, seed=14)]
    eps = noise(6, 5, 4, 2, dtype=torch.float32, device=device, seed=15)
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref = [t.clone().requires_grad_() for t in inputs]

    def loss_fn(am, al, bm, bl):
        d = pcmekit.pairwise_distance(am, al, bm, bl, metric="csd")
        log_p, log_q = pcmekit.match_logprob(am, al, bm, bl, scale=SCALE, shift=SHIFT, num_samples=2,
                                             eps_a=eps[0], eps_b=eps[1])
        return (torch.sigmoid(-d) * log_p).sum() + log_q.mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    loss = compiled(*leaves)
    loss.backward()
    ref_loss = loss_fn(*ref)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_grads_close(leaves, ref, rtol=1e-4, atol=1e-5)
