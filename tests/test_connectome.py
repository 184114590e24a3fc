"""Connectome: Column format, synthetic column statistics, MICrONs loader on a recorded fake
client, laminar masks, controls, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from bionic_sparse import BlockSparseMatrix, SparseConnectomeLinear
from bionic_sparse.connectome import (
    Column,
    MicronsError,
    fetch_column,
    laminar_masks,
    synthetic_column,
)
from bionic_sparse.connectome.masks import rewire_degree_preserving
from bionic_sparse.connectome.synthetic import connection_probability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def column() -> Column:
    return synthetic_column(seed=0)


def test_synthetic_is_deterministic_and_seeded(column):
    again = synthetic_column(seed=0)
    for name in ("neuron_id", "cell_type", "excitatory", "layer", "position", "pre", "post", "n_synapses", "size"):
        assert np.array_equal(getattr(column, name), getattr(again, name)), name
    other = synthetic_column(seed=1)
    assert other.pre.size != column.pre.size or not np.array_equal(other.pre, column.pre)


def test_synthetic_counts_and_probabilities_match_targets(column):
    s = column.summary()
    assert sum(c["E"] for c in s.neurons.values()) == 1183
    assert sum(c["I"] for c in s.neurons.values()) == 164
    adj = column.adjacency("binary")
    for pre_l, post_l in [("L4", "L23"), ("L23", "L23"), ("L23", "L5"), ("L5", "L6"), ("L4", "L4")]:
        pre = column.indices(pre_l, excitatory=True)
        post = column.indices(post_l, excitatory=True)
        n_pairs = pre.size * post.size - (pre.size if pre_l == post_l else 0)
        got = adj[post][:, pre].sum() / n_pairs
        target = connection_probability(pre_l, True, post_l, True)
        sd = np.sqrt(target * (1 - target) / n_pairs)
        # distance dependence adds pair-to-pair variance: allow 5 binomial sd plus 15 %
        assert abs(got - target) < 5 * sd + 0.15 * target, (pre_l, post_l, got, target)
    assert (column.n_synapses >= 1).all() and column.n_synapses.max() > 3  # lognormal tail
    assert not np.any(column.pre == column.post)


def test_save_load_round_trip(column, tmp_path):
    column.save(tmp_path / "col")
    loaded = Column.load(tmp_path / "col")
    for name in ("neuron_id", "cell_type", "excitatory", "layer", "pre", "post", "n_synapses"):
        assert np.array_equal(getattr(column, name), getattr(loaded, name)), name
    assert np.allclose(column.position, loaded.position, atol=1e-3)
    assert np.allclose(column.size, loaded.size)
    assert loaded.meta["source"] == "synthetic" and loaded.meta["seed"] == 0
    with pytest.raises(FileNotFoundError, match="not a saved Column"):
        Column.load(tmp_path)


def test_column_validation():
    base = dict(
        neuron_id=[1, 2],
        cell_type=["23P", "BC"],
        excitatory=[True, False],
        layer=["L23", "L23"],
        position=np.zeros((2, 3)),
        pre=[0],
        post=[1],
        n_synapses=[2],
        size=[1.0],
    )
    Column(**base)
    with pytest.raises(ValueError, match="autapses"):
        Column(**dict(base, post=[0]))
    with pytest.raises(ValueError, match="unknown layer"):
        Column(**dict(base, layer=["L23", "L7"]))
    with pytest.raises(ValueError, match="neuron row indices"):
        Column(**dict(base, post=[5]))
    with pytest.raises(ValueError, match="duplicate"):
        Column(**dict(base, pre=[0, 0], post=[1, 1], n_synapses=[1, 1], size=[1.0, 1.0]))


def test_masks_shapes_densities_and_signs(column):
    st = laminar_masks(column, units_per_neuron=4, block_size=4, g_inh=2.0)
    assert [(lm.pre, lm.post) for lm in st.layers] == [("L4", "L23"), ("L23", "L5"), ("L5", "L6")]
    adj = column.adjacency("binary")
    for lm in st.layers:
        pre_idx, post_idx = st.neuron_index[lm.pre], st.neuron_index[lm.post]
        assert lm.mask.shape == (post_idx.size * 4, pre_idx.size * 4)
        neuron_level = adj[post_idx][:, pre_idx].toarray().astype(bool)
        assert int(lm.mask.sum()) == 16 * int(neuron_level.sum())
        inh = ~column.excitatory[pre_idx]
        sign = lm.sign.view(-1, 4)[:, 0].numpy()
        assert (sign[~inh] == 1).all() and (sign[inh] <= 0).all()
        assert (lm.sign.view(-1, 4) == lm.sign.view(-1, 4)[:, :1]).all()
    all_inh = np.concatenate(
        [lm.sign.view(-1, 4)[:, 0].numpy()[~column.excitatory[st.neuron_index[lm.pre]]] for lm in st.layers]
    )
    assert all_inh.mean() < 0


def test_expansion_is_a_kronecker_product(column):
    u = 3
    st1 = laminar_masks(column, units_per_neuron=1, block_size=8, order="identity")
    stu = laminar_masks(column, units_per_neuron=u, block_size=8, order="identity")
    for a, b in zip(st1.layers, stu.layers, strict=True):
        assert torch.equal(b.mask, torch.kron(a.mask.int(), torch.ones(u, u, dtype=torch.int32)).bool())


def test_reordering_is_a_permutation_and_never_lowers_fill(column):
    ident = laminar_masks(column, units_per_neuron=1, block_size=16, order="identity")
    auto = laminar_masks(column, units_per_neuron=1, block_size=16, order="auto")
    for lay in ident.neuron_index:
        assert sorted(auto.neuron_index[lay].tolist()) == sorted(ident.neuron_index[lay].tolist())
    adj = column.adjacency("binary")
    total_blocks = {}
    for name, st in (("identity", ident), ("auto", auto)):
        total_blocks[name] = 0
        for lm in st.layers:
            # same graph: the mask is the adjacency restricted to the chosen order
            ref = adj[st.neuron_index[lm.post]][:, st.neuron_index[lm.pre]].toarray().astype(bool)
            assert np.array_equal(lm.mask.numpy(), ref)
            total_blocks[name] += BlockSparseMatrix.from_dense(lm.mask, 16).nnzb
    assert total_blocks["auto"] <= total_blocks["identity"]


def test_random_control_keeps_per_block_density(column):
    real = laminar_masks(column, units_per_neuron=8, block_size=8)
    rand = laminar_masks(column, units_per_neuron=8, block_size=8, control="random", seed=3)
    for a, b in zip(real.layers, rand.layers, strict=True):
        fa = BlockSparseMatrix.from_dense(a.mask, 8).block_fill()
        fb = BlockSparseMatrix.from_dense(b.mask, 8).block_fill()
        assert fa.nnzb == fb.nnzb and fa.n_synapses == fb.n_synapses
        assert not torch.equal(a.mask, b.mask)


def test_rewired_control_keeps_every_neurons_degrees(column):
    real = laminar_masks(column, units_per_neuron=1, block_size=8)
    rew = laminar_masks(column, units_per_neuron=1, block_size=8, control="rewired", seed=2)
    for a, b in zip(real.layers, rew.layers, strict=True):
        ma, mb = a.mask.numpy(), b.mask.numpy()
        assert np.array_equal(ma.sum(1), mb.sum(1)), "in-degree of every postsynaptic neuron"
        assert np.array_equal(ma.sum(0), mb.sum(0)), "out-degree of every presynaptic neuron"
        assert (ma & mb).sum() < 0.5 * ma.sum(), "partners are shuffled"
        assert torch.equal(a.sign, b.sign)
    again = laminar_masks(column, units_per_neuron=1, block_size=8, control="rewired", seed=2)
    assert all(torch.equal(x.mask, y.mask) for x, y in zip(rew.layers, again.layers, strict=True))
    # population expansion happens after the rewiring: every neuron-level edge is one u x u block
    expanded = laminar_masks(column, units_per_neuron=4, block_size=4, control="rewired", seed=2)
    for lm in expanded.layers:
        assert BlockSparseMatrix.from_dense(lm.mask, 4).block_fill().mean_fill == 1.0


def test_rewiring_small_cases():
    rng = np.random.default_rng(0)
    m = rng.random((30, 20)) < 0.3
    r = rewire_degree_preserving(m, rng)
    assert r.dtype == bool and np.array_equal(m.sum(0), r.sum(0)) and np.array_equal(m.sum(1), r.sum(1))
    assert not np.array_equal(m, r)
    assert np.array_equal(rewire_degree_preserving(m[:1], rng), m[:1])  # one row: nothing to trade
    full = np.ones((5, 5), dtype=bool)
    assert np.array_equal(rewire_degree_preserving(full, rng), full)


def test_shuffled_laminae_control(column):
    real = laminar_masks(column, units_per_neuron=1, block_size=8)
    shuf = laminar_masks(column, units_per_neuron=1, block_size=8, control="shuffled_laminae", seed=1)
    for lay in real.sizes:
        assert real.sizes[lay] == shuf.sizes[lay]
        assert set(real.neuron_index[lay]) != set(shuf.neuron_index[lay])


def test_masks_plug_into_the_layer(column):
    st = laminar_masks(column, units_per_neuron=2, block_size=16)
    lm = st.layers[0]
    layer = SparseConnectomeLinear(lm.shape[1], lm.shape[0], mask=lm.mask, sign=lm.sign, block_size=16)
    y = layer(torch.randn(3, lm.shape[1]))
    assert y.shape == (3, lm.shape[0])
    assert torch.equal(layer.dense_weight() != 0, lm.mask & (lm.sign != 0)[None, :])


def test_mask_errors(column):
    with pytest.raises(ValueError, match="control"):
        laminar_masks(column, control="bogus")
    with pytest.raises(ValueError, match="pathway"):
        laminar_masks(column, pathway=("L4", "L9"))
    with pytest.raises(ValueError, match="no neurons"):
        laminar_masks(synthetic_column(scale=0.01), pathway=("L1", "L23", "L4"))


class _FakeMaterialize:
    """A recorded stand-in for ``CAVEclient(...).materialize`` (answers from a synthetic column)."""

    def __init__(self, col: Column, versions=(1300,), tables=None, fail=None):
        import pandas as pd

        self.pd = pd
        self.col = col
        self.versions = list(versions)
        self.tables = tables or [
            "allen_v1_column_types_slanted_ref",
            "synapses_pni_2",
            "proofreading_status_and_strategy",
        ]
        self.fail = fail
        self.version = None
        self.synapse_calls = 0
        self.root = 864691135000000000 + np.arange(col.n_neurons)

    def get_versions(self):
        if self.fail == "network":
            raise ConnectionError("Failed to establish a new connection: [Errno -3] name resolution")
        return self.versions

    def get_tables(self):
        return self.tables

    def query_table(self, table, desired_resolution=None, **kw):
        assert desired_resolution in (None, [1000, 1000, 1000])
        if table == "allen_v1_column_types_slanted_ref":
            c = self.col
            pos = c.position + np.array([0.0, 350.0, 0.0])  # dataset coordinates, pia at y = 350 µm
            return self.pd.DataFrame(
                {
                    "id": c.neuron_id + 1000,
                    "pt_root_id": self.root,
                    "classification_system": np.where(c.excitatory, "aibs_coarse_excitatory", "aibs_coarse_inhibitory"),
                    "cell_type": c.cell_type,
                    "pt_position": list(pos),
                }
            )
        if table == "proofreading_status_and_strategy":
            keep = self.col.excitatory  # pretend excitatory axons are proofread, inhibitory ones not
            return self.pd.DataFrame({"pt_root_id": self.root, "status_axon": np.where(keep, "t", "f")})
        raise KeyError(table)

    def synapse_query(self, pre_ids, post_ids, desired_resolution=None, **kw):
        self.synapse_calls += 1
        c = self.col
        pre_rows = np.searchsorted(self.root, pre_ids)
        sel = np.isin(c.pre, pre_rows)
        reps = c.n_synapses[sel]
        pre = np.repeat(self.root[c.pre[sel]], reps)
        post = np.repeat(self.root[c.post[sel]], reps)
        size = np.repeat(c.size[sel] / reps, reps)
        # an autapse the loader must drop
        pre, post, size = np.append(pre, pre_ids[0]), np.append(post, pre_ids[0]), np.append(size, 1.0)
        return self.pd.DataFrame({"pre_pt_root_id": pre, "post_pt_root_id": post, "size": size})


class _FakeClient:
    def __init__(self, materialize):
        self.materialize = materialize


@pytest.fixture
def small_column():
    return synthetic_column(seed=2, scale=0.1)


def test_microns_loader_on_fake_client(small_column, tmp_path):
    pytest.importorskip("pandas")
    mat = _FakeMaterialize(small_column)
    col = fetch_column(tmp_path / "cache", client=_FakeClient(mat), batch_size=20)
    assert mat.version == 1300 and mat.synapse_calls == -(-small_column.n_neurons // 20)
    assert col.n_neurons == small_column.n_neurons
    assert np.array_equal(col.excitatory, small_column.excitatory)
    assert (col.layer[col.excitatory] == small_column.layer[small_column.excitatory]).all()
    # inhibitory neurons placed by depth: most land in their true layer
    inh = ~col.excitatory
    assert np.mean(col.layer[inh] == small_column.layer[inh]) > 0.7
    ref = {
        (int(a), int(b)): int(n)
        for a, b, n in zip(small_column.pre, small_column.post, small_column.n_synapses, strict=True)
    }
    got = {(int(a), int(b)): int(n) for a, b, n in zip(col.pre, col.post, col.n_synapses, strict=True)}
    assert got == ref, "synapse counts must be aggregated per pair, autapses dropped"
    assert np.allclose(np.sort(col.size), np.sort(small_column.size))
    # cached: a second call needs no client at all
    again = fetch_column(tmp_path / "cache")
    assert np.array_equal(again.pre, col.pre) and again.meta["materialization_version"] == 1300


def test_microns_proofread_axons_only(small_column, tmp_path):
    pytest.importorskip("pandas")
    col = fetch_column(None, client=_FakeClient(_FakeMaterialize(small_column)), proofread_axons_only=True)
    assert col.excitatory[col.pre].all() and col.pre.size > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(versions=(1181,)), "version 1300 is not available"),
        (dict(tables=["synapses_pni_2"]), "missing"),
        (dict(fail="network"), "network error"),
    ],
)
def test_microns_loader_errors(small_column, kwargs, match):
    pytest.importorskip("pandas")
    with pytest.raises(MicronsError, match=match):
        fetch_column(None, client=_FakeClient(_FakeMaterialize(small_column, **kwargs)))


def test_microns_auth_error_explains_token(small_column):
    pytest.importorskip("pandas")

    class Unauthorized(Exception):
        response = type("R", (), {"status_code": 401})()

    mat = _FakeMaterialize(small_column)
    mat.get_tables = lambda: (_ for _ in ()).throw(Unauthorized("401 Client Error"))
    with pytest.raises(MicronsError, match="auth token"):
        fetch_column(None, client=_FakeClient(mat))


MICRONS_DIR = os.environ.get("BIONIC_MICRONS_DIR")


@pytest.mark.skipif(
    not MICRONS_DIR or not os.path.exists(os.path.join(MICRONS_DIR or "", "manifest.json")),
    reason="set BIONIC_MICRONS_DIR to a cached MICrONs column (scripts/connectome.py fetch --cache DIR)",
)
def test_real_microns_extract_builds_masks():
    col = Column.load(MICRONS_DIR)
    st = laminar_masks(col)
    assert all(lm.mask.any() for lm in st.layers)


def test_cli_summary_and_plot(tmp_path):
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "connectome.py"), "summary"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "1347 neurons" in out.stdout and "L4 -> L23" in out.stdout
    synthetic_column(seed=0, scale=0.3).save(tmp_path / "col")
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "connectome.py"),
            "plot",
            "--connectome",
            str(tmp_path / "col"),
            "--out",
            str(tmp_path / "fig"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    for name in ("adjacency.png", "connection_probability.png", "block_fill.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
