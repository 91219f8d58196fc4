"""``vpr train``: train the heads of an encoder preset on cached backbone features.

    vpr train --config config/train/lite0-nordland.yaml
    vpr train --config config/train/route-example.yaml      # your own bag with poses or GPS
    vpr train --config config/train/lite0-nordland.yaml --sampler random --epochs 2 --out-dir out/train/random
"""

from __future__ import annotations

import argparse
import logging
import sys

from vpr_core.train.config import SAMPLERS, load_train_config
from vpr_core.train.trainer import train
from vpr_core.cli import run_module


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="training config, YAML or JSON: config/train/lite0-nordland.yaml (Nordland season "
                             "pairs), or config/train/route-example.yaml for your own route: a bag (or folder) "
                             "with a pose/odometry or GPS topic, positives and negatives by distance in metres")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last if it exists")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="override the batch sampler")
    parser.add_argument("--out-dir", default=None, help="override where logs, curves and run checkpoints go")
    parser.add_argument("--checkpoint", default=None,
                        help="override where the best heads are written ('none': not written)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: v for k, v in (("seed", args.seed), ("epochs", args.epochs), ("sampler", args.sampler),
                                   ("out_dir", args.out_dir)) if v is not None}
    if args.checkpoint is not None:
        overrides["checkpoint"] = None if args.checkpoint == "none" else args.checkpoint
    cfg = load_train_config(args.config, overrides)  # a refusal ends in run_module: one line, exit 2
    summary = train(cfg, resume=args.resume)
    print(f"best validation R@1 {summary['best_val_r1']:.3f} at epoch {summary['best_epoch']} "
          f"({summary['epochs_run']} epochs); log and curves in {cfg.out_dir}")
    for row in summary["history"]:
        print(f"epoch {row['epoch']}: val R@1 {row['val_r1']:.3f}, train {row['train_s']:.1f} s, "
              f"sampler {row['sampler_s']:.1f} s, validation {row['val_s']:.1f} s, loss {row.get('loss', float('nan')):.4f}")
    if summary.get("checkpoint"):
        print(f"best heads written to {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr train"))
