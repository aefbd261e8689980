"""Run management, beside the model: atomic files, the checkpoint format, resume state, the folder lock,
signals, and the test-only fault hooks.

:mod:`~vae.run.files` writes every output file atomically; :mod:`~vae.run.checkpoint`
reads and writes checkpoints (and the shipped models); :mod:`~vae.run.state` is
what ``last.pt`` holds and how a resume reads it; :mod:`~vae.run.lock` keeps one
writer per run folder; :mod:`~vae.run.signals` turns SIGINT/SIGTERM into a
graceful stop; :mod:`~vae.run.faults` injects faults for the reliability tests.
"""
