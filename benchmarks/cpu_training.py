"""Training steps on the path users run, for the CPU benchmarks: ``Run.train_epoch`` of the FER-2013
trainer (batch to float, augmentation, forward, backward, fused AdamW, schedule, Dale projection,
plasticity) on synthetic 48 x 48 images, at the configuration of ``configs/fer-cpu.json``.

As a program it is one benchmark worker (what two jobs on two cores run side by side):

    python -m benchmarks.cpu_training --model bionic --batches 20 --epochs 2

prints one JSON line: images/s, wall and CPU seconds of the timed epochs (the first epoch warms
up and is not timed), the thread count and the OpenMP wait policy it ran with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from bionic_sparse.data import FER2013
from bionic_sparse.training.config import TrainConfig, load_config_file
from bionic_sparse.training.trainer import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CONFIG = os.path.join(ROOT, "configs", "fer-cpu.json")


def synthetic_data(n_train: int, seed: int = 0) -> FER2013:
    g = torch.Generator().manual_seed(seed)
    images = {s: torch.randint(0, 256, (n, 48, 48), generator=g, dtype=torch.uint8) for s, n in
              (("train", n_train), ("public_test", 64), ("private_test", 64))}  # fmt: skip
    labels = {s: torch.randint(0, 7, (x.shape[0],), generator=g) for s, x in images.items()}
    return FER2013(images=images, labels=labels, source="synthetic")


def make_run(model: str, batches: int, out: str, config: str = CPU_CONFIG, seed: int = 0, **overrides) -> Run:
    """A trainer run of ``model`` ("bionic" or "baseline") whose epoch is ``batches`` steps."""
    d = load_config_file(config)
    d.update(model=model, out=out, seed=seed, device="cpu", epochs=1000, **overrides)
    cfg = TrainConfig.from_dict(d)
    return Run.setup(cfg, synthetic_data(batches * cfg.batch_size, seed))


def time_epoch(run: Run, epoch: int) -> dict:
    """One training epoch: wall and CPU seconds (this process, every thread), images."""
    n = run.data.labels["train"].numel()
    w0, c0 = time.perf_counter(), time.process_time()
    run.train_epoch(epoch)
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "images": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["bionic", "baseline"], default="bionic")
    ap.add_argument("--batches", type=int, default=20, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        run = make_run(args.model, args.batches, out)
        time_epoch(run, 0)
        rows = [time_epoch(run, e + 1) for e in range(args.epochs)]
    images = sum(r["images"] for r in rows)
    wall, cpu = sum(r["wall_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    print(
        json.dumps(
            {
                "model": args.model,
                "images": images,
                "wall_s": wall,
                "cpu_s": cpu,
                "images_per_s": images / wall,
                "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
