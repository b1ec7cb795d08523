"""The fused AdamP / SGDP step (``fused=True``, csrc/cpu/adamp.cpp) against the ``adamp`` package.

The fused kernel is not bit-for-bit with the reference (its sums are in double where the
reference sums in float, and it takes the IEEE square root where torch's CPU ``sqrt`` is off by
an ulp for some inputs), so its results are compared within written-down tolerances:

* same dtype, after many steps: ``max |ours - ref| <= REL[dtype] * max |ref|`` per tensor;
* float32 against a float64 run of the reference (the truth): our error at most twice the
  reference's own float32 error (STYLE.md's policy);
* exactly equal wherever no square root and no reduction is involved: AdamP's ``exp_avg`` and
  ``exp_avg_sq``, SGDP's momentum buffer with Nesterov, and every parameter of dimension <= 1
  under SGDP (the element-wise arithmetic is the reference's, FMAs included);
* the projection decisions equal the reference's at every step (the gradients are built to be
  clearly on one side of the threshold, or random).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

adamp = pytest.importorskip("adamp")

import pcmekit.optim as optim_mod  # noqa: E402
from _helpers import run_under_capabilities  # noqa: E402
from pcmekit import _C, _core  # noqa: E402
from pcmekit.optim import SGDP, AdamP  # noqa: E402
from test_optim import (  # noqa: E402
    MODEL,
    MODES,
    OPTIMIZERS,
    clone_params,
    make_grad,
    make_params,
    reference_kind,
)

F64 = torch.float64
F32 = torch.float32

#: Largest difference from the reference, relative to the tensor's largest value, after
#: STEPS steps (measured: float32 2.3e-6 (SGDP) / 1e-7 (AdamP), float64 7e-15).
REL = {F32: 2e-5, F64: 1e-12}
STEPS = 40

# A model with 1-D, 2-D and 4-D parameters, one larger than the CPU split threshold on two threads
# (so the row-parallel path runs), zero gradients, a parameter without gradient.
BIG_MODEL = {
    "conv": ((64, 32, 3, 3), "cycle"),
    "conv.bias": ((64,), "cycle"),
    "big": ((256, 1200), "cycle"),
    "big.bias": ((256,), "cycle"),
    "flat": ((70000,), "cycle"),
    "dead": ((16, 9), "zero"),
    "frozen": ((5, 5), "none"),
}


class _Spy:
    """Counts the parameters handed to the fused kernel (wraps ``_core.adamp_step``)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = _core.adamp_step

        def spy(algorithm, params, *args, **kwargs):
            self.calls.append([tuple(p.shape) for p in params])
            return real(algorithm, params, *args, **kwargs)

        monkeypatch.setattr(_core, "adamp_step", spy)

    @property
    def fused(self):
        return sum(len(c) for c in self.calls)


def run_fused_pair(kind, opts, dtype=F64, steps=STEPS, seed=0, model=MODEL, ref_opts=None, check=True):
    """Ours with fused=True and the reference side by side; every step's decisions are checked."""
    ours_cls, ref_cls, base = OPTIMIZERS[kind]
    ours_p = make_params(dtype, "cpu", seed, model)
    ref_p = clone_params(ours_p)
    ours = ours_cls(list(ours_p.values()), fused=True, **{**base, **opts})
    ref = ref_cls(list(ref_p.values()), **{**base, **opts, **(ref_opts or {})})
    gen = torch.Generator().manual_seed(seed + 1)
    seen = set()
    for step in range(steps):
        mode = MODES[step % len(MODES)]
        for name in model:
            grad = make_grad(name, ours_p[name], mode, step, gen, model)
            ours_p[name].grad = grad
            ref_p[name].grad = None if grad is None else grad.clone()
        truth = {n: reference_kind(p.detach(), p.grad) for n, p in ref_p.items() if p.grad is not None}
        ours.step()
        ref.step()
        if check:
            for i, name in enumerate(model):
                got = ours.last_projection[0][i]
                assert got == truth.get(name), (step, name, got, truth.get(name))
                seen.add(got)
    if check:
        assert {"channel", "layer", "none"} <= seen, seen
    return ours_p, ref_p, ours, ref


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    scale = b.detach().abs().max().double().clamp_min(1e-300)
    return ((a.detach().double() - b.detach().double()).abs().max() / scale).item()


def assert_close_to_reference(ours_p, ref_p, ours, ref, dtype, kind, nesterov=False):
    """The tolerance policy of this file (see the module docstring)."""
    for name, a in ours_p.items():
        b = ref_p[name]
        assert relative_difference(a, b) <= REL[dtype], (name, relative_difference(a, b))
        if kind == "sgdp" and a.dim() <= 1:
            assert torch.equal(a, b), name
        sa, sb = ours.state.get(a, {}), ref.state.get(b, {})
        assert sa.keys() == sb.keys(), name
        for key in sa:
            if not isinstance(sa[key], torch.Tensor):
                assert sa[key] == sb[key], (name, key)
                continue
            assert relative_difference(sa[key], sb[key]) <= REL[dtype], (name, key)
            if key in ("exp_avg", "exp_avg_sq") or (key == "momentum" and (nesterov or a.dim() <= 1)):
                assert torch.equal(sa[key], sb[key]), (name, key)


# ------------------------------------------------------------------------------------------------
# against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["nowd", "wd"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_fused_matches_reference(kind, nesterov, weight_decay, dtype, monkeypatch):
    spy = _Spy(monkeypatch)
    ours_p, ref_p, ours, ref = run_fused_pair(kind, dict(nesterov=nesterov, weight_decay=weight_decay), dtype)
    assert_close_to_reference(ours_p, ref_p, ours, ref, dtype, kind, nesterov)
    assert spy.fused > 0 and ours_p["frozen"] not in ours.state


@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_fused_large_parameters_and_threads(kind, monkeypatch):
    """Parameters big enough to be split across threads; the thread count changes no bit."""
    results = []
    for threads in (1, 2, 3):
        _core.set_num_threads(threads)
        try:
            ours_p, ref_p, ours, ref = run_fused_pair(kind, dict(weight_decay=0.05), F32, steps=8, model=BIG_MODEL)
        finally:
            _core.set_num_threads(None)
        assert_close_to_reference(ours_p, ref_p, ours, ref, F32, kind)
        results.append(ours_p)
    for other in results[1:]:
        for a, b in zip(results[0].values(), other.values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_fused_float32_error_within_twice_the_references(kind):
    """Against a float64 run of the reference, fused float32 errs at most twice as much as the
    reference's own float32 run (100 steps)."""
    ours_cls, ref_cls, base = OPTIMIZERS[kind]
    kw = dict(base, weight_decay=0.1)
    truth = make_params(F64)
    ref32 = {k: torch.nn.Parameter(v.detach().float()) for k, v in truth.items()}
    fused32 = clone_params(ref32)
    opts = [ref_cls(list(truth.values()), **kw), ref_cls(list(ref32.values()), **kw),
            ours_cls(list(fused32.values()), fused=True, **kw)]
    gen = torch.Generator().manual_seed(1)
    for step in range(100):
        for name in MODEL:
            g = make_grad(name, truth[name], MODES[step % 4], step, gen)
            truth[name].grad = g
            ref32[name].grad = None if g is None else g.float()
            fused32[name].grad = None if g is None else g.float()
        for opt in opts:
            opt.step()
    for name in MODEL:
        ref_err = relative_difference(ref32[name], truth[name])
        our_err = relative_difference(fused32[name], truth[name])
        assert our_err <= 2 * ref_err + 1e-7, (name, our_err, ref_err)


@pytest.mark.parametrize(
    "wrong", [dict(wd_ratio=0.2), dict(delta=0.5), dict(eps=1e-3)], ids=["wd_ratio", "delta", "eps"]
)
def test_comparison_can_fail(wrong):
    """A deliberately wrong hyper-parameter on the reference's side breaks the comparison."""
    with pytest.raises(AssertionError):
        ours_p, ref_p, ours, ref = run_fused_pair("adamp", dict(weight_decay=0.1), F32, steps=12, ref_opts=wrong)
        assert_close_to_reference(ours_p, ref_p, ours, ref, F32, "adamp")


def test_sgdp_buffer_receives_the_projection_without_nesterov():
    w = torch.nn.Parameter(torch.randn(4, 6, dtype=F64))
    g = torch.randn(4, 6, dtype=F64)
    g -= w.detach() * ((g * w.detach()).sum(1, keepdim=True) / (w.detach() ** 2).sum(1, keepdim=True))
    for nesterov in (False, True):
        p = torch.nn.Parameter(w.detach().clone())
        p.grad = g.clone()
        opt = SGDP([p], lr=0.1, momentum=0.9, nesterov=nesterov, fused=True)
        opt.step()
        assert opt.last_projection == [["channel"]]
        buf = opt.state[p]["momentum"]
        if nesterov:  # the buffer is the plain momentum of the raw gradient
            assert torch.equal(buf, g)
        else:  # projected in place: each row orthogonal to its weight row
            assert not torch.equal(buf, g)
            assert (buf * w.detach()).sum(1).abs().max() < 1e-12


def test_decisions_near_the_threshold():
    """Both sides of the threshold, 1e-3 away (relative): the fused decision is the reference's.
    (Closer than about 1e-6 in float32 the two may decide differently: see optim's docs.)"""
    gen = torch.Generator().manual_seed(3)
    rows, width = 6, 50
    threshold = 0.1 / math.sqrt(width)
    w = torch.randn(rows, width, generator=gen, dtype=F64)
    ortho = torch.randn(rows, width, generator=gen, dtype=F64)
    ortho -= w * ((ortho * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True))
    wn, on = w / w.norm(dim=1, keepdim=True), ortho / ortho.norm(dim=1, keepdim=True)
    for factor in (1 - 1e-3, 1 + 1e-3):
        cos = threshold * factor
        g = cos * wn + math.sqrt(1 - cos * cos) * on  # every row at cosine `cos`
        for dtype in (F32, F64):
            p = torch.nn.Parameter(w.to(dtype))
            q = torch.nn.Parameter(w.to(dtype))
            p.grad, q.grad = g.to(dtype), g.to(dtype)
            opt = AdamP([p], fused=True)
            opt.step()
            expected = "channel" if factor < 1 else reference_kind(q.detach(), q.grad)
            assert opt.last_projection == [[expected]]
            assert expected == reference_kind(q.detach(), q.grad)


# ------------------------------------------------------------------------------------------------
# layouts, dtypes, devices: what the kernel takes and what falls back
# ------------------------------------------------------------------------------------------------


def test_channels_last_weights_are_fused(monkeypatch):
    spy = _Spy(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 5, 5, generator=gen)
    ours = torch.nn.Parameter(w.clone().to(memory_format=torch.channels_last))
    ref = torch.nn.Parameter(w.clone())  # the reference's view() needs a contiguous weight
    opt = AdamP([ours], fused=True, weight_decay=0.1)
    ref_opt = adamp.AdamP([ref], weight_decay=0.1)
    for step in range(10):
        g = torch.randn(8, 3, 5, 5, generator=gen)
        now = ref.detach()
        if step % 2:  # orthogonal to each output channel's weight
            g = g - now * ((g * now).sum((1, 2, 3), keepdim=True) / (now * now).sum((1, 2, 3), keepdim=True))
        else:  # clearly aligned with the weight
            g = g + 2 * now
        ours.grad = g.clone().to(memory_format=torch.channels_last)
        ref.grad = g.clone()
        opt.step()
        ref_opt.step()
        assert opt.last_projection[0][0] == ("channel" if step % 2 else "none")
    assert spy.fused == 10
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert relative_difference(ours, ref) <= REL[F32]


def test_other_layouts_and_dtypes_fall_back(monkeypatch):
    """Non-contiguous, float16, mixed-order and non-CPU parameters take the foreach path, whose
    results are the non-fused optimizer's bit for bit; float32 and float64 go to one kernel call each."""
    spy = _Spy(monkeypatch)

    def make():
        gen = torch.Generator().manual_seed(0)
        return [
            torch.nn.Parameter(torch.randn(7, 5, generator=gen).t()),  # non-contiguous
            torch.nn.Parameter(torch.randn(6, 4, generator=gen).half()),  # 16-bit
            torch.nn.Parameter(torch.randn(6, 4, generator=gen)),  # float32: fused
            torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=F64)),  # float64: fused
        ]

    a, b = make(), make()
    gen = torch.Generator().manual_seed(1)
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        q.grad = p.grad.clone()
    fused = AdamP(a, fused=True, weight_decay=0.1)
    plain = AdamP(b, weight_decay=0.1)
    fused.step()
    plain.step()
    assert spy.calls == [[(6, 4)], [(3, 4)]]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert relative_difference(a[2], b[2]) <= REL[F32] and relative_difference(a[3], b[3]) <= REL[F64]
    # A gradient in another memory order than its channels_last weight falls back too.
    w = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    w.grad = torch.randn(4, 3, 2, 2)
    state = [torch.zeros_like(w)] * 2
    assert not optim_mod._fusable(w, w.grad, state)
    assert optim_mod._fusable(w, w.grad.to(memory_format=torch.channels_last), state)
    meta = torch.nn.Parameter(torch.empty(4, 3, device="meta"))
    assert not optim_mod._fusable(meta, torch.empty(4, 3, device="meta"), [torch.empty(4, 3, device="meta")])


@pytest.mark.cuda
def test_cuda_parameters_fall_back(monkeypatch):
    """On CUDA ``fused=True`` runs the foreach path (no CUDA kernel), with the same numbers."""
    device = "cuda"
    spy = _Spy(monkeypatch)
    a = torch.nn.Parameter(torch.randn(6, 5, device=device))
    b = torch.nn.Parameter(a.detach().clone())
    a.grad = torch.randn(6, 5, device=device)
    b.grad = a.grad.clone()
    AdamP([a], fused=True).step()
    AdamP([b], foreach=True).step()
    assert spy.fused == 0 and torch.equal(a, b)


def test_default_is_not_fused(monkeypatch):
    spy = _Spy(monkeypatch)
    w = torch.nn.Parameter(torch.randn(4, 4))
    w.grad = torch.randn(4, 4)
    opt = AdamP([w])
    assert opt.param_groups[0]["fused"] is None
    opt.step()
    SGDP([w], lr=0.1).step()
    assert spy.fused == 0


def test_empty_and_scalar_parameters():
    params = [torch.nn.Parameter(torch.empty(0, 5)), torch.nn.Parameter(torch.tensor(1.5)),
              torch.nn.Parameter(torch.randn(3, 1, 1, 1))]
    refs = [torch.nn.Parameter(p.detach().clone()) for p in params[1:]]
    for p in params:
        p.grad = torch.ones_like(p)
    for p, q in zip(params[1:], refs):
        q.grad = p.grad.clone()
    opt = AdamP(params, fused=True, weight_decay=0.1)
    opt.step()
    adamp.AdamP(refs, weight_decay=0.1).step()
    assert opt.last_projection == [["none", "none", reference_kind(refs[1].detach(), refs[1].grad)]]
    for p, q in zip(params[1:], refs):
        assert relative_difference(p, q) <= REL[F32]


def test_generic_instruction_set_gives_the_same_bits():
    """PCMEKIT_CPU_CAPABILITY=generic (portable loops) computes what the AVX2 path computes."""
    script = r"""
import json, sys, torch
from pcmekit.optim import AdamP, SGDP
gen = torch.Generator().manual_seed(0)
out = []
for cls, kw in ((AdamP, dict(nesterov=True)), (SGDP, dict(lr=0.1, momentum=0.9))):
    for dtype in (torch.float32, torch.float64):
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in ((9, 3, 3, 3), (37, 13), (101,))]
        opt = cls(ps, fused=True, weight_decay=0.1, **kw)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
            opt.step()
        out.append([p.detach().flatten().tolist() for p in ps])
print(json.dumps(out))
"""
    results = run_under_capabilities(script)
    assert results[0] == results[1]


# ------------------------------------------------------------------------------------------------
# state dicts and arguments
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["fused-to-ref", "ref-to-fused"])
@pytest.mark.parametrize("kind", ["adamp", "sgdp"])
def test_fused_state_dict_round_trip(kind, direction):
    ours_cls, ref_cls, base = OPTIMIZERS[kind]
    kw = dict(base, weight_decay=0.1)

    def fused(ps):
        return ours_cls(ps, fused=True, **kw)

    def reference(ps):
        return ref_cls(ps, **kw)

    first, second = (fused, reference) if direction == "fused-to-ref" else (reference, fused)
    params = make_params(F32)
    opt = first(list(params.values()))
    gen = torch.Generator().manual_seed(5)
    for step in range(5):
        for name, p in params.items():
            p.grad = make_grad(name, p, MODES[step % 4], step, gen)
        opt.step()
    saved = opt.state_dict()
    if direction == "fused-to-ref":
        assert saved["param_groups"][0]["fused"] is True
    # Continue from the same point with the second class and with the reference.
    cont, ref_cont = clone_params(params), clone_params(params)
    opt_b, opt_r = second(list(cont.values())), reference(list(ref_cont.values()))
    opt_b.load_state_dict(copy.deepcopy(saved))
    opt_r.load_state_dict(copy.deepcopy(saved))
    for step in range(5, 10):
        for name, p in cont.items():
            p.grad = make_grad(name, p, MODES[step % 4], step, gen)
            ref_cont[name].grad = None if p.grad is None else p.grad.clone()
        opt_b.step()
        opt_r.step()
    for name in cont:
        assert relative_difference(cont[name], ref_cont[name]) <= REL[F32], name
    assert [sorted(s) for s in opt_b.state_dict()["state"].values()] == [
        sorted(s) for s in saved["state"].values()
    ]


def test_old_state_dict_gets_fused_default():
    w = torch.nn.Parameter(torch.randn(3, 3))
    opt = AdamP([w], fused=True)
    state = opt.state_dict()
    del state["param_groups"][0]["fused"]
    opt.load_state_dict(state)
    assert opt.param_groups[0]["fused"] is None


def test_fused_with_foreach_is_rejected():
    w = [torch.nn.Parameter(torch.randn(2, 2))]
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        AdamP(w, fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        SGDP(w, lr=0.1, fused=True, foreach=True)
    SGDP(w, lr=0.1, fused=True, foreach=False)  # the fallback path may be chosen


# ------------------------------------------------------------------------------------------------
# the core's own checks (called directly, as the Python layer never sends bad input)
# ------------------------------------------------------------------------------------------------


def _view(t, rows=None):
    rows = t.shape[0] if rows is None else rows
    cols = t.numel() // rows if rows else 0
    return (t.data_ptr(), rows, cols, t.stride(0) if t.dim() == 2 else cols, 1, _core._DTYPE_CODES[t.dtype], 0, 0)


def _call(params, grads, ms, vs, steps=None, algorithm=0, **hyper):
    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, momentum=0.0, dampening=0.0, eps=1e-8, weight_decay=0.0,
              delta=0.1, wd_ratio=0.1, nesterov=False)
    kw.update(hyper)
    n = len(params)
    return _C.adamp_step(algorithm, params, grads, ms, vs, steps or [1] * n, [True] * n, *kw.values(), 1)


def test_core_rejects_bad_input():
    w, g, m, v = torch.randn(4, 6), torch.randn(4, 6), torch.zeros(4, 6), torch.zeros(4, 6)
    ok = [[_view(t)] for t in (w, g, m, v)]
    assert _call(*ok) in ([0], [1], [2])
    before = [t.clone() for t in (w, g, m, v)]
    with pytest.raises(ValueError, match=r"tensors\[0\]\.grad must have shape that of tensors\[0\]\.param = \[4, 6\], got \[4, 5\]"):
        _call(ok[0], [_view(torch.randn(4, 5))], ok[2], ok[3])
    with pytest.raises(TypeError, match=r"tensors\[0\]\.exp_avg must have dtype float32, got float64"):
        _call(ok[0], ok[1], [_view(torch.randn(4, 6, dtype=F64))], ok[3])
    with pytest.raises(TypeError, match=r"tensors\[0\]\.param must have dtype float32 or float64, got float16"):
        h = torch.randn(4, 6).half()
        _call([_view(h)], [_view(h.clone())], [_view(h.clone())], [_view(h.clone())])
    with pytest.raises(ValueError, match=r"tensors\[0\]\.exp_avg_sq is missing"):
        _call(*ok[:3], [(0, 4, 6, 6, 1, 0, 0, 0)])
    with pytest.raises(ValueError, match=r"tensors\[0\]\.exp_avg_sq must be absent for SGDP"):
        _call(*ok, algorithm=1)
    with pytest.raises(ValueError, match=r"grads must have one entry per parameter \(1\), got 2"):
        _call(ok[0], ok[1] * 2, ok[2], ok[3])
    with pytest.raises(ValueError, match=r"tensors\[0\]\.step must be >= 1, got 0"):
        _call(*ok, steps=[0])
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\), got 1"):
        _call(*ok, beta2=1.0)
    with pytest.raises(ValueError, match="lr must be >= 0, got -1"):
        _call(*ok, lr=-1.0)
    with pytest.raises(ValueError, match="delta must be finite"):
        _call(*ok, delta=math.inf)
    with pytest.raises(ValueError, match="unknown optimizer code 7"):
        _call(*ok, algorithm=7)
    with pytest.raises(ValueError, match=r"tensors\[0\]\.param and tensors\[0\]\.grad overlap in memory"):
        _call(ok[0], ok[0], ok[2], ok[3])
    strided = torch.randn(4, 12)[:, ::2]
    with pytest.raises(ValueError, match=r"tensors\[0\]\.param must be contiguous \(strides \[6, 1\]\), got strides \[12, 1\]"):
        _call([(strided.data_ptr(), 4, 6, 12, 1, 0, 0, 0)], ok[1], ok[2], ok[3])
    with pytest.raises(ValueError, match=r"tensors\[0\]\.param is on cuda; the fused step runs on the CPU only"):
        _call([(w.data_ptr(), 4, 6, 6, 1, 0, 1, 0)], ok[1], ok[2], ok[3])
    with pytest.raises(ValueError, match=r"tensors\[1\]\.param must be on cpu:0, got cuda:0"):
        w2 = torch.randn(4, 6)
        _call(ok[0] + [(w2.data_ptr(), 4, 6, 6, 1, 0, 1, 0)], ok[1] * 2, ok[2] * 2, ok[3] * 2, steps=[1, 1])
    assert all(torch.equal(a, b) for a, b in zip((w, g, m, v), before))  # the rejected calls wrote nothing
    assert _C.adamp_step(0, [], [], [], [], [], [], *([0.0] * 9), False, 1) == []


# ------------------------------------------------------------------------------------------------
# the benchmark's fused row
# ------------------------------------------------------------------------------------------------


def test_bench_optim_fused_row(monkeypatch):
    """``pcmekit bench optim`` checks the fused step against adamp, then times it with the bytes
    it moves and a plain copy of as many bytes (on a small stand-in for ResNet-50)."""
    from pcmekit.bench import optim as bench_optim

    shapes = [(16, 3, 3, 3), (16,), (16,), (32, 16, 1, 1), (32,), (10, 32), (10,)]
    monkeypatch.setattr(bench_optim, "resnet50_shapes", lambda *args, **kwargs: shapes)
    rows = bench_optim.run(quick=True, repeats=1)
    impls = [r["impl"] for r in rows]
    assert impls.count("pcmekit AdamP (fused)") == 2 and impls.count(bench_optim.COPY) == 2
    fused_row = rows[impls.index("pcmekit AdamP (fused)")]
    # Bit-identical results on some machines (AVX-512 here), a tiny difference on others: either
    # way the note says the row was checked against adamp.
    notes = fused_row["notes"]
    assert ("max rel. diff to adamp" in notes or "results identical to adamp" in notes) and "GB/step" in notes
    # weights: 10 arrays of 4 bytes per element (two passes); 1-D parameters: 7 (one pass)
    weights = 16 * 27 + 32 * 16 + 10 * 32
    assert bench_optim.fused_bytes(shapes) == 40 * weights + 28 * (16 + 16 + 32 + 10)
