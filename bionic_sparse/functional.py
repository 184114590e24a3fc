"""Public functional API over :class:`BlockSparseMatrix`: argument checks, then the custom ops."""

from __future__ import annotations

import contextlib
import math

import torch

from . import ops
from .format import BlockSparseMatrix
from .plasticity import MULTIPLICATIVE, NOISE_MODES, post_moments, row_scale

__all__ = [
    "bsr_linear",
    "ActivityRecord",
    "plasticity_update",
    "apply_recorded_plasticity",
    "record_activities",
    "check_gpu_block_size",
    "check_vector",
]


GPU_BLOCK_SIZES = (16, 32, 64)


def check_gpu_block_size(block_size: int) -> None:
    """The Triton kernels need ``tl.dot`` tiles: a power of two >= 16 (and <= 64, beyond which
    every kernel config spills registers)."""
    if block_size not in GPU_BLOCK_SIZES:
        raise ValueError(
            f"block_size must be a power of two >= 16 for the GPU path (one of {GPU_BLOCK_SIZES}), got {block_size}"
        )


def check_vector(v: torch.Tensor | None, n: int, name: str, what: str) -> None:
    """``v`` is ``None`` or a floating ``[n]`` tensor (one entry per ``what``), else a clear error."""
    if v is None:
        return
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(v).__name__}")
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one entry per {what}), got {tuple(v.shape)}")
    if not v.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating, got {v.dtype}")


def _check_activations(x: torch.Tensor, n: int, name: str, matrix: BlockSparseMatrix) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != n:
        raise ValueError(f"{name}.shape[-1] must be {n}, got shape {tuple(x.shape)}")
    if x.device.type == "cuda":
        check_gpu_block_size(matrix.block_size)


class ActivityRecord:
    """What a training step records for plasticity, filled by the engine itself:
    ``moments[2, n_out]`` (``mean_B |post|`` and ``mean_B post^2`` of ``post = x W^T + bias``,
    written by the forward pass) and ``corr[nnzb, b, b]`` (the Hebbian correlation
    ``post^T x / B`` on the stored blocks, written by the backward pass in the same pass as the
    weight gradient). Both float32 (float64 for a float64 layer), on the layer's device.
    """

    def __init__(self, matrix: BlockSparseMatrix, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        b = matrix.block_size
        self.moments = torch.zeros(2, matrix.shape[0], dtype=dtype, device=device)
        self.corr = torch.zeros(matrix.nnzb, b, b, dtype=dtype, device=device)
        self._corr_version: int | None = None

    def matches(self, matrix: BlockSparseMatrix, device: torch.device) -> bool:
        """True when this record fits ``matrix`` (same blocks and outputs) on ``device``."""
        return (
            self.corr.shape == (matrix.nnzb, matrix.block_size, matrix.block_size)
            and self.moments.shape[1] == matrix.shape[0]
            and self.corr.device == torch.device(device)
        )

    def expect_backward(self) -> None:
        """Called by the forward pass: the next plasticity step needs a backward pass first."""
        self._corr_version = self.corr._version

    def clear(self) -> None:
        """Forget the recorded step (the next plasticity step must not use it)."""
        self._corr_version = None

    @property
    def pending(self) -> bool:
        """True between a recording forward pass and the plasticity step that uses it."""
        return self._corr_version is not None

    @property
    def complete(self) -> bool:
        """True once a backward pass has written ``corr`` since the last forward pass."""
        return self._corr_version is not None and self.corr._version != self._corr_version


def bsr_linear(
    x: torch.Tensor,
    matrix: BlockSparseMatrix,
    bias: torch.Tensor | None = None,
    sign: torch.Tensor | None = None,
    noise_sigma: float = 0.0,
    noise_seed: int = 0,
    noise_mode: str = "multiplicative",
    values: torch.Tensor | None = None,
    record: ActivityRecord | None = None,
) -> torch.Tensor:
    """``y = x @ (W * M * sign)^T + bias`` with ``W`` block-sparse; differentiable in ``x``,
    ``values`` and ``bias``.

    Args:
        x: ``[..., n_in]`` presynaptic activity.
        matrix: topology (and values, unless ``values`` is given).
        bias: ``[n_out]`` or ``None``.
        sign: ``[n_in]`` per-presynaptic sign/gain (Dale's law, graded inhibition) or ``None``.
        noise_sigma: std of the synaptic noise ``xi`` (0 disables it).
        noise_seed: seed of the noise; the same seed gives the same noise on every backend.
        noise_mode: ``"multiplicative"`` (``W * (1 + sigma xi)``) or ``"additive"`` (``W + sigma xi``).
        values: ``[nnzb, b, b]`` to use instead of ``matrix.values`` (e.g. an ``nn.Parameter``).
        record: an :class:`ActivityRecord` that this forward pass and its backward pass fill for
            :func:`apply_recorded_plasticity` (``values`` must require grad).

    Returns:
        ``[..., n_out]`` in ``x.dtype``.
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    n_out, n_in = matrix.shape
    values = matrix.values if values is None else values
    if values.shape != (matrix.nnzb, matrix.block_size, matrix.block_size):
        raise ValueError(
            f"values must have shape {(matrix.nnzb, matrix.block_size, matrix.block_size)}, got {tuple(values.shape)}"
        )
    _check_activations(x, n_in, "x", matrix)
    check_vector(sign, n_in, "sign", "presynaptic input")
    check_vector(bias, n_out, "bias", "output")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    # NOTE: under torch.compile(dynamic=True) a module's float attribute arrives as a SymFloat,
    # which math.isfinite cannot trace: the value is checked in eager mode (and by the layer)
    if not torch.compiler.is_compiling():
        noise_sigma = float(noise_sigma)
        if not math.isfinite(noise_sigma) or noise_sigma < 0:
            raise ValueError(f"noise_sigma must be finite and >= 0, got {noise_sigma}")
    plastic = ()
    if record is not None:
        if not isinstance(record, ActivityRecord):
            raise TypeError(f"record must be an ActivityRecord or None, got {type(record).__name__}")
        if not (values.requires_grad and torch.is_grad_enabled()):
            raise ValueError("record needs a forward pass with grad enabled and values that require grad")
        if not record.matches(matrix, values.device):
            raise ValueError("record was made for another topology or device")
        record.expect_backward()
        plastic = (None if bias is None else bias.detach(), record.corr)
    _check_transforms(x, values)
    x, values, autocast = _autocast(x, values)
    with autocast:
        y, moments = ops.bsr_linear(
            x,
            values,
            *matrix.index_tensors().values(),  # crow, col, row, ccol_t, row_t, perm_t
            matrix.synapse_mask,
            sign,
            *(plastic or (None, None)),
            _seed(noise_seed),
            n_out=n_out,
            sigma=noise_sigma,
            multiplicative=noise_mode == MULTIPLICATIVE,
        )
    if record is not None:
        record.moments = moments
    # NOTE: the bias stays outside the op, so autograd owns its gradient; plasticity gets it
    # (detached) as post_bias because its post-synaptic activity is the layer output y + bias.
    return y if bias is None else y + bias.to(y.dtype)


def _check_transforms(*tensors: torch.Tensor) -> None:
    """Forward-mode AD and ``torch.func`` transforms have no rules for the engine's custom ops:
    refuse them by name instead of returning zeros (``jvp``) or a foreign error (``grad``)."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            raise NotImplementedError(
                "bionic_sparse.bsr_linear (SparseConnectomeLinear) does not support torch.func transforms "
                "(grad, vmap, jvp, jacrev, jacfwd): its custom ops have no functorch rules; use "
                "torch.autograd.grad (per-sample gradients: a loop over the batch)"
            )
        if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(
                "bionic_sparse.bsr_linear (SparseConnectomeLinear) has no forward-mode derivative "
                "(torch.autograd.forward_ad, torch.func.jvp): use reverse mode"
            )


def _autocast(x: torch.Tensor, values: torch.Tensor):
    """Follow autocast like ``nn.Linear``: inside an autocast region the product runs and returns in
    the autocast dtype (the casts are differentiable), the ops themselves run with autocast off."""
    device = x.device.type
    if not (torch.is_autocast_enabled(device) and x.dtype.is_floating_point):
        return x, values, contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), values.to(dtype), torch.autocast(device, enabled=False)


def _seed(seed: int | torch.Tensor) -> torch.Tensor:
    """The noise seed as the ops take it: a 0-dim int64 CPU tensor (an input of compiled graphs)."""
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype.is_floating_point:
            raise TypeError(
                f"noise_seed must be an int or a one-element integer tensor, got {seed.dtype} {tuple(seed.shape)}"
            )
        return seed.reshape(()).to("cpu", torch.int64)
    return torch.tensor(int(seed), dtype=torch.int64)


def _check_plasticity_args(matrix, post_rate, eta, oja, target_rate, homeo_rate) -> None:
    check_vector(post_rate, matrix.shape[0], "post_rate", "output")
    for name, v in (("eta", eta), ("oja", oja), ("target_rate", target_rate), ("homeo_rate", homeo_rate)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v}")
    if not 0.0 <= homeo_rate < 1.0:
        raise ValueError(f"homeo_rate must lie in [0, 1), got {homeo_rate}")


def _apply(matrix, values, corr, post_sq, post_rate, eta, oja, target_rate, homeo_rate) -> None:
    scale = row_scale(post_rate, target_rate, homeo_rate)
    ops.bsr_plasticity_(
        values, corr, matrix.crow, matrix.row, matrix.synapse_mask, post_sq, scale, eta=float(eta), oja=float(oja)
    )


def plasticity_update(
    matrix: BlockSparseMatrix,
    pre: torch.Tensor,
    post: torch.Tensor,
    eta: float,
    oja: float = 1.0,
    post_rate: torch.Tensor | None = None,
    target_rate: float = 0.1,
    homeo_rate: float = 0.0,
    values: torch.Tensor | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Local Hebbian (Oja) + homeostatic update on the synapses only, from recorded activities
    (no backward pass needed; see :func:`apply_recorded_plasticity` for the fused training step).

    ``W' = W + eta * (post^T pre / B - oja * mean(post^2) * W)`` on the mask, then each
    postsynaptic row ``i`` is scaled by ``1 + homeo_rate * (target_rate - r_i) / (target_rate + |r_i|)``
    where ``r = post_rate`` (e.g. an EMA of the mean activity, ``[n_out]``). No synapse is created
    off the mask and no weight changes sign (it stops at zero).
    (:func:`bionic_sparse.plasticity.dense_plasticity` is the same rule on a dense weight.)

    Args:
        pre: ``[..., n_in]`` presynaptic activity; post: ``[..., n_out]`` postsynaptic activity.
        inplace: write into ``values`` instead of returning a new tensor.

    Returns:
        The new ``values[nnzb, b, b]`` (the updated tensor itself when ``inplace``).
    """
    if not isinstance(matrix, BlockSparseMatrix):
        raise TypeError(f"matrix must be a BlockSparseMatrix, got {type(matrix).__name__}")
    n_out, n_in = matrix.shape
    values = matrix.values if values is None else values
    _check_activations(pre, n_in, "pre", matrix)
    _check_activations(post, n_out, "post", matrix)
    if pre.shape[:-1] != post.shape[:-1]:
        raise ValueError(f"pre and post must share leading dims, got {tuple(pre.shape)} and {tuple(post.shape)}")
    _check_plasticity_args(matrix, post_rate, eta, oja, target_rate, homeo_rate)
    with torch.no_grad():
        b = matrix.block_size
        corr = pre.new_empty(matrix.nnzb, b, b, dtype=torch.promote_types(pre.dtype, torch.float32))
        _correlation_into(matrix, pre, post, corr, values)
        post_sq = post_moments(post)[1].to(corr.dtype)
        out = values if inplace else values.detach().clone()
        _apply(matrix, out, corr, post_sq, post_rate, eta, oja, target_rate, homeo_rate)
    return out


def record_activities(
    matrix: BlockSparseMatrix, pre: torch.Tensor, post: torch.Tensor, record: ActivityRecord
) -> ActivityRecord:
    """Fill ``record`` from activities now, for a plasticity step that no backward pass precedes
    (a forward under ``torch.no_grad()``): the moments of ``post`` and the Hebbian correlation
    ``post^T pre / B`` on the stored blocks. The step then uses these statistics, not ``pre`` and
    ``post``, so changing those tensors afterwards (``relu_``, ``+=``) cannot change what it learns."""
    if not isinstance(record, ActivityRecord):
        raise TypeError(f"record must be an ActivityRecord, got {type(record).__name__}")
    n_out, n_in = matrix.shape
    _check_activations(pre, n_in, "pre", matrix)
    _check_activations(post, n_out, "post", matrix)
    if pre.shape[:-1] != post.shape[:-1]:
        raise ValueError(f"pre and post must share leading dims, got {tuple(pre.shape)} and {tuple(post.shape)}")
    if not record.matches(matrix, pre.device):
        raise ValueError("record was made for another topology or device")
    with torch.no_grad():
        record.expect_backward()
        _correlation_into(matrix, pre, post, record.corr, matrix.values.detach())
        record.moments = post_moments(post).to(record.corr.dtype)
    return record


def _correlation_into(matrix, pre, post, corr, values) -> None:
    """``corr[nnzb, b, b]`` = ``post^T pre / B`` on the stored blocks (the raw activities: no mask,
    no sign, no noise)."""
    coo = (matrix.crow, matrix.row, matrix.col, None, None)
    ops.bsr_linear_dw_corr(None, pre, values, *coo, post, None, corr, _seed(0), sigma=0.0, multiplicative=True)


def apply_recorded_plasticity(
    matrix: BlockSparseMatrix,
    record: ActivityRecord,
    eta: float,
    oja: float = 1.0,
    post_rate: torch.Tensor | None = None,
    target_rate: float = 0.1,
    homeo_rate: float = 0.0,
    values: torch.Tensor | None = None,
) -> None:
    """The update of :func:`plasticity_update`, applied in place to ``values`` from what a training
    step recorded (:class:`ActivityRecord`): no pass over the activities, one elementwise pass over
    the weights. Call it after the optimiser step; it equals :func:`plasticity_update` on the
    post-step weights with the step's activities."""
    if not isinstance(record, ActivityRecord):
        raise TypeError(f"record must be an ActivityRecord, got {type(record).__name__}")
    if not record.complete:
        raise RuntimeError(
            "the recorded training step has no backward pass yet: call loss.backward() before the "
            "plasticity step (for plasticity without gradients, run the forward under torch.no_grad())"
        )
    values = matrix.values if values is None else values
    _check_plasticity_args(matrix, post_rate, eta, oja, target_rate, homeo_rate)
    with torch.no_grad():
        _apply(matrix, values, record.corr, record.moments[1], post_rate, eta, oja, target_rate, homeo_rate)
    record.clear()
