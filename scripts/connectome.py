"""Connectome CLI: fetch the MICrONs column, print its summary, plot it.

python scripts/connectome.py fetch --cache data/microns_v1300 [--version 1300] [--proofread-axons]
python scripts/connectome.py summary [--connectome synthetic|DIR] [--seed 0] [--block-size 32]
python scripts/connectome.py plot [--connectome synthetic|DIR] [--out runs/connectome]
python scripts/connectome.py volume [--seed 0] [--neurons 82247] [--json FILE]
python scripts/connectome.py import-csv CONNECTIONS CELLS --out DIR [--min-synapses 1] [--strict]
python scripts/connectome.py import-h5 FILE.h5 --out DIR [--group full_matrix] [--count-property n]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bionic_sparse import BlockSparseMatrix  # noqa: E402
from bionic_sparse.connectome import (  # noqa: E402
    DEFAULT_PATHWAY,
    LAYERS,
    VOLUME_NEURONS,
    ExportFormatError,
    MicronsError,
    cached_volume,
    fetch_column,
    laminar_masks,
    load_connectome,
    load_conntility_h5,
    load_csv_export,
    volume_summary,
)
from bionic_sparse.connectome.microns import DEFAULT_DATASTACK, DEFAULT_VERSION  # noqa: E402
from bionic_sparse.connectome.reorder import ORDERS  # noqa: E402


def cmd_fetch(args) -> int:
    try:
        column = fetch_column(
            args.cache,
            datastack=args.datastack,
            version=args.version,
            proofread_axons_only=args.proofread_axons,
            refresh=args.refresh,
        )
    except MicronsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(column.summary())
    print(f"\ncached in {args.cache}")
    return 0


def cmd_summary(args) -> int:
    column = load_connectome(args.connectome, seed=args.seed)
    print(f"connectome: {args.connectome} ({column.meta.get('source')})")
    print(column.summary())
    print()
    for u in (args.block_size, 1):
        print(laminar_masks(column, units_per_neuron=u, block_size=args.block_size).report())
    return 0


def cmd_plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    column = load_connectome(args.connectome, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    order = np.lexsort((~column.excitatory, [LAYERS.index(lay) for lay in column.layer]))
    adj = column.adjacency("binary")[order][:, order].tocoo()
    exc = column.excitatory[order]
    fig, ax = plt.subplots(figsize=(7, 7))
    colour = np.where(exc[adj.col], 0, 1)  # by presynaptic class
    ax.scatter(adj.col, adj.row, s=0.3, c=colour, cmap=ListedColormap(["tab:red", "tab:blue"]), marker="s", lw=0)
    layer_sorted = column.layer[order]
    for lay in LAYERS:
        idx = np.flatnonzero(layer_sorted == lay)
        if idx.size:
            for f in (ax.axvline, ax.axhline):
                f(idx[0] - 0.5, color="k", lw=0.5)
            ax.text(idx.mean(), -8, lay, ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.5, column.n_neurons - 0.5)
    ax.set_ylim(column.n_neurons - 0.5, -0.5)
    ax.set_xlabel("presynaptic neuron (by layer, E then I)")
    ax.set_ylabel("postsynaptic neuron")
    ax.set_title(
        f"{column.meta.get('source')} column: red = excitatory, blue = inhibitory presynaptic", fontsize=9, pad=16
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "adjacency.png"), dpi=150)
    plt.close(fig)

    summary = column.summary()
    layers = list(summary.neurons)
    prob = np.array([[summary.layer_connection_probability[(a, b)] for b in layers] for a in layers])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(prob, cmap="viridis")
    ax.set_xticks(range(len(layers)), layers)
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("postsynaptic layer")
    ax.set_ylabel("presynaptic layer")
    for i in range(len(layers)):
        for j in range(len(layers)):
            ax.text(
                j,
                i,
                f"{prob[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="w" if prob[i, j] < prob.max() / 2 else "k",
            )
    fig.colorbar(im, ax=ax, label="connection probability")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "connection_probability.png"), dpi=150)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(DEFAULT_PATHWAY) - 1, figsize=(10, 3), sharey=True)
    stack = laminar_masks(column, units_per_neuron=1, block_size=args.block_size)
    for ax, lm in zip(np.atleast_1d(axes), stack.layers, strict=True):
        fill = BlockSparseMatrix.from_dense(lm.mask, args.block_size).block_fill().fill.numpy()
        ax.hist(fill, bins=30, range=(0, 1), color="tab:gray")
        ax.set_title(f"{lm.pre} -> {lm.post}: {fill.size} blocks", fontsize=9)
        ax.set_xlabel(f"block fill (b={args.block_size}, no expansion)")
    np.atleast_1d(axes)[0].set_ylabel("blocks")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "block_fill.png"), dpi=150)
    plt.close(fig)
    print(f"wrote {args.out}/adjacency.png, connection_probability.png, block_fill.png")
    return 0


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def cmd_volume(args) -> int:
    """Build (or read from the cache) the synthetic volume; print and optionally save its summary."""
    import json
    import time

    before = _rss_gb()
    t0 = time.perf_counter()
    volume = cached_volume(seed=args.seed, n_neurons=args.neurons, cache=args.cache, progress=True)
    seconds = time.perf_counter() - t0
    edge_bytes = volume.pre.nbytes + volume.post.nbytes + volume.n_synapses.nbytes
    summary = volume_summary(volume)
    summary["build_or_load"] = dict(
        seconds=round(seconds, 1),
        rss_before_gb=round(before, 3),
        peak_rss_gb=round(_peak_rss_gb(), 3),
        edge_arrays_gb=round(edge_bytes / 1e9, 3),
        peak_over_edge_arrays=round((_peak_rss_gb() - before) * 1e9 / max(edge_bytes, 1), 2),
    )
    print(volume.summary())
    b = summary["build_or_load"]
    print(
        f"\n{seconds:.1f} s; peak RSS {b['peak_rss_gb']:.2f} GB ({b['rss_before_gb']:.2f} GB before), "
        f"edge arrays {b['edge_arrays_gb']:.2f} GB: peak growth {b['peak_over_edge_arrays']:.2f}x the edge arrays"
    )
    print(
        "connection probability by lateral distance (µm): "
        + ", ".join(
            f"{d['from_um']:.0f}-{d['to_um']:.0f}: {d['p']:.4f}" for d in summary["probability_by_distance"] if d["p"]
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def cmd_fill(args) -> int:
    """Block fill of a connectome under every neuron order (which order to store it in)."""
    import json
    import time

    from bionic_sparse.connectome import load_connectome
    from bionic_sparse.connectome.reorder import block_fill_report

    kwargs = {"n_neurons": args.neurons, "cache": args.cache} if args.connectome == "volume" else {}
    try:
        column = load_connectome(args.connectome, seed=args.seed, **kwargs)
    except (FileNotFoundError, ExportFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    report = block_fill_report(column, block_sizes=tuple(args.block_sizes), orders=tuple(args.orders))
    report.update(connectome=args.connectome, seed=args.seed, seconds=round(time.perf_counter() - t0, 1),
                  peak_rss_gb=round(_peak_rss_gb(), 3))  # fmt: skip
    print(f"{report['n_neurons']:,} neurons, {report['n_synapses']:,} connected pairs")
    print("order            |pre - post|  " + "  ".join(f"fill b={b:<3}" for b in args.block_sizes))
    for method, entry in report["orders"].items():
        if "unavailable" in entry:
            print(f"{method:<16} unavailable: {entry['unavailable']}")
            continue
        fills = "  ".join(f"{100 * entry[f'b{b}']['fill']:8.2f} %" for b in args.block_sizes)
        print(f"{method:<16} {entry['mean_index_distance']:11,.0f}  {fills}  ({entry['order_seconds']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def cmd_import(args) -> int:
    """Read a static export (CSV pair or conntility HDF5) and save it as a Column directory."""
    try:
        if args.cmd == "import-csv":
            column = load_csv_export(
                args.connections, args.cells, min_synapses=args.min_synapses, strict=args.strict, progress=True
            )
        else:
            column = load_conntility_h5(args.file, group=args.group, count_property=args.count_property)
    except (FileNotFoundError, ExportFormatError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(column.summary())
    dropped = {k: v for k, v in column.meta.items() if k.startswith("dropped")}
    print("dropped: " + ", ".join(f"{k[8:]} {v}" for k, v in dropped.items()))
    column.save(args.out)
    print(f"saved to {args.out} (use it with --connectome {args.out})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="connectome tools for bionic-sparse")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="query the MICrONs column from CAVE and cache it (needs caveclient + token)")
    f.add_argument("--cache", required=True, help="directory to write the column to")
    f.add_argument("--datastack", default=DEFAULT_DATASTACK)
    f.add_argument("--version", type=int, default=DEFAULT_VERSION, help="materialization version (pinned)")
    f.add_argument("--proofread-axons", action="store_true", help="keep only synapses of axon-proofread neurons")
    f.add_argument("--refresh", action="store_true", help="query again even if the cache matches")
    for name, helptext in (
        ("summary", "print neuron counts, connection probabilities, mask statistics"),
        ("plot", "save adjacency, connection-probability and block-fill figures"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--connectome", default="synthetic", help="'synthetic' (default) or a cached column directory")
        p.add_argument("--seed", type=int, default=0, help="seed of the synthetic column")
        p.add_argument("--block-size", type=int, default=32)
        if name == "plot":
            p.add_argument("--out", default="runs/connectome")
    v = sub.add_parser("volume", help="build or load the synthetic whole volume and print its statistics")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument(
        "--neurons", type=int, default=VOLUME_NEURONS, help=f"about how many neurons (default {VOLUME_NEURONS})"
    )
    v.add_argument("--cache", default=None, help="cache directory (default $BIONIC_SPARSE_CACHE/volumes)")
    v.add_argument("--json", default=None, help="also write the summary (and build time, peak RSS) to this file")
    fl = sub.add_parser(
        "fill", help="block fill of a connectome under each neuron order (identity, laminar-spatial, ...)"
    )
    fl.add_argument("--connectome", default="volume", help="'volume' (default), 'synthetic', a Column directory or .h5")
    fl.add_argument("--seed", type=int, default=0)
    fl.add_argument("--neurons", type=int, default=VOLUME_NEURONS, help="with --connectome volume")
    fl.add_argument("--cache", default=None, help="volume cache directory (default $BIONIC_SPARSE_CACHE/volumes)")
    fl.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64])
    fl.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS), help="neuron orders to measure")
    fl.add_argument("--json", default=None, help="also write the report to this file")
    c = sub.add_parser("import-csv", help="read a connections_with_nuclei + cell-type CSV export into a Column")
    c.add_argument("connections")
    c.add_argument("cells")
    c.add_argument("--out", required=True)
    c.add_argument("--min-synapses", type=int, default=1)
    c.add_argument("--strict", action="store_true", help="refuse edges whose ids are not neurons of CELLS")
    h = sub.add_parser("import-h5", help="read a conntility ConnectivityMatrix HDF5 file into a Column")
    h.add_argument("file")
    h.add_argument("--out", required=True)
    h.add_argument("--group", default="full_matrix")
    h.add_argument("--count-property", default=None)
    args = ap.parse_args(argv)
    commands = {"fetch": cmd_fetch, "summary": cmd_summary, "plot": cmd_plot, "volume": cmd_volume, "fill": cmd_fill}
    return commands.get(args.cmd, cmd_import)(args)


if __name__ == "__main__":
    sys.exit(main())
