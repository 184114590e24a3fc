"""Quick-start demo: train a small network whose hidden layer is a block-sparse connectome layer.

Builds a synthetic block-structured connectome mask (local clusters plus random long-range
blocks, 80 % excitatory / 20 % inhibitory presynaptic units with graded inhibition), drops a
``SparseConnectomeLinear`` into an MLP, trains it on a synthetic teacher task with synaptic noise
and Hebbian + homeostatic plasticity after each optimiser step, and compares it with the same MLP
on a dense masked ``nn.Linear``. Writes ``metrics.csv``, ``summary.json`` and ``loss.png`` to
``--out`` (default ``runs/demo``).

    python scripts/demo.py [--steps 300] [--seed 0] [--device cpu] [--out runs/demo]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bionic_sparse as bs  # noqa: E402
from bionic_sparse.runtime import CpuShare, cpu_name, reexec_with_passive_wait  # noqa: E402

# other processes above this share of the cores make the timings the sharing's, not the engine's
BUSY_WARNING = 0.1


def synthetic_connectome_mask(n: int, block: int, density: float, gen: torch.Generator) -> torch.Tensor:
    """Block mask with a banded (local) structure plus random long-range blocks."""
    nb = n // block
    idx = torch.arange(nb)
    local = (idx[:, None] - idx[None, :]).abs() <= 1
    long_range = torch.rand(nb, nb, generator=gen) < density
    blocks = local | long_range
    return blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)


class DemoNet(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, hidden_layer: nn.Module):
        super().__init__()
        self.inp = nn.Linear(n_in, hidden)
        self.hidden = hidden_layer
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.norm(torch.relu(self.hidden(h))))


class DenseMasked(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.lin = nn.Linear(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return nn.functional.linear(x, self.lin.weight * self.mask, self.lin.bias)


def train(model: nn.Module, teacher: nn.Module, steps: int, batch: int, n_in: int, device, seed: int, desc: str):
    gen = torch.Generator().manual_seed(seed)  # same data stream for every variant
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses, t0 = [], time.perf_counter()
    sparse = model.hidden if isinstance(model.hidden, bs.SparseConnectomeLinear) else None
    plastic = sparse is not None and sparse.noise_sigma > 0
    if plastic:
        sparse.record_activity = True
    for _ in tqdm(range(steps), desc=desc, leave=False):
        x = torch.randn(batch, n_in, generator=gen).to(device)
        with torch.no_grad():
            y = teacher(x).argmax(-1)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sparse is not None:
            sparse.constrain_()  # Dale's law: keep magnitudes non-negative
        if plastic:
            sparse.plasticity_step(eta=1e-4, homeo_rate=0.01, target_rate=0.5)
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bionic-sparse quick-start demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
    if argv is None:  # the passive OpenMP wait policy, as the trainer: never spin against another job
        reexec_with_passive_wait()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n_in, n_out, hidden, b = 128, 10, args.hidden, args.block_size

    mask = synthetic_connectome_mask(hidden, b, 0.05, gen)
    n_inhib = hidden // 5
    sign = torch.ones(hidden)
    sign[-n_inhib:] = -(0.5 + torch.rand(n_inhib, generator=gen))  # graded inhibition, g_I * m_j
    layer = bs.SparseConnectomeLinear(hidden, hidden, mask=mask, block_size=b, sign=sign, noise_sigma=0.05)
    plain = bs.SparseConnectomeLinear(hidden, hidden, mask=mask, block_size=b, sign=sign)
    stats = layer.matrix.block_fill()
    print(f"connectome layer: {layer}")
    print(f"  block sparsity {stats.block_sparsity:.1%}, {stats.n_synapses:,} synapses, fill {stats.mean_fill:.2f}")

    teacher = nn.Sequential(nn.Linear(n_in, 256), nn.Tanh(), nn.Linear(256, n_out)).to(args.device)
    nets = {
        "sparse+biology": DemoNet(n_in, hidden, n_out, layer),
        "sparse": DemoNet(n_in, hidden, n_out, plain),
        "dense_masked": DemoNet(n_in, hidden, n_out, DenseMasked(mask)),
    }
    losses, seconds = {}, {}
    share = CpuShare()
    for name, net in nets.items():
        losses[name], seconds[name] = train(
            net.to(args.device), teacher, args.steps, args.batch, n_in, args.device, args.seed + 1, name
        )

    others = share.others()
    threads, policy = torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "unset (GNU OpenMP spins)")
    with open(os.path.join(args.out, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *(f"loss_{k}" for k in nets)])
        w.writerows(zip(range(args.steps), *losses.values(), strict=True))
    summary = dict(
        seed=args.seed,
        device=args.device,
        steps=args.steps,
        batch=args.batch,
        hidden=hidden,
        block_size=b,
        block_sparsity=stats.block_sparsity,
        synapses=stats.n_synapses,
        final_loss={k: sum(v[-20:]) / 20 for k, v in losses.items()},
        seconds=seconds,
        speedup_sparse_vs_dense_masked=seconds["dense_masked"] / seconds["sparse"],
        threads=threads,
        omp_wait_policy=policy,
        other_processes_cpu_share=others,
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        torch=torch.__version__,
        bionic_sparse=bs.__version__,
        python=platform.python_version(),
    )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        labels = {
            "sparse+biology": "SparseConnectomeLinear + noise, Hebbian, homeostasis",
            "sparse": "SparseConnectomeLinear",
            "dense_masked": "dense masked nn.Linear",
        }
        for k, v in losses.items():
            ax.plot(v, label=f"{labels[k]} ({seconds[k]:.1f} s)", alpha=0.8)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_ylabel("cross-entropy")
        ax.set_title(f"{hidden}x{hidden} hidden layer, {stats.block_sparsity:.0%} block-sparse, b={b}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "loss.png"), dpi=120)
    except ImportError:
        pass
    for k in nets:
        print(f"{k:>15}: final loss {summary['final_loss'][k]:.3f}, {seconds[k]:.1f} s for {args.steps} steps")
    busy = "not measured" if others is None else f"other processes used {others:.0%} of the CPU meanwhile"
    print(
        f"sparse vs dense masked: {summary['speedup_sparse_vs_dense_masked']:.1f}x faster on {args.device} "
        f"({threads} thread{'s' if threads > 1 else ''}, OMP_WAIT_POLICY={policy}; {busy})"
    )
    if others is not None and others > BUSY_WARNING:
        print(
            f"warning: the machine was busy ({others:.0%} of its CPU went to other processes), so these times "
            "measure the sharing as much as the engine; run the demo again on an idle machine to compare"
        )
    print(f"wrote {args.out}/metrics.csv, summary.json, loss.png")
    print(
        "next: BioNIC on FER-2013 (fer2013.csv from Kaggle, or its image-folder .zip):\n"
        "  .venv/bin/python -m bionic_sparse.training --sparse --data PATH --config configs/fer-cpu.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
