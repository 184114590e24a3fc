"""``Column``: one plain data structure for a cortical column (neurons + synapse edges).

On-disk format (``format_version`` 1), a directory with three files:

* ``neurons.csv.gz``: ``neuron_id,cell_type,excitatory,layer,x_um,y_um,z_um`` (one row per
  neuron; ``excitatory`` is 1/0; ``y_um`` is depth below the pia);
* ``synapses.csv.gz``: ``pre,post,n_synapses,size`` (row indices into ``neurons``, one row per
  connected ordered pair, synapse counts and summed synapse size in voxels);
* ``manifest.json``: ``format_version``, ``source`` (``"synthetic"`` or ``"microns"``),
  ``datastack``, ``materialization_version``, ``query_date``, ``seed`` and any other metadata.
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
        self.pre = _as_array(self.pre, np.int64, "pre")
        self.post = _as_array(self.post, np.int64, "post")
        self.n_synapses = _as_array(self.n_synapses, np.int64, "n_synapses")
        self.size = _as_array(self.size, np.float64, "size")
        n = self.neuron_id.size
        for name in ("cell_type", "excitatory", "layer", "position"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected one per neuron ({n})")
        e = self.pre.size
        for name in ("post", "n_synapses", "size"):
            if getattr(self, name).size != e:
                raise ValueError(f"{name} has {getattr(self, name).size} entries, expected one per edge ({e})")
        if e and (self.pre.min() < 0 or self.pre.max() >= n or self.post.min() < 0 or self.post.max() >= n):
            raise ValueError(f"pre/post must be neuron row indices in [0, {n})")
        if np.any(self.pre == self.post):
            raise ValueError("autapses (pre == post) are not allowed")
        if e and np.any(self.n_synapses < 1):
            raise ValueError("n_synapses must be >= 1 for every edge")
        if np.unique(self.pre * max(n, 1) + self.post).size != e:
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
        adj = self.adjacency("binary")
        layers = [lay for lay in LAYERS if np.any(self.layer == lay)]
        neurons = {
            lay: {
                "E": int(np.sum((self.layer == lay) & self.excitatory)),
                "I": int(np.sum((self.layer == lay) & ~self.excitatory)),
            }
            for lay in layers
        }

        def prob(pre_idx: np.ndarray, post_idx: np.ndarray) -> float:
            pairs = pre_idx.size * post_idx.size - np.intersect1d(pre_idx, post_idx).size
            return float(adj[post_idx][:, pre_idx].sum() / pairs) if pairs > 0 else float("nan")

        layer_p = {(a, b): prob(self.indices(a), self.indices(b)) for a in layers for b in layers}
        classes = {"E": self.indices(excitatory=True), "I": self.indices(excitatory=False)}
        ei_p = {(a, b): prob(classes[a], classes[b]) for a in "EI" for b in "EI"}
        in_deg = np.asarray(adj.sum(1)).ravel()
        out_deg = np.asarray(adj.sum(0)).ravel()

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
            n_neurons=self.n_neurons,
            n_connections=int(self.pre.size),
            n_synapses=int(self.n_synapses.sum()),
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
        edges = zip(self.pre.tolist(), self.post.tolist(), self.n_synapses.tolist(), self.size.tolist(), strict=True)
        _write_csv(os.path.join(path, "synapses.csv.gz"), ["pre", "post", "n_synapses", "size"], edges)
        manifest = dict(self.meta, format_version=FORMAT_VERSION, n_neurons=self.n_neurons, n_edges=int(self.pre.size))
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
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version} is not supported (expected {FORMAT_VERSION})")
        meta.pop("n_neurons", None)
        meta.pop("n_edges", None)
        neurons = _read_csv(os.path.join(path, "neurons.csv.gz"))
        edges = _read_csv(os.path.join(path, "synapses.csv.gz"))
        return cls(
            neuron_id=[int(v) for v in neurons["neuron_id"]],
            cell_type=neurons["cell_type"],
            excitatory=[v == "1" for v in neurons["excitatory"]],
            layer=neurons["layer"],
            position=np.stack([np.asarray(neurons[k], dtype=np.float64) for k in ("x_um", "y_um", "z_um")], 1)
            if neurons["x_um"]
            else np.zeros((0, 3)),
            pre=np.asarray(edges["pre"], dtype=np.int64),
            post=np.asarray(edges["post"], dtype=np.int64),
            n_synapses=np.asarray(edges["n_synapses"], dtype=np.int64),
            size=np.asarray(edges["size"], dtype=np.float64),
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
