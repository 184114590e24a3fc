"""Triton kernels under TRITON_INTERPRET=1 against the float64 oracle (tiny shapes: each
program x block iteration costs ~5 ms in the interpreter). fp32 and fp16 only: the interpreter's
bf16 ``tl.dot`` multiplies raw bit patterns (triton issue #11584)."""

from __future__ import annotations

import pytest
import torch

from bionic_sparse import BlockSparseMatrix
from bionic_sparse import _torch_path as tp
from bionic_sparse.noise import philox4x32, synapse_randn
from bionic_sparse.plasticity import homeostatic_scale

from .conftest import dense_oracle_weight, interpreter_enabled, make_mask, rel_err

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)"),
]

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from bionic_sparse.triton_kernels import _common  # noqa: E402
from bionic_sparse.triton_kernels.bsr_linear import bsr_linear_dx, bsr_linear_fwd, materialize  # noqa: E402
from bionic_sparse.triton_kernels.bsr_sdd import bsr_hebbian_update, bsr_sdd  # noqa: E402

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

    y = bsr_linear_fwd(x, m.values, m.crow, m.col, m.synapse_mask, sign, bias, n_out, sigma, 77, mult)
    assert y.dtype == dtype
    assert rel_err(y, x.double() @ w_ref.T + bias.double()) < TOL[dtype]

    dx = bsr_linear_dx(dy, m.values, m.ccol_t, m.row_t, m.perm_t, m.synapse_mask, sign, n_in, sigma, 77, mult)
    assert rel_err(dx, dy.double() @ w_ref) < TOL[dtype]

    post = torch.randn(batch, n_out).to(dtype)
    rate = torch.rand(n_out)
    dw, new = bsr_sdd(
        dy,
        x,
        m.values,
        m.row,
        m.col,
        m.synapse_mask,
        sign,
        sigma,
        77,
        mult,
        post=post,
        eta=0.2,
        oja=1.0,
        row_scale=homeostatic_scale(rate, 0.3, 0.1),
    )
    factor = 1 + sigma * tp.noise_factor(m.values.double(), 1.0, 77, mode) if sigma and mult else 1.0
    dw_ref = m.gather_blocks(dy.double().T @ (x.double() * sign.double())) * factor
    assert rel_err(dw, dw_ref) < TOL[dtype]
    assert not (dw * ~m.element_mask()).any(), "gradient leaked off the mask"
    new_ref = tp.hebbian_update(
        m.values.double(),
        x.double(),
        post.double(),
        m.row,
        m.col,
        m.synapse_mask,
        rate.double(),
        0.2,
        1.0,
        0.3,
        0.1,
        "dense",
    )
    assert rel_err(new, new_ref) < TOL[dtype]
    assert not (new * ~m.element_mask()).any(), "plasticity created synapses off the mask"


def test_stride0_grad_output_and_materialize():
    m = build(40, 45, 16, 0.6, 0.5)
    dy = torch.ones(1, 40).expand(6, 40)  # what y.sum().backward() hands in
    assert dy.stride(0) == 0
    w_ref = dense_oracle_weight(m, m.values, None, 0.3, 5, "additive")
    dx = bsr_linear_dx(dy, m.values, m.ccol_t, m.row_t, m.perm_t, m.synapse_mask, None, 45, 0.3, 5, False)
    assert rel_err(dx, dy.double() @ w_ref) < 2e-5
    dw, _ = bsr_sdd(dy, torch.randn(6, 45), m.values, m.row, m.col, m.synapse_mask, None)
    assert torch.isfinite(dw).all()
    w_eff = materialize(m.values, m.synapse_mask, 0.3, 5, False, torch.float32)
    assert rel_err(w_eff, tp.effective_values(m.values, m.synapse_mask, 0.3, 5, "additive")) < 1e-6


def test_activity_sums_and_relu():
    m = build(32, 64, 32, 0.5, 1.0)
    x = torch.randn(7, 64)
    act_sum, act_sq = torch.zeros(32), torch.zeros(32)
    y = bsr_linear_fwd(
        x, m.values, m.crow, m.col, m.synapse_mask, None, None, 32, activation="relu", act_stats=(act_sum, act_sq)
    )
    ref = torch.relu(x.double() @ m.to_dense().double().T)
    assert rel_err(y, ref) < 2e-5
    assert rel_err(act_sum, ref.abs().sum(0)) < 2e-5 and rel_err(act_sq, (ref**2).sum(0)) < 2e-5


def test_hebbian_only_entry_point():
    m = build(40, 45, 16, 0.6, 0.5)
    pre, post = torch.randn(9, 45), torch.randn(9, 40)
    new = bsr_hebbian_update(m.values, pre, post, m.row, m.col, m.synapse_mask, None, 0.1, 1.0)
    ref = tp.hebbian_update(m.values, pre, post, m.row, m.col, m.synapse_mask, None, 0.1, 1.0, 0.1, 0.0, "dense")
    assert rel_err(new, ref) < 2e-5


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
    with pytest.raises(ValueError, match="power of two >= 16"):
        bsr_linear_fwd(torch.randn(2, 45), torch.zeros(3, 8, 8), m.crow, m.col, None, None, None, 40)
    with pytest.raises(ValueError, match="crow must be int32"):
        bsr_linear_fwd(torch.randn(2, 45), m.values, m.crow.long(), m.col, None, None, None, 40)
    with pytest.raises(ValueError, match="x must be fp32/fp16/bf16"):
        bsr_linear_fwd(torch.randn(2, 45).double(), m.values, m.crow, m.col, None, None, None, 40)
    with pytest.raises(ValueError, match="activation"):
        bsr_linear_fwd(torch.randn(2, 45), m.values, m.crow, m.col, None, None, None, 40, activation="gelu")


def test_batch_split_two_stage_matches_single_pass():
    m = build(40, 45, 16, 0.6, 0.5)
    x, dy, post = torch.randn(40, 45), torch.randn(40, 40), torch.randn(40, 40)
    one = bsr_sdd(dy, x, m.values, m.row, m.col, m.synapse_mask, None, 0.2, 3, True, post=post, eta=0.1, split=1)
    three = bsr_sdd(dy, x, m.values, m.row, m.col, m.synapse_mask, None, 0.2, 3, True, post=post, eta=0.1, split=3)
    assert rel_err(three[0], one[0]) < 2e-6 and rel_err(three[1], one[1]) < 2e-6
    sq = (post**2).sum(0)
    fused = bsr_sdd(None, x, m.values, m.row, m.col, m.synapse_mask, None, post=post, eta=0.1, post_sq_sum=sq)
    assert rel_err(fused[1], one[1]) < 2e-6


@pytest.mark.parametrize("split", [1, 2])
def test_inplace_plasticity(split):
    m = build(40, 45, 16, 0.6, 0.5)
    x, dy, post = torch.randn(12, 45), torch.randn(12, 40), torch.randn(12, 40)
    ref_dw, ref_new = bsr_sdd(dy, x, m.values, m.row, m.col, m.synapse_mask, None, post=post, eta=0.1, split=split)
    values = m.values.clone()
    dw, new = bsr_sdd(dy, x, values, m.row, m.col, m.synapse_mask, None, post=post, eta=0.1, split=split, inplace=True)
    assert new is values
    assert rel_err(values, ref_new) < 1e-6 and rel_err(dw, ref_dw) < 1e-6


def test_plasticity_op_routes_to_triton(monkeypatch):
    import bionic_sparse as bs

    m = build(40, 45, 16, 0.6, 0.5)
    pre, post, rate = torch.randn(7, 45), torch.randn(7, 40), torch.rand(40)
    kw = dict(eta=0.2, post_rate=rate, target_rate=0.3, homeo_rate=0.1)
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "triton")
    got = bs.plasticity_update(m, pre, post, **kw)
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", "blockT")
    assert rel_err(got, bs.plasticity_update(m, pre, post, **kw)) < 2e-5
