"""``torchrun`` without torchrun's tracebacks: ``python -m vae.launch [torchrun options] train.py [flags]``.

The same options as ``torchrun`` (``--standalone``, ``--nproc-per-node``,
``--nnodes``, ``--rdzv-*``, ...), and the same job: this process is the
elastic agent that starts and watches the training processes. What differs
is how a job that does not finish ends. ``torchrun`` prints a Python
traceback of its own when it is signalled or a process fails; here the
training processes have already said what happened in one line (a stop
and how to resume, a non-finite loss, a lost process), so the agent adds
nothing and exits with the job's code: 128 + the signal after SIGINT or
SIGTERM, 1 after a failed process. The resume command that rank 0 prints
names this launcher. Installed, it is also the console script
``fullcov-torchrun``.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from vae.cli import command_name
from vae.run.distributed import LAUNCHER_ENV

__all__ = ["main"]


def main(argv: Optional[list[str]] = None) -> int:
    """Run ``argv`` (default ``sys.argv[1:]``) as torchrun would; return the job's exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ[LAUNCHER_ENV] = command_name("vae.launch")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)  # its notes on stopping processes
    try:
        run(args)
    except SignalException as err:  # the ranks stopped after one agreed step; rank 0 printed how to resume
        return 128 + int(err.sigval)
    except ChildFailedError:  # a training process failed; it printed its one line
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
