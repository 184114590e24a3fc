"""Element storage (one CSR per matrix) and its products against dense float64 references."""

from __future__ import annotations

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import _native
from bionic_sparse.backends import element
from bionic_sparse.format import BlockSparseMatrix, storage_plan
from bionic_sparse.noise import synapse_noise


def _mask(n_out: int, n_in: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_out, n_in, generator=g) < density
    mask[n_out // 3] = False  # an empty row
    mask[:, n_in // 2] = False  # an empty column
    return mask


def _csr(mask: torch.Tensor, dtype: torch.dtype):
    w = torch.randn(mask.shape, dtype=torch.float64) * mask
    m = BlockSparseMatrix.from_synapses(*mask.nonzero(as_tuple=True), mask.shape, w[mask], dtype=dtype)
    return m, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, batch", [((37, 53), 13), ((64, 64), 64), ((5, 130), 1), ((90, 17), 70)])
@pytest.mark.parametrize("threads", [1, 2])
def test_products_match_dense(dtype, shape, batch, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    mask = _mask(*shape, 0.15, seed=shape[0] + batch)
    m, w = _csr(mask, dtype)
    crow, col, v = m.crow, m.col, m.values.view(-1)
    x = torch.randn(batch, shape[1], dtype=dtype)
    dy = torch.randn(batch, shape[0], dtype=dtype)
    post = torch.randn(batch, shape[0], dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    y = element.csr_fwd(crow, col, v, x)
    torch.testing.assert_close(y.double(), x.double() @ w.t(), rtol=tol, atol=tol)
    assert torch.all(y[:, shape[0] // 3] == 0)  # a row without synapses is written, as zeros
    dx = element.csr_fwd_t(crow, col, v, dy, shape[1])
    torch.testing.assert_close(dx.double(), dy.double() @ w, rtol=tol, atol=tol)
    g, h = element.csr_sddmm(crow, col, dy, x, post)
    torch.testing.assert_close(g.double(), (dy.double().t() @ x.double())[mask], rtol=tol, atol=tol * batch)
    torch.testing.assert_close(h.double(), (post.double().t() @ x.double())[mask], rtol=tol, atol=tol * batch)
    # Dale's sign folded into the transposes: exactly what a separate multiply gives
    sign_in = torch.where(torch.rand(shape[1]) < 0.3, -1.0, 1.0).to(dtype)
    sign_out = torch.where(torch.rand(shape[1]) < 0.3, -0.5, 1.0).to(dtype)
    assert torch.equal(element.csr_fwd(crow, col, v, x, sign_in), element.csr_fwd(crow, col, v, x * sign_in))
    dx_signed = element.csr_fwd_t(crow, col, v, dy, shape[1], sign_out)
    assert torch.equal(dx_signed, dx * sign_out)


def test_stride0_gradient_and_empty_matrix():
    mask = _mask(20, 30, 0.2, seed=1)
    m, w = _csr(mask, torch.float32)
    dy = torch.ones(1, 20).expand(6, 20)  # what y.sum().backward() hands in
    dx = element.csr_fwd_t(m.crow, m.col, m.values.view(-1), dy, 30)
    torch.testing.assert_close(dx.double(), dy.double() @ w, rtol=1e-5, atol=1e-5)
    empty = BlockSparseMatrix.from_synapses(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), (4, 3))
    assert empty.nnzb == 0
    y = element.csr_fwd(empty.crow, empty.col, empty.values.view(-1), torch.randn(2, 3))
    assert torch.equal(y, torch.zeros(2, 4))


def test_bad_arguments():
    m, _ = _csr(_mask(8, 9, 0.3, seed=2), torch.float32)
    with pytest.raises(ValueError, match="dy must have 8 columns"):
        element.csr_fwd_t(m.crow, m.col, m.values.view(-1), torch.randn(2, 7), 9)
    with pytest.raises(TypeError, match="float32 or float64"):
        element.csr_fwd(m.crow, m.col, m.values.view(-1), torch.randn(2, 9, dtype=torch.float16))
    with pytest.raises(ValueError, match="crow must end at the number of synapses"):
        element.csr_fwd(m.crow[:-1], m.col, m.values.view(-1), torch.randn(2, 9))
    with pytest.raises(TypeError, match="pre must hold integer indices"):
        BlockSparseMatrix.from_synapses(torch.tensor([0]), torch.tensor([0.5]), (2, 2))
    with pytest.raises(ValueError, match="post indices must lie in"):
        BlockSparseMatrix.from_synapses(torch.tensor([5]), torch.tensor([0]), (2, 2))


def test_from_synapses_sorts_and_merges():
    m = BlockSparseMatrix.from_synapses(
        torch.tensor([2, 0, 2, 0], dtype=torch.int32), torch.tensor([1, 3, 1, 0]), (3, 4), torch.tensor([1.0, 2, 3, 4])
    )
    assert m.is_element and m.nnzb == 3 and m.row.numel() == 0 and m.perm_t.numel() == 0
    assert m.to_dense().tolist() == [[4, 0, 0, 2], [0, 0, 0, 0], [0, 4, 0, 0]]
    assert m.coo_row().tolist() == [0, 0, 2]
    assert m.storage_bytes() == 3 * 8 + (4 + 5) * 4  # values + col, crow[4] + ccol_t[5]


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_layer_matches_dense_reference(mode):
    """Dale's sign, synaptic noise (slot k draws synapse_noise(seed, nnz, 1)[k]), bias: forward,
    input gradient and weight gradient at the synapses, in float64."""
    torch.manual_seed(3)
    n_in, n_out, sigma = 41, 29, 0.3
    mask = _mask(n_out, n_in, 0.2, seed=3)
    sign = torch.where(torch.rand(n_in) < 0.7, 1.0, -2.0).double()
    layer = bs.SparseConnectomeLinear(
        n_in, n_out, mask=mask, block_size=1, sign=sign, noise_sigma=sigma, noise_mode=mode, dtype=torch.float64
    ).train()
    assert layer.storage()["method"] == "element"
    x = torch.randn(6, n_in, dtype=torch.float64, requires_grad=True)
    layer.values.grad = None
    y = layer(x)
    nnz = layer.nnzb
    w = layer.matrix.to_dense(layer.values.detach())
    xi_seed = _forward_seed(layer)
    xi = layer.matrix.to_dense(synapse_noise(xi_seed, nnz, 1).to(torch.float64))
    w_eff = (w * (1 + sigma * xi) if mode == "multiplicative" else (w + sigma * xi) * mask) * sign
    torch.testing.assert_close(y, x @ w_eff.t() + layer.bias, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ w_eff, rtol=1e-10, atol=1e-12)
    dw = (g.t() @ x.detach()) * sign
    if mode == "multiplicative":
        dw = dw * (1 + sigma * xi)
    torch.testing.assert_close(layer.matrix.to_dense(layer.values.grad), dw * mask, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lead", [(7,), (2, 3)])
def test_compiled_path_with_sign_and_leading_dims(lead):
    """float32 (the compiled kernels and transposes): Dale's sign folded into the transposes, inputs
    with any leading dims, an output that is no view (in-place ops may follow), stride-0 dy."""
    torch.manual_seed(5)
    n_in, n_out = 70, 45
    mask = _mask(n_out, n_in, 0.2, seed=5)
    sign = torch.where(torch.rand(n_in) < 0.7, 1.0, -0.5)
    layer = bs.SparseConnectomeLinear(n_in, n_out, mask=mask, block_size=1, sign=sign).eval()
    x = torch.randn(*lead, n_in, requires_grad=True)
    y = layer(x)
    assert y.shape == (*lead, n_out) and y._base is None
    w_eff = (layer.matrix.to_dense(layer.values.detach()) * sign).double()
    ref = x.detach().double() @ w_eff.t() + layer.bias.detach().double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()  # dy: a stride-0 expansion of ones
    torch.testing.assert_close(x.grad.double(), torch.ones(*lead, n_out, dtype=torch.float64) @ w_eff, rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def _forward_seed(layer) -> int:
    """The noise seed of the layer's last training forward (noise_seed + step - 1)."""
    return int(layer.noise_seed) + int(layer._noise_counter) - 1


def test_element_and_block_layers_train_alike():
    """Plasticity (Hebbian + homeostasis) and the optimiser on the same wiring stored both ways."""
    torch.manual_seed(4)
    mask = _mask(33, 27, 0.25, seed=4)
    sign = torch.where(torch.rand(27) < 0.8, 1.0, -1.0).double()
    kw = dict(mask=mask, sign=sign, dtype=torch.float64)
    el = bs.SparseConnectomeLinear(27, 33, block_size=1, **kw).train()
    bl = bs.SparseConnectomeLinear(27, 33, block_size=16, **kw).train()
    with torch.no_grad():
        bl.values.copy_(bl.matrix.gather_blocks(el.matrix.to_dense(el.values)))
        bl.bias.copy_(el.bias)
    for layer in (el, bl):
        layer.record_activity = True
        layer.post_rate.fill_(0.2)
    x = torch.randn(9, 27, dtype=torch.float64)
    g = torch.randn(9, 33, dtype=torch.float64)
    plastic = dict(eta=0.05, oja=1.0, target_rate=0.3, homeo_rate=0.2)
    for layer in (el, bl):
        (layer(x) * g).sum().backward()
        with torch.no_grad():
            layer.values -= 0.1 * layer.values.grad
        layer.plasticity_step(**plastic)
    torch.testing.assert_close(el.matrix.to_dense(el.values), bl.matrix.to_dense(bl.values), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(el.post_rate, bl.post_rate)


def test_storage_plan_follows_the_fill():
    sparse = _mask(512, 512, 0.005, seed=5)  # random, 0.5 %: blocks would be nearly empty
    plan = storage_plan(*sparse.nonzero(as_tuple=True), sparse.shape)
    assert plan.method == "element" and plan.bytes <= 1.5 * plan.csr_bytes
    assert plan.options["block b=16"]["fill"] < 0.05
    blocky = torch.zeros(512, 512, dtype=torch.bool)
    blocky[:64, 128:192] = True
    blocky[256:320, :64] = True
    plan = storage_plan(*blocky.nonzero(as_tuple=True), blocky.shape)
    assert plan.method == "block" and plan.block_size == 64 and plan.options["block b=64"]["fill"] == 1.0
    assert "block storage (b=64)" in str(plan)
    auto = bs.SparseConnectomeLinear(512, 512, mask=sparse, block_size="auto")
    assert auto.block_size == 1 and auto.storage()["method"] == "element"
    assert auto.storage()["bytes"] <= 1.5 * auto.storage()["csr_bytes"]
    auto_block = bs.SparseConnectomeLinear(512, 512, mask=blocky, block_size="auto")
    assert auto_block.block_size == 64 and auto_block.storage()["method"] == "block"


def test_element_layer_state_dict_and_weight_view(tmp_path):
    mask = _mask(12, 10, 0.3, seed=6)
    a = bs.SparseConnectomeLinear(10, 12, mask=mask, block_size=1)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = bs.SparseConnectomeLinear(10, 12, mask=mask, block_size=1)
    b.load_state_dict(torch.load(tmp_path / "s.pt"))
    torch.testing.assert_close(a.weight.detach(), b.weight.detach())
    assert torch.equal(a.weight.detach() != 0, mask & (a.weight.detach() != 0))  # nothing off the mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sddmm_sign_and_noise_factor_fused(dtype):
    """The weight-gradient pass multiplies by Dale's sign and the noise derivative in place of two
    gathers after it; the correlation stays raw."""
    mask = _mask(23, 31, 0.3, seed=8)
    m, _ = _csr(mask, dtype)
    x, dy, post = (torch.randn(7, n, dtype=dtype) for n in (31, 23, 23))
    sign = torch.where(torch.rand(31) < 0.3, -0.5, 1.0).to(dtype)
    xi = synapse_noise(11, m.nnzb, 1).reshape(-1)
    g, h = element.csr_sddmm(m.crow, m.col, dy, x, post, sign, xi, 0.2)
    rows, cols = mask.nonzero(as_tuple=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    ref = (dy.double().t() @ (x.double() * sign.double()))[rows, cols] * (1 + 0.2 * xi.double())
    torch.testing.assert_close(g.double(), ref, rtol=tol, atol=tol * 7)
    torch.testing.assert_close(h.double(), (post.double().t() @ x.double())[rows, cols], rtol=tol, atol=tol * 7)


def test_compiled_plasticity_matches_the_rule():
    from bionic_sparse.plasticity import plasticity_rule

    mask = _mask(40, 35, 0.25, seed=9)
    m, _ = _csr(mask, torch.float32)
    values = m.values.abs().contiguous()
    values.view(-1)[::5] = 0.0  # weights at zero stay there under Dale's law
    corr = torch.randn(m.nnzb, 1, 1)
    q, scale = torch.rand(40), 1 + 0.1 * torch.randn(40)
    rows = mask.nonzero(as_tuple=True)[0]
    ref = plasticity_rule(
        values.reshape(-1).double(), corr.reshape(-1).double(), q.double()[rows], scale.double()[rows], 0.3, 1.0
    )
    for s in (scale, None):
        v = values.clone()
        element.plasticity_(values=v, corr=corr, crow=m.crow, post_sq=q, scale=s, eta=0.3, oja=1.0)
        want = (
            ref
            if s is not None
            else plasticity_rule(
                values.reshape(-1).double(), corr.reshape(-1).double(), q.double()[rows], None, 0.3, 1.0
            )
        )
        torch.testing.assert_close(v.reshape(-1).double(), want, rtol=1e-5, atol=1e-6)
        assert not ((v.reshape(-1) * values.reshape(-1)) < 0).any()


@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 9), (8, 8), (13, 64), (64, 65), (130, 17), (9, 200)])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_transposes_are_exact(rows, cols, threads, monkeypatch):
    """The register-blocked transposes (8 x 8 blocks, element-wise edges) against torch's, bit for
    bit, with a scale per source row or per source column (Dale's sign) folded in."""
    k = _native.csr_kernels()
    if k is None:
        pytest.skip(f"no compiled kernels: {_native.build_error('csr')}")
    g = torch.Generator().manual_seed(rows * 1000 + cols)
    a = torch.randn(rows, cols, generator=g)
    col_scale = torch.where(torch.rand(cols, generator=g) < 0.3, -0.5, 1.0)
    row_scale = torch.rand(rows, generator=g) + 0.5
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert torch.equal(element._fm(a, k), a.t())
    assert torch.equal(element._fm(a, k, col_scale), (a * col_scale).t())
    assert torch.equal(element._bm(a, k), a.t())
    assert torch.equal(element._bm(a, k, row_scale), a.t() * row_scale)
