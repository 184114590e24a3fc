"""Shared test helpers: masks, the dense float64 oracle, NaN poisoning."""

from __future__ import annotations

import os

import pytest
import torch

# The Triton interpreter must be chosen before triton is first imported (triton issue #4317);
# on a machine without CUDA every Triton kernel in the tests runs under it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# CLI subprocesses inherit a wait policy, so they do not restart themselves to set one
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bionic_sparse import BlockSparseMatrix  # noqa: E402
from bionic_sparse.noise import synapse_noise  # noqa: E402

# Tolerances of each compute dtype against the float64 oracle (relative to max |ref|).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3}


def make_mask(
    n_out: int,
    n_in: int,
    b: int,
    block_density: float,
    fill: float = 1.0,
    seed: int = 0,
    empty_rows: slice | None = None,
    empty_cols: slice | None = None,
) -> torch.Tensor:
    """Bool ``[n_out, n_in]``: random blocks of density ``block_density``, each filled to ``fill``."""
    g = torch.Generator().manual_seed(seed)
    R, C = -(-n_out // b), -(-n_in // b)
    blocks = torch.rand(R, C, generator=g) < block_density
    dense = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)[:n_out, :n_in]
    if fill < 1.0:
        dense = dense & (torch.rand(n_out, n_in, generator=g) < fill)
    if empty_rows is not None:
        dense[empty_rows] = False
    if empty_cols is not None:
        dense[:, empty_cols] = False
    return dense


def dense_oracle_weight(
    matrix: BlockSparseMatrix,
    values: torch.Tensor,
    sign: torch.Tensor | None = None,
    sigma: float = 0.0,
    seed: int = 0,
    mode: str = "multiplicative",
) -> torch.Tensor:
    """Effective dense weight in float64: ``noisy(values) * M * sign``."""
    w = values.detach().double().cpu()
    if sigma:
        xi = synapse_noise(seed, matrix.nnzb, matrix.block_size).double()
        w = w * (1 + sigma * xi) if mode == "multiplicative" else w + sigma * xi
    dense = matrix.to("cpu").to_dense(w * matrix.element_mask().cpu())
    if sign is not None:
        dense = dense * sign.detach().double().cpu()
    return dense


def poison_(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan"))


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(got).any(), "NaN in result (unwritten output?)"
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return 0.0
    scale = ref.abs().max().clamp_min(1e-12)
    return float((got - ref).abs().max() / scale)


@pytest.fixture(params=["blockT", "dense", "csr"])
def cpu_method(request, monkeypatch):
    """Run the test under each CPU method of the PyTorch path."""
    monkeypatch.setenv("BIONIC_SPARSE_BACKEND", request.param)
    return request.param


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
