"""The whole-volume model: a conv front end drives the L4 neurons of a connectome volume, which
runs ``steps`` recurrent steps through its one square matrix; the readout sees chosen layers.

``[B, 1, 48, 48]`` -> front end -> retinotopic input to L4 -> ``steps`` x (volume matrix ->
LayerNorm -> ReLU) -> readout from ``readout_layers`` -> logits ``[B, 7]``.

* **Retinotopy**: the front end's last feature map is ``front_pool x front_pool`` cells; each L4
  neuron reads the cell under its soma (lateral position over the volume's extent) through its own
  weights over the channels (``n_L4 x channels`` parameters, no dense projection).
* **Recurrence**: ``h_1 = relu(norm(inject(u)))``, ``h_{t+1} = relu(norm(W h_t + inject(u)))``
  with ``W`` the volume's synapses (:class:`~bionic_sparse.SparseConnectomeLinear`, Dale's law
  with graded inhibition as a per-presynaptic sign, synaptic noise per step) and ``u`` the L4
  input, held for all steps. Plasticity (Hebbian + homeostasis) is recorded at the last step.
* **Storage**: ``block_size="auto"`` (:func:`~bionic_sparse.storage_plan`): at neuron resolution
  the volume's blocks are nearly empty, so the synapses are stored as one CSR (8 bytes each).
* **Neuron order**: the volume is renumbered (``order``, :mod:`bionic_sparse.connectome.reorder`)
  for locality; :meth:`VolumeModel.to_original` maps activities back to the connectome's order.
* **Controls**: ``masks="random"`` (as many synapses between uniformly random pairs) and
  ``masks="rewired"`` (degree-preserving: every neuron keeps its in- and out-degree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..connectome import LAYERS, load_connectome
from ..connectome.reorder import ORDERS, reorder, to_original
from ..nn import SparseConnectomeLinear
from ..plasticity import NOISE_MODES
from .common import N_CLASSES, ModelConfigFields, check_shared_fields, conv_stack

__all__ = ["VolumeConfig", "VolumeModel", "random_edges", "rewired_edges"]

VOLUME_MASKS = ("connectome", "random", "rewired")


@dataclass
class VolumeConfig(ModelConfigFields):
    """Configuration of :class:`VolumeModel` (the trainer's ``model_config`` for ``model="volume"``)."""

    connectome: str = "volume"  # "volume" (synthetic, cached), a saved Column directory or a .h5 file
    connectome_seed: int = 0
    n_neurons: int = 82_247  # for connectome="volume"
    order: str = "laminar-spatial"
    masks: str = "connectome"  # or "random", "rewired"
    steps: int = 3
    input_layer: str = "L4"
    readout_layers: tuple[str, ...] = ("L23", "L5")
    signed: bool = True
    g_inh: float = 1.0
    noise_sigma: float = 0.05
    noise_mode: str = "multiplicative"
    hebbian_eta: float = 1e-5
    oja: float = 1.0
    homeostasis_rate: float = 0.001
    target_rate: float = 0.5
    front_channels: tuple[int, ...] = (32, 64, 128)
    front_pool: int = 6
    dropout: float = 0.3
    block_size: int | str = "auto"

    def __post_init__(self) -> None:
        self.readout_layers = tuple(self.readout_layers)
        self.front_channels = tuple(self.front_channels)
        if self.masks not in VOLUME_MASKS:
            raise ValueError(f"model_config.masks must be one of {VOLUME_MASKS}, got {self.masks!r}")
        if self.order not in ORDERS:
            raise ValueError(f"model_config.order must be one of {ORDERS}, got {self.order!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"model_config.noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        for name in ("steps", "front_pool", "n_neurons"):
            if getattr(self, name) < 1:
                raise ValueError(f"model_config.{name} must be >= 1, got {getattr(self, name)}")
        for lay in (self.input_layer, *self.readout_layers):
            if lay not in LAYERS:
                raise ValueError(f"model_config layer {lay!r} is not one of {LAYERS}")
        if not self.readout_layers:
            raise ValueError("model_config.readout_layers must name at least one layer")
        check_shared_fields(self)


def random_edges(n: int, n_edges: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_edges`` distinct ordered pairs ``(pre, post)`` of ``n`` neurons, uniformly at random,
    no autapses; sorted by (pre, post). Drawn in chunks: memory stays near the result's."""
    if n_edges < 0 or n_edges > n * (n - 1):
        raise ValueError(
            f"n_edges: expected 0..{n * (n - 1)} (ordered pairs of {n} neurons without autapses), got {n_edges}"
        )
    rng = np.random.default_rng(seed)
    keys = np.zeros(0, dtype=np.int64)
    while keys.size < n_edges:
        need = n_edges - keys.size
        draw = rng.integers(0, n * n, size=int(need * 1.05) + 16, dtype=np.int64)
        draw = draw[draw // n != draw % n]
        keys = np.unique(np.concatenate([keys, draw]))
    if keys.size > n_edges:  # drop a random surplus, not the largest keys
        keys = np.sort(rng.choice(keys, size=n_edges, replace=False))
    return (keys // n).astype(np.int32), (keys % n).astype(np.int32)


def rewired_edges(pre: np.ndarray, post: np.ndarray, n: int, seed: int, rounds: int = 20) -> tuple:
    """Degree-preserving rewiring: the targets are shuffled across all edges (every neuron keeps
    its out-degree and in-degree), then edges that became autapses or duplicates are shuffled
    again among themselves and a random sample of the rest, ``rounds`` times; what still collides
    is dropped. Returns ``(pre, post, n_dropped)`` sorted by (pre, post)."""
    rng = np.random.default_rng(seed)
    pre = pre.astype(np.int32, copy=True)
    post = rng.permutation(post.astype(np.int32))
    for _ in range(rounds):
        key = pre.astype(np.int64) * n + post
        order = np.argsort(key, kind="stable")
        sk = key[order]
        dup = np.zeros(key.size, dtype=bool)
        dup[order[1:][sk[1:] == sk[:-1]]] = True
        bad = np.flatnonzero(dup | (pre == post))
        if bad.size == 0:
            break
        partners = rng.choice(key.size, size=bad.size, replace=False)
        # distinct indices: a repeated index would copy one target over another's and change
        # the in-degrees, which the permutation among distinct slots keeps
        swap = np.unique(np.concatenate([bad, partners]))
        post[swap] = post[rng.permutation(swap)]
    key = pre.astype(np.int64) * n + post
    keep = pre != post
    key = key[keep]
    uniq = np.unique(key)
    dropped = int(pre.size - uniq.size)
    return (uniq // n).astype(np.int32), (uniq % n).astype(np.int32), dropped


class VolumeModel(nn.Module):
    """Input ``[B, 1, 48, 48]`` -> logits ``[B, 7]`` through a recurrent connectome volume (see the
    module docstring). Plasticity: call :meth:`after_optimizer_step` after each optimiser step."""

    def __init__(self, cfg: VolumeConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VolumeConfig()
        kwargs = {"n_neurons": cfg.n_neurons} if cfg.connectome == "volume" else {}
        column = load_connectome(cfg.connectome, seed=cfg.connectome_seed, **kwargs)
        column, order = reorder(column, cfg.order)
        n = column.n_neurons
        pre, post = column.pre, column.post
        self.rewiring_dropped = 0
        if cfg.masks == "random":
            pre, post = random_edges(n, pre.size, seed=cfg.connectome_seed + 1)
        elif cfg.masks == "rewired":
            pre, post, self.rewiring_dropped = rewired_edges(pre, post, n, seed=cfg.connectome_seed + 1)
        self.n_neurons = n
        self.register_buffer("order", torch.from_numpy(order.astype(np.int64)), persistent=False)
        exc = torch.from_numpy(column.excitatory)
        sign = torch.where(exc, 1.0, -cfg.g_inh) if cfg.signed else None
        self.volume = SparseConnectomeLinear(
            n,
            n,
            mask=_edge_matrix(post, pre, n),
            block_size=cfg.block_size,
            sign=sign,
            noise_sigma=cfg.noise_sigma,
            noise_mode=cfg.noise_mode,
        )
        del pre, post
        self.n_synapses = self.volume.storage()["synapses"]

        layers, channels = conv_stack(cfg.front_channels, cfg.front_pool)
        self.front = nn.Sequential(*layers)
        self.front.to(memory_format=torch.channels_last)
        # retinotopy: the feature-map cell under each input neuron's soma
        inputs = np.flatnonzero(column.layer == cfg.input_layer)
        if inputs.size == 0:
            raise ValueError(f"the connectome has no {cfg.input_layer} neurons to take the input")
        xz = column.position[inputs][:, [0, 2]]
        lo, hi = xz.min(0), xz.max(0)
        cell = np.minimum(((xz - lo) / np.maximum(hi - lo, 1e-9) * cfg.front_pool).astype(np.int64), cfg.front_pool - 1)
        cell_id = cell[:, 0] * cfg.front_pool + cell[:, 1]
        by_cell = np.argsort(cell_id, kind="stable")
        self.register_buffer("input_index", torch.from_numpy(inputs[by_cell]), persistent=False)
        counts = np.bincount(cell_id, minlength=cfg.front_pool**2)
        self.cell_counts = counts.tolist()
        self.input_weight = nn.Parameter(torch.randn(inputs.size, channels) / math.sqrt(channels))
        self.input_bias = nn.Parameter(torch.zeros(inputs.size))
        self.norm = nn.LayerNorm(n)
        readout = np.flatnonzero(np.isin(column.layer, cfg.readout_layers))
        self.register_buffer("readout_index", torch.from_numpy(readout), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.readout = nn.Linear(readout.size, N_CLASSES)
        self.plastic = cfg.hebbian_eta > 0 or cfg.homeostasis_rate > 0
        self.volume.record_activity = self.plastic

    def connectome_layers(self) -> list[nn.Module]:
        return [self.volume]

    def _input(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, p, p]`` -> the input current of every neuron ``[B, n]`` (zero off the input layer)."""
        cells = features.flatten(2).permute(2, 0, 1)  # [p * p, B, C]
        parts, start = [], 0
        for k, count in enumerate(self.cell_counts):
            if count:
                w = self.input_weight[start : start + count]  # [count, C]
                parts.append(cells[k] @ w.t())
                start += count
        u = torch.cat(parts, 1) + self.input_bias  # [B, n_in], in input_index order
        full = u.new_zeros(u.shape[0], self.n_neurons)
        return full.index_copy(1, self.input_index, u)

    def forward(self, x: torch.Tensor, return_state: bool = False) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        drive = self._input(self.front(x).float())
        h = torch.relu(self.norm(drive))
        for t in range(1, self.cfg.steps):
            last = t == self.cfg.steps - 1
            with self.volume.recording(last):  # plasticity from the last step's activities
                h = torch.relu(self.norm(self.volume(h) + drive))
        if return_state:
            return h
        return self.readout(self.dropout(h.index_select(1, self.readout_index)))

    def to_original(self, state: torch.Tensor) -> torch.Tensor:
        """Per-neuron values ``[..., n]`` in the model's order -> the connectome's neuron order."""
        return torch.from_numpy(to_original(state.detach().cpu().numpy(), self.order.cpu().numpy()))

    @torch.no_grad()
    def after_optimizer_step(self, plasticity_scale: float = 1.0) -> None:
        """Dale projection, then Hebbian + homeostatic plasticity from the recorded step."""
        self.volume.constrain_()
        if self.plastic and self.training and self.volume.has_recorded_step:
            self.volume.plasticity_step(
                eta=self.cfg.hebbian_eta * plasticity_scale,
                oja=self.cfg.oja,
                target_rate=self.cfg.target_rate,
                homeo_rate=self.cfg.homeostasis_rate * plasticity_scale,
            )


def _edge_matrix(post: np.ndarray, pre: np.ndarray, n: int):
    """The synapses as a scipy COO matrix ``[post, pre]`` (int32 indices, no values copied)."""
    import scipy.sparse as sp

    return sp.coo_matrix((np.ones(post.size, dtype=np.int8), (post, pre)), shape=(n, n))
