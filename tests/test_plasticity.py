"""Hebbian (Oja) + homeostatic plasticity against a dense float64 reference."""

from __future__ import annotations

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix
from bionic_sparse.noise import synapse_noise
from bionic_sparse.plasticity import dense_plasticity as reference

from .conftest import dense_oracle_weight, make_mask, rel_err


def dense_plasticity(w, mask, pre, post, eta, oja, rate, target, homeo):
    """The library's dense reference, in the argument order of these tests."""
    return reference(w, mask, pre, post, eta, oja, rate, target, homeo)


@pytest.mark.parametrize("n_out,n_in,b", [(64, 64, 16), (70, 45, 16), (33, 50, 8)], ids=str)
@pytest.mark.parametrize("homeo", [0.0, 0.3], ids=["hebb", "hebb+homeo"])
@pytest.mark.parametrize("inplace", [False, True], ids=["functional", "inplace"])
def test_plasticity_matches_dense(cpu_method, n_out, n_in, b, homeo, inplace):
    torch.manual_seed(0)
    mask = make_mask(n_out, n_in, b, 0.5, 0.6, seed=3, empty_rows=slice(0, 2))
    w = torch.rand(n_out, n_in, dtype=torch.float64) * mask  # Dale: non-negative magnitudes
    m = BlockSparseMatrix.from_dense(mask, b, weight=w)
    pre = torch.randn(9, n_in, dtype=torch.float64)
    post = torch.randn(9, n_out, dtype=torch.float64)
    rate = torch.rand(n_out, dtype=torch.float64)
    values = m.values.clone()
    out = bs.plasticity_update(
        m,
        pre,
        post,
        eta=0.5,
        oja=1.0,
        post_rate=rate,
        target_rate=0.2,
        homeo_rate=homeo,
        values=values,
        inplace=inplace,
    )
    assert (out is values) == inplace
    ref = dense_plasticity(w, mask, pre, post, 0.5, 1.0, rate, 0.2, homeo)
    assert rel_err(m.to_dense(out), ref) < 1e-10
    assert not (out * ~m.element_mask()).any(), "plasticity created synapses off the mask"
    assert (out >= 0).all(), "non-negative (Dale) weights must stay non-negative"
    assert ((out != 0) & (values == 0) & ~m.element_mask()).sum() == 0


def test_signs_are_kept_for_mixed_weights():
    mask = torch.ones(16, 16, dtype=torch.bool)
    w = torch.randn(16, 16, dtype=torch.float64)
    m = BlockSparseMatrix.from_dense(mask, 16, weight=w)
    pre, post = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    out = bs.plasticity_update(m, pre, post, eta=50.0)  # huge step: many would flip
    assert ((out * m.values) >= 0).all()
    assert (out == 0).any()


def test_oja_bounds_weight_norm():
    torch.manual_seed(1)
    m = BlockSparseMatrix.from_dense(torch.ones(16, 32, dtype=torch.bool), 16, weight=torch.rand(16, 32))
    v = m.values
    for _ in range(300):
        pre = torch.rand(64, 32)
        post = pre @ m.to_dense(v).T
        v = bs.plasticity_update(m, pre, post, eta=0.01, values=v)
    norms = m.to_dense(v).norm(dim=1)
    assert torch.isfinite(norms).all() and norms.max() < 2.0  # Oja: row norms converge near 1


def test_homeostasis_moves_rows_toward_target():
    m = BlockSparseMatrix.from_dense(torch.ones(32, 32, dtype=torch.bool), 16, weight=torch.ones(32, 32))
    rate = torch.cat([torch.full((16,), 0.05), torch.full((16,), 0.5)])
    out = bs.plasticity_update(
        m, torch.zeros(2, 32), torch.zeros(2, 32), eta=0.0, post_rate=rate, target_rate=0.1, homeo_rate=0.2
    )
    dense = m.to_dense(out)
    assert (dense[:16] > 1).all() and (dense[16:] < 1).all()
    assert dense.max() < 1.2 and dense.min() > 0.8  # bounded by 1 +/- homeo_rate


def test_plasticity_errors():
    m = BlockSparseMatrix.from_dense(torch.ones(16, 16, dtype=torch.bool), 16)
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="pre.shape"):
        bs.plasticity_update(m, x[:, :3], x, eta=0.1)
    with pytest.raises(ValueError, match="leading dims"):
        bs.plasticity_update(m, x, x[:1], eta=0.1)
    with pytest.raises(ValueError, match="homeo_rate"):
        bs.plasticity_update(m, x, x, eta=0.1, homeo_rate=1.5)
    with pytest.raises(ValueError, match="eta must be finite"):
        bs.plasticity_update(m, x, x, eta=float("nan"))


def test_dense_reference_written_out():
    """The reference itself against the rule spelled out element by element (float64)."""
    torch.manual_seed(3)
    w, pre, post = torch.rand(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3)
    mask, rate = torch.rand(3, 4) < 0.7, torch.rand(3, dtype=torch.float64)
    got = reference(w, mask, pre, post, 0.1, 0.5, rate, 0.3, 0.2)
    p = post.double()
    for i in range(3):
        scale = 1 + 0.2 * (0.3 - rate[i]) / (0.3 + abs(rate[i]))
        for j in range(4):
            hebb = sum(p[b, i] * pre[b, j] for b in range(5)) / 5
            new = (w[i, j] + 0.1 * (hebb - 0.5 * (p[:, i] ** 2).mean() * w[i, j])) * scale
            new = 0.0 if new * w[i, j] < 0 else new
            assert abs(got[i, j] - new * mask[i, j]) < 1e-12


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "dale"])
def test_dense_masked_layer_applies_the_same_rule(signed):
    """MaskedLinear (dense-masked execution) and SparseConnectomeLinear: one plasticity step from
    the same weights and activities gives the same effective weights, and both match the oracle."""
    torch.manual_seed(1)
    mask = make_mask(40, 56, 8, 0.5, 0.7, seed=5)
    sign = torch.where(torch.rand(56) < 0.8, 1.0, -0.7).double() if signed else None
    sparse = bs.SparseConnectomeLinear(56, 40, mask=mask, block_size=8, sign=sign, dtype=torch.float64)
    dense = bs.nn.MaskedLinear(sparse)
    for layer in (sparse, dense):
        layer.record_activity = True
        layer.post_rate.fill_(0.3)
    x = torch.randn(12, 56, dtype=torch.float64)
    w0 = sparse.matrix.to_dense(sparse.values.detach()).clone()
    post = sparse(x)
    assert torch.allclose(dense(x), post)  # same function before the step
    kw = dict(eta=0.05, oja=1.0, target_rate=0.5, homeo_rate=0.2)
    rate = 0.9 * 0.3 + 0.1 * post.abs().mean(0)  # the EMA both layers apply first
    sparse.plasticity_step(**kw)
    dense.plasticity_step(**kw)
    got_sparse = sparse.matrix.to_dense(sparse.values.detach())
    got_dense = dense.weight.detach() * dense.mask
    # the rule grows magnitudes from the raw presynaptic activity; the sign only enters through post
    ref = dense_plasticity(w0, mask.double(), x, post.detach(), 0.05, 1.0, rate.detach(), 0.5, 0.2)
    if sign is not None:
        ref = ref.clamp_min(0)
    assert rel_err(got_sparse, ref) < 1e-10
    assert rel_err(got_dense, got_sparse) < 1e-10
    assert torch.allclose(sparse.post_rate, dense.post_rate)


def _oracle_step(layer, x, g, lr, kw):
    """What one training step with plasticity must do, in float64 on dense tensors: forward with
    the layer's noise, the gradient step, Dale projection, the rate EMA, then the rule."""
    m = layer.matrix
    sign = layer.sign
    w_eff = dense_oracle_weight(m, layer.values, sign, layer.noise_sigma, layer.noise_seed, layer.noise_mode)
    post = x.double() @ w_eff.T + layer.bias.detach().double()
    w_grad = g.double().T @ x.double()  # d loss / d W_eff
    factor = 1.0
    if layer.noise_mode == "multiplicative":
        factor = 1 + layer.noise_sigma * synapse_noise(layer.noise_seed, m.nnzb, m.block_size).double()
    dvalues = m.gather_blocks(w_grad * sign.double()) * factor
    w_new = m.to_dense(layer.values.detach().double() - lr * dvalues).clamp_min(0)
    rate = 0.9 * layer.post_rate.double() + 0.1 * post.abs().mean(0)
    mask = m.to_dense_mask()
    ref = dense_plasticity(
        w_new, mask, x.double(), post, kw["eta"], kw["oja"], rate, kw["target_rate"], kw["homeo_rate"]
    )
    return post, dvalues, rate, ref.clamp_min(0)


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_fused_training_step_matches_reference(cpu_method, monkeypatch, mode):
    """SparseConnectomeLinear with Dale signs, noise and plasticity: the forward records the activity
    statistics, the backward's weight-gradient pass writes the Hebbian correlation, and the step
    after the optimiser applies the rule without another pass over the activities."""
    torch.manual_seed(2)
    mask = make_mask(70, 45, 16, 0.6, 0.6, seed=3, empty_rows=slice(0, 16), empty_cols=slice(3, 7))
    sign = torch.where(torch.rand(45) < 0.75, 1.0, -1.5).double()
    layer = bs.SparseConnectomeLinear(
        45, 70, mask=mask, block_size=16, sign=sign, noise_sigma=0.3, noise_mode=mode, dtype=torch.float64
    ).train()
    layer.record_activity = True
    layer.post_rate.uniform_(0.1, 0.5)
    x, g = torch.randn(11, 45, dtype=torch.float64), torch.randn(11, 70, dtype=torch.float64)
    kw = dict(eta=0.05, oja=1.0, target_rate=0.3, homeo_rate=0.2)
    post_ref, dvalues_ref, rate_ref, w_ref = _oracle_step(layer, x, g, 0.1, kw)

    weight_gradient_pass = bs.ops.bsr_linear_dw_corr

    def no_second_pass(dy, *args, **kwargs):
        assert dy is not None, "the fused step must not recompute the correlation from the activities"
        return weight_gradient_pass(dy, *args, **kwargs)

    monkeypatch.setattr(bs.ops, "bsr_linear_dw_corr", no_second_pass)
    y = layer(x)
    layer._record.corr.fill_(float("nan"))  # poisoned: the backward must write every entry
    (y * g).sum().backward()
    assert rel_err(y, post_ref) < 1e-10
    assert rel_err(layer._record.moments, torch.stack((post_ref.abs().mean(0), post_ref.square().mean(0)))) < 1e-10
    assert rel_err(layer.values.grad, dvalues_ref) < 1e-10
    with torch.no_grad():
        layer.values -= 0.1 * layer.values.grad
    layer.constrain_()
    layer.plasticity_step(**kw)
    assert rel_err(layer.post_rate, rate_ref) < 1e-10
    assert rel_err(layer.matrix.to_dense(layer.values.detach()), w_ref) < 1e-10
    assert not (layer.values * ~layer.matrix.element_mask()).any(), "plasticity created synapses off the mask"
    with pytest.raises(RuntimeError, match="record_activity"):
        layer.plasticity_step(**kw)  # a record is used once


def test_hebbian_only_under_no_grad_and_without_backward():
    """Plasticity without a backward pass: under torch.no_grad(), and after a forward with
    gradients whose backward never ran, the step learns from the recorded activities."""
    torch.manual_seed(5)
    mask = make_mask(32, 48, 16, 0.7, 0.8, seed=1)
    kw = dict(eta=0.1, oja=1.0, target_rate=0.3, homeo_rate=0.1)
    x = torch.randn(6, 48, dtype=torch.float64)
    outs = []
    for grad in (False, True):
        torch.manual_seed(0)
        layer = bs.SparseConnectomeLinear(48, 32, mask=mask, block_size=16, dtype=torch.float64).train()
        layer.record_activity = True
        w0 = layer.matrix.to_dense(layer.values.detach()).clone()
        with torch.set_grad_enabled(grad):
            post = layer(x).detach()
        layer.plasticity_step(**kw)
        rate = 0.1 * post.abs().mean(0)
        ref = dense_plasticity(w0, mask.double(), x, post, 0.1, 1.0, rate, 0.3, 0.1)
        assert rel_err(layer.matrix.to_dense(layer.values.detach()), ref) < 1e-10
        outs.append(layer.values.detach())
    assert torch.equal(outs[0], outs[1])


def test_recorded_plasticity_needs_its_backward():
    m = BlockSparseMatrix.from_dense(torch.ones(16, 16, dtype=torch.bool), 16)
    values = m.values.clone().requires_grad_()
    record = bs.functional.ActivityRecord(m, values.device)
    bs.bsr_linear(torch.randn(3, 16), m, values=values, record=record)
    with pytest.raises(RuntimeError, match="backward"):
        bs.functional.apply_recorded_plasticity(m, record, eta=0.1, values=values)
    with pytest.raises(ValueError, match="grad enabled"), torch.no_grad():
        bs.bsr_linear(torch.randn(3, 16), m, values=values, record=record)
    with pytest.raises(TypeError, match="ActivityRecord"):
        bs.bsr_linear(torch.randn(3, 16), m, values=values, record=object())
