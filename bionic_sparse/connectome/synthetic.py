"""Synthetic cortical column with published mouse-V1 statistics: the offline default connectome.

Sources (approximate figures; the MICrONs loader gives the real column):

* Neuron counts: 1,183 excitatory and 164 inhibitory neurons in the MICrONs "Minnie column"
  (100 x 100 µm, all layers), as the abstract of the first preprint of the column census gives
  them (Schneider-Mizell et al., "Cell-type-specific inhibitory circuitry from a connectomic census
  of mouse visual cortex", bioRxiv 10.1101/2023.01.23.525290 v1, Jan 2023: "all 1183 excitatory
  neurons within a 100 micron column", "all 164 inhibitory interneurons"). Its later versions
  (v3, Jan 2024; Nature 2025, "Inhibitory specificity from a connectomic census of mouse visual
  cortex") describe a population of 1,352 cells, and the column's reference table
  (``allen_v1_column_types_slanted_ref``) lists ~1,357; the counts here are kept at v1's so that
  results stay comparable. The split per layer below is our approximation of the census's
  subclass counts (excitatory types carry their layer: 23P, 4P, 5P-IT/ET/NP, 6P-IT/CT).
* Layer depths (µm below the pia): approximate mouse-V1 boundaries used to place somata.
* Connection probabilities: within-column values for mouse V1 in the ranges reported by
  multi-patch recordings at < 100 µm intersomatic distance (Campagnola et al., "Local
  connectivity and synaptic dynamics in mouse and human neocortex", Science 375, eabj5861, 2022:
  E->E mostly 0.01-0.1, strongest L4->L2/3 and within L4/L5; E->I and I->E 0.2-0.5) and the
  layer-to-layer structure of the Allen V1 model (Billeh et al., Neuron 106, 388, 2020).
* Distance dependence: a Gaussian fall-off of lateral distance (sigma 75 µm), normalised so
  that the mean probability over a layer pair equals the table value.
* Synapses per connection: 1 + floor(lognormal(0, 0.7)) (mean ~2, long tail), as multi-synaptic
  connections in EM reconstructions.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same column.
"""

from __future__ import annotations

import datetime

import numpy as np

from .column import Column

__all__ = ["synthetic_column", "LAYER_COUNTS", "LAYER_DEPTH_UM", "connection_probability"]

# (excitatory, inhibitory) neurons per layer; sums to 1,183 E and 164 I.
LAYER_COUNTS: dict[str, tuple[int, int]] = {
    "L1": (0, 12),
    "L23": (365, 52),
    "L4": (268, 28),
    "L5": (225, 38),
    "L6": (325, 34),
}
LAYER_DEPTH_UM: dict[str, tuple[float, float]] = {
    "L1": (0.0, 100.0),
    "L23": (100.0, 290.0),
    "L4": (290.0, 400.0),
    "L5": (400.0, 600.0),
    "L6": (600.0, 900.0),
}
_E_TYPES = {
    "L23": (("23P",), (1.0,)),
    "L4": (("4P",), (1.0,)),
    "L5": (("5P-IT", "5P-ET", "5P-NP"), (0.6, 0.25, 0.15)),
    "L6": (("6P-IT", "6P-CT"), (0.45, 0.55)),
}
_I_TYPES = (("BC", "MC", "BPC", "NGC"), (0.45, 0.25, 0.2, 0.1))

# E -> E probability, pre layer -> post layer (Campagnola 2022 ranges, Billeh 2020 structure).
_EE = {
    ("L23", "L23"): 0.05,
    ("L23", "L4"): 0.01,
    ("L23", "L5"): 0.05,
    ("L23", "L6"): 0.01,
    ("L4", "L23"): 0.06,
    ("L4", "L4"): 0.08,
    ("L4", "L5"): 0.03,
    ("L4", "L6"): 0.01,
    ("L5", "L23"): 0.02,
    ("L5", "L4"): 0.01,
    ("L5", "L5"): 0.06,
    ("L5", "L6"): 0.02,
    ("L6", "L23"): 0.005,
    ("L6", "L4"): 0.02,
    ("L6", "L5"): 0.01,
    ("L6", "L6"): 0.03,
}
_ORDER = ("L1", "L23", "L4", "L5", "L6")
LATERAL_SIGMA_UM = 75.0


def connection_probability(pre_layer: str, pre_exc: bool, post_layer: str, post_exc: bool) -> float:
    """Mean connection probability of the class/layer pair (before distance dependence)."""
    same = pre_layer == post_layer
    adjacent = abs(_ORDER.index(pre_layer) - _ORDER.index(post_layer)) == 1
    if pre_exc and post_exc:
        return _EE.get((pre_layer, post_layer), 0.0)
    if pre_exc:  # E -> I
        return 0.25 if same else (0.08 if adjacent else 0.01)
    if post_exc:  # I -> E
        return 0.35 if same else (0.10 if adjacent else 0.01)
    return 0.20 if same else (0.05 if adjacent else 0.0)  # I -> I


def synthetic_column(seed: int = 0, scale: float = 1.0, lateral_sigma_um: float = LATERAL_SIGMA_UM) -> Column:
    """A deterministic synthetic column.

    Args:
        seed: RNG seed.
        scale: multiplies every layer's neuron counts (for small test columns).
        lateral_sigma_um: width of the Gaussian lateral fall-off of connection probability.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(seed)
    layers, exc, types, depth = [], [], [], []
    for layer, (n_e, n_i) in LAYER_COUNTS.items():
        n_e, n_i = round(n_e * scale), round(n_i * scale)
        lo, hi = LAYER_DEPTH_UM[layer]
        if n_e:
            names, probs = _E_TYPES[layer]
            types.append(rng.choice(names, size=n_e, p=probs))
        if n_i:
            types.append(rng.choice(_I_TYPES[0], size=n_i, p=_I_TYPES[1]))
        layers += [layer] * (n_e + n_i)
        exc += [True] * n_e + [False] * n_i
        depth.append(rng.uniform(lo, hi, n_e + n_i))
    n = len(layers)
    layer_arr = np.asarray(layers)
    exc_arr = np.asarray(exc, dtype=bool)
    xz = rng.uniform(0.0, 100.0, size=(n, 2))
    position = np.column_stack([xz[:, 0], np.concatenate(depth) if depth else np.zeros(0), xz[:, 1]])

    # Base probability of every ordered pair from its (layer, class) group, vectorised per group.
    groups = [(lay, e) for lay in LAYER_COUNTS for e in (True, False)]
    group_of = np.zeros(n, dtype=np.int64)
    for g, (lay, e) in enumerate(groups):
        group_of[(layer_arr == lay) & (exc_arr == e)] = g
    table = np.array([[connection_probability(a[0], a[1], b[0], b[1]) for b in groups] for a in groups])
    p = table[group_of[:, None], group_of[None, :]]  # [pre, post]
    d2 = ((xz[:, None, :] - xz[None, :, :]) ** 2).sum(-1)
    falloff = np.exp(-d2 / (2 * lateral_sigma_um**2))
    np.fill_diagonal(falloff, 0.0)
    off_diag = ~np.eye(n, dtype=bool)
    p = np.clip(p * falloff / max(falloff[off_diag].mean(), 1e-12), 0.0, 1.0)
    np.fill_diagonal(p, 0.0)
    pre, post = np.nonzero(rng.random((n, n)) < p)
    n_syn = 1 + np.floor(rng.lognormal(0.0, 0.7, size=pre.size)).astype(np.int64)
    size = n_syn * rng.lognormal(np.log(5000.0), 0.5, size=pre.size)
    meta = dict(
        source="synthetic",
        seed=seed,
        scale=scale,
        lateral_sigma_um=lateral_sigma_um,
        query_date=datetime.date.today().isoformat(),
        datastack=None,
        materialization_version=None,
        generator="bionic_sparse.connectome.synthetic_column",
    )
    return Column(
        neuron_id=np.arange(n, dtype=np.int64),
        cell_type=np.concatenate(types) if types else np.zeros(0, str),
        excitatory=exc_arr,
        layer=layer_arr,
        position=position,
        pre=pre,
        post=post,
        n_synapses=n_syn,
        size=size.round(1),
        meta=meta,
    )
