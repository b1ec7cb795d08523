"""pcmekit.optim.param_groups: the weight-decay and learning-rate rules (docs/design.md,
"Parameter groups"), on small models named like open_clip's towers, and through AdamP / SGDP."""

from __future__ import annotations

import pytest
import torch

from pcmekit.losses import OpenCLIPPCMEPPLoss
from pcmekit.optim import SGDP, AdamP, param_groups


class _Block(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(d)
        self.mlp = torch.nn.Linear(d, d)


class _Tower(torch.nn.Module):
    def __init__(self, d, depth):
        super().__init__()
        self.resblocks = torch.nn.ModuleList([_Block(d) for _ in range(depth)])


class _CLIPLike(torch.nn.Module):
    """Names as in open_clip's CLIP: a visual tower with 3 blocks, a text tower with 2."""

    def __init__(self, d=4):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.conv1 = torch.nn.Conv2d(3, d, 2, bias=False)
        self.visual.class_embedding = torch.nn.Parameter(torch.randn(d))
        self.visual.transformer = _Tower(d, 3)
        self.visual.bn = torch.nn.BatchNorm1d(d)
        self.visual.proj = torch.nn.Parameter(torch.randn(d, d))
        self.token_embedding = torch.nn.Embedding(10, d)
        self.positional_embedding = torch.nn.Parameter(torch.randn(5, d))
        self.transformer = _Tower(d, 2)
        self.ln_final = torch.nn.LayerNorm(d)
        self.text_projection = torch.nn.Parameter(torch.randn(d, d))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.std_head = torch.nn.Linear(d, d)  # a probabilistic head
        self.frozen = torch.nn.Linear(d, d)
        self.frozen.requires_grad_(False)


def _table(groups):
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def test_rules_on_an_open_clip_shaped_model():
    model = _CLIPLike()
    groups = param_groups(model, 0.05, lr=1e-3, layer_decay=0.5, lr_scale={"visual.": 0.1, "transformer.": 0.2})
    table = _table(groups)
    v, t = 1e-3 * 0.1, 1e-3 * 0.2
    expected = {
        "visual.conv1.weight": (v, 0.05),
        "visual.class_embedding": (v, 0.0),                     # ndim 1
        "visual.bn.weight": (v, 0.0), "visual.bn.bias": (v, 0.0),
        "visual.proj": (v, 0.05),
        "token_embedding.weight": (1e-3, 0.05),
        "positional_embedding": (1e-3, 0.05),
        "ln_final.weight": (1e-3, 0.0), "ln_final.bias": (1e-3, 0.0),
        "text_projection": (1e-3, 0.05),
        "logit_scale": (1e-3, 0.0),
        "std_head.weight": (1e-3, 0.05), "std_head.bias": (1e-3, 0.0),
    }
    for b in range(3):  # visual tower: L = 3, block b gets 0.5 ** (3 - b)
        f = v * 0.5 ** (3 - b)
        expected.update({f"visual.transformer.resblocks.{b}.ln_1.weight": (f, 0.0),
                         f"visual.transformer.resblocks.{b}.ln_1.bias": (f, 0.0),
                         f"visual.transformer.resblocks.{b}.mlp.weight": (f, 0.05),
                         f"visual.transformer.resblocks.{b}.mlp.bias": (f, 0.0)})
    for b in range(2):  # text tower: L = 2, and the longer prefix "transformer." wins over none
        f = t * 0.5 ** (2 - b)
        expected.update({f"transformer.resblocks.{b}.ln_1.weight": (f, 0.0),
                         f"transformer.resblocks.{b}.ln_1.bias": (f, 0.0),
                         f"transformer.resblocks.{b}.mlp.weight": (f, 0.05),
                         f"transformer.resblocks.{b}.mlp.bias": (f, 0.0)})
    assert set(table) == set(expected)  # frozen parameters are left out
    for name, (lr, wd) in expected.items():
        assert table[name][0] == pytest.approx(lr, rel=1e-15), name
        assert table[name][1] == wd, name
    # one group per distinct (lr, weight_decay), each parameter once
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys))
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(table)
    for g in groups:
        assert [dict(model.named_parameters())[n] is p for n, p in zip(g["param_names"], g["params"])] == [True] * len(g["params"])


def test_without_layer_decay_and_pcmepp_depth_rule():
    model = _CLIPLike()
    flat = _table(param_groups(model, 0.1, lr=2e-3))
    assert {lr for lr, _ in flat.values()} == {2e-3}
    # PCME++'s rule for a 12-block tower: block b gets layer_decay ** (12 - b).
    tower = _Tower(2, 12)
    table = _table(param_groups(tower, 1e-4, lr=5e-4, layer_decay=0.7))
    for b in range(12):
        assert table[f"resblocks.{b}.mlp.weight"] == (pytest.approx(5e-4 * 0.7 ** (12 - b), rel=1e-14), 1e-4)


def test_adamp_and_sgdp_apply_the_groups():
    """With zero gradients the update is 0, so a step only decays: w *= 1 - lr_group * wd_group."""
    for make in (lambda g: AdamP(g, lr=1.0, weight_decay=123.0, wd_ratio=1.0),
                 lambda g: SGDP(g, lr=1.0, weight_decay=123.0, momentum=0.0, wd_ratio=1.0)):
        torch.manual_seed(0)
        model = _CLIPLike()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        groups = param_groups(model, 0.5, lr=0.1, layer_decay=0.5)
        opt = make(groups)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        table = _table(groups)
        for name, p in model.named_parameters():
            if name not in table:
                assert torch.equal(p, before[name])  # frozen: not in the optimizer
                continue
            lr, wd = table[name]
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), rtol=1e-6, atol=0, msg=name)
        assert not torch.equal(model.visual.proj, before["visual.proj"])  # a decayed one really moved


def test_loss_parameters_and_no_decay_names():
    loss = OpenCLIPPCMEPPLoss()
    head = torch.nn.Linear(3, 3)
    both = torch.nn.ModuleDict({"model": head, "loss": loss})
    table = _table(param_groups(both, 0.2, lr=1e-3, no_decay=("weight",)))
    assert table == {"model.weight": (1e-3, 0.0), "model.bias": (1e-3, 0.0), "loss.shift": (1e-3, 0.0)}


def test_errors_name_the_argument():
    model = _CLIPLike()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got list"):
        param_groups([torch.nn.Parameter(torch.ones(2))], 0.1, lr=1e-3)
    with pytest.raises(ValueError, match="weight_decay must be finite and >= 0, got -0.1"):
        param_groups(model, -0.1, lr=1e-3)
    with pytest.raises(ValueError, match="lr must be finite and > 0, got 0"):
        param_groups(model, 0.1, lr=0)
    with pytest.raises(ValueError, match="layer_decay must be finite and > 0 and <= 1, got 1.5"):
        param_groups(model, 0.1, lr=1e-3, layer_decay=1.5)
    with pytest.raises(ValueError, match="block_pattern must have exactly one group"):
        param_groups(model, 0.1, lr=1e-3, block_pattern=r"resblocks\.\d+\.")
    with pytest.raises(ValueError, match=r"block_pattern 'res\(' is not a valid regular expression"):
        param_groups(model, 0.1, lr=1e-3, block_pattern="res(")
    with pytest.raises(ValueError, match=r"lr_scale prefixes \['vision\.'\] match no parameter"):
        param_groups(model, 0.1, lr=1e-3, lr_scale={"vision.": 0.1})
    with pytest.raises(ValueError, match=r"lr_scale\['visual\.'\] must be finite and > 0, got 0"):
        param_groups(model, 0.1, lr=1e-3, lr_scale={"visual.": 0.0})
    with pytest.raises(TypeError, match="no_decay must be an iterable of names, not a str"):
        param_groups(model, 0.1, lr=1e-3, no_decay="logit_scale")
    with pytest.raises(ValueError, match="block_pattern's group must match an integer"):
        param_groups(model, 0.1, lr=1e-3, layer_decay=0.5, block_pattern=r"(resblocks)\.")
