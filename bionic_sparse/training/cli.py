"""``python -m bionic_sparse.training`` / ``bionic-train``: train BioNIC (or the baseline) on FER-2013.

    bionic-train --sparse --data PATH                  # BioNIC on the block-sparse engine
    bionic-train --dense-masked --data PATH            # the same model, dense masked execution
    bionic-train --baseline --data PATH                # conventional baseline, same widths
    bionic-train --volume --data PATH                  # the whole-volume recurrent model
    bionic-train --sparse --quick --data PATH          # first 300 images per split, one epoch
    torchrun --nproc_per_node 2 -m bionic_sparse.training --sparse --data PATH

``--data`` defaults to ``$BIONIC_FER2013`` or ``./data/fer2013``. ``--config FILE`` (JSON or YAML)
sets any TrainConfig / BioNICConfig field (model fields under ``model_config``); flags override it.
Bad input ends with one ``error:`` line and exit code 2; Ctrl-C ends with the command that
continues the run and exit code 130.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING

import torch

from ..runtime import invocation, reexec_with_passive_wait
from . import require_train_extra
from .config import TrainConfig, load_config_file

if TYPE_CHECKING:
    from .trainer import Run

__all__ = ["build_parser", "config_from_args", "main"]

# flags copied onto TrainConfig fields of the same name when given
_OVERRIDES = (
    "data", "epochs", "batch_size", "lr", "seed", "device", "amp", "tta", "out", "quick",
    "train_images", "holdout", "select_on", "resume", "overwrite", "allow_code_change", "tensorboard", "compile",
    "random_erasing", "checkpoint_minutes",
)  # fmt: skip


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Train BioNIC on FER-2013")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--sparse", action="store_true", help="BioNIC on the block-sparse engine (default)")
    mode.add_argument("--dense-masked", action="store_true", help="BioNIC with dense masked execution")
    mode.add_argument("--baseline", action="store_true", help="conventional dense baseline of the same widths")
    mode.add_argument(
        "--volume",
        action="store_true",
        help="the whole-volume recurrent model (synthetic ~82k-neuron volume unless --connectome names another)",
    )
    ap.add_argument("--config", help="JSON/YAML file with TrainConfig fields")
    ap.add_argument("--data", help="FER-2013 CSV(.gz), image-folder root or .zip, or .npz (default $BIONIC_FER2013)")
    ap.add_argument(
        "--connectome",
        help="'synthetic' (default; with --volume: 'volume'), a saved Column directory or a conntility .h5 file",
    )
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    ap.add_argument("--amp", action="store_true", default=None, help="bf16 autocast on CUDA")
    ap.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the training step (default inductor)"
    )
    ap.add_argument(
        "--random-erasing",
        type=float,
        metavar="P",
        help="with augmentation: erase one random rectangle of each training image with probability P (default 0)",
    )
    ap.add_argument("--tta", action="store_true", default=None, help="also evaluate with ten-crop TTA at the end")
    ap.add_argument("--out", help="output directory (default runs/fer/<model>-seed<k>)")
    ap.add_argument("--quick", action="store_true", default=None, help="first 300 images per split, one epoch")
    ap.add_argument("--train-images", type=int, help="keep this many training images (stratified, seeded)")
    ap.add_argument("--holdout", type=float, help="fraction of Training held out as an in-distribution split")
    ap.add_argument("--select-on", choices=["public_test", "holdout"], help="split for model selection")
    ap.add_argument(
        "--resume", action="store_true", default=None, help="continue the run in OUT (the same config, data and code)"
    )
    ap.add_argument(
        "--overwrite", action="store_true", default=None, help="delete the run already in OUT and start over"
    )
    ap.add_argument(
        "--allow-code-change",
        action="store_true",
        default=None,
        help="with --resume: continue a run that other code started (results.json lists every code revision)",
    )
    ap.add_argument(
        "--checkpoint-minutes",
        type=float,
        metavar="M",
        help="also write last.pt inside an epoch every M minutes of training (long epochs; default 0: epoch ends only)",
    )
    ap.add_argument("--tensorboard", action="store_true", default=None)
    ap.add_argument("--threads", type=int, help="CPU threads of this run (default: $OMP_NUM_THREADS, else every core)")
    return ap


def config_from_args(argv: list[str], prog: str | None = None) -> TrainConfig:
    """Flags (and the config file they name) -> a validated :class:`TrainConfig`."""
    args = build_parser(prog).parse_args(argv)
    d = load_config_file(args.config) if args.config else {}
    model_cfg = dict(d.pop("model_config", {}) or {})
    if args.baseline:
        d["model"] = "baseline"
    elif args.volume:
        d["model"] = "volume"
    elif args.dense_masked:
        d["model"], model_cfg["execution"] = "bionic", "dense_masked"
    elif args.sparse:
        d["model"], model_cfg["execution"] = "bionic", "sparse"
    if args.connectome:
        model_cfg["connectome"] = args.connectome
    d.update({k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None})
    d["model_config"] = model_cfg
    cfg = TrainConfig.from_dict(d)
    if "out" not in d:
        tag = cfg.model if cfg.model in ("baseline", "volume") else f"bionic-{cfg.model_config.execution}"
        cfg.out = os.path.join("runs", "fer", f"{tag}-seed{cfg.seed}")
    cfg.validate()
    return cfg


def _prog() -> str:
    """How the user started us, as a command they can paste into a shell (module, console script
    or script file, with the interpreter that runs now)."""
    argv0 = sys.argv[0] if sys.argv else ""
    return invocation(argv0, "bionic_sparse.training")


def continue_command(prog: str, argv: list[str]) -> str:
    """The command that continues this run: the same one with ``--resume`` (and without
    ``--overwrite``, which would delete what it continues)."""
    args = [a for a in argv if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join([prog, *(shlex.quote(a) for a in args)])


def _interrupted(run: Run, argv: list[str], prog: str) -> None:
    print(file=sys.stderr)  # end the progress bar's line
    done = run.completed_epochs()
    again = continue_command(prog, argv)
    if done >= run.epochs:
        print(
            f"interrupted in the final evaluation; {run.last_path} holds all {done} epochs. "
            f"Evaluate again with: {again}",
            file=sys.stderr,
        )
    elif run.saved_in_epoch is not None:
        step = run.saved_in_epoch["step"]
        print(
            f"interrupted in epoch {done + 1}/{run.epochs}; {run.last_path} holds step {step}/{run.steps_per_epoch} "
            f"of it (checkpoint_minutes). Continue with: {again}",
            file=sys.stderr,
        )
    elif done == 0:
        print(
            f"interrupted before the first epoch ended; no checkpoint was written. Start again with: {again}",
            file=sys.stderr,
        )
    else:
        print(
            f"interrupted in epoch {done + 1}/{run.epochs}; {run.last_path} holds epoch {done}. Continue with: {again}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    if argv is None:  # run as a program: never spin-wait against another process (see runtime)
        reexec_with_passive_wait()
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or _prog()
    try:
        try:
            cfg = config_from_args(argv, prog)
            require_train_extra()
            from .trainer import Run

            threads = build_parser(prog).parse_args(argv).threads
            if threads is not None:
                if threads < 1:
                    raise ValueError(f"--threads must be >= 1, got {threads}")
                torch.set_num_threads(threads)
            run = Run.setup(cfg)
        except (FileNotFoundError, ValueError, ImportError) as e:  # bad flags, config, data, extras: no traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted before training started; nothing to resume", file=sys.stderr)
            return 130
        try:
            run.fit()
        except KeyboardInterrupt:
            _interrupted(run, argv, prog)
            return 130
        except BrokenPipeError:  # `... | head`: the reader left; stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        return 0
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
