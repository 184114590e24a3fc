"""``SparseConnectomeLinear`` where an ``nn.Linear`` was: a checklist of what code written for
``nn.Linear`` does with a layer, each item either working or failing with an error that names the
layer and what is unsupported."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bionic_sparse as bs

from .conftest import interpreter_enabled, make_mask


def _layer(bias: bool = True, noise: float = 0.0, sign: bool = False, seed: int = 0, **kw) -> bs.SparseConnectomeLinear:
    torch.manual_seed(seed)
    mask = make_mask(40, 48, 8, 0.6, 0.5, seed=seed)
    signs = torch.where(torch.rand(48) < 0.75, 1.0, -1.5) if sign else None
    return bs.SparseConnectomeLinear(48, 40, mask=mask, block_size=8, bias=bias, sign=signs, noise_sigma=noise, **kw)


METHODS = ["blockT", "dense", "csr"]


@pytest.mark.parametrize("method", METHODS)
def test_in_place_ops_after_the_layer(monkeypatch, method):
    """``ReLU(inplace=True)`` and a residual ``h += x`` right after a layer without bias."""
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", method)
    layer = _layer(bias=False, noise=0.1).train()
    x = torch.randn(5, 48, requires_grad=True)
    nn.Sequential(layer, nn.ReLU(inplace=True))(x).sum().backward()
    h = layer(x)
    h += torch.ones(5, 40)  # a residual
    h.square().sum().backward()
    assert x.grad is not None and layer.values.grad is not None
    assert layer(x)._base is None


def test_weight_is_the_effective_dense_weight_as_a_copy():
    layer = _layer(sign=True)
    assert torch.equal(layer.weight, layer.dense_weight().detach())
    assert layer.weight.shape == (layer.out_features, layer.in_features) and not layer.weight.requires_grad
    layer.weight.zero_()  # a copy: the layer is unchanged
    assert layer.weight.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_like_nn_linear(monkeypatch, method, dtype):
    """Inside ``torch.autocast`` the layer computes and returns in the autocast dtype, like
    ``nn.Linear``, whichever CPU method runs; the fake registration agrees with eager."""
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", method)
    layer = _layer(noise=0.1).train()
    x = torch.randn(6, 48)
    with torch.autocast("cpu", dtype=dtype):
        ref = nn.Linear(48, 40)(x)
        y = layer(x)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert y.dtype == ref.dtype == compiled.dtype == dtype
    y.float().sum().backward()
    assert layer.values.grad.dtype == torch.float32


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
def test_checkpointing_recomputes_the_same_noise(reentrant):
    from torch.utils.checkpoint import checkpoint

    plain = _layer(noise=0.3, sign=True).train()
    ckpt = copy.deepcopy(plain)
    x = torch.randn(7, 48, requires_grad=True)
    plain(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    checkpoint(ckpt, x2, use_reentrant=reentrant).square().sum().backward()
    assert torch.allclose(ckpt.values.grad, plain.values.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    assert ckpt.noise_step == plain.noise_step == 1  # the recomputation draws no new seed


def test_torch_func_and_forward_ad_are_refused_by_name():
    layer = _layer()
    x = torch.randn(3, 48)
    params = dict(layer.named_parameters())
    with pytest.raises(NotImplementedError, match="SparseConnectomeLinear.*torch.func"):
        torch.func.jvp(layer, (x,), (torch.ones_like(x),))
    with pytest.raises(NotImplementedError, match="SparseConnectomeLinear.*torch.func"):
        torch.func.jacfwd(layer)(x)
    with pytest.raises(NotImplementedError, match="SparseConnectomeLinear.*torch.func"):
        torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).sum())(params)
    with pytest.raises(NotImplementedError, match="SparseConnectomeLinear.*forward-mode"):
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            layer(fwAD.make_dual(x, torch.ones_like(x)))
    assert torch.func.functional_call(layer, params, (x,)).shape == (3, 40)  # no transform: fine


def test_double_backward_is_refused_by_name():
    layer = _layer()
    x = torch.randn(3, 48, requires_grad=True)
    with pytest.raises(NotImplementedError, match="SparseConnectomeLinear.*second derivative"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)  # a gradient penalty
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x)  # first order: fine
    assert gx.shape == x.shape


def _train_steps(model: nn.Module, steps: int, compiled: bool) -> list[torch.Tensor]:
    torch.manual_seed(123)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fwd = torch.compile(model, fullgraph=True) if compiled else model
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 48)
        loss = fwd(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.constrain_()
        model.plasticity_step(eta=0.01, homeo_rate=0.05)
        losses.append(loss.detach())
    return losses


def test_default_torch_compile_trains_with_noise_and_plasticity_without_recompiling():
    """Inductor (the default backend), ``fullgraph=True``, noise and plasticity on: every step runs
    the same graph (the seed is a graph input) and matches eager within float rounding."""
    import torch._dynamo

    torch._dynamo.reset()
    eager = _layer(noise=0.1, sign=True).train()
    eager.record_activity = True
    comp = copy.deepcopy(eager)
    ref = _train_steps(eager, 5, compiled=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = _train_steps(comp, 5, compiled=True)
    torch.testing.assert_close(torch.stack(got), torch.stack(ref), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.values, eager.values, rtol=1e-4, atol=1e-5)
    assert comp.noise_step == eager.noise_step == 5


@pytest.mark.interpreter
@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)")
def test_triton_backend_in_place_after_the_layer_and_checkpointed_noise(monkeypatch):
    """The same two items on the Triton backend (kernels under the interpreter, b = 16)."""
    from torch.utils.checkpoint import checkpoint

    pytest.importorskip("triton")
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    torch.manual_seed(0)
    mask = make_mask(32, 48, 16, 0.7, 0.6, seed=2)
    layer = bs.SparseConnectomeLinear(48, 32, mask=mask, block_size=16, bias=False, noise_sigma=0.3).train()
    x = torch.randn(4, 48, requires_grad=True)
    nn.Sequential(layer, nn.ReLU(inplace=True))(x).sum().backward()
    ckpt = copy.deepcopy(layer)
    layer.zero_grad()
    layer(x).square().sum().backward()
    checkpoint(ckpt, x.detach().requires_grad_(), use_reentrant=True).square().sum().backward()
    assert torch.allclose(ckpt.values.grad, layer.values.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.interpreter
@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)")
def test_triton_backend_under_compile_and_autocast(monkeypatch):
    """Default torch.compile and fp16 autocast with the Triton kernels (interpreter; its bf16 dot
    is broken, so fp16): the same graph every step, outputs in the autocast dtype."""
    import torch._dynamo

    pytest.importorskip("triton")
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    mask = make_mask(32, 48, 16, 0.7, 0.6, seed=3)
    layer = bs.SparseConnectomeLinear(48, 32, mask=mask, block_size=16, noise_sigma=0.2).train()
    compiled = torch.compile(layer, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            compiled(torch.randn(4, 48)).sum().backward()
    with torch.autocast("cpu", dtype=torch.float16):
        assert layer(torch.randn(4, 48)).dtype == torch.float16
