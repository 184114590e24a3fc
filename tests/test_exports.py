"""Static-export loaders on small files written in the exports' exact layouts, bad files included."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bionic_sparse.connectome import (
    CELL_TYPE_COLUMNS,
    CONNECTION_COLUMNS,
    ExportFormatError,
    load_connectome,
    load_conntility_h5,
    load_csv_export,
)

pd = pytest.importorskip("pandas")
ROOT = Path(__file__).resolve().parents[1]

# (pt_root_id, classification_system, cell_type, depth in voxels); root ids as in minnie65 (18 digits)
CELLS = [
    (864691135000000001, "excitatory_neuron", "23P", 100_000),
    (864691135000000002, "excitatory_neuron", "23P", 110_000),
    (864691135000000003, "excitatory_neuron", "4P", 150_000),
    (864691135000000004, "excitatory_neuron", "5P-IT", 200_000),
    (864691135000000005, "inhibitory_neuron", "BC", 105_000),
    (864691135000000006, "inhibitory_neuron", "MC", 205_000),
    (864691135000000007, "nonneuron", "astrocyte", 120_000),
]
GLIA = 864691135000000007
FRAGMENT = 864691135999999999  # an edge-list segment that is in no cell table
# pre, post, n_syn, sum_size
EDGES = [
    (1, 2, 3, 1500.0),
    (2, 1, 1, 400.0),
    (1, 3, 2, 900.0),
    (3, 4, 1, 300.0),
    (5, 1, 4, 2000.0),
    (6, 4, 2, 800.0),
    (4, 6, 1, 350.0),
]


def _root(k: int) -> int:
    return 864691135000000000 + k


def _cell_rows():
    for i, (root, cls, ctype, depth) in enumerate(CELLS):
        # id, target_id, classification_system, cell_type, volume, pt_supervoxel_id, pt_root_id, x, y, z
        yield [
            i + 1,
            500_000 + i,
            cls,
            ctype,
            250.5,
            88_000_000_000_000_000 + i,
            root,
            180_000 + 1000 * i,
            depth,
            20_000,
        ]


def _edge_rows(extra=()):
    for pre, post, n, size in [*EDGES, *extra]:
        pre_root = pre if pre > 10**12 else _root(pre)
        post_root = post if post > 10**12 else _root(post)
        yield [pre_root, post_root, n, size, 500_000 + pre % 100, 500_000 + post % 100]


def _write_csv(path: Path, header, rows, gz: bool = True) -> Path:
    opener = gzip.open if gz else open
    with opener(path, "wt") as f:
        if header is not None:
            f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


@pytest.fixture
def export(tmp_path):
    """The two CSV exports, headerless and gzipped as published."""
    cells = _write_csv(tmp_path / "aibs_metamodel_celltypes_v661_merged.csv.gz", None, _cell_rows())
    conn = _write_csv(
        tmp_path / "connections_with_nuclei.csv.gz",
        None,
        _edge_rows(extra=[(1, GLIA, 2, 100.0), (FRAGMENT, 2, 1, 50.0), (3, 3, 2, 10.0)]),
    )
    return conn, cells


def test_csv_export_loads_neurons_and_pairs(export):
    conn, cells = export
    column = load_csv_export(conn, cells)
    assert column.n_neurons == 6  # the astrocyte is not a neuron
    assert column.excitatory.tolist() == [True, True, True, True, False, False]  # sorted by root id
    assert column.layer.tolist()[:4] == ["L23", "L23", "L4", "L5"]
    assert column.layer[4] == "L23" and column.layer[5] == "L5"  # interneurons placed by depth
    assert column.neuron_id.tolist() == [500_000 + i for i in range(6)]  # nucleus ids
    got = {
        (int(a) + 1, int(b) + 1): (int(n), float(s))
        for a, b, n, s in zip(column.pre, column.post, column.n_synapses, column.size, strict=True)
    }
    assert got == {(a, b): (n, s) for a, b, n, s in EDGES}
    assert column.meta["dropped_unknown_ids"] == 2  # to the astrocyte, from the fragment
    assert column.meta["dropped_self_loops"] == 1
    # positions in µm (4 x 4 x 40 nm voxels), depth from the shallowest soma
    assert column.position[0].tolist() == pytest.approx([720.0, 0.0, 800.0])
    assert column.position[3, 1] == pytest.approx((200_000 - 100_000) * 0.004)
    assert len(column.meta["connections_md5"]) == 32


def test_csv_export_with_header_and_plain_text(tmp_path):
    header_cells = list(CELL_TYPE_COLUMNS[:7]) + ["pt_position_x", "pt_position_y", "pt_position_z"]
    cells = _write_csv(tmp_path / "cells.csv", header_cells, _cell_rows(), gz=False)
    conn = _write_csv(tmp_path / "conn.csv", CONNECTION_COLUMNS, _edge_rows(), gz=False)
    a = load_csv_export(conn, cells, min_synapses=2)
    assert {(int(p) + 1, int(q) + 1) for p, q in zip(a.pre, a.post, strict=True)} == {
        (p, q) for p, q, n, _ in EDGES if n >= 2
    }
    assert a.meta["dropped_below_min_synapses"] == sum(n < 2 for *_x, n, _s in EDGES)


def test_csv_export_streams_in_chunks(export):
    conn, cells = export
    whole = load_csv_export(conn, cells)
    chunked = load_csv_export(conn, cells, chunk_rows=2)
    for name in ("pre", "post", "n_synapses", "size"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(chunked, name))


def test_csv_export_strict_refuses_unknown_ids(export):
    conn, cells = export
    with pytest.raises(ExportFormatError, match="is not a neuron of"):
        load_csv_export(conn, cells, strict=True)


@pytest.mark.parametrize(
    "extra, match",
    [
        ([(1, 2, 5, 10.0)], "duplicate \\(pre, post\\) pairs, e.g. \\(864691135000000001, 864691135000000002\\)"),
        ([(2, 3, -1, 10.0)], "n_syn must be >= 1"),
        ([(2, 3, 0, 10.0)], "n_syn must be >= 1"),
    ],
)
def test_csv_export_bad_content(tmp_path, extra, match):
    cells = _write_csv(tmp_path / "cells.csv.gz", None, _cell_rows())
    conn = _write_csv(tmp_path / "conn.csv.gz", None, _edge_rows(extra=extra))
    with pytest.raises(ExportFormatError, match=match):
        load_csv_export(conn, cells)


def test_csv_export_bad_layouts(tmp_path):
    cells = _write_csv(tmp_path / "cells.csv.gz", None, _cell_rows())
    wrong_header = _write_csv(tmp_path / "a.csv", ["pre", "post", "count"], [[1, 2, 3]], gz=False)
    with pytest.raises(ExportFormatError, match="header lacks the columns pre_pt_root_id"):
        load_csv_export(wrong_header, cells)
    too_few = _write_csv(tmp_path / "b.csv", None, [[_root(1), _root(2), 3]], gz=False)
    with pytest.raises(ExportFormatError, match="line 1 has 3 fields"):
        load_csv_export(too_few, cells)
    text_id = _write_csv(tmp_path / "c.csv", None, [*_edge_rows(), ["abc", _root(2), 1, 1.0, 1, 2]], gz=False)
    with pytest.raises(ExportFormatError, match="pre_pt_root_id must be an integer"):
        load_csv_export(text_id, cells)
    empty = tmp_path / "d.csv"
    empty.write_text("")
    with pytest.raises(ExportFormatError, match="empty"):
        load_csv_export(empty, cells)
    not_gzip = tmp_path / "e.csv.gz"
    not_gzip.write_text("plain text in a .gz name\n")
    with pytest.raises(ExportFormatError, match="cannot read it as gzip"):
        load_csv_export(not_gzip, cells)
    glia_only = _write_csv(tmp_path / "g.csv.gz", None, [r for r in _cell_rows() if r[2] == "nonneuron"])
    with pytest.raises(ExportFormatError, match="no neurons"):
        load_csv_export(_write_csv(tmp_path / "h.csv.gz", None, _edge_rows()), glia_only)
    with pytest.raises(FileNotFoundError, match="connections file"):
        load_csv_export(tmp_path / "missing.csv.gz", cells)


def _write_conntility(path: Path, *, count="count", extra_edges=(), shape=None):
    """A ConnectivityMatrix file as conntility's to_h5 writes it: vertex_properties as a table,
    edges and edge_indices fixed, NEUROTOP_* attributes on the group."""
    pytest.importorskip("tables")
    vp = pd.DataFrame(
        {
            "id": [500_000 + i for i in range(len(CELLS))],
            "pt_root_id": [c[0] for c in CELLS],
            "cell_type": [c[2] for c in CELLS],
            "classification_system": [c[1] for c in CELLS],
            "x": [720.0 + 4 * i for i in range(len(CELLS))],
            "y": [c[3] * 0.004 for c in CELLS],
            "z": [800.0] * len(CELLS),
        }
    )
    rows = [(a - 1, b - 1, n) for a, b, n, _ in EDGES] + list(extra_edges)
    idx = pd.DataFrame({"row": [r[0] for r in rows], "col": [r[1] for r in rows]})
    edges = pd.DataFrame({count: [r[2] for r in rows], "size": [100.0 * r[2] for r in rows]})
    prefix = "connectivity/full_matrix"
    vp.to_hdf(path, key=prefix + "/vertex_properties", format="table")
    edges.to_hdf(path, key=prefix + "/edges")
    idx.to_hdf(path, key=prefix + "/edge_indices")
    import tables

    with tables.open_file(path, "a") as h5:
        attrs = h5.get_node("/" + prefix)._v_attrs
        attrs.NEUROTOP_SHAPE = np.asarray(shape or (len(CELLS), len(CELLS)))
        attrs.NEUROTOP_DEFAULT_EDGE = count
        attrs.NEUROTOP_CLASS = "ConnectivityMatrix"
    return path


def test_conntility_h5_loads(tmp_path):
    path = _write_conntility(tmp_path / "microns.h5", extra_edges=[(0, 6, 2), (2, 2, 1)])
    column = load_conntility_h5(path)
    assert column.n_neurons == 6
    got = {(int(a) + 1, int(b) + 1): int(n) for a, b, n in zip(column.pre, column.post, column.n_synapses, strict=True)}
    assert got == {(a, b): n for a, b, n, _ in EDGES}
    assert column.meta["dropped_non_neurons_edges"] == 1 and column.meta["dropped_self_loops"] == 1
    assert column.meta["count_property"] == "count"
    chunked = load_conntility_h5(path, chunk_rows=3)
    np.testing.assert_array_equal(chunked.post, column.post)
    via_spec = load_connectome(str(path))
    np.testing.assert_array_equal(via_spec.pre, column.pre)


def test_conntility_h5_bad_files(tmp_path):
    with pytest.raises(ExportFormatError, match="cannot open it as HDF5"):
        bad = tmp_path / "not.h5"
        bad.write_text("not hdf5")
        load_conntility_h5(bad)
    path = _write_conntility(tmp_path / "m.h5")
    with pytest.raises(ExportFormatError, match="no connectivity/condensed/vertex_properties"):
        load_conntility_h5(path, group="condensed")
    with pytest.raises(ExportFormatError, match="no edge property 'n_syn'"):
        load_conntility_h5(path, count_property="n_syn")
    neg = _write_conntility(tmp_path / "neg.h5", extra_edges=[(1, 3, -2)])
    with pytest.raises(ExportFormatError, match="synapse count -2"):
        load_conntility_h5(neg)
    dup = _write_conntility(tmp_path / "dup.h5", extra_edges=[(0, 1, 1)])
    with pytest.raises(ExportFormatError, match="duplicate"):
        load_conntility_h5(dup)
    shape = _write_conntility(tmp_path / "shape.h5", shape=(9, 9))
    with pytest.raises(ExportFormatError, match="NEUROTOP_SHAPE"):
        load_conntility_h5(shape)


def test_import_cli_one_error_line(tmp_path, export):
    conn, cells = export
    script = ROOT / "scripts" / "connectome.py"
    ok = subprocess.run(
        [sys.executable, str(script), "import-csv", str(conn), str(cells), "--out", str(tmp_path / "col")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "dropped: unknown_ids 2, self_loops 1" in ok.stdout
    saved = load_connectome(str(tmp_path / "col"))
    assert saved.pre.size == len(EDGES)
    bad = _write_csv(tmp_path / "bad.csv", ["a", "b"], [[1, 2]], gz=False)
    for args in (
        ["import-csv", str(bad), str(cells), "--out", str(tmp_path / "x")],
        ["import-csv", str(tmp_path / "nope.csv"), str(cells), "--out", str(tmp_path / "x")],
        ["import-h5", str(bad), "--out", str(tmp_path / "x")],
    ):
        proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
