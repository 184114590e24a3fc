"""Pure-PyTorch implementation of the block-sparse ops (the CPU path; any device works).

Conventions (shared with the Triton kernels):

* ``values[nnzb, b, b]``: block ``k`` covers output rows ``row[k] * b + [0, b)`` and input
  columns ``col[k] * b + [0, b)``.
* Effective weight ``W_eff = noisy(values) * synapse_mask * sign[None, :]`` where
  ``noisy(W) = W * (1 + sigma * xi)`` (multiplicative) or ``W + sigma * xi`` (additive) and
  ``xi`` is :func:`bionic_sparse.noise.synapse_noise` of ``seed``.
* ``y = x @ W_eff^T + bias``; ``dx = dy @ W_eff``;
  ``dvalues = (dy^T (x * sign)) * synapse_mask * d noisy / dW`` on the stored blocks only.

Two methods (chosen in :mod:`bionic_sparse.backend`): ``blockT`` keeps activations
feature-major ``[blocks, b, batch]``, gathers the blocks each stored block needs, runs one
``bmm`` and scatters with ``index_add_``; ``dense`` scatters ``W_eff`` into a dense matrix.
"""

from __future__ import annotations

import threading

import torch

from .noise import synapse_noise
from .plasticity import MULTIPLICATIVE, homeostatic_scale

_workspaces = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable scratch buffer (never returned to the caller).

    NOTE: fresh 64 MB allocations cost ~15 ms on the 2-core CI machine (page faults on mmap'd
    memory, kernels.md section 6), as much as the whole b=64 bmm at 90 % sparsity.
    """
    cache = getattr(_workspaces, "cache", None)
    if cache is None:
        cache = _workspaces.cache = {}
    key = (name, dtype, device)
    numel = 1
    for s in shape:
        numel *= s
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        cache[key] = buf
    return buf[:numel].view(shape)


def noise_factor(values: torch.Tensor, sigma: float, seed: int, noise_mode: str) -> torch.Tensor | None:
    """``xi * sigma`` as ``values.dtype`` ``[nnzb, b, b]``, or ``None`` when ``sigma == 0``."""
    if sigma == 0.0:
        return None
    nnzb, b, _ = values.shape
    return synapse_noise(seed, nnzb, b, device=values.device).to(values.dtype) * sigma


def effective_values(
    values: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    sigma: float,
    seed: int,
    noise_mode: str,
) -> torch.Tensor:
    """``noisy(values) * synapse_mask`` ``[nnzb, b, b]`` (the sign is applied to activations)."""
    w = values
    noise = noise_factor(values, sigma, seed, noise_mode)
    if noise is not None:
        w = w * (1.0 + noise) if noise_mode == MULTIPLICATIVE else w + noise
    if synapse_mask is not None:
        w = w * synapse_mask
    return w


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _feature_major(x2d: torch.Tensor, n_blocks: int, b: int, name: str) -> torch.Tensor:
    """``[B, n]`` -> zero-padded ``[n_blocks, b, B]`` (contiguous, in a workspace)."""
    batch, n = x2d.shape
    out = _workspace(name, (n_blocks * b, batch), x2d.dtype, x2d.device)
    out[:n].copy_(x2d.t())
    if n < n_blocks * b:
        out[n:].zero_()
    return out.view(n_blocks, b, batch)


def _dense_from_blocks(w: torch.Tensor, row: torch.Tensor, col: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """``[nnzb, b, b]`` -> padded dense ``[R * b, C * b]``."""
    b = w.shape[-1]
    dense = w.new_zeros(R, C, b, b)
    dense[row.long(), col.long()] = w
    return dense.permute(0, 2, 1, 3).reshape(R * b, C * b)


def _blocks_from_dense(dense: torch.Tensor, row: torch.Tensor, col: torch.Tensor, b: int) -> torch.Tensor:
    """Padded dense ``[R * b, C * b]`` -> ``[nnzb, b, b]`` at the stored blocks."""
    R, C = dense.shape[0] // b, dense.shape[1] // b
    return dense.view(R, b, C, b).permute(0, 2, 1, 3)[row.long(), col.long()]


def _pad_cols(x2d: torch.Tensor, n: int) -> torch.Tensor:
    return x2d if x2d.shape[1] == n else torch.nn.functional.pad(x2d, (0, n - x2d.shape[1]))


def linear_fwd(
    x: torch.Tensor,
    w: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    sign: torch.Tensor | None,
    bias: torch.Tensor | None,
    n_out: int,
    method: str,
) -> torch.Tensor:
    """``y[..., n_out] = (x * sign) @ W^T + bias`` for effective blocks ``w``."""
    lead = x.shape[:-1]
    x2d = _flatten(x)
    if sign is not None:
        x2d = x2d * sign.to(x2d.dtype)
    w = w.to(x2d.dtype)
    nnzb, b, _ = w.shape
    R = -(-n_out // b)
    C = -(-x.shape[-1] // b)
    batch = x2d.shape[0]
    if method == "blockT":
        x_fm = _feature_major(x2d, C, b, "x_fm")
        gathered = torch.index_select(x_fm, 0, col, out=_workspace("gather", (nnzb, b, batch), w.dtype, w.device))
        prod = torch.bmm(w, gathered, out=_workspace("prod", (nnzb, b, batch), w.dtype, w.device))
        y_fm = x2d.new_zeros(R, b, batch).index_add_(0, row, prod)
        y = y_fm.view(R * b, batch)[:n_out].t()
    else:
        dense = _dense_from_blocks(w, row, col, R, C)[:n_out]
        y = _pad_cols(x2d, C * b) @ dense.t()
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.contiguous().view(*lead, n_out)


def linear_dx(
    dy: torch.Tensor,
    w: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    sign: torch.Tensor | None,
    n_in: int,
    method: str,
) -> torch.Tensor:
    """``dx[..., n_in] = (dy @ W) * sign`` for effective blocks ``w``."""
    lead = dy.shape[:-1]
    dy2d = _flatten(dy)
    w = w.to(dy2d.dtype)
    nnzb, b, _ = w.shape
    R = -(-dy.shape[-1] // b)
    C = -(-n_in // b)
    batch = dy2d.shape[0]
    if method == "blockT":
        dy_fm = _feature_major(dy2d, R, b, "dy_fm")
        gathered = torch.index_select(dy_fm, 0, row, out=_workspace("gather", (nnzb, b, batch), w.dtype, w.device))
        prod = torch.bmm(w.transpose(1, 2), gathered, out=_workspace("prod", (nnzb, b, batch), w.dtype, w.device))
        dx_fm = dy2d.new_zeros(C, b, batch).index_add_(0, col, prod)
        dx = dx_fm.view(C * b, batch)[:n_in].t()
    else:
        dense = _dense_from_blocks(w, row, col, R, C)
        dx = (_pad_cols(dy2d, R * b) @ dense)[:, :n_in]
    if sign is not None:
        dx = dx * sign.to(dx.dtype)
    return dx.contiguous().view(*lead, n_in)


def linear_dw(
    dy: torch.Tensor,
    x: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    sign: torch.Tensor | None,
    b: int,
    method: str,
) -> torch.Tensor:
    """``(dy^T (x * sign))`` restricted to the stored blocks: ``[nnzb, b, b]`` (SDD)."""
    dy2d, x2d = _flatten(dy), _flatten(x)
    if sign is not None:
        x2d = x2d * sign.to(x2d.dtype)
    R = -(-dy.shape[-1] // b)
    C = -(-x.shape[-1] // b)
    if method == "blockT":
        nnzb, batch = row.numel(), dy2d.shape[0]
        dy_fm = _feature_major(dy2d, R, b, "dy_fm")
        x_fm = _feature_major(x2d, C, b, "x_fm")
        dy_g = torch.index_select(dy_fm, 0, row, out=_workspace("gather", (nnzb, b, batch), dy_fm.dtype, dy_fm.device))
        x_g = torch.index_select(x_fm, 0, col, out=_workspace("prod", (nnzb, b, batch), x_fm.dtype, x_fm.device))
        return torch.bmm(dy_g, x_g.transpose(1, 2))
    full = _pad_cols(dy2d, R * b).t() @ _pad_cols(x2d, C * b)
    return _blocks_from_dense(full, row, col, b)


def hebbian_update(
    values: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    synapse_mask: torch.Tensor | None,
    post_rate: torch.Tensor | None,
    eta: float,
    oja: float,
    target_rate: float,
    homeo_rate: float,
    method: str,
) -> torch.Tensor:
    """New values after one Hebbian (Oja) step and homeostatic synaptic scaling.

    ``H = post^T pre / B`` on the stored blocks; ``W' = W + eta * (H - oja * mean(post^2) * W)``
    masked to the synapses; each postsynaptic row is then scaled by
    ``1 + homeo_rate * (target_rate - post_rate) / (target_rate + post_rate)`` (in
    ``(1 - homeo_rate, 1 + homeo_rate)``); an entry whose sign would flip is clamped to zero.
    """
    b = values.shape[-1]
    post2d, pre2d = _flatten(post).to(values.dtype), _flatten(pre).to(values.dtype)
    batch = max(post2d.shape[0], 1)
    hebb = linear_dw(post2d, pre2d, row, col, None, b, method) / batch
    R = -(-post2d.shape[1] // b)
    rows = row.long()

    def per_row(v: torch.Tensor) -> torch.Tensor:  # [n_out] -> [nnzb, b, 1]
        return torch.nn.functional.pad(v, (0, R * b - v.shape[0])).view(R, b)[rows].unsqueeze(-1)

    new = values + eta * (hebb - oja * per_row(post2d.pow(2).mean(0)) * values)
    if homeo_rate != 0.0 and post_rate is not None:
        new = new * per_row(homeostatic_scale(post_rate, target_rate, homeo_rate).to(values.dtype))
    new = torch.where(new * values < 0, torch.zeros_like(new), new)
    if synapse_mask is not None:
        new = new * synapse_mask
    return new
