"""AdamP / SGDP against the reference package ``adamp`` 0.3.0, step by step.

The gradients are constructed so that each outcome of the scale-invariance test happens on purpose
(projection in the channel view, in the layer view, none), and every run checks that it did. On
CPU the comparisons are bitwise (``torch.equal``); on CUDA the multi-tensor kernels are not the
single-tensor ones, so there the foreach path is compared to a few ulps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

adamp = pytest.importorskip("adamp")

import pcmekit.optim as optim_mod  # noqa: E402
from pcmekit.optim import SGDP, AdamP  # noqa: E402

F64 = torch.float64

# name -> (shape, gradient recipe). Recipes: "cycle" follows the per-step mode below; "zero" is
# an all-zero gradient; "none" never gets a gradient; "sometimes" gets one on even steps only.
MODEL = {
    "conv": ((8, 3, 3, 3), "cycle"),
    "conv.bias": ((8,), "cycle"),
    "linear": ((6, 12), "cycle"),
    "linear.bias": ((6,), "cycle"),
    "conv1x1": ((4, 8, 1, 1), "cycle"),
    "frozen": ((5, 5), "none"),
    "dead": ((3, 4), "zero"),
    "dead.bias": ((3,), "zero"),
    "sometimes": ((5, 7), "sometimes"),
}
MODES = ["channel", "layer", "none", "random"]


def make_params(dtype=F64, device="cpu", seed=0, model=MODEL):
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.nn.Parameter(torch.randn(shape, generator=g, dtype=F64).to(device=device, dtype=dtype))
        for name, (shape, _) in model.items()
    }


def clone_params(params):
    return {k: torch.nn.Parameter(v.detach().clone()) for k, v in params.items()}


def _orthogonal_rows(grad: torch.Tensor, weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``grad`` minus its component along ``weight``, per row of the [rows, -1] view."""
    g2 = grad.reshape(rows, -1)
    w2 = weight.reshape(rows, -1)
    coef = (g2 * w2).sum(1, keepdim=True) / (w2 * w2).sum(1, keepdim=True)
    return (g2 - coef * w2).reshape(grad.shape)


def make_grad(name, param, mode, step, gen, model=MODEL):
    """The gradient of one parameter at one step (float64 arithmetic, cast to the param dtype)."""
    shape, recipe = model[name]
    if recipe == "none" or (recipe == "sometimes" and step % 2):
        return None
    if recipe == "zero":
        return torch.zeros_like(param)
    w = param.detach().to(F64).cpu()
    r = torch.randn(shape, generator=gen, dtype=F64)
    if recipe == "cycle" and w.dim() > 1:
        if mode == "channel":  # every row orthogonal to its weight row
            r = _orthogonal_rows(r, w, shape[0])
        elif mode == "layer":  # rows clearly not orthogonal, the whole tensor orthogonal
            r = _orthogonal_rows(r, w, 1)
        elif mode == "none":  # clearly aligned with the weight
            r = r + 2.0 * w
    return r.to(device=param.device, dtype=param.dtype)


def expected_kind(name, mode, model=MODEL):
    shape, recipe = model[name]
    if len(shape) <= 1:
        return "none"
    if recipe == "zero":  # cos = 0 in every row: the channel view passes
        return "channel"
    if recipe == "cycle" and mode in ("channel", "layer", "none"):
        return mode
    return None  # random gradient: whatever the reference decides


def reference_kind(param, grad, delta=0.1, eps=1e-8):
    """The reference's test, written out independently of both implementations."""
    if param.dim() <= 1:
        return "none"
    for kind, rows in (("channel", param.shape[0]), ("layer", 1)):
        cos = F.cosine_similarity(grad.reshape(rows, -1), param.reshape(rows, -1), dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(param.numel() // rows):
            return kind
    return "none"


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in units in the last place between two float tensors."""
    assert a.dtype == b.dtype and a.dtype in (torch.float32, F64)
    ints = torch.int32 if a.dtype == torch.float32 else torch.int64

    def ordered(x):
        i = x.contiguous().view(ints).to(torch.int64)
        return torch.where(i < 0, torch.iinfo(ints).min - i, i)

    return int((ordered(a.cpu()) - ordered(b.cpu())).abs().max()) if a.numel() else 0


OPTIMIZERS = {
    "adamp": (AdamP, adamp.AdamP, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8)),
    "sgdp": (SGDP, adamp.SGDP, dict(lr=1e-2, momentum=0.9, dampening=0.1)),
}


def run_pair(kind, opts, dtype=F64, device="cpu", steps=20, foreach=False, seed=0, check=True, model=MODEL):
    """Runs ours and the reference side by side; returns both parameter dicts and optimizers."""
    ours_cls, ref_cls, base = OPTIMIZERS[kind]
    kw = {**base, **opts}
    ours_p = make_params(dtype, device, seed, model)
    ref_p = clone_params(ours_p)
    ours = ours_cls(list(ours_p.values()), foreach=foreach, **kw)
    ref = ref_cls(list(ref_p.values()), **kw)
    gen = torch.Generator().manual_seed(seed + 1)
    seen = set()
    names = list(model)
    for step in range(steps):
        mode = MODES[step % len(MODES)]
        for name in names:
            grad = make_grad(name, ours_p[name], mode, step, gen, model)
            ours_p[name].grad = grad
            ref_p[name].grad = None if grad is None else grad.clone()
        if check:
            truth = {n: reference_kind(ref_p[n].detach(), ref_p[n].grad) for n in names if ref_p[n].grad is not None}
        ours.step()
        ref.step()
        if check:
            for i, name in enumerate(names):
                got = ours.last_projection[0][i]
                if ours_p[name].grad is None:
                    assert got is None, (step, name, got)
                    continue
                assert got == truth[name], (step, name, got, truth[name])
                want = expected_kind(name, mode, model)
                if want is not None:
                    assert got == want, (step, mode, name, got)
                seen.add(got)
    if check:
        assert seen == {"channel", "layer", "none"}, seen
    return ours_p, ref_p, ours, ref


def assert_same(ours_p, ref_p, ours, ref, exact=True, max_ulps=0):
    for (name, a), b in zip(ours_p.items(), ref_p.values()):
        if exact:
            assert torch.equal(a, b), f"{name}: max |diff| {(a - b).abs().max().item():.3e}"
        else:
            assert ulps(a.detach(), b.detach()) <= max_ulps, name
    for a, b in zip(ours_p.values(), ref_p.values()):
        sa, sb = ours.state.get(a, {}), ref.state.get(b, {})
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                if exact:
                    assert torch.equal(sa[key], sb[key]), key
                else:
                    assert ulps(sa[key], sb[key]) <= max_ulps, key
            else:
                assert sa[key] == sb[key], key


# ------------------------------------------------------------------------------------------------
# bit-for-bit against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["nowd", "wd"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_matches_reference_float64(kind, nesterov, weight_decay, foreach, device):
    ours_p, ref_p, ours, ref = run_pair(
        kind, dict(nesterov=nesterov, weight_decay=weight_decay), device=device, foreach=foreach
    )
    if device == "cpu" or not foreach:
        assert_same(ours_p, ref_p, ours, ref)
    else:  # CUDA multi-tensor kernels round on their own
        assert_same(ours_p, ref_p, ours, ref, exact=False, max_ulps=64)
    assert ours_p["frozen"].grad is None and ours_p["frozen"] not in ours.state


@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_matches_reference_float32(kind):
    ours_p, ref_p, ours, ref = run_pair(kind, dict(weight_decay=0.05), dtype=torch.float32, foreach=True)
    assert_same(ours_p, ref_p, ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_cache_blocking_is_bit_identical(kind, nesterov, foreach, dtype, monkeypatch):
    """CPU slices and row blocks (tiny here, so that every tensor is cut, unevenly) change nothing."""
    monkeypatch.setattr(optim_mod, "_SLICE", 16)
    monkeypatch.setattr(optim_mod, "_SMALL", 1)  # block even tiny tensors
    monkeypatch.setattr(optim_mod, "_CPU_BATCH_NUMEL", 40)  # the larger tensors go one by one
    ours_p, ref_p, ours, ref = run_pair(
        kind, dict(nesterov=nesterov, weight_decay=0.1), dtype=dtype, foreach=foreach, steps=12
    )
    assert_same(ours_p, ref_p, ours, ref)


LARGE = {
    "conv": ((66, 64, 3, 3), "cycle"),  # 38 k elements: above the grain torch splits across threads
    "linear": ((40, 1000), "cycle"),
    "bias": ((96,), "cycle"),
}


@pytest.mark.parametrize("slice_numel", [4096, 1 << 18], ids=["blocked", "whole"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_large_tensors_bit_identical(kind, slice_numel, monkeypatch):
    """Tensors above torch's parallel grain, cut in blocks below it (or not cut) against the
    reference's whole-tensor (multi-threaded) operations."""
    monkeypatch.setattr(optim_mod, "_SLICE", slice_numel)
    monkeypatch.setattr(optim_mod, "_CPU_BATCH_NUMEL", 1000)  # each large tensor on its own
    ours_p, ref_p, ours, ref = run_pair(
        kind, dict(weight_decay=0.1, nesterov=kind == "sgdp"), foreach=True, steps=4, model=LARGE
    )
    assert_same(ours_p, ref_p, ours, ref)


@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_whole_tensor_fallback_is_bit_identical(kind, monkeypatch):
    """Where blocking is not allowed (or tensors are not contiguous) whole tensors are used."""
    monkeypatch.setattr(optim_mod, "_position_independent", lambda dtype: False)
    ours_p, ref_p, ours, ref = run_pair(kind, dict(nesterov=True, weight_decay=0.1), foreach=False, steps=8)
    assert_same(ours_p, ref_p, ours, ref)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_channels_last_parameters(kind, foreach):
    """Non-contiguous weights (the reference cannot view them) give the contiguous results."""
    ours_cls, _, base = OPTIMIZERS[kind]
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(8, 6, 3, 3, generator=gen, dtype=F64)
    a = torch.nn.Parameter(w.clone())
    b = torch.nn.Parameter(w.clone().to(memory_format=torch.channels_last))
    assert not b.is_contiguous()
    oa = ours_cls([a], foreach=foreach, weight_decay=0.1, **base)
    ob = ours_cls([b], foreach=foreach, weight_decay=0.1, **base)
    for step in range(6):
        g = make_grad("conv", a, MODES[step % 4], step, gen, {"conv": ((8, 6, 3, 3), "cycle")})
        a.grad = g
        b.grad = g.clone().to(memory_format=torch.channels_last)
        oa.step()
        ob.step()
        assert oa.last_projection == ob.last_projection
        assert torch.equal(a, b)


def test_row_blocks_never_leave_one_row_alone():
    for rows in range(1, 40):
        for width in (1, 3, 7, 100):
            blocks = optim_mod._row_blocks(rows, width)
            assert blocks[0][0] == 0 and blocks[-1][1] == rows
            assert all(b0[1] == b1[0] for b0, b1 in zip(blocks, blocks[1:]))
            assert all(b - a >= 2 for a, b in blocks) or rows == 1


@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
@pytest.mark.parametrize("scale", [0.0, math.inf], ids=["estimate-only", "reference-only"])
def test_decision_paths_agree(kind, scale, monkeypatch):
    """Deciding every test by our estimate alone, or by the reference formula alone, changes nothing."""
    monkeypatch.setattr(optim_mod, "_MARGIN_SCALE", scale)
    monkeypatch.setattr(optim_mod, "_SMALL", 1)  # our estimate for every size
    for foreach in (False, True):
        ours_p, ref_p, ours, ref = run_pair(kind, dict(weight_decay=0.1), foreach=foreach, steps=8)
        assert_same(ours_p, ref_p, ours, ref)


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_sgdp_momentum_buffer_receives_the_projection(nesterov):
    """Without Nesterov the update *is* the momentum buffer, and the reference projects it in place."""
    gen = torch.Generator().manual_seed(11)
    w = torch.nn.Parameter(torch.randn(4, 6, generator=gen, dtype=F64))
    w_ref = torch.nn.Parameter(w.detach().clone())
    ours = SGDP([w], lr=0.1, momentum=0.9, nesterov=nesterov)
    ref = adamp.SGDP([w_ref], lr=0.1, momentum=0.9, nesterov=nesterov)
    plain = torch.zeros(4, 6, dtype=F64)
    # Step 1: aligned with the weight (no projection; the buffer gets a radial part).
    # Step 2: orthogonal per row (the channel view fires).
    grads = [torch.randn(4, 6, generator=gen, dtype=F64) + 2 * w.detach(), None]
    for step in range(2):
        g = grads[0] if step == 0 else _orthogonal_rows(torch.randn(4, 6, generator=gen, dtype=F64), w.detach(), 4)
        w.grad, w_ref.grad = g, g.clone()
        plain.mul_(0.9).add_(g, alpha=1.0)
        w_before = w.detach().clone()
        ours.step()
        ref.step()
    assert ours.last_projection == [["channel"]]
    buf = ours.state[w]["momentum"]
    assert torch.equal(buf, ref.state[w_ref]["momentum"]) and torch.equal(w, w_ref)
    radial = (buf * w_before).sum(1).abs().max().item()
    plain_radial = (plain * w_before).sum(1).abs().max().item()
    assert plain_radial > 1.0
    if nesterov:
        assert torch.equal(buf, plain)
    else:
        assert radial < 1e-6 * plain_radial  # not 0: the projection divides by |w| + eps


def test_steps_counted_per_parameter():
    """A parameter without a gradient on some steps keeps its own step count and bias correction."""
    ours_p, ref_p, ours, ref = run_pair("adamp", {}, foreach=True, steps=7, check=False)
    assert ours.state[ours_p["sometimes"]]["step"] == 4
    assert ours.state[ours_p["conv"]]["step"] == 7
    assert_same(ours_p, ref_p, ours, ref)


# ------------------------------------------------------------------------------------------------
# the multi-tensor path against the per-tensor path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_foreach_matches_single(kind, dtype, device, monkeypatch):
    monkeypatch.setattr(optim_mod, "_CPU_BATCH_NUMEL", 200)  # several batches, some tensors alone
    opts = dict(weight_decay=0.1, nesterov=True)
    a, _, oa, _ = run_pair(kind, opts, dtype=dtype, device=device, foreach=True, steps=12, check=False)
    b, _, ob, _ = run_pair(kind, opts, dtype=dtype, device=device, foreach=False, steps=12, check=False)
    exact = device == "cpu"
    assert_same(a, b, oa, ob, exact=exact, max_ulps=16 if dtype == torch.float32 else 64)
    assert oa.last_projection == ob.last_projection


def test_mixed_dtypes_in_one_group():
    params = [torch.nn.Parameter(torch.randn(4, 6, dtype=dt)) for dt in (F64, torch.float32, F64)]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = AdamP(params, lr=1e-2, weight_decay=0.1, foreach=True)
    ref = adamp.AdamP(ref_params, lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        for p, q in zip(params, ref_params):
            g = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
            p.grad, q.grad = g, g.clone()
        ours.step()
        ref.step()
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------------------
# the decision near the threshold
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("where", [-2.0, -0.5, -0.01, 0.0, 0.01, 0.5, 2.0])
def test_borderline_cosine_uses_reference_formula(dtype, where, monkeypatch):
    """Row cosines placed ``where`` margins from the threshold: inside the band the reference formula
    decides, outside our estimate does; either way the outcome is the reference's."""
    rows, width = 4, 50
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(rows, width, generator=gen, dtype=F64)
    q = _orthogonal_rows(torch.randn(rows, width, generator=gen, dtype=F64), w, rows)
    thr = 0.1 / math.sqrt(width)
    cos = thr + where * optim_mod._decision_margin(width, width, thr, dtype)
    w_hat = w / w.norm(dim=1, keepdim=True)
    q_hat = q / q.norm(dim=1, keepdim=True)
    grad = cos * w_hat + math.sqrt(1 - cos * cos) * q_hat
    grad[1:] *= 0.5  # the other rows: same cosine, other norms
    w, grad = w.to(dtype), grad.to(dtype)

    calls = []
    real = optim_mod._reference_fires

    def spy(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(optim_mod, "_reference_fires", spy)
    (kind,) = optim_mod._decide([w], [grad], 0.1, 1e-8)
    assert kind == reference_kind(w, grad)
    assert kind == ("channel" if where < 0 else "none") or abs(where) < 1
    if abs(where) < 1:
        assert calls and calls[0] == rows  # the channel view went to the reference formula
    else:
        assert rows not in calls


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", [(1, 300_000), (64, 4608), (5, 7)])
def test_reference_cosine_in_scratch_is_torchs(shape, dtype):
    """The reference formula computed in reused buffers is F.cosine_similarity, bit for bit
    (including torch's multi-threaded reduction of one long row)."""
    gen = torch.Generator().manual_seed(5)
    g, w = (torch.randn(shape, generator=gen, dtype=F64).to(dtype) for _ in range(2))
    g[-1] *= 1e-12  # a row whose norm is clamped at eps
    scratch = torch.empty(2 * g.numel(), dtype=dtype)
    assert optim_mod._cosine_matches_torch(dtype)
    assert torch.equal(optim_mod._cosine_in(g, w, 1e-8, scratch), F.cosine_similarity(g, w, 1, 1e-8))


def test_margin_is_small_but_covers_rounding():
    """The band is wider than the rounding error of a sum of normalised products (measured here
    against float64 for the largest conv of ResNet-50) and narrow next to the threshold."""
    gen = torch.Generator().manual_seed(4)
    for rows, k in ((1, 9), (64, 4608), (512, 4608)):
        n = rows * k
        g = torch.randn(n, generator=gen, dtype=F64)
        w = torch.randn(n, generator=gen, dtype=F64)
        g -= w * (g @ w) / (w @ w)  # nearly orthogonal, as at the threshold
        exact = (g / g.norm()) @ (w / w.norm())
        g32, w32 = g.float().view(1, -1), w.float().view(1, -1)
        ref32 = F.cosine_similarity(g32, w32, dim=1, eps=1e-8)[0].double()
        thr = 0.1 / math.sqrt(n)
        m32 = optim_mod._decision_margin(n, k, thr, torch.float32)
        m64 = optim_mod._decision_margin(n, k, thr, F64)
        assert 10 * abs(ref32 - exact) < m32 < 0.3 * thr
        assert 0.0 < m64 < 1e-6 * thr


# ------------------------------------------------------------------------------------------------
# state dicts, arguments, odd inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["ours-to-ref", "ref-to-ours"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_state_dict_round_trip(kind, direction):
    ours_cls, ref_cls, base = OPTIMIZERS[kind]
    kw = dict(base, weight_decay=0.1)
    first, second = (ours_cls, ref_cls) if direction == "ours-to-ref" else (ref_cls, ours_cls)

    params = make_params()
    opt = first(list(params.values()), **kw)
    gen = torch.Generator().manual_seed(5)

    def grads(ps, step):
        for name, p in ps.items():
            p.grad = make_grad(name, p, MODES[step % 4], step, gen)

    for step in range(5):
        grads(params, step)
        opt.step()
    saved = opt.state_dict()

    # Continue with both classes from the same point.
    cont_a = clone_params(params)
    cont_b = clone_params(params)
    opt_a = first(list(cont_a.values()), **kw)
    opt_b = second(list(cont_b.values()), **kw)
    # load_state_dict keeps tensors that need no cast, so each optimizer gets its own copy.
    opt_a.load_state_dict(copy.deepcopy(saved))
    opt_b.load_state_dict(copy.deepcopy(saved))
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        assert sa.keys() == sb.keys()
    for step in range(5, 10):
        grads(cont_a, step)
        for (name, p), q in zip(cont_a.items(), cont_b.values()):
            q.grad = None if p.grad is None else p.grad.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(cont_a.values(), cont_b.values()):
        assert torch.equal(a, b)
    back = opt_b.state_dict()
    assert [sorted(s) for s in back["state"].values()] == [sorted(s) for s in saved["state"].values()]


def test_state_layout_is_the_references():
    w = torch.nn.Parameter(torch.randn(3, 4))
    w.grad = torch.randn(3, 4)
    opt = AdamP([w], foreach=True)
    opt.step()
    assert sorted(opt.state[w]) == ["exp_avg", "exp_avg_sq", "step"] and opt.state[w]["step"] == 1
    assert isinstance(opt.state[w]["step"], int)
    opt = SGDP([w], lr=0.1)
    opt.step()
    assert list(opt.state[w]) == ["momentum"]


def test_foreach_defaults_on_for_dense_cpu():
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = AdamP([w])
    assert opt.param_groups[0]["foreach"] is None
    assert opt._use_foreach(opt.param_groups[0], [w]) is True
    assert opt._use_foreach({"foreach": False}, [w]) is False


def test_invalid_arguments():
    w = [torch.nn.Parameter(torch.randn(2, 2))]
    with pytest.raises(ValueError, match="lr"):
        AdamP(w, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamP(w, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        SGDP(w, lr=0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="momentum"):
        SGDP(w, lr=0.1, momentum=1.0, weight_decay=0.1)
    with pytest.raises(ValueError, match="lr"):
        SGDP(w)  # lr has no default, as in the reference


def test_sparse_gradient_is_rejected():
    w = torch.nn.Parameter(torch.randn(4, 3))
    w.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamP([w], foreach=False).step()


def test_closure_and_empty_parameter():
    w = torch.nn.Parameter(torch.randn(3, 2))
    empty = torch.nn.Parameter(torch.empty(0, 5))
    opt = AdamP([w, empty], lr=0.1, weight_decay=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum() + empty.sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    loss = opt.step(closure)
    assert loss.item() == pytest.approx((before**2).sum().item())
    assert not torch.equal(w, before) and empty.shape == (0, 5)
