"""The element-level CSR Triton kernels (``triton_kernels/csr_linear.py``) under TRITON_INTERPRET=1
against a dense float64 oracle, and the layer on element storage routed to them (tiny shapes:
every program costs milliseconds in the interpreter)."""

from __future__ import annotations

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse.format import BlockSparseMatrix
from bionic_sparse.noise import synapse_noise
from bionic_sparse.plasticity import homeostatic_scale, plasticity_rule, post_moments

from .conftest import interpreter_enabled, rel_err

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest without CUDA)"),
]

pytest.importorskip("triton")

from bionic_sparse.backends import triton as triton_backend  # noqa: E402
from bionic_sparse.triton_kernels import _common  # noqa: E402
from bionic_sparse.triton_kernels.csr_linear import (  # noqa: E402
    csr_linear_dw,
    csr_linear_dx,
    csr_linear_fwd,
    csr_plasticity_,
)

TOL = {torch.float32: 2e-5, torch.float16: 3e-3}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def _synapses(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=g) < density
    mask[n_out // 3] = False  # a neuron without inputs
    mask[:, n_in // 2] = False  # one without targets
    if n_out > 4:
        mask[1, : min(n_in, 70)] = True  # a row longer than one BK=64 chunk
    return mask


def _element(mask: torch.Tensor) -> BlockSparseMatrix:
    w = torch.randn(mask.shape, dtype=torch.float64)
    return BlockSparseMatrix.from_synapses(*mask.nonzero(as_tuple=True), mask.shape, w[mask], dtype=torch.float32)


def _oracle(m: BlockSparseMatrix, mask: torch.Tensor, keep, sign, sigma, seed, mult) -> torch.Tensor:
    """Dense float64 ``W_eff``: noisy weights at the synapses (in CSR order), kept, signed."""
    v = m.values.reshape(-1).double()
    if sigma:
        xi = synapse_noise(seed, v.numel(), 1).reshape(-1).double()
        v = v * (1 + sigma * xi) if mult else v + sigma * xi
    if keep is not None:
        v = v * keep.double()
    w = torch.zeros(mask.shape, dtype=torch.float64)
    w[mask] = v  # from_synapses stores row-major, the order of mask.nonzero()
    return w if sign is None else w * sign.double()[None, :]


CASES = [
    pytest.param(20, 75, 0.2, 13, id="20x75-M13"),
    pytest.param(9, 6, 0.5, 1, id="9x6-M1"),
    pytest.param(6, 5, 0.0, 4, id="empty"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("sigma,mult", [(0.0, True), (0.25, True), (0.25, False)], ids=["nonoise", "mult", "add"])
@pytest.mark.parametrize("n_out,n_in,density,batch", CASES)
def test_kernels_match_oracle(n_out, n_in, density, batch, sigma, mult, dtype):
    torch.manual_seed(n_out + batch)
    mask = _synapses(n_out, n_in, density, seed=batch)
    if density == 0.0:
        mask[:] = False
    m = _element(mask)
    nnz = m.nnzb
    keep = torch.rand(nnz) < 0.8  # a synapse mask over the stored slots
    sign = torch.where(torch.rand(n_in) < 0.7, 1.0, -1.5)
    bias = torch.randn(n_out)
    x, dy = torch.randn(batch, n_in).to(dtype), torch.randn(batch, n_out).to(dtype)
    noise = dict(sigma=sigma, seed=77, multiplicative=mult)
    w_ref = _oracle(m, mask, keep, sign, sigma, 77, mult)

    moments = torch.full((2, n_out), float("nan"))
    y = csr_linear_fwd(
        x=x,
        values=m.values,
        crow=m.crow,
        col=m.col,
        synapse_mask=keep,
        sign=sign,
        n_out=n_out,
        post_bias=bias,
        post_moments=moments,
        **noise,
    )
    y_ref = x.double() @ w_ref.T
    assert y.dtype == dtype and y.shape == (batch, n_out)
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(moments, post_moments(y_ref + bias.double())) < TOL[dtype]

    dx = csr_linear_dx(dy=dy, values=m.values, crow=m.crow, col=m.col, synapse_mask=keep, sign=sign, n_in=n_in, **noise)
    assert dx.dtype == dtype and rel_err(dx, dy.double() @ w_ref) < TOL[dtype]

    corr = torch.full((nnz, 1, 1), float("nan"))
    dw = csr_linear_dw(
        dy=dy,
        x=x,
        crow=m.crow,
        col=m.col,
        out_dtype=torch.float32,
        synapse_mask=keep,
        sign=sign,
        post=y,
        post_bias=bias,
        corr=corr,
        **noise,
    )
    rows, cols = mask.nonzero(as_tuple=True)
    factor = 1 + sigma * synapse_noise(77, nnz, 1).reshape(-1).double() if sigma and mult else 1.0
    dw_ref = (dy.double().T @ (x.double() * sign.double()))[rows, cols] * factor * keep
    assert dw.shape == (nnz, 1, 1) and rel_err(dw.reshape(-1), dw_ref) < TOL[dtype]
    post_ref = y.double() + bias.double()
    corr_ref = (post_ref.T @ x.double() / batch)[rows, cols] * keep
    assert rel_err(corr.reshape(-1), corr_ref) < TOL[dtype]

    values = m.values.abs().contiguous()
    w0 = values.reshape(-1).double()
    q, rate = post_moments(post_ref)[1].float(), torch.rand(n_out)
    scale = homeostatic_scale(rate, 0.3, 0.1)
    csr_plasticity_(values=values, corr=corr, crow=m.crow, synapse_mask=keep, post_sq=q, scale=scale, eta=0.2, oja=1.0)
    ref = plasticity_rule(w0, corr.reshape(-1).double(), q.double()[rows], scale.double()[rows], 0.2, 1.0) * keep
    assert rel_err(values.reshape(-1), ref) < 1e-6


def test_stride0_grad_output_and_no_dy():
    mask = _synapses(12, 30, 0.3, seed=2)
    m = _element(mask)
    dy = torch.ones(1, 12).expand(5, 12)  # what y.sum().backward() hands in
    w_ref = _oracle(m, mask, None, None, 0.3, 5, False)
    dx = csr_linear_dx(
        dy=dy,
        values=m.values,
        crow=m.crow,
        col=m.col,
        synapse_mask=None,
        sign=None,
        n_in=30,
        sigma=0.3,
        seed=5,
        multiplicative=False,
    )
    assert rel_err(dx, dy.double() @ w_ref) < 2e-5
    x, post = torch.randn(5, 30), torch.randn(5, 12)
    corr = torch.full((m.nnzb, 1, 1), float("nan"))
    out = csr_linear_dw(
        dy=None,
        x=x,
        crow=m.crow,
        col=m.col,
        out_dtype=torch.float32,
        synapse_mask=None,
        sign=None,
        post=post,
        corr=corr,
    )
    rows, cols = mask.nonzero(as_tuple=True)
    assert out is None and rel_err(corr.reshape(-1), (post.double().T @ x.double() / 5)[rows, cols]) < 2e-5


def test_launcher_errors():
    m = _element(_synapses(8, 9, 0.4, seed=3))
    fwd = dict(values=m.values, crow=m.crow, col=m.col, synapse_mask=None, sign=None, n_out=8)
    x = torch.randn(2, 9)
    with pytest.raises(ValueError, match="crow must be int32"):
        csr_linear_fwd(x=x, **dict(fwd, crow=m.crow.long()))
    with pytest.raises(ValueError, match="crow must have 10 entries"):
        csr_linear_fwd(x=x, **dict(fwd, n_out=9))
    with pytest.raises(ValueError, match="values must be"):
        csr_linear_fwd(x=x, **dict(fwd, values=m.values.reshape(-1, 1)))
    with pytest.raises(ValueError, match="x must be fp32/fp16/bf16"):
        csr_linear_fwd(x=x.double(), **fwd)
    with pytest.raises(ValueError, match="sign must have shape"):
        csr_linear_fwd(x=x, **dict(fwd, sign=torch.ones(3)))
    with pytest.raises(ValueError, match="synapse_mask must have"):
        csr_linear_fwd(x=x, **dict(fwd, synapse_mask=torch.ones(2, dtype=torch.bool)))
    with pytest.raises(ValueError, match="post is needed"):
        csr_linear_dw(
            dy=None,
            x=x,
            crow=m.crow,
            col=m.col,
            out_dtype=torch.float32,
            synapse_mask=None,
            sign=None,
            corr=torch.zeros(m.nnzb),
        )
    with pytest.raises(ValueError, match="block_size 8 has no Triton kernels"):
        triton_backend.kernels_for(8)


@pytest.mark.parametrize("plastic", [False, True], ids=["plain", "plastic"])
def test_element_layer_on_triton_matches_cpu(plastic, monkeypatch):
    """The drop-in layer on element storage: forward, both gradients and (with plasticity) the
    in-place update give the CPU backend's numbers when routed to the Triton kernels."""
    mask = _synapses(14, 18, 0.25, seed=4)
    sign = torch.where(torch.rand(18) < 0.3, -0.5, 1.0)
    torch.manual_seed(0)
    ref = bs.SparseConnectomeLinear(18, 14, mask=mask, block_size=1, sign=sign, noise_sigma=0.1).train()
    assert ref.storage()["method"] == "element"
    layer = bs.SparseConnectomeLinear(18, 14, mask=mask, block_size=1, sign=sign, noise_sigma=0.1).train()
    layer.load_state_dict(ref.state_dict())
    x, g = torch.randn(6, 18), torch.randn(6, 14)
    outs = {}
    for name, mod, backend in (("cpu", ref, ""), ("triton", layer, "triton")):
        monkeypatch.setenv("BIONIC_SPARSE_BACKEND", backend)
        mod.record_activity = plastic
        mod.post_rate.fill_(0.2)
        xi = x.clone().requires_grad_()
        y = mod(xi)
        (y * g).sum().backward()
        if plastic:
            mod.plasticity_step(eta=0.05, oja=1.0, target_rate=0.3, homeo_rate=0.2)
        outs[name] = (y.detach(), xi.grad, mod.values.grad, mod.values.detach().clone(), mod.post_rate.clone())
    for got, want in zip(outs["triton"], outs["cpu"], strict=True):
        assert rel_err(got, want) < 2e-5
    assert triton_backend.kernels_for(layer.block_size).startswith("triton csr_linear")
