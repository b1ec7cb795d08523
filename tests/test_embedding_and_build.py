"""ProbEmbedding, build information and thread settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import pcmekit

from _helpers import gaussians


def test_prob_embedding_container():
    mean, logvar = gaussians(6, 4)
    emb = pcmekit.ProbEmbedding(mean, logvar)
    assert len(emb) == 6 and emb.dim == 4 and emb.shape == (6, 4)
    assert emb.dtype == torch.float64 and emb.device.type == "cpu"
    assert emb[2].shape == (1, 4) and len(emb[1:4]) == 3
    torch.testing.assert_close(emb[2].mean, mean[2:3])
    torch.testing.assert_close(emb.uncertainty(), logvar.exp().mean(1))
    assert emb.to(torch.float32).dtype == torch.float32
    m, lv = emb
    assert m is mean and lv is logvar
    both = pcmekit.ProbEmbedding.cat([emb, emb[:2]])
    assert len(both) == 8
    assert "N=6" in repr(emb)


def test_prob_embedding_detach():
    mean, logvar = (t.requires_grad_() for t in gaussians(3, 2))
    assert not pcmekit.ProbEmbedding(mean, logvar).detach().mean.requires_grad


@pytest.mark.parametrize(
    "mean,logvar,exc,pattern",
    [
        (torch.zeros(3), torch.zeros(3), ValueError, r"mean must have shape \[N, D\], got \[3\]"),
        (torch.zeros(3, 2), torch.zeros(3, 3), ValueError, r"logvar must have the shape of mean \[3, 2\], got \[3, 3\]"),
        (torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), TypeError, "logvar must have mean's dtype"),
        ([[0.0]], torch.zeros(1, 1), TypeError, "mean must be a torch.Tensor, got list"),
    ],
)
def test_prob_embedding_rejects_bad_input(mean, logvar, exc, pattern):
    with pytest.raises(exc, match=pattern):
        pcmekit.ProbEmbedding(mean, logvar)


def test_build_info_reports_itself():
    info = pcmekit.build_info()
    assert info["version"] == pcmekit.__version__
    assert info["cpu_simd"] in ("avx512", "avx2", "generic")
    assert info["cpu_threading"] == "pcmekit pool" or info["cpu_threading"].startswith("openmp (")
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda_available"] == pcmekit.cuda_available()
    if not info["cuda_compiled"]:
        assert not pcmekit.cuda_available()


def test_thread_setting():
    try:
        pcmekit.set_num_threads(1)
        assert pcmekit.get_num_threads() == 1
        a = gaussians(50, 8)
        one = pcmekit.pairwise_distance(*a, *a)
        pcmekit.set_num_threads(None)
        assert pcmekit.get_num_threads() == torch.get_num_threads()
        torch.testing.assert_close(pcmekit.pairwise_distance(*a, *a), one)
        with pytest.raises(ValueError, match="num_threads must be a positive int or None, got 0"):
            pcmekit.set_num_threads(0)
    finally:
        pcmekit.set_num_threads(None)


def test_package_ships_type_information():
    # py.typed marks the package as typed (PEP 561); _C.pyi describes the compiled module. Run
    # against the installed wheel (make test), this checks that both are in it.
    package = Path(pcmekit.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_C.pyi").is_file()


def test_stub_matches_compiled_module():
    # Every public name of the compiled module is in _C.pyi and the stub invents none; the keys
    # of build_config() are the stub's BuildConfig.
    from pcmekit import _C

    stub = ast.parse((Path(pcmekit.__file__).parent / "_C.pyi").read_text())
    stubbed = {node.name: node for node in stub.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    config = stubbed.pop("BuildConfig")  # a TypedDict, not a name of the module
    compiled = {name for name in dir(_C) if not name.startswith("_")}
    assert compiled <= set(stubbed), f"add to python/pcmekit/_C.pyi: {sorted(compiled - set(stubbed))}"
    assert set(stubbed) <= compiled, f"_C.pyi describes names _C lacks: {sorted(set(stubbed) - compiled)}"
    keys = {node.target.id for node in config.body if isinstance(node, ast.AnnAssign)}
    assert keys == set(_C.build_config())
