"""FER-2013 loading: the Kaggle/ICML CSV (plain or gzip), the image-folder layout (a folder or a
``.zip`` of it, as distributed on Kaggle), and ``.npz`` caches; splits and data checks.

Label order (as torchvision's ``FER2013``): 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
5 Surprise, 6 Neutral. Splits: ``train`` (CSV ``Training``), ``public_test`` (``PublicTest``,
used for model selection), ``private_test`` (``PrivateTest``, reported once).

The image-folder layout has ``train/<class>/`` and ``test/<class>/`` with lower-case class
folders. Files named ``Training_N``, ``PublicTest_N`` and ``PrivateTest_N`` are assigned to
their split and ordered by ``N``, which is the row order of the CSV, so the two forms of the data
give the same tensors. Without those prefixes a seeded 10 % of ``train`` becomes ``public_test``
and all of ``test`` is ``private_test``.

Images are held in memory as uint8 ``[N, 48, 48]`` (36k images = 83 MB).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .transforms import augment_batch, ten_crop_logits, to_float

__all__ = [
    "CLASSES",
    "FER2013",
    "DataError",
    "load_fer2013",
    "augment_batch",
    "ten_crop_logits",
    "to_float",
    "default_data_path",
    "file_md5",
    "write_fer_csv",
    "write_fer_zip",
]

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
SPLITS = tuple(USAGE_TO_SPLIT.values())
N_PIXELS = 48 * 48
ENV_VAR = "BIONIC_FER2013"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GET_DATA_HELP = (
    "FER-2013 is not bundled (non-commercial research licence). Get the Kaggle/ICML-2013 file "
    "fer2013.csv (columns emotion,pixels,Usage; 'Challenges in Representation Learning: Facial "
    "Expression Recognition Challenge' on Kaggle) or the image-folder copy (train/ and test/ with one "
    f"folder per class, as a folder or its .zip), then pass --data PATH or set {ENV_VAR}=PATH."
)


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def default_data_path() -> str:
    """``$BIONIC_FER2013`` if set, else ``./data/fer2013``."""
    return os.environ.get(ENV_VAR, os.path.join("data", "fer2013"))


def file_md5(path: str, chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes (recorded with every result, so that it can be traced to its data)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _laplacian_sharpness(images: torch.Tensor) -> torch.Tensor:
    """Per image: mean |4-neighbour Laplacian| (grey levels). Blurring lowers it several-fold."""
    im = images.float()
    lap = 4 * im[:, 1:-1, 1:-1] - im[:, :-2, 1:-1] - im[:, 2:, 1:-1] - im[:, 1:-1, :-2] - im[:, 1:-1, 2:]
    return lap.abs().mean(dim=(1, 2))


@dataclass(repr=False)
class FER2013:
    """In-memory FER-2013: ``images[split]`` uint8 ``[N, 48, 48]``, ``labels[split]`` int64 ``[N]``.

    ``file`` is the single file the data was read from (``None`` for a folder): its md5 identifies
    the data of a result.
    """

    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    source: str
    file: str | None = None

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

    def image_statistics(self, max_images: int = 2000) -> dict[str, dict[str, float]]:
        """Per split, medians over (at most ``max_images``) images of: ``sharpness`` (mean
        |Laplacian|), ``mean`` and ``std`` (pixel intensity, grey levels)."""
        out = {}
        for split, x in self.images.items():
            im = x[:max_images]
            if im.shape[0] == 0:
                out[split] = {"sharpness": float("nan"), "mean": float("nan"), "std": float("nan")}
                continue
            flat = im.reshape(im.shape[0], -1).float()
            out[split] = {
                "sharpness": float(_laplacian_sharpness(im).median()),
                "mean": float(flat.mean(1).median()),
                "std": float(flat.std(1).median()),
            }
        return out

    def check(self, sharpness_ratio: float = 2.0, std_ratio: float = 1.3, mean_shift: float = 25.0) -> list[str]:
        """Warnings about the data: empty splits, and training images whose sharpness or intensity
        statistics differ strongly from a test split's (a blurred, re-encoded or re-normalised
        copy), which makes accuracies incomparable with published FER-2013 results."""
        warnings = [f"split {s!r} is empty" for s, y in self.labels.items() if y.numel() == 0]
        stats = self.image_statistics()
        train = stats.get("train")
        for split in ("public_test", "private_test"):
            test = stats.get(split)
            if train is None or test is None or any(v != v for v in (*train.values(), *test.values())):
                continue
            a, b = train["sharpness"], test["sharpness"]
            if min(a, b) <= 0 or max(a, b) / min(a, b) > sharpness_ratio:
                warnings.append(
                    f"training and {split} images differ in sharpness (median |Laplacian| {a:.1f} vs {b:.1f}): "
                    "one of them looks blurred"
                )
            a, b = train["std"], test["std"]
            if min(a, b) <= 0 or max(a, b) / min(a, b) > std_ratio or abs(train["mean"] - test["mean"]) > mean_shift:
                warnings.append(
                    f"training and {split} images differ in intensity statistics (median mean {train['mean']:.0f} vs "
                    f"{test['mean']:.0f}, median std {a:.0f} vs {b:.0f} grey levels)"
                )
        return warnings

    def _keys(self, split: str) -> list[bytes]:
        """Each image of ``split`` as bytes: exact-duplicate keys."""
        x = self.images[split]
        return [bytes(im) for im in x.reshape(x.shape[0], -1).numpy()]

    def in_train(self, split: str) -> torch.Tensor:
        """Bool ``[N]``: which images of ``split`` are exact pixel copies of a ``train`` image.

        FER-2013 has such copies across its splits (in the 2013 data, 288 PrivateTest and 280
        PublicTest images equal a Training image, almost all with the same label), so a model can
        score on them by memorising; :meth:`duplicates` counts them.
        """
        seen = set(self._keys("train"))
        return torch.tensor([k in seen for k in self._keys(split)], dtype=torch.bool)

    def duplicates(self) -> dict[str, dict[str, int]]:
        """Exact pixel duplicates across splits: per test split, the images equal to a training
        image (``in_train``) and how many of those carry the label of a training copy
        (``same_label``); ``public_and_private``: images present in both test splits."""
        train: dict[bytes, set[int]] = {}
        for key, y in zip(self._keys("train"), self.labels["train"].tolist(), strict=True):
            train.setdefault(key, set()).add(y)
        out: dict[str, dict[str, int]] = {}
        for split in ("public_test", "private_test", "holdout"):
            if split in self.images:
                pairs = zip(self._keys(split), self.labels[split].tolist(), strict=True)
                hits = [(k, y) for k, y in pairs if k in train]
                out[split] = {"in_train": len(hits), "same_label": sum(y in train[k] for k, y in hits)}
        if "public_test" in self.images and "private_test" in self.images:
            public = set(self._keys("public_test"))
            out["public_and_private"] = {"images": sum(k in public for k in self._keys("private_test"))}
        return out

    def save_npz(self, path: str) -> None:
        """Cache as ``.npz`` (``x_<split>`` uint8, ``y_<split>`` int64): loads in a second."""
        np.savez(
            path,
            **{f"x_{s}": v.numpy() for s, v in self.images.items()},
            **{f"y_{s}": v.numpy() for s, v in self.labels.items()},
        )

    def head(self, n_per_split: int) -> FER2013:
        """The first ``n_per_split`` images of every split, in file order (smoke runs)."""
        return FER2013(
            {s: x[:n_per_split] for s, x in self.images.items()},
            {s: y[:n_per_split] for s, y in self.labels.items()},
            f"{self.source} (first {n_per_split} per split)",
            self.file,
        )

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
        set from the training distribution (FER-2013's protocol allows selecting on it)."""
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
        return FER2013(images, labels, f"{self.source} ({note})", self.file)


def _open_text(path: str):
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


def _preview(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _parse_pixels(pixels: str, where: str) -> np.ndarray:
    # NOTE: np.fromstring(sep=" ") parses a row in 101 us against 442 us for split() + int64
    # (medians, 2-core CPU, benchmarks/test_bench_fer_data.py); it stops at the first bad token
    # with a DeprecationWarning, so a row that does not parse cleanly is checked token by token.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(pixels, dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError):
            values = None
    if values is None or values.size != N_PIXELS:
        tokens = pixels.split()
        if len(tokens) != N_PIXELS:
            raise DataError(f"{where}: expected {N_PIXELS} pixels (48x48), got {len(tokens)}")
        try:
            values = np.array(tokens, dtype=np.int64)
        except ValueError:
            raise DataError(f"{where}: pixels must be space-separated integers") from None
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{where}: pixel values must lie in 0..255")
    return values.astype(np.uint8)


def _parse_csv(f: Iterable[str], path: str, max_per_split: int | None) -> FER2013:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: the file is empty (expected a header 'emotion,pixels,Usage' and one row per image)")
    names = [h.strip() for h in header]
    if not {"emotion", "pixels", "Usage"} <= set(names):
        raise DataError(
            f"{path}: expected a header naming the columns emotion, pixels, Usage; got {_preview(','.join(header))}"
        )
    i_emotion, i_pixels, i_usage = names.index("emotion"), names.index("pixels"), names.index("Usage")
    images: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    for row_no, row in enumerate(reader, start=2):
        where = f"{path}, row {row_no}"
        if len(row) != len(names):
            raise DataError(f"{where}: expected {len(names)} fields ({','.join(names)}), got {len(row)}")
        usage = row[i_usage].strip()
        if usage not in USAGE_TO_SPLIT:
            raise DataError(f"{where}: Usage {_preview(usage)} is not one of {list(USAGE_TO_SPLIT)}")
        split = USAGE_TO_SPLIT[usage]
        if max_per_split is not None and len(labels[split]) >= max_per_split:
            continue  # --quick: rows beyond the budget are not parsed
        try:
            label = int(row[i_emotion])
        except ValueError:
            raise DataError(f"{where}: emotion {_preview(row[i_emotion])} is not an integer") from None
        if not 0 <= label < len(CLASSES):
            raise DataError(f"{where}: emotion {label} is outside 0..6")
        images[split].append(_parse_pixels(row[i_pixels], where))
        labels[split].append(label)
    if not any(labels.values()):
        raise DataError(f"{path}: the file has a header but no images")
    return FER2013(
        images={s: _stack(v) for s, v in images.items()},
        labels={s: torch.tensor(v, dtype=torch.int64) for s, v in labels.items()},
        source=path,
        file=path,
    )


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    if not images:
        return torch.zeros(0, 48, 48, dtype=torch.uint8)
    return torch.from_numpy(np.stack(images).reshape(-1, 48, 48))


def _load_csv(path: str, max_per_split: int | None) -> FER2013:
    try:
        with _open_text(path) as f:
            return _parse_csv(f, path, max_per_split)
    except (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise DataError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e})") from None


# Training_00001234.jpg -> ("Training", 1234): the split and the CSV row order
_NAMED = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)\.[A-Za-z]+$")
# a path inside an image-folder tree or zip: [prefix/]train|test/<class>/<file>
_TREE_PATH = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<part>train|test)/(?P<cls>[^/]+)/(?P<name>[^/]+)$", re.IGNORECASE)


@dataclass
class _ImageEntry:
    part: str  # "train" or "test" (the folder)
    cls: str
    name: str
    read: Callable[[], bytes]
    where: str  # for error messages


def _decode(entry: _ImageEntry) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(entry.read())) as im:
            im = im.convert("L")
            if im.size != (48, 48):
                im = im.resize((48, 48))
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise DataError(f"{entry.where}: not a readable image (not an image format Pillow knows)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{entry.where}: not a readable image ({e})") from None


def _from_entries(entries: list[_ImageEntry], source: str, seed: int, max_per_split: int | None, file=None) -> FER2013:
    """Assign image-folder entries to splits (by name prefix, else by folder), order them as the
    CSV does and decode them."""
    for e in entries:
        if e.cls.lower() not in CLASSES:
            raise DataError(f"{e.where}: unknown class folder {e.cls!r}; expected one of {list(CLASSES)}")
    test = [e for e in entries if e.part.lower() == "test"]
    named = bool(test) and all(_NAMED.match(e.name) for e in test)
    by_split: dict[str, list[_ImageEntry]] = {s: [] for s in SPLITS}
    if named:
        for e in entries:
            m = _NAMED.match(e.name)
            split = USAGE_TO_SPLIT[m.group(1)] if m else "train"
            by_split[split].append(e)

        def order(e: _ImageEntry) -> tuple:
            m = _NAMED.match(e.name)
            return (0, int(m.group(2)), e.name) if m else (1, 0, e.cls + "/" + e.name)

    else:
        by_split["train"] = [e for e in entries if e.part.lower() == "train"]
        by_split["private_test"] = test

        def order(e: _ImageEntry) -> tuple:
            return (e.cls.lower(), e.name)

    images, labels = {}, {}
    for split, items in by_split.items():
        items = sorted(items, key=order)[:max_per_split]
        images[split] = _stack([_decode(e) for e in items])
        labels[split] = torch.tensor([CLASSES.index(e.cls.lower()) for e in items], dtype=torch.int64)
    if not named:  # no split prefixes: a seeded 10 % of train for selection
        n = labels["train"].numel()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_val = int(round(0.1 * n))
        val, keep = perm[:n_val].sort().values, perm[n_val:].sort().values
        images["public_test"], labels["public_test"] = images["train"][val], labels["train"][val]
        images["train"], labels["train"] = images["train"][keep], labels["train"][keep]
    if not any(y.numel() for y in labels.values()):
        raise DataError(f"{source}: no images found under train/ and test/")
    return FER2013(images, labels, source, file)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _load_folders(root: str, seed: int, max_per_split: int | None) -> FER2013:
    entries = []
    for part in ("train", "test"):
        top = os.path.join(root, part)
        for cls in sorted(os.listdir(top)):
            full = os.path.join(top, cls)
            if not os.path.isdir(full):
                continue
            for name in sorted(os.listdir(full)):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    p = os.path.join(full, name)
                    entries.append(_ImageEntry(part, cls, name, lambda p=p: _read_bytes(p), p))
    if not entries:
        raise DataError(f"{root}: no images found under train/ and test/")
    return _from_entries(entries, root, seed, max_per_split)


def _load_zip(path: str, seed: int, max_per_split: int | None) -> FER2013:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip archive ({e})") from None
    with zf:
        trees: dict[str, list[_ImageEntry]] = {}
        for info in zf.infolist():
            m = _TREE_PATH.match(info.filename)
            if info.is_dir() or not m or not m["name"].lower().endswith(IMAGE_SUFFIXES):
                continue
            entry = _ImageEntry(m["part"], m["cls"], m["name"], lambda i=info: zf.read(i), f"{path}:{info.filename}")
            trees.setdefault(m["prefix"], []).append(entry)
        complete = [p for p, es in trees.items() if {e.part.lower() for e in es} == {"train", "test"}]
        if len(complete) != 1:
            raise DataError(
                f"{path}: expected one image-folder tree (train/<class>/..., test/<class>/...) in the archive, "
                f"found {len(complete)}"
            )
        try:
            return _from_entries(trees[complete[0]], path, seed, max_per_split, file=path)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise DataError(f"{path}: truncated or corrupt archive ({e})") from None


def _load_npz(path: str) -> FER2013:
    try:
        with np.load(path, allow_pickle=False) as z:
            splits = [k[2:] for k in z.files if k.startswith("x_")]
            if sorted(splits) != sorted(SPLITS):
                raise DataError(
                    f"{path}: expected arrays x_<split>, y_<split> for splits {list(SPLITS)}, got {z.files}"
                )
            images = {s: torch.from_numpy(z[f"x_{s}"].astype(np.uint8)) for s in splits}
            labels = {s: torch.from_numpy(z[f"y_{s}"].astype(np.int64)) for s in splits}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a FER-2013 .npz cache written by FER2013.save_npz ({type(e).__name__})") from None
    for s in splits:
        if images[s].shape[1:] != (48, 48) or images[s].shape[0] != labels[s].shape[0]:
            raise DataError(
                f"{path}: split {s} has images {tuple(images[s].shape)} and labels {tuple(labels[s].shape)}"
            )
    return FER2013(images, labels, path, path)


def load_fer2013(path: str | None = None, seed: int = 0, max_per_split: int | None = None) -> FER2013:
    """Load FER-2013 from a CSV(.gz) file, a directory holding one, an image-folder root or its
    ``.zip``, or an ``.npz`` written by :meth:`FER2013.save_npz`.

    ``max_per_split`` keeps the first that many images of each split in file order and reads no
    more than that (smoke runs). Raises ``FileNotFoundError`` for a missing path and
    :class:`DataError` (a ``ValueError``) for a file that cannot be used.
    """
    path = path or default_data_path()
    if max_per_split is not None and max_per_split < 1:
        raise ValueError(f"max_per_split must be >= 1, got {max_per_split}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"FER-2013 not found at {path!r}. {GET_DATA_HELP}")
    if os.path.isdir(path):
        for name in ("fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv"):
            if os.path.exists(os.path.join(path, name)):
                return _load_csv(os.path.join(path, name), max_per_split)
        if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
            return _load_folders(path, seed, max_per_split)
        raise FileNotFoundError(
            f"{path!r} holds neither fer2013.csv(.gz) nor train/ and test/ folders. {GET_DATA_HELP}"
        )
    if path.endswith(".npz"):
        data = _load_npz(path)
        return data if max_per_split is None else data.head(max_per_split)
    if path.endswith(".zip"):
        return _load_zip(path, seed, max_per_split)
    return _load_csv(path, max_per_split)


def _synthetic_image(label: int, rng: np.random.Generator) -> np.ndarray:
    """A class-dependent blob with noise (48 x 48 uint8), for tests and smoke runs."""
    yy, xx = np.mgrid[0:48, 0:48]
    cx, cy = 8 + 5 * label + rng.normal(0, 1), 24 + rng.normal(0, 2)
    img = 40 + 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60.0) + rng.normal(0, 8, (48, 48))
    return np.clip(img, 0, 255).astype(np.uint8)


def _synthetic_rows(n_per_class_split: int, seed: int):
    rng = np.random.default_rng(seed)
    for usage in USAGE_TO_SPLIT:
        for label in range(len(CLASSES)):
            for _ in range(n_per_class_split):
                yield label, _synthetic_image(label, rng), usage


def write_fer_csv(path: str, n_per_class_split: int = 4, seed: int = 0) -> None:
    """Write a tiny synthetic FER-format CSV (class-dependent blobs, for tests and smoke runs)."""
    buf = io.StringIO()
    buf.write("emotion,pixels,Usage\n")
    for label, img, usage in _synthetic_rows(n_per_class_split, seed):
        buf.write(f"{label},{' '.join(str(int(v)) for v in img.ravel())},{usage}\n")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(buf.getvalue())


def write_fer_zip(path: str, n_per_class_split: int = 4, seed: int = 0, prefix: str = "", fmt: str = "PNG") -> None:
    """Write the same images as :func:`write_fer_csv` (same arguments) as an image-folder zip:
    ``train/<class>/Training_N`` and ``test/<class>/{PublicTest,PrivateTest}_N``, N the row number."""
    from PIL import Image

    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for n, (label, img, usage) in enumerate(_synthetic_rows(n_per_class_split, seed)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            part = "train" if usage == "Training" else "test"
            zf.writestr(f"{prefix}{part}/{CLASSES[label]}/{usage}_{n:05d}.{ext}", buf.getvalue())
