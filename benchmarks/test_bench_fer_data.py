"""FER-2013 loading: one CSV row's pixels (the fast np.fromstring path against the token-by-token
check it falls back to), and, with ``BIONIC_FER2013`` set, the whole data set as a user loads it
(CSV, image-folder zip, and the ``--quick`` read of 300 images per split).

    BIONIC_FER2013=DIR pytest benchmarks/test_bench_fer_data.py --benchmark-json out.json
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from bionic_sparse.data.fer2013 import _parse_pixels, load_fer2013

FER_DIR = os.environ.get("BIONIC_FER2013")
ROW = " ".join(str((7 * i) % 256) for i in range(48 * 48))


def test_parse_row_fast_path(benchmark):
    out = benchmark(_parse_pixels, ROW, "bench")
    assert out.shape == (2304,)


def test_parse_row_token_by_token(benchmark):
    out = benchmark(lambda: np.array(ROW.split(), dtype=np.int64).astype(np.uint8))
    assert out.shape == (2304,)


def _real(name: str) -> str:
    path = os.path.join(FER_DIR or "", name)
    if not FER_DIR or not os.path.exists(path):
        pytest.skip(f"set BIONIC_FER2013 to a folder holding {name}")
    return path


@pytest.mark.parametrize(
    "name,max_per_split",
    [("fer2013.csv.gz", None), ("fer2013_images.zip", None), ("fer2013.csv.gz", 300)],
    ids=["csv", "zip", "csv-quick"],
)
def test_load_real_fer2013(benchmark, name, max_per_split):
    path = _real(name)
    data = benchmark.pedantic(load_fer2013, args=(path,), kwargs={"max_per_split": max_per_split}, rounds=2)
    benchmark.extra_info.update(file=name, images=sum(y.numel() for y in data.labels.values()), cpu=os.cpu_count())
