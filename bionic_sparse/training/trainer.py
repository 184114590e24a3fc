"""FER-2013 trainer for BioNIC and the conventional baseline.

One run = one output directory with ``config.json`` (what ran), ``metrics.csv`` (one row per
epoch), ``last.pt`` (everything resume needs, written atomically after every epoch), ``best.pt``
(the model of the best epoch on the selection split), ``results.json`` (accuracy overall and per
class on every split, ten-crop columns with ``tta``, timing, versions, seed, the data file's md5),
``confusion_matrix.png`` and ``learning_curves.png``.

Selection uses PublicTest (or, with ``holdout`` > 0 and ``select_on="holdout"``, a stratified part
of Training); PrivateTest is evaluated once, with the best checkpoint.

Resume is exact: ``last.pt`` holds the model (with the layers' noise counters), optimiser,
scheduler, history and every global random state, and each epoch's shuffling and augmentation
come from a generator seeded by (seed, epoch); so a run interrupted and resumed gives the same
metrics (timing columns aside) and weights as one that was never interrupted (tested on CPU).

Multi-process: with ``WORLD_SIZE > 1`` (``torchrun``) :func:`train` joins the process group
itself, wraps the model in DistributedDataParallel (gloo on CPU, nccl on GPU) and gives every
rank the same number of images per epoch (:func:`shard`); plastic weights are averaged across
ranks after each plasticity step, and rank 0 writes the files.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..data import (
    CLASSES,
    FER2013,
    DataError,
    augment_batch,
    file_md5,
    load_fer2013,
    random_erase,
    ten_crop_logits,
    to_float,
)
from ..models.bionic import BioNIC, ConventionalBaseline
from ..models.volume import VolumeModel
from ..nn import parameter_counts
from ..plasticity import row_scale
from ..runtime import code_revision, environment
from .checkpoint import rng_state, save_atomic, set_rng_state
from .config import NON_IDENTITY_FIELDS, TrainConfig
from .report import plot_run, write_metrics

__all__ = ["TrainConfig", "Run", "train", "evaluate", "save_predictions", "shard", "QUICK_IMAGES"]

QUICK_IMAGES = 300  # per split, with quick=True
EVAL_SPLITS = ("train", "public_test", "private_test")


# units per neuron from which a model is the GPU-sized default (a note says so on a CPU)
GPU_SIZED_UNITS = 16

# after this many steps of its first epoch, a run prints how long it will take
ESTIMATE_STEPS = 20


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


# every this many steps, the size of the plasticity update is compared with the optimiser's
PLASTICITY_PROBE_EVERY = 50


class PlasticityProbe:
    """How far plasticity moves each connectome layer's weights relative to the optimiser, in one
    step (Frobenius norms over the stored weights, per layer ``i``):

    - ``plastic_over_opt_l<i>`` = ||W2 - W1|| / ||W1 - W0||: everything after the optimiser
      (W0 before it, W1 after it, W2 after the Dale projection and the plasticity step);
    - ``hebbian_over_opt_l<i>`` = ||W2 / s - Wc|| / ||W1 - W0||: the Hebbian (Oja) term alone,
      where Wc is W1 projected (Dale signs, synapse mask) and ``s`` each row's homeostatic scale;
    - ``homeostatic_over_opt_l<i>`` = ||W2 - W2 / s|| / ||W1 - W0||: the synaptic scaling alone
      (exactly 0 when homeostasis is off);
    - ``<term>_rel_l<i>`` = ||dW_term|| / ||W0|| for ``opt`` (the optimiser), ``dale`` (the Dale
      projection and mask), ``hebbian``, ``homeostatic`` and ``plastic`` (all after the optimiser):
      the relative update size of each term, which stays meaningful when the learning rate is ~0;
    - ``rate_mean_l<i>`` and ``rate_off_target_l<i>``: the units' rate EMA (mean) and its mean
      relative distance ``|r - target| / target`` from homeostasis's target.

    The rule is ``W2 = ((Wc + eta (C - oja q W)) s)`` with sign flips stopped at zero, so the
    three parts (projection ``Wc - W1``, Hebbian, homeostatic) add up to ``W2 - W1``.

    NOTE: a term that moves the weights by 1e-5 of what the gradient does cannot show in an
    ablation; these columns (per epoch, the mean over probed steps) say which ones can.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        layers = model.connectome_layers() if hasattr(model, "connectome_layers") else []
        cfg = getattr(model, "cfg", None)
        self.layers = layers
        self.target_rate = getattr(cfg, "target_rate", 0.1)
        self.homeo_rate = getattr(cfg, "homeostasis_rate", 0.0) if getattr(model, "plastic", False) else 0.0
        self.weights = [layer._plastic_weight() for layer in layers]
        self.before = [w.detach().clone() for w in self.weights]

    def after_optimizer(self) -> None:
        self.after_opt = [w.detach().clone() for w in self.weights]

    def after_plasticity(self) -> dict[str, float]:
        out = {}
        parts = zip(self.layers, self.before, self.after_opt, self.weights, strict=True)
        for i, (layer, w0, w1, w) in enumerate(parts, start=1):
            opt = float((w1 - w0).norm())
            w2 = w.detach()
            # the rate the rule used is the one in the buffer now (it is updated before the weights)
            scale = row_scale(layer.post_rate, self.target_rate, self.homeo_rate)
            unscaled = w2 if scale is None else w2 / _rows_like(layer, scale).to(w2.dtype)
            projected = w1.clamp(min=0.0) if getattr(layer, "sign", None) is not None else w1
            # the layer's constrain_(), out of place: the block layer keeps a synapse mask over its
            # stored slots (None: all are synapses), the dense-masked one a mask over the matrix
            mask = getattr(layer, "synapse_mask", None) if hasattr(layer, "matrix") else getattr(layer, "mask", None)
            if mask is not None:
                projected = projected * mask
            sizes = {
                "plastic": float((w2 - w1).norm()),
                "dale": float((projected - w1).norm()),
                "hebbian": float((unscaled - projected).norm()),
                "homeostatic": float((w2 - unscaled).norm()),
            }
            for name in ("plastic", "hebbian", "homeostatic"):
                out[f"{name}_over_opt_l{i}"] = sizes[name] / opt if opt > 0 else float("nan")
            # the same terms in absolute terms, ||dW|| / ||W|| of the weights before the step: a
            # ratio to the optimiser explodes when the learning rate goes to 0 whatever the term does
            norm = float(w0.norm())
            for name, size in (("opt", opt), *sizes.items()):
                out[f"{name}_rel_l{i}"] = size / norm if norm > 0 else float("nan")
            rate = layer.post_rate.detach().double()
            out[f"rate_mean_l{i}"] = float(rate.mean())
            # mean relative distance of the units' rates from homeostasis's target
            out[f"rate_off_target_l{i}"] = float(((rate - self.target_rate).abs() / self.target_rate).mean())
        return out


def _rows_like(layer: torch.nn.Module, per_row: torch.Tensor) -> torch.Tensor:
    """A per-output-unit vector ``[out_features]`` broadcast to the layer's plastic weight: ``[out, 1]``
    for a dense ``weight``, ``[nnzb, b, 1]`` for stored blocks (padding rows get 1)."""
    weight = layer._plastic_weight()
    if weight.dim() == 2:
        return per_row[:, None]
    m = layer.matrix
    b = m.block_size
    padded = F.pad(per_row, (0, m.n_block_rows * b - per_row.numel()), value=1.0)
    return padded.view(-1, b)[m.coo_row().long()][:, :, None]


def resolve_device(name: str, amp: bool = False) -> torch.device:
    """The device of ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked before any data
    loads: an unknown name, an absent GPU or ``--amp`` without CUDA is a ``ValueError``."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: the trainer runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: no CUDA GPU is available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if amp and device.type != "cuda":
        raise ValueError(f"--amp is bf16 autocast on a CUDA GPU; the device here is {device.type}: leave --amp off")
    return device


# every file a run writes into its folder (a new run in a folder that holds any of them is refused
# unless the user asks to overwrite it, and then they are deleted first)
RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "results.json", "predictions.npz",
             "confusion_matrix.png", "learning_curves.png", "tb")  # fmt: skip


def check_optional_dependencies(cfg: TrainConfig) -> None:
    """Features whose extra is not installed are refused before anything is written."""
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError(
                "--tensorboard needs the tensorboard package: pip install 'bionic-sparse[tensorboard]'"
            ) from None


def run_identity(cfg: TrainConfig, device: torch.device, data_md5: str | None) -> dict:
    """Everything that determines a run's result: the resolved config (every field but
    :data:`NON_IDENTITY_FIELDS`, the data path made absolute), the device type, the data file's
    md5, the package version and the code revision."""
    from .. import __version__

    ident = json.loads(json.dumps(cfg.to_dict()))
    ident["epochs"] = cfg.effective_epochs  # as config.json says: --quick runs one epoch
    for name in NON_IDENTITY_FIELDS:
        ident.pop(name, None)
    if ident.get("data"):
        ident["data"] = os.path.abspath(ident["data"])
    ident.update(device_type=device.type, data_md5=data_md5, bionic_sparse=__version__, code_revision=code_revision())
    return ident


def _with_added_defaults(identity: dict) -> dict:
    """``identity`` with every config field that it lacks set to that field's default.

    NOTE: a field added to :class:`TrainConfig` or :class:`BioNICConfig` after a checkpoint was
    written is, at its default, what the older code did (new fields default to the old
    behaviour), so it must not make a resume look like another run."""
    model = identity.get("model", "bionic")
    defaults = json.loads(json.dumps(TrainConfig(model=model).to_dict()))  # as run_identity writes them
    defaults_model = defaults.pop("model_config")
    for name in NON_IDENTITY_FIELDS:
        defaults.pop(name, None)
    out = {**defaults, **identity}
    if isinstance(identity.get("model_config"), dict):
        out["model_config"] = {**defaults_model, **identity["model_config"]}
    return out


def identity_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every field that differs (nested ``model_config`` flattened)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the process group when launched with ``WORLD_SIZE > 1``; returns ``(rank, world)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(perm: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch's permutation. Every rank gets ``len(perm) // world`` images
    (the last ``len(perm) % world`` of the permutation are left out, a different few each epoch),
    so all ranks run the same number of steps and DDP's collectives never wait for a missing one."""
    per_rank = perm.numel() // world
    return perm[: per_rank * world][rank::world]


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.model == "bionic":
        return BioNIC(cfg.model_config)
    if cfg.model == "baseline":
        return ConventionalBaseline(cfg.model_config)
    if cfg.model == "volume":
        return VolumeModel(cfg.model_config)
    raise ValueError(f"model must be 'bionic', 'baseline' or 'volume', got {cfg.model!r}")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    tta: bool = False,
    keep_predictions: bool = False,
) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix ``[true, predicted]``; with
    ``keep_predictions`` also ``predictions``, the predicted class of every image (uint8 ``[n]``)."""
    model.eval()
    confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64)
    preds = []
    for start in range(0, labels.numel(), batch_size):
        x = to_float(images[start : start + batch_size]).to(device)
        logits = ten_crop_logits(model, x) if tta else model(x)
        pred = logits.argmax(-1).cpu()
        preds.append(pred.to(torch.uint8))
        confusion += torch.bincount(
            labels[start : start + batch_size] * len(CLASSES) + pred, minlength=len(CLASSES) ** 2
        ).view(len(CLASSES), len(CLASSES))
    per_class = (confusion.diag().double() / confusion.sum(1).clamp_min(1)).tolist()
    acc = float(confusion.diag().sum() / max(confusion.sum(), 1))
    out = {
        "accuracy": acc,
        "per_class": dict(zip(CLASSES, per_class, strict=True)),
        "confusion": confusion.tolist(),
        "n": int(labels.numel()),
    }
    if keep_predictions:
        out["predictions"] = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.uint8)
    return out


PREDICTION_SPLITS = ("public_test", "private_test")


def save_predictions(path: str, data: FER2013, results: dict) -> None:
    """``predictions.npz`` (compressed, ~20 kB): for PublicTest and PrivateTest the labels
    (``<split>_labels``), the predicted class of every image, plain (``<split>``) and ten-crop
    (``<split>_tta``, when evaluated), and ``private_test_in_train`` (the exact copies of Training
    images); the image-level tests of ``fer_table`` (McNemar, bootstrap) read it. Pops the
    ``predictions`` entries from ``results``."""
    import numpy as np

    arrays = {"private_test_in_train": data.in_train("private_test").numpy()}
    for split in PREDICTION_SPLITS:
        arrays[f"{split}_labels"] = data.labels[split].numpy().astype(np.uint8)
    for key, entry in results.items():
        if isinstance(entry, dict) and "predictions" in entry:
            pred = entry.pop("predictions")
            if key in PREDICTION_SPLITS or key.removesuffix("_tta") in PREDICTION_SPLITS:
                arrays[key] = pred.numpy()
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def check_out_path(out: str, flag: str = "--out") -> None:
    """``out`` can hold a run's files: it is a folder or can be made as one, and the nearest folder
    of its path that exists accepts a new file (tried with a temporary file, removed at once, so
    that a read-only file system or a missing permission shows up for every user, root included).
    Raises ``ValueError`` naming the path; creates nothing."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out} is a file, not a folder: name a folder for the run's files")
    existing = os.path.abspath(out)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {out}: {existing} is a file, so no folder can be made inside it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bionic-write-check-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"{flag} {out}: cannot write into {existing} ({e.strerror or e}); choose a folder you can write to"
        ) from None


def _check_out_folder(cfg: TrainConfig) -> None:
    """A new run never mixes with an old one: without ``resume``, an ``out`` holding a run's files
    is refused unless ``overwrite`` (then :func:`_delete_run_files` clears it after validation).
    A path that cannot hold the run is refused first (:func:`check_out_path`)."""
    check_out_path(cfg.out)
    if cfg.resume or cfg.overwrite or not os.path.isdir(cfg.out):
        return
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(cfg.out, name))]
    if found:
        raise ValueError(
            f"--out {cfg.out} holds another run ({', '.join(found)}): continue it with --resume, "
            "choose another --out, or pass --overwrite to delete it and start over"
        )


def _delete_run_files(out: str) -> None:
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def prepare_data(cfg: TrainConfig, data: FER2013 | None = None) -> FER2013:
    """Load (or trim) the data of a run and apply its hold-out and training budget; raises
    ``FileNotFoundError`` / :class:`DataError` for unusable data, before anything is written."""
    quick_n = QUICK_IMAGES if cfg.quick else None
    if data is None:
        data = load_fer2013(cfg.data, seed=cfg.seed, max_per_split=quick_n)
    elif quick_n:
        data = data.head(quick_n)
    for split in EVAL_SPLITS:
        if split not in data.labels or data.labels[split].numel() == 0:
            raise DataError(f"{data.source}: the {split} split has no images (train, public_test, private_test needed)")
    if cfg.holdout > 0:  # before limiting: the hold-out keeps its size when the training budget shrinks
        data = data.hold_out(cfg.holdout, seed=cfg.seed)
    if cfg.train_images is not None:
        data = data.limit_train(cfg.train_images, seed=cfg.seed)
    return data


@dataclass
class Run:
    """One training run, in pieces: :meth:`setup`, :meth:`train_epoch`, :meth:`end_epoch`
    (evaluate + checkpoint), :meth:`finish` (final evaluation + report); :meth:`fit` runs them."""

    cfg: TrainConfig
    data: FER2013
    model: BioNIC
    device: torch.device
    rank: int = 0
    world: int = 1
    start_epoch: int = 0
    best_acc: float = -1.0
    history: list[dict] = field(default_factory=list)
    data_warnings: list[str] = field(default_factory=list)
    # built by setup() from the fields above
    opt: torch.optim.Optimizer = field(init=False)
    sched: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    net: torch.nn.Module = field(init=False)  # the model, or its DistributedDataParallel wrapper
    steps_per_epoch: int = field(init=False)
    data_md5: str | None = field(init=False, default=None)
    identity: dict = field(init=False, default_factory=dict)  # run_identity(): what --resume must match
    code_revisions: list[dict] = field(init=False, default_factory=list)  # the code that trained the weights
    _fit_t0: float | None = field(init=False, default=None)  # when fit() started (for the time left)
    _bar: tqdm | None = field(init=False, default=None)  # the run's progress bar while fit() runs
    # where a checkpoint written inside an epoch left off (``last.pt``'s "in_epoch"): train_epoch
    # continues that epoch from there; None when the last checkpoint closed an epoch
    in_epoch: dict | None = field(init=False, default=None)
    saved_in_epoch: dict | None = field(init=False, default=None)  # what the last last.pt written here holds
    _last_save: float = field(init=False, default=0.0)  # perf_counter of the last in-epoch last.pt

    @property
    def epochs(self) -> int:
        return self.cfg.effective_epochs

    @property
    def last_path(self) -> str:
        return os.path.join(self.cfg.out, "last.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.cfg.out, "best.pt")

    @property
    def eval_splits(self) -> list[str]:
        return ["public_test"] + (["holdout"] if "holdout" in self.data.labels else [])

    @classmethod
    def setup(cls, cfg: TrainConfig, data: FER2013 | None = None) -> Run:
        """Validate, load the data, build model/optimiser/schedule, restore ``last.pt`` with
        ``resume``. Bad input (config, device, optional dependency, output folder, data, a
        checkpoint of another run) raises ``ValueError`` / ``FileNotFoundError`` before any file
        of the run is written."""
        cfg.validate()
        device = resolve_device(cfg.device, cfg.amp)
        check_optional_dependencies(cfg)
        rank, world = init_distributed(cfg.device)
        if rank == 0:
            _check_out_folder(cfg)
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
            torch.cuda.set_device(device)
        data = prepare_data(cfg, data)
        torch.manual_seed(cfg.seed)
        run = cls(cfg=cfg, data=data, model=build_model(cfg).to(device), device=device, rank=rank, world=world)
        run.data_md5 = file_md5(data.file) if data.file else None
        run.identity = run_identity(cfg, device, run.data_md5)
        run.code_revisions = [{"code_revision": run.identity["code_revision"], "from_epoch": 1}]
        run.data_warnings = data.check()
        run._build_optimiser()
        if cfg.resume:
            run._restore()
        if rank == 0:
            if cfg.overwrite:
                _delete_run_files(cfg.out)
            os.makedirs(cfg.out, exist_ok=True)
            print(data.describe())
            dup = data.duplicates()
            print(
                "  exact copies of training images: "
                + ", ".join(
                    f"{s} {d['in_train']} ({d['same_label']} with its label)" for s, d in dup.items() if "in_train" in d
                )
                + " (results.json also scores PrivateTest without them: private_test_unique)"
            )
            for w in run.data_warnings:
                print(f"warning: {w}")
            if device.type == "cpu" and getattr(cfg.model_config, "units_per_neuron", 0) >= GPU_SIZED_UNITS:
                print(
                    f"note: units_per_neuron {cfg.model_config.units_per_neuron} is the GPU-sized model; on a CPU "
                    "--config configs/fer-cpu.json (5 epochs, ~9 min of training on one core) or "
                    "configs/fer-cpu-30-front32.json (the accuracy table's, 81-113 CPU min) train the CPU configuration"
                )
            run._write_config()
        return run

    def _build_optimiser(self) -> None:
        cfg, params = self.cfg, self.model.parameters()
        if cfg.optimizer == "adamw":
            # NOTE: the fused kernel: 6.5 -> 2.2 ms per BioNIC step on one thread of the 2-core CI
            # machine (the default for-loop AdamW makes ~10 passes per parameter tensor)
            fused = self.device.type in ("cpu", "cuda")
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        else:
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        per_rank = self.data.labels["train"].numel() // self.world
        self.steps_per_epoch = max(1, -(-per_rank // cfg.batch_size))
        # Linear warm-up then cosine decay, a function of the step only: a resumed run with more
        # epochs continues on the schedule of its new length.
        total = self.epochs * self.steps_per_epoch
        warmup = max(1, int(0.05 * total))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor)
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        if cfg.compile:  # the training forward (and its backward); evaluation stays eager
            self.net = torch.compile(self.net)

    def _restore(self) -> None:
        if not os.path.exists(self.last_path):
            if self.rank == 0:
                print(f"note: --resume: no checkpoint at {self.last_path}; starting from epoch 1")
            return
        try:
            ckpt = torch.load(self.last_path, map_location=self.device, weights_only=False)
        except Exception as e:  # a torn or foreign file: say which, and how to start over
            raise ValueError(f"{self.last_path} cannot be read ({type(e).__name__}); delete it to start over") from None
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError(f"{self.last_path} is not a checkpoint of this trainer; use another --out or --overwrite")
        self._check_identity(ckpt)
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.start_epoch, self.best_acc, self.history = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["history"]
        set_rng_state(ckpt["rng"])
        self.in_epoch = ckpt.get("in_epoch")
        self.saved_in_epoch = self.in_epoch  # what last.pt holds until this process writes it
        if self.rank == 0:
            where = f"after epoch {ckpt['epoch'] + 1}"
            if self.in_epoch is not None:
                where = f"in epoch {self.start_epoch + 1}, after step {self.in_epoch['step']}/{self.steps_per_epoch}"
            print(f"resumed from {self.last_path} {where}")

    def _check_identity(self, ckpt: dict) -> None:
        """``--resume`` continues only the same run: every field of :func:`run_identity` must
        match the checkpoint's (a code change only with ``allow_code_change``, then recorded)."""
        theirs = ckpt.get("identity")
        mine = dict(self.identity)
        if theirs is not None:
            theirs = _with_added_defaults(theirs)
        else:  # a checkpoint from before identity records: its config is all there is
            theirs = {
                k: v for k, v in json.loads(json.dumps(ckpt.get("config", {}))).items() if k not in NON_IDENTITY_FIELDS
            }
            if theirs.get("data"):
                theirs["data"] = os.path.abspath(theirs["data"])
            mine_all, mine = mine, {k: v for k, v in mine.items() if k in theirs}
            mine.setdefault("code_revision", mine_all["code_revision"])
            theirs.setdefault("code_revision", mine_all["code_revision"])  # unknown: not compared
            print(f"note: {self.last_path} predates run identities: only its config is checked")
        changed = identity_changes(theirs, mine)
        code = [c for c in changed if c.startswith("code_revision ")]
        if "identity" not in ckpt:  # which code trained the first epochs is not on record
            self.code_revisions = [
                {"code_revision": "unknown (checkpoint predates revision records)", "from_epoch": 1},
                {"code_revision": mine.get("code_revision", code_revision()), "from_epoch": ckpt["epoch"] + 2},
            ]
        elif code and self.cfg.allow_code_change:
            changed = [c for c in changed if c not in code]
            self.code_revisions = ckpt.get(
                "code_revisions", [{"code_revision": theirs.get("code_revision"), "from_epoch": 1}]
            )
            self.code_revisions.append({"code_revision": mine["code_revision"], "from_epoch": ckpt["epoch"] + 2})
        else:
            self.code_revisions = ckpt.get("code_revisions", self.code_revisions)
        if changed:
            hint = " (--allow-code-change continues across a code change, recorded in results.json)" if code else ""
            raise ValueError(
                f"--resume: {self.last_path} belongs to another run ({'; '.join(changed)}); "
                f"start over with another --out, or --overwrite to delete the old run{hint}"
            )

    def ran_config(self) -> dict:
        """The config as it runs: ``config.json`` and ``results.json`` write this, field for field
        (``--quick`` trains one epoch whatever ``epochs`` says, so ``epochs`` is 1 there)."""
        ran = self.cfg.to_dict()
        ran["epochs"] = self.epochs
        return ran

    def _write_config(self) -> None:
        with open(os.path.join(self.cfg.out, "config.json"), "w") as f:
            json.dump(self.ran_config(), f, indent=1)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over this rank's shard of the epoch's permutation; returns the metrics row.
        It advances the run's progress bar when :meth:`fit` made one, else the epoch gets its own."""
        cfg, model = self.cfg, self.model
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # shuffling and augmentation
        x_train, y_train = self.data.images["train"], self.data.labels["train"]
        perm = shard(torch.randperm(y_train.numel(), generator=g), self.rank, self.world)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and self.device.type == "cuda" else None
        seen, correct, loss_sum, lr, t0 = 0, 0, 0.0, 0.0, time.perf_counter()
        cpu0 = time.process_time()  # CPU time of every thread of this process
        starts = range(0, perm.numel(), cfg.batch_size)
        probes: list[dict[str, float]] = []
        first = 0  # the step this call starts at: > 0 when last.pt was written inside this epoch
        resumed = self.in_epoch if self.in_epoch is not None and self.in_epoch["epoch"] == epoch else None
        self.in_epoch = None
        if resumed is not None:
            g.set_state(resumed["generator"])  # the augmentation draws continue where they stopped
            first, seen, correct, loss_sum, lr = (resumed[k] for k in ("step", "seen", "correct", "loss_sum", "lr"))
            probes = list(resumed["probes"])
            t0 -= resumed["seconds"]  # the epoch's times count the steps before the interruption
            cpu0 -= resumed["cpu_seconds"]
        self._last_save = time.perf_counter()
        bar = self._bar
        own_bar = bar is None
        if own_bar:
            bar = tqdm(total=len(starts), desc=f"epoch {epoch + 1}/{self.epochs}", disable=self.rank != 0, leave=False)
        else:
            bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
        if own_bar and first:
            bar.update(first)
        for step, start in enumerate(starts):
            if step < first:
                continue
            idx = perm[start : start + cfg.batch_size]
            x = to_float(x_train[idx]).to(self.device, non_blocking=True)
            y = y_train[idx].to(self.device)
            if cfg.augment:
                x = random_erase(augment_batch(x, generator=g), cfg.random_erasing, generator=g)
            if autocast is not None:
                with autocast:
                    logits = self.net(x)
            else:
                logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = self.opt.param_groups[0]["lr"]  # the rate this step used (logged: the epoch's last)
            probe = PlasticityProbe(model) if step % PLASTICITY_PROBE_EVERY == 0 else None
            self.opt.step()
            self.sched.step()
            if probe is not None:
                probe.after_optimizer()
            # the plasticity rates follow the schedule with plasticity_schedule="lr": this step's factor
            model.after_optimizer_step(lr / cfg.lr if cfg.plasticity_schedule == "lr" else 1.0)
            if probe is not None:
                probes.append(probe.after_plasticity())
            self._sync_plastic()
            seen += y.numel()
            correct += int((logits.argmax(-1) == y).sum())
            loss_sum += float(loss.detach()) * y.numel()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
            bar.update(1)
            if step + 1 - first == ESTIMATE_STEPS and epoch == self.start_epoch and self.rank == 0:
                self._print_estimate(
                    time.perf_counter() - t0 - (resumed or {}).get("seconds", 0.0), ESTIMATE_STEPS, len(starts)
                )
            if (
                cfg.checkpoint_minutes > 0
                and step + 1 < len(starts)
                and time.perf_counter() - self._last_save >= 60 * cfg.checkpoint_minutes
            ):
                in_epoch = {
                    "epoch": epoch,
                    "step": step + 1,
                    "generator": g.get_state(),
                    "seen": seen,
                    "correct": correct,
                    "loss_sum": loss_sum,
                    "lr": lr,
                    "probes": probes,
                    "seconds": time.perf_counter() - t0,
                    "cpu_seconds": time.process_time() - cpu0,
                }
                if self.rank == 0:
                    self.save_last(epoch - 1, in_epoch)
                self._last_save = time.perf_counter()
        if own_bar:
            bar.close()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "lr": lr,
            "seconds": seconds,
            "images_per_s": seen * self.world / max(seconds, 1e-9),
            "cpu_seconds": cpu_seconds,  # this rank's; below seconds x threads when it waited for a core
            **{k: sum(p[k] for p in probes) / len(probes) for k in (probes[0] if probes else {})},
        }

    def _print_estimate(self, seconds: float, steps: int, steps_per_epoch: int) -> None:
        """The run's length, measured: the first ``steps`` training steps on this machine, scaled."""
        per_epoch = seconds / steps * steps_per_epoch
        left = self.epochs - self.start_epoch
        tqdm.write(
            f"estimate: {_duration(per_epoch)} of training per epoch, {_duration(per_epoch * left)} for the "
            f"{left} epoch{'s' if left > 1 else ''} to go (from the first {steps} steps here; evaluation after "
            "each epoch adds to it; the bar's ETA follows the whole run)"
        )

    def _sync_plastic(self) -> None:
        """Average the plastic weights (changed outside autograd) so that ranks stay identical."""
        if self.world == 1:
            return
        for layer in self.model.connectome_layers():
            p = layer.values if hasattr(layer, "values") else layer.weight
            dist.all_reduce(p.data)
            p.data /= self.world

    def end_epoch(self, epoch: int, row: dict) -> None:
        """Evaluate the selection splits, log, and write ``last.pt`` (and ``best.pt`` when better)."""
        accs = {
            s: evaluate(self.model, self.data.images[s], self.data.labels[s], self.device)["accuracy"]
            for s in self.eval_splits
        }
        row = {
            **row,
            "public_acc": accs["public_test"],
            **({"holdout_acc": accs["holdout"]} if "holdout" in accs else {}),
        }
        self.history.append(row)
        selection_acc = accs[self.cfg.select_on]
        improved = selection_acc > self.best_acc
        self.best_acc = max(self.best_acc, selection_acc)
        if self.rank != 0:
            return
        if improved:  # the model only: evaluation and users need nothing else
            save_atomic(
                {"model": self.model.state_dict(), "epoch": epoch, "config": self.cfg.to_dict()}, self.best_path
            )
        self.save_last(epoch)
        write_metrics(os.path.join(self.cfg.out, "metrics.csv"), self.history)
        print(  # after the files: a closed stdout never costs the epoch's checkpoint
            f"epoch {epoch + 1}: loss {row['train_loss']:.4f} train {row['train_acc']:.4f}"
            + f" public {row['public_acc']:.4f}"
            + (f" holdout {row['holdout_acc']:.4f}" if "holdout_acc" in row else "")
            + f" ({row['images_per_s']:.0f} img/s"
            + (f", about {_duration(self._time_left(epoch))} to go)" if epoch + 1 < self.epochs else ")")
        )

    def save_last(self, epoch: int, in_epoch: dict | None = None) -> None:
        """Write ``last.pt`` atomically: everything resume needs after 0-based ``epoch`` (-1: none
        yet), and with ``in_epoch`` where the next epoch stands (its step, shuffling generator,
        running sums), written by ``checkpoint_minutes`` inside long epochs."""
        save_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "best_acc": self.best_acc,
                "history": self.history,
                "config": self.cfg.to_dict(),
                "identity": self.identity,
                "code_revisions": self.code_revisions,
                **({"in_epoch": in_epoch} if in_epoch is not None else {}),
            },
            self.last_path,
        )
        self.saved_in_epoch = in_epoch

    def _time_left(self, epoch: int) -> float:
        """The remaining epochs at the mean wall time of the epochs this process ran (evaluation in)."""
        now = time.perf_counter()
        if self._fit_t0 is None:
            self._fit_t0 = now
        done = epoch + 1 - self.start_epoch
        return (now - self._fit_t0) / max(done, 1) * (self.epochs - epoch - 1)

    def finish(self) -> dict:
        """Evaluate the best checkpoint on every split (and with ten crops when ``tta``), write
        ``results.json`` and the plots; returns the results (empty on ranks other than 0)."""
        if self.rank != 0:
            return {}
        model, data, device = self.model, self.data, self.device
        if os.path.exists(self.best_path):
            model.load_state_dict(torch.load(self.best_path, map_location=device, weights_only=False)["model"])
        splits = [*self.eval_splits, "private_test"]
        keep = {"keep_predictions": True}
        results = {s: evaluate(model, data.images[s], data.labels[s], device, **keep) for s in splits}
        # PrivateTest without its exact copies of training images: what memorisation cannot reach
        unique = ~data.in_train("private_test")
        x_unique, y_unique = data.images["private_test"][unique], data.labels["private_test"][unique]
        results["private_test_unique"] = evaluate(model, x_unique, y_unique, device)
        if self.cfg.tta:  # ten-crop columns beside the plain ones, from the same checkpoint
            results.update(
                {f"{s}_tta": evaluate(model, data.images[s], data.labels[s], device, tta=True, **keep) for s in splits}
            )
            results["private_test_unique_tta"] = evaluate(model, x_unique, y_unique, device, tta=True)
        counts = parameter_counts(model)
        results.update(
            {
                "selected_on": self.cfg.select_on,
                "best_selection_acc": self.best_acc,
                "epochs": self.epochs,
                "history": self.history,
                "seed": self.cfg.seed,
                "config": self.ran_config(),
                "versions": environment(),
                "device": str(device),
                "world_size": self.world,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                # stored slots (every parameter element) and what training can change (synapses)
                "n_parameters": counts["stored"],
                "n_effective_parameters": counts["effective"],
                "parameters": counts,
                "data_source": data.source,
                "data_file": os.path.basename(data.file) if data.file else None,
                "data_md5": self.data_md5,
                "identity": self.identity,
                "code_revisions": self.code_revisions,
                "data_warnings": self.data_warnings,
                "duplicates": data.duplicates(),
                "split_sizes": {s: y.numel() for s, y in data.labels.items()},
            }
        )
        save_predictions(os.path.join(self.cfg.out, "predictions.npz"), data, results)
        with open(os.path.join(self.cfg.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        plot_run(self.cfg.out, self.history, results["private_test"]["confusion"])
        print(
            f"PublicTest {results['public_test']['accuracy']:.4f}, "
            + (f"hold-out {results['holdout']['accuracy']:.4f}, " if "holdout" in results else "")
            + f"PrivateTest {results['private_test']['accuracy']:.4f}"
            + (f" (ten-crop {results['private_test_tta']['accuracy']:.4f})" if self.cfg.tta else "")
            + f" -> {self.cfg.out}/results.json"
        )
        return results

    def fit(self) -> dict:
        writer = None
        if self.cfg.tensorboard and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(os.path.join(self.cfg.out, "tb"))
        # one bar over the run's steps, averaged over all of them (smoothing 0) with the evaluations
        # in its clock, so its ETA is the run's remaining time, not the current epoch's
        self._fit_t0 = time.perf_counter()
        self._bar = bar = tqdm(
            total=self.epochs * self.steps_per_epoch,
            initial=self.start_epoch * self.steps_per_epoch + (self.in_epoch["step"] if self.in_epoch else 0),
            desc=f"epoch {self.start_epoch + 1}/{self.epochs}",
            unit="step",
            smoothing=0,
            disable=self.rank != 0,
        )
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self.end_epoch(epoch, self.train_epoch(epoch))
                if writer is not None:
                    for k, v in self.history[-1].items():
                        writer.add_scalar(k, v, epoch + 1)
            bar.close()
            return self.finish()
        finally:
            bar.close()
            self._bar = None
            if writer is not None:
                writer.close()

    def completed_epochs(self) -> int:
        return len(self.history)


def train(cfg: TrainConfig, data: FER2013 | None = None) -> dict:
    """Train and evaluate (``Run.setup(cfg, data).fit()``); returns the ``results.json`` content.
    Works the same from Python and from the CLI, ``torchrun`` included."""
    return Run.setup(cfg, data).fit()
