"""FER-2013 trainer for BioNIC and the conventional baseline.

One run = one output directory with ``config.json``, ``metrics.csv`` (one row per epoch),
``last.pt`` / ``best.pt`` (written atomically every epoch; ``resume=True`` continues from
``last.pt``), ``results.json`` (PublicTest and PrivateTest accuracy overall and per class, timing,
versions, seed), ``confusion_matrix.png`` and ``learning_curves.png``. Model selection uses
PublicTest (or, with ``holdout`` > 0 and ``select_on="holdout"``, a stratified part of Training);
PrivateTest is evaluated once, with the best checkpoint. ``train_images`` keeps a stratified
subset of Training for reduced-budget runs (the ablation grid).

Multi-process: launched by ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU), every rank trains on its shard of each
epoch's permutation, plastic weights are averaged across ranks after each plasticity step, and
rank 0 writes the files.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..data import CLASSES, FER2013, DataError, augment_batch, file_md5, load_fer2013, ten_crop_logits, to_float
from ..models.bionic import BioNIC, BioNICConfig, ConventionalBaseline

__all__ = ["TrainConfig", "train", "evaluate"]


@dataclass
class TrainConfig:
    model: str = "bionic"  # "bionic" or "baseline"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov, momentum 0.9)
    label_smoothing: float = 0.1
    augment: bool = True
    tta: bool = False  # ten-crop test-time augmentation for the final evaluation
    amp: bool = False  # bf16 autocast on CUDA
    seed: int = 0
    device: str = "auto"
    data: str | None = None
    out: str = "runs/fer"
    quick: bool = False  # a few hundred images, one epoch
    train_images: int | None = None  # train on this many (after the hold-out; stratified, seeded): reduced budgets
    holdout: float = 0.0  # fraction of Training held out (stratified, seeded) as an in-distribution split
    select_on: str = "public_test"  # split for model selection: "public_test" or "holdout"
    resume: bool = False
    tensorboard: bool = False
    model_config: BioNICConfig = field(default_factory=BioNICConfig)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid: {sorted(names)}")
        if isinstance(d.get("model_config"), dict):
            d["model_config"] = BioNICConfig.from_dict(d["model_config"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_model(cfg: TrainConfig) -> BioNIC:
    if cfg.model == "bionic":
        return BioNIC(cfg.model_config)
    if cfg.model == "baseline":
        return ConventionalBaseline(cfg.model_config)
    raise ValueError(f"model must be 'bionic' or 'baseline', got {cfg.model!r}")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    tta: bool = False,
) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix ``[true, predicted]``."""
    model.eval()
    confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64)
    for start in range(0, labels.numel(), batch_size):
        x = to_float(images[start : start + batch_size]).to(device)
        logits = ten_crop_logits(model, x) if tta else model(x)
        pred = logits.argmax(-1).cpu()
        confusion += torch.bincount(
            labels[start : start + batch_size] * len(CLASSES) + pred, minlength=len(CLASSES) ** 2
        ).view(len(CLASSES), len(CLASSES))
    per_class = (confusion.diag().double() / confusion.sum(1).clamp_min(1)).tolist()
    acc = float(confusion.diag().sum() / max(confusion.sum(), 1))
    return {
        "accuracy": acc,
        "per_class": dict(zip(CLASSES, per_class, strict=True)),
        "confusion": confusion.tolist(),
        "n": int(labels.numel()),
    }


def _save_atomic(obj: dict, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never loses the previous checkpoint


def _versions() -> dict:
    from .. import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "bionic_sparse": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "triton": triton_version,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _sync_plastic(model: torch.nn.Module, world: int) -> None:
    """Average the plastic weights (changed outside autograd) so that ranks stay identical."""
    if world == 1:
        return
    for layer in model.connectome_layers():
        p = layer.values if hasattr(layer, "values") else layer.weight
        dist.all_reduce(p.data)
        p.data /= world


def train(cfg: TrainConfig, data: FER2013 | None = None) -> dict:
    """Train and evaluate; returns the ``results.json`` content."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs} and {cfg.batch_size}")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
    if cfg.select_on not in ("public_test", "holdout"):
        raise ValueError(f"select_on must be 'public_test' or 'holdout', got {cfg.select_on!r}")
    if cfg.select_on == "holdout" and not cfg.holdout > 0:
        raise ValueError("select_on='holdout' needs holdout > 0 (the fraction of Training to hold out)")
    rank, world = _dist()
    device = _device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    epochs = 1 if cfg.quick else cfg.epochs
    quick_n = 300 if cfg.quick else None
    data = data.head(quick_n) if data is not None and quick_n else data or load_fer2013(cfg.data, cfg.seed, quick_n)
    for split in ("train", "public_test", "private_test"):
        if data.labels.get(split) is None or data.labels[split].numel() == 0:
            raise DataError(f"{data.source}: the {split} split has no images; training needs train, public_test and private_test")
    if cfg.holdout > 0:  # before limiting: the hold-out keeps its size when the training budget shrinks
        data = data.hold_out(cfg.holdout, seed=cfg.seed)
    if cfg.train_images is not None:
        data = data.limit_train(cfg.train_images, seed=cfg.seed)
    eval_splits = ["public_test"] + (["holdout"] if "holdout" in data.labels else [])
    data_warnings = data.check()
    if rank == 0:
        print(data.describe())
        for w in data_warnings:
            print(f"warning: {w}")
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)

    model = build_model(cfg).to(device)
    opt = (
        torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw"
        else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    )
    x_train, y_train = data.images["train"], data.labels["train"]
    steps_per_epoch = max(1, -(-y_train.numel() // (cfg.batch_size * world)))
    # Linear warm-up then cosine decay, a function of the step only: a resumed run with more
    # epochs continues on the schedule of its new length.
    total_steps = epochs * steps_per_epoch
    warmup = max(1, int(0.05 * total_steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    start_epoch, best_acc, history = 0, -1.0, []
    last_path, best_path = os.path.join(cfg.out, "last.pt"), os.path.join(cfg.out, "best.pt")
    if cfg.resume and os.path.exists(last_path):
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc, history = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["history"]
        if rank == 0:
            print(f"resumed from {last_path} after epoch {ckpt['epoch'] + 1}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    writer = None
    if cfg.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(cfg.out, "tb"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda" else None

    for epoch in range(start_epoch, epochs):
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(y_train.numel(), generator=g)
        perm = perm[rank::world]
        seen, correct, loss_sum, t0 = 0, 0, 0.0, time.perf_counter()
        bar = tqdm(
            range(0, perm.numel(), cfg.batch_size), desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0, leave=False
        )
        for start in bar:
            idx = perm[start : start + cfg.batch_size]
            x = to_float(x_train[idx]).to(device, non_blocking=True)
            y = y_train[idx].to(device)
            if cfg.augment:
                x = augment_batch(x, generator=g)
            if autocast is not None:
                with autocast:
                    logits = net(x)
            else:
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.after_optimizer_step()
            _sync_plastic(model, world)
            seen += y.numel()
            correct += int((logits.argmax(-1) == y).sum())
            loss_sum += float(loss.detach()) * y.numel()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        seconds = time.perf_counter() - t0
        accs = {s: evaluate(model, data.images[s], data.labels[s], device)["accuracy"] for s in eval_splits}
        selection_acc = accs[cfg.select_on]
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "public_acc": accs["public_test"],
            **({"holdout_acc": accs["holdout"]} if "holdout" in accs else {}),
            "lr": sched.get_last_lr()[0],
            "seconds": seconds,
            "images_per_s": seen * world / max(seconds, 1e-9),
        }
        history.append(row)
        if rank == 0:
            print(
                f"epoch {epoch + 1}: loss {row['train_loss']:.4f} train {row['train_acc']:.4f} "
                f"public {row['public_acc']:.4f}"
                + (f" holdout {row['holdout_acc']:.4f}" if "holdout_acc" in row else "")
                + f" ({row['images_per_s']:.0f} img/s)"
            )
            if writer is not None:
                for k, v in row.items():
                    writer.add_scalar(k, v, epoch + 1)
            ckpt = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "best_acc": max(best_acc, selection_acc),
                "history": history,
                "config": cfg.to_dict(),
            }
            if selection_acc > best_acc:
                _save_atomic(ckpt, best_path)
            _save_atomic(ckpt, last_path)
            _write_metrics(os.path.join(cfg.out, "metrics.csv"), history)
        best_acc = max(best_acc, selection_acc)

    results = {}
    if rank == 0:
        if os.path.exists(best_path):
            model.load_state_dict(torch.load(best_path, map_location=device, weights_only=False)["model"])
        results = {s: evaluate(model, data.images[s], data.labels[s], device) for s in [*eval_splits, "private_test"]}
        if cfg.tta:  # ten-crop columns beside the plain ones, from the same checkpoint
            results.update(
                {f"{s}_tta": evaluate(model, data.images[s], data.labels[s], device, tta=True) for s in list(results)}
            )
        results.update(
            {
                "selected_on": cfg.select_on,
                "best_selection_acc": best_acc,
                "epochs": epochs,
                "history": history,
                "seed": cfg.seed,
                "config": cfg.to_dict(),
                "versions": _versions(),
                "device": str(device),
                "world_size": world,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "data_source": data.source,
                "data_file": os.path.basename(data.file) if data.file else None,
                "data_md5": file_md5(data.file) if data.file else None,
                "data_warnings": data_warnings,
                "split_sizes": {s: y.numel() for s, y in data.labels.items()},
            }
        )
        with open(os.path.join(cfg.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        _plots(cfg.out, history, results["private_test"]["confusion"])
        print(
            f"PublicTest {results['public_test']['accuracy']:.4f}, "
            + (f"hold-out {results['holdout']['accuracy']:.4f}, " if "holdout" in results else "")
            + f"PrivateTest {results['private_test']['accuracy']:.4f}"
            + (f" (ten-crop {results['private_test_tta']['accuracy']:.4f})" if cfg.tta else "")
            + f" -> {cfg.out}/results.json"
        )
    if writer is not None:
        writer.close()
    return results


def _write_metrics(path: str, history: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def _plots(out: str, history: list[dict], confusion: list[list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = torch.tensor(confusion, dtype=torch.float64)
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(
                j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if norm[i, j] > 0.5 else "k"
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("PrivateTest confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "confusion_matrix.png"), dpi=130)
    plt.close(fig)
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["train_acc"] for h in history], label="train (augmented)")
        ax.plot(ep, [h["public_acc"] for h in history], label="PublicTest")
        if "holdout_acc" in history[0]:
            ax.plot(ep, [h["holdout_acc"] for h in history], label="hold-out (from Training)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "learning_curves.png"), dpi=130)
        plt.close(fig)
