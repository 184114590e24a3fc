"""Fixtures the benchmark files share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the benchmark on one thread (what one of two side-by-side training jobs gets), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
