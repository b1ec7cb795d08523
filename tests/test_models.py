"""pcmekit.models: shapes, finite outputs, gradients, padding, the uncertainty block, errors."""

from __future__ import annotations

import pytest
import torch

import pcmekit
from pcmekit.models import (
    LOGVAR_BIAS_INIT,
    CaptionEncoder,
    DigitImageEncoder,
    GPOPool,
    PIEHead,
    ProbHead,
    ProbVLModel,
    TransformerBlock,
    UncertaintyBlock,
    build_digits_model,
    build_model,
)


def _set(b=5, n=7, c=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, c, generator=g, requires_grad=True)
    lengths = torch.tensor([7, 3, 1, 7, 5])[:b]
    return x, lengths


def _all_grads_finite_and_some_nonzero(module):
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return sum(int(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize("pool", ["gpo", "mean", "max"])
def test_prob_head_shapes_and_gradients(pool):
    x, lengths = _set()
    head = ProbHead(12, 8, pool=pool)
    emb = head(x, lengths)
    assert isinstance(emb, pcmekit.ProbEmbedding) and emb.shape == (5, 8)
    assert torch.isfinite(emb.mean).all() and torch.isfinite(emb.logvar).all()
    torch.testing.assert_close(emb.mean.norm(dim=1), torch.ones(5))
    (emb.mean.sum() + emb.logvar.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert _all_grads_finite_and_some_nonzero(head) >= 4
    # Padding does not leak: positions beyond a row's length get no gradient.
    assert x.grad[2, 1:].abs().sum() == 0 and x.grad[1, 3:].abs().sum() == 0


def test_prob_head_on_vectors_and_logvar_bias_init():
    head = ProbHead(6, 4)
    assert torch.all(head.logvar_fc.bias == LOGVAR_BIAS_INIT)
    assert torch.all(ProbHead(6, 4, logvar_bias_init=-6.0).logvar_fc.bias == -6.0)
    emb = head(torch.randn(3, 6))
    assert emb.shape == (3, 4)
    unc = torch.randn(3, 6)
    assert not torch.equal(head(torch.randn(3, 6), unc_features=unc).logvar, emb.logvar)


def test_gpo_weights_and_padding():
    gpo = GPOPool(d_pe=8, d_hidden=8)
    lengths = torch.tensor([4, 2, 4])
    w = gpo.weights(lengths, 3, 5)
    assert w.shape == (3, 5)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w[1, 2:] == 0).all() and (w[0, 4:] == 0).all()
    torch.testing.assert_close(w[0], w[2])  # weights depend on the length only
    x = torch.randn(3, 5, 6)
    out = gpo(x, lengths)
    y = x.clone()
    y[1, 2:] = 1e6   # padding values must not matter
    torch.testing.assert_close(gpo(y, lengths), out)
    # Order invariance: GPO sorts each dimension.
    torch.testing.assert_close(gpo(x[:, [1, 0, 3, 2, 4]][[0, 2]], lengths[[0, 2]]), out[[0, 2]])
    # A set of one element pools to that element.
    torch.testing.assert_close(gpo(x[:, :1], torch.ones(3, dtype=torch.long)), x[:, 0])


def test_pie_head_shapes_and_gradients():
    x, lengths = _set()
    head = PIEHead(12, 8)
    emb = head(x, lengths)
    assert emb.shape == (5, 8) and torch.isfinite(emb.logvar).all()
    torch.testing.assert_close(emb.mean.norm(dim=1), torch.ones(5))
    (emb.mean.sum() + emb.logvar.sum()).backward()
    assert _all_grads_finite_and_some_nonzero(head) >= 8
    assert x.grad[2, 1:].abs().sum() == 0
    assert torch.all(head.fc_u.bias == LOGVAR_BIAS_INIT) and head.fc_g.bias is None
    g = torch.randn(5, 3)
    head2 = PIEHead(12, 8, global_dim=3)
    assert head2(x.detach(), lengths, global_features=g).shape == (5, 8)
    with pytest.raises(ValueError, match=r"global_features must have shape \[5, 3\]"):
        head2(x.detach(), lengths, global_features=torch.randn(5, 4))


def test_uncertainty_block_runs_a_parallel_copy():
    block = TransformerBlock(16, heads=2)
    ub = UncertaintyBlock(block)
    x = torch.randn(2, 5, 16)
    mean_out, unc_out = ub(x)
    torch.testing.assert_close(mean_out, unc_out)        # "copy" starts as the same function
    assert ub.uncertainty is not ub.block
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(ub.block.parameters(), ub.uncertainty.parameters()))
    torch.manual_seed(0)
    fresh = UncertaintyBlock(TransformerBlock(16, heads=2), init="reset")
    a, b = fresh(x)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="'copy' or 'reset'"):
        UncertaintyBlock(block, init="zeros")


@pytest.mark.parametrize("head", ["gpo", "pie"])
def test_digits_model_end_to_end(head):
    model = build_digits_model(20, embed_dim=8, width=16, heads=2, head=head, seed=0)
    # Same seed, same model; rebuilt from its config.
    again = build_model(model.config)
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    images = torch.rand(4, 1, 8, 8)
    tokens = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0], [7, 8, 9, 10], [11, 0, 0, 0]])
    lengths = torch.tensor([3, 2, 4, 1])
    img, txt = model(images, tokens, lengths)
    assert img.shape == (4, 8) and txt.shape == (4, 8)
    loss = pcmekit.losses.PCMEPPLoss()(img, txt)[0]
    loss.backward()
    assert torch.isfinite(loss)
    # Both the mean path and the uncertainty copy of the last block learn.
    assert _all_grads_finite_and_some_nonzero(model) > 20
    for enc in (model.image_encoder, model.text_encoder):
        ub = enc.blocks.blocks[-1]
        assert isinstance(ub, UncertaintyBlock)
        assert ub.uncertainty.mlp[0].weight.grad.abs().sum() > 0 and ub.block.mlp[0].weight.grad.abs().sum() > 0
    # Padding columns beyond the batch's longest caption are trimmed, not attended.
    model.eval()
    with torch.no_grad():
        short = model.encode_text(tokens[:, :4], lengths)
        padded = model.encode_text(torch.cat([tokens, torch.zeros(4, 3, dtype=torch.long)], 1), lengths)
    torch.testing.assert_close(short.mean, padded.mean)


def test_prob_vl_model_heads_and_errors():
    enc_i, enc_t = DigitImageEncoder(16, heads=2), CaptionEncoder(10, 16, heads=2)
    model = ProbVLModel(enc_i, enc_t, {"image": ProbHead(16, 4), "text": ProbHead(16, 4)})
    assert model.encode_image(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="keys 'image' and 'text'"):
        ProbVLModel(enc_i, enc_t, {"image": ProbHead(16, 4)})
    with pytest.raises(ValueError, match=r"\(image_head, text_head\)"):
        ProbVLModel(enc_i, enc_t, [ProbHead(16, 4)])
    with pytest.raises(TypeError, match="nn.Module"):
        ProbVLModel(enc_i, enc_t, [ProbHead(16, 4), "head"])
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, 8, 8\]"):
        enc_i(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="tokens must be int64"):
        enc_t(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"features must have shape \[B, L, 16\]"):
        ProbHead(16, 4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 3\]"):
        ProbHead(16, 4)(torch.randn(2, 3, 16), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="head must be 'gpo' or 'pie'"):
        build_digits_model(10, head="mlp")
    with pytest.raises(ValueError, match="unknown model builder"):
        build_model({"builder": "resnet"})
