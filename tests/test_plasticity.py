"""Hebbian (Oja) + homeostatic plasticity against a dense float64 reference."""

from __future__ import annotations

import pytest
import torch

import bionic_sparse as bs
from bionic_sparse import BlockSparseMatrix
from bionic_sparse.plasticity import dense_plasticity as reference

from .conftest import make_mask, rel_err


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
