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


def test_weight_is_the_effective_dense_weight_and_differentiable():
    layer = _layer(sign=True)
    w = layer.weight
    assert torch.equal(w, layer.dense_weight())
    assert w.shape == (layer.out_features, layer.in_features) and w.requires_grad
    x = torch.randn(4, 48)
    nn.functional.linear(x, w, layer.bias).square().sum().backward()
    grad_by_weight = layer.values.grad.clone()
    layer.zero_grad()
    layer(x).square().sum().backward()  # the same product through the engine
    torch.testing.assert_close(grad_by_weight, layer.values.grad, rtol=1e-5, atol=1e-6)


def test_modules_that_read_weight_train_the_synapses_only():
    """``nn.MultiheadAttention`` calls ``F.linear(x, out_proj.weight, out_proj.bias)``: the sparse
    out_proj gets the gradient an ``nn.Linear`` holding the same masked weight gets, on the synapses."""
    torch.manual_seed(0)
    mask = make_mask(48, 48, 16, 0.6, 0.5, seed=4)
    mha = nn.MultiheadAttention(48, 4, batch_first=True)
    ref = copy.deepcopy(mha)
    mha.out_proj = bs.SparseConnectomeLinear.from_linear(mha.out_proj, mask, block_size=16)
    with torch.no_grad():
        ref.out_proj.weight.copy_(mha.out_proj.dense_weight())
    q = torch.randn(2, 5, 48)
    mha(q, q, q)[0].square().sum().backward()
    ref(q, q, q)[0].square().sum().backward()
    grad = mha.out_proj.values.grad
    assert grad is not None and grad.abs().sum() > 0
    matrix = mha.out_proj.matrix
    torch.testing.assert_close(grad, matrix.gather_blocks(ref.out_proj.weight.grad), rtol=1e-5, atol=1e-6)
    assert not (grad * ~matrix.element_mask()).any(), "a gradient off the synapses"


@pytest.mark.parametrize(
    "write",
    [
        lambda w: nn.init.zeros_(w),
        lambda w: nn.init.kaiming_uniform_(w),
        lambda w: w.zero_(),
        lambda w: w.copy_(torch.ones_like(w)),
        lambda w: w.__setitem__(0, 1.0),
        lambda w: w.__iadd__(1.0),
        lambda w: torch.add(w, 1.0, out=w),
    ],
    ids=["init.zeros_", "init.kaiming_uniform_", "zero_", "copy_", "setitem", "iadd", "out="],
)
def test_writes_into_weight_raise_instead_of_changing_nothing(write):
    layer = _layer(sign=True)
    before = layer.values.detach().clone()
    with torch.no_grad(), pytest.raises(RuntimeError, match="write into layer.values"):
        write(layer.weight)
    assert torch.equal(layer.values, before)
    nn.init.zeros_(layer.values)  # the stored blocks are the parameter to write into
    assert not layer.weight.any()


MASKS = [make_mask(40, 48, 16, 0.6, 0.5, seed=5), make_mask(24, 40, 16, 0.7, 0.5, seed=6)]  # data: made on the CPU


def _model(device=None) -> nn.Sequential:
    masks = MASKS
    sign = torch.where(torch.arange(40, device="cpu") % 5 == 0, -1.0, 1.0)
    return nn.Sequential(
        bs.SparseConnectomeLinear(48, 40, mask=masks[0], block_size=16, noise_sigma=0.1, device=device),
        nn.ReLU(),
        bs.SparseConnectomeLinear(40, 24, mask=masks[1], block_size=16, sign=sign, device=device),
        nn.ReLU(),
        nn.Linear(24, 7, device=device),
    )


def _step(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("how", ["context", "device_arg"])
def test_builds_on_meta_and_materialises_like_nn_linear(how):
    """Deferred initialisation: build on "meta", ``to_empty`` + ``reset_parameters``; the wiring
    comes back intact and the model trains a step equal to one built directly."""
    torch.manual_seed(0)
    direct = _model().train()
    if how == "context":
        with torch.device("meta"):
            lazy = _model()
    else:
        lazy = _model(device="meta")
    assert all(p.is_meta for p in lazy.parameters())
    lazy.to_empty(device="cpu")
    for m in lazy.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for a, b in zip(lazy[::2], direct[::2], strict=True):
        if isinstance(a, bs.SparseConnectomeLinear):
            for name in ("crow", "col", "row", "ccol_t", "row_t", "perm_t", "synapse_mask", "sign"):
                ta, tb = getattr(a, name), getattr(b, name)
                assert (ta is None and tb is None) or torch.equal(ta, tb), name
            assert not (a.values * ~a.matrix.element_mask()).any() and a.values.abs().sum() > 0
            assert not a.post_rate.any()
    lazy.load_state_dict(direct.state_dict())  # the same wiring: accepted
    x = torch.randn(6, 48)
    torch.testing.assert_close(_step(lazy.train(), x), _step(direct, x), rtol=0, atol=0)
    for a, b in zip(lazy.parameters(), direct.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_mask_on_the_meta_device_is_refused_by_name():
    with torch.device("meta"), pytest.raises(ValueError, match="mask is on the meta device"):
        bs.SparseConnectomeLinear(48, 40, mask=torch.ones(40, 48, dtype=torch.bool), block_size=16)


def test_skip_init_gives_a_layer_with_its_wiring():
    mask = make_mask(40, 48, 16, 0.6, 0.5, seed=7)
    layer = torch.nn.utils.skip_init(bs.SparseConnectomeLinear, 48, 40, mask=mask, block_size=16)
    ref = bs.SparseConnectomeLinear(48, 40, mask=mask, block_size=16)
    assert torch.equal(layer.col, ref.col) and torch.equal(layer.synapse_mask, ref.synapse_mask)
    layer.reset_parameters()
    assert layer(torch.randn(3, 48)).isfinite().all()


def test_parametrizations_work_on_blocks_and_a_wrong_name_leaves_the_layer_intact():
    from torch.nn.utils import parametrizations, parametrize

    layer = _layer(sign=True)
    ref = copy.deepcopy(layer)
    x = torch.randn(5, 48)
    with pytest.raises(ValueError, match="'values'"):  # a property, not the parameter: torch refuses
        parametrize.register_parametrization(layer, "values", nn.Identity())
    assert torch.equal(layer(x), ref(x)) and isinstance(layer.blocks, nn.Parameter)
    parametrizations.weight_norm(layer, name="blocks")
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-6)
    layer(x).square().sum().backward()
    names = {n for n, p in layer.named_parameters() if p.grad is not None}
    assert {"parametrizations.blocks.original0", "parametrizations.blocks.original1"} <= names
    with pytest.raises(NotImplementedError, match="parametrization"):
        layer.constrain_()  # Dale's projection writes stored weights in place
    parametrize.remove_parametrizations(layer, "blocks")
    assert isinstance(layer.blocks, nn.Parameter) and layer(x).shape == (5, 40)


def test_checkpoints_with_the_old_parameter_name_still_load():
    layer = _layer()
    state = layer.state_dict()
    state["values"] = state.pop("blocks")  # as written before the rename
    fresh = _layer(seed=0)
    nn.init.zeros_(fresh.values)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.values, layer.values)
    with torch.no_grad():
        fresh.values -= 1.0  # the old name still assigns (in place, as for nn.Linear.weight)
    assert torch.equal(fresh.values, layer.values - 1.0)


def test_layers_never_share_their_wiring():
    """Two layers from one BlockSparseMatrix: a state_dict with another wiring is refused by name;
    asked for (``allow_rewiring``), it rewires that layer only, not its twin nor the matrix."""
    from bionic_sparse.nn import allow_rewiring

    topo = bs.BlockSparseMatrix.from_dense(make_mask(40, 48, 8, 0.6, 0.5, seed=8), 8)
    col = topo.col.clone()
    a = bs.SparseConnectomeLinear(48, 40, mask=topo, block_size=8)
    twin = bs.SparseConnectomeLinear(48, 40, mask=topo, block_size=8)
    other = bs.SparseConnectomeLinear(48, 40, mask=make_mask(40, 48, 8, 0.3, 0.5, seed=9), block_size=8)
    assert a.col.data_ptr() != topo.col.data_ptr() != twin.col.data_ptr()
    before = copy.deepcopy(a.state_dict())
    with pytest.raises(RuntimeError, match="another wiring.*load_wiring"):
        a.load_state_dict(other.state_dict())
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items() if isinstance(v, torch.Tensor))
    with allow_rewiring(a):
        a.load_state_dict(other.state_dict())
    x = torch.randn(3, 48)
    assert torch.equal(a(x), other(x)) and a.nnzb == other.nnzb and not a.load_wiring
    assert torch.equal(topo.col, col) and torch.equal(twin.col, col)


def _plastic_pair(**kw):
    layer = _layer(sign=True, **kw).train()
    layer.record_activity = True
    return layer, copy.deepcopy(layer)


@pytest.mark.parametrize("method", METHODS)
def test_plasticity_learns_what_the_forward_computed(monkeypatch, method):
    """No gradient: in-place ops on the input or output after the forward (``relu_``, ``h +=``)
    change neither the update nor the rate; with gradients and no backward they raise."""
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", method)
    layer, ref = _plastic_pair()
    x = torch.randn(6, 48)
    rule = dict(eta=0.05, homeo_rate=0.1, target_rate=0.2)
    with torch.no_grad():
        h = x.clone()
        torch.relu_(layer(h))
        h += 1.0
        ref(x.clone())
    layer.plasticity_step(**rule)
    ref.plasticity_step(**rule)
    assert torch.equal(layer.values, ref.values) and torch.equal(layer.post_rate, ref.post_rate)
    y = layer(x)  # with gradients, and no backward before the step
    with torch.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place after the forward"):
        layer.plasticity_step(**rule)


@pytest.mark.parametrize("method", ["blockT", "csr"])
def test_dynamic_shape_compile_trains_with_noise_and_plasticity(monkeypatch, method):
    """``torch.compile(dynamic=True, fullgraph=True)`` in training mode: one graph for every batch
    size, and the same outputs and weights as eager."""
    import torch._dynamo

    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", method)
    torch._dynamo.reset()
    eager, comp = _plastic_pair(noise=0.1)
    _dynamic_compile_matches_eager(eager, comp, batches=(3, 5, 9))
    assert comp.noise_step == eager.noise_step == 3


def _dynamic_compile_matches_eager(eager: nn.Module, comp: nn.Module, batches: tuple[int, ...]) -> None:
    """Train ``comp`` compiled with dynamic shapes and ``eager`` side by side, one step per batch
    size (noise, backward, plasticity): no recompile after the first, the same outputs and weights."""
    import torch._dynamo

    compiled = torch.compile(comp, dynamic=True, fullgraph=True, backend="aot_eager")
    for i, batch in enumerate(batches):
        x = torch.randn(batch, eager.in_features)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = compiled(x)
        want = eager(x)
        got.square().sum().backward()
        want.square().sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for layer in (comp, eager):
            layer.plasticity_step(eta=1e-2, homeo_rate=0.01)
    torch.testing.assert_close(comp.values, eager.values, rtol=1e-5, atol=1e-6)


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


@pytest.mark.interpreter
@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)")
def test_triton_backend_dynamic_compile_and_plasticity_snapshots(monkeypatch):
    """Items that run kernels, on the Triton backend (interpreter, b = 16): dynamic-shape compiled
    training with noise and plasticity matches eager without recompiling; a no-grad forward's
    statistics survive in-place ops on its output."""
    import torch._dynamo

    pytest.importorskip("triton")
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    mask = make_mask(32, 48, 16, 0.7, 0.6, seed=10)
    eager = bs.SparseConnectomeLinear(48, 32, mask=mask, block_size=16, noise_sigma=0.2).train()
    eager.record_activity = True
    comp, snap = copy.deepcopy(eager), copy.deepcopy(eager)
    _dynamic_compile_matches_eager(eager, comp, batches=(3, 5))
    ref = copy.deepcopy(snap)
    x = torch.randn(4, 48)
    with torch.no_grad():
        torch.relu_(snap(x))
        ref(x)
    snap.plasticity_step(eta=0.05)
    ref.plasticity_step(eta=0.05)
    assert torch.equal(snap.values, ref.values)
