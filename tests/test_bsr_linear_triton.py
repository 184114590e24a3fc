"""Triton kernels under TRITON_INTERPRET=1 against the float64 oracle (tiny shapes: each
program x block iteration costs ~5 ms in the interpreter). fp32 and fp16 only: the interpreter's
bf16 ``tl.dot`` multiplies raw bit patterns (triton issue #11584)."""

from __future__ import annotations

import copy

import pytest
import torch

from bionic_sparse import BlockSparseMatrix
from bionic_sparse.noise import philox4x32, synapse_noise, synapse_randn
from bionic_sparse.plasticity import correlation, dense_plasticity, homeostatic_scale, post_moments

from .conftest import dense_oracle_weight, interpreter_enabled, make_mask, rel_err

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)"),
]

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from bionic_sparse.triton_kernels import _common  # noqa: E402
from bionic_sparse.triton_kernels.bsr_linear import bsr_linear_dx, bsr_linear_fwd, materialize  # noqa: E402
from bionic_sparse.triton_kernels.bsr_sdd import bsr_linear_dw, bsr_plasticity_  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 3e-3}

CASES = [
    # n_out, n_in, b, block density, fill, batch
    pytest.param(40, 45, 16, 0.6, 0.5, 19, id="40x45-b16-partial-M19"),
    pytest.param(32, 64, 32, 0.5, 1.0, 8, id="32x64-b32-full-M8"),
    pytest.param(48, 30, 16, 0.0, 1.0, 5, id="48x30-empty"),
]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def build(n_out, n_in, b, density, fill, seed=0):
    mask = make_mask(n_out, n_in, b, density, fill, seed=seed, empty_rows=slice(0, 16), empty_cols=slice(3, 7))
    return BlockSparseMatrix.from_dense(mask, b, weight=torch.randn(n_out, n_in))


def nan_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("sigma,mult", [(0.0, True), (0.25, True), (0.25, False)], ids=["nonoise", "mult", "add"])
@pytest.mark.parametrize("n_out,n_in,b,density,fill,batch", CASES)
def test_kernels_match_oracle(n_out, n_in, b, density, fill, batch, sigma, mult, dtype):
    torch.manual_seed(batch)
    m = build(n_out, n_in, b, density, fill)
    mode = "multiplicative" if mult else "additive"
    sign = torch.where(torch.rand(n_in) < 0.7, 1.0, -1.5)
    bias = torch.randn(n_out)
    x = torch.randn(batch, n_in).to(dtype)
    dy = torch.randn(batch, n_out).to(dtype)
    w_ref = dense_oracle_weight(m, m.values, sign, sigma, 77, mode)

    moments = nan_like(torch.empty(2, n_out))
    noise = dict(sigma=sigma, seed=77, multiplicative=mult)
    y = bsr_linear_fwd(
        x=x,
        values=m.values,
        crow=m.crow,
        col=m.col,
        synapse_mask=m.synapse_mask,
        sign=sign,
        n_out=n_out,
        post_bias=bias,
        post_moments=moments,
        **noise,
    )
    y_ref = x.double() @ w_ref.T
    assert y.dtype == dtype
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(moments, post_moments(y_ref + bias.double())) < TOL[dtype]

    transposed = dict(ccol_t=m.ccol_t, row_t=m.row_t, perm_t=m.perm_t)
    dx = bsr_linear_dx(dy=dy, values=m.values, **transposed, synapse_mask=m.synapse_mask, sign=sign, n_in=n_in, **noise)
    assert rel_err(dx, dy.double() @ w_ref) < TOL[dtype]

    # the fused weight-gradient pass: dW and the correlation of post = y + bias from the same tiles
    corr = nan_like(m.values)
    coo = dict(row=m.row, col=m.col, block_size=b, out_dtype=torch.float32, synapse_mask=m.synapse_mask)
    dw = bsr_linear_dw(dy=dy, x=x, **coo, sign=sign, **noise, post=y, post_bias=bias, corr=corr)
    factor = 1 + sigma * synapse_noise(77, m.nnzb, b).double() if sigma and mult else 1.0
    dw_ref = m.gather_blocks(dy.double().T @ (x.double() * sign.double())) * factor
    assert rel_err(dw, dw_ref) < TOL[dtype]
    assert not (dw * ~m.element_mask()).any(), "gradient leaked off the mask"
    post_ref = y.double() + bias.double()
    # (compared on the synapses: the update masks the rest; an unwritten NaN still shows)
    assert rel_err(corr * m.element_mask(), m.gather_blocks(correlation(x.double(), post_ref))) < TOL[dtype]

    # the plasticity update applied in place from that correlation
    rate = torch.rand(n_out)
    values = m.values.abs().contiguous()
    w0 = m.to_dense(values).double()
    q = post_moments(post_ref)[1].float()
    scale = homeostatic_scale(rate, 0.3, 0.1)
    bsr_plasticity_(
        values=values, corr=corr, row=m.row, synapse_mask=m.synapse_mask, post_sq=q, scale=scale, eta=0.2, oja=1.0
    )
    ref = dense_plasticity(w0, m.to_dense_mask(), x.double(), post_ref, 0.2, 1.0, rate.double(), 0.3, 0.1)
    assert rel_err(m.to_dense(values), ref) < TOL[dtype]
    assert not (values * ~m.element_mask()).any(), "plasticity created synapses off the mask"


def test_stride0_grad_output_and_materialize():
    m = build(40, 45, 16, 0.6, 0.5)
    dy = torch.ones(1, 40).expand(6, 40)  # what y.sum().backward() hands in
    assert dy.stride(0) == 0
    w_ref = dense_oracle_weight(m, m.values, None, 0.3, 5, "additive")
    transposed = dict(ccol_t=m.ccol_t, row_t=m.row_t, perm_t=m.perm_t, synapse_mask=m.synapse_mask, sign=None)
    dx = bsr_linear_dx(dy=dy, values=m.values, **transposed, n_in=45, sigma=0.3, seed=5, multiplicative=False)
    assert rel_err(dx, dy.double() @ w_ref) < 2e-5
    x = torch.randn(6, 45)
    coo = dict(row=m.row, col=m.col, block_size=16, out_dtype=torch.float32, synapse_mask=m.synapse_mask, sign=None)
    dw = bsr_linear_dw(dy=dy, x=x, **coo)
    assert rel_err(dw, m.gather_blocks(dy.double().T @ x.double()) * m.element_mask()) < 2e-5
    w_eff = materialize(m.values, m.synapse_mask, 0.3, 5, False, torch.float32)
    assert rel_err(w_eff, (m.values + 0.3 * synapse_noise(5, m.nnzb, 16)) * m.synapse_mask) < 1e-6


@triton.jit
def _philox_probe(words, normals, seed, N: tl.constexpr):
    o = tl.arange(0, N)
    w0, w1, w2, w3 = tl.randint4x(seed, o)
    tl.store(words + o, w0)
    tl.store(words + N + o, w1)
    tl.store(words + 2 * N + o, w2)
    tl.store(words + 3 * N + o, w3)
    tl.store(normals + o, tl.randn(seed, o))


@pytest.mark.parametrize("seed", [0, 1234567, 2**33 + 5])
def test_cpu_generator_is_bit_exact_with_triton(seed):
    n = 512
    words = torch.empty(4 * n, dtype=torch.int32)
    normals = torch.empty(n)
    _philox_probe[(1,)](words, normals, seed, N=n)
    ref = torch.cat(philox4x32(seed, torch.arange(n)))
    assert torch.equal(words.to(torch.int64) & 0xFFFFFFFF, ref)
    assert torch.allclose(synapse_randn(seed, torch.arange(n)), normals, atol=1e-6, rtol=0)


def test_custom_op_routes_to_triton(monkeypatch):
    import bionic_sparse as bs

    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    m = build(40, 45, 16, 0.6, 0.5)
    values = m.values.clone().requires_grad_()
    x = torch.randn(3, 45, requires_grad=True)
    y = bs.bsr_linear(x, m, noise_sigma=0.2, noise_seed=9, values=values)
    y.sum().backward()
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "blockT")
    values_ref = m.values.clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = bs.bsr_linear(x_ref, m, noise_sigma=0.2, noise_seed=9, values=values_ref)
    y_ref.sum().backward()
    assert rel_err(y, y_ref) < 2e-5
    assert rel_err(x.grad, x_ref.grad) < 2e-5
    assert rel_err(values.grad, values_ref.grad) < 2e-5


def test_launcher_errors():
    m = build(40, 45, 16, 0.6, 0.5)
    x = torch.randn(2, 45)
    fwd = dict(values=m.values, crow=m.crow, col=m.col, synapse_mask=None, sign=None, n_out=40)
    with pytest.raises(ValueError, match="power of two >= 16"):
        bsr_linear_fwd(x=x, **dict(fwd, values=torch.zeros(3, 8, 8)))
    with pytest.raises(ValueError, match="crow must be int32"):
        bsr_linear_fwd(x=x, **dict(fwd, crow=m.crow.long()))
    with pytest.raises(ValueError, match="x must be fp32/fp16/bf16"):
        bsr_linear_fwd(x=x.double(), **fwd)
    with pytest.raises(ValueError, match="post_moments must be"):
        bsr_linear_fwd(x=x, **fwd, post_moments=torch.zeros(40))
    coo = dict(row=m.row, col=m.col, block_size=16, out_dtype=torch.float32, synapse_mask=None, sign=None)
    with pytest.raises(ValueError, match="corr needs post"):
        bsr_linear_dw(dy=None, x=x, **coo, corr=m.values.clone())


def test_batch_split_matches_single_pass():
    m = build(40, 45, 16, 0.6, 0.5)
    x, dy, post, bias = torch.randn(40, 45), torch.randn(40, 40), torch.randn(40, 40), torch.randn(40)
    outs = []
    for split in (1, 3):
        corr = nan_like(m.values)
        coo = dict(row=m.row, col=m.col, block_size=16, out_dtype=torch.float32, synapse_mask=m.synapse_mask, sign=None)
        noise = dict(sigma=0.2, seed=3, multiplicative=True)
        dw = bsr_linear_dw(dy=dy, x=x, **coo, **noise, post=post, post_bias=bias, corr=corr, split=split)
        outs.append((dw, corr))
    assert rel_err(outs[1][0], outs[0][0]) < 2e-6 and rel_err(outs[1][1], outs[0][1]) < 2e-6


def test_plasticity_op_routes_to_triton(monkeypatch):
    import bionic_sparse as bs

    m = build(40, 45, 16, 0.6, 0.5)
    pre, post, rate = torch.randn(7, 45), torch.randn(7, 40), torch.rand(40)
    kw = dict(eta=0.2, post_rate=rate, target_rate=0.3, homeo_rate=0.1)
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    got = bs.plasticity_update(m, pre, post, **kw)
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "blockT")
    assert rel_err(got, bs.plasticity_update(m, pre, post, **kw)) < 2e-5


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_fused_module_step_matches_cpu_backend(monkeypatch, mode):
    """One training step of SparseConnectomeLinear with Dale signs, noise and plasticity: the
    Triton backend (fused weight-gradient + correlation pass) and the CPU backend agree on the
    gradients, the activity record, the rate EMA and the weights after the plasticity step."""
    import bionic_sparse as bs

    torch.manual_seed(4)
    mask = make_mask(40, 45, 16, 0.6, 0.5, seed=2, empty_rows=slice(0, 16), empty_cols=slice(3, 7))
    sign = torch.where(torch.rand(45) < 0.7, 1.0, -1.5)
    ref = bs.SparseConnectomeLinear(45, 40, mask=mask, block_size=16, sign=sign, noise_sigma=0.2, noise_mode=mode)
    x, g = torch.randn(9, 45), torch.randn(9, 40)
    results = []
    for backend in ("triton", "blockT"):
        monkeypatch.setenv("BIONIC_SPARSE_BACKEND", backend)
        layer = copy.deepcopy(ref).train()
        layer.record_activity = True
        y = layer(x)
        (y * g).sum().backward()
        grads = (layer.values.grad.clone(), layer.bias.grad.clone())
        with torch.no_grad():
            layer.values -= 0.05 * layer.values.grad
        layer.constrain_()
        layer.plasticity_step(eta=0.1, oja=1.0, target_rate=0.3, homeo_rate=0.1)
        results.append((y.detach(), *grads, layer.post_rate.clone(), layer.values.detach().clone()))
    for got, want in zip(*results, strict=True):
        assert rel_err(got, want) < 2e-5
