"""The plasticity probe: its Hebbian and homeostatic columns measure those terms, one at a time."""

from __future__ import annotations

import pytest
import torch

from bionic_sparse.models import BioNIC, BioNICConfig
from bionic_sparse.training.trainer import PlasticityProbe

SMALL = dict(units_per_neuron=2, block_size=8, front_channels=(4, 8), front_pool=2, noise_sigma=0.0, dropout=0.0)


def _probed_step(seed: int, **kw) -> dict[str, float]:
    """One training step of a small BioNIC with the probe around the optimiser and plasticity."""
    torch.manual_seed(seed)
    model = BioNIC(BioNICConfig(**{**SMALL, **kw})).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.rand(16, 1, 48, 48), torch.randint(0, 7, (16,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    probe = PlasticityProbe(model)
    opt.step()
    probe.after_optimizer()
    model.after_optimizer_step()
    return probe.after_plasticity()


def _columns(ratios: dict[str, float], name: str) -> list[float]:
    return [ratios[f"{name}_over_opt_l{i}"] for i in (1, 2, 3)]


@pytest.mark.parametrize("execution", ["sparse", "dense_masked"])
def test_the_probe_tells_the_hebbian_and_the_homeostatic_term_apart(execution):
    both = _probed_step(0, execution=execution, hebbian_eta=1e-2, homeostasis_rate=0.05)
    hebbian_only = _probed_step(0, execution=execution, hebbian_eta=1e-2, homeostasis_rate=0.0)
    homeo_only = _probed_step(0, execution=execution, hebbian_eta=0.0, homeostasis_rate=0.05)
    assert all(r > 1e-3 for r in _columns(both, "hebbian") + _columns(both, "homeostatic")), both
    # a term that is off measures zero (division by the scale rounds: float32 epsilon of the weights)
    assert _columns(hebbian_only, "homeostatic") == [0.0, 0.0, 0.0]
    assert all(r < 1e-4 for r in _columns(homeo_only, "hebbian")), homeo_only
    # a term alone is the whole of what plasticity did, and measures what it measures with the other on
    for alone, name in ((hebbian_only, "hebbian"), (homeo_only, "homeostatic")):
        torch.testing.assert_close(_columns(alone, name), _columns(alone, "plastic"), rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(_columns(alone, name), _columns(both, name), rtol=0.1, atol=1e-6)


def test_the_baseline_has_no_probe_columns():
    torch.manual_seed(0)
    from bionic_sparse.models import ConventionalBaseline

    probe = PlasticityProbe(ConventionalBaseline(BioNICConfig(**SMALL)))
    probe.after_optimizer()
    assert probe.after_plasticity() == {}
