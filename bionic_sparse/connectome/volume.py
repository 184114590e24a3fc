"""Synthetic cortical volume at neuron resolution: the whole-volume stand-in for MICrONs minnie65.

MICrONs (CAVE) is not reachable offline, so ``load_connectome("volume")`` builds a volume with the
column's published statistics tiled over a MICrONs-sized population. What it uses:

* **Neurons**: 82,247 by default, the neuron count of the minnie65 public release v117 (MICrONs
  release notes). Each layer's share of excitatory and inhibitory cells and the cell-type mix are
  the synthetic column's (:data:`.synthetic.LAYER_COUNTS`, 1,183 E / 164 I per 100 x 100 µm
  column, Schneider-Mizell et al. bioRxiv 2023.01.23.525290 v1), so the lateral area follows from
  the column's density (1,347 neurons per 0.01 mm²): 0.61 mm² at the default size, laid out 3:2.
  Somata are uniform over the area and over each layer's depth range
  (:data:`.synthetic.LAYER_DEPTH_UM`).
* **Connection probability**: ``p = p_table(pre group, post group) * g(d) / c``, where ``p_table``
  is the column's layer/class table (:func:`.synthetic.connection_probability`: multi-patch ranges
  of Campagnola et al. 2022 and the layer structure of Billeh et al. 2020), ``g(d)`` a Gaussian of
  the lateral intersomatic distance ``d`` with ``sigma = 125 µm`` (:data:`VOLUME_SIGMA_UM`: the
  wider axonal reach of a volume than the column's 75 µm; our choice, it sets the number of pairs)
  cut at 3 sigma (which drops 1.1 % of the Gaussian's mass), and ``c`` the mean of ``g`` over pairs
  in a 100 µm square, so that any 100 µm column of the volume has the column's mean probabilities.
* **Synapses per connection**: ``1 + floor(lognormal(0, 0.7))`` (mean ~1.8), as the column's.

What it produces at the defaults (seed 0; :func:`volume_summary`, README "The whole volume"):
about 5.6 x 10^7 connected pairs and 1.0 x 10^8 synapses. For comparison the v117 release counts
337,312,429 synapses in the whole volume, most of them onto or from segments without a soma in it,
so the pairs between its neurons are fewer; the default sits at the scale the engine must handle.

The build is chunked: pairs are drawn per cell of a lateral grid and per few dozen presynaptic
neurons, and only the connected pairs are kept, so memory stays near that of the final edge
arrays (``pre``/``post`` int32, ``n_synapses`` int16). Everything is drawn from
``numpy.random.default_rng(seed)`` in a fixed order: the same seed gives the same volume.
:func:`cached_volume` keeps built volumes on disk (``$BIONIC_SPARSE_CACHE/volumes``, compressed).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

import numpy as np

from .column import LAYERS, Column
from .synthetic import _E_TYPES, _I_TYPES, LAYER_COUNTS, LAYER_DEPTH_UM, connection_probability

__all__ = [
    "VOLUME_NEURONS",
    "VOLUME_SIGMA_UM",
    "CUTOFF_SIGMAS",
    "synthetic_volume",
    "cached_volume",
    "volume_summary",
    "column_falloff_mean",
]

VOLUME_NEURONS = 82_247  # minnie65 public release v117
VOLUME_SIGMA_UM = 150.0
CUTOFF_SIGMAS = 3.0
ASPECT = 1.5  # lateral extent, x : z
COLUMN_SIDE_UM = 100.0
GENERATOR_VERSION = 1  # bump when the same seed would give another volume
_PAIRS_PER_CHUNK = 4_000_000  # candidate pairs evaluated at once (a few 16 MB float32 arrays)


def column_falloff_mean(sigma_um: float, side_um: float = COLUMN_SIDE_UM) -> float:
    """Mean of ``exp(-d^2 / 2 sigma^2)`` over two points uniform in a ``side x side`` square.

    The lateral offsets along each axis have the triangular density ``(L - |u|) / L^2`` on
    ``[-L, L]``, and the two axes are independent, so the mean is the square of a 1-D integral.
    """
    u = np.linspace(-side_um, side_um, 20_001)
    f = (side_um - np.abs(u)) / side_um**2 * np.exp(-(u**2) / (2 * sigma_um**2))
    return float(np.trapezoid(f, u) ** 2)


def _neuron_counts(n_neurons: int) -> dict[str, tuple[int, int]]:
    column_total = sum(e + i for e, i in LAYER_COUNTS.values())
    scale = n_neurons / column_total
    return {lay: (round(e * scale), round(i * scale)) for lay, (e, i) in LAYER_COUNTS.items()}


def synthetic_volume(
    seed: int = 0,
    n_neurons: int = VOLUME_NEURONS,
    lateral_sigma_um: float = VOLUME_SIGMA_UM,
    cutoff_sigmas: float = CUTOFF_SIGMAS,
    progress: bool = False,
) -> Column:
    """A deterministic synthetic volume (see the module docstring for every figure it uses).

    Args:
        seed: RNG seed.
        n_neurons: about how many neurons (each layer's count is rounded); the lateral area grows
            with it at the column's density.
        lateral_sigma_um: width (µm) of the Gaussian lateral fall-off of connection probability.
        cutoff_sigmas: pairs farther apart than this many sigmas are never connected.
        progress: show a tqdm bar over the presynaptic neurons.

    Returns:
        A :class:`Column` with int32 ``pre``/``post`` sorted by (pre, post), int16 ``n_synapses``
        and no synapse sizes (``size`` is empty: unknown).
    """
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, int) or n_neurons < 2:
        raise ValueError(f"n_neurons must be an int >= 2, got {n_neurons!r}")
    if not lateral_sigma_um > 0:
        raise ValueError(f"lateral_sigma_um must be > 0, got {lateral_sigma_um}")
    if not cutoff_sigmas > 0:
        raise ValueError(f"cutoff_sigmas must be > 0, got {cutoff_sigmas}")
    rng = np.random.default_rng(seed)
    counts = _neuron_counts(n_neurons)
    layers, exc, types, depth = [], [], [], []
    for layer, (n_e, n_i) in counts.items():
        lo, hi = LAYER_DEPTH_UM[layer]
        if n_e:
            names, probs = _E_TYPES[layer]
            types.append(rng.choice(names, size=n_e, p=probs))
        if n_i:
            types.append(rng.choice(_I_TYPES[0], size=n_i, p=_I_TYPES[1]))
        layers.append(np.full(n_e + n_i, LAYERS.index(layer), dtype=np.int8))
        exc.append(np.r_[np.ones(n_e, bool), np.zeros(n_i, bool)])
        depth.append(rng.uniform(lo, hi, n_e + n_i))
    layer_code = np.concatenate(layers)
    exc_arr = np.concatenate(exc)
    n = layer_code.size
    column_total = sum(e + i for e, i in LAYER_COUNTS.values())
    area = n / column_total * COLUMN_SIDE_UM**2
    width, height = math.sqrt(area * ASPECT), math.sqrt(area / ASPECT)
    x = rng.uniform(0.0, width, n).astype(np.float32)
    z = rng.uniform(0.0, height, n).astype(np.float32)

    # probability table per (layer, class) group, scaled so that a 100 µm column keeps its mean
    group = (layer_code.astype(np.int64) * 2 + (~exc_arr)).astype(np.int8)  # layer * 2 + (0 = E, 1 = I)
    n_groups = 2 * len(LAYERS)
    table = np.zeros((n_groups, n_groups), dtype=np.float32)
    for a in range(n_groups):
        for b in range(n_groups):
            table[a, b] = connection_probability(LAYERS[a // 2], a % 2 == 0, LAYERS[b // 2], b % 2 == 0)
    table /= column_falloff_mean(lateral_sigma_um)

    # lateral grid: each presynaptic cell meets only the cells within the cut-off radius
    r_max = cutoff_sigmas * lateral_sigma_um
    cell = r_max / 4
    nx, nz = max(1, math.ceil(width / cell)), max(1, math.ceil(height / cell))
    cx = np.minimum((x / cell).astype(np.int64), nx - 1)
    cz = np.minimum((z / cell).astype(np.int64), nz - 1)
    cell_of = cx * nz + cz
    by_cell = np.argsort(cell_of, kind="stable").astype(np.int32)  # neuron ids ascending within a cell
    cell_ptr = np.searchsorted(cell_of[by_cell], np.arange(nx * nz + 1))
    reach = math.ceil(r_max / cell)
    inv_two_sigma2 = np.float32(-1.0 / (2 * lateral_sigma_um**2))
    r2_max = np.float32(r_max**2)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="volume", unit="neuron", unit_scale=True)
    chunks_pre: list[np.ndarray] = []
    chunks_post: list[np.ndarray] = []
    for ci in range(nx):
        for cj in range(nz):
            pre_ids = by_cell[cell_ptr[ci * nz + cj] : cell_ptr[ci * nz + cj + 1]]
            if pre_ids.size == 0:
                continue
            near = []
            for di in range(max(0, ci - reach), min(nx, ci + reach + 1)):
                for dj in range(max(0, cj - reach), min(nz, cj + reach + 1)):
                    # skip cells whose nearest point is beyond the cut-off from every point of ours
                    gap_x = max(abs(di - ci) - 1, 0) * cell
                    gap_z = max(abs(dj - cj) - 1, 0) * cell
                    if gap_x**2 + gap_z**2 <= r_max**2:
                        near.append(by_cell[cell_ptr[di * nz + dj] : cell_ptr[di * nz + dj + 1]])
            cand = np.sort(np.concatenate(near))
            xc, zc, gc = x[cand], z[cand], group[cand]
            step = max(1, _PAIRS_PER_CHUNK // max(cand.size, 1))
            for s in range(0, pre_ids.size, step):
                pre = pre_ids[s : s + step]
                d2 = np.square(x[pre, None] - xc[None, :])
                d2 += np.square(z[pre, None] - zc[None, :])
                p = np.exp(d2 * inv_two_sigma2)
                p *= table[group[pre, None], gc[None, :]]
                p[d2 > r2_max] = 0.0
                p[pre[:, None] == cand[None, :]] = 0.0  # no autapses
                i, j = np.nonzero(rng.random(p.shape, dtype=np.float32) < p)
                chunks_pre.append(pre[i])
                chunks_post.append(cand[j])
                if bar is not None:
                    bar.update(pre.size)
    if bar is not None:
        bar.close()

    # place every chunk at its presynaptic neurons' slots: sorted by (pre, post) without a sort
    degree = np.zeros(n, dtype=np.int64)
    for c in chunks_pre:
        degree += np.bincount(c, minlength=n)
    ptr = np.concatenate([[0], np.cumsum(degree)])
    n_edges = int(ptr[-1])
    post_all = np.empty(n_edges, dtype=np.int32)
    while chunks_pre:  # consume the chunks front to back, freeing each one
        c_pre, c_post = chunks_pre.pop(0), chunks_post.pop(0)
        if c_pre.size == 0:
            continue
        starts = np.flatnonzero(np.r_[True, c_pre[1:] != c_pre[:-1]])
        run = np.diff(np.r_[starts, c_pre.size])
        offset = np.arange(c_pre.size) - np.repeat(starts, run)
        post_all[ptr[c_pre] + offset] = c_post
    pre_all = np.repeat(np.arange(n, dtype=np.int32), degree)
    n_syn = np.empty(n_edges, dtype=np.int16)
    for s in range(0, n_edges, 1 << 22):  # in chunks: no float64 copy of the whole edge list
        part = rng.lognormal(0.0, 0.7, size=min(1 << 22, n_edges - s))
        n_syn[s : s + part.size] = np.minimum(1 + np.floor(part), np.iinfo(np.int16).max)

    type_names = np.concatenate(types) if types else np.zeros(0, str)
    # at the 1 nm resolution of the saved neuron table, so that a cached volume equals a built one
    position = np.column_stack([x, np.concatenate(depth), z]).astype(np.float64).round(3)
    meta = dict(
        source="synthetic-volume",
        seed=seed,
        n_neurons_requested=n_neurons,
        lateral_sigma_um=lateral_sigma_um,
        cutoff_sigmas=cutoff_sigmas,
        extent_um=[round(width, 1), round(height, 1)],
        query_date=datetime.date.today().isoformat(),
        datastack=None,
        materialization_version=None,
        generator="bionic_sparse.connectome.synthetic_volume",
        generator_version=GENERATOR_VERSION,
    )
    return Column(
        neuron_id=np.arange(n, dtype=np.int64),
        cell_type=type_names,
        excitatory=exc_arr,
        layer=np.asarray(LAYERS)[layer_code],
        position=position,
        pre=pre_all,
        post=post_all,
        n_synapses=n_syn,
        size=np.zeros(0, dtype=np.float32),
        meta=meta,
    )


def _cache_root() -> Path:
    from .._native import cache_dir

    return cache_dir() / "volumes"


def cached_volume(
    seed: int = 0,
    n_neurons: int = VOLUME_NEURONS,
    lateral_sigma_um: float = VOLUME_SIGMA_UM,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Column:
    """:func:`synthetic_volume`, built once and then read from ``cache`` (a directory; default
    ``$BIONIC_SPARSE_CACHE/volumes``). The cache key holds every argument and the generator
    version, so a stale volume is never read."""
    root = Path(cache) if cache is not None else _cache_root()
    name = f"volume-v{GENERATOR_VERSION}-seed{seed}-n{n_neurons}-sigma{lateral_sigma_um:g}"
    path = root / name
    if (path / "manifest.json").exists():
        return Column.load(path)
    volume = synthetic_volume(seed=seed, n_neurons=n_neurons, lateral_sigma_um=lateral_sigma_um, progress=progress)
    volume.save(path)
    return volume


def volume_summary(column: Column, distance_bin_um: float = 25.0, sample_pre: int = 400, seed: int = 0) -> dict:
    """Statistics of a volume (or any connectome with soma positions) as a JSON-ready dict:
    neurons per layer, pairs, synapses, in/out degree, connection probability by layer pair and
    by class, and by lateral distance.

    The distance profile is exact for ``sample_pre`` presynaptic neurons drawn at random (all of
    them when there are fewer): the connected fraction of their pairs per ``distance_bin_um`` bin.
    """
    n = column.n_neurons
    pre, post = column.pre, column.post
    layers = [lay for lay in LAYERS if np.any(column.layer == lay)]
    out_deg = np.bincount(pre, minlength=n)
    in_deg = np.bincount(post, minlength=n)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(sample_pre, n), replace=False))
    xz = column.position[:, [0, 2]]
    r_max = float(column.meta.get("cutoff_sigmas", CUTOFF_SIGMAS) * column.meta.get("lateral_sigma_um", 75.0))
    edges_um = np.arange(0.0, r_max + 2 * distance_bin_um, distance_bin_um)
    pairs = np.zeros(edges_um.size - 1)
    connected = np.zeros(edges_um.size - 1)
    ptr = np.searchsorted(pre, np.arange(n + 1)) if np.all(pre[1:] >= pre[:-1]) else None
    for i in chosen:
        d = np.sqrt(((xz - xz[i]) ** 2).sum(1))
        d[i] = np.inf
        pairs += np.histogram(d, edges_um)[0]
        targets = post[ptr[i] : ptr[i + 1]] if ptr is not None else post[pre == i]
        connected += np.histogram(d[targets], edges_um)[0]
    summary = column.summary()
    return dict(
        n_neurons=n,
        n_connections=int(pre.size),
        n_synapses=int(column.n_synapses.sum(dtype=np.int64)),
        neurons={lay: summary.neurons[lay] for lay in layers},
        layer_connection_probability={f"{a}->{b}": p for (a, b), p in summary.layer_connection_probability.items()},
        ei_connection_probability={f"{a}->{b}": p for (a, b), p in summary.ei_connection_probability.items()},
        out_degree=dict(mean=float(out_deg.mean()), median=float(np.median(out_deg)), max=int(out_deg.max())),
        in_degree=dict(mean=float(in_deg.mean()), median=float(np.median(in_deg)), max=int(in_deg.max())),
        probability_by_distance=[
            dict(from_um=float(a), to_um=float(b), pairs=int(m), connected=int(k), p=float(k / m) if m else None)
            for a, b, m, k in zip(edges_um[:-1], edges_um[1:], pairs, connected, strict=True)
        ],
        sampled_pre=int(chosen.size),
        meta=json.loads(json.dumps(column.meta, default=str)),
    )
