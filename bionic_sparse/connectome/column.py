"""``Column``: one plain data structure for a cortical column (neurons + synapse edges).

On-disk format (``format_version`` 1), a directory with three files:

* ``neurons.csv.gz``: ``neuron_id,cell_type,excitatory,layer,x_um,y_um,z_um`` (one row per
  neuron; ``excitatory`` is 1/0; ``y_um`` is depth below the pia);
* ``synapses.csv.gz``: ``pre,post,n_synapses,size`` (row indices into ``neurons``, one row per
  connected ordered pair, synapse counts and summed synapse size in voxels);
* ``manifest.json``: ``format_version``, ``source`` (``"synthetic"``, ``"synthetic-volume"``,
  ``"microns"``, ...), ``datastack``, ``materialization_version``, ``query_date``, ``seed`` and any
  other metadata.

``format_version`` 2 (written for more than :data:`CSV_MAX_EDGES` edges, e.g. a whole volume) keeps
``neurons.csv.gz`` and ``manifest.json`` and stores the edges in ``edges.npz`` (numpy, compressed):
``pre``/``post`` (int32 when the neurons fit), ``n_synapses`` and ``size`` (empty when unknown).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["Column", "ColumnSummary", "LAYERS", "FORMAT_VERSION"]

LAYERS = ("L1", "L23", "L4", "L5", "L6")
FORMAT_VERSION = 1
NPZ_FORMAT_VERSION = 2
CSV_MAX_EDGES = 2_000_000  # larger edge lists are saved as edges.npz (CSV would take minutes)


@dataclass
class ColumnSummary:
    """Statistics of a column; ``str()`` gives the printable table."""

    neurons: dict[str, dict[str, int]]  # layer -> {"E": n, "I": n}
    layer_connection_probability: dict[tuple[str, str], float]  # (pre layer, post layer) -> p
    ei_connection_probability: dict[tuple[str, str], float]  # ("E"|"I", "E"|"I") -> p
    in_degree: dict[str, float]  # mean / median / max
    out_degree: dict[str, float]
    n_neurons: int
    n_connections: int
    n_synapses: int

    def __str__(self) -> str:
        lines = [f"{self.n_neurons} neurons, {self.n_connections} connected pairs, {self.n_synapses} synapses", ""]
        lines.append(f"{'layer':<6}{'E':>6}{'I':>6}")
        for layer, counts in self.neurons.items():
            lines.append(f"{layer:<6}{counts['E']:>6}{counts['I']:>6}")
        layers = list(self.neurons)
        lines += ["", "connection probability, pre (rows) -> post (columns):"]
        lines.append(f"{'':<6}" + "".join(f"{post:>8}" for post in layers))
        for pre in layers:
            row = [self.layer_connection_probability.get((pre, post), float("nan")) for post in layers]
            lines.append(f"{pre:<6}" + "".join(f"{p:>8.4f}" for p in row))
        lines += [
            "",
            "connection probability by class: "
            + ", ".join(f"{a}->{b} {p:.4f}" for (a, b), p in self.ei_connection_probability.items()),
        ]
        for name, d in (("in-degree", self.in_degree), ("out-degree", self.out_degree)):
            lines.append(f"{name}: mean {d['mean']:.1f}, median {d['median']:.0f}, max {d['max']:.0f}")
        return "\n".join(lines)


def _as_array(values: Any, dtype: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _as_integers(values: Any, name: str, compact: Any) -> np.ndarray:
    """1-D integers, kept in ``compact`` (a smaller dtype) when they already are in it, else int64:
    a volume's edge arrays stay int32/int16 instead of doubling."""
    arr = np.asarray(values)
    if arr.dtype != compact:
        if arr.size and arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
                arr = arr.astype(np.int64)
            else:
                raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
    return _as_array(arr, arr.dtype, name)


def _segment_keys(pre: np.ndarray, post: np.ndarray, n: int, chunk: int = 1 << 22):
    """``pre * n + post`` (int64) in chunks: the duplicate check never holds a second copy of the
    edge list."""
    for s in range(0, pre.size, chunk):
        yield pre[s : s + chunk].astype(np.int64) * max(n, 1) + post[s : s + chunk]


def _sorted_unique(pre: np.ndarray, post: np.ndarray, n: int) -> bool | None:
    """True if the edges are sorted by (pre, post) without repeats, False if a pair repeats in
    sorted input, None when they are not sorted (then the caller checks otherwise)."""
    last = None
    for key in _segment_keys(pre, post, n):
        step = np.diff(key) if last is None else np.diff(np.r_[last, key])
        if np.any(step < 0):
            return None
        if np.any(step == 0):
            return False
        last = key[-1]
    return True


@dataclass
class Column:
    """A cortical column.

    Args:
        neuron_id: ``[N]`` int64 (e.g. MICrONs nucleus id).
        cell_type: ``[N]`` str (``23P``, ``4P``, ``BC``, ...).
        excitatory: ``[N]`` bool.
        layer: ``[N]`` str, one of :data:`LAYERS`.
        position: ``[N, 3]`` float soma position in µm (x, depth below pia, z).
        pre, post: ``[E]`` int64 row indices into the neuron table (no autapses, no duplicates).
        n_synapses: ``[E]`` int64 synapses per connected pair (>= 1).
        size: ``[E]`` float summed synapse size (voxels; 0 where unknown).
        meta: provenance (see the module docstring).
    """

    neuron_id: np.ndarray
    cell_type: np.ndarray
    excitatory: np.ndarray
    layer: np.ndarray
    position: np.ndarray
    pre: np.ndarray
    post: np.ndarray
    n_synapses: np.ndarray
    size: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.neuron_id = _as_array(self.neuron_id, np.int64, "neuron_id")
        self.cell_type = _as_array(self.cell_type, object, "cell_type").astype(str)
        self.excitatory = _as_array(self.excitatory, bool, "excitatory")
        self.layer = _as_array(self.layer, object, "layer").astype(str)
        self.position = np.asarray(self.position, dtype=np.float64).reshape(-1, 3)
        self.pre = _as_integers(self.pre, "pre", np.int32)
        self.post = _as_integers(self.post, "post", np.int32)
        self.n_synapses = _as_integers(self.n_synapses, "n_synapses", np.int16)
        size = np.asarray(self.size)
        self.size = _as_array(size, np.float32 if size.dtype == np.float32 else np.float64, "size")
        n = self.neuron_id.size
        for name in ("cell_type", "excitatory", "layer", "position"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected one per neuron ({n})")
        e = self.pre.size
        for name in ("post", "n_synapses", "size"):
            got = getattr(self, name).size
            if got != e and not (name == "size" and got == 0):
                raise ValueError(f"{name} has {got} entries, expected one per edge ({e})")
        if e and (self.pre.min() < 0 or self.pre.max() >= n or self.post.min() < 0 or self.post.max() >= n):
            raise ValueError(f"pre/post must be neuron row indices in [0, {n})")
        if np.any(self.pre == self.post):
            raise ValueError("autapses (pre == post) are not allowed")
        if e and np.any(self.n_synapses < 1):
            raise ValueError("n_synapses must be >= 1 for every edge")
        ordered = _sorted_unique(self.pre, self.post, n)
        if ordered is False or (
            ordered is None and np.unique(self.pre.astype(np.int64) * max(n, 1) + self.post).size != e
        ):
            raise ValueError("duplicate (pre, post) edges: aggregate synapses per pair first")
        bad = sorted(set(self.layer) - set(LAYERS))
        if bad:
            raise ValueError(f"unknown layer labels {bad}; expected one of {LAYERS}")

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_id.size)

    def adjacency(self, weight: str = "count") -> sp.csr_matrix:
        """Neuron adjacency ``[post, pre]`` (rows are postsynaptic, as a weight matrix):
        ``weight`` is ``"count"`` (synapses), ``"binary"`` or ``"size"``."""
        data = {"count": self.n_synapses, "binary": np.ones(self.pre.size), "size": self.size}.get(weight)
        if data is None:
            raise ValueError(f"weight must be 'count', 'binary' or 'size', got {weight!r}")
        if data.size != self.pre.size:
            raise ValueError("weight='size': this connectome has no synapse sizes")
        n = self.n_neurons
        return sp.csr_matrix((data.astype(np.float64), (self.post, self.pre)), shape=(n, n))

    def indices(self, layer: str | None = None, excitatory: bool | None = None) -> np.ndarray:
        """Row indices of the neurons in ``layer`` and/or of one class."""
        keep = np.ones(self.n_neurons, dtype=bool)
        if layer is not None:
            keep &= self.layer == layer
        if excitatory is not None:
            keep &= self.excitatory == excitatory
        return np.flatnonzero(keep)

    def summary(self) -> ColumnSummary:
        """Counts, probabilities and degrees from the edge arrays (linear in the edges, so a whole
        volume's summary takes seconds)."""
        n = self.n_neurons
        layers = [lay for lay in LAYERS if np.any(self.layer == lay)]
        code = np.full(n, -1, dtype=np.int64)
        for k, lay in enumerate(layers):
            code[self.layer == lay] = k
        neurons = {
            lay: {
                "E": int(np.sum((code == k) & self.excitatory)),
                "I": int(np.sum((code == k) & ~self.excitatory)),
            }
            for k, lay in enumerate(layers)
        }
        L = len(layers)

        def pair_counts(group: np.ndarray, n_groups: int) -> np.ndarray:
            counts = np.zeros(n_groups * n_groups, dtype=np.int64)
            step = 1 << 22
            for s in range(0, self.pre.size, step):
                key = group[self.pre[s : s + step]] * n_groups + group[self.post[s : s + step]]
                counts += np.bincount(key, minlength=n_groups * n_groups)
            return counts.reshape(n_groups, n_groups)

        def prob(edges: int, n_pre: int, n_post: int, same: bool) -> float:
            pairs = n_pre * n_post - (n_pre if same else 0)
            return float(edges / pairs) if pairs > 0 else float("nan")

        sizes = [neurons[lay]["E"] + neurons[lay]["I"] for lay in layers]
        by_layer = pair_counts(code, L)
        layer_p = {
            (a, b): prob(int(by_layer[i, j]), sizes[i], sizes[j], i == j)
            for i, a in enumerate(layers)
            for j, b in enumerate(layers)
        }
        cls = (~self.excitatory).astype(np.int64)  # 0 = E, 1 = I
        by_class = pair_counts(cls, 2)
        n_class = [int(np.sum(cls == 0)), int(np.sum(cls == 1))]
        ei_p = {
            (a, b): prob(int(by_class[i, j]), n_class[i], n_class[j], i == j)
            for i, a in enumerate("EI")
            for j, b in enumerate("EI")
        }
        in_deg = np.bincount(self.post, minlength=n)
        out_deg = np.bincount(self.pre, minlength=n)

        def stats(d: np.ndarray) -> dict[str, float]:
            return (
                {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max())}
                if d.size
                else {"mean": 0.0, "median": 0.0, "max": 0.0}
            )

        return ColumnSummary(
            neurons=neurons,
            layer_connection_probability=layer_p,
            ei_connection_probability=ei_p,
            in_degree=stats(in_deg),
            out_degree=stats(out_deg),
            n_neurons=n,
            n_connections=int(self.pre.size),
            n_synapses=int(self.n_synapses.sum(dtype=np.int64)),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the column to the directory ``path`` (created if needed; files replaced atomically)."""
        os.makedirs(path, exist_ok=True)
        rows = zip(
            self.neuron_id.tolist(),
            self.cell_type.tolist(),
            self.excitatory.astype(int).tolist(),
            self.layer.tolist(),
            *(self.position[:, k].round(3).tolist() for k in range(3)),
            strict=True,
        )
        _write_csv(
            os.path.join(path, "neurons.csv.gz"),
            ["neuron_id", "cell_type", "excitatory", "layer", "x_um", "y_um", "z_um"],
            rows,
        )
        if self.pre.size > CSV_MAX_EDGES or self.size.size != self.pre.size:
            version = NPZ_FORMAT_VERSION
            tmp = os.path.join(path, "edges.tmp.npz")
            np.savez_compressed(tmp, pre=self.pre, post=self.post, n_synapses=self.n_synapses, size=self.size)
            os.replace(tmp, os.path.join(path, "edges.npz"))
        else:
            version = FORMAT_VERSION
            edges = zip(
                self.pre.tolist(), self.post.tolist(), self.n_synapses.tolist(), self.size.tolist(), strict=True
            )
            _write_csv(os.path.join(path, "synapses.csv.gz"), ["pre", "post", "n_synapses", "size"], edges)
        manifest = dict(self.meta, format_version=version, n_neurons=self.n_neurons, n_edges=int(self.pre.size))
        tmp = os.path.join(path, "manifest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, os.path.join(path, "manifest.json"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Column:
        """Read a column written by :meth:`save`."""
        manifest_path = os.path.join(path, "manifest.json")
        if not os.path.exists(manifest_path):
            raise FileNotFoundError(
                f"{path} is not a saved Column (no manifest.json); create one with "
                "`python scripts/connectome.py fetch` or Column.save()"
            )
        with open(manifest_path) as f:
            meta = json.load(f)
        version = meta.pop("format_version", None)
        if version not in (FORMAT_VERSION, NPZ_FORMAT_VERSION):
            raise ValueError(
                f"{path}: format_version {version} is not supported (expected {FORMAT_VERSION} or {NPZ_FORMAT_VERSION})"
            )
        meta.pop("n_neurons", None)
        meta.pop("n_edges", None)
        neurons = _read_csv(os.path.join(path, "neurons.csv.gz"))
        if version == NPZ_FORMAT_VERSION:
            with np.load(os.path.join(path, "edges.npz")) as f:
                edges = {k: f[k] for k in ("pre", "post", "n_synapses", "size")}
        else:
            text = _read_csv(os.path.join(path, "synapses.csv.gz"))
            edges = dict(
                pre=np.asarray(text["pre"], dtype=np.int64),
                post=np.asarray(text["post"], dtype=np.int64),
                n_synapses=np.asarray(text["n_synapses"], dtype=np.int64),
                size=np.asarray(text["size"], dtype=np.float64),
            )
        return cls(
            neuron_id=[int(v) for v in neurons["neuron_id"]],
            cell_type=neurons["cell_type"],
            excitatory=[v == "1" for v in neurons["excitatory"]],
            layer=neurons["layer"],
            position=np.stack([np.asarray(neurons[k], dtype=np.float64) for k in ("x_um", "y_um", "z_um")], 1)
            if neurons["x_um"]
            else np.zeros((0, 3)),
            **edges,
            meta=meta,
        )


def _write_csv(path: str, header: list[str], rows: Any) -> None:
    tmp = path + ".tmp"
    with gzip.open(tmp, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def _read_csv(path: str) -> dict[str, list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        cols: dict[str, list[str]] = {h: [] for h in header}
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line_no}: expected {len(header)} fields, got {len(row)}")
            for h, v in zip(header, row, strict=True):
                cols[h].append(v)
    return cols
