"""Element-level CSR products (the storage of matrices whose synapses fill few blocks).

``W[n_out, n_in]`` is one CSR: ``crow[n_out + 1]``, ``col[nnz]`` (int32), ``w[nnz]`` (float32).
Three products, on batch-major activations ``[batch, n]`` like every op of the engine:

* :func:`csr_fwd`: ``y = x @ W^T``;
* :func:`csr_fwd_t`: ``dx = dy @ W`` (a scatter over the same CSR: no transposed index);
* :func:`csr_sddmm`: ``out[k] = sum_b a[b, row(k)] * x[b, col(k)]`` at the synapses only (the
  weight gradient with ``a = dy``; a second ``a`` gives the Hebbian correlation in the same pass).

They run the compiled kernels of ``csrc/synapse_csr.c`` (feature-major inside: one contiguous
batch vector per neuron) on ``torch.get_num_threads()`` threads. Without a C compiler they fall
back to torch's sparse CSR (MKL) and say so once (:func:`implementation`).
"""

from __future__ import annotations

import warnings

import torch

from .. import _native, plasticity
from ..noise import synapse_noise

__all__ = [
    "csr_fwd",
    "csr_fwd_t",
    "csr_sddmm",
    "implementation",
    "is_element_storage",
    "linear_fwd",
    "linear_dx",
    "linear_dw",
    "plasticity_",
]

_warned = False


def implementation() -> str:
    """``"compiled"`` (``csrc/synapse_csr.c``) or ``"torch-csr"`` (the fallback, with the reason)."""
    if _native.csr_kernels() is not None:
        return "compiled"
    return f"torch-csr ({_native.build_error('csr')})"


def _kernels(dtype: torch.dtype = torch.float32):
    """The compiled kernels for float32, else ``None`` (float64 runs torch's CSR: tests, references)."""
    global _warned
    if dtype != torch.float32:
        return None
    k = _native.csr_kernels()
    if k is None and not _warned:
        _warned = True
        warnings.warn(
            f"element-level CSR products run on torch's sparse CSR (slower): {_native.build_error('csr')}",
            RuntimeWarning,
            stacklevel=3,
        )
    return k


def _check(crow: torch.Tensor, col: torch.Tensor, w: torch.Tensor, a2d: torch.Tensor, n_rows: int, name: str) -> None:
    if crow.dim() != 1 or crow.numel() != n_rows + 1:
        raise ValueError(f"crow must be 1-D with {n_rows + 1} entries, got shape {tuple(crow.shape)}")
    if col.dim() != 1 or w.dim() != 1 or col.numel() != w.numel():
        raise ValueError(f"col and w must be 1-D of one length, got {tuple(col.shape)} and {tuple(w.shape)}")
    if crow.numel() and int(crow[-1]) != col.numel():
        raise ValueError(f"crow must end at the number of synapses ({col.numel()}), got {int(crow[-1])}")
    if a2d.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, n], got shape {tuple(a2d.shape)}")
    if w.dtype != a2d.dtype or w.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the element-level products compute in float32 or float64, got {w.dtype} and {a2d.dtype}")
    if a2d.device.type != "cpu":
        raise ValueError(f"the element-level CPU products need CPU tensors, got {a2d.device}")


def _fm(a2d: torch.Tensor, k=None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``[batch, n]`` -> contiguous feature-major ``[n, batch]`` (a stride-0 input is copied too),
    times ``scale[n]`` when given; through the compiled tiled transpose when ``k`` has it (torch's
    strided copy of a ``[64, 82k]`` batch costs as much as a product with 10^6 synapses)."""
    if k is None:
        a2d = a2d if scale is None else a2d * scale
        return a2d.t().contiguous()
    src = a2d.contiguous()
    out = torch.empty(a2d.shape[1], a2d.shape[0], dtype=torch.float32)
    sc = None if scale is None else scale.to(torch.float32).contiguous()
    k.transpose(
        a2d.shape[0],
        a2d.shape[1],
        _ptr(src),
        None,
        None if sc is None else _ptr(sc),
        _ptr(out),
        torch.get_num_threads(),
    )
    return out


def _bm(a_fm: torch.Tensor, k, scale: torch.Tensor | None = None, shape: tuple | None = None) -> torch.Tensor:
    """Feature-major ``[n, batch]`` -> contiguous ``[batch, n]``, times ``scale[n]`` when given,
    allocated as ``shape`` (``[..., n]`` with ``batch`` rows in all) so that no view is returned."""
    out = torch.empty(shape or (a_fm.shape[1], a_fm.shape[0]), dtype=torch.float32)
    sc = None if scale is None else scale.to(torch.float32).contiguous()
    k.transpose(
        a_fm.shape[0],
        a_fm.shape[1],
        _ptr(a_fm),
        None if sc is None else _ptr(sc),
        None,
        _ptr(out),
        torch.get_num_threads(),
    )
    return out


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def csr_fwd(
    crow: torch.Tensor,
    col: torch.Tensor,
    w: torch.Tensor,
    x2d: torch.Tensor,
    in_scale: torch.Tensor | None = None,
    out_shape: tuple | None = None,
) -> torch.Tensor:
    """``y[batch, n_out] = (x2d * in_scale) @ W^T`` (``in_scale[n_in]``: Dale's sign, optional),
    returned with ``out_shape`` (default ``[batch, n_out]``)."""
    n_out = crow.numel() - 1
    _check(crow, col, w, x2d, n_out, "x")
    k = _kernels(x2d.dtype)
    if k is None:
        x2d = x2d if in_scale is None else x2d * in_scale.to(x2d.dtype)
        y = _torch_csr(crow, col, w, n_out, x2d.shape[1]).matmul(x2d.t()).t().contiguous()
        return y if out_shape is None else y.reshape(out_shape)
    crow64, col32, w = crow.to(torch.int64).contiguous(), col.to(torch.int32).contiguous(), w.contiguous()
    x_fm = _fm(x2d, k, in_scale)
    y_fm = torch.empty(n_out, x2d.shape[0], dtype=torch.float32)
    k.fwd(n_out, x2d.shape[0], _ptr(crow64), _ptr(col32), _ptr(w), _ptr(x_fm), _ptr(y_fm), torch.get_num_threads())
    return _bm(y_fm, k, shape=out_shape)


def csr_fwd_t(
    crow: torch.Tensor,
    col: torch.Tensor,
    w: torch.Tensor,
    dy2d: torch.Tensor,
    n_in: int,
    out_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dx[batch, n_in] = (dy2d @ W) * out_scale`` (``out_scale[n_in]``: Dale's sign, optional)."""
    n_out = crow.numel() - 1
    _check(crow, col, w, dy2d, n_out, "dy")
    if dy2d.shape[1] != n_out:
        raise ValueError(f"dy must have {n_out} columns, got {dy2d.shape[1]}")
    k = _kernels(dy2d.dtype)
    if k is None:
        dx = _torch_csr(crow, col, w, n_out, n_in).t().matmul(dy2d.t()).t().contiguous()
        return dx if out_scale is None else dx * out_scale.to(dx.dtype)
    crow64, col32, w = crow.to(torch.int64).contiguous(), col.to(torch.int32).contiguous(), w.contiguous()
    dy_fm = _fm(dy2d, k)
    dx_fm = torch.empty(n_in, dy2d.shape[0], dtype=torch.float32)
    ptrs = (_ptr(crow64), _ptr(col32), _ptr(w), _ptr(dy_fm), _ptr(dx_fm))
    rc = k.fwd_t(n_out, n_in, dy2d.shape[0], *ptrs, torch.get_num_threads())
    if rc != 0:
        raise MemoryError(f"csr_fwd_t: no memory for the per-thread buffers ({n_in} x {dy2d.shape[0]} floats each)")
    return _bm(dx_fm, k, out_scale)


def csr_sddmm(
    crow: torch.Tensor,
    col: torch.Tensor,
    a2d: torch.Tensor,
    x2d: torch.Tensor,
    a2_2d: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    xi: torch.Tensor | None = None,
    sigma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out[nnz], out2[nnz] | None)``: ``a^T x`` (and ``a2^T x``) sampled at the synapses, summed
    over the batch (not averaged). ``out`` alone is then multiplied by ``col_scale[col]`` (Dale's
    sign, ``[n_in]``) and by ``1 + sigma xi`` (``xi[nnz]``: multiplicative noise) when given."""
    n_out = crow.numel() - 1
    nnz = col.numel()
    _check(crow, col, torch.empty(nnz, dtype=a2d.dtype), a2d, n_out, "a")
    if x2d.dim() != 2 or x2d.shape[0] != a2d.shape[0] or x2d.dtype != a2d.dtype:
        raise ValueError(f"x must be [batch={a2d.shape[0]}, n_in] in {a2d.dtype}, got {tuple(x2d.shape)} {x2d.dtype}")
    k = _kernels(a2d.dtype)
    if k is None:
        pattern = _torch_csr(crow, col, torch.zeros(nnz, dtype=a2d.dtype), n_out, x2d.shape[1])
        outs = [
            torch.sparse.sampled_addmm(pattern, a.t(), x2d, beta=0.0).values() for a in (a2d, a2_2d) if a is not None
        ]
        if col_scale is not None:
            outs[0].mul_(col_scale.to(outs[0].dtype).index_select(0, col.long()))
        if xi is not None:
            outs[0].mul_(xi.reshape(-1).to(outs[0].dtype).mul(sigma).add_(1.0))
        return outs[0], (outs[1] if len(outs) > 1 else None)
    crow64, col32 = crow.to(torch.int64).contiguous(), col.to(torch.int32).contiguous()
    a_fm, x_fm = _fm(a2d, k), _fm(x2d, k)
    out = torch.empty(nnz, dtype=torch.float32)
    a2_fm = out2 = None
    if col_scale is not None:
        col_scale = col_scale.to(torch.float32).contiguous()
    if xi is not None:
        xi = xi.reshape(-1).to(torch.float32).contiguous()
        if xi.numel() != nnz:
            raise ValueError(f"xi must have {nnz} entries, got {xi.numel()}")
    if a2_2d is not None:
        a2_fm, out2 = _fm(a2_2d, k), torch.empty(nnz, dtype=torch.float32)
    k.sddmm(
        n_out,
        a2d.shape[0],
        _ptr(crow64),
        _ptr(col32),
        _ptr(a_fm),
        _ptr(x_fm),
        _ptr(out),
        None if a2_fm is None else _ptr(a2_fm),
        None if out2 is None else _ptr(out2),
        None if col_scale is None else _ptr(col_scale),
        None if xi is None else _ptr(xi),
        float(sigma),
        torch.get_num_threads(),
    )
    return out, out2


def _torch_csr(crow, col, w, n_out, n_in) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(torch.int64), col.to(torch.int64), w, (n_out, n_in))


# ---------------------------------------------------------------------------------------------
# The backend contract (bionic_sparse.backends) for element storage: values [nnz, 1, 1], one CSR.


def is_element_storage(values: torch.Tensor, index: torch.Tensor) -> bool:
    """True when ``values`` (``[nnz, 1, 1]``) comes without a per-synapse ``index`` view (``row``,
    ``perm_t``): element storage, whose products run here."""
    return values.dim() == 3 and values.shape[-1] == 1 and index.numel() != values.shape[0]


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _weights(values: torch.Tensor, sigma: float, seed: int, multiplicative: bool, dtype: torch.dtype) -> torch.Tensor:
    """``noisy(values)`` ``[nnz]``: synapse ``k`` draws the noise of slot ``k`` (as blocks of 1)."""
    w = values.reshape(-1).to(dtype)
    if sigma != 0.0:
        xi = synapse_noise(seed, values.shape[0], 1, device=values.device).reshape(-1).to(dtype)
        w = torch.addcmul(w, w, xi, value=sigma) if multiplicative else torch.add(w, xi, alpha=sigma)
    return w


def _flat(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).to(dtype)


def linear_fwd(*, x, values, crow, col, sign, n_out, sigma, seed, multiplicative, post_bias, post_moments):
    """``y = x @ W_eff^T`` (the sign folded into the input: one multiply per input, not per synapse)."""
    dtype = _compute_dtype(x)
    x2d = _flat(x, dtype)
    sign = None if sign is None else sign.to(dtype)
    out_shape = (*x.shape[:-1], n_out)  # written in place: a reshaped view would be copied again
    y = csr_fwd(crow, col, _weights(values, sigma, seed, multiplicative, dtype), x2d, sign, out_shape).to(x.dtype)
    if post_moments is not None:
        y2d = y.reshape(-1, n_out)
        post_moments.copy_(plasticity.post_moments(y2d if post_bias is None else y2d + post_bias.to(y.dtype)))
    return y


def linear_dx(*, dy, values, crow, col, sign, n_in, sigma, seed, multiplicative):
    """``dx = (dy @ W_eff) * sign``, a scatter over the forward CSR."""
    dtype = _compute_dtype(dy)
    sign = None if sign is None else sign.to(dtype)
    dx = csr_fwd_t(crow, col, _weights(values, sigma, seed, multiplicative, dtype), _flat(dy, dtype), n_in, sign)
    return dx.to(dy.dtype).reshape(*dy.shape[:-1], n_in)


def linear_dw(*, dy, x, crow, col, out_dtype, sign, sigma, seed, multiplicative, post, post_bias, corr):
    """The weight gradient ``[nnz, 1, 1]`` at the synapses and, with ``corr``, the Hebbian
    correlation ``(post + post_bias)^T x / B`` from the same pass over ``x``."""
    dtype = _compute_dtype(x)
    x2d = _flat(x, dtype)
    batch = x2d.shape[0]
    a2 = None
    if corr is not None:
        a2 = _flat(post, dtype)
        if post_bias is not None:
            a2 = a2 + post_bias.to(dtype)
    if dy is None:
        if a2 is not None:
            h, _ = csr_sddmm(crow, col, a2, x2d)
            corr.view(-1).copy_(h.div_(max(batch, 1)))
        return None
    # dW = dy^T (x * sign) * (1 + sigma xi): the sign is one per input column, the factor is
    # d noisy(W) / dW; both applied inside the product pass
    xi = synapse_noise(seed, col.numel(), 1, device=x2d.device) if sigma != 0.0 and multiplicative else None
    g, h = csr_sddmm(crow, col, _flat(dy, dtype), x2d, a2, sign, xi, sigma)
    if h is not None:
        corr.view(-1).copy_(h.div_(max(batch, 1)))
    return g.to(out_dtype).view(-1, 1, 1)


def plasticity_(*, values, corr, crow, post_sq, scale, eta, oja):
    """The plasticity rule at every synapse, in place (the postsynaptic row of each synapse is
    derived from ``crow`` for the step: element storage keeps no COO rows)."""
    k = _kernels(values.dtype) if values.device.type == "cpu" and corr.dtype == torch.float32 else None
    if k is not None and values.is_contiguous() and corr.is_contiguous():
        # one pass over the synapses, row by row: no per-synapse row ids, no gathered q and s
        crow64 = crow.to(torch.int64).contiguous()
        q = post_sq.to(torch.float32).contiguous()
        s = None if scale is None else scale.to(torch.float32).contiguous()
        ptrs = (_ptr(crow64), _ptr(values), _ptr(corr), _ptr(q), None if s is None else _ptr(s))
        k.plasticity(crow64.numel() - 1, *ptrs, float(eta), float(oja), torch.get_num_threads())
        return
    counts = (crow[1:] - crow[:-1]).long()
    row = torch.repeat_interleave(torch.arange(counts.numel(), device=crow.device), counts, output_size=values.shape[0])
    new = plasticity.plasticity_rule(
        values.reshape(-1),
        corr.reshape(-1),
        post_sq.index_select(0, row),
        None if scale is None else scale.index_select(0, row),
        eta,
        oja,
    )
    values.view(-1).copy_(new)
