"""Training under ``torchrun``: the ranks, the process group, and every collective training needs.

``torchrun --nproc-per-node N train.py ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR`` / ``MASTER_PORT``)
in their environment; :func:`from_env` reads them (no torch needed, so the
command line can answer a bad flag on rank 0 only), :func:`process_group`
joins the group for the length of a ``with`` block (gloo on the CPU; on a
CUDA machine gloo for CPU tensors and NCCL for CUDA ones) with a bounded
timeout, and :func:`current` tells training where it stands. Without
torchrun the world is one process and every method here is a no-op, so
plain ``python train.py`` runs exactly as it always did.

The rules the ranks follow:

- ``--batch-size`` is the *global* batch: every rank takes its
  :meth:`Ranks.shard` of each batch of the one permutation they all draw,
  and :meth:`Ranks.mean` scales its loss so that DDP's gradient average is
  the gradient of the global batch's mean, even for an uneven last batch.
- Dynamic binarization and posterior noise come from per-rank streams,
  seeded by :func:`rank_seed` from the run's seed and the rank.
- Every decision is collective: a stop request
  (:class:`vae.run.agreement.StopVote`), a non-finite loss (the losses are
  all-reduced), a failed start (:class:`vae.run.agreement.Agreement`). A collective that cannot reach the other ranks within
  the timeout raises :class:`DistributedError`, one line.
- Only rank 0 touches the run folder; the others send it their RNG states
  (:meth:`Ranks.gather`) and receive what it read (:meth:`Ranks.broadcast`).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from vae.errors import FullcovError, first_line
from vae.streams import native_stderr_held

__all__ = ["DistributedError", "PeerFailed", "Ranks", "from_env", "current", "process_group", "rank_seed",
           "LAUNCHER_ENV"]

LAUNCHER_ENV = "FULLCOV_LAUNCHER"
"""Set by :mod:`vae.launch` for the training processes: the command that launched them, for resume hints."""
_COMMUNICATION = ("gloo", "nccl", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")


class DistributedError(FullcovError):
    """This process lost the others (a timeout, a peer that died); nothing was saved since the last checkpoint."""


class PeerFailed(FullcovError):
    """Another rank failed to start and reported it; this one leaves quietly."""


def rank_seed(seed: int, rank: int, stream: str) -> int:
    """The seed of ``stream`` (``binarize``, ``posterior``) on ``rank`` of a run seeded ``seed``: 63 bits of a hash."""
    digest = hashlib.blake2b(f"fullcov-vae/{stream}/{seed}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _dist():
    """``torch.distributed``, imported when first needed (this module loads without torch)."""
    import torch.distributed

    return torch.distributed


def _flag(signum: Optional[int]):
    """A signal number as a CPU tensor (an exchange on gloo, never a device sync); 0 for none."""
    import torch

    return torch.tensor([signum or 0], dtype=torch.int32)


def _is_communication_error(err: BaseException) -> bool:
    return isinstance(err, _dist().DistError) or any(text in str(err) for text in _COMMUNICATION)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``, less a ``[file.cc:123]`` prefix and gloo's advice after the first sentence."""
    line = first_line(err)
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)
    return line.split(". ")[0].rstrip(".")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one training run.

    Attributes:
        rank: 0 .. world_size - 1; local_rank: its index on this machine (its GPU);
        world_size: processes in all; local_world_size: processes on this machine;
        timeout: seconds a collective waits for the others (once the group is joined).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    timeout: Optional[float] = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, locks and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device):
        """``device`` for this rank: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        import torch

        if not self.distributed or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"rank {self.rank}: LOCAL_RANK {self.local_rank} but this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s); lower --nproc-per-node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def launcher(self) -> Optional[str]:
        """The launch command's prefix that gives the same world again (for resume hints); None without torchrun."""
        if not self.distributed:
            return None
        launcher = os.environ.get(LAUNCHER_ENV, "torchrun")
        if self.local_world_size == self.world_size:
            return f"{launcher} --standalone --nproc-per-node {self.world_size}"
        nodes = self.world_size // self.local_world_size
        return (f"{launcher} --nnodes {nodes} --nproc-per-node {self.local_world_size} "
                "--rdzv-backend c10d --rdzv-endpoint HOST:PORT")

    # -------------------------------------------------------------- the data and the loss

    def shard(self, rows):
        """This rank's part of one global batch's rows ``(B,)`` (the parts partition it; sizes differ by at most 1)."""
        return rows.tensor_split(self.world_size)[self.rank] if self.distributed else rows

    def mean(self, per_row, batch_rows: int):
        """The loss whose DDP average over the ranks is the mean of ``per_row`` over the global batch.

        ``per_row``: this rank's shard ``(b,)``; ``batch_rows``: the global batch's ``B``. One process: ``per_row.mean()``.
        """
        if not self.distributed:
            return per_row.mean()
        return per_row.sum() * (self.world_size / batch_rows)

    def wrap(self, model):
        """``model`` under DistributedDataParallel (its attributes reachable as before); itself on one process.

        Hold the result while training (DDP averages the gradients only while it lives) and drop it
        before :func:`process_group` ends, which collects it before leaving the group: a DDP reducer
        that outlives its process group aborts the process at exit (``terminate called ...``).
        """
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        class _Replicated(DistributedDataParallel):
            def __getattr__(self, name: str):  # the VAE's likelihood, family, ... for the objectives
                try:
                    return super().__getattr__(name)
                except AttributeError:
                    return getattr(self.module, name)

        device = next(model.parameters()).device
        # no buffer broadcast before each forward: the model's one buffer, its off-diagonal factor, is set by
        # every rank's epoch loop alike (torch 2.14 renamed the option; older releases know the first name)
        options = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers": False}
        return _Replicated(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)

    # -------------------------------------------------------------- collectives (no-ops on one process)

    @contextlib.contextmanager
    def communicating(self) -> Iterator[None]:
        """Turn a failed collective inside the block (a timeout, a dead peer) into :class:`DistributedError`."""
        try:
            yield
        except RuntimeError as err:
            if not self.distributed or isinstance(err, (DistributedError, PeerFailed)) \
                    or not _is_communication_error(err):
                raise
            raise DistributedError(f"rank {self.rank}: lost contact with the other processes ({_first_line(err)}; "
                                   f"`dist_timeout` is {self.timeout:g} s)") from None

    def all_reduce_sum(self, tensor):
        """The sum of ``tensor`` over the ranks (in place; returned)."""
        if self.distributed:
            self._call("all_reduce", tensor, op=_dist().ReduceOp.SUM)
        return tensor

    def gather(self, value: Any) -> Optional[list]:
        """Every rank's ``value`` on rank 0, in rank order (None on the others)."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size if self.is_main else None
        self._call("gather_object", value, values, dst=0)
        return values

    def all_gather(self, value: Any) -> list:
        """Every rank's ``value`` on every rank, in rank order."""
        values = [None] * self.world_size
        if not self.distributed:
            return [value]
        self._call("all_gather_object", values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the others' ``value`` is ignored)."""
        box = [value if self.is_main else None]
        if self.distributed:
            self._call("broadcast_object_list", box, src=0)
        return box[0]

    def _call(self, name: str, *args, **kwargs):
        """``torch.distributed.<name>(...)``; a failed exchange raises :class:`DistributedError`."""
        with self.communicating():
            return getattr(_dist(), name)(*args, **kwargs)

    def outlive_main(self) -> None:
        """On a rank other than 0 leaving with an error: return once rank 0 has left (or after the timeout).

        torchrun stops the other processes as soon as one fails; rank 0, which
        reports the error and may still be writing ``last.pt``, must not be the
        one it stops. Rank 0 never joins this exchange: it ends when rank 0's
        connections close.
        """
        if not self.distributed or self.is_main:
            return
        with contextlib.suppress(RuntimeError):
            _dist().all_reduce(_flag(None))  # on the CPU: gloo, whatever the device

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0 only, its result on every rank."""
        return self.broadcast(compute() if self.is_main else None)


def from_env(environ: Optional[dict] = None) -> Ranks:
    """The ranks torchrun gives this process (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``).

    Without them, one process. Needs no torch.
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    return Ranks(rank=int(env.get("RANK", "0") or 0), local_rank=int(env.get("LOCAL_RANK", "0") or 0),
                 world_size=world, local_world_size=int(env.get("LOCAL_WORLD_SIZE", world) or world))


def current() -> Ranks:
    """The ranks of the process group this process joined with :func:`process_group`; one process otherwise."""
    return _joined or Ranks()


_joined: Optional[Ranks] = None


@contextlib.contextmanager
def process_group(ranks: Ranks, timeout: float) -> Iterator[Ranks]:
    """Join the ranks' process group for the block (nothing to join for one process), then leave it.

    Raises:
        DistributedError: the others could not be reached within ``timeout`` seconds.
    """
    global _joined
    if not ranks.distributed:
        yield ranks
        return
    import torch

    dist = _dist()
    ranks = Ranks(ranks.rank, ranks.local_rank, ranks.world_size, ranks.local_world_size, float(timeout))
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        with native_stderr_held():  # a failed join: gloo's and c10d's own log would come before our one line
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout),
                                    rank=ranks.rank, world_size=ranks.world_size)
    except (RuntimeError, ValueError) as err:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(f"rank {ranks.rank}: could not join the other {ranks.world_size - 1} process(es) "
                               f"at {where} within `dist_timeout` {timeout:g} s ({_first_line(err)})") from None
    _joined = ranks
    try:
        yield ranks
    finally:
        _joined = None
        gc.collect()  # the DDP reducers dropped by now go before the group they use (see Ranks.wrap)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
