"""Connectomes: the ``Column`` data structure, the MICrONs loader, the synthetic default, and
the laminar masks that wire ``SparseConnectomeLinear`` layers."""

from .column import LAYERS, Column, ColumnSummary
from .exports import CELL_TYPE_COLUMNS, CONNECTION_COLUMNS, ExportFormatError, load_conntility_h5, load_csv_export
from .masks import DEFAULT_PATHWAY, LaminarStack, LayerMask, laminar_masks
from .microns import MicronsError, fetch_column
from .synthetic import synthetic_column
from .volume import VOLUME_NEURONS, cached_volume, synthetic_volume, volume_summary

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
    "synthetic_volume",
    "cached_volume",
    "volume_summary",
    "VOLUME_NEURONS",
    "ExportFormatError",
    "CELL_TYPE_COLUMNS",
    "CONNECTION_COLUMNS",
    "load_csv_export",
    "load_conntility_h5",
    "load_connectome",
]


def load_connectome(spec: str = "synthetic", seed: int = 0, **kwargs) -> Column:
    """A connectome by name.

    * ``"synthetic"``: the synthetic column (offline default, seeded; ``kwargs`` go to
      :func:`synthetic_column`);
    * ``"volume"``: the synthetic whole volume (~82k neurons; built once, then read from the cache
      in seconds; ``kwargs`` go to :func:`cached_volume`, e.g. ``n_neurons=5000`` for a small one);
    * a directory holding a saved :class:`Column` (``Column.save``, ``scripts/connectome.py``);
    * a ``.h5`` file: a conntility ``ConnectivityMatrix`` (:func:`load_conntility_h5`).
    """
    if spec == "synthetic":
        return synthetic_column(seed=seed, **kwargs)
    if spec == "volume":
        return cached_volume(seed=seed, **kwargs)
    if str(spec).endswith((".h5", ".hdf5")):
        return load_conntility_h5(spec, **kwargs)
    return Column.load(spec)
