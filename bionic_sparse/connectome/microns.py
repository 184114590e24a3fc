"""MICrONs "Minnie column" loader over CAVE (optional dependency ``caveclient``).

What a user does online, pinned and cached:

1. ``CAVEclient("minnie65_public")`` at a pinned materialization version (CAVE needs an auth
   token even for public data);
2. neurons and cell types from ``allen_v1_column_types_slanted_ref`` (excitatory types carry their
   layer; inhibitory neurons are placed by soma depth, with layer boundaries estimated from the
   excitatory types' depths: the midpoint between the 97.5th percentile of the upper layer and the
   2.5th percentile of the lower one; everything above the shallowest 2.5 % of 23P is L1);
3. synapses among those neurons from ``synapses_pni_2`` via ``synapse_query``, in batches of
   presynaptic ids, autapses dropped, counts and summed sizes aggregated per ordered pair;
4. optionally only outgoing synapses of axon-proofread neurons (``proofreading_status_and_strategy``,
   ``status_axon``), because many excitatory axons are truncated at the column's edge.

The result is saved as a :class:`Column` in ``cache_dir`` and reloaded from there without network.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import numpy as np

from .column import Column

__all__ = ["fetch_column", "MicronsError", "DEFAULT_DATASTACK", "DEFAULT_VERSION"]

DEFAULT_DATASTACK = "minnie65_public"
DEFAULT_VERSION = 1300
CELL_TYPE_TABLE = "allen_v1_column_types_slanted_ref"
SYNAPSE_TABLE = "synapses_pni_2"
PROOFREADING_TABLE = "proofreading_status_and_strategy"
EXCITATORY_LAYER = {"23P": "L23", "4P": "L4", "5P-IT": "L5", "5P-ET": "L5", "5P-NP": "L5", "6P-IT": "L6", "6P-CT": "L6"}
_UM = [1000, 1000, 1000]  # desired_resolution in nm per unit: positions in µm

TOKEN_HELP = (
    "CAVE needs an auth token even for public data. Create one with\n"
    "  from caveclient import CAVEclient; CAVEclient().auth.setup_token(make_new=True)\n"
    "and save it with CAVEclient().auth.save_token(token=...)."
)


class MicronsError(RuntimeError):
    """A CAVE query could not be done; the message says what to do."""


def _client(datastack: str, client: Any) -> Any:
    if client is not None:
        return client
    try:
        from caveclient import CAVEclient
    except ImportError:
        raise MicronsError(
            "the MICrONs loader needs caveclient: pip install 'bionic-sparse[microns]' "
            "(or use the synthetic column, the offline default)"
        ) from None
    try:
        return CAVEclient(datastack)
    except Exception as e:  # caveclient raises several types for auth/network problems
        raise _explain(e, f"connecting to datastack {datastack!r}") from e


def _explain(e: Exception, what: str) -> MicronsError:
    text = f"{type(e).__name__}: {e}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403) or "token" in text.lower() or "auth" in type(e).__name__.lower():
        return MicronsError(f"{what} failed: not authorised ({text}).\n{TOKEN_HELP}")
    if "connection" in text.lower() or "timeout" in text.lower() or "resolve" in text.lower():
        return MicronsError(
            f"{what} failed: network error ({text}). Check the connection, or use a cached column "
            "(`--connectome DIR`) or the synthetic default (`--connectome synthetic`)."
        )
    return MicronsError(f"{what} failed: {text}")


def _call(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except MicronsError:
        raise
    except Exception as e:
        raise _explain(e, what) from e


def _layer_boundaries(depth: np.ndarray, layer: np.ndarray) -> list[tuple[str, float]]:
    """Upper depth bound of each layer from the excitatory neurons' depths (see module docstring)."""
    order = ["L23", "L4", "L5", "L6"]
    present = [lay for lay in order if np.any(layer == lay)]
    if "L23" not in present:
        raise MicronsError("no 23P neurons in the cell-type table: cannot place the L1/L2/3 boundary")
    bounds = [("L1", float(np.percentile(depth[layer == "L23"], 2.5)))]
    for upper, lower in zip(present, present[1:], strict=False):
        hi = np.percentile(depth[layer == upper], 97.5)
        lo = np.percentile(depth[layer == lower], 2.5)
        bounds.append((upper, float((hi + lo) / 2)))
    bounds.append((present[-1], float("inf")))
    return bounds


def _place_by_depth(depth: np.ndarray, bounds: list[tuple[str, float]]) -> np.ndarray:
    names = [name for name, _ in bounds]
    edges = [b for _, b in bounds[:-1]]
    return np.asarray(names, dtype=object)[np.searchsorted(edges, depth, side="right")]


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("t", "true", "1")) or v == 1


def fetch_column(
    cache_dir: str | os.PathLike | None = None,
    datastack: str = DEFAULT_DATASTACK,
    version: int = DEFAULT_VERSION,
    proofread_axons_only: bool = False,
    batch_size: int = 100,
    client: Any = None,
    refresh: bool = False,
) -> Column:
    """The MICrONs column as a :class:`Column`, from ``cache_dir`` if it holds this query.

    Args:
        cache_dir: directory for the cached column (``None``: no cache).
        version: materialization version (pinned so that root ids and tables are stable).
        proofread_axons_only: keep only outgoing synapses of neurons whose axon is proofread.
        batch_size: presynaptic ids per ``synapse_query``.
        client: a ``CAVEclient`` (or a test double); created from ``datastack`` when ``None``.
        refresh: ignore the cache.
    """
    query = dict(
        source="microns",
        datastack=datastack,
        materialization_version=int(version),
        proofread_axons_only=bool(proofread_axons_only),
    )
    if cache_dir is not None and not refresh and os.path.exists(os.path.join(cache_dir, "manifest.json")):
        cached = Column.load(cache_dir)
        if all(cached.meta.get(k) == v for k, v in query.items()):
            return cached
    client = _client(datastack, client)
    mat = client.materialize
    versions = _call("listing materialization versions", mat.get_versions)
    if int(version) not in [int(v) for v in versions]:
        raise MicronsError(
            f"materialization version {version} is not available in {datastack!r} (it may have expired); "
            f"available: {sorted(int(v) for v in versions)}. Pass one of them (--version)."
        )
    mat.version = int(version)
    tables = _call("listing tables", mat.get_tables)
    needed = [CELL_TYPE_TABLE, SYNAPSE_TABLE] + ([PROOFREADING_TABLE] if proofread_axons_only else [])
    missing = [t for t in needed if t not in tables]
    if missing:
        raise MicronsError(
            f"tables {missing} are missing from {datastack!r} version {version}; "
            "pick a version that has them (see the MICrONs release manifests)"
        )

    cells = _call(f"querying {CELL_TYPE_TABLE}", mat.query_table, CELL_TYPE_TABLE, desired_resolution=_UM)
    cells = cells[cells["pt_root_id"] != 0].drop_duplicates("pt_root_id")
    cells = cells[cells["classification_system"].astype(str).str.contains("excitatory|inhibitory")]
    root = cells["pt_root_id"].to_numpy(np.int64)
    pos = np.stack(cells["pt_position"].to_numpy()).astype(np.float64)
    cell_type = cells["cell_type"].astype(str).to_numpy()
    excitatory = cells["classification_system"].astype(str).str.contains("excitatory").to_numpy()
    depth = pos[:, 1]
    layer = np.array([EXCITATORY_LAYER.get(t, "") for t in cell_type], dtype=object)
    layer[~excitatory] = _place_by_depth(depth[~excitatory], _layer_boundaries(depth, layer))
    unknown = excitatory & (layer == "")
    if unknown.any():  # an excitatory type without a known layer: place it by depth too
        layer[unknown] = _place_by_depth(depth[unknown], _layer_boundaries(depth, layer))
    pia = float(depth.min())
    position = np.column_stack([pos[:, 0], depth - pia, pos[:, 2]])

    pre_parts, post_parts, size_parts = [], [], []
    for start in range(0, root.size, batch_size):
        syn = _call(
            f"querying {SYNAPSE_TABLE}",
            mat.synapse_query,
            pre_ids=root[start : start + batch_size].tolist(),
            post_ids=root.tolist(),
            desired_resolution=_UM,
        )
        pre_parts.append(syn["pre_pt_root_id"].to_numpy(np.int64))
        post_parts.append(syn["post_pt_root_id"].to_numpy(np.int64))
        size_parts.append(syn["size"].to_numpy(np.float64))
    pre_root = np.concatenate(pre_parts) if pre_parts else np.zeros(0, np.int64)
    post_root = np.concatenate(post_parts) if post_parts else np.zeros(0, np.int64)
    size = np.concatenate(size_parts) if size_parts else np.zeros(0)
    keep = pre_root != post_root  # autapses are segmentation artefacts
    if proofread_axons_only:
        pr = _call(f"querying {PROOFREADING_TABLE}", mat.query_table, PROOFREADING_TABLE)
        ok = set(pr.loc[[_truthy(v) for v in pr["status_axon"]], "pt_root_id"].astype(np.int64))
        keep &= np.isin(pre_root, np.fromiter(ok, np.int64, len(ok)))
    row_of = {r: i for i, r in enumerate(root.tolist())}
    pre = np.array([row_of.get(r, -1) for r in pre_root[keep].tolist()], dtype=np.int64)
    post = np.array([row_of.get(r, -1) for r in post_root[keep].tolist()], dtype=np.int64)
    size = size[keep]
    inside = (pre >= 0) & (post >= 0)
    pre, post, size = pre[inside], post[inside], size[inside]
    key = pre * root.size + post
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    column = Column(
        neuron_id=cells["id"].to_numpy(np.int64) if "id" in cells else root,
        cell_type=cell_type,
        excitatory=excitatory,
        layer=layer.astype(str),
        position=position,
        pre=uniq // max(root.size, 1),
        post=uniq % max(root.size, 1),
        n_synapses=counts,
        size=np.bincount(inverse, weights=size, minlength=uniq.size),
        meta=dict(
            query,
            query_date=datetime.date.today().isoformat(),
            cell_type_table=CELL_TYPE_TABLE,
            synapse_table=SYNAPSE_TABLE,
            position_units="um, y is depth below the shallowest soma",
        ),
    )
    if cache_dir is not None:
        column.save(cache_dir)
    return column
