"""Compiled Triton kernels on a real GPU against the CPU backend (float64 oracle) at realistic
sizes. Deselected by default (``-m gpu``); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix
from bionic_sparse.noise import synapse_noise

from .conftest import dense_oracle_weight, make_mask, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU tests need one"),
]

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SIZES = [
    pytest.param(1024, 1024, 64, 0.1, 64, id="1024-b64-M64"),
    pytest.param(2000, 1500, 32, 0.15, 600, id="2000x1500-b32-M600-ragged"),
    pytest.param(4096, 4096, 64, 0.1, 512, id="4096-b64-M512"),
    pytest.param(512, 768, 16, 0.3, 300, id="512x768-b16-M300"),
]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    from bionic_sparse.triton_kernels import _common

    monkeypatch.setattr(_common, "POISON", True)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "sigma,mode", [(0.0, "multiplicative"), (0.2, "multiplicative"), (0.2, "additive")], ids=["nonoise", "mult", "add"]
)
@pytest.mark.parametrize("n_out,n_in,b,density,batch", SIZES)
def test_custom_op_on_gpu_matches_oracle(n_out, n_in, b, density, batch, sigma, mode, dtype):
    torch.manual_seed(0)
    mask = make_mask(n_out, n_in, b, density, 0.7, seed=1, empty_rows=slice(0, b), empty_cols=slice(-b, None))
    m = BlockSparseMatrix.from_dense(mask, b, weight=torch.randn(n_out, n_in) / n_in**0.5)
    sign = torch.where(torch.rand(n_in) < 0.8, 1.0, -2.0)
    bias = torch.randn(n_out)
    x = torch.randn(batch, n_in)
    dy = torch.randn(batch, n_out)
    mc = m.to("cuda")
    values = mc.values.clone().requires_grad_()
    xc = x.to("cuda", dtype).requires_grad_()
    y = bs.bsr_linear(
        xc, mc, bias=bias.cuda(), sign=sign.cuda(), noise_sigma=sigma, noise_seed=42, noise_mode=mode, values=values
    )
    y.backward(dy.to("cuda", dtype))
    w_ref = dense_oracle_weight(m, m.values, sign, sigma, 42, mode)
    xr = xc.detach().double().cpu()
    assert rel_err(y, xr @ w_ref.T + bias.double()) < TOL[dtype]
    assert rel_err(xc.grad, dy.to(dtype).double() @ w_ref) < TOL[dtype]
    factor = 1 + sigma * synapse_noise(42, m.nnzb, b).double() if sigma and mode == "multiplicative" else 1.0
    dw_ref = m.gather_blocks(dy.to(dtype).double().T @ (xr * sign.double())) * factor
    assert rel_err(values.grad, dw_ref) < TOL[dtype]
    assert not (values.grad.cpu() * ~m.element_mask()).any()


def test_noise_is_identical_on_gpu_and_cpu():
    m = BlockSparseMatrix.from_dense(make_mask(256, 256, 32, 0.5, 0.6), 32, weight=torch.ones(256, 256))
    eye = torch.eye(256)
    cpu = bs.bsr_linear(eye, m, noise_sigma=0.3, noise_seed=5).T
    gpu = bs.bsr_linear(eye.cuda(), m.to("cuda"), noise_sigma=0.3, noise_seed=5).T.cpu()
    assert (gpu - cpu).abs().max() < 1e-5


def test_plasticity_on_gpu_matches_cpu():
    torch.manual_seed(3)
    mask = make_mask(1024, 768, 64, 0.2, 0.8)
    m = BlockSparseMatrix.from_dense(mask, 64, weight=torch.rand(1024, 768) * mask)
    pre, post, rate = torch.randn(300, 768), torch.randn(300, 1024), torch.rand(1024)
    ref = bs.plasticity_update(m, pre, post, eta=0.05, post_rate=rate, target_rate=0.2, homeo_rate=0.1)
    mc = m.to("cuda")
    got = bs.plasticity_update(
        mc, pre.cuda(), post.cuda(), eta=0.05, post_rate=rate.cuda(), target_rate=0.2, homeo_rate=0.1
    )
    assert rel_err(got, ref) < 1e-5


def test_split_batch_weight_gradient_and_correlation():
    from bionic_sparse.triton_kernels.bsr_sdd import bsr_linear_dw

    m = BlockSparseMatrix.from_block_mask(torch.eye(4, dtype=torch.bool), 64).to("cuda")  # 4 blocks: split
    m.values = torch.randn_like(m.values)
    x, dy, post = (torch.randn(8192, 256, device="cuda") for _ in range(3))
    corr = torch.full_like(m.values, float("nan"))
    coo = dict(row=m.row, col=m.col, block_size=64, out_dtype=torch.float32, synapse_mask=None, sign=None)
    dw = bsr_linear_dw(dy=dy, x=x, **coo, post=post, corr=corr)
    assert rel_err(dw, m.gather_blocks(dy.double().T @ x.double())) < 1e-5
    assert rel_err(corr, m.gather_blocks(post.double().T @ x.double() / 8192)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_module_step_on_gpu_matches_cpu(dtype):
    """SparseConnectomeLinear with Dale signs, noise and plasticity: one training step (fused
    weight-gradient + correlation pass, plasticity after the optimiser step) on the GPU and on CPU."""
    import copy

    torch.manual_seed(6)
    mask = make_mask(1024, 768, 64, 0.2, 0.8, seed=2, empty_rows=slice(0, 64))
    sign = torch.where(torch.rand(768) < 0.8, 1.0, -2.0)
    ref = bs.SparseConnectomeLinear(768, 1024, mask=mask, block_size=64, sign=sign, noise_sigma=0.1)
    x, g = torch.randn(300, 768), torch.randn(300, 1024)
    results = []
    for device in ("cuda", "cpu"):
        layer = copy.deepcopy(ref).to(device).train()
        layer.record_activity = True
        xd = x.to(device, dtype if device == "cuda" else torch.float32)
        (layer(xd).float() * g.to(device)).sum().backward()
        with torch.no_grad():
            layer.values -= 0.01 * layer.values.grad
        layer.constrain_()
        layer.plasticity_step(eta=0.01, target_rate=0.3, homeo_rate=0.1)
        results.append((layer.post_rate.cpu(), layer.values.detach().cpu()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip(*results, strict=True):
        assert rel_err(got, want) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_element_storage_step_on_gpu_matches_cpu(dtype):
    """Element storage (the volume's, ``triton_kernels/csr_linear.py``): one training step with
    Dale signs, noise and plasticity on the GPU and on the CPU's compiled element kernels."""
    import copy

    torch.manual_seed(7)
    mask = torch.rand(3000, 2500) < 0.01  # 1 %: blocks would be nearly empty
    mask[:40] = False
    sign = torch.where(torch.rand(2500) < 0.8, 1.0, -2.0)
    ref = bs.SparseConnectomeLinear(2500, 3000, mask=mask, block_size="auto", sign=sign, noise_sigma=0.1)
    assert ref.storage()["method"] == "element"
    x, g = torch.randn(256, 2500), torch.randn(256, 3000)
    results = []
    for device in ("cuda", "cpu"):
        layer = copy.deepcopy(ref).to(device).train()
        layer.record_activity = True
        xd = x.to(device, dtype if device == "cuda" else torch.float32)
        xd.requires_grad_()
        (layer(xd).float() * g.to(device)).sum().backward()
        dx = xd.grad.float().cpu()
        with torch.no_grad():
            layer.values -= 0.01 * layer.values.grad
        layer.constrain_()
        layer.plasticity_step(eta=0.01, target_rate=0.3, homeo_rate=0.1)
        results.append((dx, layer.post_rate.cpu(), layer.values.detach().cpu()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip(*results, strict=True):
        assert rel_err(got, want) < tol


def test_model_trains_on_gpu():
    torch.manual_seed(0)
    layer = bs.SparseConnectomeLinear(
        512, 256, mask=make_mask(256, 512, 32, 0.3), block_size=32, noise_sigma=0.05, device="cuda"
    )
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    target = torch.randn(512, 256, device="cuda") * 0.05
    first = None
    for _ in range(50):
        x = torch.randn(128, 512, device="cuda")
        loss = ((layer(x) - x @ target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or loss.item()
    assert loss.item() < 0.7 * first
