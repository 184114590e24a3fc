"""Train BioNIC (or the conventional baseline) on FER-2013.

    python scripts/train_fer.py --sparse                       # BioNIC on the block-sparse engine
    python scripts/train_fer.py --dense-masked                 # the same model, dense masked execution
    python scripts/train_fer.py --baseline                     # conventional baseline, same widths
    python scripts/train_fer.py --sparse --quick --data shared/data/fer2013/fer2013_sample.csv
    torchrun --nproc_per_node 2 scripts/train_fer.py --sparse  # DistributedDataParallel

--data defaults to $BIONIC_FER2013 or ./data/fer2013. --config FILE (JSON or YAML) sets any
TrainConfig / BioNICConfig field (model fields under "model_config"); command-line flags override it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch.distributed as dist  # noqa: E402

from bionic_sparse.training import TrainConfig, train  # noqa: E402


def _load_config(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def parse(argv=None) -> TrainConfig:
    ap = argparse.ArgumentParser(description="Train BioNIC on FER-2013")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--sparse", action="store_true", help="BioNIC on the block-sparse engine (default)")
    mode.add_argument("--dense-masked", action="store_true", help="BioNIC with dense masked execution")
    mode.add_argument("--baseline", action="store_true", help="conventional dense baseline of the same widths")
    ap.add_argument("--config", help="JSON/YAML file with TrainConfig fields")
    ap.add_argument("--data", help="FER-2013 CSV(.gz) or folder (default $BIONIC_FER2013 or ./data/fer2013)")
    ap.add_argument("--connectome", help="'synthetic' (default) or a cached Column directory")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on CUDA")
    ap.add_argument("--tta", action="store_true", default=None, help="ten-crop test-time augmentation")
    ap.add_argument("--out", help="output directory (default runs/fer/<model>-seed<k>)")
    ap.add_argument("--quick", action="store_true", default=None, help="300 images per split, one epoch")
    ap.add_argument("--train-images", type=int, help="keep this many training images (stratified, seeded)")
    ap.add_argument("--holdout", type=float, help="fraction of Training held out as an in-distribution split")
    ap.add_argument("--select-on", choices=["public_test", "holdout"], help="split for model selection")
    ap.add_argument("--resume", action="store_true", default=None, help="continue from OUT/last.pt")
    ap.add_argument("--tensorboard", action="store_true", default=None)
    args = ap.parse_args(argv)

    d = _load_config(args.config) if args.config else {}
    model_cfg = dict(d.pop("model_config", {}) or {})
    if args.baseline:
        d["model"] = "baseline"
    elif args.dense_masked:
        d["model"], model_cfg["execution"] = "bionic", "dense_masked"
    elif args.sparse:
        d["model"], model_cfg["execution"] = "bionic", "sparse"
    if args.connectome:
        model_cfg["connectome"] = args.connectome
    for key in (
        "data",
        "epochs",
        "batch_size",
        "lr",
        "seed",
        "device",
        "amp",
        "tta",
        "out",
        "quick",
        "train_images",
        "holdout",
        "select_on",
        "resume",
        "tensorboard",
    ):
        v = getattr(args, key)
        if v is not None:
            d[key] = v
    d["model_config"] = model_cfg
    cfg = TrainConfig.from_dict(d)
    if "out" not in d:
        tag = cfg.model if cfg.model == "baseline" else f"bionic-{cfg.model_config.execution}"
        cfg.out = os.path.join("runs", "fer", f"{tag}-seed{cfg.seed}")
    return cfg


def main(argv=None) -> int:
    cfg = parse(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    try:
        train(cfg)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
