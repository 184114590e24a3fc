"""The synthetic whole volume, built small: determinism, statistics, cache, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bionic_sparse.connectome import (
    Column,
    cached_volume,
    load_connectome,
    synthetic_column,
    synthetic_volume,
    volume_summary,
)
from bionic_sparse.connectome.synthetic import connection_probability
from bionic_sparse.connectome.volume import column_falloff_mean

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small():
    return synthetic_volume(seed=3, n_neurons=3000)


def test_same_seed_same_volume(small):
    again = synthetic_volume(seed=3, n_neurons=3000)
    for name in ("pre", "post", "n_synapses", "position", "cell_type", "layer"):
        np.testing.assert_array_equal(getattr(small, name), getattr(again, name))
    other = synthetic_volume(seed=4, n_neurons=3000)
    assert other.pre.size != small.pre.size or not np.array_equal(other.post, small.post)


def test_edges_are_compact_sorted_and_valid(small):
    assert small.pre.dtype == np.int32 and small.post.dtype == np.int32 and small.n_synapses.dtype == np.int16
    key = small.pre.astype(np.int64) * small.n_neurons + small.post
    assert np.all(np.diff(key) > 0)  # sorted by (pre, post), no repeats
    assert not np.any(small.pre == small.post)
    assert small.n_synapses.min() >= 1
    assert small.size.size == 0  # sizes unknown
    assert abs(small.n_neurons - 3000) <= 5
    counts = {lay: int(np.sum(small.layer == lay)) for lay in ("L1", "L23", "L4", "L5", "L6")}
    assert counts["L23"] > counts["L4"] > counts["L1"] > 0


def test_pairs_beyond_the_cutoff_never_connect(small):
    xz = small.position[:, [0, 2]]
    d = np.sqrt(((xz[small.pre] - xz[small.post]) ** 2).sum(1))
    assert d.max() <= 3 * 150.0 + 1e-3


def test_connection_probability_follows_the_table():
    """Inside the cut-off the connected fraction of each group pair matches the table scaled by the
    Gaussian (checked in aggregate over E->E, where the counts are large enough)."""
    vol = synthetic_volume(seed=0, n_neurons=6000)
    s = volume_summary(vol, sample_pre=6000)
    profile = [d for d in s["probability_by_distance"] if d["pairs"] > 2000]
    p = np.array([d["p"] for d in profile])
    assert np.all(np.diff(p[: len(p) // 2]) < 0.01)  # falls with distance
    # expected E->E probability at ~0 distance, averaged over layer pairs weighted by group sizes
    assert 0.0 < p[0] < 0.2
    c = column_falloff_mean(150.0)
    assert 0.9 < c < 1.0
    assert connection_probability("L4", True, "L23", True) / c > connection_probability("L4", True, "L23", True)


def test_summary_matches_a_scipy_count():
    col = synthetic_column(seed=1, scale=0.3)
    s = col.summary()
    adj = sp.csr_matrix((np.ones(col.pre.size), (col.post, col.pre)), shape=(col.n_neurons,) * 2)
    l23, l4 = col.indices("L23"), col.indices("L4")
    assert s.layer_connection_probability[("L4", "L23")] == pytest.approx(adj[l23][:, l4].sum() / (l23.size * l4.size))
    assert s.layer_connection_probability[("L4", "L4")] == pytest.approx(
        adj[l4][:, l4].sum() / (l4.size * l4.size - l4.size)
    )
    assert s.in_degree["max"] == adj.sum(1).max()


def test_cache_round_trip(tmp_path):
    built = cached_volume(seed=2, n_neurons=1500, cache=tmp_path, progress=False)
    (folder,) = list(tmp_path.iterdir())
    assert (folder / "edges.npz").exists() and "seed2-n1500" in folder.name
    loaded = load_connectome("volume", seed=2, n_neurons=1500, cache=tmp_path)
    for name in ("pre", "post", "n_synapses", "position", "excitatory"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(built, name))
    assert loaded.pre.dtype == np.int32 and loaded.meta["source"] == "synthetic-volume"
    again = Column.load(folder)
    assert again.meta["generator_version"] == built.meta["generator_version"]


def test_volume_cli_writes_its_summary(tmp_path):
    out = tmp_path / "v.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "connectome.py"),
            "volume",
            "--neurons",
            "1200",
            "--cache",
            str(tmp_path / "cache"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["n_connections"] > 0 and summary["build_or_load"]["peak_over_edge_arrays"] > 0
    assert "peak growth" in proc.stdout


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="n_neurons"):
        synthetic_volume(n_neurons=bad)
