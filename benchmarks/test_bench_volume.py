"""The whole volume at neuron resolution: one training step of ``SparseConnectomeLinear`` over the
synthetic volume's synapses (issue #31), against edges, beside torch's own CSR.

    BIONIC_SPARSE_CACHE=DIR pytest benchmarks/test_bench_volume.py \
        --benchmark-json benchmarks/results/<date>-volume.json

The matrix is the synthetic volume's (82,247 neurons, 54.5 M connected pairs, seed 0; built once and
cached, ~4 min) in the ``laminar-spatial`` order, and uniformly random subsets of its synapses of
10^6 and 10^7 edges (the same 82,247 neurons, so that only the edge count changes). The layer is
built as users build it (``block_size="auto"``, which stores the synapses alone as one CSR), with
Dale signs (graded inhibition), synaptic noise and plasticity recording on; one step is forward
(batch 64), backward, AdamW, Dale projection and the Hebbian + homeostatic update, at one thread.
Beside it, the same products through torch's CSR (MKL): ``torch.sparse.mm`` for the forward (against
the layer's forward in eval mode, the same product; the training forward, which also draws the noise
of every synapse, is reported beside it; torch is timed both on a feature-major copy of the input
made outside the timing and from the layer's own ``[batch, n]`` layout, ``x.t()``, whose transposes
the layer's time includes), and for the backward what autograd of a sparse CSR product
computes (``W^T dy`` through the transposed CSR and the sampled product ``dy x^T`` on the pattern).
Dense would need ``82,247^2`` fp32 = 27.1 GB for the weights alone (54 GB with the gradient), more
than the machine. The peak RSS of a fresh process that builds the full-volume layer and runs two
steps is in ``extra_info`` (ru_maxrss). Last, the whole-volume FER-2013 model (``configs/fer-cpu-volume.json``)
through ``Run.train_epoch``, the trainer's step (front end, 3 recurrent steps, AdamW,
plasticity), on synthetic images: the cost of one batch, hence of an epoch of FER-2013's 28,709
images.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bionic_sparse.runtime import environment

BATCH = 64
EDGES = {"1e6": 1_000_000, "1e7": 10_000_000, "full": None}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _volume():
    from bionic_sparse.connectome import cached_volume
    from bionic_sparse.connectome.reorder import reorder

    column = cached_volume(seed=0, progress=False)
    return reorder(column, "laminar-spatial")[0]


_VOLUME: dict = {}


def _edges(which: str):
    if "column" not in _VOLUME:
        _VOLUME["column"] = _volume()
    column = _VOLUME["column"]
    pre, post = column.pre, column.post
    want = EDGES[which]
    if want is not None:
        keep = np.sort(np.random.default_rng(0).choice(pre.size, size=want, replace=False))
        pre, post = pre[keep], post[keep]
    return column, pre, post


def build_layer(column, pre, post):
    import scipy.sparse as sp

    from bionic_sparse import SparseConnectomeLinear

    n = column.n_neurons
    mask = sp.coo_matrix((np.ones(pre.size, dtype=np.int8), (post, pre)), shape=(n, n))
    sign = torch.where(torch.from_numpy(column.excitatory), 1.0, -1.0)
    layer = SparseConnectomeLinear(n, n, mask=mask, block_size="auto", sign=sign, noise_sigma=0.05)
    layer.record_activity = True
    return layer


def train_step(layer, opt, x, dy):
    y = layer(x)
    y.backward(dy)
    opt.step()
    opt.zero_grad(set_to_none=True)
    layer.constrain_()
    layer.plasticity_step(eta=1e-5, target_rate=0.5, homeo_rate=1e-3)


def _median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("which", list(EDGES))
def test_volume_train_step(benchmark, which, one_thread):
    column, pre, post = _edges(which)
    layer = build_layer(column, pre, post)
    layer.train()
    n, nnz = column.n_neurons, int(pre.size)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, n, generator=gen)
    dy = torch.randn(BATCH, n, generator=gen)
    train_step(layer, opt, x, dy)  # warm-up: the record, the optimiser state, compiled kernels
    rounds = 2 if which == "full" else 5  # the small sizes move most beside a training job
    benchmark.pedantic(train_step, args=(layer, opt, x, dy), rounds=rounds, iterations=1)
    ours_step = statistics.median(benchmark.stats.stats.data)
    with torch.no_grad():
        with layer.recording(False):  # the forward alone (recording without a backward takes the Hebbian term)
            ours_fwd_noisy = _median_seconds(lambda: layer(x), rounds)  # training: noise drawn per synapse
            layer.eval()  # the same product torch's CSR computes: no noise (the sign is folded in either way)
            ours_fwd = _median_seconds(lambda: layer(x), rounds)
            layer.train()
        # torch's CSR of the same synapses (values as the layer holds them, sign folded in)
        m = layer.matrix
        crow = m.crow.to(torch.int64)
        col = m.col.to(torch.int64)
        vals = layer.values.detach().reshape(-1).clone()
        w = torch.sparse_csr_tensor(crow, col, vals, size=(n, n))
        xt, dyt = x.t().contiguous(), dy.t().contiguous()
        torch_fwd = _median_seconds(lambda: torch.sparse.mm(w, xt), rounds)
        # from the layer's own layout ([batch, n] in and out, as nn.Linear): MKL reads x^T in place
        torch_fwd_bm = _median_seconds(lambda: torch.sparse.mm(w, x.t()).t(), rounds)

        def torch_fwd_bwd():
            torch.sparse.mm(w, xt)
            torch.sparse.mm(w.t(), dyt)  # dx: what autograd of a CSR product runs
            torch.sparse.sampled_addmm(w, dyt, x, beta=0.0)  # dW on the pattern

        torch_step = _median_seconds(torch_fwd_bwd, rounds)
        ours_fwd_bwd = ours_step  # ours includes AdamW, Dale and plasticity on top
    report = layer.storage()
    benchmark.extra_info.update(
        edges=nnz,
        neurons=n,
        batch=BATCH,
        connectome="synthetic volume, seed 0, laminar-spatial order"
        + ("" if which == "full" else f", a uniformly random {nnz:,} of its synapses"),
        storage=report,
        ours_train_step_s=ours_step,
        ours_forward_s=ours_fwd,
        ours_forward_with_noise_s=ours_fwd_noisy,
        torch_csr_forward_s=torch_fwd,
        torch_csr_forward_batch_major_s=torch_fwd_bm,
        torch_csr_forward_backward_s=torch_step,
        forward_speedup_vs_torch=torch_fwd / ours_fwd,
        step_speedup_vs_torch_fwd_bwd=torch_step / ours_fwd_bwd,
        ns_per_edge_step=ours_step / nnz * 1e9,
        dense_weight_gb=n * n * 4 / 1e9,
        env=environment(),
    )


def _peak_rss_script() -> str:
    return (
        "import resource, time, torch\n"
        "torch.set_num_threads(1)\n"
        "from benchmarks.test_bench_volume import _edges, build_layer, train_step\n"
        "column, pre, post = _edges('full')\n"
        "layer = build_layer(column, pre, post); layer.train()\n"
        "del column, pre, post\n"
        "opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)\n"
        "n = layer.in_features\n"
        "x = torch.rand(64, n); dy = torch.randn(64, n)\n"
        "for _ in range(2): train_step(layer, opt, x, dy)\n"
        "print('PEAK_GB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)\n"
    )


def test_volume_peak_rss(benchmark):
    """A fresh process: load the cached volume, build the layer, two AdamW training steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = {}

    def run():
        proc = subprocess.run(
            [sys.executable, "-c", _peak_rss_script()], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out["peak_gb"] = float(proc.stdout.split("PEAK_GB")[1])

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        peak_rss_gb=out["peak_gb"],
        target_gb=12.0,
        machine_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        this_process_peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        env=environment(),
    )
    assert out["peak_gb"] <= 12.0


def test_volume_model_trainer_step(benchmark, tmp_path, one_thread):
    """``Run.train_epoch`` of the whole-volume model, 2 batches of 64 per timed round."""
    from .cpu_training import make_run, time_epoch

    run = make_run("volume", 2, str(tmp_path), config=os.path.join(ROOT, "configs", "fer-cpu-volume.json"))
    time_epoch(run, 0)  # warm-up
    epochs = iter(range(1, 100))
    rows = []
    benchmark.pedantic(lambda: rows.append(time_epoch(run, next(epochs))), rounds=2, iterations=1)
    per_batch = statistics.median(r["wall_s"] for r in rows) / 2
    benchmark.extra_info.update(
        seconds_per_batch=per_batch,
        cpu_seconds_per_batch=statistics.median(r["cpu_s"] for r in rows) / 2,
        hours_per_fer_epoch=per_batch * (28709 / 64) / 3600,
        storage=run.model.volume.storage(),
        parameters=__import__("bionic_sparse").nn.parameter_counts(run.model),
        env=environment(),
    )
