"""The training command: ``python train.py``, ``python -m vae.train`` or ``fullcov-train``.

    python train.py --dataset mnist                  # trains, evaluates, checkpoints, plots
    python train.py --dataset mnist --latent-dim 2   # a latent space you can look at
    python train.py --resume --run-name NAME         # continue a run from its last.pt
    python train.py --preset results-vae-full        # a results run of docs/RESULTS.md
    torchrun --standalone --nproc-per-node 2 train.py --dataset mnist   # one model, 2 processes (DDP)

Every flag is a field of :class:`vae.config.TrainConfig`. Under torchrun
(:mod:`vae.run.distributed`) rank 0 alone prints, locks and writes the run
folder; a rank that loses the others says so in one line. Exit codes: 0 done;
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

from vae.cli import ArgumentParser, command_name
from vae.errors import as_flags
from vae.streams import say, silence
from vae.config import TrainConfig, add_config_args, preset_config
from vae.run.distributed import from_env
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


def resume_command(prog: str, out_dir: str, run_name: str, launcher: Optional[str] = None) -> str:
    """The shell command that continues the run ``out_dir/run_name``, for the command ``prog`` that trained it.

    ``launcher``: the torchrun prefix that started it (:meth:`vae.run.distributed.Ranks.launcher`), if any.
    """
    if launcher is None:
        command = f"python {prog}" if prog.endswith(".py") else prog
    elif prog.endswith(".py") or prog.startswith("python -m "):
        command = f"{launcher} {prog.removeprefix('python ')}"
    else:  # a console script such as fullcov-train
        command = f"{launcher} --no-python {prog}"
    return f"{command} --resume --out-dir {shlex.quote(str(out_dir))} --run-name {shlex.quote(run_name)}"


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, draw, and return the exit code.

    ``prog`` names the command in messages (default: how it was started, e.g. ``fullcov-train``).
    Output that cannot be printed (a closed pipe, a full device) is dropped, never a failure of the run.
    """
    try:
        return _main(argv, prog)
    finally:
        _flush_stdout()


def _main(argv: Optional[list[str]], prog: Optional[str]) -> int:
    ranks = from_env()  # torchrun's ranks, read before torch loads; one process without torchrun
    parser = build_parser(prog=prog or command_name("vae.train"))
    parser.quiet = not ranks.is_main  # rank 0 answers for all (every rank parses the same flags)
    parser.parse_args(argv)  # --help, and usage errors, with the defaults shown
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))  # the flags given
    try:  # before importing torch: a bad flag or output folder is answered at once
        config = preset_config(explicit)
        config.validate()
        if ranks.is_main:  # the run folder is rank 0's alone
            config.check_run_dir()
    except ValueError as err:
        parser.error(err)  # one line, exit code 2

    from vae.run.distributed import DistributedError, process_group

    with holding():  # the run folder's lock lasts until the pictures are written too
        try:
            with process_group(ranks, config.dist_timeout) as ranks:
                try:
                    code = _resume_train_and_draw(parser, config, explicit, ranks)
                except DistributedError as err:  # caught here, so that nothing of the run outlives the group
                    return parser.fail(err, own=True)
                if code:
                    ranks.outlive_main()  # rank 0 reports the failure, or saves after a stop: let it finish
                return code
        except DistributedError as err:  # could not join: every rank that has this news says so
            return parser.fail(err, own=True)


def _resume_train_and_draw(parser: ArgumentParser, config: TrainConfig, explicit: dict, ranks) -> int:
    """Rank 0 locks the run folder and reads its ``last.pt`` (``--resume``), every rank gets it; then train."""
    from vae.devices import resolve_device
    from vae.run.checkpoint import CheckpointError
    from vae.run.agreement import Agreement
    from vae.run.distributed import PeerFailed
    from vae.run.state import resume_config

    state = None
    try:
        with Agreement(ranks):
            if ranks.is_main and config.resume and config.check_run_dir().is_dir():
                lock_run_folder(config.check_run_dir())  # lock it before reading its last.pt, once
            if ranks.is_main and config.resume:
                config, state = resume_config(config, set(explicit), ranks.world_size)
            config.validate()
            resolve_device(config.device)
    except (ValueError, RunFolderBusy) as err:
        return _usage_error(parser, err)
    except CheckpointError as err:
        return parser.fail(err)
    except PeerFailed:  # rank 0 said why
        return 1
    if config.resume:
        config, state = ranks.broadcast((config, state))  # what rank 0 read, for every rank
    return _train_and_draw(parser, config, state, ranks)


def _train_and_draw(parser: ArgumentParser, config: TrainConfig, state: Optional[dict], ranks) -> int:
    """Run ``train(config)`` (resuming from ``state``, ``last.pt`` already read), then draw the pictures (rank 0).

    ``ranks``: the :class:`vae.run.distributed.Ranks` this process is one of.
    """
    from vae.data import DataError
    from vae.run.checkpoint import CheckpointError
    from vae.run.distributed import PeerFailed
    from vae.run.files import WriteError
    from vae.epoch import NonFiniteLossError
    from vae.run.signals import TrainingInterrupted
    from vae.training import train

    try:
        run_dir = train(config, log=lambda line: say(as_flags(line)), resume_state=state)
    except (ValueError, DataError, RunFolderBusy) as err:  # a bad flag or output folder, missing data, a busy folder
        return _usage_error(parser, err)
    except (CheckpointError, NonFiniteLossError) as err:
        return parser.fail(err)
    except PeerFailed:  # another rank failed to start, and said why
        return 1
    except WriteError as err:  # a full disk, say: each write is atomic, so every file there is whole
        return parser.fail(f"{err}; the files already in the run folder are intact")
    except OSError as err:
        return parser.fail(f"cannot write the run: {err}")
    except TrainingInterrupted as err:
        if ranks.is_main:
            command = resume_command(parser.prog, config.out_dir, err.run_dir.name, ranks.launcher())
            say(f"{parser.prog}: {err}; resume with: {command}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training began: nothing to save
        if ranks.is_main:
            say(f"{parser.prog}: interrupted before training began; nothing was saved", file=sys.stderr)
        return 130
    if not ranks.is_main:
        return 0
    if config.plots:
        try:
            from vae.visualize import write_run_pictures  # matplotlib: seconds in which a Ctrl-C may land

            for path in write_run_pictures(run_dir / "best.pt", run_dir, data_dir=config.data_dir):
                say(f"wrote {path}")
        except (DataError, CheckpointError, OSError) as err:  # the run itself is saved
            return parser.fail(f"training finished, but the pictures could not be written: {err}")
        except KeyboardInterrupt:  # the run is saved; only the pictures are missing
            say(f"{parser.prog}: interrupted while drawing the pictures; training finished and {run_dir} is saved; "
                f"draw them with: python -m vae.visualize {shlex.quote(str(run_dir / 'best.pt'))}", file=sys.stderr)
            return 130
    say(f"run folder: {run_dir}")
    return 0


def _usage_error(parser: ArgumentParser, err: Exception) -> int:
    """``parser.error(err)`` (one line, on rank 0), returning its exit code 2 instead of exiting."""
    try:
        parser.error(err)
    except SystemExit as exit_:
        return exit_.code


def _flush_stdout() -> None:
    """Flush stdout before the interpreter does: a closed pipe or a full device must not change the exit code."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        silence(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
