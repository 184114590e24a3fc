"""FER-2013: loading (Kaggle/ICML CSV or image folders), splits, batched augmentation, TTA.

Label order (as torchvision's ``FER2013``): 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
5 Surprise, 6 Neutral. Splits: ``train`` (CSV ``Training``), ``public_test`` (``PublicTest``,
used for model selection), ``private_test`` (``PrivateTest``, reported once). For the
image-folder layout (``train/``, ``test/``, lower-case class folders) a seeded 10 % of ``train``
becomes ``public_test`` unless the test files carry ``PublicTest_``/``PrivateTest_`` prefixes.

Images are held in memory as uint8 ``[N, 48, 48]`` (36k images = 83 MB); augmentation runs on
whole batches on the training device (per-sample random affine + brightness/contrast), so data
loading is never the bottleneck.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CLASSES",
    "FER2013",
    "load_fer2013",
    "augment_batch",
    "ten_crop_logits",
    "default_data_path",
    "write_fer_csv",
]

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
N_PIXELS = 48 * 48
ENV_VAR = "BIONIC_FER2013"
GET_DATA_HELP = (
    "FER-2013 is not bundled (non-commercial research licence). Get the Kaggle/ICML-2013 file "
    "fer2013.csv (columns emotion,pixels,Usage; 'Challenges in Representation Learning: Facial "
    "Expression Recognition Challenge' on Kaggle) or the image-folder copy (train/ and test/ with one "
    f"folder per class), then pass --data PATH or set {ENV_VAR}=PATH."
)


def default_data_path() -> str:
    """``$BIONIC_FER2013`` if set, else ``./data/fer2013``."""
    return os.environ.get(ENV_VAR, os.path.join("data", "fer2013"))


def _stratified(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` samples, drawn per class in proportion to the class counts
    (largest-remainder rounding), seeded."""
    if not 0 <= n <= labels.numel():
        raise ValueError(f"n must be in [0, {labels.numel()}], got {n}")
    counts = torch.bincount(labels, minlength=len(CLASSES)).double()
    exact = counts * n / max(labels.numel(), 1)
    quota = exact.floor().long()
    short = n - int(quota.sum())
    quota[torch.argsort(exact - quota, descending=True)[:short]] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(len(CLASSES)):
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[: int(quota[c])]])
    return torch.cat(picked).sort().values


@dataclass(repr=False)
class FER2013:
    """In-memory FER-2013: ``images[split]`` uint8 ``[N, 48, 48]``, ``labels[split]`` int64 ``[N]``."""

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    source: str

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={y.numel()}" for s, y in self.labels.items())
        return f"FER2013({sizes}, source={self.source!r})"

    def class_counts(self) -> dict[str, list[int]]:
        return {s: torch.bincount(y, minlength=len(CLASSES)).tolist() for s, y in self.labels.items()}

    def describe(self) -> str:
        lines = [f"FER-2013 from {self.source}"]
        for split, counts in self.class_counts().items():
            lines.append(
                f"  {split:<13}{sum(counts):>7} images  "
                + " ".join(f"{c[:3]}={n}" for c, n in zip(CLASSES, counts, strict=True))
            )
        return "\n".join(lines)

    def sharpness(self) -> dict[str, float]:
        """Median mean-absolute Laplacian per split (a blur check). Train and test should match:
        in the copy in shared/data the training images measure 1.9 and the test images 29 (the
        training images are low-pass filtered), so a model trained there transfers badly."""
        out = {}
        for split, x in self.images.items():
            im = x[:2000].float()
            lap = 4 * im[:, 1:-1, 1:-1] - im[:, :-2, 1:-1] - im[:, 2:, 1:-1] - im[:, 1:-1, :-2] - im[:, 1:-1, 2:]
            out[split] = float(lap.abs().mean(dim=(1, 2)).median()) if x.shape[0] else float("nan")
        return out

    def check(self) -> list[str]:
        """Warnings about the data (empty splits, a train/test sharpness mismatch)."""
        warnings = [f"split {s!r} is empty" for s, y in self.labels.items() if y.numel() == 0]
        sharp = self.sharpness()
        train, test = sharp.get("train", float("nan")), sharp.get("private_test", float("nan"))
        if train > 0 and test > 0 and max(train, test) / min(train, test) > 3:
            warnings.append(
                f"training and test images differ in sharpness (median |Laplacian| {train:.1f} vs {test:.1f}): "
                "one split looks blurred; accuracies on this copy are not comparable with FER-2013 results"
            )
        return warnings

    def save_npz(self, path: str) -> None:
        """Cache as ``.npz`` (``x_<split>`` uint8, ``y_<split>`` int64): loads in a second instead of
        parsing the 290 MB CSV (~10 s)."""
        np.savez(
            path,
            **{f"x_{s}": v.numpy() for s, v in self.images.items()},
            **{f"y_{s}": v.numpy() for s, v in self.labels.items()},
        )

    def subset(self, n_per_split: int, seed: int = 0) -> FER2013:
        """A small random subset (``--quick``): at most ``n_per_split`` images per split."""
        g = torch.Generator().manual_seed(seed)
        images, labels = {}, {}
        for s in self.images:
            idx = torch.randperm(self.labels[s].numel(), generator=g)[:n_per_split]
            images[s], labels[s] = self.images[s][idx], self.labels[s][idx]
        return FER2013(images, labels, self.source + f" (subset {n_per_split}/split)")

    def limit_train(self, n: int, seed: int = 0) -> FER2013:
        """Keep ``n`` training images (stratified by class, seeded): reduced-budget runs."""
        if n < 1:
            raise ValueError(f"train_images must be >= 1, got {n}")
        if n >= self.labels["train"].numel():
            return self
        idx = _stratified(self.labels["train"], n, seed)
        return self._with_splits(f"train limited to {n}", train=idx)

    def hold_out(self, fraction: float, seed: int = 0) -> FER2013:
        """Move a stratified, seeded ``fraction`` of ``train`` into a ``holdout`` split: a validation
        set from the training distribution (the data README allows selecting on it)."""
        if not 0 < fraction < 1:
            raise ValueError(f"holdout must be in (0, 1), got {fraction}")
        y = self.labels["train"]
        n = int(round(fraction * y.numel()))
        if n < 1 or n >= y.numel():
            raise ValueError(f"holdout={fraction} of {y.numel()} training images leaves an empty split")
        held = _stratified(y, n, seed + 7919)  # its own stream: limit_train and hold_out are independent
        keep = torch.ones(y.numel(), dtype=torch.bool)
        keep[held] = False
        return self._with_splits(f"holdout {fraction:g} of train", train=keep, holdout=held)

    def _with_splits(self, note: str, **from_train: torch.Tensor) -> FER2013:
        """A copy whose named splits are ``train`` indexed by the given index/bool tensors."""
        images, labels = dict(self.images), dict(self.labels)
        for split, idx in from_train.items():
            images[split], labels[split] = self.images["train"][idx], self.labels["train"][idx]
        return FER2013(images, labels, f"{self.source} ({note})")


def _open_text(path: str):
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


def _load_csv(path: str) -> FER2013:
    images: dict[str, list[np.ndarray]] = {s: [] for s in USAGE_TO_SPLIT.values()}
    labels: dict[str, list[int]] = {s: [] for s in USAGE_TO_SPLIT.values()}
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["emotion", "pixels", "Usage"]:
            raise ValueError(f"{path}: expected the header 'emotion,pixels,Usage', got {header}")
        for row_no, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise ValueError(f"{path}, row {row_no}: expected 3 fields (emotion,pixels,Usage), got {len(row)}")
            emotion, pixels, usage = row
            if usage not in USAGE_TO_SPLIT:
                raise ValueError(f"{path}, row {row_no}: Usage {usage!r} is not one of {list(USAGE_TO_SPLIT)}")
            try:
                label = int(emotion)
            except ValueError:
                raise ValueError(f"{path}, row {row_no}: emotion {emotion!r} is not an integer") from None
            if not 0 <= label < len(CLASSES):
                raise ValueError(f"{path}, row {row_no}: emotion {label} is outside 0..6")
            try:
                values = np.array(pixels.split(), dtype=np.int64)
            except ValueError:
                raise ValueError(f"{path}, row {row_no}: pixels must be space-separated integers") from None
            if values.size != N_PIXELS:
                raise ValueError(f"{path}, row {row_no}: expected {N_PIXELS} pixels (48x48), got {values.size}")
            if values.min() < 0 or values.max() > 255:
                raise ValueError(f"{path}, row {row_no}: pixel values must lie in 0..255")
            split = USAGE_TO_SPLIT[usage]
            images[split].append(values.astype(np.uint8))
            labels[split].append(label)
    return FER2013(
        images={
            s: torch.from_numpy(np.stack(v).reshape(-1, 48, 48)) if v else torch.zeros(0, 48, 48, dtype=torch.uint8)
            for s, v in images.items()
        },
        labels={s: torch.tensor(v, dtype=torch.int64) for s, v in labels.items()},
        source=path,
    )


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L").resize((48, 48)), dtype=np.uint8)
    return arr


def _load_folders(root: str, seed: int) -> FER2013:
    def read_split(d: str) -> tuple[list[np.ndarray], list[int], list[str]]:
        imgs, labs, names = [], [], []
        for cls in sorted(os.listdir(d)):
            full = os.path.join(d, cls)
            if not os.path.isdir(full):
                continue
            if cls.lower() not in CLASSES:
                raise ValueError(f"{full}: unknown class folder {cls!r}; expected one of {list(CLASSES)}")
            for name in sorted(os.listdir(full)):
                if name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")):
                    imgs.append(_read_image(os.path.join(full, name)))
                    labs.append(CLASSES.index(cls.lower()))
                    names.append(name)
        return imgs, labs, names

    tr_i, tr_l, _ = read_split(os.path.join(root, "train"))
    te_i, te_l, te_n = read_split(os.path.join(root, "test"))
    to_t = lambda imgs: torch.from_numpy(np.stack(imgs)) if imgs else torch.zeros(0, 48, 48, dtype=torch.uint8)  # noqa: E731
    train_x, train_y = to_t(tr_i), torch.tensor(tr_l, dtype=torch.int64)
    test_x, test_y = to_t(te_i), torch.tensor(te_l, dtype=torch.int64)
    public = torch.tensor([n.startswith("PublicTest") for n in te_n], dtype=torch.bool)
    private = torch.tensor([n.startswith("PrivateTest") for n in te_n], dtype=torch.bool)
    if te_n and bool((public | private).all()):
        images = {"train": train_x, "public_test": test_x[public], "private_test": test_x[private]}
        labels = {"train": train_y, "public_test": test_y[public], "private_test": test_y[private]}
    else:  # no split prefixes: seeded 10 % of train for selection, the whole test folder for reporting
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(train_y.numel(), generator=g)
        n_val = int(round(0.1 * train_y.numel()))
        val, tr = perm[:n_val], perm[n_val:]
        images = {"train": train_x[tr], "public_test": train_x[val], "private_test": test_x}
        labels = {"train": train_y[tr], "public_test": train_y[val], "private_test": test_y}
    return FER2013(images, labels, root)


def load_fer2013(path: str | None = None, seed: int = 0) -> FER2013:
    """Load FER-2013 from a CSV(.gz) file, a directory holding one, an image-folder root, or an
    ``.npz`` written by :meth:`FER2013.save_npz`."""
    path = path or default_data_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"FER-2013 not found at {path!r}. {GET_DATA_HELP}")
    if os.path.isdir(path):
        for name in ("fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv"):
            if os.path.exists(os.path.join(path, name)):
                return _load_csv(os.path.join(path, name))
        if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
            return _load_folders(path, seed)
        raise FileNotFoundError(
            f"{path!r} holds neither fer2013.csv(.gz) nor train/ and test/ folders. {GET_DATA_HELP}"
        )
    if path.endswith(".npz"):
        return _load_npz(path)
    return _load_csv(path)


def _load_npz(path: str) -> FER2013:
    with np.load(path) as z:
        splits = [k[2:] for k in z.files if k.startswith("x_")]
        if sorted(splits) != sorted(USAGE_TO_SPLIT.values()):
            raise ValueError(f"{path}: expected arrays x_/y_ for splits {list(USAGE_TO_SPLIT.values())}, got {z.files}")
        images = {s: torch.from_numpy(z[f"x_{s}"].astype(np.uint8)) for s in splits}
        labels = {s: torch.from_numpy(z[f"y_{s}"].astype(np.int64)) for s in splits}
    for s in splits:
        if images[s].shape[1:] != (48, 48) or images[s].shape[0] != labels[s].shape[0]:
            raise ValueError(
                f"{path}: split {s} has images {tuple(images[s].shape)} and labels {tuple(labels[s].shape)}"
            )
    return FER2013(images, labels, path)


def write_fer_csv(path: str, n_per_class_split: int = 4, seed: int = 0) -> None:
    """Write a tiny synthetic FER-format CSV (class-dependent blobs, for tests and smoke runs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    buf = io.StringIO()
    buf.write("emotion,pixels,Usage\n")
    for usage in USAGE_TO_SPLIT:
        for label in range(len(CLASSES)):
            for _ in range(n_per_class_split):
                cx, cy = 8 + 5 * label + rng.normal(0, 1), 24 + rng.normal(0, 2)
                img = 40 + 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60.0) + rng.normal(0, 8, (48, 48))
                buf.write(f"{label},{' '.join(str(int(v)) for v in np.clip(img, 0, 255).ravel())},{usage}\n")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(buf.getvalue())


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 48, 48]`` -> float ``[B, 1, 48, 48]``: per-image histogram equalisation (each
    pixel becomes its mid-rank quantile in its image), scaled to zero mean and unit variance.

    NOTE: invariant to any monotone intensity change. In the FER-2013 copy in shared/data the
    test images have another intensity distribution than the training images (mean per-image
    pixel std 54 vs 38, six times as many saturated pixels); equalisation removes that difference
    (it cannot undo the blur of that copy's training images, see :meth:`FER2013.sharpness`).
    """
    b = images.shape[0]
    flat = images.reshape(b, -1).long()
    hist = torch.zeros(b, 256, dtype=torch.float32, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    below = hist.cumsum(1) - hist  # pixels strictly darker than each value
    mid_rank = below + (hist - 1) / 2  # ties share their mean rank
    q = torch.gather(mid_rank, 1, flat) / max(flat.shape[1] - 1, 1)
    return ((q - 0.5) / 0.2887).view(b, 1, *images.shape[1:])


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    max_shift: float = 4.0,
    max_rotation_deg: float = 10.0,
    flip: bool = True,
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> torch.Tensor:
    """Per-sample random augmentation of a float batch ``[B, 1, H, W]`` on its own device: random
    translation of up to ``max_shift`` pixels (the random crop with padding), horizontal flip,
    rotation, brightness and contrast jitter, as one ``affine_grid`` + ``grid_sample``."""
    b, _, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(dev)

    angle = uniform(-max_rotation_deg, max_rotation_deg) * math.pi / 180
    sx = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    tx, ty = uniform(-max_shift, max_shift) * 2 / w, uniform(-max_shift, max_shift) * 2 / h
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    br = uniform(-brightness, brightness).view(b, 1, 1, 1) * 4.0  # in units of the image std (x 4: as 0.2 of range)
    return (out - mean) * c + mean + br


def ten_crop_logits(model: torch.nn.Module, x: torch.Tensor, crop: int = 44) -> torch.Tensor:
    """Test-time augmentation: mean logits over torchvision's ten crops (resized back to 48)."""
    from torchvision.transforms.v2 import functional as TF

    crops = TF.ten_crop(x, [crop, crop])  # 10 x [B, 1, crop, crop]
    logits = [model(F.interpolate(c, size=x.shape[-2:], mode="bilinear", align_corners=False)) for c in crops]
    return torch.stack(logits).mean(0)
