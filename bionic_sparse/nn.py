"""``SparseConnectomeLinear``: a drop-in ``nn.Linear`` whose weight lives on a connectome mask."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import functional as F
from .format import BlockSparseMatrix, as_mask_tensor, storage_plan
from .plasticity import NOISE_MODES, dense_plasticity, post_moments, update_rate_

__all__ = ["SparseConnectomeLinear", "MaskedLinear", "DenseWeight", "allow_rewiring", "parameter_counts"]

_INDEX_NAMES = ("crow", "col", "row", "ccol_t", "row_t", "perm_t")
_SEEDS_KEPT = 64  # seeds of recent forwards that activation checkpointing may recompute


def _topology(mask: Any, out_features: int, in_features: int, block_size: int | str) -> BlockSparseMatrix:
    if isinstance(mask, torch.Tensor) and mask.is_meta:
        raise ValueError(
            "mask is on the meta device, so it holds no wiring: make the mask outside the torch.device('meta') "
            "context (e.g. torch.ones(..., device='cpu')); the layer itself may still be built on meta"
        )
    if mask is None:
        block_size = 32 if block_size == "auto" else block_size
        R, C = math.ceil(out_features / block_size), math.ceil(in_features / block_size)
        return BlockSparseMatrix.from_block_mask(
            torch.ones(R, C, dtype=torch.bool), block_size, (out_features, in_features)
        )
    if isinstance(mask, BlockSparseMatrix):
        topo = mask
        if block_size != "auto" and topo.block_size != block_size:
            raise ValueError(f"mask has block_size {topo.block_size} but block_size={block_size} was given")
    else:
        if hasattr(mask, "tocoo"):
            coo = mask.tocoo()
            post, pre = torch.from_numpy(coo.row.astype("int64")), torch.from_numpy(coo.col.astype("int64"))
            shape = tuple(coo.shape)
        else:
            dense = as_mask_tensor(mask)
            post, pre = dense.nonzero(as_tuple=True)
            shape = tuple(dense.shape)
        if block_size == "auto":
            plan = storage_plan(post, pre, shape)
            block_size = plan.block_size if plan.method == "block" else 1
        if block_size == 1:  # element storage: one CSR of the synapses
            topo = BlockSparseMatrix.from_synapses(post, pre, shape)
        elif hasattr(mask, "tocoo"):
            topo = BlockSparseMatrix.from_scipy(mask, block_size)
        else:
            topo = BlockSparseMatrix.from_dense(dense, block_size)
    if topo.shape != (out_features, in_features):
        raise ValueError(
            f"mask must have shape (out_features, in_features) = {(out_features, in_features)}, got {topo.shape}"
        )
    return topo


# in-place Tensor methods whose names do not end in "_"
_INPLACE_OPS = (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and",
    "or",
    "xor",
    "lshift",
    "rshift",
)
_INPLACE_DUNDERS = {f"__i{op}__" for op in _INPLACE_OPS} | {"__setitem__", "__set__"}


class DenseWeight(torch.Tensor):
    """What :attr:`SparseConnectomeLinear.weight` returns: the effective dense weight, attached to
    the autograd graph of the stored blocks. Every operation works and returns a plain tensor,
    except writing into it, which raises instead of silently changing nothing."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))  # nn.init passes tensor=
        writes = isinstance(target, cls) and (
            (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS
        )
        if writes or isinstance(kwargs.get("out"), cls):
            raise RuntimeError(
                f"SparseConnectomeLinear.weight is computed from the stored blocks (W * M * sign, dense); "
                f"writing into it ({name or 'out='}) would not change the layer: write into layer.values "
                "([nnzb, b, b], e.g. nn.init on layer.values) or build the layer with from_linear()"
            )
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a.cpu(), b.cpu())


@contextlib.contextmanager
def allow_rewiring(model: nn.Module):
    """Within this block, ``model.load_state_dict`` may replace the wiring of the model's
    :class:`SparseConnectomeLinear` layers with the state_dict's (their ``load_wiring`` flag);
    outside it, a state_dict with another wiring is refused with an error naming the layer."""
    layers = [m for m in model.modules() if isinstance(m, SparseConnectomeLinear)]
    before = [m.load_wiring for m in layers]
    for m in layers:
        m.load_wiring = True
    try:
        yield model
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.load_wiring = flag


class _PlasticityMixin:
    """The plasticity protocol shared by the sparse and the dense-masked layer: record activity
    in the training step, then ``plasticity_step`` after the optimiser step."""

    def _plastic_weight(self) -> torch.Tensor:  # the tensor plasticity and Dale act on
        raise NotImplementedError

    def _apply_plasticity(self, eta, oja, target_rate, homeo_rate, rate_momentum) -> None:
        """Update ``post_rate`` from the recorded activity, then the weights."""
        raise NotImplementedError

    @property
    def has_recorded_step(self) -> bool:
        """True between a recording training forward and the :meth:`plasticity_step` that uses it."""
        return self.last_pre is not None

    def _keep_activities(self, pre: torch.Tensor, post: torch.Tensor) -> None:
        """Keep references (not copies) to a training forward's activities, with their versions."""
        self.last_pre, self.last_post = pre.detach(), post.detach()
        self._kept_versions = (self.last_pre._version, self.last_post._version)

    def _take_activities(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.last_pre is None or self.last_post is None:
            raise RuntimeError("plasticity_step needs record_activity=True and a training forward first")
        pre, post = self.last_pre, self.last_post
        self.last_pre = self.last_post = None
        if (pre._version, post._version) != self._kept_versions:
            raise RuntimeError(
                f"{type(self).__name__}.plasticity_step: the layer's input or output was changed in place after the "
                "forward (e.g. relu_ or +=), so the activities it would learn from are not the ones the forward "
                "computed; avoid in-place ops on them, or run the recording forward with gradients and its backward"
            )
        return pre, post

    @torch.no_grad()
    def plasticity_step(
        self,
        eta: float,
        oja: float = 1.0,
        target_rate: float = 0.1,
        homeo_rate: float = 0.0,
        rate_momentum: float = 0.9,
    ) -> None:
        """Apply one Hebbian + homeostatic update in place from the last recorded training step.

        Needs ``record_activity = True`` and a training-mode forward since the last call (and its
        backward, when the forward ran with gradients). The rate EMA ``post_rate`` is updated from
        the batch mean of ``|post|`` first.
        """
        self._apply_plasticity(eta, oja, target_rate, homeo_rate, rate_momentum)
        if self.sign is not None:  # a weight at zero may not grow negative under Dale's law
            self._plastic_weight().clamp_(min=0.0)


class SparseConnectomeLinear(_PlasticityMixin, nn.Module):
    """Linear layer ``y = x @ (W * M * sign)^T + bias`` with ``W`` stored block-sparse.

    Args:
        in_features, out_features: as in ``nn.Linear``.
        mask: synapse mask ``[out_features, in_features]``: a bool/float tensor, a scipy sparse
            matrix, or a :class:`BlockSparseMatrix`; ``None`` means fully connected.
        bias: learn an additive bias.
        block_size: ``b`` of the ``b x b`` blocks (a power of two >= 16 to run on a GPU); ``1``
            stores the synapses alone as one CSR (element storage, for wiring that fills few
            blocks, e.g. a volume at neuron resolution; on a GPU the ``csr_linear`` kernels); ``"auto"`` picks
            blocks or element storage from the mask's fill (:func:`~bionic_sparse.storage_plan`;
            :meth:`storage` reports the choice).
        sign: ``[in_features]`` per-presynaptic sign/gain (Dale's law: ``+1`` excitatory,
            ``-g`` inhibitory). With a sign the weights are initialised non-negative and
            :meth:`constrain_` keeps them so.
        noise_sigma, noise_mode: training-only synaptic noise (``"multiplicative"`` or
            ``"additive"``), regenerated from a per-step seed, never stored.

    Parameters and buffers: ``values[nnzb, b, b]`` (the ``nn.Parameter``), int32 index buffers
    ``crow, col, row, ccol_t, row_t, perm_t``, ``synapse_mask`` (or ``None``), ``sign`` (or
    ``None``) and ``post_rate[out_features]`` (EMA of the mean output, for homeostasis). The
    noise counters ``noise_seed`` and ``noise_step`` are saved in ``state_dict`` (extra state).

    Plasticity: with ``record_activity = True`` a training step records what
    :meth:`plasticity_step` needs. When the forward pass runs with gradients, the forward writes
    the activity statistics and the backward's weight-gradient pass writes the Hebbian correlation
    from the same tiles (:class:`~bionic_sparse.functional.ActivityRecord`), so the step after the
    optimiser is one elementwise pass over the weights. Without a backward pass (Hebbian-only use,
    e.g. under ``torch.no_grad()``) the step computes the correlation from ``last_pre`` and
    ``last_post``, the activities the forward pass kept.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: Any = None,
        bias: bool = True,
        block_size: int | str = 32,
        sign: torch.Tensor | None = None,
        noise_sigma: float = 0.0,
        noise_mode: str = "multiplicative",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("block_size", block_size)):
            if name == "block_size" and v == "auto":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                what = "a positive int or 'auto'" if name == "block_size" else "a positive int"
                raise ValueError(f"{name} must be {what}, got {v!r}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if not math.isfinite(noise_sigma) or noise_sigma < 0:
            raise ValueError(f"noise_sigma must be finite and >= 0, got {noise_sigma}")
        if device is not None and torch.device(device).type == "cuda" and block_size != "auto":
            F.check_gpu_block_size(block_size)
        # the device of the layer's tensors: ``device``, else the default (a ``torch.device``
        # context manager included, e.g. "meta" for deferred initialisation)
        device = torch.device(device) if device is not None else torch.empty(0).device
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        self.in_features = in_features
        self.out_features = out_features
        self.noise_sigma = float(noise_sigma)
        self.noise_mode = noise_mode
        self._record_activity = False
        self._record: F.ActivityRecord | None = None
        if sign is not None:
            F.check_vector(sign, in_features, "sign", "presynaptic input")
        # The wiring is data, not an initialisation: it is built on the CPU whatever the default
        # device, and a layer built on "meta" keeps a CPU copy that materialising restores.
        with torch.device("cpu"):
            topo = _topology(mask, out_features, in_features, block_size)
            wiring = {**topo.index_tensors(), "synapse_mask": topo.synapse_mask}
            wiring["sign"] = None if sign is None else sign.detach().to("cpu", factory["dtype"])
        self.block_size = block_size = topo.block_size
        self._meta_wiring = wiring if device.type == "meta" else None
        for name, t in wiring.items():
            # copies: a layer never shares its wiring with another layer or with ``mask``
            self.register_buffer(name, None if t is None else t.to(device, copy=True))
        self.register_buffer("post_rate", torch.zeros(out_features, **factory))
        self.blocks = nn.Parameter(torch.empty(topo.nnzb, block_size, block_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.noise_seed = int(torch.randint(0, 2**31 - 1, (), device="cpu").item())
        # NOTE: the step counter is a CPU tensor, so that a compiled forward takes the seed as an
        # input instead of baking a new constant into every step's graph (one recompile per step)
        self._noise_counter = torch.zeros((), dtype=torch.int64, device="cpu")
        self.load_wiring = False  # load_state_dict: refuse a state_dict with another wiring
        self._issued_seeds: list[torch.Tensor] = []  # for forwards recomputed by checkpointing
        self.last_pre: torch.Tensor | None = None
        self.last_post: torch.Tensor | None = None
        self.reset_parameters()

    def __setattr__(self, name: str, value: Any) -> None:
        # "values" is the stored blocks' old name: ``layer.values -= lr * grad`` keeps working
        super().__setattr__("blocks" if name == "values" else name, value)

    @property
    def values(self) -> torch.Tensor:
        """The stored weights ``[nnzb, b, b]``: the parameter ``blocks`` (or its parametrized value
        when a ``torch.nn.utils.parametrize`` parametrization is registered on ``blocks``)."""
        return self.blocks

    @property
    def matrix(self) -> BlockSparseMatrix:
        """The topology as a :class:`BlockSparseMatrix` sharing this module's tensors."""
        parts = {name: getattr(self, name) for name in _INDEX_NAMES}
        parts.update(
            values=self.values,
            synapse_mask=self.synapse_mask,
            block_size=self.block_size,
            shape=(self.out_features, self.in_features),
            n_block_rows=self.crow.numel() - 1,
            n_block_cols=self.ccol_t.numel() - 1,
        )
        return BlockSparseMatrix.from_parts(parts)

    @property
    def nnzb(self) -> int:
        return self.values.shape[0]

    def storage(self) -> dict[str, Any]:
        """How the weights are stored: ``method`` (``"element"`` or ``"block"``), ``block_size``,
        ``synapses``, ``stored_values``, ``bytes`` (values, index, synapse mask) and
        ``csr_bytes`` (torch's element-level CSR of the same synapses: float32 values, int64
        indices), for reports and logs."""
        m = self.matrix
        synapses = int(m.element_mask().sum()) if m.synapse_mask is not None else None
        if synapses is None:
            synapses = m.nnzb if m.is_element else int(self.fan_in().sum())
        return dict(
            method="element" if m.is_element else "block",
            block_size=self.block_size,
            synapses=synapses,
            stored_values=int(self.values.numel()),
            bytes=m.storage_bytes(),
            csr_bytes=synapses * 12 + (self.out_features + 1) * 8,
        )

    def fan_in(self) -> torch.Tensor:
        """Synapses per output neuron ``[out_features]`` (the fan-in actually present)."""
        syn = self.matrix.element_mask().sum(-1).to(torch.float64)  # [nnzb, b]
        b, R = self.block_size, self.crow.numel() - 1
        per_row = torch.zeros(R, b, dtype=torch.float64, device=syn.device)
        per_row.index_add_(0, self.matrix.coo_row().long(), syn)
        return per_row.flatten()[: self.out_features]

    def reset_parameters(self) -> None:
        """``U(-1/sqrt(fan_in_i), 1/sqrt(fan_in_i))`` per row, as ``nn.Linear`` but with the
        row's real fan-in; absolute values when a sign vector enforces Dale's law. After
        ``to_empty()`` of a layer built on the meta device, the wiring is restored first."""
        self._restore_wiring()
        with torch.no_grad():
            blocks = self._stored_blocks()
            fan_in = self.fan_in().clamp_min(1.0)
            bound = fan_in.rsqrt().to(blocks.dtype)
            b, R = self.block_size, self.crow.numel() - 1
            padded = torch.zeros(R * b, dtype=bound.dtype, device=bound.device)
            padded[: self.out_features] = bound
            row_bound = padded.view(R, b)[self.matrix.coo_row().long()].unsqueeze(-1)  # [nnzb, b, 1]
            blocks.uniform_(-1.0, 1.0).mul_(row_bound)
            if self.sign is not None:
                blocks.abs_()
            blocks.mul_(self.matrix.element_mask().to(blocks.device))
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0).mul_(bound)
            self.post_rate.zero_()

    def _stored_blocks(self) -> nn.Parameter:
        """The parameter that holds the blocks (what plasticity and Dale's projection change in
        place); a parametrized ``blocks`` has no single stored tensor, so those refuse."""
        if torch.nn.utils.parametrize.is_parametrized(self, "blocks"):
            raise NotImplementedError(
                "SparseConnectomeLinear: 'blocks' carries a parametrization, so its weights are computed, not "
                "stored; plasticity, constrain_() and reset_parameters() change stored weights in place: use them "
                "on a layer without a parametrization (or remove it with parametrize.remove_parametrizations)"
            )
        return self.blocks

    def _restore_wiring(self) -> None:
        """Put the CPU copy of the wiring back into the buffers of a layer that was built on the
        meta device and has since been materialised (``to_empty``): the buffers hold garbage then."""
        if self._meta_wiring is None or self.crow.is_meta:
            return
        with torch.no_grad():
            for name, t in self._meta_wiring.items():
                if t is not None:
                    buf = getattr(self, name)
                    buf.copy_(t.to(buf.dtype))
            self.post_rate.zero_()
        self._meta_wiring = None

    @property
    def noise_step(self) -> int:
        """Noisy training forwards so far: step ``k`` draws its noise with seed ``noise_seed + k``."""
        return int(self._noise_counter)

    @noise_step.setter
    def noise_step(self, step: int) -> None:
        self._noise_counter.fill_(int(step))

    def _next_seed(self) -> torch.Tensor:
        """The seed of this forward's noise (a 0-dim int64 CPU tensor). A forward that activation
        checkpointing recomputes inside the backward pass gets the seed of the forward it repeats
        (the latest one not yet recomputed), as dropout gets its random state back."""
        recomputing = not torch.compiler.is_compiling() and torch._C._current_autograd_node() is not None
        if recomputing and self._issued_seeds:
            return self._issued_seeds.pop()
        seed = self._noise_counter + self.noise_seed
        self._noise_counter.add_(1)
        if not torch.compiler.is_compiling():
            self._issued_seeds = [*self._issued_seeds[-(_SEEDS_KEPT - 1) :], seed]
        return seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.noise_sigma if self.training else 0.0
        seed = self._next_seed() if sigma > 0 else torch.zeros((), dtype=torch.int64)
        recording = self.record_activity and self.training
        fused = recording and torch.is_grad_enabled() and self.values.requires_grad
        matrix = self.matrix
        y = F.bsr_linear(
            x,
            matrix,
            bias=self.bias,
            sign=self.sign,
            noise_sigma=sigma,
            noise_seed=seed,
            noise_mode=self.noise_mode,
            values=self.values,
            record=self._activity_record(matrix) if fused else None,
        )
        if recording and fused:
            # kept for a plasticity step that comes without a backward pass (no copies: autograd
            # holds them anyway); their versions tell if they were changed in place since
            self._keep_activities(x, y)
        elif recording:
            # no backward pass will fill the record: take the statistics now, from what this
            # forward computed (an in-place op on x or y afterwards cannot change them)
            self.last_pre = self.last_post = None
            F.record_activities(matrix, x.detach(), y.detach(), self._activity_record(matrix))
        return y

    @property
    def record_activity(self) -> bool:
        """Record what :meth:`plasticity_step` needs in each training step."""
        return self._record_activity

    @record_activity.setter
    def record_activity(self, on: bool) -> None:
        self._record_activity = bool(on)
        self._record = None
        if on:
            self._activity_record(self.matrix)

    @contextlib.contextmanager
    def recording(self, on: bool) -> Iterator[None]:
        """Within the block, record activities (``on``) or not, then restore the setting; unlike
        setting :attr:`record_activity` this keeps the record, so a module that applies the layer
        several times per step (a recurrent one) can learn from one chosen application."""
        if on and not self._record_activity:
            raise RuntimeError("recording(True) needs record_activity = True (it sets up the record)")
        before = self._record_activity
        self._record_activity = bool(on)
        try:
            yield
        finally:
            self._record_activity = before

    def _activity_record(self, matrix: BlockSparseMatrix) -> F.ActivityRecord:
        """The layer's :class:`ActivityRecord` (scratch, not state). It is made when recording is
        switched on and after a move to another device or dtype, outside the forward pass, so
        that a compiled forward finds it as an input."""
        dtype = torch.promote_types(self.values.dtype, torch.float32)
        record = self._record
        if record is None or not record.matches(matrix, self.values.device) or record.corr.dtype != dtype:
            self._record = record = F.ActivityRecord(matrix, self.values.device, dtype)
        return record

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        # to_empty() of a meta-built layer: the wiring is data, restore it (skip_init included)
        self._restore_wiring()
        if self._record_activity and not self.crow.is_meta:
            self._activity_record(self.matrix)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs):
        # checkpoints written before the parameter was renamed "blocks" (to allow parametrizations)
        if prefix + "values" in state_dict and prefix + "blocks" not in state_dict:
            state_dict[prefix + "blocks"] = state_dict.pop(prefix + "values")
        theirs = {name: state_dict.get(prefix + name) for name in (*_INDEX_NAMES, "synapse_mask")}
        if all(theirs[name] is not None for name in _INDEX_NAMES):
            differs = [name for name, t in theirs.items() if not _same_tensor(t, getattr(self, name))]
            if differs and not self.load_wiring:
                errs.append(
                    f"{prefix or 'SparseConnectomeLinear'}: the state_dict holds another wiring "
                    f"({', '.join(differs)} differ; {theirs['col'].numel()} blocks there, {self.nnzb} here). "
                    "A state_dict carries the layer's wiring with its weights; to replace this layer's wiring "
                    "with it, set load_wiring = True on the layer first (for a whole model: "
                    "bionic_sparse.nn.allow_rewiring(model))"
                )
                return
            if differs:  # asked for: take the other wiring, with its shapes
                self._take_wiring(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errs)

    def _take_wiring(self, state_dict, prefix) -> None:
        """Resize the blocks and the wiring buffers to those of ``state_dict`` (load_wiring=True)."""
        with torch.no_grad():
            for name in (*_INDEX_NAMES, "synapse_mask"):
                t = state_dict.get(prefix + name)
                setattr(self, name, None if t is None else torch.empty_like(t, device=self.crow.device))
            nnzb = state_dict[prefix + "col"].numel()
            b = self.block_size
            self.blocks = nn.Parameter(self.blocks.new_empty(nnzb, b, b), requires_grad=self.blocks.requires_grad)
            self._record = None
            if self._record_activity:
                self._activity_record(self.matrix)

    def get_extra_state(self) -> dict:
        # The noise counters are part of the state: a layer restored from a checkpoint continues
        # the noise sequence instead of replaying step 0's. Kept on the CPU (not buffers), so the
        # forward pass never reads a device tensor back to the host.
        return {"noise_seed": self.noise_seed, "noise_step": self.noise_step}

    def set_extra_state(self, state: dict) -> None:
        self.noise_seed, self.noise_step = int(state["noise_seed"]), int(state["noise_step"])
        self._issued_seeds = []

    @property
    def weight(self) -> torch.Tensor:
        """The effective dense weight ``W * M * sign`` ``[out_features, in_features]``, for code
        written for ``nn.Linear`` that reads ``.weight`` (``nn.MultiheadAttention``'s ``out_proj``,
        weight tying, ``F.linear(x, layer.weight)``).

        Differentiable back to the stored blocks: a module that multiplies with it trains the
        synapses and only the synapses. Each read materialises the dense matrix (``out * in``
        elements: the memory the block format saves). Writing into it (``nn.init.*_``, ``zero_``,
        ``copy_``, ``w[...] = ...``) raises: the dense matrix is computed, the layer would not
        change; write into ``values`` (``[nnzb, b, b]``) instead."""
        return self.dense_weight().as_subclass(DenseWeight)

    def _plastic_weight(self) -> torch.Tensor:
        return self._stored_blocks()

    def _apply_plasticity(self, eta, oja, target_rate, homeo_rate, rate_momentum) -> None:
        rule = dict(eta=eta, oja=oja, post_rate=self.post_rate, target_rate=target_rate, homeo_rate=homeo_rate)
        blocks, record = self._stored_blocks(), self._record
        if record is not None and record.complete:  # recorded by forward + backward, or by a no-grad forward
            self.last_pre = self.last_post = None
            update_rate_(self.post_rate, record.moments[0], rate_momentum)
            F.apply_recorded_plasticity(self.matrix, record, values=blocks, **rule)
            return
        if record is not None:
            record.clear()  # a forward with gradients but no backward: use the activities
        pre, post = self._take_activities()
        update_rate_(self.post_rate, post_moments(post)[0], rate_momentum)
        F.plasticity_update(self.matrix, pre, post, values=blocks, inplace=True, **rule)

    @property
    def has_recorded_step(self) -> bool:
        """True between a recording training forward and the :meth:`plasticity_step` that uses it."""
        return self.last_pre is not None or (self._record is not None and self._record.pending)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project back onto the constraints after an optimiser step: non-negative weights
        when a sign vector is set (Dale's law) and zeros off the synapse mask."""
        if self.sign is None and self.synapse_mask is None:
            return
        blocks = self._stored_blocks()
        if self.sign is not None:
            blocks.clamp_(min=0.0)
        if self.synapse_mask is not None:
            blocks.mul_(self.synapse_mask)

    def dense_weight(self) -> torch.Tensor:
        """Effective dense weight ``W * M * sign`` ``[out_features, in_features]`` (no noise)."""
        w = self.matrix.to_dense(self.values)
        return w if self.sign is None else w * self.sign

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, mask: Any = None, block_size: int = 32, **kwargs: Any
    ) -> SparseConnectomeLinear:
        """Convert an ``nn.Linear``: its weights on the mask are kept, the rest dropped."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            mask=mask,
            bias=linear.bias is not None,
            block_size=block_size,
            device=w.device,
            dtype=w.dtype,
            **kwargs,
        )
        with torch.no_grad():
            layer.values.copy_(layer.matrix.gather_blocks(w))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self) -> str:
        fill = self.nnzb / max((self.crow.numel() - 1) * (self.ccol_t.numel() - 1), 1)
        s = (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"block_size={self.block_size}, nnzb={self.nnzb}, block_density={fill:.3f}"
        )
        if self.sign is not None:
            s += ", signed=True"
        if self.noise_sigma > 0:
            s += f", noise_sigma={self.noise_sigma}, noise_mode={self.noise_mode}"
        return s


class MaskedLinear(_PlasticityMixin, nn.Module):
    """Dense-masked execution of a :class:`SparseConnectomeLinear`: the same function (mask, sign,
    noise, plasticity) on a dense ``weight[out, in]`` with ``F.linear``. The reference that the
    block-sparse engine is compared against; noise uses ``torch.randn`` (not the synapse-id
    generator), so the two agree in distribution, not sample by sample.
    """

    def __init__(self, layer: SparseConnectomeLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.noise_sigma, self.noise_mode = layer.noise_sigma, layer.noise_mode
        self.record_activity = False
        self.weight = nn.Parameter(layer.matrix.to_dense(layer.values.detach()).clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.register_buffer("mask", layer.matrix.to_dense_mask().to(self.weight.dtype))
        self.register_buffer("sign", None if layer.sign is None else layer.sign.detach().clone())
        self.register_buffer("post_rate", layer.post_rate.detach().clone())
        self.last_pre: torch.Tensor | None = None
        self.last_post: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.training and self.noise_sigma > 0:
            xi = torch.randn_like(w) * self.noise_sigma
            w = w * (1 + xi) if self.noise_mode == "multiplicative" else w + xi
        w = w * self.mask
        if self.sign is not None:
            w = w * self.sign
        y = nn.functional.linear(x, w, self.bias)
        if self.record_activity and self.training:
            self._keep_activities(x, y)
        return y

    def _plastic_weight(self) -> torch.Tensor:
        return self.weight

    def _apply_plasticity(self, eta, oja, target_rate, homeo_rate, rate_momentum) -> None:
        """The dense reference rule itself (:func:`bionic_sparse.plasticity.dense_plasticity`)."""
        pre, post = self._take_activities()
        update_rate_(self.post_rate, post_moments(post)[0], rate_momentum)
        self.weight.copy_(
            dense_plasticity(self.weight, self.mask, pre, post, eta, oja, self.post_rate, target_rate, homeo_rate)
        )

    @torch.no_grad()
    def constrain_(self) -> None:
        if self.sign is not None:
            self.weight.clamp_(min=0.0)
        self.weight.mul_(self.mask)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """What a model trains, counted two ways.

    - ``stored``: every element of every parameter (what ``sum(p.numel())`` gives; the stored
      block slots of a connectome layer included, synapse or not);
    - ``effective``: the weights training can change: a connectome layer counts its synapses
      only (the other stored slots are zeroed after every step), every other parameter in full;
    - ``connectome_synapses`` / ``connectome_stored``: the connectome layers' weights alone
      (synapses, and the stored slots that hold them; biases not included).
    """
    masked: dict[int, int] = {}  # id(parameter) -> synapses it holds
    for m in model.modules():
        if isinstance(m, SparseConnectomeLinear):
            masked[id(m.values)] = int(m.matrix.element_mask().sum())
        elif isinstance(m, MaskedLinear):
            masked[id(m.weight)] = int(m.mask.count_nonzero())
    stored = effective = connectome_stored = 0
    for p in model.parameters():
        stored += p.numel()
        effective += masked.get(id(p), p.numel())
        connectome_stored += p.numel() if id(p) in masked else 0
    return {
        "stored": stored,
        "effective": effective,
        "connectome_synapses": sum(masked.values()),
        "connectome_stored": connectome_stored,
    }
