"""Datasets: FER-2013 (loading in :mod:`.fer2013`, batch transforms and TTA in :mod:`.transforms`)."""

from .fer2013 import CLASSES, FER2013, DataError, default_data_path, file_md5, load_fer2013
from .transforms import augment_batch, random_erase, ten_crop_logits, to_float

__all__ = [
    "CLASSES",
    "FER2013",
    "DataError",
    "augment_batch",
    "default_data_path",
    "file_md5",
    "load_fer2013",
    "random_erase",
    "ten_crop_logits",
    "to_float",
]
