"""BlockSparseMatrix: constructors, index views, round trips, statistics, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bionic_sparse import BlockSparseMatrix

from .conftest import make_mask

SHAPES = [
    pytest.param(64, 64, 16, id="64x64-b16"),
    pytest.param(70, 45, 16, id="70x45-b16-ragged"),
    pytest.param(33, 100, 32, id="33x100-b32-ragged"),
    pytest.param(5, 7, 4, id="5x7-b4"),
]


def check_index(m: BlockSparseMatrix) -> None:
    R, C, nnzb = m.n_block_rows, m.n_block_cols, m.nnzb
    for t in m.index_tensors().values():
        assert t.dtype == torch.int32
    assert m.crow.shape == (R + 1,) and m.ccol_t.shape == (C + 1,)
    assert int(m.crow[-1]) == nnzb and int(m.ccol_t[-1]) == nnzb
    key = m.row.long() * C + m.col.long()
    assert torch.all(key[1:] > key[:-1]), "blocks must be in strictly increasing (row, col) order"
    for r in range(R):
        assert torch.all(m.row[m.crow[r] : m.crow[r + 1]] == r)
    # transposed view: blocks of column c, in row order, pointing back into the same values
    perm = m.perm_t.long()
    assert sorted(perm.tolist()) == list(range(nnzb))
    assert torch.equal(m.row_t, m.row[perm])
    for c in range(C):
        seg = perm[m.ccol_t[c] : m.ccol_t[c + 1]]
        assert torch.all(m.col[seg] == c)
        assert torch.all(m.row[seg][1:] > m.row[seg][:-1])


@pytest.mark.parametrize("n_out,n_in,b", SHAPES)
@pytest.mark.parametrize("fill", [1.0, 0.3], ids=["full", "partial"])
def test_from_dense_round_trip(n_out, n_in, b, fill):
    mask = make_mask(n_out, n_in, b, 0.4, fill, seed=1, empty_rows=slice(0, b), empty_cols=slice(-3, None))
    weight = torch.randn(n_out, n_in, dtype=torch.float64)
    m = BlockSparseMatrix.from_dense(mask, b, weight=weight)
    check_index(m)
    assert torch.equal(m.to_dense_mask(), mask)
    assert torch.equal(m.to_dense(), weight * mask)
    assert m.values.dtype == torch.float64
    # off-mask entries inside stored blocks are zero
    assert not (m.values * ~m.element_mask()).any()


@pytest.mark.parametrize("n_out,n_in,b", SHAPES)
def test_scipy_and_edges_round_trip(n_out, n_in, b):
    mask = make_mask(n_out, n_in, b, 0.5, 0.5, seed=2)
    weight = torch.randn(n_out, n_in, dtype=torch.float64) * mask
    m = BlockSparseMatrix.from_scipy(sp.csr_matrix(weight.numpy()), b, dtype=torch.float64)
    check_index(m)
    np.testing.assert_array_equal(m.to_scipy().toarray(), weight.numpy())
    post, pre = mask.nonzero(as_tuple=True)
    e = BlockSparseMatrix.from_edges(post, pre, (n_out, n_in), b, weight=weight[post, pre], dtype=torch.float64)
    check_index(e)
    assert torch.equal(e.to_dense_mask(), mask)
    assert torch.equal(e.to_dense(), weight)
    assert torch.equal(e.values, BlockSparseMatrix.from_dense(mask, b, weight=weight).values)


def test_from_edges_merges_duplicates():
    m = BlockSparseMatrix.from_edges([0, 0, 3], [1, 1, 2], (4, 4), 2, weight=torch.tensor([1.0, 2.0, 5.0]))
    assert m.to_dense()[0, 1] == 3.0 and m.to_dense()[3, 2] == 5.0
    assert m.block_fill().n_synapses == 2


def test_block_mask_constructor_and_fill():
    block_mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    m = BlockSparseMatrix.from_block_mask(block_mask, 16, shape=(40, 45))
    check_index(m)
    stats = m.block_fill()
    assert stats.nnzb == 4 and stats.n_blocks == 9
    assert stats.block_density == pytest.approx(4 / 9)
    # last block row has 40 - 32 = 8 valid rows, last block column 45 - 32 = 13 valid columns
    expected = [16 * 16, 16 * 13, 8 * 16, 8 * 16]
    assert stats.n_synapses == sum(expected)
    assert torch.allclose(stats.fill, torch.tensor(expected, dtype=torch.float64) / 256)
    assert m.synapse_mask is None


def test_empty_matrix():
    m = BlockSparseMatrix.from_dense(torch.zeros(20, 30, dtype=torch.bool), 16)
    check_index(m)
    assert m.nnzb == 0 and m.block_fill().element_density == 0.0
    assert m.to_dense().shape == (20, 30)


def test_to_and_with_values():
    m = BlockSparseMatrix.from_dense(make_mask(40, 40, 8, 0.5, 0.5), 8, weight=torch.randn(40, 40))
    d = m.to(dtype=torch.float64)
    assert d.values.dtype == torch.float64 and d.col.dtype == torch.int32
    assert d.col is m.col  # no device change: index tensors are shared
    v = torch.ones_like(m.values)
    assert m.with_values(v).values is v
    with pytest.raises(ValueError, match="values must have shape"):
        m.with_values(torch.ones(3))


def test_vectorised_build_is_fast():
    # 16384 x 16384 at b=32 with 10 % block density: 26k blocks; a per-block Python loop
    # would take seconds, argsort/bincount takes milliseconds.
    mask = torch.rand(512, 512) < 0.1
    m = BlockSparseMatrix.from_block_mask(mask, 32)
    check_index(BlockSparseMatrix.from_block_mask(mask[:40, :40], 32))
    assert m.nnzb == int(mask.sum())


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(mask=torch.zeros(4, 4, dtype=torch.int64), block_size=2), TypeError, "mask must be a bool or floating"),
        (dict(mask=torch.tensor([[float("nan"), 0.0]]), block_size=2), ValueError, "NaN or Inf"),
        (dict(mask=torch.zeros(4), block_size=2), ValueError, "2-D"),
        (dict(mask=[[1, 0]], block_size=2), TypeError, "torch.Tensor or numpy"),
        (dict(mask=torch.zeros(4, 4), block_size=0), ValueError, "block_size must be >= 1"),
        (dict(mask=torch.zeros(4, 4), block_size=2.0), TypeError, "block_size must be an int"),
        (dict(mask=torch.zeros(4, 4), block_size=2, weight=torch.zeros(3, 4)), ValueError, "weight must have"),
    ],
)
def test_from_dense_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BlockSparseMatrix.from_dense(**kwargs)


def test_other_constructor_errors():
    with pytest.raises(ValueError, match="post indices"):
        BlockSparseMatrix.from_edges([5], [0], (4, 4), 2)
    with pytest.raises(ValueError, match="same length"):
        BlockSparseMatrix.from_edges([0, 1], [0], (4, 4), 2)
    with pytest.raises(ValueError, match="duplicate blocks"):
        BlockSparseMatrix([0, 0], [1, 1], (4, 4), 2)
    with pytest.raises(ValueError, match="does not cover"):
        BlockSparseMatrix.from_block_mask(torch.ones(2, 2, dtype=torch.bool), 4, shape=(20, 8))
    with pytest.raises(TypeError, match="scipy.sparse"):
        BlockSparseMatrix.from_scipy(np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        BlockSparseMatrix.from_scipy(sp.csr_matrix(np.array([[np.inf, 0.0]])), 2)
