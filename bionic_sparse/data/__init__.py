"""Datasets: FER-2013."""

from .fer2013 import CLASSES, FER2013, augment_batch, default_data_path, load_fer2013, ten_crop_logits, to_float

__all__ = ["CLASSES", "FER2013", "augment_batch", "default_data_path", "load_fer2013", "ten_crop_logits", "to_float"]
