"""BioNIC model switches, sparse vs dense-masked execution, plasticity, the baseline."""

from __future__ import annotations

import pytest
import torch

from bionic_sparse import SparseConnectomeLinear
from bionic_sparse.models import BioNIC, BioNICConfig, ConventionalBaseline
from bionic_sparse.nn import MaskedLinear

SMALL = dict(units_per_neuron=2, block_size=8, front_channels=(4, 8), front_pool=2)


def small(**kw) -> BioNICConfig:
    return BioNICConfig(**{**SMALL, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"masks": "dense"},
        {"masks": "none"},
        {"masks": "random"},
        {"masks": "shuffled_laminae"},
        {"signed": False},
        {"g_inh": 0.0},
        {"hebbian_eta": 0.0},
        {"homeostasis_rate": 0.0},
        {"layernorm": False},
        {"noise_sigma": 0.0},
        {"conv_front_end": False},
        {"execution": "dense_masked"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "full",
)
def test_every_switch_builds_and_trains_a_step(kw):
    torch.manual_seed(0)
    model = BioNIC(small(**kw))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(4, 1, 48, 48)
    out = model(x)
    assert out.shape == (4, 7)
    out.logsumexp(-1).mean().backward()
    opt.step()
    model.after_optimizer_step()
    for layer in model.connectome_layers():
        w = layer.values if isinstance(layer, SparseConnectomeLinear) else layer.weight
        if layer.sign is not None:
            assert (w >= 0).all(), "Dale: magnitudes stay non-negative"
    if kw.get("masks") == "dense":  # all-to-all, but still signed, noisy and plastic
        layers = model.connectome_layers()
        assert layers and all(bool(layer.matrix.to_dense_mask().all()) for layer in layers)
        assert all(layer.sign is not None and layer.noise_sigma > 0 for layer in layers)
    if kw.get("masks") == "none":
        assert not model.connectome_layers()
        assert all(isinstance(m, torch.nn.Linear) for m in model.laminar)


def test_sparse_and_dense_masked_execution_agree():
    torch.manual_seed(0)
    sparse = BioNIC(small()).eval()
    torch.manual_seed(0)
    dense = BioNIC(small(execution="dense_masked")).eval()
    assert isinstance(dense.laminar[0], MaskedLinear)
    x = torch.randn(5, 1, 48, 48)
    assert torch.allclose(sparse(x), dense(x), atol=1e-5)


def test_plasticity_uses_recorded_activity_and_changes_weights():
    torch.manual_seed(0)
    model = BioNIC(small(hebbian_eta=1e-2, homeostasis_rate=0.05)).train()
    layer = model.connectome_layers()[0]
    assert layer.record_activity
    before = layer.values.detach().clone()
    model(torch.randn(4, 1, 48, 48))
    model.after_optimizer_step()
    assert not torch.equal(before, layer.values)
    assert not (layer.values * ~layer.matrix.element_mask()).any()


def test_plasticity_scale_multiplies_both_rates():
    """``after_optimizer_step(scale)`` (the trainer's plasticity_schedule="lr"): 0 leaves the Dale
    projection only, 1 the configured rates."""
    import copy

    torch.manual_seed(0)
    model = BioNIC(small(hebbian_eta=1e-2, homeostasis_rate=0.05)).train()
    stopped, full = model, copy.deepcopy(model)
    x = torch.randn(4, 1, 48, 48)
    for m, scale in ((stopped, 0.0), (full, 1.0)):
        before = [layer.values.detach().clone() for layer in m.connectome_layers()]
        m(x)
        m.after_optimizer_step(scale)
        changed = [not torch.equal(b, layer.values) for b, layer in zip(before, m.connectome_layers(), strict=True)]
        assert any(changed) == (scale > 0)


def test_baseline_has_same_widths_and_no_biology():
    cfg = small()
    bionic, base = BioNIC(cfg), ConventionalBaseline(cfg)
    assert bionic.widths == base.widths
    assert not base.connectome_layers() and not base.plastic
    assert base.cfg.noise_sigma == 0 and not base.cfg.signed


def test_config_errors():
    with pytest.raises(ValueError, match="masks must be one of"):
        BioNICConfig(masks="nope")
    with pytest.raises(ValueError, match="unknown model config keys"):
        BioNICConfig.from_dict({"widht": 3})
