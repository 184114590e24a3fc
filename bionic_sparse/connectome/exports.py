"""Loaders for the public static exports of MICrONs, for users with internet but no CAVE account.

Two layouts, both read in chunks so that a multi-GB file never sits in memory whole:

1. **CSV exports** (the materialization dumps published next to each public release):

   * a neuron-pair edge list in the layout of ``connections_with_nuclei``: columns
     ``pre_pt_root_id, post_pt_root_id, n_syn, sum_size, pre_nuc_id, post_nuc_id`` (one row per
     connected ordered pair of segments, synapse count and summed synapse size);
   * a soma cell-type table in the layout of the merged ``aibs_metamodel_celltypes_v661`` export:
     ``id, target_id, classification_system, cell_type, volume, pt_supervoxel_id, pt_root_id,
     x, y, z`` (``classification_system`` is ``excitatory_neuron``, ``inhibitory_neuron`` or a
     non-neuronal class; ``x, y, z`` the nucleus position in voxels).

   Either file may carry a header row with these names (``pt_position_x`` etc. are accepted for
   ``x, y, z``) or none, in which case the columns must be in exactly this order. Both files must
   come from the same materialization version: root ids change between versions.

2. **conntility HDF5** (``ConnectivityMatrix.to_h5`` of BlueBrain's ConnectomeUtilities, the format
   of the MICrONs connectome on Zenodo, record 8364070): pandas objects under
   ``<prefix>/<group>/`` (default ``connectivity/full_matrix``): ``vertex_properties`` (one row per
   neuron), ``edge_indices`` (``row`` = presynaptic, ``col`` = postsynaptic vertex index) and
   ``edges`` (edge properties, e.g. the synapse count), with the group attributes
   ``NEUROTOP_SHAPE`` and ``NEUROTOP_DEFAULT_EDGE``. Needs PyTables
   (``pip install 'bionic-sparse[exports]'``).

What happens to imperfect input (documented, counted in ``meta``, never silent):

* edges whose pre or post segment is not a neuron of the cell table: dropped (the edge list
  includes glia, fragments and neurons the cell table does not classify), counted in
  ``meta["dropped_unknown_ids"]``; ``strict=True`` raises instead;
* self-loops (``pre == post``): dropped (autapses are segmentation artefacts), counted in
  ``meta["dropped_self_loops"]``;
* duplicate (pre, post) pairs, zero or negative synapse counts, non-integer ids, columns that do
  not match the layout, a cell table without neurons: :class:`ExportFormatError` naming the file,
  the line or pair, and what was expected.

Soma positions become µm with ``voxel_size_nm`` (default 4 x 4 x 40 nm, minnie65's) and ``y``
(depth) is measured from the shallowest soma; layers come from the excitatory cell types and,
for inhibitory neurons, from depth, as for the CAVE loader (:func:`.microns.fetch_column`).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .column import Column
from .microns import EXCITATORY_LAYER, _layer_boundaries, _place_by_depth

__all__ = [
    "ExportFormatError",
    "CONNECTION_COLUMNS",
    "CELL_TYPE_COLUMNS",
    "load_csv_export",
    "load_conntility_h5",
]

CONNECTION_COLUMNS = ("pre_pt_root_id", "post_pt_root_id", "n_syn", "sum_size", "pre_nuc_id", "post_nuc_id")
CELL_TYPE_COLUMNS = (
    "id",
    "target_id",
    "classification_system",
    "cell_type",
    "volume",
    "pt_supervoxel_id",
    "pt_root_id",
    "x",
    "y",
    "z",
)
_POSITION_ALIASES = {"pt_position_x": "x", "pt_position_y": "y", "pt_position_z": "z"}
VOXEL_SIZE_NM = (4.0, 4.0, 40.0)
CHUNK_ROWS = 2_000_000


class ExportFormatError(ValueError):
    """A static export that does not have the expected layout or content; the message names the
    file and what was expected."""


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("the export loaders need pandas: pip install 'bionic-sparse[exports]'") from None
    return pd


def _has_header(path: Path, expected: tuple[str, ...]) -> bool:
    """True if the first line holds column names (any field that is not a number), after checking
    that they are the expected ones."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            first = f.readline().strip()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ExportFormatError(f"{path}: cannot read it as {'gzip ' if path.suffix == '.gz' else ''}text ({e})") from e
    if not first:
        raise ExportFormatError(f"{path}: the file is empty")
    fields = [_POSITION_ALIASES.get(f.strip().strip('"'), f.strip().strip('"')) for f in first.split(",")]
    looks_like_names = any(not _is_number(f) for f in fields) and (
        set(fields) & set(expected) or all(not _is_number(f) for f in fields)
    )
    if not looks_like_names:  # a data row: the file has no header
        if len(fields) != len(expected):
            raise ExportFormatError(
                f"{path}: line 1 has {len(fields)} fields; a file without a header must have the "
                f"{len(expected)} columns {', '.join(expected)}"
            )
        return False
    missing = [c for c in expected if c not in fields]
    if missing:
        raise ExportFormatError(
            f"{path}: the header lacks the columns {', '.join(missing)} "
            f"(expected {', '.join(expected)}; got {', '.join(fields)})"
        )
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def _read_chunks(path: Path, expected: tuple[str, ...], usecols: list[str], chunk_rows: int):
    """Yield (first data line number, DataFrame of ``usecols``) chunks of a CSV export."""
    pd = _pandas()
    header = _has_header(path, expected)
    wanted = set(usecols)
    kw = dict(chunksize=chunk_rows, usecols=lambda c: _POSITION_ALIASES.get(c, c) in wanted)
    names = dict(header=0) if header else dict(header=None, names=list(expected))
    line = 2 if header else 1
    try:
        for chunk in pd.read_csv(path, **names, **kw):
            chunk = chunk.rename(columns=_POSITION_ALIASES)
            yield line, chunk
            line += len(chunk)
    except (ValueError, pd.errors.ParserError) as e:
        raise ExportFormatError(f"{path}: malformed CSV near line {line} ({str(e).splitlines()[0]})") from e


def _integers(values: Any, path: Path, column: str, line: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    bad = np.flatnonzero(~_integral(arr))
    if bad.size:
        raise ExportFormatError(
            f"{path}, line {line + int(bad[0])}: {column} must be an integer id or count, got {arr[bad[0]]!r}"
        )
    return arr.astype(np.int64)


def _integral(arr: np.ndarray) -> np.ndarray:
    try:
        f = arr.astype(np.float64)
    except (TypeError, ValueError):
        out = np.zeros(arr.shape, dtype=bool)
        for i, v in enumerate(arr):
            try:
                out[i] = float(v) == int(float(v))
            except (TypeError, ValueError):
                out[i] = False
        return out
    return np.isfinite(f) & (np.mod(f, 1) == 0)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _neurons(
    root: np.ndarray, neuron_id: np.ndarray, cls: np.ndarray, cell_type: np.ndarray, pos_um: np.ndarray, where: str
):
    """Sorted unique neuron table: excitatory flags, layers (types, then depth) and positions."""
    keep = np.char.find(cls.astype(str), "excitatory") >= 0
    keep |= np.char.find(cls.astype(str), "inhibitory") >= 0
    keep &= root > 0
    if not keep.any():
        raise ExportFormatError(
            f"{where}: no neurons (no row with classification_system excitatory_neuron or inhibitory_neuron "
            "and a root id > 0)"
        )
    root, neuron_id, cls, cell_type, pos_um = root[keep], neuron_id[keep], cls[keep], cell_type[keep], pos_um[keep]
    root_sorted, first = np.unique(root, return_index=True)  # a root id listed twice: keep its first row
    neuron_id, cls, cell_type, pos_um = neuron_id[first], cls[first], cell_type[first], pos_um[first]
    excitatory = np.char.find(cls.astype(str), "excitatory") >= 0
    depth = pos_um[:, 1]
    layer = np.array([EXCITATORY_LAYER.get(t, "") for t in cell_type.astype(str)], dtype=object)
    if not np.any(layer == "L23"):
        raise ExportFormatError(f"{where}: no 23P neurons: cannot place the layer boundaries by depth")
    bounds = _layer_boundaries(depth, layer)
    place = ~excitatory | (layer == "")
    layer[place] = _place_by_depth(depth[place], bounds)
    position = np.column_stack([pos_um[:, 0], depth - depth.min(), pos_um[:, 2]])
    return root_sorted, neuron_id, excitatory, cell_type.astype(str), layer.astype(str), position


def _index_of(root_sorted: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in ``root_sorted`` (-1 when absent)."""
    pos = np.searchsorted(root_sorted, ids)
    pos = np.minimum(pos, max(root_sorted.size - 1, 0))
    return np.where(root_sorted[pos] == ids, pos, -1)


def _finish(
    pre: np.ndarray,
    post: np.ndarray,
    n_syn: np.ndarray,
    size: np.ndarray | None,
    n: int,
    where: str,
    ids: tuple[np.ndarray, np.ndarray] | None,
):
    """Sort by (pre, post) and refuse repeated pairs (the export has one row per pair)."""
    key = pre.astype(np.int64) * max(n, 1) + post
    order = np.argsort(key, kind="stable")
    key = key[order]
    dup = np.flatnonzero(key[1:] == key[:-1])
    if dup.size:
        a, b = int(key[dup[0]] // n), int(key[dup[0]] % n)
        if ids is not None:
            a, b = int(ids[0][a]), int(ids[1][b])
        raise ExportFormatError(
            f"{where}: {dup.size} duplicate (pre, post) pairs, e.g. ({a}, {b}); the export has one row per "
            "connected pair: deduplicate or aggregate the file first"
        )
    pre, post, n_syn = pre[order], post[order], n_syn[order]
    return pre, post, n_syn, None if size is None else size[order]


def load_csv_export(
    connections: str | os.PathLike,
    cells: str | os.PathLike,
    *,
    voxel_size_nm: tuple[float, float, float] = VOXEL_SIZE_NM,
    min_synapses: int = 1,
    strict: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = False,
) -> Column:
    """A :class:`Column` of the neurons in ``cells`` and the connections among them.

    Args:
        connections: the edge list (``.csv`` or ``.csv.gz``), ``connections_with_nuclei`` layout.
        cells: the soma cell-type table, merged ``aibs_metamodel_celltypes`` layout.
        voxel_size_nm: nm per voxel of the positions in ``cells``.
        min_synapses: keep pairs with at least this many synapses.
        strict: raise on edges whose ids are not neurons of ``cells`` instead of dropping them.
        chunk_rows: rows read at once (memory ~ 50 bytes per row).
        progress: a tqdm bar over the edge-list rows read.
    """
    connections, cells = Path(connections), Path(cells)
    for name, p in (("connections", connections), ("cells", cells)):
        if not p.is_file():
            raise FileNotFoundError(f"{name} file {p} does not exist")
    if min_synapses < 1:
        raise ValueError(f"min_synapses must be >= 1, got {min_synapses}")
    _pandas()  # fail before reading anything when pandas is missing
    parts = {k: [] for k in ("root", "id", "cls", "type", "pos")}
    for line, ch in _read_chunks(cells, CELL_TYPE_COLUMNS, list(CELL_TYPE_COLUMNS), chunk_rows):
        parts["root"].append(_integers(ch["pt_root_id"].to_numpy(), cells, "pt_root_id", line))
        parts["id"].append(_integers(ch["target_id"].to_numpy(), cells, "target_id", line))
        parts["cls"].append(ch["classification_system"].astype(str).to_numpy())
        parts["type"].append(ch["cell_type"].astype(str).to_numpy())
        try:
            xyz = ch[["x", "y", "z"]].to_numpy(np.float64)
        except (TypeError, ValueError) as e:
            raise ExportFormatError(f"{cells}, near line {line}: x, y, z must be numbers ({e})") from e
        parts["pos"].append(xyz * np.asarray(voxel_size_nm) / 1000.0)
    root_sorted, neuron_id, excitatory, cell_type, layer, position = _neurons(
        *(np.concatenate(parts[k]) for k in ("root", "id", "cls", "type", "pos")), where=str(cells)
    )
    n = root_sorted.size

    bar = None
    pre_parts, post_parts, syn_parts, size_parts = [], [], [], []
    dropped_unknown = dropped_self = dropped_small = rows = 0
    usecols = ["pre_pt_root_id", "post_pt_root_id", "n_syn", "sum_size"]
    for line, ch in _read_chunks(connections, CONNECTION_COLUMNS, usecols, chunk_rows):
        rows += len(ch)
        a = _integers(ch["pre_pt_root_id"].to_numpy(), connections, "pre_pt_root_id", line)
        b = _integers(ch["post_pt_root_id"].to_numpy(), connections, "post_pt_root_id", line)
        syn = _integers(ch["n_syn"].to_numpy(), connections, "n_syn", line)
        bad = np.flatnonzero(syn < 1)
        if bad.size:
            raise ExportFormatError(
                f"{connections}, line {line + int(bad[0])}: n_syn must be >= 1 (a count of synapses), got {syn[bad[0]]}"
            )
        size = _floats(ch["sum_size"], connections, line)
        self_loop = a == b
        dropped_self += int(self_loop.sum())
        ia, ib = _index_of(root_sorted, a), _index_of(root_sorted, b)
        unknown = ((ia < 0) | (ib < 0)) & ~self_loop
        if strict and unknown.any():
            k = int(np.flatnonzero(unknown)[0])
            missing = a[k] if ia[k] < 0 else b[k]
            raise ExportFormatError(
                f"{connections}, line {line + k}: root id {missing} is not a neuron of {cells} "
                "(strict=True; without it such edges are dropped and counted)"
            )
        dropped_unknown += int(unknown.sum())
        small = syn < min_synapses
        keep = ~self_loop & ~unknown & ~small
        dropped_small += int((small & ~self_loop & ~unknown).sum())
        pre_parts.append(ia[keep].astype(np.int32))
        post_parts.append(ib[keep].astype(np.int32))
        syn_parts.append(syn[keep].astype(np.int32))
        size_parts.append(size[keep].astype(np.float32))
        if progress and bar is None:  # opened after the first chunk parsed: a bad file prints one line
            from tqdm.auto import tqdm

            bar = tqdm(desc="connections", unit="row", unit_scale=True)
        if bar is not None:
            bar.update(len(ch))
    if bar is not None:
        bar.close()
    pre, post, n_syn, size = _finish(
        np.concatenate(pre_parts),
        np.concatenate(post_parts),
        np.concatenate(syn_parts),
        np.concatenate(size_parts),
        n,
        str(connections),
        (root_sorted, root_sorted),
    )
    meta = dict(
        source="microns-csv-export",
        connections_file=connections.name,
        connections_md5=_md5(connections),
        cells_file=cells.name,
        cells_md5=_md5(cells),
        rows_read=rows,
        dropped_unknown_ids=dropped_unknown,
        dropped_self_loops=dropped_self,
        dropped_below_min_synapses=dropped_small,
        min_synapses=min_synapses,
        voxel_size_nm=list(voxel_size_nm),
        position_units="um, y is depth below the shallowest soma",
        query_date=datetime.date.today().isoformat(),
        datastack=None,
        materialization_version=None,
    )
    return Column(
        neuron_id=neuron_id,
        cell_type=cell_type,
        excitatory=excitatory,
        layer=layer,
        position=position,
        pre=pre,
        post=post,
        n_synapses=n_syn,
        size=size,
        meta=meta,
    )


def _floats(series: Any, path: Path, line: int) -> np.ndarray:
    """A float column; blanks are 0 (unknown size), text is an error."""
    pd = _pandas()
    values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(np.isnan(values) & series.notna().to_numpy())
    if bad.size:
        raise ExportFormatError(
            f"{path}, line {line + int(bad[0])}: sum_size must be a number, got {series.iloc[bad[0]]!r}"
        )
    return np.nan_to_num(values, nan=0.0)


def _h5_frame_chunks(h5: Any, key: str, path: Path, chunk_rows: int):
    """Yield DataFrames of a pandas HDF object in row chunks: a ``fixed`` frame's blocks are sliced
    with PyTables, a ``table`` frame is read with ``select`` (both without loading it whole)."""
    pd = _pandas()
    storer = h5.get_storer(key)
    if storer.is_table:
        for start in range(0, storer.nrows, chunk_rows):
            yield h5.select(key, start=start, stop=start + chunk_rows)
        return
    group = storer.group
    n_blocks = int(getattr(group._v_attrs, "nblocks", 0))
    blocks = []
    for k in range(n_blocks):
        items = [v.decode() if isinstance(v, bytes) else str(v) for v in getattr(group, f"block{k}_items")[:]]
        blocks.append((items, getattr(group, f"block{k}_values")))
    n_rows = blocks[0][1].shape[0] if blocks else 0
    for start in range(0, n_rows, chunk_rows):
        cols = {}
        for items, values in blocks:
            part = values[start : start + chunk_rows]
            for j, name in enumerate(items):
                cols[name] = part[:, j]
        yield pd.DataFrame(cols)


def load_conntility_h5(
    path: str | os.PathLike,
    *,
    group: str = "full_matrix",
    prefix: str = "connectivity",
    count_property: str | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Column:
    """A :class:`Column` from a conntility ``ConnectivityMatrix`` HDF5 file.

    Args:
        path: the ``.h5`` file.
        group, prefix: where the matrix is (``<prefix>/<group>``).
        count_property: the edge property holding synapse counts (default: the file's
            ``NEUROTOP_DEFAULT_EDGE``; a count of 1 per edge when that is not an integer count).
        voxel_size_nm: scale of the vertex positions to µm (default: they are in µm already;
            minnie65 voxels are 4 x 4 x 40 nm).

    Vertex properties used: ``cell_type`` (or ``mtype``), ``classification_system`` (optional:
    otherwise excitatory means an excitatory type such as ``23P``), ``x, y, z`` (or
    ``pt_position_x`` ...), and an id column (``id``, ``nucleus_id``, ``pt_root_id``; default the
    row index).
    """
    pd = _pandas()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conntility file {path} does not exist")
    try:
        import tables  # noqa: F401
    except ImportError:
        raise ImportError("reading conntility HDF5 needs PyTables: pip install 'bionic-sparse[exports]'") from None
    base = f"{prefix}/{group}"
    with open(path, "rb") as f:  # the HDF5 signature sits at 0 or at a power-of-two user-block offset
        head = f.read(4096)
    if not any(head[o : o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512, 1024, 2048)):
        raise ExportFormatError(f"{path}: cannot open it as HDF5 (no HDF5 signature: not an HDF5 file)")
    try:
        h5 = pd.HDFStore(path, mode="r")
    except Exception as e:  # truncated, locked
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ExportFormatError(f"{path}: cannot open it as HDF5 ({type(e).__name__}: {first})") from e
    with h5:
        keys = set(h5.keys())
        for part in ("vertex_properties", "edge_indices", "edges"):
            if f"/{base}/{part}" not in keys:
                raise ExportFormatError(
                    f"{path}: no {base}/{part}; a conntility ConnectivityMatrix file has "
                    f"{base}/vertex_properties, edge_indices and edges (found: {', '.join(sorted(keys)) or 'nothing'})"
                )
        attrs = h5.get_node(base)._v_attrs
        shape = tuple(int(s) for s in getattr(attrs, "NEUROTOP_SHAPE", ()))
        default_edge = getattr(attrs, "NEUROTOP_DEFAULT_EDGE", None)
        if isinstance(default_edge, bytes | np.bytes_):
            default_edge = default_edge.decode()
        vp = (
            h5.select(f"{base}/vertex_properties")
            if h5.get_storer(f"{base}/vertex_properties").is_table
            else h5.get(f"{base}/vertex_properties")
        )
        vp = vp.rename(columns=_POSITION_ALIASES).reset_index(drop=True)
        n = len(vp)
        if shape and shape != (n, n):
            raise ExportFormatError(f"{path}: NEUROTOP_SHAPE {shape} does not match {n} vertices")
        type_col = "cell_type" if "cell_type" in vp else "mtype" if "mtype" in vp else None
        if type_col is None or not {"x", "y", "z"} <= set(vp.columns):
            raise ExportFormatError(
                f"{path}: vertex_properties needs cell_type (or mtype) and x, y, z (or pt_position_x ...); "
                f"got {', '.join(map(str, vp.columns))}"
            )
        cell_type = vp[type_col].astype(str).to_numpy()
        if "classification_system" in vp:
            cls = vp["classification_system"].astype(str).to_numpy()
        else:
            exc = np.isin(cell_type, list(EXCITATORY_LAYER))
            cls = np.where(exc, "excitatory_neuron", "inhibitory_neuron")
        id_col = next((c for c in ("id", "nucleus_id", "pt_root_id") if c in vp), None)
        ids = vp[id_col].to_numpy(np.int64) if id_col else np.arange(n, dtype=np.int64)
        scale = np.asarray(voxel_size_nm) / 1000.0 if voxel_size_nm is not None else 1.0
        pos = vp[["x", "y", "z"]].to_numpy(np.float64) * scale
        # rows stand for themselves here (vertex index + 1 > 0), so _neurons keeps the file's order
        vertex = np.arange(1, n + 1, dtype=np.int64)
        kept_vertex, neuron_id, excitatory, cell_type, layer, position = _neurons(
            vertex, ids, cls, cell_type, pos, where=str(path)
        )
        row_of_vertex = np.full(n + 1, -1, dtype=np.int64)
        row_of_vertex[kept_vertex] = np.arange(kept_vertex.size)

        count_name = count_property or default_edge
        pre_parts, post_parts, syn_parts = [], [], []
        dropped_unknown = dropped_self = 0
        idx_chunks = _h5_frame_chunks(h5, f"{base}/edge_indices", path, chunk_rows)
        prop_chunks = _h5_frame_chunks(h5, f"{base}/edges", path, chunk_rows)
        line = 0
        for idx, props in zip(idx_chunks, prop_chunks, strict=True):
            if not {"row", "col"} <= set(idx.columns):
                raise ExportFormatError(f"{path}: edge_indices needs columns row, col; got {', '.join(idx.columns)}")
            a, b = idx["row"].to_numpy(np.int64), idx["col"].to_numpy(np.int64)
            if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n):
                raise ExportFormatError(f"{path}: edge_indices hold vertex indices outside [0, {n})")
            if count_name is not None and count_name in props:
                syn = props[count_name].to_numpy()
                if syn.dtype.kind not in "iu" and not np.all(_integral(syn)):
                    syn = np.ones(a.size, dtype=np.int64)  # not a count (e.g. a size): one per edge
                syn = syn.astype(np.int64)
            elif count_property is not None:
                raise ExportFormatError(
                    f"{path}: no edge property {count_property!r} (have {', '.join(map(str, props.columns))})"
                )
            else:
                syn = np.ones(a.size, dtype=np.int64)
            bad = np.flatnonzero(syn < 1)
            if bad.size:
                raise ExportFormatError(
                    f"{path}: edge {line + int(bad[0])} has synapse count {syn[bad[0]]} (must be >= 1)"
                )
            self_loop = a == b
            ia, ib = row_of_vertex[a + 1], row_of_vertex[b + 1]
            unknown = ((ia < 0) | (ib < 0)) & ~self_loop
            keep = ~self_loop & ~unknown
            dropped_self += int(self_loop.sum())
            dropped_unknown += int(unknown.sum())
            pre_parts.append(ia[keep].astype(np.int32))
            post_parts.append(ib[keep].astype(np.int32))
            syn_parts.append(syn[keep].astype(np.int32))
            line += a.size
    pre, post, n_syn, _ = _finish(
        np.concatenate(pre_parts) if pre_parts else np.zeros(0, np.int32),
        np.concatenate(post_parts) if post_parts else np.zeros(0, np.int32),
        np.concatenate(syn_parts) if syn_parts else np.zeros(0, np.int32),
        None,
        kept_vertex.size,
        str(path),
        None,
    )
    meta = dict(
        source="conntility-h5",
        file=path.name,
        md5=_md5(path),
        group=base,
        count_property=count_name,
        dropped_non_neurons_edges=dropped_unknown,
        dropped_self_loops=dropped_self,
        position_units="um, y is depth below the shallowest soma",
        query_date=datetime.date.today().isoformat(),
        datastack=None,
        materialization_version=None,
    )
    return Column(
        neuron_id=neuron_id,
        cell_type=cell_type,
        excitatory=excitatory,
        layer=layer,
        position=position,
        pre=pre,
        post=post,
        n_synapses=n_syn,
        size=np.zeros(0, np.float32),
        meta=meta,
    )
