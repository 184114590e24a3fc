"""SparseConnectomeLinear as a drop-in nn.Linear."""

from __future__ import annotations

import io

import pytest
import scipy.sparse as sp
import torch
from torch import nn

from bionic_sparse import BlockSparseMatrix, SparseConnectomeLinear

from .conftest import make_mask, rel_err


def test_dense_default_matches_linear_api():
    layer = SparseConnectomeLinear(50, 30, block_size=16)
    assert layer.in_features == 50 and layer.out_features == 30
    x = torch.randn(4, 50)
    assert rel_err(layer(x), x @ layer.dense_weight().T + layer.bias) < 1e-5
    assert "in_features=50, out_features=30" in repr(layer)
    assert SparseConnectomeLinear(50, 30, bias=False).bias is None


@pytest.mark.parametrize("kind", ["bool", "float", "scipy", "bsm"])
def test_mask_kinds(kind):
    mask = make_mask(40, 56, 8, 0.5, 0.5, seed=2)
    arg = {
        "bool": mask,
        "float": mask.float(),
        "scipy": sp.csr_matrix(mask.numpy()),
        "bsm": BlockSparseMatrix.from_dense(mask, 8),
    }[kind]
    layer = SparseConnectomeLinear(56, 40, mask=arg, block_size=8)
    assert torch.equal(layer.dense_weight() != 0, mask)  # init fills every synapse, nothing else


def test_init_scaled_by_present_fan_in():
    torch.manual_seed(0)
    mask = torch.zeros(64, 256, dtype=torch.bool)
    mask[:32, :16] = True  # fan-in 16
    mask[32:, :] = True  # fan-in 256
    layer = SparseConnectomeLinear(256, 64, mask=mask, block_size=16)
    w = layer.dense_weight()
    assert w[:32].abs().max() <= 16**-0.5 + 1e-6 and w[:32].abs().max() > 0.8 * 16**-0.5
    assert w[32:].abs().max() <= 256**-0.5 + 1e-6


def test_sign_makes_weights_nonnegative_and_constrain():
    sign = torch.where(torch.arange(32) < 24, 1.0, -2.0)
    layer = SparseConnectomeLinear(32, 16, sign=sign, block_size=16)
    assert (layer.values >= 0).all()
    w = layer.dense_weight()
    assert (w[:, 24:] <= 0).all() and (w[:, :24] >= 0).all()
    with torch.no_grad():
        layer.values.sub_(1.0)
    layer.constrain_()
    assert (layer.values >= 0).all()


def test_state_dict_round_trip_and_conversions():
    mask = make_mask(40, 56, 8, 0.5, 0.5, seed=2)
    a = SparseConnectomeLinear(56, 40, mask=mask, block_size=8, sign=torch.ones(56))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = SparseConnectomeLinear(56, 40, mask=mask, block_size=8, sign=torch.ones(56))
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = torch.randn(3, 56)
    assert torch.equal(a(x), b(x))
    assert {
        "blocks",
        "bias",
        "crow",
        "col",
        "row",
        "ccol_t",
        "row_t",
        "perm_t",
        "synapse_mask",
        "sign",
        "post_rate",
    } <= set(a.state_dict())
    d = a.double()
    assert d.values.dtype == torch.float64 and d.col.dtype == torch.int32 and d.sign.dtype == torch.float64
    assert d(x.double()).dtype == torch.float64


def test_from_linear_keeps_masked_weights():
    lin = nn.Linear(56, 40)
    mask = make_mask(40, 56, 8, 0.5, 0.5, seed=3)
    layer = SparseConnectomeLinear.from_linear(lin, mask, block_size=8)
    assert torch.equal(layer.dense_weight(), lin.weight.detach() * mask)
    x = torch.randn(5, 56)
    assert rel_err(layer(x), x @ (lin.weight * mask).T + lin.bias) < 1e-5
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseConnectomeLinear.from_linear(layer, mask)


def test_noise_only_in_training():
    layer = SparseConnectomeLinear(32, 32, block_size=16, noise_sigma=0.5)
    x = torch.randn(4, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2), "a new noise seed every training step"


def test_noise_counters_are_restored_from_state_dict():
    layer = SparseConnectomeLinear(32, 32, block_size=16, noise_sigma=0.5)
    x = torch.randn(4, 32)
    layer.train()
    layer(x), layer(x)  # two training steps: two noise draws
    state = layer.state_dict()
    fresh = SparseConnectomeLinear(32, 32, block_size=16, noise_sigma=0.5)  # another random noise seed
    fresh.load_state_dict(state)
    assert (fresh.noise_seed, fresh.noise_step) == (layer.noise_seed, 2)
    assert torch.equal(fresh(x), layer(x)), "the restored layer continues the noise sequence"
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    again = SparseConnectomeLinear(32, 32, block_size=16, noise_sigma=0.5)
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.noise_step == 3


def test_plasticity_step_uses_recorded_activity():
    torch.manual_seed(0)
    layer = SparseConnectomeLinear(32, 16, block_size=16, sign=torch.ones(32))
    with pytest.raises(RuntimeError, match="record_activity"):
        layer.plasticity_step(eta=0.1)
    layer.record_activity = True
    layer.train()
    before = layer.values.detach().clone()
    layer(torch.rand(8, 32))
    layer.plasticity_step(eta=0.1, homeo_rate=0.1, target_rate=0.5)
    assert not torch.equal(before, layer.values)
    assert (layer.post_rate > 0).all()
    assert layer.last_pre is None


def test_trains_like_linear():
    torch.manual_seed(0)
    mask = make_mask(32, 64, 16, 0.5)
    layer = SparseConnectomeLinear(64, 32, mask=mask, block_size=16)
    target = torch.randn(64, 32) @ torch.randn(32, 32) * 0.1
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        x = torch.randn(32, 64)
        loss = ((layer(x) - x @ target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "mask must have shape"),
        (dict(mask=torch.ones(40, 56, dtype=torch.int32)), TypeError, "mask must be a bool or floating"),
        (dict(mask=torch.full((40, 56), float("inf"))), ValueError, "NaN or Inf"),
        (dict(sign=torch.ones(3)), ValueError, "sign must have shape"),
        (dict(noise_mode="x"), ValueError, "noise_mode"),
        (dict(block_size=0), ValueError, "block_size must be a positive int"),
        (dict(mask=BlockSparseMatrix.from_dense(torch.ones(40, 56), 16)), ValueError, "block_size 16"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SparseConnectomeLinear(56, 40, block_size=kwargs.pop("block_size", 8), **kwargs)


def test_wrong_input_width():
    layer = SparseConnectomeLinear(56, 40, block_size=8)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be 56"):
        layer(torch.randn(2, 55))


def test_activity_record_follows_device_and_dtype():
    layer = SparseConnectomeLinear(32, 16, block_size=16)
    assert layer._record is None
    layer.record_activity = True
    assert layer._record.corr.shape == (layer.nnzb, 16, 16) and layer._record.corr.dtype == torch.float32
    layer.double()
    assert layer._record.corr.dtype == torch.float64
    layer.record_activity = False
    assert layer._record is None
