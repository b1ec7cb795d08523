"""OpenCLIPPCMEPPLoss in one process: the PCME++ loss behind open_clip's loss interface.

Its global mode must be PCMEPPLoss exactly (values, parts, gradients, including into the model's
logit_scale / logit_bias); every input form gives the same loss; output_dict sums to the loss;
bad calls name the argument. The distributed modes are in test_openclip_distributed.py.
"""

from __future__ import annotations

import pytest
import torch

from pcmekit import ProbEmbedding
from pcmekit.losses import OpenCLIPPCMEPPLoss, PCMEPPLoss, mix_images

from _helpers import gaussians

F64 = torch.float64


def _leaves(b, d, seed):
    tensors = [*gaussians(b, d, seed=seed), *gaussians(b, d, seed=seed + 100)]
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("kind", ["identity", "mixed"])
@pytest.mark.parametrize("weights", [(1e-4, 0.1), (0.3, 0.6), (0.0, 0.0)])
def test_matches_pcmepp_loss_with_model_scale_and_bias(kind, weights):
    vib_weight, pp_weight = weights
    b, d = 9, 5
    matched = None
    if kind == "mixed":
        matched = mix_images(torch.randn(b, 1, 4, 4, dtype=F64), batch_ratio=0.5,
                             generator=torch.Generator().manual_seed(3))[1]
    ref_fn = PCMEPPLoss(init_scale=1.7, init_shift=0.4, vib_weight=vib_weight, pp_weight=pp_weight).double()
    leaves_ref = _leaves(b, d, 1)
    ref, ref_parts = ref_fn(ProbEmbedding(*leaves_ref[:2]), ProbEmbedding(*leaves_ref[2:]), matched)
    ref.backward()

    # The model owns the scale (passed exponentiated, as open_clip does) and the bias.
    log_scale = ref_fn.scale.detach().log().requires_grad_(True)  # the same (float32-rounded) values
    bias = ref_fn.shift.detach().clone().requires_grad_(True)
    loss_fn = OpenCLIPPCMEPPLoss(init_scale=None, init_shift=None, vib_weight=vib_weight, pp_weight=pp_weight)
    leaves = _leaves(b, d, 1)
    loss = loss_fn(leaves[0], leaves[2], log_scale.exp(), bias, image_logvar=leaves[1], text_logvar=leaves[3],
                   matched=matched)
    loss.backward()

    torch.testing.assert_close(loss, ref, rtol=1e-13, atol=1e-15)
    assert set(loss_fn.last_parts) == set(ref_parts)
    for name, value in ref_parts.items():
        torch.testing.assert_close(loss_fn.last_parts[name], value, rtol=1e-13, atol=1e-15, msg=name)
    for mine, theirs in zip(leaves, leaves_ref):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-12, atol=1e-15)
    # d/dlog_scale = scale * d/dscale
    torch.testing.assert_close(log_scale.grad, ref_fn.scale.detach() * ref_fn.scale.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(bias.grad, ref_fn.shift.grad, rtol=1e-12, atol=1e-15)


def test_input_forms_and_output_dict_agree():
    mean_i, logvar_i = gaussians(6, 4, seed=2)
    mean_t, logvar_t = gaussians(6, 4, seed=3)
    loss_fn = OpenCLIPPCMEPPLoss(init_scale=5.0, vib_weight=0.2).double()
    as_tensors = loss_fn(mean_i, mean_t, image_logvar=logvar_i, text_logvar=logvar_t)
    as_dicts = loss_fn({"mean": mean_i, "std": logvar_i}, {"mean": mean_t, "logvar": logvar_t})
    as_embeddings = loss_fn(ProbEmbedding(mean_i, logvar_i), ProbEmbedding(mean_t, logvar_t))
    ref, _ = PCMEPPLoss(vib_weight=0.2).double()(ProbEmbedding(mean_i, logvar_i), ProbEmbedding(mean_t, logvar_t))
    assert torch.equal(as_tensors, as_dicts) and torch.equal(as_tensors, as_embeddings)
    torch.testing.assert_close(as_tensors, ref, rtol=1e-13, atol=0)

    # open_clip's training loop: losses = loss(**model_out, output_dict=True); total = sum(values)
    model_out = {"image_features": {"mean": mean_i, "std": logvar_i}, "text_features": {"mean": mean_t, "std": logvar_t}}
    terms = loss_fn(**model_out, output_dict=True)
    assert set(terms) == {"pcmepp_loss", "vib_loss"}
    torch.testing.assert_close(sum(terms.values()), as_tensors, rtol=1e-15, atol=0)
    torch.testing.assert_close(terms["vib_loss"], 0.2 * loss_fn.last_parts["vib"], rtol=1e-15, atol=0)
    assert loss_fn.last_parts["vib"] > 0  # the VIB term is really there


def test_default_owns_shift_and_takes_logit_scale():
    loss_fn = OpenCLIPPCMEPPLoss()
    assert loss_fn.scale is None and loss_fn.shift is not None
    assert [name for name, _ in loss_fn.named_parameters()] == ["shift"]
    mean_i, logvar_i = gaussians(4, 3, dtype=torch.float32, seed=5)
    mean_t, logvar_t = gaussians(4, 3, dtype=torch.float32, seed=6)
    logit_scale = torch.tensor([5.0], requires_grad=True)  # one element of any shape is accepted
    loss = loss_fn(mean_i, mean_t, logit_scale, image_logvar=logvar_i, text_logvar=logvar_t)
    loss.backward()
    assert logit_scale.grad is not None and loss_fn.shift.grad is not None
    ref, _ = PCMEPPLoss()(ProbEmbedding(mean_i, logvar_i), ProbEmbedding(mean_t, logvar_t))
    torch.testing.assert_close(loss, ref)


def test_errors_name_the_argument():
    mean, logvar = gaussians(4, 3, dtype=torch.float32)
    owned = OpenCLIPPCMEPPLoss(init_scale=5.0)
    model_scaled = OpenCLIPPCMEPPLoss()
    with pytest.raises(ValueError, match="image_logvar is required"):
        owned(mean, {"mean": mean, "std": logvar})
    with pytest.raises(ValueError, match="text_logvar must be None"):
        owned(ProbEmbedding(mean, logvar), {"mean": mean, "std": logvar}, text_logvar=logvar)
    with pytest.raises(ValueError, match=r"'mean' and exactly one of 'std'.*got keys \['mean', 'sigma'\]"):
        owned({"mean": mean, "std": logvar}, {"mean": mean, "sigma": logvar})
    with pytest.raises(TypeError, match="image_features must be a \\[B, D\\] tensor of means.*got list"):
        owned([mean], {"mean": mean, "std": logvar})
    with pytest.raises(ValueError, match=r"text_features's log-variances must have the means' shape \[4, 3\], got \[4, 2\]"):
        owned(ProbEmbedding(mean, logvar), mean, text_logvar=logvar[:, :2])
    with pytest.raises(ValueError, match="logit_scale must not be passed: this loss owns its own"):
        owned(ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar), torch.tensor(5.0))
    with pytest.raises(ValueError, match="logit_scale is required"):
        model_scaled(ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar))
    with pytest.raises(ValueError, match=r"logit_scale must be a one-element floating-point tensor, got shape \[2\]"):
        model_scaled(ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar), torch.ones(2))
    with pytest.raises(TypeError, match="logit_scale must be a one-element floating-point torch.Tensor, got float"):
        model_scaled(ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar), 5.0)
    with pytest.raises(ValueError, match="local_loss=True needs gather=True"):
        OpenCLIPPCMEPPLoss(local_loss=True)
    with pytest.raises(TypeError, match="local_loss must be a bool, got int"):
        OpenCLIPPCMEPPLoss(gather=True, local_loss=1)
    with pytest.raises(ValueError, match="init_scale must be > 0, got -1"):
        OpenCLIPPCMEPPLoss(init_scale=-1.0)
    with pytest.raises(RuntimeError, match=r"OpenCLIPPCMEPPLoss\(gather=True\) needs an initialised"):
        OpenCLIPPCMEPPLoss(init_scale=5.0, gather=True, local_loss=True)(ProbEmbedding(mean, logvar), ProbEmbedding(mean, logvar))
