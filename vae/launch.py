"""``torchrun`` without torchrun's tracebacks: ``python -m vae.launch [torchrun options] train.py [flags]``.

The same options as ``torchrun`` (``--standalone``, ``--nproc-per-node``,
``--nnodes``, ``--rdzv-*``, ...), and the same job: this process is the
elastic agent that starts and watches the training processes. What differs
is how a job that does not finish ends. ``torchrun`` prints a Python
traceback of its own when it is signalled or a process fails; here the
training processes have already said what happened in one line (a stop
and how to resume, a non-finite loss, a lost process), so the agent adds
nothing and exits with the job's code: 128 + the signal after SIGINT or
SIGTERM (whether the launcher or one training process got it), 1 after a
failed process. ``--nproc-per-node`` must be a positive count (or one of
torchrun's words, ``auto``, ``cpu``, ``gpu``, ``xpu``). The resume command
that rank 0 prints names this launcher. Installed, it is also the console
script ``fullcov-torchrun``.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Optional

from vae.cli import command_name
from vae.streams import say
from vae.run.distributed import LAUNCHER_ENV

__all__ = ["STOPPED", "main"]

STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM}
"""The exit codes of a training process that saved and stopped on a signal."""
NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")  # torchrun's --nproc-per-node words


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``argv`` (default ``sys.argv[1:]``) as torchrun would; return the job's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    prog = command_name("vae.launch")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    nproc = str(args.nproc_per_node)
    if nproc not in NPROC_WORDS and not (nproc.isdigit() and int(nproc) >= 1):
        say(f"{prog}: error: --nproc-per-node must be a positive number of processes, got {nproc}", file=sys.stderr)
        return 2
    os.environ[LAUNCHER_ENV] = prog
    # its notes on stopping processes, and its "failed (exitcode: N)" line: each process said what happened
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException as err:  # the ranks stopped after one agreed step; rank 0 printed how to resume
        return 128 + int(err.sigval)
    except ChildFailedError as err:  # a training process failed, or stopped on a signal; it printed its one line
        return _job_code([failure.exitcode for failure in err.failures.values()])
    return 0


def _job_code(codes: list[int]) -> int:
    """The job's exit code from its failed processes' codes: 128 + the signal when one stopped on SIGINT or
    SIGTERM and the others stopped so too, or were ended by the agent (which terminates them with a signal
    once one has left); 1 otherwise."""
    stopped = [code for code in codes if code in STOPPED]
    ended = {-signal.SIGTERM, -signal.SIGINT}
    if stopped and all(code in STOPPED or code in ended for code in codes):
        return stopped[0]
    return 1


if __name__ == "__main__":
    sys.exit(main())
