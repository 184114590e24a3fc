"""Connectomes: the ``Column`` data structure, the MICrONs loader, the synthetic default, and
the laminar masks that wire ``SparseConnectomeLinear`` layers."""

from .column import LAYERS, Column, ColumnSummary
from .masks import DEFAULT_PATHWAY, LaminarStack, LayerMask, laminar_masks
from .microns import MicronsError, fetch_column
from .synthetic import synthetic_column

__all__ = [
    "LAYERS",
    "Column",
    "ColumnSummary",
    "DEFAULT_PATHWAY",
    "LaminarStack",
    "LayerMask",
    "MicronsError",
    "fetch_column",
    "laminar_masks",
    "synthetic_column",
    "load_connectome",
]


def load_connectome(spec: str = "synthetic", seed: int = 0) -> Column:
    """``"synthetic"`` (the offline default, seeded) or a directory holding a saved ``Column``."""
    if spec == "synthetic":
        return synthetic_column(seed=seed)
    return Column.load(spec)
