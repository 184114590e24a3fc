"""FER-2013 loading (CSV, gzip, image folders, zip, npz), errors, data checks, augmentation, TTA."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bionic_sparse.data.fer2013 import (
    CLASSES,
    DataError,
    augment_batch,
    file_md5,
    load_fer2013,
    ten_crop_logits,
    to_float,
    write_fer_csv,
    write_fer_zip,
)
from bionic_sparse.data.transforms import random_erase

FER_DIR = os.environ.get("BIONIC_FER2013")


@pytest.mark.parametrize("name", ["tiny.csv", "tiny.csv.gz"])
def test_csv_and_gzip(tmp_path, name):
    write_fer_csv(str(tmp_path / name), n_per_class_split=3)
    data = load_fer2013(str(tmp_path / name))
    assert set(data.images) == {"train", "public_test", "private_test"}
    for split in data.images:
        assert data.images[split].shape == (21, 48, 48) and data.images[split].dtype == torch.uint8
        assert data.class_counts()[split] == [3] * 7
    assert "train" in data.describe()
    # a directory holding fer2013.csv works too
    os.rename(tmp_path / name, tmp_path / ("fer2013.csv" + (".gz" if name.endswith(".gz") else "")))
    assert load_fer2013(str(tmp_path)).labels["train"].numel() == 21


@pytest.mark.parametrize(
    "line,match",
    [
        ("9,{px},Training", "emotion 9 is outside 0..6"),
        ("x,{px},Training", "is not an integer"),
        ("1,1 2 3,Training", "expected 2304 pixels"),
        ("1,{px},Validation", "Usage 'Validation'"),
        ("1,{px}", "expected 3 fields"),
        ("1,{bad},Training", "0..255"),
    ],
)
def test_malformed_rows_name_the_row(tmp_path, line, match):
    px = " ".join(["7"] * 2304)
    bad = " ".join(["300"] * 2304)
    path = tmp_path / "bad.csv"
    path.write_text("emotion,pixels,Usage\n" + f"0,{px},Training\n" + line.format(px=px, bad=bad) + "\n")
    with pytest.raises(ValueError, match="row 3") as e:
        load_fer2013(str(path))
    assert match in str(e.value)


def test_blur_mismatch_is_reported(tmp_path):
    write_fer_csv(str(tmp_path / "tiny.csv"), n_per_class_split=3)
    data = load_fer2013(str(tmp_path / "tiny.csv"))
    assert data.check() == []
    blurred = torch.nn.functional.avg_pool2d(data.images["train"].float().unsqueeze(1), 9, 1, 4)
    data.images["train"] = blurred.squeeze(1).to(torch.uint8)
    warnings = data.check()
    assert len([w for w in warnings if "sharpness" in w]) == 2  # against PublicTest and PrivateTest
    assert all("training and" in w for w in warnings)


def test_intensity_mismatch_is_reported(tmp_path):
    write_fer_csv(str(tmp_path / "tiny.csv"), n_per_class_split=3)
    data = load_fer2013(str(tmp_path / "tiny.csv"))
    x = data.images["private_test"].float()
    data.images["private_test"] = ((x - x.mean()) * 1.8 + x.mean()).clamp(0, 255).to(torch.uint8)  # more contrast
    warnings = data.check()
    assert len(warnings) == 1 and "private_test" in warnings[0] and "intensity statistics" in warnings[0]
    data = load_fer2013(str(tmp_path / "tiny.csv"))
    data.images["public_test"] = (data.images["public_test"].float() * 0.5).to(torch.uint8)  # darker
    assert any("public_test" in w and "intensity" in w for w in data.check())
    stats = data.image_statistics()
    assert set(stats) == {"train", "public_test", "private_test"} and set(stats["train"]) == {
        "sharpness",
        "mean",
        "std",
    }


def test_limit_train_and_hold_out_are_stratified_seeded_and_disjoint(tmp_path):
    write_fer_csv(str(tmp_path / "tiny.csv"), n_per_class_split=10)
    data = load_fer2013(str(tmp_path / "tiny.csv"))
    small = data.limit_train(35, seed=3)
    assert torch.bincount(small.labels["train"], minlength=7).tolist() == [5] * 7
    assert torch.equal(small.images["train"], data.limit_train(35, seed=3).images["train"])
    assert not torch.equal(small.images["train"], data.limit_train(35, seed=4).images["train"])
    assert data.limit_train(10_000) is data  # asking for more than there is keeps everything
    split = data.hold_out(0.2, seed=1)
    assert torch.bincount(split.labels["holdout"], minlength=7).tolist() == [2] * 7
    assert split.labels["train"].numel() == 56 and split.labels["public_test"].numel() == 70
    train_rows = {bytes(im.numpy()) for im in split.images["train"]}
    assert not train_rows & {bytes(im.numpy()) for im in split.images["holdout"]}
    assert len(train_rows) + split.labels["holdout"].numel() == 70
    assert repr(split).startswith("FER2013(train=56, public_test=70, private_test=70, holdout=14")
    with pytest.raises(ValueError, match="holdout must be in"):
        data.hold_out(1.0)
    with pytest.raises(ValueError, match="train_images must be >= 1"):
        data.limit_train(0)


def test_equalisation_is_invariant_to_monotone_intensity_changes():
    x = torch.randint(0, 200, (4, 48, 48), dtype=torch.uint8)
    a, b = to_float(x), to_float((x.float() * 1.2 + 10).to(torch.uint8))
    assert torch.allclose(a, b, atol=1e-5)
    assert abs(a.mean().item()) < 1e-4 and abs(a.std().item() - 1) < 0.01


def test_npz_cache_round_trip(tmp_path):
    write_fer_csv(str(tmp_path / "tiny.csv"), n_per_class_split=2)
    data = load_fer2013(str(tmp_path / "tiny.csv"))
    data.save_npz(str(tmp_path / "tiny.npz"))
    again = load_fer2013(str(tmp_path / "tiny.npz"))
    for s in data.images:
        assert torch.equal(again.images[s], data.images[s]) and torch.equal(again.labels[s], data.labels[s])


@pytest.mark.parametrize("prefix", ["", "fer2013/"], ids=["top-level", "in-a-folder"])
def test_zip_of_the_image_folder_layout_decodes_to_the_csv_pixels(tmp_path, prefix):
    write_fer_csv(str(tmp_path / "tiny.csv"), n_per_class_split=3, seed=5)
    write_fer_zip(str(tmp_path / "tiny.zip"), n_per_class_split=3, seed=5, prefix=prefix)
    csv_data, zip_data = load_fer2013(str(tmp_path / "tiny.csv")), load_fer2013(str(tmp_path / "tiny.zip"))
    for split in ("train", "public_test", "private_test"):
        assert torch.equal(zip_data.images[split], csv_data.images[split]), split  # same pixels, same order
        assert torch.equal(zip_data.labels[split], csv_data.labels[split]), split
    assert zip_data.file == str(tmp_path / "tiny.zip")
    assert file_md5(zip_data.file) == file_md5(str(tmp_path / "tiny.zip")) and len(file_md5(zip_data.file)) == 32
    head = load_fer2013(str(tmp_path / "tiny.zip"), max_per_split=5)
    assert all(y.numel() == 5 for y in head.labels.values())
    assert torch.equal(head.images["train"], csv_data.images["train"][:5])


def test_jpeg_zip_and_quick_reading(tmp_path):
    write_fer_zip(str(tmp_path / "j.zip"), n_per_class_split=2, fmt="JPEG")
    data = load_fer2013(str(tmp_path / "j.zip"))
    assert data.images["train"].shape == (14, 48, 48)
    write_fer_csv(str(tmp_path / "t.csv.gz"), n_per_class_split=4)
    quick = load_fer2013(str(tmp_path / "t.csv.gz"), max_per_split=3)
    full = load_fer2013(str(tmp_path / "t.csv.gz"))
    assert all(y.numel() == 3 for y in quick.labels.values())
    assert torch.equal(quick.images["private_test"], full.images["private_test"][:3])


def _junk(path, content: bytes):
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("empty.csv", lambda p: _junk(p, b""), "the file is empty"),
        ("nohead.csv", lambda p: _junk(p, b"0," + b"7 " * 2304 + b",Training\n"), "expected a header naming"),
        ("rows.csv", lambda p: _junk(p, b"emotion,pixels,Usage\n"), "header but no images"),
        ("cut.csv.gz", None, "truncated or corrupt"),
        ("junk.npz", lambda p: _junk(p, b"\x80\x04 not an archive at all" * 10), "not a FER-2013 .npz cache"),
        ("junk.zip", lambda p: _junk(p, b"PK not really a zip"), "not a readable zip"),
        ("other.zip", None, "expected one image-folder tree"),
        ("text.zip", None, "not an image format Pillow knows"),
    ],
)
def test_unusable_files_raise_one_line_data_errors(tmp_path, name, make, match):
    path = tmp_path / name
    if name == "cut.csv.gz":
        write_fer_csv(str(path), n_per_class_split=2)
        path.write_bytes(path.read_bytes()[:-200])
    elif name == "other.zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("images/a.png", b"x")
    elif name == "text.zip":  # a text file among the images: its message names the entry, not a buffer
        import zipfile

        write_fer_zip(str(path), n_per_class_split=1)
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("train/angry/Training_99999.jpg", b"notes, not an image")
    else:
        make(path)
    with pytest.raises(DataError, match=match) as e:
        load_fer2013(str(path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 400 and "BytesIO" not in msg


def test_missing_path_explains_where_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="BIONIC_FER2013"):
        load_fer2013(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="neither fer2013.csv"):
        load_fer2013(str(tmp_path))


def _write_folder(root, prefixes: bool, classes=CLASSES):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                prefix = ("PublicTest_" if i % 2 else "PrivateTest_") if (prefixes and split == "test") else ""
                name = f"{prefix}{i}.png"
                Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(root / split / c / name)


@pytest.mark.parametrize("prefixes", [True, False], ids=["with-split-prefixes", "plain"])
def test_image_folder_layout(tmp_path, prefixes):
    _write_folder(tmp_path, prefixes)
    data = load_fer2013(str(tmp_path), seed=1)
    if prefixes:
        assert data.labels["train"].numel() == 70
        assert data.labels["public_test"].numel() == 14 and data.labels["private_test"].numel() == 14
    else:
        assert data.labels["public_test"].numel() == 7  # seeded 10 % of train
        assert data.labels["train"].numel() == 63 and data.labels["private_test"].numel() == 28
        again = load_fer2013(str(tmp_path), seed=1)
        assert torch.equal(again.images["public_test"], data.images["public_test"])


def test_unknown_class_folder(tmp_path):
    _write_folder(tmp_path, False, classes=("angry", "contempt"))
    with pytest.raises(ValueError, match="unknown class folder 'contempt'"):
        load_fer2013(str(tmp_path))


def test_augment_batch_is_per_sample_and_seeded():
    x = to_float(torch.randint(0, 255, (8, 48, 48), dtype=torch.uint8))
    a = augment_batch(x.clone(), generator=torch.Generator().manual_seed(0))
    b = augment_batch(x.clone(), generator=torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    same = x[:1].expand(8, 1, 48, 48).contiguous()
    out = augment_batch(same, generator=torch.Generator().manual_seed(1))
    assert (out[0] - out[1:]).abs().amax(dim=(1, 2, 3)).min() > 0.01, "each sample gets its own transform"
    ident = augment_batch(
        x,
        generator=torch.Generator().manual_seed(0),
        max_shift=0,
        max_rotation_deg=0,
        flip=False,
        brightness=0,
        contrast=0,
    )
    assert torch.allclose(ident, x, atol=1e-4)


def test_random_erase_erases_one_seeded_rectangle_per_chosen_image():
    x = torch.randn(64, 1, 48, 48) + 10.0  # no pixel is 0 before erasing
    g = torch.Generator().manual_seed(0)
    assert random_erase(x, 0.0, generator=g) is x
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(0))), (
        "p = 0 draws no random numbers: runs without erasing keep their augmentation stream"
    )
    out = random_erase(x, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, random_erase(x, 1.0, generator=torch.Generator().manual_seed(1)))
    erased = out == 0
    assert torch.equal(out[~erased], x[~erased]), "only the rectangle changes"
    for mask in erased[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == h * w, "one solid rectangle"
        assert 0.015 <= mask.float().mean() <= 0.34  # scale (0.02, 0.33) of the area, up to rounding
    assert len({int(m.sum()) for m in erased}) > 10, "each image gets its own rectangle"
    half = random_erase(x, 0.5, generator=torch.Generator().manual_seed(2))
    assert 16 <= int((half == 0).flatten(1).any(1).sum()) <= 48
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="random erasing probability p"):
            random_erase(x, bad)


def test_random_erasing_is_a_checked_config_field():
    from bionic_sparse.training.config import TrainConfig

    assert TrainConfig().random_erasing == 0.0
    assert TrainConfig.from_dict({"random_erasing": 0.25}).random_erasing == 0.25
    with pytest.raises(ValueError, match="random_erasing must lie in"):
        TrainConfig.from_dict({"random_erasing": 2})


def test_ten_crop_tta():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    x = torch.randn(3, 1, 48, 48)
    assert ten_crop_logits(model, x).shape == (3, 7)


@pytest.mark.skipif(not FER_DIR or not os.path.exists(FER_DIR), reason="set BIONIC_FER2013 to the real FER-2013")
def test_real_fer2013_counts():
    data = load_fer2013(FER_DIR)
    if data.source.endswith((".csv", ".csv.gz")) and data.labels["train"].numel() > 20000:
        assert data.class_counts()["train"] == [3995, 436, 4097, 7215, 4830, 3171, 4965]
        assert sum(data.class_counts()["private_test"]) == 3589
    assert data.check() == [], "training and test images should look alike"


@pytest.mark.skipif(
    not FER_DIR or not os.path.isdir(FER_DIR) or not os.path.exists(os.path.join(FER_DIR, "fer2013_images.zip")),
    reason="set BIONIC_FER2013 to a folder holding fer2013.csv(.gz) and fer2013_images.zip",
)
def test_real_zip_matches_real_csv():
    csv_data = load_fer2013(FER_DIR, max_per_split=400)
    zip_data = load_fer2013(os.path.join(FER_DIR, "fer2013_images.zip"), max_per_split=400)
    for split in ("train", "public_test", "private_test"):
        assert torch.equal(zip_data.images[split], csv_data.images[split])
        assert torch.equal(zip_data.labels[split], csv_data.labels[split])
