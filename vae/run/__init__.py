"""Run management, beside the model: a run's life on disk and across processes; it never computes with a model.

:class:`~vae.run.folder.RunFolder` owns a run folder: open, resume, repair, save an epoch.
:mod:`~vae.run.files` writes every output file atomically; :mod:`~vae.run.checkpoint`
reads and writes checkpoints (and the shipped models), checked against :mod:`~vae.run.schema`;
:mod:`~vae.run.state` is what ``last.pt`` holds and how it is restored; :mod:`~vae.run.lock` keeps one
writer per run folder; :mod:`~vae.run.signals` turns SIGINT/SIGTERM into a graceful stop;
:mod:`~vae.run.outputs` is where the evaluator, the gap tool and the pictures write;
:mod:`~vae.run.distributed` and :mod:`~vae.run.agreement` are torchrun's processes; and
:mod:`~vae.run.faults` injects faults for the reliability tests, installed only when asked.
"""
