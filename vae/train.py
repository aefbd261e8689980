"""The training command: ``python train.py``, ``python -m vae.train`` or ``fullcov-train``.

    python train.py --dataset mnist                  # trains, evaluates, checkpoints, plots
    python train.py --dataset mnist --latent-dim 2   # a latent space you can look at
    python train.py --resume --run-name NAME         # continue a run from its last.pt
    python train.py --preset results-vae-full        # a results run of docs/results.md
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

from vae.cli import ArgumentParser, command_name, test_hooks
from vae.config import TrainConfig, add_config_args, preset_config
from vae.errors import FullcovError, as_flags
from vae.run.distributed import from_env
from vae.run.files import WriteError
from vae.run.lock import holding
from vae.streams import say, silence

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
    try:  # where the config enters, before importing torch: a bad flag or output folder is answered at once
        config = preset_config(explicit)
        config.validate()
        if ranks.is_main:  # the run folder is rank 0's alone
            config.check_run_dir()
    except FullcovError as err:
        return parser.report(err)  # one line, exit code 2

    from vae.run.distributed import DistributedError, process_group

    with holding(), test_hooks():  # the run folder's lock lasts until the pictures are written too
        try:
            with process_group(ranks, config.dist_timeout) as ranks:
                try:
                    code = _train_and_draw(parser, config, set(explicit), ranks)
                except DistributedError as err:  # caught here, so that nothing of the run outlives the group
                    return parser.report(err, own=True)
                if code:
                    ranks.outlive_main()  # rank 0 reports the failure, or saves after a stop: let it finish
                return code
        except DistributedError as err:  # could not join: every rank that has this news says so
            return parser.report(err, own=True)


def _train_and_draw(parser: ArgumentParser, config: TrainConfig, explicit: set[str], ranks) -> int:
    """Train (or resume) the run, then draw its pictures (rank 0); return the exit code.

    ``explicit``: the flags given, which a resume applies to the stored run; ``ranks``: the
    :class:`vae.run.distributed.Ranks` this process is one of.
    """
    from vae.run.distributed import DistributedError, PeerFailed
    from vae.run.signals import TrainingInterrupted
    from vae.training import run_training

    try:
        run_dir = run_training(config, log=lambda line: say(as_flags(line)), explicit=explicit)
    except DistributedError:  # reported by the caller, outside the process group
        raise
    except PeerFailed:  # another rank failed to start, and said why
        return 1
    except TrainingInterrupted as err:
        if ranks.is_main:
            command = resume_command(parser.prog, config.out_dir, err.run_dir.name, ranks.launcher())
            say(f"{parser.prog}: {err}; resume with: {command}", file=sys.stderr)
        return err.exit_code
    except WriteError as err:  # a full disk, say: each write is atomic, so every file there is whole
        return parser.fail(f"{err}; the files already in the run folder are intact")
    except FullcovError as err:  # a bad flag, output folder or dataset, a busy folder; a broken checkpoint, a NaN
        return parser.report(err)
    except OSError as err:
        return parser.fail(f"cannot write the run: {err}")
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
        except (FullcovError, OSError) as err:  # the run itself is saved
            return parser.fail(f"training finished, but the pictures could not be written: {err}")
        except KeyboardInterrupt:  # the run is saved; only the pictures are missing
            say(f"{parser.prog}: interrupted while drawing the pictures; training finished and {run_dir} is saved; "
                f"draw them with: python -m vae.visualize {shlex.quote(str(run_dir / 'best.pt'))}", file=sys.stderr)
            return 130
    say(f"run folder: {run_dir}")
    return 0


def _flush_stdout() -> None:
    """Flush stdout before the interpreter does: a closed pipe or a full device must not change the exit code."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        silence(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
