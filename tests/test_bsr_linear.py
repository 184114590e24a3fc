"""bsr_linear custom ops on the PyTorch (CPU) path against a dense float64 oracle."""

from __future__ import annotations

import copy

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix, ops
from bionic_sparse.noise import synapse_noise

from .conftest import TOL, dense_oracle_weight, make_mask, rel_err

CASES = [
    # n_out, n_in, b, block density, fill, leading dims
    pytest.param(64, 96, 32, 0.5, 1.0, (8,), id="64x96-b32-full"),
    pytest.param(70, 45, 16, 0.5, 0.4, (3, 5), id="70x45-b16-ragged-partial-lead2"),
    pytest.param(100, 37, 32, 0.7, 0.5, (), id="100x37-b32-unbatched"),
    pytest.param(48, 48, 16, 0.0, 1.0, (4,), id="48x48-empty-mask"),
    pytest.param(33, 65, 8, 0.3, 0.6, (2, 1, 3), id="33x65-b8-lead3"),
]

NOISE = [
    pytest.param(0.0, "multiplicative", id="nonoise"),
    pytest.param(0.3, "multiplicative", id="mult"),
    pytest.param(0.3, "additive", id="add"),
]


def build(n_out, n_in, b, density, fill, dtype, seed=0):
    mask = make_mask(n_out, n_in, b, density, fill, seed=seed, empty_rows=slice(0, 3), empty_cols=slice(5, 9))
    m = BlockSparseMatrix.from_dense(mask, b, weight=torch.randn(n_out, n_in, dtype=torch.float64), dtype=dtype)
    return m, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sigma,mode", NOISE)
@pytest.mark.parametrize("n_out,n_in,b,density,fill,lead", CASES)
def test_forward_and_grads_match_oracle(cpu_method, n_out, n_in, b, density, fill, lead, sigma, mode, dtype):
    torch.manual_seed(hash((n_out, n_in, b)) % 1000)
    m, mask = build(n_out, n_in, b, density, fill, dtype)
    values = m.values.clone().requires_grad_()
    sign = torch.where(torch.rand(n_in) < 0.8, 1.0, -2.5).to(dtype)
    bias = torch.randn(n_out, dtype=dtype, requires_grad=True)
    x = torch.randn(*lead, n_in, dtype=dtype, requires_grad=True)
    seed = 1234
    y = bs.bsr_linear(x, m, bias=bias, sign=sign, noise_sigma=sigma, noise_seed=seed, noise_mode=mode, values=values)
    w_ref = dense_oracle_weight(m, values, sign, sigma, seed, mode).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    b_ref = bias.detach().double().requires_grad_()
    y_ref = x_ref @ w_ref.T + b_ref
    assert y.shape == (*lead, n_out) and y.dtype == dtype
    assert rel_err(y, y_ref) < TOL[dtype]
    dy = torch.randn_like(y_ref)
    y.backward(dy.to(dtype))
    y_ref.backward(dy)
    assert rel_err(x.grad, x_ref.grad) < TOL[dtype]
    assert rel_err(bias.grad, b_ref.grad) < TOL[dtype]
    # dvalues: chain rule of W_eff = noisy(W) * M * sign, on the stored blocks only
    factor = 1.0
    if sigma and mode == "multiplicative":
        factor = 1 + sigma * synapse_noise(seed, m.nnzb, b).double()
    dw_ref = m.gather_blocks(w_ref.grad * sign.double()) * factor
    assert rel_err(values.grad, dw_ref) < TOL[dtype] * 10
    assert not (values.grad * ~m.element_mask()).any(), "gradient leaked off the synapse mask"


@pytest.mark.parametrize("n_out,n_in,b,density,fill,lead", CASES[:3])
def test_stride0_grad_output(cpu_method, n_out, n_in, b, density, fill, lead):
    m, _ = build(n_out, n_in, b, density, fill, torch.float64)
    values = m.values.clone().requires_grad_()
    x = torch.randn(*lead, n_in, dtype=torch.float64, requires_grad=True)
    bs.bsr_linear(x, m, values=values).sum().backward()  # dy is an expanded stride-0 tensor
    w = dense_oracle_weight(m, values)
    assert rel_err(x.grad, torch.ones(*lead, n_out, dtype=torch.float64) @ w) < 1e-12
    dw_ref = m.gather_blocks(torch.ones(n_out, dtype=torch.float64)[:, None] * x.detach().reshape(-1, n_in).sum(0))
    assert rel_err(values.grad, dw_ref) < 1e-12


@pytest.mark.parametrize("sigma,mode", NOISE)
def test_gradcheck(cpu_method, sigma, mode):
    m, _ = build(20, 27, 8, 0.6, 0.7, torch.float64)
    values = m.values.clone().requires_grad_()
    bias = torch.randn(20, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 27, dtype=torch.float64, requires_grad=True)
    sign = torch.linspace(-1, 1, 27, dtype=torch.float64)

    def f(x, values, bias):
        return bs.bsr_linear(
            x, m, bias=bias, sign=sign, noise_sigma=sigma, noise_seed=7, noise_mode=mode, values=values
        )

    assert torch.autograd.gradcheck(f, (x, values, bias))
    assert torch.autograd.gradgradcheck is not None  # second order is not supported (custom op backward)


@pytest.mark.parametrize("with_mask", [True, False], ids=["synapse-mask", "full-blocks"])
def test_opcheck_every_op(cpu_method, with_mask):
    mask = make_mask(40, 24, 8, 0.6, 0.5 if with_mask else 1.0, seed=5)
    m = BlockSparseMatrix.from_dense(mask, 8, weight=torch.randn(40, 24, dtype=torch.float64))
    assert (m.synapse_mask is not None) == with_mask
    idx = tuple(m.index_tensors().values())
    x = torch.randn(5, 24, dtype=torch.float64, requires_grad=True)
    values = m.values.clone().requires_grad_()
    bias = torch.randn(40, dtype=torch.float64)
    sign = torch.randn(24, dtype=torch.float64)
    dy = torch.randn(5, 40, dtype=torch.float64)
    corr = torch.zeros_like(m.values)
    noise = dict(sigma=0.2, multiplicative=True)
    seed = torch.tensor(3)
    torch.library.opcheck(
        ops.bsr_linear, (x, values, *idx, m.synapse_mask, sign, None, None, seed), dict(n_out=40, **noise)
    )
    torch.library.opcheck(
        ops.bsr_linear, (x, values, *idx, m.synapse_mask, sign, bias, corr, seed), dict(n_out=40, **noise)
    )
    torch.library.opcheck(
        ops.bsr_linear,
        (x, values, *idx, None, None, None, None, seed),
        dict(n_out=40, sigma=0.0, multiplicative=False),
    )
    transposed = (m.crow, m.col, m.ccol_t, m.row_t, m.perm_t)
    torch.library.opcheck(
        ops.bsr_linear_dx, (dy, values.detach(), *transposed, m.synapse_mask, sign, seed), dict(n_in=24, **noise)
    )
    coo = (m.crow, m.row, m.col, m.synapse_mask, sign)
    torch.library.opcheck(ops.bsr_linear_dw, (dy, x.detach(), values.detach(), *coo, seed), noise)
    torch.library.opcheck(ops.bsr_linear_dw_corr, (dy, x.detach(), values.detach(), *coo, dy, bias, corr, seed), noise)
    post = torch.randn(5, 40, dtype=torch.float64)
    plain = dict(sigma=0.0, multiplicative=True)  # correlation only, no gradient
    torch.library.opcheck(
        ops.bsr_linear_dw_corr,
        (None, x.detach(), values.detach(), m.crow, m.row, m.col, None, None, post, None, corr, seed),
        plain,
    )
    rate = torch.rand(40, dtype=torch.float64)
    torch.library.opcheck(
        ops.bsr_plasticity_,
        (values.detach().clone(), corr.normal_(), m.crow, m.row, m.synapse_mask, rate, rate + 0.5),
        dict(eta=0.1, oja=1.0),
    )


class _Net(torch.nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.sparse = bs.SparseConnectomeLinear(48, 40, mask=mask, block_size=16, noise_sigma=0.1, sign=torch.ones(48))
        self.norm = torch.nn.LayerNorm(40)
        self.out = torch.nn.Linear(40, 3)

    def forward(self, x):
        return self.out(self.norm(torch.relu(self.sparse(x))))


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    net = _Net(make_mask(40, 48, 16, 0.6)).eval()
    x = torch.randn(6, 48)
    ref = net(x)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    assert rel_err(out, ref) < 1e-5
    out.sum().backward()
    assert net.sparse.values.grad is not None and net.sparse.values.grad.abs().sum() > 0


def test_noise_statistics():
    m = BlockSparseMatrix.from_dense(make_mask(256, 256, 32, 0.5, 0.5, seed=4), 32, weight=torch.ones(256, 256))
    eye = torch.eye(256)

    def recovered(seed, mode):  # identity-input trick: y = I @ W_eff^T recovers W_eff^T
        return bs.bsr_linear(eye, m, noise_sigma=0.1, noise_seed=seed, noise_mode=mode).T

    syn = m.to_dense_mask()
    for mode in ("multiplicative", "additive"):
        w = recovered(11, mode)
        noise = (w - 1.0)[syn]
        assert abs(float(noise.mean())) < 0.01
        assert float(noise.std()) == pytest.approx(0.1, rel=0.05)
        assert not w[~syn].any(), "noise leaked off the synapse mask"
        assert torch.equal(w, recovered(11, mode)), "same seed must give the same noise"
        assert (w != recovered(12, mode))[syn].float().mean() > 0.99, "different seeds must differ"


def test_noise_memo_keeps_one_entry_per_layer_and_stays_a_pure_function():
    from bionic_sparse import noise

    noise._recent_noise.clear()
    first = [synapse_noise(seed, 5, 8) for seed in range(4)]  # four layers' forward passes
    assert all(synapse_noise(seed, 5, 8) is first[seed] for seed in reversed(range(4)))  # their backwards hit
    for seed in range(4, 4 + noise._MEMO_ENTRIES):
        synapse_noise(seed, 5, 8)
    assert len(noise._recent_noise) == noise._MEMO_ENTRIES
    again = synapse_noise(0, 5, 8)  # evicted, regenerated bit for bit
    assert again is not first[0] and torch.equal(again, first[0])
    offsets = torch.arange(5 * 64).view(5, 8, 8)
    assert torch.equal(again, noise.synapse_randn(0, offsets))
    assert torch.equal(noise.synapse_randn(0, offsets), noise.synapse_randn(0, offsets.view(-1)).view(5, 8, 8))


def test_backward_regenerates_forward_noise(cpu_method):
    m, _ = build(64, 64, 16, 0.5, 0.6, torch.float64)
    x = torch.eye(64, dtype=torch.float64, requires_grad=True)
    y = bs.bsr_linear(x, m, noise_sigma=0.5, noise_seed=99, noise_mode="additive")
    w_fwd = y.detach().T  # W_eff as the forward saw it
    y.backward(torch.eye(64, dtype=torch.float64))
    assert torch.allclose(x.grad, w_fwd, atol=1e-12, rtol=0), "dx must use the forward's noise"


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda m, x: bs.bsr_linear(x[:, :-1], m), ValueError, r"x.shape\[-1\] must be 24"),
        (lambda m, x: bs.bsr_linear(x.long(), m), TypeError, "x must be floating"),
        (lambda m, x: bs.bsr_linear(x, m, sign=torch.ones(5)), ValueError, "sign must have shape"),
        (lambda m, x: bs.bsr_linear(x, m, bias=torch.ones(3)), ValueError, "bias must have shape"),
        (lambda m, x: bs.bsr_linear(x, m, noise_mode="gaussian"), ValueError, "noise_mode must be one of"),
        (lambda m, x: bs.bsr_linear(x, m, noise_sigma=-1), ValueError, "noise_sigma must be"),
        (lambda m, x: bs.bsr_linear(x, "m"), TypeError, "matrix must be a BlockSparseMatrix"),
        (lambda m, x: bs.bsr_linear(x, m, values=torch.ones(2, 2)), ValueError, "values must have shape"),
    ],
)
def test_bad_input(call, exc, match):
    m, _ = build(40, 24, 8, 0.6, 1.0, torch.float32)
    with pytest.raises(exc, match=match):
        call(m, torch.randn(2, 24))


def test_gpu_block_size_check():
    with pytest.raises(ValueError, match="power of two >= 16 for the GPU path"):
        bs.functional.check_gpu_block_size(24)
    with pytest.raises(ValueError, match="power of two >= 16 for the GPU path"):
        bs.functional.check_gpu_block_size(8)
    with pytest.raises(ValueError, match="one of"):
        bs.functional.check_gpu_block_size(128)
    bs.functional.check_gpu_block_size(64)


def test_empty_batch():
    m, _ = build(40, 24, 8, 0.6, 1.0, torch.float32)
    assert bs.bsr_linear(torch.randn(0, 24), m).shape == (0, 40)


def test_torch_compile_training_step_with_plasticity():
    """A compiled training step that records for the fused plasticity update gives the same
    weights and rates as the eager one (the record is made outside the forward pass)."""
    torch.manual_seed(0)
    net = _Net(make_mask(40, 48, 16, 0.6)).train()
    net.sparse.record_activity = True
    eager = copy.deepcopy(net)
    x = torch.randn(6, 48)
    for model, run in ((eager, eager), (net, torch.compile(net, backend="aot_eager"))):
        for _ in range(2):
            run(x).sum().backward()
            with torch.no_grad():
                model.sparse.values -= 0.01 * model.sparse.values.grad
            model.sparse.values.grad = None
            model.sparse.plasticity_step(eta=0.1, homeo_rate=0.1)
    assert rel_err(net.sparse.values, eager.sparse.values) < 1e-6
    assert rel_err(net.sparse.post_rate, eager.sparse.post_rate) < 1e-6
