"""Train the full-covariance VAE.

    python train.py --dataset mnist                  # trains, evaluates, checkpoints, plots
    python train.py --dataset mnist --latent-dim 2   # a latent space you can look at
    python train.py --resume --run-name NAME         # continue a run from its last.pt

Every flag is a field of :class:`vae.config.TrainConfig`.
"""
from __future__ import annotations

import argparse
import sys

from vae.checkpoint import CheckpointError
from vae.config import ArgumentParser, TrainConfig, add_config_args, config_from_args
from vae.data import DataError
from vae.training import NonFiniteLossError, resolve_device, resume_config, train


def build_parser(suppress_defaults: bool = False) -> ArgumentParser:
    """The CLI; with ``suppress_defaults`` it reports only the flags actually given."""
    parser = ArgumentParser(
        description="Train a VAE with a full-covariance Gaussian posterior.",
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    add_config_args(parser, TrainConfig, with_defaults=not suppress_defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        if config.resume:
            explicit = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
            config = resume_config(config, explicit)
        config.validate()
        resolve_device(config.device)
    except (ValueError, CheckpointError) as err:
        parser.error(str(err))  # one line, exit code 2
    try:
        run_dir = train(config)
    except (ValueError, DataError) as err:  # a bad flag value, or missing or corrupted data
        parser.error(str(err))
    except (CheckpointError, NonFiniteLossError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    if config.plots:
        from vae.visualize import write_run_pictures

        for path in write_run_pictures(run_dir / "best.pt", run_dir, data_dir=config.data_dir):
            print(f"wrote {path}")
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
