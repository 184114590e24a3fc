"""The whole-volume model built small: storage, recurrence, plasticity at the last step, the neuron
order and its inverse, the wiring controls, the trainer (config, CLI, exact resume)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from bionic_sparse.connectome import synthetic_volume
from bionic_sparse.connectome.reorder import (
    ORDERS,
    block_fill_report,
    neuron_order,
    reorder,
    to_original,
    to_reordered,
)
from bionic_sparse.data.fer2013 import write_fer_csv
from bionic_sparse.models.volume import VolumeConfig, VolumeModel, random_edges, rewired_edges
from bionic_sparse.training import Run, TrainConfig, train
from bionic_sparse.training.cli import config_from_args

from .test_train_fer import _interrupt_at, _metrics

N = 900
TINY = dict(n_neurons=N, front_channels=(4, 8), front_pool=3, steps=3)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BIONIC_SPARSE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def volume():
    return synthetic_volume(seed=0, n_neurons=N, progress=False)


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fer") / "tiny.csv"
    write_fer_csv(str(path), n_per_class_split=3)
    return str(path)


# ---------------------------------------------------------------------------------------- orders


@pytest.mark.parametrize("method", ORDERS)
def test_reorder_is_a_relabelling_undone_exactly(volume, method):
    permuted, order = reorder(volume, method)
    assert sorted(order.tolist()) == list(range(volume.n_neurons))
    assert permuted.meta["order"] == method
    # the same edges, relabelled: old (pre, post) == order[new (pre, post)]
    old = set(zip(volume.pre.tolist(), volume.post.tolist(), volume.n_synapses.tolist(), strict=True))
    new = set(
        zip(order[permuted.pre].tolist(), order[permuted.post].tolist(), permuted.n_synapses.tolist(), strict=True)
    )
    assert old == new
    np.testing.assert_array_equal(permuted.layer, volume.layer[order])
    keys = permuted.pre.astype(np.int64) * permuted.n_neurons + permuted.post
    assert np.all(np.diff(keys) > 0)  # sorted by (pre, post), no duplicates
    v = np.random.default_rng(0).normal(size=(2, volume.n_neurons))
    np.testing.assert_array_equal(to_original(to_reordered(v, order), order), v)


def test_laminar_spatial_keeps_layers_contiguous(volume):
    order = neuron_order(volume, "laminar-spatial")
    layers = volume.layer[order]
    changes = int((layers[1:] != layers[:-1]).sum())
    assert changes == len(set(volume.layer.tolist())) - 1
    with pytest.raises(ValueError, match="method must be one of"):
        neuron_order(volume, "hilbert")


def test_metis_parts_gather_synapses_and_say_when_pymetis_is_missing(volume, monkeypatch):
    pytest.importorskip("pymetis")
    import dataclasses

    # 15 disjoint cliques of 60 scattered neurons: the parts (60 neurons each, 900 / 64 -> 15) are
    # the cliques, so each clique must come out as one contiguous run of indices
    group = np.random.default_rng(0).permutation(N) // 60
    pre, post = np.nonzero((group[:, None] == group[None, :]) & ~np.eye(N, dtype=bool))
    ones = np.ones(pre.size, dtype=volume.n_synapses.dtype)
    cliques = dataclasses.replace(
        volume, pre=pre.astype(np.int32), post=post.astype(np.int32), n_synapses=ones, size=volume.size[:0]
    )
    order = neuron_order(cliques, "metis")
    assert sorted(order.tolist()) == list(range(N))
    runs = group[order]
    assert int((runs[1:] != runs[:-1]).sum()) == 14  # one run per clique
    report = block_fill_report(cliques, block_sizes=(60,), orders=("identity", "metis"))
    assert report["orders"]["metis"]["b60"]["fill"] > 3 * report["orders"]["identity"]["b60"]["fill"]
    monkeypatch.setitem(sys.modules, "pymetis", None)  # as if not installed
    with pytest.raises(ImportError, match=r"bionic-sparse\[metis\]"):
        neuron_order(volume, "metis")
    report = block_fill_report(volume, block_sizes=(16,), orders=("identity", "metis"))
    assert "pymetis" in report["orders"]["metis"]["unavailable"] and "b16" in report["orders"]["identity"]


def test_block_fill_report_counts_blocks(volume):
    report = block_fill_report(volume, block_sizes=(16,), orders=("identity", "laminar-spatial"))
    b = 16
    blocks = {(int(p) // b, int(q) // b) for p, q in zip(volume.post, volume.pre, strict=True)}
    entry = report["orders"]["identity"]["b16"]
    assert entry["blocks"] == len(blocks)
    assert entry["fill"] == pytest.approx(volume.pre.size / (len(blocks) * b * b))
    assert report["orders"]["laminar-spatial"]["b16"]["blocks"] > 0


# -------------------------------------------------------------------------------------- controls


def test_random_edges_are_distinct_and_never_autapses():
    pre, post = random_edges(200, 5000, seed=1)
    assert pre.size == 5000 and np.all(pre != post)
    keys = pre.astype(np.int64) * 200 + post
    assert np.unique(keys).size == 5000 and np.all(np.diff(keys) > 0)
    with pytest.raises(ValueError, match="n_edges"):
        random_edges(10, 91, seed=0)  # 10 x 9 = 90 ordered pairs at most


def test_rewiring_preserves_every_degree(volume):
    n = volume.n_neurons
    pre, post, dropped = rewired_edges(volume.pre, volume.post, n, seed=2)
    assert dropped <= volume.pre.size // 1000  # collisions that could not be resolved
    assert np.all(pre != post)
    keys = pre.astype(np.int64) * n + post
    assert np.unique(keys).size == keys.size
    if dropped == 0:
        np.testing.assert_array_equal(np.bincount(pre, minlength=n), np.bincount(volume.pre, minlength=n))
        np.testing.assert_array_equal(np.bincount(post, minlength=n), np.bincount(volume.post, minlength=n))
    same = np.isin(keys, volume.pre.astype(np.int64) * n + volume.post).mean()
    assert same < 0.2  # rewired: most edges now join other pairs


# ----------------------------------------------------------------------------------------- model


def test_model_stores_synapses_alone_and_trains():
    torch.manual_seed(0)
    model = VolumeModel(VolumeConfig(**TINY))
    report = model.volume.storage()
    assert report["method"] == "element" and report["stored_values"] == report["synapses"] == model.n_synapses
    assert report["bytes"] <= 1.5 * report["csr_bytes"]
    x = torch.randn(5, 1, 48, 48)
    model.train()
    logits = model(x)
    assert logits.shape == (5, 7) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    for name in ("volume.blocks", "input_weight", "readout.weight", "front.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.volume.has_recorded_step
    before = model.volume.values.detach().clone()
    model.after_optimizer_step()
    assert not torch.equal(before, model.volume.values)  # Hebbian + homeostasis moved the synapses
    assert (model.volume.values >= 0).all()  # Dale's law: magnitudes, the sign is per presynaptic cell
    model.eval()
    state = model(x, return_state=True)
    assert state.shape == (5, model.n_neurons)
    back = model.to_original(state)
    np.testing.assert_array_equal(back.numpy()[:, model.order.numpy()], state.detach().numpy())


def test_plasticity_learns_from_the_last_step_only():
    """The record the plasticity step uses is that of the last recurrent step: the same as a
    one-step-recorded forward of the state entering it."""
    torch.manual_seed(1)
    model = VolumeModel(VolumeConfig(**{**TINY, "noise_sigma": 0.0, "dropout": 0.0}))
    model.train()
    x = torch.randn(4, 1, 48, 48)
    seen = []
    hook = model.volume.register_forward_hook(lambda mod, inp, out: seen.append(mod.record_activity))
    model(x).sum().backward()
    hook.remove()
    assert seen == [False, True]  # steps - 1 applications of the matrix, the last one recorded
    assert model.volume.record_activity  # restored after the step


@pytest.mark.parametrize("masks", ["random", "rewired"])
def test_wiring_controls_keep_the_synapse_count(masks):
    model = VolumeModel(VolumeConfig(**TINY))
    control = VolumeModel(VolumeConfig(**{**TINY, "masks": masks}))
    assert control.n_synapses == model.n_synapses - control.rewiring_dropped
    assert control.volume.storage()["method"] == "element"


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("masks", "dense", "masks must be one of"),
        ("order", "hilbert", "order must be one of"),
        ("steps", 0, "steps must be >= 1"),
        ("readout_layers", ("L9",), "is not one of"),
        ("dropout", 1.0, "dropout must lie in"),
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        VolumeConfig(**{**TINY, field: value})


# --------------------------------------------------------------------------------------- trainer


def test_train_config_takes_the_volume_model():
    cfg = TrainConfig.from_dict({"model": "volume", "model_config": {"n_neurons": 1000, "steps": 2}})
    assert isinstance(cfg.model_config, VolumeConfig) and cfg.model_config.steps == 2
    assert isinstance(TrainConfig(model="volume").model_config, VolumeConfig)
    with pytest.raises(ValueError, match="units_per_neuron"):
        TrainConfig.from_dict({"model": "volume", "model_config": {"units_per_neuron": 4}})
    cli = config_from_args(["--volume", "--epochs", "1"])
    assert cli.model == "volume" and cli.out.endswith("volume-seed0")


def test_trainer_runs_and_resumes_the_volume_model_exactly(tiny_csv, tmp_path, monkeypatch):
    run = dict(model="volume", data=tiny_csv, epochs=3, batch_size=8, device="cpu", model_config=TINY)
    straight = train(TrainConfig.from_dict({**run, "out": str(tmp_path / "a")}))
    real = _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict({**run, "out": str(tmp_path / "b")}))
    monkeypatch.setattr(Run, "train_epoch", real)
    resumed = train(TrainConfig.from_dict({**run, "out": str(tmp_path / "b"), "resume": True}))
    assert _metrics(tmp_path / "a" / "metrics.csv") == _metrics(tmp_path / "b" / "metrics.csv")
    assert resumed["private_test"] == straight["private_test"]
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["parameters"]["connectome_synapses"] == saved["parameters"]["connectome_stored"] > 0
    assert saved["config"]["model"] == "volume"


def test_the_volume_model_resumes_exactly_from_inside_an_epoch(tiny_csv, tmp_path, monkeypatch):
    """The whole volume's epochs last hours: checkpoint_minutes writes last.pt between steps, and a
    run killed in the middle of an epoch resumes bit for bit (noise counters, plasticity, AdamW)."""
    run = dict(model="volume", data=tiny_csv, epochs=2, batch_size=8, device="cpu", model_config=TINY)
    straight = train(TrainConfig.from_dict({**run, "out": str(tmp_path / "a")}))
    real = Run.save_last
    calls = []

    def save_last(self, epoch, in_epoch=None):
        if in_epoch is not None:
            calls.append(in_epoch["step"])
            if len(calls) == 2:  # 3 steps per epoch: epoch 1 after step 2 dies while writing
                raise KeyboardInterrupt
        real(self, epoch, in_epoch)

    monkeypatch.setattr(Run, "save_last", save_last)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_dict({**run, "out": str(tmp_path / "b"), "checkpoint_minutes": 1e-9}))
    monkeypatch.undo()
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert calls == [1, 2] and last["epoch"] == -1 and last["in_epoch"]["step"] == 1 and last["history"] == []
    resumed = train(TrainConfig.from_dict({**run, "out": str(tmp_path / "b"), "resume": True}))
    assert _metrics(tmp_path / "a" / "metrics.csv") == _metrics(tmp_path / "b" / "metrics.csv")
    assert resumed["private_test"] == straight["private_test"]


def test_fill_cli_reports_every_order(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "fill.json"
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "connectome.py"), "fill", "--neurons", str(N), "--block-sizes", "16",
         "--cache", str(tmp_path / "cache"), "--json", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["orders"]) == set(ORDERS) and "laminar-spatial" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(root / "scripts" / "connectome.py"), "fill", "--connectome", str(tmp_path / "none")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
