"""BioNIC: conv retinotopic front end -> laminar connectome stack -> 7-way readout, and the
conventional baseline of the same size. Every biological feature is a switch in
:class:`BioNICConfig` (the ablation grid flips them one at a time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..connectome import laminar_masks, load_connectome
from ..nn import MaskedLinear, SparseConnectomeLinear
from ..plasticity import NOISE_MODES
from .common import N_CLASSES, ModelConfigFields, check_shared_fields, conv_stack

__all__ = ["BioNICConfig", "BioNIC", "ConventionalBaseline", "N_CLASSES"]

MASK_KINDS = ("connectome", "dense", "random", "rewired", "shuffled_laminae", "none")


@dataclass
class BioNICConfig(ModelConfigFields):
    """Model configuration (defaults: the full biological model)."""

    connectome: str = "synthetic"  # "synthetic" or a cached Column directory
    connectome_seed: int = 0
    pathway: tuple[str, ...] = ("L4", "L23", "L5", "L6")
    units_per_neuron: int = 16
    block_size: int = 16
    # one of MASK_KINDS. "random", "rewired", "shuffled_laminae": the controls of laminar_masks;
    # "dense": all-to-all laminar layers that keep the biology (Dale signs, noise, plasticity);
    # "none": plain nn.Linear layers without any of it (the baseline).
    masks: str = "connectome"
    signed: bool = True  # Dale's law with graded inhibition
    g_inh: float = 1.0
    noise_sigma: float = 0.05
    noise_mode: str = "multiplicative"
    hebbian_eta: float = 1e-5
    oja: float = 1.0
    homeostasis_rate: float = 0.001
    target_rate: float = 0.5
    layernorm: bool = True
    conv_front_end: bool = True
    front_channels: tuple[int, ...] = (32, 64, 128)
    front_pool: int = 3
    dropout: float = 0.3
    execution: str = "sparse"  # "sparse" (block-sparse engine) or "dense_masked"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.masks not in MASK_KINDS:
            raise ValueError(f"masks must be one of {MASK_KINDS}, got {self.masks!r}")
        if self.execution not in ("sparse", "dense_masked"):
            raise ValueError(f"execution must be 'sparse' or 'dense_masked', got {self.execution!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        self.pathway = tuple(self.pathway)
        self.front_channels = tuple(self.front_channels)
        for name in ("units_per_neuron", "block_size", "front_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"model_config.{name} must be >= 1, got {getattr(self, name)}")
        check_shared_fields(self)


def _front_end(cfg: BioNICConfig) -> tuple[nn.Module, int]:
    """VGG-style conv stack (local, weight-shared: retinotopic); returns (module, feature size)."""
    if not cfg.conv_front_end:
        return nn.Flatten(), 48 * 48
    layers, channels = conv_stack(cfg.front_channels, cfg.front_pool)
    return nn.Sequential(*layers, nn.Flatten()), channels * cfg.front_pool**2


class BioNIC(nn.Module):
    """Input ``[B, 1, 48, 48]`` -> logits ``[B, 7]``.

    front end -> dense projection to L4 (the connectome has no retina) -> LayerNorm -> ReLU ->
    for each laminar projection (L4 -> L2/3 -> L5 -> L6): connectome layer -> LayerNorm -> ReLU ->
    readout. Plasticity: call :meth:`after_optimizer_step` after each optimiser step.
    """

    def __init__(self, cfg: BioNICConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or BioNICConfig()
        column = load_connectome(cfg.connectome, seed=cfg.connectome_seed)
        control = cfg.masks if cfg.masks in ("random", "rewired", "shuffled_laminae") else None
        stack = laminar_masks(
            column,
            pathway=cfg.pathway,
            units_per_neuron=cfg.units_per_neuron,
            block_size=cfg.block_size,
            g_inh=cfg.g_inh,
            control=control,
            seed=cfg.connectome_seed,
        )
        self.widths = [stack.sizes[lay] for lay in cfg.pathway]
        self.front, n_features = _front_end(cfg)
        # NOTE: the conv front end runs in channels_last: on the 2-core CI machine (CPU, oneDNN,
        # one thread, batch 64) its forward + backward took 0.65x the time of the NCHW layout
        # (max-pool forward 17 -> 5 ms); ``.to(device)`` and ``load_state_dict`` keep the layout.
        self.front.to(memory_format=torch.channels_last)
        self.project = nn.Linear(n_features, self.widths[0])
        norm = (lambda n: nn.LayerNorm(n)) if cfg.layernorm else (lambda n: nn.Identity())
        self.norms = nn.ModuleList([norm(w) for w in self.widths])
        self.laminar = nn.ModuleList()
        for lm in stack.layers:
            n_out, n_in = lm.shape
            if cfg.masks == "none":
                self.laminar.append(nn.Linear(n_in, n_out))
                continue
            layer = SparseConnectomeLinear(
                n_in,
                n_out,
                mask=None if cfg.masks == "dense" else lm.mask,  # None: every block present
                block_size=cfg.block_size,
                sign=lm.sign if cfg.signed else None,
                noise_sigma=cfg.noise_sigma,
                noise_mode=cfg.noise_mode,
            )
            self.laminar.append(MaskedLinear(layer) if cfg.execution == "dense_masked" else layer)
        self.dropout = nn.Dropout(cfg.dropout)
        self.readout = nn.Linear(self.widths[-1], N_CLASSES)
        self.plastic = cfg.hebbian_eta > 0 or cfg.homeostasis_rate > 0
        for layer in self.connectome_layers():
            layer.record_activity = self.plastic

    def connectome_layers(self) -> list[nn.Module]:
        return [m for m in self.laminar if isinstance(m, SparseConnectomeLinear | MaskedLinear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.conv_front_end and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        h = torch.relu(self.norms[0](self.project(self.front(x))))
        for layer, norm in zip(self.laminar, self.norms[1:], strict=True):
            h = torch.relu(norm(layer(self.dropout(h))))
        return self.readout(self.dropout(h))

    @torch.no_grad()
    def after_optimizer_step(self, plasticity_scale: float = 1.0) -> None:
        """Dale projection, then Hebbian + homeostatic plasticity from this step's activities;
        ``plasticity_scale`` multiplies both rates (the trainer's ``plasticity_schedule="lr"``)."""
        for layer in self.connectome_layers():
            layer.constrain_()
            if self.plastic and self.training and layer.has_recorded_step:
                layer.plasticity_step(
                    eta=self.cfg.hebbian_eta * plasticity_scale,
                    oja=self.cfg.oja,
                    target_rate=self.cfg.target_rate,
                    homeo_rate=self.cfg.homeostasis_rate * plasticity_scale,
                )


def ConventionalBaseline(cfg: BioNICConfig | None = None) -> BioNIC:  # noqa: N802 (a model factory, used like a class)
    """Same front end and widths as BioNIC, dense unsigned layers, no noise, no plasticity."""
    base = (cfg or BioNICConfig()).to_dict()
    base.update(masks="none", signed=False, noise_sigma=0.0, hebbian_eta=0.0, homeostasis_rate=0.0)
    return BioNIC(BioNICConfig.from_dict(base))
