"""Checkpoints: atomic writes and the random-number state that makes a resumed run exact."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["save_atomic", "rng_state", "set_rng_state"]


def save_atomic(obj: dict, path: str) -> None:
    """``torch.save`` to a temporary file, then rename: a crash mid-write never loses the previous file."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    """Every global random stream a training step draws from (dropout, the dense-masked layer's
    noise) or that user code may: torch CPU and CUDA, NumPy, Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
