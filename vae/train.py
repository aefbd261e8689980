"""The training command: ``python train.py``, ``python -m vae.train`` or ``fullcov-train``.

    python train.py --dataset mnist                  # trains, evaluates, checkpoints, plots
    python train.py --dataset mnist --latent-dim 2   # a latent space you can look at
    python train.py --resume --run-name NAME         # continue a run from its last.pt
    python train.py --preset results-vae-full        # a results run of docs/RESULTS.md

Every flag is a field of :class:`vae.config.TrainConfig`. Exit codes: 0 done;
1 a checkpoint that cannot be used, a diverged loss or a failed write; 2 a
bad flag, output folder or dataset, or a run folder in which another process
is training; 130 / 143 stopped by SIGINT / SIGTERM
after saving ``last.pt`` (the message says how to resume).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional

from vae.cli import ArgumentParser, as_flags, command_name
from vae.config import TrainConfig, add_config_args, preset_config
from vae.run.lock import RunFolderBusy, holding, lock_run_folder

__all__ = ["build_parser", "resume_command", "main"]


def build_parser(suppress_defaults: bool = False, prog: Optional[str] = None) -> ArgumentParser:
    """The CLI; with ``suppress_defaults`` it reports only the flags actually given."""
    parser = ArgumentParser(
        prog=prog, description="Train a VAE with a full-covariance Gaussian posterior.",
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    add_config_args(parser, TrainConfig, with_defaults=not suppress_defaults)
    return parser


def resume_command(prog: str, out_dir: str, run_name: str) -> str:
    """The shell command that continues the run ``out_dir/run_name``, for the command ``prog`` that trained it."""
    command = f"python {prog}" if prog.endswith(".py") else prog
    return f"{command} --resume --out-dir {shlex.quote(str(out_dir))} --run-name {shlex.quote(run_name)}"


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, draw, and return the exit code.

    ``prog`` names the command in messages (default: how it was started, e.g. ``fullcov-train``).
    """
    parser = build_parser(prog=prog or command_name("vae.train"))
    parser.parse_args(argv)  # --help, and usage errors, with the defaults shown
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))  # the flags given
    try:  # before importing torch: a bad flag or output folder is answered at once
        config = preset_config(explicit)
        config.validate()
        config.check_run_dir()
    except ValueError as err:
        parser.error(err)  # one line, exit code 2

    from vae.devices import resolve_device
    from vae.run.checkpoint import CheckpointError
    from vae.run.state import resume_config

    with holding():  # the run folder's lock lasts until the pictures are written too
        state = None
        try:
            if config.resume and config.check_run_dir().is_dir():  # lock it before reading its last.pt, once
                lock_run_folder(config.check_run_dir())
            if config.resume:
                config, state = resume_config(config, set(explicit))
            config.validate()
            resolve_device(config.device)
        except (ValueError, RunFolderBusy) as err:
            parser.error(err)
        except CheckpointError as err:
            return parser.fail(err)
        return _train_and_draw(parser, config, state)


def _train_and_draw(parser: ArgumentParser, config: TrainConfig, state: Optional[dict] = None) -> int:
    """Run ``train(config)`` (resuming from ``state``, ``last.pt`` already read), then draw the pictures."""
    from vae.data import DataError
    from vae.run.checkpoint import CheckpointError
    from vae.run.files import WriteError
    from vae.epoch import NonFiniteLossError
    from vae.run.signals import TrainingInterrupted
    from vae.training import train

    try:
        run_dir = train(config, log=lambda line: print(as_flags(line)), resume_state=state)
    except (ValueError, DataError, RunFolderBusy) as err:  # a bad flag or output folder, missing data, a busy folder
        parser.error(err)
    except (CheckpointError, NonFiniteLossError) as err:
        return parser.fail(err)
    except WriteError as err:  # a full disk, say: each write is atomic, so every file there is whole
        return parser.fail(f"{err}; the files already in the run folder are intact")
    except OSError as err:
        return parser.fail(f"cannot write the run: {err}")
    except TrainingInterrupted as err:
        print(f"{parser.prog}: {err}; resume with: {resume_command(parser.prog, config.out_dir, err.run_dir.name)}",
              file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training began: nothing to save
        print(f"{parser.prog}: interrupted before training began; nothing was saved", file=sys.stderr)
        return 130
    if config.plots:
        from vae.visualize import write_run_pictures

        try:
            for path in write_run_pictures(run_dir / "best.pt", run_dir, data_dir=config.data_dir):
                print(f"wrote {path}")
        except (DataError, CheckpointError, OSError) as err:  # the run itself is saved
            return parser.fail(f"training finished, but the pictures could not be written: {err}")
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
