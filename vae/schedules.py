r"""The training recipe's schedules: the learning rate and the KL weight, as functions of the step.

Both are pure functions of the global optimizer step, so a checkpoint's step
count is all the state they need and a resume continues them exactly.

Learning rate (``--lr-schedule``), with :math:`p = s / S` the fraction of the
run's :math:`S` steps done before step :math:`s` (counted from 0):

- ``constant``: :math:`\eta`.
- ``burda`` (Burda et al. 2016): stage :math:`i = 0 \dots 7` runs :math:`3^i`
  of the protocol's 3,280 epochs at :math:`\eta \cdot 10^{-i/7}`. A run of
  another length keeps the stages' proportions: stage :math:`i` covers
  :math:`p \in [\tfrac{3^i - 1}{2 \cdot 3280}, \tfrac{3^{i+1} - 1}{2 \cdot 3280})`.
  At 3,280 epochs the boundaries fall exactly on epochs 1, 4, 13, …, 1093.
- ``cosine``: :math:`\tfrac\eta2 (1 + \cos \pi p)`.

KL weight (``--kl-warmup N``): :math:`\beta = \min(1, (s + 1) / (N B))` over
the first :math:`N` epochs of :math:`B` steps each, rising per step.
"""
from __future__ import annotations

import math

from vae.choices import check_choice

__all__ = ["BURDA_EPOCHS", "BURDA_STAGES", "burda_stage", "learning_rate", "kl_weight"]

BURDA_STAGES = 8
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3,280


def burda_stage(fraction: float) -> int:
    """The stage ``i`` of Burda et al.'s schedule that the run is in after ``fraction`` of its steps."""
    epoch = fraction * BURDA_EPOCHS  # position on the protocol's own 3,280-epoch scale
    stage = 0
    while stage + 1 < BURDA_STAGES and epoch >= (3 ** (stage + 1) - 1) / 2:
        stage += 1
    return stage


def learning_rate(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """The learning rate of global step ``step`` (0-based) of a run of ``total_steps`` steps.

    Args:
        schedule: ``constant``, ``burda`` or ``cosine``.
        base_lr: the peak rate, ``--lr``.
        step: optimizer steps done before this one; total_steps: the run's steps, ``epochs * batches``.
    """
    check_choice("lr_schedule", schedule)
    if schedule == "constant":
        return base_lr
    fraction = min(max(step / total_steps, 0.0), 1.0)
    if schedule == "burda":
        return base_lr * 10 ** (-burda_stage(fraction) / 7)
    return base_lr * 0.5 * (1 + math.cos(math.pi * fraction))


def kl_weight(step: int, warmup_epochs: int, steps_per_epoch: int) -> float:
    """β of global step ``step`` (0-based): linear from ``1/(N B)`` to 1 over ``N = warmup_epochs`` epochs.

    ``warmup_epochs = 0`` gives 1 throughout.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (step + 1) / (warmup_epochs * steps_per_epoch))
